//! The `process` backend: every instance is a local `mock-ersap` process on 127.0.0.1.
//!
//! Nodes are logical: an instance's node decides its site and therefore the links it
//! emulates, not where it runs. Each child is spawned with `kill_on_drop`, carries the run id
//! and the harness pid in its environment, and exits by itself when the harness is gone, so
//! neither a panic nor a SIGKILL of the harness leaves it running for long.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use orchestrator::backend::{Backend, BackendError, Fault, InstanceEndpoints, InstanceSpec};
use orchestrator::control::{ReadyLine, Role};
use orchestrator::journal;
use orchestrator::model::{ClusterId, InstanceId, NodeId, Topology};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tracing::{debug, warn};

use super::{HARNESS_PID_ENV, RUN_ID_ENV, RunLabels, TOKEN_ENV};

/// How long a new process may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopped process may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

pub struct ProcessBackend {
    mock_bin: PathBuf,
    labels: RunLabels,
    token: String,
    log_dir: PathBuf,
    children: BTreeMap<InstanceId, Running>,
    /// Nodes of each cluster, known after provisioning.
    clusters: BTreeMap<ClusterId, Vec<NodeId>>,
    /// Nodes that were killed, lost, frozen or cut off; the orchestrator gets them as down.
    down_nodes: BTreeSet<NodeId>,
}

struct Running {
    name: String,
    node: NodeId,
    child: Child,
    exit: Option<String>,
}

impl ProcessBackend {
    pub fn new(mock_bin: &Path, labels: RunLabels, token: &str, log_dir: &Path) -> ProcessBackend {
        ProcessBackend {
            mock_bin: mock_bin.to_path_buf(),
            labels,
            token: token.to_string(),
            log_dir: log_dir.to_path_buf(),
            children: BTreeMap::new(),
            clusters: BTreeMap::new(),
            down_nodes: BTreeSet::new(),
        }
    }

    /// Sends `signal` to every running instance on `node`.
    fn signal_node(&mut self, node: NodeId, signal: Signal) {
        for running in self.children.values_mut().filter(|running| running.node == node) {
            if running.exit.is_some() {
                continue;
            }
            if let Some(pid) = running.child.id() {
                if let Err(error) = kill(Pid::from_raw(pid as i32), signal) {
                    debug!(instance = %running.name, %error, ?signal, "signal failed");
                }
            }
        }
    }

    fn nodes_of(&self, cluster: ClusterId) -> Vec<NodeId> {
        self.clusters.get(&cluster).cloned().unwrap_or_default()
    }
}

/// Command-line arguments of `mock-ersap` for one instance, shared by every backend that
/// runs the binary.
/// Returns `--journal` for a sink: its journal file in `log_dir`, a path valid where the
/// instance runs.
pub fn journal_arg(spec: &InstanceSpec, log_dir: &Path) -> Option<String> {
    (spec.role == Role::Sink)
        .then(|| format!("--journal={}", journal::path_in(log_dir, &spec.name()).display()))
}

pub fn instance_args(spec: &InstanceSpec, labels: &RunLabels, bind: &str) -> Vec<String> {
    let mut args = vec![
        format!("--role={}", spec.role),
        format!("--run-id={}", labels.run_id),
        format!("--stage={}", spec.stage),
        format!("--replica={}", spec.id.replica),
        format!("--engine-class={}", spec.engine_class),
        format!("--engine-name={}", spec.stage),
        format!("--container={}", spec.container),
        format!("--lang={}", spec.lang.as_str()),
        format!("--site={}", spec.site_name),
        format!("--cluster={}", spec.cluster_name),
        format!("--node={}", spec.node_name),
        format!("--bind={bind}"),
    ];
    match spec.role {
        Role::Source => {
            args.push(format!("--events={}", spec.events));
            args.push(format!("--seq-start={}", spec.seq_start));
            args.push(format!("--event-size={}", spec.event_size));
            args.push(format!("--rate={}", spec.rate));
        }
        Role::Processor => {
            args.push(format!("--cost-ns-per-byte={}", spec.cost.ns_per_byte));
            args.push(format!("--cost-mode={}", spec.cost.mode.as_str()));
            args.push(format!("--threads={}", spec.cost.threads));
            args.push(format!("--output-size={}", spec.cost.output_size.unwrap_or(0)));
        }
        Role::Sink => {}
    }
    if spec.config.as_object().is_some_and(|config| !config.is_empty()) {
        args.push(format!("--config-json={}", spec.config));
    }
    args
}

#[async_trait]
impl Backend for ProcessBackend {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn provision(&mut self, topology: &Topology) -> Result<(), BackendError> {
        self.clusters =
            topology.clusters().iter().map(|cluster| (cluster.id, cluster.nodes.clone())).collect();
        std::fs::create_dir_all(&self.log_dir).map_err(|error| BackendError::Provision {
            what: format!("log folder {}", self.log_dir.display()),
            reason: error.to_string(),
        })?;
        if !self.mock_bin.is_file() {
            return Err(BackendError::Environment(format!(
                "mock instance binary {} not found; build it with `cargo build --release -p testbed` \
                 or pass --mock-bin",
                self.mock_bin.display()
            )));
        }
        Ok(())
    }

    async fn start_instance(
        &mut self,
        spec: &InstanceSpec,
    ) -> Result<InstanceEndpoints, BackendError> {
        let name = spec.name();
        let start_error = |reason: String| BackendError::Start {
            instance: name.clone(),
            node: spec.node_name.clone(),
            reason,
        };
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).map_err(|error| {
            start_error(format!("cannot create {}: {error}", log_path.display()))
        })?;
        let mut command = Command::new(&self.mock_bin);
        command
            .args(instance_args(spec, &self.labels, "127.0.0.1"))
            .args(journal_arg(spec, &self.log_dir))
            .arg(format!("--harness-pid={}", self.labels.harness_pid))
            .env(TOKEN_ENV, &self.token)
            .env(RUN_ID_ENV, &self.labels.run_id)
            .env(HARNESS_PID_ENV, self.labels.harness_pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C at the terminal reaches only the harness,
            // which then stops the instances in order.
            .process_group(0);
        let mut child = command.spawn().map_err(|error| {
            start_error(format!("cannot run {}: {error}", self.mock_bin.display()))
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await;
        let line = match ready {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = child.wait().await.map(|s| s.to_string()).unwrap_or_default();
                return Err(start_error(format!(
                    "it exited ({status}) before it was ready; last log lines:\n{}",
                    log_tail(&log_path, 10)
                )));
            }
            Err(_) => {
                let _ = child.start_kill();
                return Err(start_error(format!(
                    "no ready line within {READY_TIMEOUT:?}; see {}",
                    log_path.display()
                )));
            }
        };
        let ready: ReadyLine = serde_json::from_str(&line)
            .map_err(|error| start_error(format!("invalid ready line `{line}`: {error}")))?;
        // Anything the instance prints later goes to its log through stderr; drain stdout
        // so that a stray print never blocks it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        debug!(instance = %name, pid = ready.pid, data_port = ready.data_port, "instance ready line");
        self.children.insert(spec.id, Running { name, node: spec.node, child, exit: None });
        Ok(InstanceEndpoints {
            control_url: format!("http://127.0.0.1:{}", ready.control_port),
            data_addr: format!("127.0.0.1:{}", ready.data_port),
            handle: format!("pid {}", ready.pid),
        })
    }

    async fn stop_instance(&mut self, id: InstanceId) -> Result<(), BackendError> {
        let Some(running) = self.children.get_mut(&id) else { return Ok(()) };
        if running.exit.is_some() {
            return Ok(());
        }
        // A frozen or cut-off instance cannot exit by itself: kill it at once.
        let grace =
            if self.down_nodes.contains(&running.node) { Duration::ZERO } else { EXIT_GRACE };
        running.exit = Some(stop_child(&running.name, &mut running.child, grace).await?);
        Ok(())
    }

    async fn exited(&mut self, id: InstanceId) -> Option<String> {
        let running = self.children.get_mut(&id)?;
        if let Some(exit) = &running.exit {
            return Some(exit.clone());
        }
        match running.child.try_wait() {
            Ok(Some(status)) => {
                running.exit = Some(format!("process exited: {status}"));
                running.exit.clone()
            }
            Ok(None) => None,
            Err(error) => Some(format!("cannot query the process: {error}")),
        }
    }

    async fn teardown(&mut self) -> Result<(), BackendError> {
        let ids: Vec<InstanceId> = self.children.keys().copied().collect();
        for id in ids {
            let running = self.children.get_mut(&id).expect("listed above");
            if running.exit.is_none() {
                let _ = running.child.start_kill();
                let status = running.child.wait().await.map(|s| s.to_string()).unwrap_or_default();
                running.exit = Some(format!("killed at teardown ({status})"));
            }
        }
        Ok(())
    }

    fn log_dir(&self) -> Option<PathBuf> {
        Some(self.log_dir.clone())
    }

    async fn node_alive(&mut self, node: NodeId) -> bool {
        !self.down_nodes.contains(&node)
    }

    /// Emulates faults with signals: a killed node is SIGKILL for its instances, a frozen
    /// node SIGSTOP until resumed with SIGCONT. A partition freezes every node of the
    /// cluster, which from outside looks the same as a cut network: no heartbeats and no
    /// data. The instances share one host, so no real link can be cut.
    async fn inject(&mut self, fault: Fault) -> Result<(), BackendError> {
        match fault {
            Fault::KillInstance(id) => {
                let running =
                    self.children.get_mut(&id).ok_or_else(|| BackendError::Unsupported {
                        fault: format!("kill_instance of unknown instance {id}"),
                        backend: "process".into(),
                    })?;
                running.child.start_kill().map_err(|error| BackendError::Stop {
                    instance: running.name.clone(),
                    reason: error.to_string(),
                })?;
            }
            Fault::KillNode(node) => {
                self.down_nodes.insert(node);
                self.signal_node(node, Signal::SIGKILL);
            }
            Fault::PauseNode(node) => {
                self.down_nodes.insert(node);
                self.signal_node(node, Signal::SIGSTOP);
            }
            Fault::ResumeNode(node) => self.signal_node(node, Signal::SIGCONT),
            Fault::Partition(cluster) => {
                for node in self.nodes_of(cluster) {
                    self.down_nodes.insert(node);
                    self.signal_node(node, Signal::SIGSTOP);
                }
            }
            Fault::Heal(cluster) => {
                for node in self.nodes_of(cluster) {
                    self.signal_node(node, Signal::SIGCONT);
                }
            }
            Fault::LoseCluster(cluster) => {
                for node in self.nodes_of(cluster) {
                    self.down_nodes.insert(node);
                    self.signal_node(node, Signal::SIGKILL);
                }
            }
        }
        Ok(())
    }
}

/// Waits up to `grace` for a child that was asked to stop, then kills it; returns how it
/// ended, for `Backend::exited`.
pub async fn stop_child(
    name: &str,
    child: &mut Child,
    grace: Duration,
) -> Result<String, BackendError> {
    if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
        return Ok(status.to_string());
    }
    warn!(instance = %name, "process did not exit after stop; killing it");
    child.start_kill().map_err(|error| BackendError::Stop {
        instance: name.to_string(),
        reason: error.to_string(),
    })?;
    let status = child.wait().await.map(|s| s.to_string()).unwrap_or_default();
    Ok(format!("killed ({status})"))
}

/// Returns the last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].iter().map(|line| format!("    {line}")).collect::<Vec<_>>().join("\n")
}
