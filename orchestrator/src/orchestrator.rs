//! The hierarchical orchestrator: plans a workflow on a topology, deploys it through a
//! backend, links the stages, watches the instances and drains the stream at its end.
//!
//! The global level ([`crate::placement::choose_cluster`]) assigns each stage to a cluster;
//! the cluster level ([`crate::placement::place_replicas`]) assigns replicas to nodes, and
//! [`Orchestrator::deploy`] starts them through the [`Backend`] and links every replica of a
//! stage to every replica of the next.
//!
//! The orchestrator never sleeps to wait for state: it polls with a deadline. The caller
//! drives a run by calling [`Orchestrator::poll`] at its own interval; each poll fetches the
//! counters of every live instance, detects instances that ended, and moves the drain forward
//! one stage at a time once the sources have emitted every event.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::backend::{Backend, BackendError, InstanceEndpoints, InstanceSpec};
use crate::client::{ControlClient, ControlError};
use crate::control::{Drain, Phase, Role, Stats, Target, Targets};
use crate::model::{InstanceId, InstanceState, StageId, Topology, Workflow};
use crate::placement::{Capacity, Placement, PlacementError, place_workflow};

/// What the source stage emits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamParams {
    /// Events in total, split over the source replicas.
    pub events: u64,
    /// Payload size in bytes.
    pub event_size: u32,
    /// Events per second over all source replicas; 0 means as fast as possible.
    pub rate: f64,
}

/// Timeouts and intervals of the orchestrator.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long an instance may take from start to a healthy control endpoint.
    pub start_timeout: Duration,
    /// Consecutive failed polls after which an unreachable instance counts as failed.
    pub missed_polls_to_fail: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options { start_timeout: Duration::from_secs(20), missed_polls_to_fail: 3 }
    }
}

/// Something the orchestrator did or saw, for progress display and logs.
#[derive(Debug, Clone)]
pub enum Event {
    InstanceStarted { name: String, node: String },
    InstanceReady { name: String },
    StageLinked { stage: String, targets: usize },
    DrainRequested { stage: String },
    InstanceFailed { name: String, reason: String },
}

/// An orchestrator operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(
        "instance {instance} did not become healthy within {waited:?}: {last_error}\n  \
         (hint: read its log; a slow machine may need a longer start timeout)"
    )]
    StartTimeout { instance: String, waited: Duration, last_error: String },
    #[error("instance {instance} ended while starting: {reason}")]
    ExitedWhileStarting { instance: String, reason: String },
    #[error("deploy called before plan")]
    NotPlanned,
}

/// An instance as the orchestrator tracks it.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub spec: InstanceSpec,
    pub name: String,
    pub endpoints: Option<InstanceEndpoints>,
    pub state: InstanceState,
    missed_polls: u32,
}

/// Counters of every live instance at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub stats: BTreeMap<InstanceId, Stats>,
    /// True once every instance of every stage has drained.
    pub drained: bool,
}

pub struct Orchestrator {
    topology: Topology,
    workflow: Workflow,
    backend: Box<dyn Backend>,
    client: ControlClient,
    options: Options,
    params: StreamParams,
    capacity: Capacity,
    placement: Option<Placement>,
    instances: BTreeMap<InstanceId, InstanceRecord>,
    /// Stages whose replicas have been asked to drain.
    drain_requested: Vec<bool>,
    events: Vec<Event>,
}

impl Orchestrator {
    pub fn new(
        topology: Topology,
        workflow: Workflow,
        backend: Box<dyn Backend>,
        token: &str,
        params: StreamParams,
        options: Options,
    ) -> Orchestrator {
        let capacity = Capacity::of(&topology);
        let stage_count = workflow.stages().len();
        Orchestrator {
            topology,
            workflow,
            backend,
            client: ControlClient::new(token),
            options,
            params,
            capacity,
            placement: None,
            instances: BTreeMap::new(),
            drain_requested: vec![false; stage_count],
            events: Vec::new(),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn workflow(&self) -> &Workflow {
        &self.workflow
    }

    pub fn placement(&self) -> Option<&Placement> {
        self.placement.as_ref()
    }

    pub fn backend_kind(&self) -> &'static str {
        self.backend.kind()
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn instances(&self) -> impl Iterator<Item = &InstanceRecord> {
        self.instances.values()
    }

    pub fn client(&self) -> &ControlClient {
        &self.client
    }

    /// Returns and forgets the events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Runs both placement levels and remembers the result.
    pub fn plan(&mut self) -> Result<&Placement, OrchestratorError> {
        let mut capacity = Capacity::of(&self.topology);
        let placement = place_workflow(&self.topology, &self.workflow, &mut capacity)?;
        for (stage, cluster) in placement.clusters.iter().enumerate() {
            info!(
                stage = %self.workflow.stage(StageId(stage)).name,
                cluster = %self.topology.cluster_path(*cluster),
                replicas = placement.nodes[stage].len(),
                "placed stage"
            );
        }
        self.capacity = capacity;
        self.placement = Some(placement);
        Ok(self.placement.as_ref().expect("just set"))
    }

    /// Creates the topology's clusters and nodes on the backend.
    pub async fn provision(&mut self) -> Result<(), OrchestratorError> {
        self.backend.provision(&self.topology).await?;
        Ok(())
    }

    /// Starts every replica, sinks first so that every target exists before its senders,
    /// waits until each is healthy, then links each stage to the next.
    pub async fn deploy(&mut self) -> Result<(), OrchestratorError> {
        let placement = self.placement.clone().ok_or(OrchestratorError::NotPlanned)?;
        let source_replicas = placement.nodes[0].len() as u64;
        let stages: Vec<_> = self.workflow.stages().iter().rev().cloned().collect();
        for stage in stages {
            for (replica, node) in placement.nodes[stage.id.0].iter().enumerate() {
                let replica = replica as u32;
                let node_info = self.topology.node(*node);
                let (seq_start, events) = if stage.role == Role::Source {
                    split_events(self.params.events, source_replicas, u64::from(replica))
                } else {
                    (0, 0)
                };
                let spec = InstanceSpec {
                    id: InstanceId::new(stage.id, replica),
                    role: stage.role,
                    stage: stage.name.clone(),
                    engine_class: stage.class.clone(),
                    container: stage.container.clone(),
                    lang: stage.lang,
                    node: *node,
                    site_name: self.topology.site(node_info.site).name.clone(),
                    cluster_name: self.topology.cluster(node_info.cluster).name.clone(),
                    node_name: node_info.name.clone(),
                    seq_start,
                    events,
                    event_size: self.params.event_size,
                    rate: self.params.rate / source_replicas as f64,
                    cost: stage.cost,
                    config: stage.config.clone(),
                };
                self.start(spec).await?;
            }
        }
        self.wait_ready().await?;
        for stage in 0..self.workflow.stages().len().saturating_sub(1) {
            self.link_stage(StageId(stage)).await?;
        }
        Ok(())
    }

    /// Tells every source replica to start emitting.
    pub async fn start_stream(&mut self) -> Result<(), OrchestratorError> {
        for record in self.instances.values().filter(|record| record.spec.role == Role::Source) {
            let url = control_url(record);
            self.client.start(&record.name, &url).await?;
        }
        Ok(())
    }

    /// Fetches the counters of every live instance, marks instances that ended or stopped
    /// answering as failed, and requests the drain of the next stage when the previous ones
    /// have drained.
    pub async fn poll(&mut self) -> Result<Snapshot, OrchestratorError> {
        let mut requests = JoinSet::new();
        for (id, record) in &self.instances {
            if !record.state.is_live() {
                continue;
            }
            let client = self.client.clone();
            let (id, name, url) = (*id, record.name.clone(), control_url(record));
            requests.spawn(async move { (id, client.stats(&name, &url, false).await) });
        }
        let at = Instant::now();
        let mut stats = BTreeMap::new();
        while let Some(joined) = requests.join_next().await {
            let Ok((id, result)) = joined else { continue };
            match result {
                Ok(reply) => {
                    let record = self.instances.get_mut(&id).expect("polled instances exist");
                    record.missed_polls = 0;
                    let next = match reply.phase {
                        Phase::Drained => Some(InstanceState::Drained),
                        Phase::Draining => Some(InstanceState::Draining),
                        Phase::Running | Phase::Ready => None,
                    };
                    if let Some(next) = next {
                        if let Err(error) = record.state.advance(next) {
                            debug!(instance = %record.name, %error, "ignored state report");
                        }
                    }
                    stats.insert(id, reply);
                }
                Err(error) => {
                    let record = self.instances.get_mut(&id).expect("polled instances exist");
                    record.missed_polls += 1;
                    warn!(instance = %record.name, missed = record.missed_polls, %error, "poll failed");
                }
            }
        }
        self.detect_failures().await;
        self.advance_drain().await?;
        let drained = self.instances.values().all(|record| record.state == InstanceState::Drained);
        Ok(Snapshot { at, stats, drained })
    }

    /// Final counters of every instance, with a sink's received ranges and full histograms.
    pub async fn final_stats(&self) -> BTreeMap<InstanceId, Result<Stats, ControlError>> {
        let mut requests = JoinSet::new();
        for (id, record) in &self.instances {
            if record.endpoints.is_none() {
                continue;
            }
            let client = self.client.clone();
            let (id, name, url) = (*id, record.name.clone(), control_url(record));
            requests.spawn(async move { (id, client.stats(&name, &url, true).await) });
        }
        let mut all = BTreeMap::new();
        while let Some(joined) = requests.join_next().await {
            if let Ok((id, result)) = joined {
                all.insert(id, result);
            }
        }
        all
    }

    /// DPE reports of every instance, in ERSAP's JSON schema.
    pub async fn reports(&self) -> BTreeMap<String, serde_json::Value> {
        let mut reports = BTreeMap::new();
        for record in self.instances.values() {
            if record.endpoints.is_none()
                || !record.state.is_live() && record.state != InstanceState::Drained
            {
                continue;
            }
            match self.client.report(&record.name, &control_url(record)).await {
                Ok(report) => {
                    reports.insert(record.name.clone(), report);
                }
                Err(error) => warn!(instance = %record.name, %error, "could not fetch report"),
            }
        }
        reports
    }

    /// Asks every instance to stop, then has the backend remove everything it created.
    /// Safe to call more than once.
    pub async fn shutdown(&mut self) -> Result<(), OrchestratorError> {
        let ids: Vec<InstanceId> = self.instances.keys().copied().collect();
        for id in ids {
            let record = self.instances.get_mut(&id).expect("listed above");
            if record.endpoints.is_some()
                && !matches!(record.state, InstanceState::Stopped | InstanceState::Failed { .. })
            {
                let url = control_url(record);
                if let Err(error) = self.client.stop(&record.name, &url).await {
                    debug!(instance = %record.name, %error, "stop request failed; the backend stops it");
                }
            }
            if let Err(error) = self.backend.stop_instance(id).await {
                warn!(instance = %record.name, %error, "backend could not stop instance");
            }
            let _ = record.state.advance(InstanceState::Stopped);
        }
        self.backend.teardown().await?;
        Ok(())
    }

    async fn start(&mut self, spec: InstanceSpec) -> Result<(), OrchestratorError> {
        let name = spec.name();
        let mut state = InstanceState::Pending;
        let endpoints = self.backend.start_instance(&spec).await?;
        state.advance(InstanceState::Starting).expect("pending to starting");
        info!(instance = %name, node = %spec.node_name, handle = %endpoints.handle, "started instance");
        self.events
            .push(Event::InstanceStarted { name: name.clone(), node: spec.node_name.clone() });
        self.instances.insert(
            spec.id,
            InstanceRecord { spec, name, endpoints: Some(endpoints), state, missed_polls: 0 },
        );
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), OrchestratorError> {
        let deadline = Instant::now() + self.options.start_timeout;
        let ids: Vec<InstanceId> = self.instances.keys().copied().collect();
        for id in ids {
            let record = &self.instances[&id];
            let (name, url) = (record.name.clone(), control_url(record));
            let mut last_error;
            loop {
                if let Some(reason) = self.backend.exited(id).await {
                    return Err(OrchestratorError::ExitedWhileStarting { instance: name, reason });
                }
                match self.client.health(&name, &url).await {
                    Ok(_) => break,
                    Err(error) => last_error = error.reason,
                }
                if Instant::now() >= deadline {
                    return Err(OrchestratorError::StartTimeout {
                        instance: name,
                        waited: self.options.start_timeout,
                        last_error,
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let record = self.instances.get_mut(&id).expect("listed above");
            record.state.advance(InstanceState::Running).expect("starting to running");
            self.events.push(Event::InstanceReady { name });
        }
        Ok(())
    }

    async fn link_stage(&mut self, stage: StageId) -> Result<(), OrchestratorError> {
        let next = StageId(stage.0 + 1);
        let receivers: Vec<(String, crate::model::SiteId)> = self
            .instances
            .values()
            .filter(|record| record.spec.id.stage == next && record.state.is_live())
            .map(|record| {
                let addr = record.endpoints.as_ref().expect("started").data_addr.clone();
                (addr, self.topology.node(record.spec.node).site)
            })
            .collect();
        let senders: Vec<&InstanceRecord> = self
            .instances
            .values()
            .filter(|record| record.spec.id.stage == stage && record.state.is_live())
            .collect();
        for sender in senders {
            let from = self.topology.node(sender.spec.node).site;
            let targets = Targets {
                targets: receivers
                    .iter()
                    .map(|(addr, to)| {
                        let link = self.topology.link(from, *to);
                        Target {
                            addr: addr.clone(),
                            latency_us: link.latency.as_micros() as u64,
                            bandwidth_bps: link.bandwidth_bps,
                        }
                    })
                    .collect(),
            };
            self.client.set_targets(&sender.name, &control_url(sender), &targets).await?;
        }
        let stage_name = self.workflow.stage(stage).name.clone();
        self.events.push(Event::StageLinked { stage: stage_name, targets: receivers.len() });
        Ok(())
    }

    async fn detect_failures(&mut self) {
        let ids: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|(_, record)| record.state.is_live())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let exited = self.backend.exited(id).await;
            let record = self.instances.get_mut(&id).expect("listed above");
            let reason = match exited {
                Some(reason) => Some(reason),
                None if record.missed_polls >= self.options.missed_polls_to_fail => {
                    Some(format!("no reply to {} consecutive polls", record.missed_polls))
                }
                None => None,
            };
            if let Some(reason) = reason {
                warn!(instance = %record.name, %reason, "instance failed");
                self.events.push(Event::InstanceFailed {
                    name: record.name.clone(),
                    reason: reason.clone(),
                });
                let _ = record.state.advance(InstanceState::Failed { reason });
            }
        }
    }

    /// Once every source replica has drained, asks every other stage to drain. A stage
    /// finishes only after it has received one end-of-stream frame per upstream replica and
    /// emptied its queue, so all stages can be asked at once and still finish in order.
    async fn advance_drain(&mut self) -> Result<(), OrchestratorError> {
        let sources_drained = self
            .instances
            .values()
            .filter(|record| record.spec.id.stage.0 == 0)
            .all(|record| record.state == InstanceState::Drained);
        if !sources_drained {
            return Ok(());
        }
        for stage in 1..self.workflow.stages().len() {
            if self.drain_requested[stage] {
                continue;
            }
            let expected_ends = self
                .instances
                .values()
                .filter(|record| {
                    record.spec.id.stage.0 == stage - 1
                        && !matches!(record.state, InstanceState::Failed { .. })
                })
                .count() as u32;
            let receivers: Vec<(String, String)> = self
                .instances
                .values()
                .filter(|record| record.spec.id.stage.0 == stage && record.state.is_live())
                .map(|record| (record.name.clone(), control_url(record)))
                .collect();
            for (name, url) in receivers {
                self.client.drain(&name, &url, &Drain { expected_ends }).await?;
            }
            self.drain_requested[stage] = true;
            let stage_name = self.workflow.stage(StageId(stage)).name.clone();
            info!(stage = %stage_name, expected_ends, "requested drain");
            self.events.push(Event::DrainRequested { stage: stage_name });
        }
        Ok(())
    }
}

fn control_url(record: &InstanceRecord) -> String {
    record.endpoints.as_ref().map(|endpoints| endpoints.control_url.clone()).unwrap_or_default()
}

/// Splits `total` events over `replicas` source replicas into contiguous sequence ranges;
/// returns `(first sequence number, count)` of replica `index`.
pub fn split_events(total: u64, replicas: u64, index: u64) -> (u64, u64) {
    let replicas = replicas.max(1);
    let base = total / replicas;
    let extra = total % replicas;
    let count = base + u64::from(index < extra);
    let start = index * base + index.min(extra);
    (start, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_without_gaps_or_overlap() {
        for (total, replicas) in [(10, 3), (0, 2), (7, 7), (5, 8), (1_000_000, 1)] {
            let mut next = 0;
            for index in 0..replicas {
                let (start, count) = split_events(total, replicas, index);
                assert_eq!(start, next, "replica {index} of {replicas} for {total} events");
                next = start + count;
            }
            assert_eq!(next, total, "{total} events over {replicas} replicas");
        }
    }
}
