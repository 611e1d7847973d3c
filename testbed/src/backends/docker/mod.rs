//! The `docker` backend: each cluster is a Docker network of node containers, and each
//! instance is a `mock-ersap` process that the harness starts in its node's container with
//! `docker exec`.
//!
//! What a run creates, every name prefixed with `tb-<run id>-` and every resource labelled as
//! [`labels`] lists:
//!
//! - one bridge network per cluster, `tb-<run>-<site>-<cluster>`; the harness reaches each
//!   instance's control port at its container's address on this network;
//! - one network for traffic between sites, `tb-<run>-wan`, that every node joins;
//! - one container per node, `tb-<run>-<node>`, on its cluster network and the wan network,
//!   both times with its node name as alias. It runs the node image ([`image`]) with the node
//!   agent ([`agent`]) as its main process.
//!
//! Instances bind 0.0.0.0 inside their container and advertise `<node>:<data port>` as their
//! data address. Docker's DNS resolves a node name through the cluster network for nodes of
//! the same cluster and through the wan network for the others, so disconnecting a cluster
//! from the wan network cuts exactly the links between sites. Latency and bandwidth are
//! emulated by the sending instance, as on the process backend. No port is published on the
//! host and no container gets the Docker socket.
//!
//! Node containers are created and started through testcontainers; networks, the second
//! network of each container, `docker exec` and SIGKILL go through bollard, which
//! testcontainers re-exports.
//!
//! Cleanup: [`Backend::teardown`] removes the containers and then everything that carries the
//! run's label. When the backend is dropped without a teardown, during a panic for example,
//! its destructor removes the same by label before it returns. A harness killed with SIGKILL
//! leaves its containers running; `testbed clean` removes them ([`crate::clean`]).

pub mod agent;
pub mod engine;
pub mod exec;
pub mod image;
pub mod labels;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{join_all, try_join_all};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use orchestrator::backend::{Backend, BackendError, Fault, InstanceEndpoints, InstanceSpec};
use orchestrator::model::{ClusterId, InstanceId, NodeId, Topology};
use testcontainers::bollard::Docker;
use testcontainers::bollard::errors::Error as DockerError;
use testcontainers::bollard::models::{
    EndpointSettings, NetworkConnectRequest, NetworkDisconnectRequest,
};
use testcontainers::bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptionsBuilder,
};
use testcontainers::core::logs::LogFrame;
use testcontainers::core::{ImageExt, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage};
use tracing::{debug, info, warn};

use self::exec::{ExecProcess, ExecRequest};
use self::image::NodeImage;
use super::process::{instance_args, journal_arg};
use super::{RUN_ID_ENV, RunLabels, TOKEN_ENV};

pub use agent::NODE_AGENT_FLAG;

/// How long a node container may take from creation to the agent's ready line.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped instance may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Path at which every node container mounts the run's log folder from the host, so that the
/// harness reads a sink's journal even after the sink's container is gone.
const LOG_DIR_IN_CONTAINER: &str = "/testbed-logs";
/// Seconds `docker stop` waits after SIGTERM before it kills a node container.
const STOP_TIMEOUT_S: i32 = 5;

/// A fault injection that failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} {target}: {reason}")]
pub struct FaultError {
    /// The attempted action, such as `pause` or `disconnect from the wan network`.
    pub action: &'static str,
    /// `node <name>` or `cluster <name>`.
    pub target: String,
    pub reason: String,
}

/// The `docker` backend; see the module documentation.
pub struct DockerBackend {
    docker: Docker,
    image: NodeImage,
    labels: RunLabels,
    host: String,
    token: String,
    log_dir: PathBuf,
    wan: String,
    nodes: BTreeMap<String, NodeContainer>,
    /// Node names by topology id, for [`Backend::inject`].
    node_names: BTreeMap<NodeId, String>,
    clusters: BTreeMap<ClusterId, Vec<NodeId>>,
    /// Nodes that were killed, paused or cut off, for [`Backend::node_alive`].
    down_nodes: BTreeSet<NodeId>,
    instances: BTreeMap<InstanceId, Instance>,
    /// Whether the engine may hold resources of this run that teardown has not removed.
    dirty: bool,
}

struct NodeContainer {
    container: ContainerAsync<GenericImage>,
    name: String,
    site: String,
    cluster: String,
    network: String,
    /// Address on the cluster network, where the harness reaches control ports.
    address: String,
}

struct Instance {
    name: String,
    stage: String,
    replica: u32,
    node: NodeId,
    process: ExecProcess,
}

impl DockerBackend {
    /// Connects to the Docker engine and makes sure the node image exists, building the static
    /// `mock-ersap` and the image when needed. An unreachable engine or a binary that cannot
    /// be built is a [`BackendError::Environment`].
    pub async fn connect(
        labels: RunLabels,
        token: &str,
        log_dir: &Path,
    ) -> Result<DockerBackend, BackendError> {
        let docker = engine::connect().await?;
        let image = image::ensure(&docker).await?;
        Ok(DockerBackend::with_image(docker, image, labels, token, log_dir))
    }

    /// Connects to the Docker engine and starts nodes from `image`, which must exist, for
    /// callers that create several backends from one image.
    pub async fn connect_with_image(
        image: NodeImage,
        labels: RunLabels,
        token: &str,
        log_dir: &Path,
    ) -> Result<DockerBackend, BackendError> {
        let docker = engine::connect().await?;
        Ok(DockerBackend::with_image(docker, image, labels, token, log_dir))
    }

    fn with_image(
        docker: Docker,
        image: NodeImage,
        labels: RunLabels,
        token: &str,
        log_dir: &Path,
    ) -> DockerBackend {
        let wan = labels::wan_network(&labels.run_id);
        DockerBackend {
            docker,
            image,
            labels,
            host: crate::artifacts::host_name(),
            token: token.to_string(),
            log_dir: log_dir.to_path_buf(),
            wan,
            nodes: BTreeMap::new(),
            node_names: BTreeMap::new(),
            clusters: BTreeMap::new(),
            down_nodes: BTreeSet::new(),
            instances: BTreeMap::new(),
            dirty: false,
        }
    }

    /// Returns the node image this backend starts its containers from.
    pub fn image(&self) -> &NodeImage {
        &self.image
    }

    /// Returns the run id that names and labels every resource of this backend.
    pub fn run_id(&self) -> &str {
        &self.labels.run_id
    }

    /// Returns the node names with the names of their containers, once provisioned.
    pub fn node_containers(&self) -> Vec<(String, String)> {
        self.nodes.iter().map(|(node, container)| (node.clone(), container.name.clone())).collect()
    }

    /// Kills a node's container with SIGKILL, and with it every instance on the node.
    /// A node that is not running counts as killed already.
    pub async fn kill_node(&self, node: &str) -> Result<(), FaultError> {
        let container = self.node(node, "kill")?;
        // SIGKILL to the container's init process from this host ends the container as
        // `docker kill` does, but without the engine's round trip, which took 0.1 to 0.3 s
        // per container on a 2-core machine. The pid is read just before, so it is the
        // running container's.
        if let Some(pid) = running_pid(&self.docker, &container.name).await {
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) => {
                    info!(node, container = %container.name, pid, "killed node");
                    return Ok(());
                }
                Err(error) => {
                    debug!(node, pid, %error, "failed to signal the node's init process; killing it through the engine")
                }
            }
        }
        let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        match self.docker.kill_container(&container.name, Some(options)).await {
            Ok(()) => info!(node, container = %container.name, "killed node"),
            // Docker replies 409 Conflict for a container that is not running.
            Err(DockerError::DockerResponseServerError { status_code: 409, message }) => {
                debug!(node, container = %container.name, %message, "node was not running");
            }
            Err(error) => return Err(fault("kill", node, error)),
        }
        Ok(())
    }

    /// Stops a node's container: SIGTERM to the agent, which ends the container and every
    /// instance in it at once.
    pub async fn stop_node(&self, node: &str) -> Result<(), FaultError> {
        let container = self.node(node, "stop")?;
        container
            .container
            .stop_with_timeout(Some(STOP_TIMEOUT_S))
            .await
            .map_err(|error| fault("stop", node, error))?;
        info!(node, container = %container.name, "stopped node");
        Ok(())
    }

    /// Starts a stopped or killed node's container again. Its instances are not restarted;
    /// starting new ones is the orchestrator's decision.
    pub async fn start_node(&mut self, node: &str) -> Result<(), FaultError> {
        let container = self.node(node, "start")?;
        container.container.start().await.map_err(|error| fault("start", node, error))?;
        let address =
            container_address(&self.docker, &container.name, &container.network).await.map_err(
                |reason| FaultError { action: "start", target: format!("node {node}"), reason },
            )?;
        info!(node, container = %container.name, %address, "started node again");
        if let Some(container) = self.nodes.get_mut(node) {
            container.address = address;
        }
        Ok(())
    }

    /// Freezes every process of a node with the cgroup freezer (`docker pause`).
    pub async fn pause_node(&self, node: &str) -> Result<(), FaultError> {
        let container = self.node(node, "pause")?;
        container.container.pause().await.map_err(|error| fault("pause", node, error))?;
        info!(node, container = %container.name, "paused node");
        Ok(())
    }

    /// Thaws a paused node.
    pub async fn unpause_node(&self, node: &str) -> Result<(), FaultError> {
        let container = self.node(node, "unpause")?;
        container.container.unpause().await.map_err(|error| fault("unpause", node, error))?;
        info!(node, container = %container.name, "unpaused node");
        Ok(())
    }

    /// Disconnects a node from the wan network: it keeps its cluster and loses every other
    /// site. Connections across sites stall; new ones fail because the name no longer
    /// resolves from other sites.
    pub async fn disconnect_node(&self, node: &str) -> Result<(), FaultError> {
        let container = self.node(node, "disconnect from the wan network")?;
        let request =
            NetworkDisconnectRequest { container: Some(container.name.clone()), force: Some(true) };
        self.docker
            .disconnect_network(&self.wan, request)
            .await
            .map_err(|error| fault("disconnect from the wan network", node, error))?;
        info!(node, network = %self.wan, "disconnected node from the wan network");
        Ok(())
    }

    /// Connects a node to the wan network again, under its node name.
    pub async fn reconnect_node(&self, node: &str) -> Result<(), FaultError> {
        let container = self.node(node, "reconnect to the wan network")?;
        connect_with_alias(&self.docker, &self.wan, &container.name, node).await.map_err(
            |reason| FaultError {
                action: "reconnect to the wan network",
                target: format!("node {node}"),
                reason,
            },
        )?;
        info!(node, network = %self.wan, "reconnected node to the wan network");
        Ok(())
    }

    /// Partitions a cluster from every other site by disconnecting all its nodes from the wan
    /// network. `cluster` is `site/cluster`, or the bare cluster name when only one site has
    /// a cluster of that name.
    pub async fn disconnect_cluster(&self, cluster: &str) -> Result<(), FaultError> {
        for node in self.cluster_nodes(cluster, "disconnect from the wan network")? {
            self.disconnect_node(&node).await?;
        }
        Ok(())
    }

    /// Ends the partition of a cluster by connecting all its nodes to the wan network again.
    pub async fn reconnect_cluster(&self, cluster: &str) -> Result<(), FaultError> {
        for node in self.cluster_nodes(cluster, "reconnect to the wan network")? {
            self.reconnect_node(&node).await?;
        }
        Ok(())
    }

    fn node_name(&self, node: NodeId) -> Result<String, BackendError> {
        self.node_names.get(&node).cloned().ok_or_else(|| {
            BackendError::Environment(format!(
                "node {node:?} is not part of run {}; provision it first",
                self.labels.run_id
            ))
        })
    }

    /// Sends SIGKILL to one instance's process, after checking that its pid is still its own.
    fn kill_instance(&self, id: InstanceId) -> Result<(), BackendError> {
        let failed = |instance: String, reason: String| BackendError::Stop { instance, reason };
        let Some(instance) = self.instances.get(&id) else {
            return Err(failed(id.to_string(), "no such instance in this run".to_string()));
        };
        if let Some(reason) = instance.process.exit_reason() {
            return Err(failed(instance.name.clone(), format!("it has already ended: {reason}")));
        }
        match instance.process.host_pid {
            Some(pid) if self.is_instance_process(pid, instance) => {
                kill(Pid::from_raw(pid as i32), Signal::SIGKILL).map_err(|error| {
                    failed(instance.name.clone(), format!("SIGKILL to pid {pid}: {error}"))
                })?;
                info!(instance = %instance.name, pid, "killed instance");
                Ok(())
            }
            _ => Err(failed(
                instance.name.clone(),
                "its process is not visible from this host, so it cannot be signalled".to_string(),
            )),
        }
    }

    fn node(&self, node: &str, action: &'static str) -> Result<&NodeContainer, FaultError> {
        self.nodes.get(node).ok_or_else(|| FaultError {
            action,
            target: format!("node {node}"),
            reason: format!("no such node in run {}", self.labels.run_id),
        })
    }

    fn cluster_nodes(
        &self,
        cluster: &str,
        action: &'static str,
    ) -> Result<Vec<String>, FaultError> {
        let matches = |container: &NodeContainer| {
            format!("{}/{}", container.site, container.cluster) == cluster
                || container.cluster == cluster
        };
        let nodes: Vec<&String> = self
            .nodes
            .iter()
            .filter(|(_, container)| matches(container))
            .map(|(node, _)| node)
            .collect();
        let mut sites: Vec<&str> = self
            .nodes
            .values()
            .filter(|container| matches(container))
            .map(|container| container.site.as_str())
            .collect();
        sites.dedup();
        let failed =
            |reason: String| FaultError { action, target: format!("cluster {cluster}"), reason };
        match (nodes.len(), sites.len()) {
            (0, _) => Err(failed(format!("no such cluster in run {}", self.labels.run_id))),
            (_, 1) => Ok(nodes.into_iter().cloned().collect()),
            _ => Err(failed(format!(
                "sites {} each have a cluster of that name; write it as site/cluster",
                sites.join(", ")
            ))),
        }
    }

    /// Container names of a cluster's nodes; with `down`, the nodes are marked down first.
    fn cluster_node_names(
        &mut self,
        cluster: ClusterId,
        down: bool,
    ) -> Result<Vec<String>, BackendError> {
        let nodes = self.clusters.get(&cluster).cloned().unwrap_or_default();
        if down {
            self.down_nodes.extend(nodes.iter().copied());
        }
        nodes.into_iter().map(|node| self.node_name(node)).collect()
    }

    /// Checks that `pid` is still the process of `instance`: its environment carries this
    /// run's id and its command line the instance's stage and replica. The check runs right
    /// before a SIGKILL, so that a pid the kernel has since reused is not signalled.
    fn is_instance_process(&self, pid: i64, instance: &Instance) -> bool {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let environ = std::fs::read(proc.join("environ")).unwrap_or_default();
        let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
        let run = format!("{RUN_ID_ENV}={}", self.labels.run_id);
        let stage = format!("--stage={}", instance.stage);
        let replica = format!("--replica={}", instance.replica);
        let has = |bytes: &[u8], wanted: &str| {
            bytes.split(|byte| *byte == 0).any(|item| item == wanted.as_bytes())
        };
        has(&environ, &run) && has(&cmdline, &stage) && has(&cmdline, &replica)
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn provision(&mut self, topology: &Topology) -> Result<(), BackendError> {
        std::fs::create_dir_all(&self.log_dir).map_err(|error| BackendError::Provision {
            what: format!("log folder {}", self.log_dir.display()),
            reason: error.to_string(),
        })?;
        // The engine resolves a bind mount's source on the host, so it must be absolute.
        self.log_dir =
            std::fs::canonicalize(&self.log_dir).map_err(|error| BackendError::Provision {
                what: format!("log folder {}", self.log_dir.display()),
                reason: error.to_string(),
            })?;
        self.dirty = true;
        let run_id = self.labels.run_id.clone();
        for node in topology.nodes() {
            self.node_names.insert(node.id, node.name.clone());
            self.clusters.entry(node.cluster).or_default().push(node.id);
        }

        let mut networks = vec![(self.wan.clone(), labels::run_labels(&self.labels, &self.host))];
        for cluster in topology.clusters() {
            let site = &topology.site(cluster.site).name;
            let network = labels::cluster_network(&run_id, site, &cluster.name);
            let labels =
                labels::placement_labels(&self.labels, &self.host, site, &cluster.name, None);
            networks.push((network, labels));
        }
        let docker = &self.docker;
        let creations = networks.into_iter().map(|(name, labels)| async move {
            engine::create_network(docker, &name, labels).await
        });
        join_all(creations).await.into_iter().collect::<Result<Vec<()>, BackendError>>()?;

        let context = NodeContext {
            docker: &self.docker,
            image: &self.image,
            labels: &self.labels,
            host: &self.host,
            wan: &self.wan,
            log_dir: &self.log_dir,
        };
        let starts = topology.nodes().iter().map(|node| {
            let site = &topology.site(node.site).name;
            let cluster = &topology.cluster(node.cluster).name;
            start_node(&context, site, cluster, &node.name)
        });
        let mut first_error = None;
        for (node, result) in topology.nodes().iter().zip(join_all(starts).await) {
            match result {
                Ok(container) => {
                    self.nodes.insert(node.name.clone(), container);
                }
                Err(error) => {
                    warn!(node = %node.name, %error, "node container did not start");
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => {
                info!(run_id, nodes = self.nodes.len(), image = %self.image.reference(), "provisioned");
                Ok(())
            }
        }
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
        let Some(node) = self.nodes.get(&spec.node_name) else {
            return Err(start_error(format!(
                "node {} has no container in run {}",
                spec.node_name, self.labels.run_id
            )));
        };

        let mut command = vec![image::BINARY_IN_IMAGE.to_string()];
        command.extend(instance_args(spec, &self.labels, "0.0.0.0"));
        command.extend(journal_arg(spec, Path::new(LOG_DIR_IN_CONTAINER)));
        command.push(format!("--advertise={}", spec.node_name));
        let request = ExecRequest {
            container: &node.name,
            command,
            env: vec![
                format!("{TOKEN_ENV}={}", self.token),
                format!("{RUN_ID_ENV}={}", self.labels.run_id),
            ],
            log_path: exec::log_path(&self.log_dir, &name),
        };
        let process = exec::start(&self.docker, request).await.map_err(start_error)?;

        let endpoints = InstanceEndpoints {
            control_url: format!("http://{}:{}", node.address, process.ready.control_port),
            data_addr: format!("{}:{}", spec.node_name, process.ready.data_port),
            handle: format!("exec {} in {}", short_id(&process.exec_id), node.name),
        };
        debug!(instance = %name, container = %node.name, host_pid = ?process.host_pid,
            control = %endpoints.control_url, data = %endpoints.data_addr, "instance ready line");
        self.instances.insert(
            spec.id,
            Instance {
                name,
                stage: spec.stage.clone(),
                replica: spec.id.replica,
                node: spec.node,
                process,
            },
        );
        Ok(endpoints)
    }

    async fn stop_instance(&mut self, id: InstanceId) -> Result<(), BackendError> {
        let Some(instance) = self.instances.get_mut(&id) else { return Ok(()) };
        if instance.process.exit_reason().is_some() {
            return Ok(());
        }
        // A frozen container delays a SIGKILL until it is thawed or removed, so waiting for
        // the exit would stall the repair: the signal is sent and the instance left to it.
        let frozen = self.down_nodes.contains(&instance.node);
        if frozen {
            let instance = &self.instances[&id];
            if let Some(pid) = instance.process.host_pid {
                if self.is_instance_process(pid, instance) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
            return Ok(());
        }
        let instance = self.instances.get_mut(&id).expect("looked up above");
        if instance.process.wait(EXIT_GRACE).await.is_some() {
            return Ok(());
        }
        let name = instance.name.clone();
        let pid = instance.process.host_pid;
        let instance = &self.instances[&id];
        let signalled = match pid {
            Some(pid) if self.is_instance_process(pid, instance) => {
                warn!(instance = %name, pid, "instance did not exit after stop; killing it");
                kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok()
            }
            _ => false,
        };
        let instance = self.instances.get_mut(&id).expect("looked up above");
        if signalled && instance.process.wait(EXIT_GRACE).await.is_some() {
            return Ok(());
        }
        Err(BackendError::Stop {
            instance: name,
            reason: format!(
                "it still runs {} s after the stop request and could not be killed from the \
                 host; removing its node container at teardown ends it",
                EXIT_GRACE.as_secs()
            ),
        })
    }

    async fn exited(&mut self, id: InstanceId) -> Option<String> {
        self.instances.get(&id)?.process.exit_reason()
    }

    async fn teardown(&mut self) -> Result<(), BackendError> {
        if !self.dirty {
            return Ok(());
        }
        let run_id = self.labels.run_id.clone();
        let nodes = std::mem::take(&mut self.nodes);
        let removals = join_all(nodes.into_values().map(|node| node.container.rm())).await;
        for error in removals.into_iter().filter_map(Result::err) {
            debug!(%error, "node container removal failed; the sweep by label retries");
        }
        // The sweep catches what the node table does not hold: a container whose start
        // failed after creation, and the networks.
        let removed = engine::remove_labelled(&self.docker, &labels::run_filter(&run_id)).await;
        // The instance streams end with their containers; waiting lets them flush their logs.
        for instance in self.instances.values_mut() {
            instance.process.wait(EXIT_GRACE).await;
        }
        self.dirty = false;
        if removed.failures.is_empty() {
            info!(run_id, networks = removed.networks, "removed the run's containers and networks");
            Ok(())
        } else {
            Err(BackendError::Stop {
                instance: format!("node containers of run {run_id}"),
                reason: format!(
                    "{}\n  (hint: `cargo xtask clean` removes them once this harness has exited)",
                    removed.failures.join("; ")
                ),
            })
        }
    }

    fn log_dir(&self) -> Option<PathBuf> {
        Some(self.log_dir.clone())
    }

    async fn node_alive(&mut self, node: NodeId) -> bool {
        !self.down_nodes.contains(&node)
    }

    /// Injects a fault into the node containers. A killed node is SIGKILL to its container's
    /// init (see [`DockerBackend::kill_node`]), a frozen node `docker pause` until resumed. A partition freezes every node of the cluster, as
    /// on the process backend, which from outside looks like a cut network: no heartbeats and
    /// no data.
    ///
    /// NOTE: the network cut itself, [`DockerBackend::disconnect_cluster`], is not used here.
    /// A container that joins the wan network again gets a new address from Docker, and
    /// instances that resolved the old one before the cut keep sending to it.
    async fn inject(&mut self, fault: Fault) -> Result<(), BackendError> {
        let failed = |error: FaultError| BackendError::Environment(error.to_string());
        match fault {
            Fault::KillInstance(id) => self.kill_instance(id)?,
            Fault::KillNode(node) => {
                self.down_nodes.insert(node);
                self.kill_node(&self.node_name(node)?).await.map_err(failed)?;
            }
            Fault::PauseNode(node) => {
                self.down_nodes.insert(node);
                self.pause_node(&self.node_name(node)?).await.map_err(failed)?;
            }
            Fault::ResumeNode(node) => {
                self.unpause_node(&self.node_name(node)?).await.map_err(failed)?;
            }
            // A cluster's nodes are paused, resumed or killed all at once, so that the
            // fault lands on the whole cluster at one moment.
            Fault::Partition(cluster) => {
                let names = self.cluster_node_names(cluster, true)?;
                try_join_all(names.iter().map(|name| self.pause_node(name)))
                    .await
                    .map_err(failed)?;
            }
            Fault::Heal(cluster) => {
                let names = self.cluster_node_names(cluster, false)?;
                try_join_all(names.iter().map(|name| self.unpause_node(name)))
                    .await
                    .map_err(failed)?;
            }
            Fault::LoseCluster(cluster) => {
                let names = self.cluster_node_names(cluster, true)?;
                try_join_all(names.iter().map(|name| self.kill_node(name)))
                    .await
                    .map_err(failed)?;
            }
        }
        Ok(())
    }
}

impl Drop for DockerBackend {
    /// Removes the run's containers and networks by label when no teardown did, for example
    /// while a panic unwinds. This blocks until the engine has removed them.
    fn drop(&mut self) {
        if !self.dirty {
            return;
        }
        let filter = labels::run_filter(&self.labels.run_id);
        let removed = engine::remove_labelled_blocking(&filter);
        // The containers are gone now. testcontainers' own destructor would send a second
        // removal, and it panics when no tokio runtime is current, so it must not run.
        for node in std::mem::take(&mut self.nodes).into_values() {
            std::mem::forget(node.container);
        }
        if removed.failures.is_empty() {
            eprintln!(
                "testbed: removed {} containers and {} networks of run {} on the way out",
                removed.containers, removed.networks, self.labels.run_id
            );
        } else {
            eprintln!(
                "testbed: could not remove every resource of run {}: {}; run `cargo xtask clean`",
                self.labels.run_id,
                removed.failures.join("; ")
            );
        }
    }
}

/// The parts of the backend that starting a node container needs.
struct NodeContext<'a> {
    docker: &'a Docker,
    image: &'a NodeImage,
    labels: &'a RunLabels,
    host: &'a str,
    wan: &'a str,
    log_dir: &'a Path,
}

/// Starts one node's container on its cluster network, waits for the agent's ready line, and
/// connects it to the wan network.
async fn start_node(
    context: &NodeContext<'_>,
    site: &str,
    cluster: &str,
    node: &str,
) -> Result<NodeContainer, BackendError> {
    let run_id = &context.labels.run_id;
    let name = labels::node_container(run_id, node);
    let network = labels::cluster_network(run_id, site, cluster);
    let failed = |reason: String| BackendError::Provision {
        what: format!("node container {name} of {site}/{cluster}"),
        reason,
    };

    let log_path = context.log_dir.join(format!("node-{node}.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|error| failed(format!("cannot create {}: {error}", log_path.display())))?;
    let request = GenericImage::new(context.image.name.clone(), context.image.tag.clone())
        .with_wait_for(WaitFor::message_on_stderr(agent::READY_MESSAGE))
        .with_container_name(&name)
        .with_network(&network)
        .with_labels(labels::placement_labels(
            context.labels,
            context.host,
            site,
            cluster,
            Some(node),
        ))
        .with_mount(Mount::bind_mount(context.log_dir.display().to_string(), LOG_DIR_IN_CONTAINER))
        .with_log_consumer(node_log_writer(log))
        .with_startup_timeout(NODE_START_TIMEOUT);
    let container = request.start().await.map_err(|error| {
        failed(format!("{error}; the container's log ends with:\n{}", engine::tail(&log_path, 20)))
    })?;

    // testcontainers 0.25, the last release that builds with Rust 1.85, sets neither a host name nor a
    // network alias, so the container joins its cluster network again under its node name
    // before any instance runs in it.
    let request = NetworkDisconnectRequest { container: Some(name.clone()), force: Some(true) };
    context.docker.disconnect_network(&network, request).await.map_err(|error| {
        failed(format!("cannot disconnect {name} from {network} to add its alias: {error}"))
    })?;
    connect_with_alias(context.docker, &network, &name, node).await.map_err(failed)?;
    connect_with_alias(context.docker, context.wan, &name, node).await.map_err(failed)?;

    let address = container_address(context.docker, &name, &network).await.map_err(failed)?;
    debug!(node, container = %name, %address, "node container ready");
    Ok(NodeContainer {
        container,
        name,
        site: site.to_string(),
        cluster: cluster.to_string(),
        network,
        address,
    })
}

/// Returns a testcontainers log consumer that appends a container's output to its log file as
/// it arrives, so the log survives the container's removal and a crash of the harness.
fn node_log_writer(file: std::fs::File) -> impl Fn(&LogFrame) + Send + Sync + 'static {
    let file = Arc::new(Mutex::new(file));
    move |frame: &LogFrame| {
        let bytes = match frame {
            LogFrame::StdOut(bytes) | LogFrame::StdErr(bytes) => bytes,
        };
        if let Ok(mut file) = file.lock() {
            let _ = file.write_all(bytes);
        }
    }
}

/// Connects a container to a network under its node name.
async fn connect_with_alias(
    docker: &Docker,
    network: &str,
    container: &str,
    node: &str,
) -> Result<(), String> {
    let request = NetworkConnectRequest {
        container: Some(container.to_string()),
        endpoint_config: Some(EndpointSettings {
            aliases: Some(vec![node.to_string()]),
            ..Default::default()
        }),
    };
    docker
        .connect_network(network, request)
        .await
        .map_err(|error| format!("cannot connect {container} to {network}: {error}"))
}

/// Returns the IPv4 address of a container on one network.
async fn container_address(
    docker: &Docker,
    container: &str,
    network: &str,
) -> Result<String, String> {
    let inspect = docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
        .map_err(|error| format!("cannot inspect {container}: {error}"))?;
    inspect
        .network_settings
        .and_then(|settings| settings.networks)
        .and_then(|networks| networks.get(network).cloned())
        .and_then(|endpoint| endpoint.ip_address)
        .filter(|address| !address.is_empty())
        .ok_or_else(|| format!("{container} has no address on {network}"))
}

/// Returns the host pid of a running container's init process, or `None` when the container
/// is not running, is paused or the engine does not report the pid.
async fn running_pid(docker: &Docker, container: &str) -> Option<i32> {
    let inspect =
        docker.inspect_container(container, None::<InspectContainerOptions>).await.ok()?;
    let state = inspect.state?;
    // A paused container's processes take the signal only once thawed, so a paused node is
    // killed through the engine instead.
    if state.running != Some(true) || state.paused == Some(true) {
        return None;
    }
    state.pid.and_then(|pid| i32::try_from(pid).ok()).filter(|pid| *pid > 0)
}

fn fault(action: &'static str, node: &str, error: impl std::fmt::Display) -> FaultError {
    FaultError { action, target: format!("node {node}"), reason: error.to_string() }
}

fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}
