//! The one trait every backend implements: it carries out the orchestrator's decisions on
//! local processes, containers, Slurm jobs or a simulation.

use std::path::PathBuf;

use async_trait::async_trait;

use crate::control::Role;
use crate::model::{Cost, InstanceId, Lang, NodeId, Topology};

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

    /// Stops one instance and frees what it used.
    async fn stop_instance(&mut self, id: InstanceId) -> Result<(), BackendError>;

    /// Returns `Some(reason)` when the instance has ended by itself (crashed or exited).
    async fn exited(&mut self, id: InstanceId) -> Option<String>;

    /// Stops every instance and removes every resource the backend created.
    async fn teardown(&mut self) -> Result<(), BackendError>;

    /// Folder with one log file per instance, once the instances have stopped.
    fn log_dir(&self) -> Option<PathBuf>;
}
