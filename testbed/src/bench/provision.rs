//! `cargo xtask bench --suite provision`: the docker backend's provisioning of a topology
//! against `docker compose up -d` of the same networks and containers.
//!
//! Each repetition provisions the topology twice, once through [`DockerBackend::provision`]
//! and once through a Compose file generated from the same topology, and times each side's
//! start and removal. The sides alternate which goes first, so that neither always meets a
//! warmer engine. Both start the same image with the same networks, names, host names, aliases
//! and labels. Compose returns once the containers have started; the backend also waits for
//! each node agent's ready line, which it prints at once.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, bail};
use orchestrator::backend::Backend;
use orchestrator::model::Topology;
use serde_json::{Map, Value, json};

use super::compare::BenchmarkEntry;
use crate::backends::RunLabels;
use crate::backends::docker::image::NodeImage;
use crate::backends::docker::{DockerBackend, engine, labels};

/// Seconds one repetition took on each side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProvisionFigures {
    /// `DockerBackend::provision`: networks created, containers started and ready.
    pub testbed_up_s: f64,
    /// `DockerBackend::teardown`: containers and networks removed.
    pub testbed_down_s: f64,
    /// `docker compose up -d`.
    pub compose_up_s: f64,
    /// `docker compose down`.
    pub compose_down_s: f64,
}

/// The topology, the node image and the Compose command, which every repetition shares.
pub struct Setup {
    topology: Topology,
    image: NodeImage,
    compose: Vec<String>,
    work_dir: PathBuf,
}

impl Setup {
    /// Loads the topology, makes sure the node image exists (which builds the static
    /// mock-ersap the first time) and finds a Compose command: the `docker compose` plugin, or
    /// the standalone `docker-compose`.
    pub async fn new(topology: &Path) -> anyhow::Result<Setup> {
        let topology = Topology::load(topology).map_err(|error| anyhow::anyhow!("{error}"))?;
        let compose = find_compose()?;
        let docker = engine::connect().await?;
        let image = crate::backends::docker::image::ensure(&docker).await?;
        let work_dir =
            std::env::temp_dir().join(format!("testbed-provision-{}", std::process::id()));
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("cannot create {}", work_dir.display()))?;
        Ok(Setup { topology, image, compose, work_dir })
    }

    /// Returns the Compose command, such as `docker compose` or `docker-compose`.
    pub fn compose_command(&self) -> String {
        self.compose.join(" ")
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn image(&self) -> &NodeImage {
        &self.image
    }

    /// Runs one repetition; with `compose_first`, the Compose side goes first.
    pub async fn measure(&self, compose_first: bool) -> anyhow::Result<ProvisionFigures> {
        let mut figures = ProvisionFigures {
            testbed_up_s: 0.0,
            testbed_down_s: 0.0,
            compose_up_s: 0.0,
            compose_down_s: 0.0,
        };
        if compose_first {
            (figures.compose_up_s, figures.compose_down_s) = self.measure_compose().await?;
            (figures.testbed_up_s, figures.testbed_down_s) = self.measure_testbed().await?;
        } else {
            (figures.testbed_up_s, figures.testbed_down_s) = self.measure_testbed().await?;
            (figures.compose_up_s, figures.compose_down_s) = self.measure_compose().await?;
        }
        Ok(figures)
    }

    async fn measure_testbed(&self) -> anyhow::Result<(f64, f64)> {
        let labels = bench_labels();
        let log_dir = self.work_dir.join(&labels.run_id);
        let image = self.image.clone();
        let mut backend =
            DockerBackend::connect_with_image(image, labels, "provision-bench", &log_dir).await?;
        let start = Instant::now();
        let provisioned = backend.provision(&self.topology).await;
        let up = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let removed = backend.teardown().await;
        let down = start.elapsed().as_secs_f64();
        provisioned?;
        removed?;
        Ok((up, down))
    }

    async fn measure_compose(&self) -> anyhow::Result<(f64, f64)> {
        let run = bench_labels();
        let docker = engine::connect().await?;
        let file = self.work_dir.join(format!("compose-{}.json", run.run_id));
        let host = crate::artifacts::host_name();
        let document = compose_file(&self.topology, &run, &host, &self.image);
        std::fs::write(&file, serde_json::to_vec_pretty(&document)?)
            .with_context(|| format!("cannot write {}", file.display()))?;
        let project = format!("tb-{}", run.run_id);
        let start = Instant::now();
        let up = self.compose(&project, &file, &["up", "--detach"]).await;
        let up_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let down = self.compose(&project, &file, &["down"]).await;
        let down_s = start.elapsed().as_secs_f64();
        // Whatever Compose left behind, such as after a failed `up`, goes by label.
        let swept = engine::remove_labelled(&docker, &labels::run_filter(&run.run_id)).await;
        let _ = std::fs::remove_file(&file);
        up?;
        down?;
        if !swept.failures.is_empty() {
            bail!("cannot remove what Compose created: {}", swept.failures.join("; "));
        }
        Ok((up_s, down_s))
    }

    async fn compose(&self, project: &str, file: &Path, args: &[&str]) -> anyhow::Result<()> {
        let (program, prefix) =
            self.compose.split_first().expect("a compose command has a program");
        let output = tokio::process::Command::new(program)
            .args(prefix)
            .arg("--project-name")
            .arg(project)
            .arg("--file")
            .arg(file)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.compose_command()))?;
        if !output.status.success() {
            bail!(
                "`{} {}` failed ({}): {}",
                self.compose_command(),
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

/// Medians of the repetitions in github-action-benchmark's format, and the ratio of the
/// backend's start time to Compose's.
pub fn benchmarks(runs: &[ProvisionFigures]) -> Vec<BenchmarkEntry> {
    let series = |figure: fn(&ProvisionFigures) -> f64| runs.iter().map(figure).collect::<Vec<_>>();
    vec![
        BenchmarkEntry::from_repetitions("provision/testbed_up", "s", &series(|f| f.testbed_up_s)),
        BenchmarkEntry::from_repetitions("provision/compose_up", "s", &series(|f| f.compose_up_s)),
        BenchmarkEntry::from_repetitions(
            "provision/testbed_to_compose_up",
            "ratio",
            &series(|f| f.testbed_up_s / f.compose_up_s),
        ),
        BenchmarkEntry::from_repetitions(
            "provision/testbed_down",
            "s",
            &series(|f| f.testbed_down_s),
        ),
        BenchmarkEntry::from_repetitions(
            "provision/compose_down",
            "s",
            &series(|f| f.compose_down_s),
        ),
    ]
}

/// Returns a Compose file, as JSON (which Compose reads as YAML), with the networks and
/// containers that [`DockerBackend::provision`] creates for `topology`.
pub fn compose_file(topology: &Topology, run: &RunLabels, host: &str, image: &NodeImage) -> Value {
    let run_id = &run.run_id;
    let mut networks = Map::new();
    networks.insert(
        "wan".to_string(),
        json!({ "name": labels::wan_network(run_id), "labels": labels::run_labels(run, host) }),
    );
    for cluster in topology.clusters() {
        let site = &topology.site(cluster.site).name;
        networks.insert(
            format!("{site}-{}", cluster.name),
            json!({
                "name": labels::cluster_network(run_id, site, &cluster.name),
                "labels": labels::placement_labels(run, host, site, &cluster.name, None),
            }),
        );
    }
    let mut services = Map::new();
    for node in topology.nodes() {
        let site = &topology.site(node.site).name;
        let cluster = &topology.cluster(node.cluster).name;
        services.insert(
            node.name.clone(),
            json!({
                "image": image.reference(),
                "container_name": labels::node_container(run_id, &node.name),
                "hostname": node.name,
                "labels": labels::placement_labels(run, host, site, cluster, Some(&node.name)),
                "networks": {
                    format!("{site}-{cluster}"): { "aliases": [node.name] },
                    "wan": { "aliases": [node.name] },
                },
            }),
        );
    }
    json!({ "version": "3.8", "services": services, "networks": networks })
}

fn bench_labels() -> RunLabels {
    RunLabels { run_id: crate::run::new_run_id(), harness_pid: std::process::id() }
}

/// Finds the Compose command: `docker compose` when the plugin runs, else `docker-compose`.
fn find_compose() -> anyhow::Result<Vec<String>> {
    let answers = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if answers("docker", &["compose", "version"]) {
        return Ok(vec!["docker".to_string(), "compose".to_string()]);
    }
    if answers("docker-compose", &["version"]) {
        return Ok(vec!["docker-compose".to_string()]);
    }
    bail!(
        "neither `docker compose` nor `docker-compose` runs here; the provision suite compares \
         against Compose (install the Compose plugin or docker-compose)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_sites() -> Topology {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        Topology::load(&root.join("fixtures/topologies/three-sites.yaml")).unwrap()
    }

    #[test]
    fn compose_file_mirrors_the_backend() {
        let run = RunLabels { run_id: "r1".to_string(), harness_pid: 7 };
        let image = NodeImage {
            name: "testbed-mock-ersap".to_string(),
            tag: "0123456789abcdef".to_string(),
            built: false,
            binary: PathBuf::from("/unused"),
        };
        let file = compose_file(&three_sites(), &run, "host", &image);
        let networks = file["networks"].as_object().unwrap();
        assert_eq!(networks.len(), 4, "one per cluster and the wan");
        assert_eq!(networks["wan"]["name"], "tb-r1-wan");
        assert_eq!(networks["jlab-farm"]["name"], "tb-r1-jlab-farm");
        assert_eq!(networks["jlab-farm"]["labels"]["testbed.run-id"], "r1");
        let services = file["services"].as_object().unwrap();
        assert_eq!(services.len(), 6, "one per node");
        let node = &services["nid-001"];
        assert_eq!(node["image"], "testbed-mock-ersap:0123456789abcdef");
        assert_eq!(node["container_name"], "tb-r1-nid-001");
        assert_eq!(node["hostname"], "nid-001");
        assert_eq!(node["labels"]["testbed.harness-pid"], "7");
        assert_eq!(node["networks"]["nersc-perlmutter"]["aliases"][0], "nid-001");
        assert_eq!(node["networks"]["wan"]["aliases"][0], "nid-001");
    }

    #[test]
    fn benchmarks_hold_medians_and_ratio() {
        let run = |up: f64| ProvisionFigures {
            testbed_up_s: up,
            testbed_down_s: 1.0,
            compose_up_s: 2.0,
            compose_down_s: 3.0,
        };
        let entries = benchmarks(&[run(1.0), run(3.0), run(2.0)]);
        let value = |name: &str| entries.iter().find(|entry| entry.name == name).unwrap().value;
        assert_eq!(value("provision/testbed_up"), 2.0);
        assert_eq!(value("provision/compose_up"), 2.0);
        assert_eq!(value("provision/testbed_to_compose_up"), 1.0);
        assert_eq!(value("provision/compose_down"), 3.0);
    }
}
