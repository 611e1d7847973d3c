//! Placement: the global level assigns each stage to a cluster, the cluster level assigns
//! each replica to a node.
//!
//! Capacity is counted in cores: a replica takes its stage's `cores` on one node, and a node
//! runs replicas while their cores fit in its own. A stage with a `site` runs only at that
//! site. The global level checks that a cluster can hold every replica of a stage node by
//! node before it chooses the cluster, so the cluster level never fails on a plan the global
//! level made from the same free capacity.

use std::fmt;

use crate::error::InputError;
use crate::model::{ClusterId, NodeId, SiteId, StageId, Topology, Workflow};

/// Free cores per node, shared by both levels while they place a workflow.
#[derive(Debug, Clone)]
pub struct Capacity {
    free: Vec<u32>,
}

impl Capacity {
    /// Every node of the topology with all its cores free.
    pub fn of(topology: &Topology) -> Capacity {
        Capacity { free: topology.nodes().iter().map(|node| node.cores.get()).collect() }
    }

    pub fn free(&self, node: NodeId) -> u32 {
        self.free[node.0]
    }

    /// Takes `cores` from a node; returns false and changes nothing when they do not fit.
    pub fn take(&mut self, node: NodeId, cores: u32) -> bool {
        if self.free[node.0] >= cores {
            self.free[node.0] -= cores;
            true
        } else {
            false
        }
    }

    pub fn release(&mut self, node: NodeId, cores: u32, topology: &Topology) {
        let total = topology.node(node).cores.get();
        self.free[node.0] = (self.free[node.0] + cores).min(total);
    }

    /// Marks a node as unusable, for example after it was lost.
    pub fn remove_node(&mut self, node: NodeId) {
        self.free[node.0] = 0;
    }

    /// Number of replicas needing `cores` each that fit on a cluster's nodes.
    pub fn slots(&self, topology: &Topology, cluster: ClusterId, cores: u32) -> u32 {
        topology.cluster(cluster).nodes.iter().map(|node| self.free[node.0] / cores.max(1)).sum()
    }

    pub fn free_cores(&self, topology: &Topology, cluster: ClusterId) -> u32 {
        topology.cluster(cluster).nodes.iter().map(|node| self.free[node.0]).sum()
    }
}

/// A workflow that does not fit the topology.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// A stage names a site the topology does not have.
    #[error("{0}")]
    UnknownSite(InputError),
    /// No candidate cluster has room for all replicas of a stage.
    #[error(
        "stage `{stage}` does not fit: it needs {needed_cores} cores ({replicas} replicas of \
         {cores_per_replica} cores) {scope}, but the best candidate ({best}) has room for \
         {best_replicas} of them; {missing_cores} more cores are missing"
    )]
    NoRoom {
        stage: String,
        replicas: u32,
        cores_per_replica: u32,
        needed_cores: u32,
        scope: String,
        best: String,
        best_replicas: u32,
        missing_cores: u32,
    },
}

/// Where each stage runs: the cluster of every stage and the node of every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Indexed by stage.
    pub clusters: Vec<ClusterId>,
    /// Indexed by stage, then replica.
    pub nodes: Vec<Vec<NodeId>>,
}

impl Placement {
    pub fn cluster_of(&self, stage: StageId) -> ClusterId {
        self.clusters[stage.0]
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (stage, nodes) in self.nodes.iter().enumerate() {
            writeln!(f, "stage {stage}: cluster {} nodes {:?}", self.clusters[stage].0, nodes)?;
        }
        Ok(())
    }
}

/// Places a whole workflow: the global level, then the cluster level for every stage.
pub fn place_workflow(
    topology: &Topology,
    workflow: &Workflow,
    capacity: &mut Capacity,
) -> Result<Placement, PlacementError> {
    let mut clusters = Vec::new();
    let mut nodes = Vec::new();
    let mut previous: Option<ClusterId> = None;
    for stage in workflow.stages() {
        let cluster = choose_cluster(topology, workflow, stage.id, previous, capacity, &[])?;
        let replicas =
            place_replicas(topology, cluster, stage.cores.get(), stage.replicas.get(), capacity)
                .expect("choose_cluster checked that the replicas fit");
        clusters.push(cluster);
        nodes.push(replicas);
        previous = Some(cluster);
    }
    Ok(Placement { clusters, nodes })
}

/// Global level: the cluster for one stage.
///
/// Candidates are the clusters of the stage's site, or every cluster when it has none, minus
/// `excluded` (clusters that are lost or cut off). Among those that fit every replica, it
/// prefers the cluster of the previous stage (no wide-area hop), then the one with the most
/// free cores, then the first in the topology file, so the choice is deterministic.
pub fn choose_cluster(
    topology: &Topology,
    workflow: &Workflow,
    stage: StageId,
    previous: Option<ClusterId>,
    capacity: &Capacity,
    excluded: &[ClusterId],
) -> Result<ClusterId, PlacementError> {
    let stage = workflow.stage(stage);
    let site: Option<SiteId> = match &stage.site {
        None => None,
        Some(name) => match topology.site_by_name(name) {
            Some(site) => Some(site.id),
            None => {
                let origin = stage.site_origin.clone().unwrap_or(stage.origin.clone());
                return Err(PlacementError::UnknownSite(
                    origin
                        .error(format!("stage `{}` asks for unknown site `{name}`", stage.name))
                        .with_hint(format!(
                            "known sites in topology `{}`: {}",
                            topology.name,
                            topology.site_names().join(", ")
                        )),
                ));
            }
        },
    };
    let candidates: Vec<ClusterId> = topology
        .clusters()
        .iter()
        .filter(|cluster| site.is_none_or(|site| cluster.site == site))
        .map(|cluster| cluster.id)
        .filter(|id| !excluded.contains(id))
        .collect();
    let cores = stage.cores.get();
    let replicas = stage.replicas.get();
    let fitting =
        candidates.iter().copied().filter(|id| capacity.slots(topology, *id, cores) >= replicas);
    let best = fitting.max_by_key(|id| {
        (Some(*id) == previous, capacity.free_cores(topology, *id), std::cmp::Reverse(id.0))
    });
    if let Some(cluster) = best {
        return Ok(cluster);
    }
    let roomiest = candidates
        .iter()
        .copied()
        .max_by_key(|id| (capacity.slots(topology, *id, cores), std::cmp::Reverse(id.0)));
    let (best, best_replicas) = match roomiest {
        Some(id) => (topology.cluster_path(id), capacity.slots(topology, id, cores)),
        None => ("no cluster is available".to_string(), 0),
    };
    let scope = match &stage.site {
        Some(site) => format!("on one cluster of site `{site}`"),
        None => "on one cluster".to_string(),
    };
    Err(PlacementError::NoRoom {
        stage: stage.name.clone(),
        replicas,
        cores_per_replica: cores,
        needed_cores: replicas * cores,
        scope,
        best,
        best_replicas,
        missing_cores: (replicas - best_replicas.min(replicas)) * cores,
    })
}

/// Cluster level: nodes for `replicas` replicas of `cores` cores each, spread over the
/// cluster's nodes (the node with the most free cores first) so that losing one node takes as
/// few replicas of a stage as possible. Returns `None`, taking nothing, when they do not fit.
pub fn place_replicas(
    topology: &Topology,
    cluster: ClusterId,
    cores: u32,
    replicas: u32,
    capacity: &mut Capacity,
) -> Option<Vec<NodeId>> {
    let mut trial = capacity.clone();
    let mut chosen = Vec::with_capacity(replicas as usize);
    for _ in 0..replicas {
        let node = topology
            .cluster(cluster)
            .nodes
            .iter()
            .copied()
            .filter(|node| trial.free(*node) >= cores)
            .max_by_key(|node| (trial.free(*node), std::cmp::Reverse(node.0)))?;
        trial.take(node, cores);
        chosen.push(node);
    }
    *capacity = trial;
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::yaml::Document;

    const TOPOLOGY: &str = "\
name: test
sites:
  - name: jlab
    clusters:
      - name: farm
        nodes:
          - { name: farm-1, cores: 2 }
          - { name: farm-2, cores: 2 }
  - name: nersc
    clusters:
      - name: perlmutter
        nodes:
          - { name: pm-1, cores: 4 }
default_link: { latency_ms: 10 }
";

    fn topology() -> Topology {
        Topology::from_document(&Document::parse(Path::new("t.yaml"), TOPOLOGY).unwrap()).unwrap()
    }

    fn workflow(testbed: &str) -> Workflow {
        let text = format!(
            "io-services:\n  reader: {{class: R, name: Reader}}\n  writer: {{class: W, name: Writer}}\n\
             services:\n  - {{class: P, name: Proc}}\ntestbed:\n{testbed}"
        );
        Workflow::from_document(&Document::parse(Path::new("w.yaml"), &text).unwrap()).unwrap()
    }

    #[test]
    fn site_preference_is_respected() {
        let topology = topology();
        let workflow = workflow(
            "  stages:\n    Reader: {site: jlab}\n    Proc: {site: nersc, replicas: 3}\n    Writer: {site: jlab}\n",
        );
        let placement = place_workflow(&topology, &workflow, &mut Capacity::of(&topology)).unwrap();
        assert_eq!(topology.cluster_path(placement.clusters[0]), "jlab/farm");
        assert_eq!(topology.cluster_path(placement.clusters[1]), "nersc/perlmutter");
        assert_eq!(placement.nodes[1].len(), 3);
        assert_eq!(topology.cluster_path(placement.clusters[2]), "jlab/farm");
    }

    #[test]
    fn replicas_spread_over_nodes() {
        let topology = topology();
        let workflow = workflow(
            "  stages:\n    Proc: {site: jlab, replicas: 2}\n    Reader: {site: nersc}\n    Writer: {site: nersc}\n",
        );
        let placement = place_workflow(&topology, &workflow, &mut Capacity::of(&topology)).unwrap();
        let mut nodes = placement.nodes[1].clone();
        nodes.sort();
        nodes.dedup();
        assert_eq!(nodes.len(), 2, "two replicas on two different nodes");
    }

    #[test]
    fn full_site_error_names_stage_and_missing_cores() {
        let topology = topology();
        let workflow = workflow("  stages:\n    Proc: {site: jlab, replicas: 3, cores: 2}\n");
        let error = place_workflow(&topology, &workflow, &mut Capacity::of(&topology)).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("stage `Proc`"), "{text}");
        assert!(text.contains("needs 6 cores"), "{text}");
        assert!(text.contains("jlab/farm"), "{text}");
        assert!(text.contains("room for 1 of them"), "{text}");
        assert!(text.contains("4 more cores are missing"), "{text}");
    }

    #[test]
    fn unknown_site_names_line_and_known_sites() {
        let topology = topology();
        let workflow = workflow("  stages:\n    Proc:\n      site: ornl\n");
        let error = place_workflow(&topology, &workflow, &mut Capacity::of(&topology)).unwrap_err();
        let PlacementError::UnknownSite(input) = error else { panic!("expected UnknownSite") };
        assert_eq!(input.line, 9);
        assert!(input.hint.as_deref().unwrap_or("").contains("jlab, nersc"));
    }

    #[test]
    fn unconstrained_stage_follows_previous_cluster() {
        let topology = topology();
        let workflow = workflow("  stages:\n    Reader: {site: jlab}\n");
        let placement = place_workflow(&topology, &workflow, &mut Capacity::of(&topology)).unwrap();
        assert_eq!(placement.clusters[1], placement.clusters[0]);
    }

    #[test]
    fn failed_replica_placement_takes_nothing() {
        let topology = topology();
        let mut capacity = Capacity::of(&topology);
        let farm = topology.cluster_by_name("farm").unwrap().id;
        assert!(place_replicas(&topology, farm, 2, 3, &mut capacity).is_none());
        assert_eq!(capacity.free_cores(&topology, farm), 4);
    }
}
