//! One run of a scenario: load the inputs, provision, deploy, stream, drain, check the
//! expectations, tear down and write the artifacts.
//!
//! Teardown happens on every path out of [`execute`]: success, failed expectations, errors,
//! and Ctrl-C or SIGTERM (the streaming future is dropped and the orchestrator shuts down
//! before the artifacts are written). A panic drops the backend, whose children are killed on
//! drop; instances also exit by themselves once the harness process is gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

// Phases are timed with tokio's clock, which is virtual time on the `sim` backend.
use tokio::time::Instant;

use orchestrator::InputError;
use orchestrator::backend::{Fault, SinkRecord};
use orchestrator::control::Role;
use orchestrator::model::{InstanceId, InstanceState, StageId, Topology, Workflow};
use orchestrator::orchestrator::{Event, Options, Orchestrator, OrchestratorError, StreamParams};
use orchestrator::placement::PlacementError;
use tracing::{error, info, warn};

use crate::artifacts::{
    self, Benchmark, ExpectationResult, Phases, StageSummary, Summary, write_json,
};
use crate::backends::RunLabels;
use crate::backends::docker::DockerBackend;
use crate::backends::ersap::ErsapBackend;
use crate::backends::process::ProcessBackend;
use crate::backends::slurm::{SlurmBackend, SlurmTarget};
use crate::faults::{FaultRecord, RescaleRecord};
use crate::progress::Progress;
use crate::results::{self, EventCounts, Sample};
use crate::scenario::{Action, ActionKind, ScaleChange, Scenario, When};

/// Test hook: when this environment variable is `1`, the harness panics right after deploy.
pub const PANIC_AFTER_DEPLOY_ENV: &str = "TESTBED_PANIC_AFTER_DEPLOY";

/// How often, at most, the harness polls every instance while streaming. With heartbeats
/// shorter than twice this, it polls twice per heartbeat.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Returns the poll period for heartbeats every `heartbeat`.
fn poll_period(heartbeat: Duration) -> Duration {
    POLL_INTERVAL.min(heartbeat / 2)
}

/// Backends the harness can run a scenario on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Local processes on 127.0.0.1.
    Process,
    /// One Docker network per cluster and one container per node, from a locally built image.
    Docker,
    /// Local processes that are ERSAP DPEs, deployed and watched over xMsg.
    Ersap,
    /// A deterministic simulation in virtual time; `--seed` fixes its randomness.
    Sim,
    /// Slurm batch jobs: on a local Slurm the run starts, or on a site's Slurm.
    Slurm,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Process => "process",
            BackendKind::Docker => "docker",
            BackendKind::Ersap => "ersap",
            BackendKind::Sim => "sim",
            BackendKind::Slurm => "slurm",
        }
    }
}

/// What to run and where to put the results.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub backend: BackendKind,
    pub topology: PathBuf,
    pub workflow: PathBuf,
    pub scenario: PathBuf,
    /// Overrides the scenario's event count.
    pub events: Option<u64>,
    pub output: PathBuf,
    pub mock_bin: PathBuf,
    pub quiet: bool,
    /// `ersap` backend: `HOST:PORT` of a running front end to use instead of starting one.
    pub ersap_fe: Option<String>,
    /// `sim` backend: seed of its random choices.
    pub seed: u64,
    /// `slurm` backend: a local cluster or a site's slurmrestd.
    pub slurm: SlurmTarget,
}

/// How a run ended; each maps to an exit code.
#[derive(Debug)]
pub enum RunError {
    /// Invalid input file or a workflow that does not fit: exit 2.
    Input(InputError),
    /// The environment is unusable (missing binary, folder not writable): exit 2.
    Environment(String),
    /// Ctrl-C or SIGTERM: exit 130.
    Interrupted,
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Input(error) => write!(f, "{error}"),
            RunError::Environment(message) => f.write_str(message),
            RunError::Interrupted => f.write_str("interrupted; every instance was stopped"),
        }
    }
}

impl std::error::Error for RunError {}

/// The checked inputs of a run.
pub struct Inputs {
    pub topology: Topology,
    pub workflow: Workflow,
    pub scenario: Scenario,
}

impl Inputs {
    pub fn load(config: &RunConfig) -> Result<Inputs, RunError> {
        let topology = Topology::load(&config.topology).map_err(RunError::Input)?;
        let workflow = Workflow::load(&config.workflow).map_err(RunError::Input)?;
        let mut scenario = Scenario::load(&config.scenario).map_err(RunError::Input)?;
        scenario.check_names(&config.scenario, &workflow, &topology).map_err(RunError::Input)?;
        if let Some(events) = config.events {
            if events == 0 {
                return Err(RunError::Environment(
                    "--events is 0; stream at least 1 event".to_string(),
                ));
            }
            scenario.stream.events = events;
        }
        Ok(Inputs { topology, workflow, scenario })
    }
}

/// A new run id: UTC time to the second and a random suffix, so that ids sort by time and two
/// runs started in the same second still differ.
pub fn new_run_id() -> String {
    let suffix: u32 = rand::random();
    format!("{}-{:06x}", chrono::Utc::now().format("%Y%m%d-%H%M%S"), suffix & 0xff_ffff)
}

/// A fresh 128-bit control token.
pub fn new_token() -> String {
    let value: u128 = rand::random();
    format!("{value:032x}")
}

/// Runs a scenario end to end and writes its artifacts into `run_dir`. Returns the summary;
/// `summary.passed` says whether every expectation held.
pub async fn execute(
    config: &RunConfig,
    inputs: Inputs,
    run_id: &str,
    run_dir: &Path,
) -> Result<Summary, RunError> {
    let progress = Progress::new(config.quiet);
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let run_start = Instant::now();
    let token = new_token();
    let labels = RunLabels { run_id: run_id.to_string(), harness_pid: std::process::id() };
    let log_dir = run_dir.join("logs");
    let runs_mock_bin =
        matches!(config.backend, BackendKind::Process | BackendKind::Ersap | BackendKind::Slurm);
    if runs_mock_bin && !config.mock_bin.is_file() {
        return Err(RunError::Environment(format!(
            "mock instance binary {} not found; build it with `cargo build --release -p testbed` \
             or pass --mock-bin",
            config.mock_bin.display()
        )));
    }
    let backend: Box<dyn orchestrator::backend::Backend> = match config.backend {
        BackendKind::Sim => Box::new(crate::backends::sim::SimBackend::new(config.seed, &log_dir)),
        BackendKind::Process => {
            Box::new(ProcessBackend::new(&config.mock_bin, labels, &token, &log_dir))
        }
        BackendKind::Slurm => {
            // Missing Slurm programs or an unreachable slurmrestd make the environment
            // unusable; that is found out before anything starts.
            let faults: Vec<&str> = inputs
                .scenario
                .actions
                .iter()
                .map(|action| action.kind.name())
                .filter(|name| *name != "scale")
                .collect();
            let checked =
                SlurmBackend::check_inputs(&config.slurm, run_id, &inputs.topology, &faults);
            if let Err(error) = checked {
                return Err(RunError::Environment(error));
            }
            if let Err(error) = SlurmBackend::check_environment(&config.slurm).await {
                progress.phase("slurm", None, "").failed("Slurm is not usable".to_string());
                return Err(RunError::Environment(error));
            }
            Box::new(SlurmBackend::new(
                config.slurm.clone(),
                &config.mock_bin,
                labels,
                &token,
                run_dir,
            ))
        }
        BackendKind::Ersap => Box::new(ErsapBackend::new(
            &config.mock_bin,
            labels,
            &token,
            &log_dir,
            config.ersap_fe.clone(),
        )),
        BackendKind::Docker => {
            // Connecting and preparing the node image come before the run: an engine that
            // cannot be reached or an image that cannot be built is an unusable environment.
            let phase = progress.phase("image", None, "");
            match DockerBackend::connect(labels, &token, &log_dir).await {
                Ok(backend) => {
                    let image = backend.image();
                    let verb = if image.built { "built" } else { "reused" };
                    phase.done(format!("{verb} {}", image.reference()));
                    Box::new(backend)
                }
                Err(error) => {
                    phase.failed("Docker is not usable".to_string());
                    return Err(RunError::Environment(error.to_string()));
                }
            }
        }
    };
    let scenario = inputs.scenario.clone();
    let params = StreamParams {
        events: scenario.stream.events,
        event_size: scenario.stream.event_size,
        rate: scenario.stream.rate,
    };
    let mut orchestrator = Orchestrator::new(
        inputs.topology,
        inputs.workflow,
        backend,
        &token,
        params,
        Options {
            heartbeat: Duration::from_millis(scenario.heartbeat_ms),
            poll_period: poll_period(Duration::from_millis(scenario.heartbeat_ms)),
            ..Options::default()
        },
    );

    match orchestrator.plan() {
        Ok(_) => {}
        Err(OrchestratorError::Placement(PlacementError::UnknownSite(error))) => {
            return Err(RunError::Input(error));
        }
        Err(OrchestratorError::Placement(error)) => {
            let file = config.workflow.clone();
            return Err(RunError::Input(InputError::new(&file, 0, error.to_string()).with_hint(
                "lower the stage's replicas or cores in the workflow's `testbed:` section, \
                     or add nodes to the topology",
            )));
        }
        Err(other) => return Err(RunError::Environment(other.to_string())),
    }
    info!(run_id, backend = config.backend.as_str(), scenario = %scenario.name, "run started");
    progress.println(&format!(
        "testbed: run {run_id}, scenario `{}` on the {} backend, {} events",
        scenario.name,
        config.backend.as_str(),
        scenario.stream.events
    ));

    let mut recorder = Recorder::new(orchestrator.workflow().stages().len());
    let mut phases = Phases::default();
    let mut errors = Vec::new();
    let driven = tokio::select! {
        result = drive(&mut orchestrator, &scenario, &progress, &mut recorder, &mut phases) => Some(result),
        _ = shutdown_signal() => None,
    };
    let interrupted = driven.is_none();
    errors.append(&mut recorder.not_run);
    let final_stats = match driven {
        Some(Ok(())) => Some(orchestrator.final_stats().await),
        Some(Err(error)) => {
            error!(%error, "run failed");
            errors.push(error);
            Some(orchestrator.final_stats().await)
        }
        None => None,
    };
    let reports = if interrupted { BTreeMap::new() } else { orchestrator.reports().await };
    let lost_sinks = match &final_stats {
        Some(final_stats) => lost_sink_records(&orchestrator, final_stats),
        None => Vec::new(),
    };

    let teardown = progress.phase("teardown", None, "");
    let teardown_start = Instant::now();
    if let Err(error) = orchestrator.shutdown().await {
        warn!(%error, "teardown failed");
        errors.push(format!("teardown: {error}"));
    }
    phases.teardown = teardown_start.elapsed().as_secs_f64();
    teardown.done(format!(
        "{} instances stopped in {:.1} s",
        orchestrator.instances().count(),
        phases.teardown
    ));
    if interrupted {
        return Err(RunError::Interrupted);
    }
    phases.total = run_start.elapsed().as_secs_f64();

    let final_stats = final_stats.unwrap_or_default();
    let summary = summarize(
        config,
        &orchestrator,
        &scenario,
        &final_stats,
        &lost_sinks,
        &recorder,
        phases,
        errors,
        run_id,
        started_at,
    );
    write_artifacts(run_dir, &summary, &recorder, &orchestrator, &reports)
        .map_err(|error| RunError::Environment(format!("cannot write artifacts: {error:#}")))?;
    Ok(summary)
}

/// Provision, deploy, stream and drain. Errors are returned as text for the summary; the
/// caller always tears down.
async fn drive(
    orchestrator: &mut Orchestrator,
    scenario: &Scenario,
    progress: &Progress,
    recorder: &mut Recorder,
    phases: &mut Phases,
) -> Result<(), String> {
    let node_count = orchestrator.topology().nodes().len();
    let cluster_count = orchestrator.topology().clusters().len();
    let phase = progress.phase("provision", None, "");
    let start = Instant::now();
    if let Err(error) = orchestrator.provision().await {
        phase.failed(error.to_string());
        return Err(format!("provision: {error}"));
    }
    phases.provision = start.elapsed().as_secs_f64();
    phase
        .done(format!("{cluster_count} clusters, {node_count} nodes in {:.1} s", phases.provision));

    let instance_total: u64 =
        orchestrator.workflow().stages().iter().map(|stage| u64::from(stage.replicas.get())).sum();
    let phase = progress.phase("deploy", Some(instance_total), "instances");
    let start = Instant::now();
    let deployed = orchestrator.deploy().await;
    for event in orchestrator.take_events() {
        if let Event::InstanceReady { .. } = event {
            phase.inc(1);
        }
    }
    if let Err(error) = deployed {
        phase.failed(error.to_string());
        return Err(format!("deploy: {error}"));
    }
    phases.deploy = start.elapsed().as_secs_f64();
    phase.done(format!("{instance_total} instances ready and linked in {:.1} s", phases.deploy));
    // Test hook: a panic with every instance deployed, to check that nothing outlives it.
    if std::env::var_os(PANIC_AFTER_DEPLOY_ENV).is_some_and(|value| value == "1") {
        panic!("{PANIC_AFTER_DEPLOY_ENV}=1: panicking after deploy as requested");
    }

    let total = scenario.stream.events;
    let phase = progress.phase("stream", Some(total), "events");
    let stream_start = Instant::now();
    if let Err(error) = orchestrator.start_stream().await {
        phase.failed(error.to_string());
        return Err(format!("start: {error}"));
    }
    let timeout = Duration::from_secs_f64(scenario.timeout_s);
    let mut sources_done = false;
    // When the sources had emitted every event: after it the sink's throughput falls
    // whatever happened, so recovery is only looked for before it.
    let mut emitted_at: Option<f64> = None;
    let mut pending: Vec<Action> = scenario.actions.clone();
    let mut autoscaler = crate::autoscaler::Autoscaler::new(scenario.autoscale);
    let mut interval = tokio::time::interval(orchestrator.options().poll_period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let snapshot = match orchestrator.poll().await {
            Ok(snapshot) => snapshot,
            Err(error) => {
                phase.failed(error.to_string());
                return Err(format!("stream: {error}"));
            }
        };
        let elapsed = stream_start.elapsed();
        let now_s = elapsed.as_secs_f64();
        recorder.record(orchestrator, &snapshot.stats, now_s);
        let sink_events = recorder.last_events().last().copied().unwrap_or(0);
        phase.set_position(sink_events.min(total));
        for event in orchestrator.take_events() {
            match event {
                Event::InstanceFailed { name, reason, at, .. } => {
                    let at_s = at.saturating_duration_since(stream_start).as_secs_f64();
                    progress.println(&format!("  {at_s:>6.2} s  failed    {name}: {reason}"));
                    recorder.failures.push(at_s);
                }
                Event::InstanceReplaced { failed, replacement, node, at } => {
                    let at_s = at.saturating_duration_since(stream_start).as_secs_f64();
                    progress.println(&format!(
                        "  {at_s:>6.2} s  restarted {failed} as {replacement} on {node}"
                    ));
                }
                Event::ReplicaMoved { stage, from, to } => {
                    progress.println(&format!(
                        "  {now_s:>6.2} s  moved     {stage} from {from} to {to}"
                    ));
                }
                Event::HealFailed { name, reason } => {
                    phase.failed(format!("could not restart {name}"));
                    return Err(format!("could not restart failed instance {name}: {reason}"));
                }
                _ => {}
            }
        }
        if !orchestrator.options().heal && !recorder.failures.is_empty() {
            phase.failed("an instance failed".to_string());
            return Err("an instance failed during streaming and healing is off".to_string());
        }

        let mut index = 0;
        while index < pending.len() {
            let due = match pending[index].when {
                When::At(at) => now_s >= at,
                When::SinkEvents(events) => sink_events >= events,
            };
            if !due {
                index += 1;
                continue;
            }
            let action = pending.remove(index);
            progress.println(&format!(
                "  {now_s:>6.2} s  {:<9} {}",
                action.kind.name(),
                action.kind.target()
            ));
            if let Err(error) =
                apply_action(orchestrator, &action, now_s, recorder, stream_start).await
            {
                phase.failed(format!("{} failed", action.kind.name()));
                return Err(format!(
                    "action `{}` on line {}: {error}",
                    action.kind.name(),
                    action.line
                ));
            }
        }
        if let Some(record) = autoscaler.step(orchestrator, &snapshot.stats, now_s).await {
            progress.println(&format!(
                "  {now_s:>6.2} s  autoscale {} {} -> {}",
                record.stage, record.from, record.to
            ));
            recorder.rescales.push(record);
        }

        if emitted_at.is_none() && recorder.last_events().first().is_some_and(|sent| *sent >= total)
        {
            emitted_at = Some(now_s);
        }
        if !sources_done && source_drained(orchestrator) {
            sources_done = true;
            phases.stream = now_s;
        }
        if snapshot.drained {
            break;
        }
        if elapsed > timeout {
            phase.failed(format!("timed out after {:.0} s", timeout.as_secs_f64()));
            return Err(format!(
                "streaming did not finish within the scenario's timeout of {:.0} s; the sink had \
                 {sink_events} of {total} events (raise `timeout_s` or lower `stream.events`)",
                timeout.as_secs_f64()
            ));
        }
    }
    let finished = stream_start.elapsed().as_secs_f64();
    // A fault that never ran tests nothing, so the run must not pass as if it had.
    for action in pending {
        let due = match action.when {
            When::At(at) => format!("at {at} s"),
            When::SinkEvents(events) => format!("after {events} events at the sink"),
        };
        progress.println(&format!("  {finished:>6.2} s  never ran {}", action.kind.name()));
        recorder.not_run.push(format!(
            "action `{}` on line {} never ran: it was due {due}, but the stream ended after \
             {finished:.1} s with {} events (raise `stream.events` or move the action earlier)",
            action.kind.name(),
            action.line,
            recorder.last_events().last().copied().unwrap_or(0)
        ));
    }
    phases.drain = finished - phases.stream;
    recorder.duration = finished;
    recorder.finish_faults(emitted_at.unwrap_or(if sources_done {
        phases.stream
    } else {
        finished
    }));
    phase.done(format!(
        "{total} events in {finished:.1} s ({:.0} events/s at the sink)",
        recorder.last_events().last().copied().unwrap_or(0) as f64 / finished.max(1e-9)
    ));
    Ok(())
}

/// Carries out one scenario action through the orchestrator and records it.
async fn apply_action(
    orchestrator: &mut Orchestrator,
    action: &Action,
    now_s: f64,
    recorder: &mut Recorder,
    stream_start: Instant,
) -> Result<(), String> {
    let topology = orchestrator.topology();
    let node = |name: &str| topology.node_by_name(name).map(|node| node.id);
    let cluster = |name: &str| topology.cluster_by_name(name).map(|cluster| cluster.id);
    let missing = || format!("`{}` is not in the topology", action.kind.target());
    let fault = match &action.kind {
        ActionKind::Scale { stage, change } => {
            let id = orchestrator
                .workflow()
                .stage_by_name(stage)
                .map(|stage| stage.id)
                .ok_or_else(|| format!("unknown stage `{stage}`"))?;
            let from = orchestrator.live_replicas(id);
            let to = match change {
                ScaleChange::To(to) => *to,
                ScaleChange::By(by) => (i64::from(from) + by).max(1) as u32,
            };
            let started = Instant::now();
            let reached = orchestrator.rescale(id, to).await.map_err(|error| error.to_string())?;
            recorder.rescales.push(RescaleRecord {
                stage: stage.clone(),
                from,
                to: reached,
                at_s: now_s,
                settled_after_s: started.elapsed().as_secs_f64(),
                steps: 1,
                automatic: false,
            });
            return Ok(());
        }
        ActionKind::KillInstance { stage, replica } => {
            let id = orchestrator
                .instances()
                .filter(|record| record.spec.stage == *stage && record.spec.id.replica == *replica)
                .filter(|record| record.state.is_live())
                .map(|record| record.spec.id)
                .max()
                .ok_or_else(|| format!("no live replica {replica} of stage `{stage}`"))?;
            Fault::KillInstance(id)
        }
        ActionKind::KillNode(name) => Fault::KillNode(node(name).ok_or_else(missing)?),
        ActionKind::PauseNode(name) => Fault::PauseNode(node(name).ok_or_else(missing)?),
        ActionKind::ResumeNode(name) => Fault::ResumeNode(node(name).ok_or_else(missing)?),
        ActionKind::Partition(name) => Fault::Partition(cluster(name).ok_or_else(missing)?),
        ActionKind::Heal(name) => Fault::Heal(cluster(name).ok_or_else(missing)?),
        ActionKind::LoseCluster(name) => Fault::LoseCluster(cluster(name).ok_or_else(missing)?),
    };
    let injected_at_s = stream_start.elapsed().as_secs_f64();
    orchestrator.inject(fault).await.map_err(|error| error.to_string())?;
    if action.kind.is_fault() {
        recorder.faults.push(FaultRecord {
            kind: action.kind.name().to_string(),
            target: action.kind.target(),
            injected_at_s,
            detected_after_s: None,
            recovered_after_s: None,
            events_replayed: 0,
            dip_depth: 0.0,
            dip_length_s: 0.0,
        });
    }
    Ok(())
}

fn source_drained(orchestrator: &Orchestrator) -> bool {
    orchestrator
        .instances()
        .filter(|record| record.spec.role == Role::Source)
        .filter(|record| orchestrator::orchestrator::counts_for_drain(record))
        .all(|record| record.state == InstanceState::Drained)
}

/// Counters over time, per stage.
pub struct Recorder {
    samples: Vec<Sample>,
    stage_count: usize,
    /// Seconds from the start of streaming to the end of the drain.
    duration: f64,
    /// Events replayed by all instances, summed, at each sample.
    replayed: Vec<u64>,
    /// Seconds after the start of streaming at which an instance was declared failed.
    failures: Vec<f64>,
    faults: Vec<FaultRecord>,
    rescales: Vec<RescaleRecord>,
    /// Last counters of every instance, so that a failed or removed replica keeps counting
    /// in its stage's total.
    last_counts: BTreeMap<InstanceId, (u64, u64)>,
    /// Actions that were never due before the stream ended, as errors for the summary.
    not_run: Vec<String>,
}

impl Recorder {
    fn new(stage_count: usize) -> Recorder {
        Recorder {
            samples: Vec::new(),
            stage_count,
            duration: 0.0,
            replayed: Vec::new(),
            failures: Vec::new(),
            faults: Vec::new(),
            rescales: Vec::new(),
            last_counts: BTreeMap::new(),
            not_run: Vec::new(),
        }
    }

    /// Completes every fault record: detection from the failures seen after it, recovery
    /// and dip from the sink's throughput, replays until the next fault.
    /// `stream_end` is when the sources finished emitting: the sink's throughput falls after
    /// it whatever happened, so recovery is only looked for before it.
    fn finish_faults(&mut self, stream_end: f64) {
        let times: Vec<f64> = self.faults.iter().map(|fault| fault.injected_at_s).collect();
        for (index, fault) in self.faults.iter_mut().enumerate() {
            let next = times.get(index + 1).copied().unwrap_or(f64::INFINITY);
            fault.detected_after_s = self
                .failures
                .iter()
                .copied()
                .filter(|at| *at >= fault.injected_at_s && *at < next)
                .map(|at| at - fault.injected_at_s)
                .reduce(f64::min);
            let replayed_at = |t: f64| -> u64 {
                self.samples
                    .iter()
                    .zip(&self.replayed)
                    .filter(|(sample, _)| sample.t <= t)
                    .map(|(_, replayed)| *replayed)
                    .next_back()
                    .unwrap_or(0)
            };
            let end = next.min(self.duration);
            fault.events_replayed =
                replayed_at(end).saturating_sub(replayed_at(fault.injected_at_s));
            crate::faults::measure_recovery(fault, &self.samples, stream_end);
        }
    }

    fn record(
        &mut self,
        orchestrator: &Orchestrator,
        stats: &BTreeMap<InstanceId, orchestrator::control::Stats>,
        t: f64,
    ) {
        let mut events = vec![0u64; self.stage_count];
        let mut replicas = vec![0u32; self.stage_count];
        for record in orchestrator.instances() {
            let id = record.spec.id;
            if record.state.is_live() || record.state == InstanceState::Drained {
                replicas[id.stage.0] += 1;
            }
            if let Some(stats) = stats.get(&id) {
                let entry = self.last_counts.entry(id).or_default();
                entry.0 = entry.0.max(stats.events_in);
                entry.1 = entry.1.max(stats.events_out);
            }
        }
        // Instances that drained, failed or were removed are no longer polled; their last
        // counts still belong to their stage.
        for (id, (events_in, events_out)) in &self.last_counts {
            let source = orchestrator.workflow().stage(id.stage).role == Role::Source;
            events[id.stage.0] += if source { *events_out } else { *events_in };
        }
        let replayed: u64 = stats.values().map(|stats| stats.replayed).sum();
        let replayed = replayed.max(self.replayed.last().copied().unwrap_or(0));
        self.replayed.push(replayed);
        self.samples.push(Sample { t, events, replicas });
    }

    fn last_events(&self) -> Vec<u64> {
        self.samples.last().map(|sample| sample.events.clone()).unwrap_or_default()
    }
}

/// Collects what the sink replicas that returned no final counters received before they
/// went away. Such a sink's acknowledged events are never sent again, so without its record
/// they would count as lost although they reached the writer.
fn lost_sink_records(
    orchestrator: &Orchestrator,
    final_stats: &BTreeMap<
        InstanceId,
        Result<orchestrator::control::Stats, orchestrator::client::ControlError>,
    >,
) -> Vec<SinkRecord> {
    let sink = orchestrator.workflow().sink().id;
    let mut records = Vec::new();
    for record in orchestrator.instances() {
        let answered = matches!(final_stats.get(&record.spec.id), Some(Ok(_)));
        if record.spec.id.stage != sink || record.endpoints.is_none() || answered {
            continue;
        }
        match orchestrator.backend().lost_sink_record(record.spec.id, &record.name) {
            Some(found) => {
                let events: u64 = found.ranges.iter().map(|[start, end]| end - start).sum();
                info!(instance = %record.name, events, "counted a lost sink's events from its record");
                records.push(found);
            }
            None => warn!(instance = %record.name, "a lost sink left no record of its events"),
        }
    }
    records
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    config: &RunConfig,
    orchestrator: &Orchestrator,
    scenario: &Scenario,
    final_stats: &BTreeMap<
        InstanceId,
        Result<orchestrator::control::Stats, orchestrator::client::ControlError>,
    >,
    lost_sinks: &[SinkRecord],
    recorder: &Recorder,
    phases: Phases,
    mut errors: Vec<String>,
    run_id: &str,
    started_at: String,
) -> Summary {
    let workflow = orchestrator.workflow();
    let topology = orchestrator.topology();
    for (id, result) in final_stats {
        if let Err(error) = result {
            warn!(instance = %id, %error, "no final counters");
        }
    }
    let stats_of = |stage: StageId| {
        final_stats
            .iter()
            .filter(move |(id, _)| id.stage == stage)
            .filter_map(|(_, result)| result.as_ref().ok())
    };
    let sent: u64 = stats_of(workflow.source().id).map(|stats| stats.events_out).sum();
    let sinks: Vec<(Vec<[u64; 2]>, u64)> = stats_of(workflow.sink().id)
        .map(|stats| (stats.received.clone().unwrap_or_default(), stats.duplicates))
        .chain(lost_sinks.iter().map(|record| (record.ranges.clone(), record.duplicates)))
        .collect();
    let events = results::count_events(scenario.stream.events, sent, &sinks);
    let timeline = results::timeline(&recorder.samples);
    let duration = recorder.duration.max(1e-9);

    let mut stages = Vec::new();
    for stage in workflow.stages() {
        let (events_in, events_out) = stats_of(stage.id)
            .fold((0, 0), |(a, b), stats| (a + stats.events_in, b + stats.events_out));
        let handled = if stage.role == Role::Source { events_out } else { events_in };
        let latency = results::merge_latency(
            stats_of(stage.id).map(|stats| stats.latency.histogram.as_slice()),
        );
        let peak = timeline.iter().map(|row| row.throughput[stage.id.0]).fold(0.0, f64::max);
        let (cluster, nodes) = match orchestrator.placement() {
            Some(placement) => (
                topology.cluster_path(placement.cluster_of(stage.id)),
                placement.nodes[stage.id.0]
                    .iter()
                    .map(|node| topology.node(*node).name.clone())
                    .collect(),
            ),
            None => (String::new(), Vec::new()),
        };
        stages.push(StageSummary {
            name: stage.name.clone(),
            role: stage.role.to_string(),
            class: stage.class.clone(),
            cluster,
            nodes,
            replicas: stage.replicas.get(),
            events_in,
            events_out,
            throughput_eps: if recorder.duration > 0.0 { handled as f64 / duration } else { 0.0 },
            peak_eps: peak,
            latency_ms: latency,
        });
    }

    let expectations =
        check_expectations(scenario, &events, stages.last(), &recorder.faults, &recorder.rescales);
    if final_stats.is_empty() && errors.is_empty() {
        errors.push("no instance reported its final counters".to_string());
    }
    let passed = errors.is_empty() && expectations.iter().all(|expectation| expectation.passed);
    Summary {
        passed,
        run_id: run_id.to_string(),
        backend: config.backend.as_str().to_string(),
        commit: artifacts::current_commit(),
        host: artifacts::host_name(),
        started_at,
        scenario: scenario.name.clone(),
        topology: config.topology.display().to_string(),
        workflow: config.workflow.display().to_string(),
        events,
        stages,
        phases_s: phases,
        expectations,
        faults: recorder.faults.clone(),
        rescales: recorder.rescales.clone(),
        errors,
    }
}

fn check_expectations(
    scenario: &Scenario,
    events: &EventCounts,
    sink: Option<&StageSummary>,
    faults: &[FaultRecord],
    rescales: &[RescaleRecord],
) -> Vec<ExpectationResult> {
    let expect = &scenario.expect;
    let mut results = vec![
        ExpectationResult {
            name: "events lost".to_string(),
            passed: events.lost <= expect.max_lost,
            expected: format!("at most {}", expect.max_lost),
            actual: events.lost.to_string(),
        },
        ExpectationResult {
            name: "events duplicated".to_string(),
            passed: events.duplicated <= expect.max_duplicates,
            expected: format!("at most {}", expect.max_duplicates),
            actual: events.duplicated.to_string(),
        },
    ];
    if let Some(minimum) = expect.min_throughput_eps {
        let actual = sink.map(|sink| sink.throughput_eps).unwrap_or(0.0);
        results.push(ExpectationResult {
            name: "sink throughput".to_string(),
            passed: actual >= minimum,
            expected: format!("at least {minimum} events/s"),
            actual: format!("{actual:.0} events/s"),
        });
    }
    if let Some(maximum) = expect.max_latency_p99_ms {
        let actual = sink.map(|sink| sink.latency_ms.p99).unwrap_or(f64::INFINITY);
        results.push(ExpectationResult {
            name: "sink latency p99".to_string(),
            passed: actual <= maximum,
            expected: format!("at most {maximum} ms"),
            actual: format!("{actual:.1} ms"),
        });
    }
    if let Some(limit) = expect.max_recovery_s {
        for fault in faults {
            let (passed, actual) = match fault.recovered_after_s {
                Some(seconds) => (seconds <= limit, format!("{seconds:.2} s")),
                None => (false, "never".to_string()),
            };
            results.push(ExpectationResult {
                name: format!(
                    "recovery from {} {} at {:.1} s",
                    fault.kind, fault.target, fault.injected_at_s
                ),
                passed,
                expected: format!("at most {limit} s"),
                actual,
            });
        }
    }
    if let Some(limit) = expect.max_rescale_steps {
        for rescale in rescales.iter().filter(|rescale| !rescale.automatic) {
            results.push(ExpectationResult {
                name: format!("rescale of {} to {}", rescale.stage, rescale.to),
                passed: rescale.steps <= limit,
                expected: format!("at most {limit} steps"),
                actual: rescale.steps.to_string(),
            });
        }
    }
    results
}

fn write_artifacts(
    run_dir: &Path,
    summary: &Summary,
    recorder: &Recorder,
    orchestrator: &Orchestrator,
    reports: &BTreeMap<String, serde_json::Value>,
) -> anyhow::Result<()> {
    write_json(&run_dir.join("summary.json"), summary)?;
    let scenario = &summary.scenario;
    let mut benchmarks = vec![
        Benchmark {
            name: format!("{scenario}/events_lost"),
            unit: "events".into(),
            value: summary.events.lost as f64,
        },
        Benchmark {
            name: format!("{scenario}/events_duplicated"),
            unit: "events".into(),
            value: summary.events.duplicated as f64,
        },
        Benchmark {
            name: format!("{scenario}/deploy_time"),
            unit: "s".into(),
            value: summary.phases_s.deploy,
        },
        Benchmark {
            name: format!("{scenario}/stream_time"),
            unit: "s".into(),
            value: summary.phases_s.stream,
        },
        Benchmark {
            name: format!("{scenario}/total_time"),
            unit: "s".into(),
            value: summary.phases_s.total,
        },
    ];
    if let Some(sink) = summary.stages.last() {
        benchmarks.push(Benchmark {
            name: format!("{scenario}/sink_throughput"),
            unit: "events/s".into(),
            value: sink.throughput_eps,
        });
        benchmarks.push(Benchmark {
            name: format!("{scenario}/latency_p99"),
            unit: "ms".into(),
            value: sink.latency_ms.p99,
        });
    }
    for (index, fault) in summary.faults.iter().enumerate() {
        let prefix = format!("{scenario}/fault{index}_{}", fault.kind);
        if let Some(detected) = fault.detected_after_s {
            benchmarks.push(Benchmark {
                name: format!("{prefix}/detection"),
                unit: "s".into(),
                value: detected,
            });
        }
        if let Some(recovered) = fault.recovered_after_s {
            benchmarks.push(Benchmark {
                name: format!("{prefix}/recovery"),
                unit: "s".into(),
                value: recovered,
            });
        }
        benchmarks.push(Benchmark {
            name: format!("{prefix}/events_replayed"),
            unit: "events".into(),
            value: fault.events_replayed as f64,
        });
    }
    for (index, rescale) in summary.rescales.iter().enumerate() {
        benchmarks.push(Benchmark {
            name: format!("{scenario}/rescale{index}_{}/settled", rescale.stage),
            unit: "s".into(),
            value: rescale.settled_after_s,
        });
    }
    write_json(&run_dir.join("benchmarks.json"), &benchmarks)?;
    let names: Vec<String> =
        orchestrator.workflow().stages().iter().map(|stage| stage.name.clone()).collect();
    artifacts::write_timeline(
        &run_dir.join("timeline.csv"),
        &names,
        &results::timeline(&recorder.samples),
    )?;
    crate::report_html::write(run_dir, summary, &results::timeline(&recorder.samples), &names)?;
    artifacts::write_junit(&run_dir.join("junit.xml"), summary)?;
    if !reports.is_empty() {
        let folder = run_dir.join("reports");
        std::fs::create_dir_all(&folder)?;
        for (name, report) in reports {
            write_json(&folder.join(format!("{name}.json")), report)?;
        }
    }
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
    warn!("signal received; stopping the run");
}
