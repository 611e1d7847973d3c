//! `cargo xtask bench --suite backends`: how long each backend takes to provision a topology
//! and to start one instance, in one run, with the slurm backend's submit-to-running time.
//!
//! Each repetition runs, in turn on the process, docker and slurm backends: provision the
//! topology, start one sink instance on its first node and wait until it is ready, stop it,
//! and tear down. Provisioning means nothing on the process backend (its nodes are
//! logical), one container per node on docker, and a whole Slurm (munged, slurmctld, a slurmd
//! per node, slurmrestd, and the first scheduling cycle) on slurm.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow};
use orchestrator::backend::{Backend, InstanceSpec};
use orchestrator::control::Role;
use orchestrator::model::{Cost, CostMode, InstanceId, Lang, StageId, Topology};

use super::compare::BenchmarkEntry;
use crate::backends::RunLabels;
use crate::backends::docker::DockerBackend;
use crate::backends::process::ProcessBackend;
use crate::backends::slurm::{SlurmBackend, SlurmTarget};

/// Seconds of one backend in one repetition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendFigures {
    pub provision_s: f64,
    /// From the start request to the instance's ready line.
    pub instance_start_s: f64,
    /// Slurm only: from the job's submission until Slurm reports it running.
    pub submit_to_running_s: Option<f64>,
    pub teardown_s: f64,
}

/// The backends the suite compares, in the order it runs them.
pub const BACKENDS: [&str; 3] = ["process", "docker", "slurm"];

/// Runs one repetition on `backend` in a fresh folder under `work_dir`.
pub async fn measure(
    backend: &str,
    topology: &Topology,
    mock_bin: &Path,
    work_dir: &Path,
    repetition: u32,
) -> anyhow::Result<BackendFigures> {
    let run_id = format!("bench-{}-{backend}-{repetition}", std::process::id());
    let run_dir: PathBuf = work_dir.join(&run_id);
    let labels = RunLabels { run_id: run_id.clone(), harness_pid: std::process::id() };
    let token = crate::run::new_token();
    let log_dir = run_dir.join("logs");
    match backend {
        "process" => {
            let mut process = ProcessBackend::new(mock_bin, labels, &token, &log_dir);
            cycle(&mut process, topology).await
        }
        "docker" => {
            let mut docker = DockerBackend::connect(labels, &token, &log_dir).await?;
            cycle(&mut docker, topology).await
        }
        "slurm" => {
            SlurmBackend::check_environment(&SlurmTarget::Local).await.map_err(|e| anyhow!(e))?;
            let mut slurm =
                SlurmBackend::new(SlurmTarget::Local, mock_bin, labels, &token, &run_dir);
            let mut figures = cycle(&mut slurm, topology).await?;
            figures.submit_to_running_s = slurm.submit_to_running_s.first().copied();
            Ok(figures)
        }
        other => Err(anyhow!("unknown backend {other}")),
    }
}

/// Provisions, starts one instance, stops it and tears down, timing each step.
async fn cycle<B: Backend>(backend: &mut B, topology: &Topology) -> anyhow::Result<BackendFigures> {
    let name = backend.kind();
    let started = Instant::now();
    let provisioned = backend.provision(topology).await;
    let provision_s = started.elapsed().as_secs_f64();
    let result = match provisioned {
        Ok(()) => start_one(backend, topology).await,
        Err(error) => Err(anyhow!("{name}: {error}")),
    };
    if let Ok((id, _)) = &result {
        let _ = backend.stop_instance(*id).await;
    }
    let started = Instant::now();
    backend.teardown().await.with_context(|| format!("{name}: teardown"))?;
    let teardown_s = started.elapsed().as_secs_f64();
    let (_, instance_start_s) = result?;
    Ok(BackendFigures { provision_s, instance_start_s, submit_to_running_s: None, teardown_s })
}

/// Starts one sink on the topology's first node; returns it and the seconds it took.
async fn start_one<B: Backend>(
    backend: &mut B,
    topology: &Topology,
) -> anyhow::Result<(InstanceId, f64)> {
    let node = &topology.nodes()[0];
    let cluster = topology.cluster(node.cluster);
    let spec = InstanceSpec {
        id: InstanceId::new(StageId(0), 0),
        role: Role::Sink,
        stage: "BenchSink".to_string(),
        engine_class: "org.jlab.testbed.BenchSink".to_string(),
        container: "bench".to_string(),
        lang: Lang::Java,
        node: node.id,
        site_name: topology.site(node.site).name.clone(),
        cluster_name: cluster.name.clone(),
        node_name: node.name.clone(),
        seq_start: 0,
        events: 0,
        event_size: 1024,
        rate: 0.0,
        cost: Cost {
            ns_per_byte: 0.0,
            mode: CostMode::Sleep,
            threads: std::num::NonZeroU32::MIN,
            output_size: None,
        },
        config: serde_json::Value::Null,
    };
    let started = Instant::now();
    backend.start_instance(&spec).await.map_err(|error| anyhow!("{error}"))?;
    Ok((spec.id, started.elapsed().as_secs_f64()))
}

/// benchmarks.json entries: every figure of every backend, median over the repetitions.
pub fn benchmarks(runs: &[(String, BackendFigures)]) -> Vec<BenchmarkEntry> {
    let mut entries = Vec::new();
    for backend in BACKENDS {
        let of: Vec<&BackendFigures> =
            runs.iter().filter(|(name, _)| name == backend).map(|(_, figures)| figures).collect();
        if of.is_empty() {
            continue;
        }
        let series =
            |figure: fn(&BackendFigures) -> f64| of.iter().map(|f| figure(f)).collect::<Vec<_>>();
        entries.push(BenchmarkEntry::from_repetitions(
            format!("backends/{backend}/provision"),
            "s",
            &series(|f| f.provision_s),
        ));
        entries.push(BenchmarkEntry::from_repetitions(
            format!("backends/{backend}/instance_start"),
            "s",
            &series(|f| f.instance_start_s),
        ));
        entries.push(BenchmarkEntry::from_repetitions(
            format!("backends/{backend}/teardown"),
            "s",
            &series(|f| f.teardown_s),
        ));
        let to_running: Vec<f64> = of.iter().filter_map(|f| f.submit_to_running_s).collect();
        if !to_running.is_empty() {
            entries.push(BenchmarkEntry::from_repetitions(
                format!("backends/{backend}/submit_to_running"),
                "s",
                &to_running,
            ));
        }
    }
    entries
}
