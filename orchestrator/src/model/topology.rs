//! Topology: sites, their clusters and nodes, and the links between sites.
//!
//! A [`Topology`] is only built through [`Topology::from_document`] or [`Topology::load`],
//! which check names, capacities and links, so that the rest of the code can index sites,
//! clusters and nodes by id without further checks.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::InputError;
use crate::path;
use crate::yaml::Document;

/// Index of a site in its topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteId(pub usize);

/// Index of a cluster in its topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(pub usize);

/// Index of a node in its topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

#[derive(Debug, Clone)]
pub struct Site {
    pub id: SiteId,
    pub name: String,
    pub clusters: Vec<ClusterId>,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub id: ClusterId,
    pub site: SiteId,
    pub name: String,
    pub nodes: Vec<NodeId>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: NodeId,
    pub site: SiteId,
    pub cluster: ClusterId,
    /// Unique in the topology; also the node's host name on container backends.
    pub name: String,
    pub cores: NonZeroU32,
    pub memory_mib: u64,
}

/// Network path between two sites, emulated by the sending instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// One-way delay.
    pub latency: Duration,
    /// Bits per second; 0 means unlimited.
    pub bandwidth_bps: u64,
}

impl Link {
    pub const UNLIMITED: Link = Link { latency: Duration::ZERO, bandwidth_bps: 0 };
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub name: String,
    sites: Vec<Site>,
    clusters: Vec<Cluster>,
    nodes: Vec<Node>,
    /// Indexed by `[from.0][to.0]`; symmetric; the diagonal is the link within a site.
    links: Vec<Vec<Link>>,
}

impl Topology {
    /// Reads and checks a topology file.
    pub fn load(file: &Path) -> Result<Topology, InputError> {
        Topology::from_document(&Document::read(file)?)
    }

    /// Checks a parsed topology file and builds the topology.
    pub fn from_document(document: &Document) -> Result<Topology, InputError> {
        let file: TopologyFile = document.deserialize()?;
        let mut topology = Topology {
            name: file.name.clone(),
            sites: Vec::new(),
            clusters: Vec::new(),
            nodes: Vec::new(),
            links: Vec::new(),
        };
        if file.sites.is_empty() {
            return Err(document
                .error(&path!["sites"], "the topology has no sites")
                .with_hint("add at least one site with one cluster of one node"));
        }
        let mut node_names = BTreeSet::new();
        for (site_index, site) in file.sites.iter().enumerate() {
            let site_path = path!["sites", site_index, "name"];
            check_name(document, &site_path, &site.name)?;
            if topology.sites.iter().any(|known| known.name == site.name) {
                return Err(
                    document.error(&site_path, format!("site `{}` is listed twice", site.name))
                );
            }
            let site_id = SiteId(topology.sites.len());
            let mut site_clusters = Vec::new();
            if site.clusters.is_empty() {
                return Err(document
                    .error(
                        &path!["sites", site_index],
                        format!("site `{}` has no clusters", site.name),
                    )
                    .with_hint("add a `clusters:` list with at least one cluster"));
            }
            for (cluster_index, cluster) in site.clusters.iter().enumerate() {
                let cluster_path = path!["sites", site_index, "clusters", cluster_index].to_vec();
                let mut name_path = cluster_path.clone();
                name_path.push("name".into());
                check_name(document, &name_path, &cluster.name)?;
                if site_clusters
                    .iter()
                    .any(|id: &ClusterId| topology.clusters[id.0].name == cluster.name)
                {
                    return Err(document.error(
                        &name_path,
                        format!(
                            "cluster `{}` is listed twice in site `{}`",
                            cluster.name, site.name
                        ),
                    ));
                }
                let cluster_id = ClusterId(topology.clusters.len());
                let mut cluster_nodes = Vec::new();
                if cluster.nodes.is_empty() {
                    return Err(document
                        .error(&cluster_path, format!("cluster `{}` has no nodes", cluster.name))
                        .with_hint("add a `nodes:` list with at least one node"));
                }
                for (node_index, node) in cluster.nodes.iter().enumerate() {
                    let mut node_path = cluster_path.clone();
                    node_path.extend(path!["nodes", node_index]);
                    let mut node_name_path = node_path.clone();
                    node_name_path.push("name".into());
                    check_name(document, &node_name_path, &node.name)?;
                    if !node_names.insert(node.name.clone()) {
                        return Err(document
                            .error(&node_name_path, format!("node `{}` is listed twice", node.name))
                            .with_hint(
                                "node names are host names and must be unique in the topology",
                            ));
                    }
                    let Some(cores) = NonZeroU32::new(node.cores) else {
                        let mut cores_path = node_path.clone();
                        cores_path.push("cores".into());
                        return Err(document
                            .error(&cores_path, format!("node `{}` has 0 cores", node.name))
                            .with_hint("give every node at least 1 core"));
                    };
                    let node_id = NodeId(topology.nodes.len());
                    topology.nodes.push(Node {
                        id: node_id,
                        site: site_id,
                        cluster: cluster_id,
                        name: node.name.clone(),
                        cores,
                        memory_mib: node.memory_mib,
                    });
                    cluster_nodes.push(node_id);
                }
                topology.clusters.push(Cluster {
                    id: cluster_id,
                    site: site_id,
                    name: cluster.name.clone(),
                    nodes: cluster_nodes,
                });
                site_clusters.push(cluster_id);
            }
            topology.sites.push(Site {
                id: site_id,
                name: site.name.clone(),
                clusters: site_clusters,
            });
        }

        let site_count = topology.sites.len();
        let within = file.intra_site.map(LinkSpec::to_link).unwrap_or(Link::UNLIMITED);
        let mut links: Vec<Vec<Option<Link>>> = vec![vec![None; site_count]; site_count];
        for (index, row) in links.iter_mut().enumerate() {
            row[index] = Some(within);
        }
        for (link_index, link) in file.links.iter().enumerate() {
            let mut ends = Vec::new();
            for (end_index, site_name) in link.between.iter().enumerate() {
                let end_path = path!["links", link_index, "between", end_index];
                match topology.site_by_name(site_name) {
                    Some(site) => ends.push(site.id),
                    None => {
                        return Err(document
                            .error(&end_path, format!("unknown site `{site_name}` in link"))
                            .with_hint(format!(
                                "known sites: {}",
                                topology.site_names().join(", ")
                            )));
                    }
                }
            }
            if ends.len() != 2 || ends[0] == ends[1] {
                return Err(document
                    .error(
                        &path!["links", link_index, "between"],
                        "a link joins two different sites",
                    )
                    .with_hint("write `between: [site-a, site-b]`"));
            }
            let (a, b) = (ends[0].0, ends[1].0);
            if links[a][b].is_some() {
                return Err(document.error(
                    &path!["links", link_index],
                    format!(
                        "the link between `{}` and `{}` is listed twice",
                        link.between[0], link.between[1]
                    ),
                ));
            }
            let value = link.spec().to_link();
            links[a][b] = Some(value);
            links[b][a] = Some(value);
        }
        let fallback = file.default_link.map(LinkSpec::to_link);
        let mut resolved = vec![vec![Link::UNLIMITED; site_count]; site_count];
        for a in 0..site_count {
            for b in 0..site_count {
                resolved[a][b] = match (links[a][b], fallback) {
                    (Some(link), _) | (None, Some(link)) => link,
                    (None, None) => {
                        return Err(document
                            .error(
                                &path!["links"],
                                format!(
                                    "no link between sites `{}` and `{}`",
                                    topology.sites[a].name, topology.sites[b].name
                                ),
                            )
                            .with_hint(
                                "add a link for every pair of sites, or a `default_link:` for the rest",
                            ));
                    }
                };
            }
        }
        topology.links = resolved;
        Ok(topology)
    }

    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn site(&self, id: SiteId) -> &Site {
        &self.sites[id.0]
    }

    pub fn cluster(&self, id: ClusterId) -> &Cluster {
        &self.clusters[id.0]
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    pub fn site_by_name(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|site| site.name == name)
    }

    pub fn node_by_name(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// Returns the cluster named `site/cluster`, or by its bare name when that is unique.
    pub fn cluster_by_name(&self, name: &str) -> Option<&Cluster> {
        if let Some((site, cluster)) = name.split_once('/') {
            let site = self.site_by_name(site)?;
            return site
                .clusters
                .iter()
                .map(|id| self.cluster(*id))
                .find(|candidate| candidate.name == cluster);
        }
        let mut matches = self.clusters.iter().filter(|cluster| cluster.name == name);
        let first = matches.next()?;
        matches.next().is_none().then_some(first)
    }

    pub fn site_names(&self) -> Vec<&str> {
        self.sites.iter().map(|site| site.name.as_str()).collect()
    }

    /// `site/cluster`, the name used in messages and labels.
    pub fn cluster_path(&self, id: ClusterId) -> String {
        let cluster = self.cluster(id);
        format!("{}/{}", self.site(cluster.site).name, cluster.name)
    }

    /// Returns the link that traffic from `from` to `to` takes.
    pub fn link(&self, from: SiteId, to: SiteId) -> Link {
        self.links[from.0][to.0]
    }

    /// Total cores of a cluster.
    pub fn cluster_cores(&self, id: ClusterId) -> u64 {
        self.cluster(id).nodes.iter().map(|node| u64::from(self.node(*node).cores.get())).sum()
    }
}

/// Names become host names, container names and Docker network names.
fn check_name(
    document: &Document,
    at: &[crate::yaml::Segment],
    name: &str,
) -> Result<(), InputError> {
    let valid = !name.is_empty()
        && name.len() <= 40
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err(document
            .error(at, format!("invalid name `{name}`"))
            .with_hint("use 1 to 40 lowercase letters, digits and `-`, not starting with `-`"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    name: String,
    sites: Vec<SiteSpec>,
    #[serde(default)]
    links: Vec<LinkEntry>,
    /// Link used between sites that `links` does not list.
    #[serde(default)]
    default_link: Option<LinkSpec>,
    /// Link between nodes of the same site; unlimited when absent.
    #[serde(default)]
    intra_site: Option<LinkSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteSpec {
    name: String,
    clusters: Vec<ClusterSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSpec {
    name: String,
    nodes: Vec<NodeSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSpec {
    name: String,
    cores: u32,
    #[serde(default = "default_memory_mib")]
    memory_mib: u64,
}

fn default_memory_mib() -> u64 {
    4096
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkEntry {
    between: Vec<String>,
    #[serde(default)]
    latency_ms: f64,
    #[serde(default)]
    bandwidth_mbps: f64,
}

impl LinkEntry {
    fn spec(&self) -> LinkSpec {
        LinkSpec { latency_ms: self.latency_ms, bandwidth_mbps: self.bandwidth_mbps }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkSpec {
    /// One-way delay in milliseconds.
    #[serde(default)]
    latency_ms: f64,
    /// Megabits per second; 0 or absent means unlimited.
    #[serde(default)]
    bandwidth_mbps: f64,
}

impl LinkSpec {
    fn to_link(self) -> Link {
        Link {
            latency: Duration::from_secs_f64(self.latency_ms.max(0.0) / 1000.0),
            bandwidth_bps: (self.bandwidth_mbps.max(0.0) * 1_000_000.0) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Topology, InputError> {
        Topology::from_document(&Document::parse(Path::new("t.yaml"), text)?)
    }

    const TWO_SITES: &str = "name: t\nsites:\n  - name: a\n    clusters:\n      - name: c1\n        nodes: [{name: n1, cores: 2}, {name: n2, cores: 4}]\n  - name: b\n    clusters:\n      - name: c2\n        nodes: [{name: n3, cores: 8}]\n";

    #[test]
    fn links_are_symmetric() {
        let text = format!(
            "{TWO_SITES}links:\n  - {{between: [a, b], latency_ms: 12.5, bandwidth_mbps: 100}}\n"
        );
        let topology = load(&text).unwrap();
        let (a, b) = (SiteId(0), SiteId(1));
        assert_eq!(topology.link(a, b), topology.link(b, a));
        assert_eq!(topology.link(a, b).latency, Duration::from_micros(12_500));
        assert_eq!(topology.link(a, b).bandwidth_bps, 100_000_000);
        assert_eq!(topology.link(a, a), Link::UNLIMITED);
        assert_eq!(topology.cluster_cores(ClusterId(0)), 6);
    }

    #[test]
    fn missing_link_names_both_sites() {
        let error = load(TWO_SITES).unwrap_err();
        assert!(error.message.contains("between sites `a` and `b`"), "{}", error.message);
        assert!(error.hint.unwrap().contains("default_link"));
    }

    #[test]
    fn duplicate_node_name_rejected() {
        let text = TWO_SITES.replace("n3", "n1");
        let error = load(&format!("{text}default_link: {{}}\n")).unwrap_err();
        assert_eq!(error.line, 10);
        assert!(error.message.contains("listed twice"), "{}", error.message);
    }

    #[test]
    fn zero_cores_rejected() {
        let text = TWO_SITES.replace("cores: 8", "cores: 0");
        let error = load(&format!("{text}default_link: {{}}\n")).unwrap_err();
        assert_eq!(error.line, 10);
        assert!(error.message.contains("0 cores"), "{}", error.message);
    }

    #[test]
    fn invalid_site_name_rejected() {
        let text = TWO_SITES.replace("name: b", "name: Site_B");
        let error = load(&format!("{text}default_link: {{}}\n")).unwrap_err();
        assert_eq!(error.line, 7);
        assert!(error.message.contains("invalid name `Site_B`"), "{}", error.message);
    }

    #[test]
    fn clusters_found_by_path_or_unique_name() {
        let topology = load(&format!("{TWO_SITES}default_link: {{latency_ms: 5}}\n")).unwrap();
        assert_eq!(topology.cluster_by_name("b/c2").unwrap().id, ClusterId(1));
        assert_eq!(topology.cluster_by_name("c1").unwrap().id, ClusterId(0));
        assert!(topology.cluster_by_name("a/c2").is_none());
        assert_eq!(topology.node_by_name("n3").unwrap().site, SiteId(1));
    }
}
