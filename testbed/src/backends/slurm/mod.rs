//! The `slurm` backend: every instance is a Slurm batch job on the partition of its cluster,
//! pinned to its node.
//!
//! By default the testbed starts its own Slurm on this machine ([`local::LocalSlurm`]): one
//! partition per topology cluster, one slurmd per node, all on 127.0.0.1. With a slurmrestd
//! URL and token it uses a site's Slurm instead and starts no daemon; partitions must then
//! be named like the topology's clusters and nodes like its nodes.
//!
//! Jobs are submitted, watched and cancelled through slurmrestd's REST API. Two things that
//! API (v0.0.38) cannot do go through the command-line tools of the local cluster: changing
//! a node's state (`scontrol update`) and sending SIGKILL to a job (`scancel --signal`; a
//! REST cancel always sends SIGTERM first and waits at least 5 s before SIGKILL).

pub mod local;
pub mod rest;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use orchestrator::backend::{Backend, BackendError, Fault, InstanceEndpoints, InstanceSpec};
use orchestrator::control::ReadyLine;
use orchestrator::model::{ClusterId, InstanceId, NodeId, Topology};
use tracing::{debug, info, warn};

use self::local::{LocalSlurm, PortPool, max_node_name, partition_name, run_processes_with};
use self::rest::{JobInfo, JobRequest, SlurmRest};
use super::process::{instance_args, journal_arg, log_tail};
use super::{HARNESS_PID_ENV, RUN_ID_ENV, RunLabels, TOKEN_ENV};

/// How long a job may take from submission to its ready line. The scheduler places jobs
/// once a second.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a cancelled job may take to end before the stop counts as failed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Job states are fetched at most this often, because each poll of the orchestrator
/// requests them for every instance.
const JOBS_REFRESH: Duration = Duration::from_millis(50);

/// Source of the Slurm a run uses.
#[derive(Debug, Clone)]
pub enum SlurmTarget {
    /// Start a private cluster for the run.
    Local,
    /// Use a running slurmrestd.
    Existing { url: String, user: String, token: String },
}

pub struct SlurmBackend {
    target: SlurmTarget,
    mock_bin: PathBuf,
    labels: RunLabels,
    token: String,
    run_dir: PathBuf,
    log_dir: PathBuf,
    local: Option<LocalSlurm>,
    rest: Option<SlurmRest>,
    jobs: BTreeMap<InstanceId, Job>,
    node_names: BTreeMap<NodeId, String>,
    clusters: BTreeMap<ClusterId, Vec<NodeId>>,
    /// Nodes set down, frozen or cut off; the orchestrator gets them as down.
    down_nodes: BTreeSet<NodeId>,
    /// Nodes set down in Slurm, which a resume brings back.
    slurm_down: BTreeSet<NodeId>,
    /// Last listing of the run's jobs, by job id, and when it was fetched.
    states: BTreeMap<u64, JobInfo>,
    states_at: Option<Instant>,
    /// Submit-to-running time of every job, in seconds, for the benchmark.
    pub submit_to_running_s: Vec<f64>,
    ports: PortPool,
}

/// A submitted job whose instance is not ready yet.
struct Pending {
    id: InstanceId,
    name: String,
    node_name: String,
    job_id: u64,
    submitted: Instant,
    ready_file: PathBuf,
    log_path: PathBuf,
    host: String,
    data_port: u16,
    control_port: u16,
}

struct Job {
    name: String,
    node: NodeId,
    job_id: u64,
    exit: Option<String>,
}

impl SlurmBackend {
    pub fn new(
        target: SlurmTarget,
        mock_bin: &Path,
        labels: RunLabels,
        token: &str,
        run_dir: &Path,
    ) -> SlurmBackend {
        SlurmBackend {
            target,
            mock_bin: mock_bin.to_path_buf(),
            labels,
            token: token.to_string(),
            run_dir: run_dir.to_path_buf(),
            log_dir: run_dir.join("logs"),
            local: None,
            rest: None,
            jobs: BTreeMap::new(),
            node_names: BTreeMap::new(),
            clusters: BTreeMap::new(),
            down_nodes: BTreeSet::new(),
            slurm_down: BTreeSet::new(),
            states: BTreeMap::new(),
            states_at: None,
            submit_to_running_s: Vec::new(),
            ports: PortPool::default(),
        }
    }

    /// Checks, before a run, that the local Slurm's programs are installed or that a site's
    /// slurmrestd replies to a ping with the token.
    pub async fn check_environment(target: &SlurmTarget) -> Result<(), String> {
        match target {
            SlurmTarget::Local => local::check_programs(),
            SlurmTarget::Existing { url, user, token } => {
                let rest = SlurmRest::new(url, user, token)?;
                rest.ping().await.map_err(|error| format!("Slurm at {url} is not usable: {error}"))
            }
        }
    }

    /// Checks, before a run, what the topology and the scenario ask of Slurm: partition and
    /// node names it accepts, node names short enough for a local Slurm's socket paths, and
    /// on a site's Slurm only faults that need no access to its machines.
    pub fn check_inputs(
        target: &SlurmTarget,
        run_id: &str,
        topology: &Topology,
        faults: &[&str],
    ) -> Result<(), String> {
        let mut clusters = BTreeSet::new();
        for cluster in topology.clusters() {
            if !clusters.insert(cluster.name.as_str()) {
                return Err(format!(
                    "two sites have a cluster named `{}`; the slurm backend makes one partition \
                     per cluster name, so rename one of them in the topology",
                    cluster.name
                ));
            }
        }
        let nodes = topology.nodes().iter().map(|node| node.name.as_str());
        if let Some(name) =
            clusters.iter().copied().chain(nodes).find(|name| name.eq_ignore_ascii_case("default"))
        {
            return Err(format!(
                "`{name}` is a cluster or node name in the topology, but Slurm reserves \
                 `DEFAULT`; rename it"
            ));
        }
        match target {
            SlurmTarget::Local => {
                let longest = max_node_name(run_id);
                if let Some(node) = topology.nodes().iter().find(|node| node.name.len() > longest) {
                    return Err(format!(
                        "node name `{}` has {} characters, but a local Slurm allows at most \
                         {longest}: its job steps' unix socket paths contain the name twice \
                         and must stay under 108 bytes; shorten it in the topology",
                        node.name,
                        node.name.len()
                    ));
                }
            }
            SlurmTarget::Existing { .. } => {
                if let Some(fault) = faults.iter().find(|fault| **fault != "kill_instance") {
                    return Err(format!(
                        "the scenario has a `{fault}` action, but on a site's Slurm only \
                         kill_instance (a job cancel) is available; drop the action or run on \
                         the local Slurm"
                    ));
                }
            }
        }
        Ok(())
    }

    fn rest(&self) -> Result<&SlurmRest, BackendError> {
        self.rest.as_ref().ok_or_else(|| {
            BackendError::Environment("the slurm backend is used before provisioning".into())
        })
    }

    fn node_name(&self, node: NodeId) -> String {
        self.node_names.get(&node).cloned().unwrap_or_else(|| format!("node {}", node.0))
    }

    /// Returns the local cluster, for faults that need its command-line tools or daemons.
    fn local_for(&self, fault: &Fault) -> Result<&LocalSlurm, BackendError> {
        self.local.as_ref().ok_or_else(|| BackendError::Unsupported {
            fault: format!(
                "{} (on a site's Slurm only kill_instance, a job cancel, is available)",
                fault.kind()
            ),
            backend: "slurm".into(),
        })
    }

    /// Refreshes the job listing when it is older than [`JOBS_REFRESH`].
    async fn refresh_states(&mut self) {
        if self.states_at.is_some_and(|at| at.elapsed() < JOBS_REFRESH) {
            return;
        }
        let Some(rest) = &self.rest else { return };
        // A slow slurmrestd must not hold up the orchestrator's poll: the listing is skipped
        // this time, and heartbeats still catch a failed instance.
        match tokio::time::timeout(JOBS_REFRESH * 10, rest.jobs()).await {
            Ok(Ok(jobs)) => self.states = jobs.into_iter().map(|job| (job.job_id, job)).collect(),
            Ok(Err(error)) => debug!(%error, "cannot list jobs"),
            Err(_) => debug!("listing jobs timed out"),
        }
        self.states_at = Some(Instant::now());
    }

    /// Sets a node down in Slurm, which ends its jobs (NODE_FAIL, not requeued).
    async fn set_down(&mut self, node: NodeId, fault: &Fault) -> Result<(), BackendError> {
        let name = self.node_name(node);
        let local = self.local_for(fault)?;
        local
            .tool(
                "scontrol",
                &["update", &format!("nodename={name}"), "state=down", "reason=testbed fault"],
            )
            .await
            .map_err(BackendError::Environment)?;
        self.down_nodes.insert(node);
        self.slurm_down.insert(node);
        Ok(())
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) a node: its slurmd, so that Slurm marks it as not
    /// responding, and the run's job processes on it, so that they stop answering too.
    fn signal_node(
        &mut self,
        node: NodeId,
        signal: Signal,
        fault: &Fault,
    ) -> Result<(), BackendError> {
        let name = self.node_name(node);
        let local = self.local_for(fault)?;
        let mut pids = run_processes_with(&self.labels.run_id, &[("SLURMD_NODENAME", &name)]);
        pids.extend(local.slurmd_pid(&name).map(|pid| pid as i32));
        for pid in pids {
            if let Err(error) = kill(Pid::from_raw(pid), signal) {
                debug!(node = %name, pid, %error, ?signal, "signal failed");
            }
        }
        if signal == Signal::SIGSTOP {
            self.down_nodes.insert(node);
        }
        Ok(())
    }

    async fn resume(&mut self, node: NodeId, fault: &Fault) -> Result<(), BackendError> {
        self.signal_node(node, Signal::SIGCONT, fault)?;
        if self.slurm_down.remove(&node) {
            let name = self.node_name(node);
            let local = self.local_for(fault)?;
            local
                .tool("scontrol", &["update", &format!("nodename={name}"), "state=resume"])
                .await
                .map_err(BackendError::Environment)?;
        }
        Ok(())
    }

    fn nodes_of(&self, cluster: ClusterId) -> Vec<NodeId> {
        self.clusters.get(&cluster).cloned().unwrap_or_default()
    }

    /// Submits the job of one instance.
    async fn submit(&mut self, spec: &InstanceSpec) -> Result<Pending, BackendError> {
        let name = spec.name();
        let start_error = |reason: String| BackendError::Start {
            instance: name.clone(),
            node: spec.node_name.clone(),
            reason,
        };
        let local = self.local.is_some();
        // A local cluster's nodes are all 127.0.0.1; a site's nodes are reached by name.
        let (bind, host) = if local {
            ("127.0.0.1".to_string(), "127.0.0.1".to_string())
        } else {
            ("0.0.0.0".to_string(), spec.node_name.clone())
        };
        let data_port = self.ports.take().map_err(start_error)?;
        let control_port = self.ports.take().map_err(start_error)?;
        let mut args = instance_args(spec, &self.labels, &bind);
        args.extend(journal_arg(spec, &self.log_dir));
        args.push(format!("--data-port={data_port}"));
        args.push(format!("--control-port={control_port}"));
        let mut environment = BTreeMap::from([
            (TOKEN_ENV.to_string(), self.token.clone()),
            (RUN_ID_ENV.to_string(), self.labels.run_id.clone()),
        ]);
        if local {
            // On this host the instance can watch the harness and end with it.
            args.push(format!("--harness-pid={}", self.labels.harness_pid));
            environment.insert(HARNESS_PID_ENV.to_string(), self.labels.harness_pid.to_string());
        }
        let jobs_dir = self.run_dir.join("slurm").join("jobs");
        std::fs::create_dir_all(&jobs_dir).map_err(|error| {
            start_error(format!("cannot create {}: {error}", jobs_dir.display()))
        })?;
        let ready_file = jobs_dir.join(format!("{name}.ready"));
        let log_path = self.log_dir.join(format!("{name}.log"));
        let _ = std::fs::remove_file(&ready_file);
        let quoted: Vec<String> = std::iter::once(self.mock_bin.display().to_string())
            .chain(args)
            .map(|arg| shell_quote(&arg))
            .collect();
        let script = format!("#!/bin/sh\nexec {}\n", quoted.join(" "));
        let request = JobRequest {
            name: format!("tb-{}-{name}", self.labels.run_id),
            partition: partition_name(&spec.cluster_name),
            node: spec.node_name.clone(),
            script,
            working_dir: jobs_dir.display().to_string(),
            stdout: ready_file.display().to_string(),
            stderr: log_path.display().to_string(),
            environment,
        };
        let submitted = Instant::now();
        let job_id =
            self.rest()?.submit(&request).await.map_err(|error| start_error(error.to_string()))?;
        self.jobs.insert(spec.id, Job { name: name.clone(), node: spec.node, job_id, exit: None });
        debug!(instance = %name, job_id, "submitted");
        Ok(Pending {
            id: spec.id,
            name,
            node_name: spec.node_name.clone(),
            job_id,
            submitted,
            ready_file,
            log_path,
            host,
            data_port,
            control_port,
        })
    }

    /// Waits until a submitted job runs and its instance prints the ready line.
    async fn await_ready(&mut self, pending: Pending) -> Result<InstanceEndpoints, BackendError> {
        let Pending {
            id,
            name,
            node_name,
            job_id,
            submitted,
            ready_file,
            log_path,
            host,
            data_port,
            control_port,
        } = pending;
        let start_error = |reason: String| BackendError::Start {
            instance: name.clone(),
            node: node_name.clone(),
            reason,
        };
        let rest = self.rest()?.clone();
        let deadline = submitted + READY_TIMEOUT;
        let mut running_at = None;
        let line = loop {
            if running_at.is_none() {
                match rest.job(job_id).await {
                    Ok(job) if job.job_state == "RUNNING" => running_at = Some(submitted.elapsed()),
                    Ok(job) if job.is_finished() => {
                        let end = job.describe_end();
                        self.jobs.get_mut(&id).expect("submitted").exit = Some(end.clone());
                        return Err(start_error(format!(
                            "{end} before it was ready; last log lines:\n{}",
                            log_tail(&log_path, 10)
                        )));
                    }
                    Ok(_) => {}
                    Err(error) => debug!(instance = %name, %error, "job state unknown"),
                }
            }
            let text = std::fs::read_to_string(&ready_file).unwrap_or_default();
            if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
                break line.to_string();
            }
            if Instant::now() > deadline {
                let _ = rest.cancel(job_id).await;
                return Err(start_error(format!(
                    "slurm job {job_id} printed no ready line within {} s ({}); see {}",
                    READY_TIMEOUT.as_secs(),
                    if running_at.is_some() { "it ran" } else { "it never left the queue" },
                    log_path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The first poll that reports RUNNING can come after the ready line.
        let to_running = running_at.unwrap_or_else(|| submitted.elapsed());
        self.submit_to_running_s.push(to_running.as_secs_f64());
        let ready: ReadyLine = serde_json::from_str(&line)
            .map_err(|error| start_error(format!("invalid ready line `{line}`: {error}")))?;
        if ready.data_port != data_port || ready.control_port != control_port {
            return Err(start_error(format!(
                "it listens on ports {} and {}, not the assigned {data_port} and {control_port}",
                ready.data_port, ready.control_port
            )));
        }
        debug!(instance = %name, job_id, pid = ready.pid, to_running_s = to_running.as_secs_f64(), "instance ready");
        Ok(InstanceEndpoints {
            control_url: format!("http://{host}:{control_port}"),
            data_addr: format!("{host}:{data_port}"),
            handle: format!("slurm job {job_id}"),
        })
    }

    /// Checks that a site's Slurm has a partition per cluster and the topology's nodes.
    async fn check_existing(&self, topology: &Topology) -> Result<(), BackendError> {
        let rest = self.rest()?;
        let nodes = rest.nodes().await.map_err(|error| BackendError::Provision {
            what: format!("Slurm at {}", rest.base()),
            reason: error.to_string(),
        })?;
        let mut missing = Vec::new();
        for node in topology.nodes() {
            let partition = partition_name(&topology.cluster(node.cluster).name);
            let found = nodes.iter().find(|info| info.name == node.name);
            match found {
                None => missing.push(format!("node {} is not in that Slurm", node.name)),
                Some(info) if !info.partitions.contains(&partition) => missing.push(format!(
                    "node {} is not in partition {partition} (it is in {})",
                    node.name,
                    info.partitions.join(", ")
                )),
                Some(_) => {}
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(BackendError::Provision {
            what: format!("Slurm at {}", rest.base()),
            reason: format!(
                "the topology does not match it: {}. Name the topology's clusters after the \
                 partitions and its nodes after the Slurm nodes",
                missing.join("; ")
            ),
        })
    }
}

#[async_trait]
impl Backend for SlurmBackend {
    fn kind(&self) -> &'static str {
        "slurm"
    }

    async fn provision(&mut self, topology: &Topology) -> Result<(), BackendError> {
        let provision_error =
            |what: &str, reason: String| BackendError::Provision { what: what.to_string(), reason };
        std::fs::create_dir_all(&self.log_dir).map_err(|error| {
            provision_error(&format!("log folder {}", self.log_dir.display()), error.to_string())
        })?;
        if !self.mock_bin.is_file() {
            return Err(BackendError::Environment(format!(
                "mock instance binary {} not found; build it with `cargo build --release -p testbed` \
                 or pass --mock-bin",
                self.mock_bin.display()
            )));
        }
        self.node_names =
            topology.nodes().iter().map(|node| (node.id, node.name.clone())).collect();
        self.clusters =
            topology.clusters().iter().map(|cluster| (cluster.id, cluster.nodes.clone())).collect();
        match self.target.clone() {
            SlurmTarget::Local => {
                let dir = self.run_dir.join("slurm");
                let mut local = LocalSlurm::start(topology, &dir, &self.labels)
                    .await
                    .map_err(|reason| provision_error("the local Slurm", reason))?;
                self.ports = std::mem::take(&mut local.ports);
                self.rest = Some(local.rest().clone());
                self.local = Some(local);
            }
            SlurmTarget::Existing { url, user, token } => {
                let rest =
                    SlurmRest::new(&url, &user, &token).map_err(BackendError::Environment)?;
                rest.ping().await.map_err(|error| {
                    provision_error(&format!("Slurm at {url}"), error.to_string())
                })?;
                self.rest = Some(rest);
                self.check_existing(topology).await?;
            }
        }
        Ok(())
    }

    async fn start_instance(
        &mut self,
        spec: &InstanceSpec,
    ) -> Result<InstanceEndpoints, BackendError> {
        let pending = self.submit(spec).await?;
        self.await_ready(pending).await
    }

    /// Submits every job first and then waits for them, so that they share the
    /// scheduler's cycles instead of waiting for one each.
    async fn start_instances(
        &mut self,
        specs: &[InstanceSpec],
    ) -> Vec<Result<InstanceEndpoints, BackendError>> {
        let mut submitted = Vec::with_capacity(specs.len());
        for spec in specs {
            submitted.push(self.submit(spec).await);
        }
        let mut results = Vec::with_capacity(specs.len());
        for pending in submitted {
            results.push(match pending {
                Ok(pending) => self.await_ready(pending).await,
                Err(error) => Err(error),
            });
        }
        results
    }

    async fn stop_instance(&mut self, id: InstanceId) -> Result<(), BackendError> {
        let Some(job) = self.jobs.get(&id) else { return Ok(()) };
        if job.exit.is_some() {
            return Ok(());
        }
        let (job_id, name, node) = (job.job_id, job.name.clone(), job.node);
        let stop_error = |reason: String| BackendError::Stop { instance: name.clone(), reason };
        let rest = self.rest()?.clone();
        // A frozen node cannot act on a cancel: its job processes go at once.
        if self.down_nodes.contains(&node) {
            let node_name = self.node_name(node);
            let job = job_id.to_string();
            for pid in run_processes_with(
                &self.labels.run_id,
                &[("SLURMD_NODENAME", &node_name), ("SLURM_JOB_ID", &job)],
            ) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            // Its slurmd may be frozen too, so the job's end is not waited for; the cancel
            // is only recorded with Slurm, which ends the job once the node responds.
            let _ = tokio::time::timeout(Duration::from_secs(1), rest.cancel(job_id)).await;
            self.jobs.get_mut(&id).expect("looked up above").exit =
                Some(format!("slurm job {job_id} killed on a failed node"));
            return Ok(());
        }
        if let Err(error) = rest.cancel(job_id).await {
            // A job that has already ended cannot be cancelled; anything else is an error.
            let ended = rest.job(job_id).await.map(|job| job.is_finished()).unwrap_or(false);
            if !ended {
                return Err(stop_error(error.to_string()));
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match rest.job(job_id).await {
                Ok(info) if info.is_finished() => {
                    self.jobs.get_mut(&id).expect("looked up above").exit =
                        Some(info.describe_end());
                    return Ok(());
                }
                _ if Instant::now() > deadline => {
                    // A job on a frozen or dead node stays COMPLETING; its processes are gone.
                    warn!(instance = %name, job_id, "job did not end after cancel");
                    self.jobs.get_mut(&id).expect("looked up above").exit =
                        Some(format!("slurm job {job_id} cancelled"));
                    return Ok(());
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn exited(&mut self, id: InstanceId) -> Option<String> {
        let job = self.jobs.get(&id)?;
        if let Some(exit) = &job.exit {
            return Some(exit.clone());
        }
        let job_id = job.job_id;
        self.refresh_states().await;
        let info = self.states.get(&job_id)?;
        if !info.is_finished() {
            return None;
        }
        let end = info.describe_end();
        self.jobs.get_mut(&id).expect("looked up above").exit = Some(end.clone());
        Some(end)
    }

    async fn teardown(&mut self) -> Result<(), BackendError> {
        if let Some(rest) = self.rest.clone() {
            let live: Vec<(InstanceId, u64)> = self
                .jobs
                .iter()
                .filter(|(_, job)| job.exit.is_none())
                .map(|(id, job)| (*id, job.job_id))
                .collect();
            for (id, job_id) in live {
                if let Err(error) = rest.cancel(job_id).await {
                    debug!(job_id, %error, "cancel at teardown failed");
                }
                self.jobs.get_mut(&id).expect("listed above").exit =
                    Some(format!("slurm job {job_id} cancelled at teardown"));
            }
        }
        if let Some(local) = &mut self.local {
            local.stop().await;
            info!("stopped the local Slurm");
        }
        Ok(())
    }

    fn log_dir(&self) -> Option<PathBuf> {
        Some(self.log_dir.clone())
    }

    async fn node_alive(&mut self, node: NodeId) -> bool {
        !self.down_nodes.contains(&node)
    }

    /// Faults through Slurm: kill_instance is an immediate SIGKILL of the job (a cancel on
    /// a site's Slurm); kill_node and lose_cluster set nodes down, which ends their jobs;
    /// pause_node and partition freeze the nodes' slurmd and job processes, so that Slurm
    /// marks them not responding and the orchestrator hears nothing; resume_node and heal
    /// thaw them and return nodes set down to service.
    async fn inject(&mut self, fault: Fault) -> Result<(), BackendError> {
        match fault {
            Fault::KillInstance(id) => {
                let job = self.jobs.get(&id).ok_or_else(|| BackendError::Unsupported {
                    fault: format!("kill_instance of unknown instance {id}"),
                    backend: "slurm".into(),
                })?;
                let (job_id, name) = (job.job_id.to_string(), job.name.clone());
                let result = match &self.local {
                    Some(local) => {
                        local.tool("scancel", &["--batch", "--signal=KILL", &job_id]).await
                    }
                    None => self
                        .rest()?
                        .cancel(job.job_id)
                        .await
                        .map(|()| String::new())
                        .map_err(|e| e.to_string()),
                };
                result.map_err(|reason| BackendError::Stop { instance: name, reason })?;
            }
            Fault::KillNode(node) => self.set_down(node, &fault).await?,
            Fault::PauseNode(node) => self.signal_node(node, Signal::SIGSTOP, &fault)?,
            Fault::ResumeNode(node) => self.resume(node, &fault).await?,
            Fault::Partition(cluster) => {
                for node in self.nodes_of(cluster) {
                    self.signal_node(node, Signal::SIGSTOP, &fault)?;
                }
            }
            Fault::Heal(cluster) => {
                for node in self.nodes_of(cluster) {
                    self.resume(node, &fault).await?;
                }
            }
            Fault::LoseCluster(cluster) => {
                for node in self.nodes_of(cluster) {
                    self.set_down(node, &fault).await?;
                }
            }
        }
        Ok(())
    }
}

/// Quotes an argument for the job's `/bin/sh` script.
fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=./:,+@%".contains(&b))
    {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn shell_quote_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("--stage=DCReconstruction"), "--stage=DCReconstruction");
        assert_eq!(shell_quote(r#"--config-json={"a": 1}"#), r#"'--config-json={"a": 1}'"#);
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
