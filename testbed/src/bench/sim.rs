//! Scale of the `sim` backend: wall time and simulated events per second for topologies of
//! growing size, each run through the same orchestrator code as the other backends.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::run::{self, BackendKind, Inputs, RunConfig};

/// Nodes in each generated cluster.
const NODES_PER_CLUSTER: usize = 100;
/// Clusters in each generated site.
const CLUSTERS_PER_SITE: usize = 10;

/// Figures of one simulated run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SimFigures {
    pub nodes: usize,
    pub clusters: usize,
    pub instances: u64,
    pub events: u64,
    /// Virtual seconds the stream took.
    pub simulated_s: f64,
    pub wall_s: f64,
    /// Events delivered to the sink per second of wall time.
    pub events_per_wall_s: f64,
    pub passed: bool,
}

/// Writes a topology of `nodes` nodes (8 cores each) in clusters of 100 and sites of ten
/// clusters, with 10 ms between sites.
pub fn write_topology(path: &Path, nodes: usize) -> anyhow::Result<usize> {
    let clusters = nodes.div_ceil(NODES_PER_CLUSTER);
    let mut text = String::from("name: generated\nsites:\n");
    let mut node = 0;
    for cluster in 0..clusters {
        if cluster % CLUSTERS_PER_SITE == 0 {
            writeln!(text, "  - name: site-{}\n    clusters:", cluster / CLUSTERS_PER_SITE)?;
        }
        writeln!(text, "      - name: cluster-{cluster}\n        nodes:")?;
        for _ in 0..NODES_PER_CLUSTER.min(nodes - node) {
            writeln!(text, "          - {{ name: node-{node}, cores: 8 }}")?;
            node += 1;
        }
    }
    text.push_str("default_link: { latency_ms: 10, bandwidth_mbps: 0 }\n");
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(clusters)
}

/// Writes a workflow of three processing stages with `replicas` replicas each.
pub fn write_workflow(path: &Path, replicas: u32) -> anyhow::Result<()> {
    let text = format!(
        "io-services:\n  reader: {{class: Source, name: Source}}\n  writer: {{class: Sink, name: Sink}}\n\
         services:\n  - {{class: A, name: StageA}}\n  - {{class: B, name: StageB}}\n  - {{class: C, name: StageC}}\n\
         testbed:\n  defaults: {{cost_ns_per_byte: 100, max_replicas: {replicas}}}\n  stages:\n\
         \x20   StageA: {{replicas: {replicas}}}\n    StageB: {{replicas: {replicas}}}\n    StageC: {{replicas: {replicas}}}\n"
    );
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Runs the generated workflow on `nodes` nodes with the loss of one replica mid-stream.
pub fn run_one(folder: &Path, nodes: usize, events: u64) -> anyhow::Result<SimFigures> {
    std::fs::create_dir_all(folder)?;
    let topology = folder.join(format!("topology-{nodes}.yaml"));
    let workflow = folder.join("workflow.yaml");
    let scenario = folder.join("scenario.yaml");
    let clusters = write_topology(&topology, nodes)?;
    // One replica per 40 nodes and stage keeps a stage within one cluster of 800 cores.
    let replicas = (nodes / 40).clamp(1, 700) as u32;
    write_workflow(&workflow, replicas)?;
    let rate = 5_000.0 * f64::from(replicas);
    std::fs::write(
        &scenario,
        format!(
            "name: sim-scale\nstream: {{events: {events}, event_size: 1024, rate: {rate}}}\ntimeout_s: 3600\n\
             actions:\n  - {{at_s: 1, kill_instance: {{stage: StageB, replica: 0}}}}\nexpect: {{max_lost: 0}}\n"
        ),
    )?;
    let config = RunConfig {
        backend: BackendKind::Sim,
        topology,
        workflow,
        scenario,
        events: None,
        output: folder.join("runs"),
        mock_bin: Path::new("mock-ersap").to_path_buf(),
        quiet: true,
        ersap_fe: None,
        slurm: crate::backends::slurm::SlurmTarget::Local,
        seed: 1,
    };
    let inputs = Inputs::load(&config).map_err(|error| anyhow::anyhow!("{error}"))?;
    let run_id = format!("sim-{nodes}");
    let run_dir = config.output.join(&run_id);
    std::fs::create_dir_all(&run_dir)?;
    let runtime = crate::backends::sim::runtime()?;
    let wall = Instant::now();
    let summary = runtime
        .block_on(run::execute(&config, inputs, &run_id, &run_dir))
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let wall_s = wall.elapsed().as_secs_f64();
    if summary.events.received == 0 {
        bail!("the simulated sink received nothing on {nodes} nodes");
    }
    Ok(SimFigures {
        nodes,
        clusters,
        instances: 2 + 3 * u64::from(replicas),
        events,
        simulated_s: summary.phases_s.stream + summary.phases_s.drain,
        wall_s,
        events_per_wall_s: summary.events.received as f64 / wall_s.max(1e-9),
        passed: summary.passed,
    })
}
