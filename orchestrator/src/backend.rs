//! The one trait every backend implements: it carries out the orchestrator's decisions on
//! local processes, containers, Slurm jobs or a simulation.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::client::InstanceControl;
use crate::control::Role;
use crate::model::{ClusterId, Cost, InstanceId, Lang, NodeId, Topology};

/// Everything a backend needs to start one mock ERSAP instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub id: InstanceId,
    pub role: Role,
    pub stage: String,
    pub engine_class: String,
    pub container: String,
    pub lang: Lang,
    pub node: NodeId,
    pub site_name: String,
    pub cluster_name: String,
    pub node_name: String,
    /// Source only: first sequence number and number of events to emit.
    pub seq_start: u64,
    pub events: u64,
    /// Source only: payload size in bytes.
    pub event_size: u32,
    /// Source only: events per second; 0 means as fast as possible.
    pub rate: f64,
    pub cost: Cost,
    /// The service's ERSAP configuration, passed on for the report only.
    pub config: serde_json::Value,
}

impl InstanceSpec {
    /// Short unique name, used for log files and container names.
    pub fn name(&self) -> String {
        format!("{}-{}", self.stage, self.id)
    }
}

/// Where a started instance can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEndpoints {
    /// Base URL of the control API as reachable from the orchestrator, e.g.
    /// `http://127.0.0.1:40123`.
    pub control_url: String,
    /// `host:port` of the data port as reachable from other instances.
    pub data_addr: String,
    /// Backend handle for messages: a pid, a container id or a job id.
    pub handle: String,
}

/// A backend operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("failed to start instance {instance} on node `{node}`: {reason}")]
    Start { instance: String, node: String, reason: String },
    #[error("failed to stop instance {instance}: {reason}")]
    Stop { instance: String, reason: String },
    #[error("failed to provision {what}: {reason}")]
    Provision { what: String, reason: String },
    #[error("{0}")]
    Environment(String),
    #[error("fault `{fault}` is not supported by the {backend} backend")]
    Unsupported { fault: String, backend: String },
}

/// Sequence numbers a sink replica received: sorted, disjoint, half-open `[start, end)`
/// ranges, and how many receptions repeated an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SinkRecord {
    pub ranges: Vec<[u64; 2]>,
    pub duplicates: u64,
}

/// A fault the harness injects through the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL one instance.
    KillInstance(InstanceId),
    /// Kill a node and every instance on it.
    KillNode(NodeId),
    /// Freeze a node: its instances stop running and answering until it is resumed.
    PauseNode(NodeId),
    ResumeNode(NodeId),
    /// Cut a cluster off from the other sites and from the orchestrator.
    Partition(ClusterId),
    /// Undo a partition.
    Heal(ClusterId),
    /// Lose a whole cluster for good.
    LoseCluster(ClusterId),
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillInstance(_) => "kill_instance",
            Fault::KillNode(_) => "kill_node",
            Fault::PauseNode(_) => "pause_node",
            Fault::ResumeNode(_) => "resume_node",
            Fault::Partition(_) => "partition",
            Fault::Heal(_) => "heal",
            Fault::LoseCluster(_) => "lose_cluster",
        }
    }
}

/// A backend: provisions the topology, starts and stops instances, and removes everything
/// it created in [`Backend::teardown`], which must be safe to call more than once.
#[async_trait]
pub trait Backend: Send {
    /// Short name used in summaries: `process`, `docker`, `sim`, ...
    fn kind(&self) -> &'static str;

    /// Creates the sites, clusters and nodes of the topology.
    async fn provision(&mut self, topology: &Topology) -> Result<(), BackendError>;

    /// Starts one instance and returns once its ports are known; it may not be healthy yet.
    async fn start_instance(
        &mut self,
        spec: &InstanceSpec,
    ) -> Result<InstanceEndpoints, BackendError>;

    /// Starts several instances; the results come in the order of `specs`. Backends whose
    /// start waits on something outside (a batch scheduler) override it to start them all
    /// at once.
    async fn start_instances(
        &mut self,
        specs: &[InstanceSpec],
    ) -> Vec<Result<InstanceEndpoints, BackendError>> {
        let mut results = Vec::with_capacity(specs.len());
        for spec in specs {
            results.push(self.start_instance(spec).await);
        }
        results
    }

    /// Stops one instance and frees what it used.
    async fn stop_instance(&mut self, id: InstanceId) -> Result<(), BackendError>;

    /// Returns `Some(reason)` when the instance has ended by itself (crashed or exited).
    async fn exited(&mut self, id: InstanceId) -> Option<String>;

    /// Stops every instance and removes every resource the backend created.
    async fn teardown(&mut self) -> Result<(), BackendError>;

    /// Folder with one log file per instance, once the instances have stopped.
    fn log_dir(&self) -> Option<PathBuf>;

    /// Whether a node can run instances; false after it was killed, lost or cut off.
    async fn node_alive(&mut self, _node: NodeId) -> bool {
        true
    }

    /// Injects a fault; backends that cannot emulate one return [`BackendError::Unsupported`].
    async fn inject(&mut self, fault: Fault) -> Result<(), BackendError> {
        Err(BackendError::Unsupported {
            fault: fault.kind().to_string(),
            backend: self.kind().to_string(),
        })
    }

    /// Reads what a sink replica received before it stopped replying (killed, frozen or cut
    /// off) from the journal it wrote to the log folder. `None` when there is no journal.
    fn lost_sink_record(&self, _id: InstanceId, name: &str) -> Option<SinkRecord> {
        self.log_dir().and_then(|dir| crate::journal::read_in(&dir, name))
    }

    /// The control channel to instances; `None` means HTTP with the run's token.
    fn control(&self) -> Option<Arc<dyn InstanceControl>> {
        None
    }
}
