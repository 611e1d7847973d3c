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

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio::time::error::Elapsed;
use tracing::{debug, info, warn};

use crate::backend::{Backend, BackendError, Fault, InstanceEndpoints, InstanceSpec};
use crate::client::{ControlClient, ControlError, InstanceControl};
use crate::control::{Drain, Phase, Role, Stats, Target, Targets};
use crate::detector::FailureDetector;
use crate::model::{ClusterId, InstanceId, InstanceState, NodeId, StageId, Topology, Workflow};
use crate::placement::{
    Capacity, Placement, PlacementError, choose_cluster, place_replicas, place_workflow,
};

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

/// Timeouts, intervals and policies of the orchestrator.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long an instance may take from start to a healthy control endpoint.
    pub start_timeout: Duration,
    /// Interval of heartbeats: every poll of an instance that gets a reply is one.
    pub heartbeat: Duration,
    /// Heartbeat intervals without a reply within which a failure is declared.
    pub missed_heartbeats: u32,
    /// How often the caller runs [`Orchestrator::poll`]. A poll waits at most this long for
    /// replies, and silence is checked once per poll, so the detector suspects an instance
    /// one poll period before the `missed_heartbeats` intervals are over.
    pub poll_period: Duration,
    /// Restart failed replicas; when false a failure only gets reported.
    pub heal: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            start_timeout: Duration::from_secs(20),
            heartbeat: Duration::from_millis(200),
            missed_heartbeats: 2,
            poll_period: Duration::from_millis(100),
            heal: true,
        }
    }
}

/// Something the orchestrator did or saw, for progress display and logs.
#[derive(Debug, Clone)]
pub enum Event {
    InstanceStarted {
        name: String,
        node: String,
    },
    InstanceReady {
        name: String,
    },
    StageLinked {
        stage: String,
        targets: usize,
    },
    DrainRequested {
        stage: String,
    },
    InstanceFailed {
        id: InstanceId,
        name: String,
        reason: String,
        at: Instant,
    },
    /// A failed replica runs again, possibly on another node or cluster.
    InstanceReplaced {
        failed: String,
        replacement: String,
        node: String,
        at: Instant,
    },
    /// The global level moved a stage's replica to another cluster.
    ReplicaMoved {
        stage: String,
        from: String,
        to: String,
    },
    Rescaled {
        stage: String,
        from: u32,
        to: u32,
        at: Instant,
    },
    /// A failed replica could not be restarted anywhere.
    HealFailed {
        name: String,
        reason: String,
    },
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
    #[error("cannot rescale stage `{stage}`: {reason}")]
    Rescale { stage: String, reason: String },
}

/// An instance as the orchestrator tracks it.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub spec: InstanceSpec,
    pub name: String,
    pub endpoints: Option<InstanceEndpoints>,
    pub state: InstanceState,
    /// Set once a replacement runs, so that a failure is healed once.
    pub replaced: bool,
    /// Set when the instance could not be given its new targets because it was silent or
    /// unreachable; later polls send them again until it takes them or is declared failed.
    pub stale_targets: bool,
    /// Receivers whose end frame from this sender is settled. Either the sender had them as
    /// targets when it drained and sent them one, or it had drained before they were added
    /// and never will, which they count in `missing_ends`.
    pub settled_targets: BTreeSet<InstanceId>,
    /// Upstream replicas that had drained before this receiver was added to their targets
    /// and so will never send it an end frame.
    pub missing_ends: u32,
}

/// Counters of every live instance at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub stats: BTreeMap<InstanceId, Stats>,
    /// True once every instance of every stage has drained.
    pub drained: bool,
}

/// A poll's stats request: the instance, its reply or timeout, and when it ended.
type PollReply = (InstanceId, Result<Result<Stats, ControlError>, Elapsed>, Instant);

pub struct Orchestrator {
    topology: Topology,
    workflow: Workflow,
    backend: Box<dyn Backend>,
    control: Arc<dyn InstanceControl>,
    detector: FailureDetector,
    /// Stats requests of [`Orchestrator::poll`] still in flight; each yields its reply and
    /// the instant it arrived.
    polls: JoinSet<PollReply>,
    /// Instances with a request in `polls`, which the next poll does not ask again.
    polling: BTreeSet<InstanceId>,
    dead_nodes: BTreeSet<NodeId>,
    options: Options,
    params: StreamParams,
    capacity: Capacity,
    placement: Option<Placement>,
    instances: BTreeMap<InstanceId, InstanceRecord>,
    /// Stages whose replicas have been asked to drain.
    drain_requested: Vec<bool>,
    sources_started: bool,
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
        let control = backend.control().unwrap_or_else(|| Arc::new(ControlClient::new(token)));
        Orchestrator {
            topology,
            workflow,
            backend,
            control,
            detector: FailureDetector::new(
                options.heartbeat,
                options.missed_heartbeats,
                options.poll_period,
            ),
            polls: JoinSet::new(),
            polling: BTreeSet::new(),
            dead_nodes: BTreeSet::new(),
            options,
            params,
            capacity,
            placement: None,
            instances: BTreeMap::new(),
            drain_requested: vec![false; stage_count],
            sources_started: false,
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

    pub fn control(&self) -> &Arc<dyn InstanceControl> {
        &self.control
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Replicas of `stage` that would still fit on its cluster.
    pub fn free_slots(&self, stage: StageId) -> u32 {
        let cores = self.workflow.stage(stage).cores.get();
        self.capacity.slots(&self.topology, self.cluster_of(stage), cores)
    }

    /// Live replicas of a stage (starting, running or draining).
    pub fn live_replicas(&self, stage: StageId) -> u32 {
        self.instances
            .values()
            .filter(|record| record.spec.id.stage == stage && record.state.is_live())
            .count() as u32
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
        let stages: Vec<StageId> = self.workflow.stages().iter().rev().map(|s| s.id).collect();
        let mut specs = Vec::new();
        for stage in stages {
            for (replica, node) in placement.nodes[stage.0].iter().enumerate() {
                let id = InstanceId::new(stage, replica as u32);
                let range = if self.workflow.stage(stage).role == Role::Source {
                    split_events(self.params.events, source_replicas, replica as u64)
                } else {
                    (0, 0)
                };
                specs.push(self.spec_for(id, *node, range));
            }
        }
        let started: Vec<InstanceId> = specs.iter().map(|spec| spec.id).collect();
        self.start_all(specs).await?;
        self.wait_ready(&started).await?;
        for stage in 0..self.workflow.stages().len().saturating_sub(1) {
            self.link_stage(StageId(stage)).await?;
        }
        Ok(())
    }

    /// Tells every source replica to start emitting.
    pub async fn start_stream(&mut self) -> Result<(), OrchestratorError> {
        for record in self.instances.values().filter(|record| record.spec.role == Role::Source) {
            let url = control_url(record);
            self.control.start(&record.name, &url).await?;
        }
        self.sources_started = true;
        Ok(())
    }

    fn spec_for(
        &self,
        id: InstanceId,
        node: NodeId,
        (seq_start, events): (u64, u64),
    ) -> InstanceSpec {
        let stage = self.workflow.stage(id.stage);
        let node_info = self.topology.node(node);
        let source_replicas = u64::from(self.workflow.source().replicas.get());
        InstanceSpec {
            id,
            role: stage.role,
            stage: stage.name.clone(),
            engine_class: stage.class.clone(),
            container: stage.container.clone(),
            lang: stage.lang,
            node,
            site_name: self.topology.site(node_info.site).name.clone(),
            cluster_name: self.topology.cluster(node_info.cluster).name.clone(),
            node_name: node_info.name.clone(),
            seq_start,
            events,
            event_size: self.params.event_size,
            rate: self.params.rate / source_replicas as f64,
            cost: stage.cost,
            config: stage.config.clone(),
        }
    }

    /// Fetches the counters of every live instance (each reply is a heartbeat), declares
    /// instances failed that ended or stayed silent too long, restarts them when healing is
    /// on, and asks the stages to drain once the sources have drained.
    pub async fn poll(&mut self) -> Result<Snapshot, OrchestratorError> {
        // A reply may come later than this poll waits: its request stays in flight, is not
        // sent again meanwhile, and its reply counts as a heartbeat when a later poll
        // collects it. So a frozen instance delays no poll by more than `wait`, and a slow
        // one still gets its heartbeat.
        let wait = self.options.poll_period.min(self.options.heartbeat);
        let reply_timeout = self.options.heartbeat * self.options.missed_heartbeats.max(1);
        for (id, record) in &self.instances {
            if !record.state.is_live() || self.polling.contains(id) {
                continue;
            }
            let control = self.control.clone();
            let (id, name, url) = (*id, record.name.clone(), control_url(record));
            self.polling.insert(id);
            self.polls.spawn(async move {
                let reply =
                    tokio::time::timeout(reply_timeout, control.stats(&name, &url, false)).await;
                (id, reply, Instant::now())
            });
        }
        let at = Instant::now();
        let deadline = at + wait;
        let mut stats = BTreeMap::new();
        loop {
            let joined = match tokio::time::timeout_at(deadline, self.polls.join_next()).await {
                Ok(Some(joined)) => joined,
                Ok(None) | Err(_) => break,
            };
            let Ok((id, result, arrived)) = joined else { continue };
            self.polling.remove(&id);
            let Some(record) = self.instances.get_mut(&id) else { continue };
            if !record.state.is_live() {
                // Declared failed or stopped while the request was in flight.
                continue;
            }
            match result {
                Ok(Ok(reply)) => {
                    self.detector.heartbeat(id, arrived);
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
                Ok(Err(error)) => debug!(instance = %record.name, %error, "poll failed"),
                Err(_) => debug!(instance = %record.name, ?reply_timeout, "poll timed out"),
            }
        }
        self.detect_failures().await;
        if self.options.heal {
            self.heal().await;
        }
        self.resend_stale_targets().await?;
        self.advance_drain().await?;
        let drained = self.instances.values().all(|record| {
            record.state == InstanceState::Drained
                || (!counts_for_drain(record) && !record.state.is_live())
        });
        Ok(Snapshot { at, stats, drained })
    }

    /// Injects a fault through the backend and stops watching what it kills on purpose,
    /// so that detection is left to the heartbeats.
    pub async fn inject(&mut self, fault: Fault) -> Result<(), OrchestratorError> {
        info!(fault = fault.kind(), "injecting fault");
        self.backend.inject(fault).await?;
        Ok(())
    }

    /// Sets a stage to `to` replicas in one step: new replicas are placed on the stage's
    /// cluster, started and linked; removed ones are unlinked from upstream first, so that
    /// upstream replays what they had not acknowledged, then stopped.
    pub async fn rescale(&mut self, stage: StageId, to: u32) -> Result<u32, OrchestratorError> {
        let name = self.workflow.stage(stage).name.clone();
        let rescale_error =
            |reason: String| OrchestratorError::Rescale { stage: name.clone(), reason };
        let role = self.workflow.stage(stage).role;
        if role != Role::Processor {
            return Err(rescale_error(format!(
                "it is the {role}; only processing stages can be rescaled"
            )));
        }
        let to_replicas = NonZeroU32::new(to).ok_or_else(|| rescale_error("0 replicas".into()))?;
        let from = self.live_replicas(stage);
        // Once the stages drain, a new replica would get no end frame and a removed one
        // could hold the last events: the stream has ended, so the stage keeps its size.
        if self.drain_requested.iter().any(|requested| *requested) {
            warn!(stage = %name, from, to, "rescale skipped: the stream has ended and the stages drain");
            return Ok(from);
        }
        self.workflow.set_replicas(stage, to_replicas).map_err(rescale_error)?;
        let cores = self.workflow.stage(stage).cores.get();
        if to > from {
            let cluster = self.cluster_of(stage);
            let mut nodes = Vec::new();
            for _ in from..to {
                match place_replicas(&self.topology, cluster, cores, 1, &mut self.capacity) {
                    Some(node) => nodes.extend(node),
                    None => break,
                }
            }
            if nodes.is_empty() {
                return Err(rescale_error(format!(
                    "cluster {} has no free cores for another replica",
                    self.topology.cluster_path(cluster)
                )));
            }
            let next_index = self
                .instances
                .keys()
                .filter(|id| id.stage == stage)
                .map(|id| id.replica + 1)
                .max()
                .unwrap_or(0);
            let specs: Vec<InstanceSpec> = nodes
                .into_iter()
                .enumerate()
                .map(|(offset, node)| {
                    let id = InstanceId::new(stage, next_index + offset as u32);
                    self.spec_for(id, node, (0, 0))
                })
                .collect();
            let started: Vec<InstanceId> = specs.iter().map(|spec| spec.id).collect();
            self.start_all(specs).await?;
            self.wait_ready(&started).await?;
            for id in &started {
                self.link_instance(*id).await?;
            }
        } else if to < from {
            let mut live: Vec<InstanceId> = self
                .instances
                .iter()
                .filter(|(id, record)| id.stage == stage && record.state.is_live())
                .map(|(id, _)| *id)
                .collect();
            live.sort_by_key(|id| std::cmp::Reverse(id.replica));
            let removed: Vec<InstanceId> = live.into_iter().take((from - to) as usize).collect();
            for id in &removed {
                let record = self.instances.get_mut(id).expect("listed above");
                let _ = record.state.advance(InstanceState::Stopped);
                self.detector.forget(*id);
            }
            if stage.0 > 0 {
                self.link_stage(StageId(stage.0 - 1)).await?;
            }
            for id in removed {
                self.stop_one(id).await;
            }
        }
        let now = self.live_replicas(stage);
        info!(stage = %name, from, to = now, "rescaled stage");
        self.events.push(Event::Rescaled { stage: name, from, to: now, at: Instant::now() });
        Ok(now)
    }

    /// Final counters of every instance, with a sink's received ranges and full histograms.
    pub async fn final_stats(&self) -> BTreeMap<InstanceId, Result<Stats, ControlError>> {
        let mut requests = JoinSet::new();
        for (id, record) in &self.instances {
            if record.endpoints.is_none()
                || !(record.state.is_live() || record.state == InstanceState::Drained)
            {
                continue;
            }
            let control = self.control.clone();
            let (id, name, url) = (*id, record.name.clone(), control_url(record));
            requests.spawn(async move { (id, control.stats(&name, &url, true).await) });
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
            match self.control.report(&record.name, &control_url(record)).await {
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
                if let Err(error) = self.control.stop(&record.name, &url).await {
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

    /// Starts every spec at once, so that a scheduler (Slurm) starts them in one cycle, and
    /// records each instance that started, so that shutdown stops it. Returns the first error.
    async fn start_all(&mut self, specs: Vec<InstanceSpec>) -> Result<(), OrchestratorError> {
        let results = self.backend.start_instances(&specs).await;
        let mut first_error = None;
        for (spec, result) in specs.into_iter().zip(results) {
            match result {
                Ok(endpoints) => self.record_started(spec, endpoints),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), |error| Err(error.into()))
    }

    fn record_started(&mut self, spec: InstanceSpec, endpoints: InstanceEndpoints) {
        let name = spec.name();
        let mut state = InstanceState::Pending;
        state.advance(InstanceState::Starting).expect("pending to starting");
        info!(instance = %name, node = %spec.node_name, handle = %endpoints.handle, "started instance");
        self.events
            .push(Event::InstanceStarted { name: name.clone(), node: spec.node_name.clone() });
        self.instances.insert(
            spec.id,
            InstanceRecord {
                spec,
                name,
                endpoints: Some(endpoints),
                state,
                replaced: false,
                stale_targets: false,
                settled_targets: BTreeSet::new(),
                missing_ends: 0,
            },
        );
    }

    async fn wait_ready(&mut self, ids: &[InstanceId]) -> Result<(), OrchestratorError> {
        let deadline = Instant::now() + self.options.start_timeout;
        for id in ids.iter().copied() {
            let record = &self.instances[&id];
            let (name, url) = (record.name.clone(), control_url(record));
            let mut last_error;
            loop {
                if let Some(reason) = self.backend.exited(id).await {
                    return Err(OrchestratorError::ExitedWhileStarting { instance: name, reason });
                }
                match self.control.health(&name, &url).await {
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
            self.detector.watch(id, Instant::now());
            self.events.push(Event::InstanceReady { name });
        }
        Ok(())
    }

    /// Lists the live replicas of `stage`.
    fn live_replicas_of(&self, stage: StageId) -> Vec<InstanceId> {
        self.instances
            .iter()
            .filter(|(id, record)| id.stage == stage && record.state.is_live())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Sends every live replica of `stage` the live replicas of the next stage as targets.
    async fn link_stage(&mut self, stage: StageId) -> Result<(), OrchestratorError> {
        let senders = self.live_replicas_of(stage);
        let mut count = 0;
        for id in senders {
            count = self.send_targets(id).await?;
        }
        let stage_name = self.workflow.stage(stage).name.clone();
        self.events.push(Event::StageLinked { stage: stage_name, targets: count });
        Ok(())
    }

    /// Like [`Orchestrator::link_stage`] while the workflow runs: a sender that is silent,
    /// or cannot be reached, keeps its targets marked stale instead of holding up a repair
    /// (a frozen instance would take the whole request timeout to reply).
    async fn relink_stage(&mut self, stage: StageId) -> Result<(), OrchestratorError> {
        let senders = self.live_replicas_of(stage);
        for id in senders {
            self.instances.get_mut(&id).expect("listed above").stale_targets = true;
        }
        let drained: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|(id, record)| id.stage == stage && record.state == InstanceState::Drained)
            .map(|(id, _)| *id)
            .collect();
        let receivers = self.live_receivers_of(stage);
        for id in drained {
            self.settle_missing_ends(id, receivers.clone()).await?;
        }
        self.resend_stale_targets().await
    }

    /// Lists the live replicas of the stage after `stage`.
    fn live_receivers_of(&self, stage: StageId) -> BTreeSet<InstanceId> {
        self.live_replicas_of(StageId(stage.0 + 1)).into_iter().collect()
    }

    /// Sends their targets to the live instances marked stale that replied to a recent poll.
    async fn resend_stale_targets(&mut self) -> Result<(), OrchestratorError> {
        let now = Instant::now();
        let stale: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|(_, record)| record.stale_targets && record.state.is_live())
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if self
                .detector
                .silent_for(id, now)
                .is_some_and(|silent| silent > self.options.heartbeat)
            {
                continue;
            }
            match self.send_targets(id).await {
                Ok(_) => self.instances.get_mut(&id).expect("listed above").stale_targets = false,
                Err(OrchestratorError::Control(error)) if error.unreachable => {
                    debug!(instance = %error.instance, reason = %error.reason, "targets not taken; retried at the next poll");
                }
                // An instance that has drained sends nothing more and keeps its targets;
                // there is nothing left to redirect.
                Err(OrchestratorError::Control(error)) if error.is_conflict() => {
                    debug!(instance = %error.instance, reason = %error.reason, "drained; targets left as they are");
                    self.instances.get_mut(&id).expect("listed above").stale_targets = false;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Sends one instance the live replicas of the next stage; returns how many.
    async fn send_targets(&mut self, id: InstanceId) -> Result<usize, OrchestratorError> {
        let sender = &self.instances[&id];
        let from = self.topology.node(sender.spec.node).site;
        let receivers = self.live_receivers_of(id.stage);
        let targets: Vec<Target> = receivers
            .iter()
            .map(|receiver| &self.instances[receiver])
            .map(|record| {
                let link = self.topology.link(from, self.topology.node(record.spec.node).site);
                Target {
                    addr: record.endpoints.as_ref().expect("started").data_addr.clone(),
                    latency_us: link.latency.as_micros() as u64,
                    bandwidth_bps: link.bandwidth_bps,
                }
            })
            .collect();
        let count = targets.len();
        let (name, url) = (sender.name.clone(), control_url(sender));
        match self.control.set_targets(&name, &url, &Targets { targets }).await {
            Ok(()) => {
                self.instances.get_mut(&id).expect("exists").settled_targets = receivers;
                Ok(count)
            }
            Err(error) if error.is_conflict() => {
                self.settle_missing_ends(id, receivers).await?;
                Err(error.into())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Accounts for a sender that has drained and so rejects new targets. A receiver that it
    /// did not have as a target gets no end frame from it and expects one fewer.
    async fn settle_missing_ends(
        &mut self,
        sender: InstanceId,
        receivers: BTreeSet<InstanceId>,
    ) -> Result<(), OrchestratorError> {
        let record = self.instances.get_mut(&sender).expect("exists");
        let new: Vec<InstanceId> = receivers.difference(&record.settled_targets).copied().collect();
        record.settled_targets.extend(new.iter().copied());
        for receiver in new {
            self.instances.get_mut(&receiver).expect("exists").missing_ends += 1;
            self.request_drain(receiver).await?;
        }
        Ok(())
    }

    /// Asks one live receiver to finish after the end frames of the upstream replicas that
    /// will send it one. Does nothing before the receiver's stage drains.
    async fn request_drain(&self, id: InstanceId) -> Result<(), OrchestratorError> {
        let record = &self.instances[&id];
        let stage_drains = self.drain_requested.get(id.stage.0).copied().unwrap_or(false);
        if !stage_drains || !record.state.is_live() {
            return Ok(());
        }
        let expected_ends = self.upstream_count(id.stage).saturating_sub(record.missing_ends);
        debug!(instance = %record.name, expected_ends, "requesting drain");
        self.control.drain(&record.name, &control_url(record), &Drain { expected_ends }).await?;
        Ok(())
    }

    async fn detect_failures(&mut self) {
        let now = Instant::now();
        let mut failures: BTreeMap<InstanceId, String> = self
            .detector
            .suspects(now)
            .into_iter()
            .map(|(id, silent)| (id, format!("no heartbeat for {} ms", silent.as_millis())))
            .collect();
        let live: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|(_, record)| record.state.is_live())
            .map(|(id, _)| *id)
            .collect();
        for id in live {
            if let Some(reason) = self.backend.exited(id).await {
                failures.insert(id, reason);
            }
        }
        for (id, reason) in failures {
            let record = self.instances.get_mut(&id).expect("watched instances exist");
            if !record.state.is_live() {
                self.detector.forget(id);
                continue;
            }
            warn!(instance = %record.name, %reason, "instance failed");
            self.events.push(Event::InstanceFailed {
                id,
                name: record.name.clone(),
                reason: reason.clone(),
                at: now,
            });
            let _ = record.state.advance(InstanceState::Failed { reason });
            self.detector.forget(id);
        }
    }

    /// Restarts every failed replica that is not yet replaced: on a healthy node of its
    /// cluster when one has room (the cluster level), else on another cluster chosen by the
    /// global level, ignoring the stage's site so that the workflow keeps running. Replicas
    /// moved away stay where they were moved when their cluster comes back.
    async fn heal(&mut self) {
        let failed: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|(_, record)| {
                matches!(record.state, InstanceState::Failed { .. }) && !record.replaced
            })
            .map(|(id, _)| *id)
            .collect();
        // Every replacement is placed first and then all are started together, so that a
        // backend with a scheduler (Slurm) starts them in one cycle rather than one each.
        let mut planned = Vec::new();
        for id in failed {
            match self.plan_replacement(id).await {
                Ok(spec) => planned.push((id, spec)),
                Err(error) => self.heal_failed(id, &error),
            }
        }
        if planned.is_empty() {
            return;
        }
        let specs: Vec<InstanceSpec> = planned.iter().map(|(_, spec)| spec.clone()).collect();
        let results = self.backend.start_instances(&specs).await;
        let mut started = Vec::new();
        for ((failed, spec), result) in planned.into_iter().zip(results) {
            match result {
                Ok(endpoints) => {
                    let id = spec.id;
                    self.record_started(spec, endpoints);
                    started.push((failed, id));
                }
                Err(error) => self.heal_failed(failed, &error.into()),
            }
        }
        for (failed, id) in started {
            if let Err(error) = self.finish_replacement(failed, id).await {
                self.heal_failed(failed, &error);
            }
        }
    }

    fn heal_failed(&mut self, id: InstanceId, error: &OrchestratorError) {
        let name = self.instances[&id].name.clone();
        warn!(instance = %name, %error, "could not restart failed replica");
        self.events.push(Event::HealFailed { name, reason: error.to_string() });
        // Count it as handled so that the next poll does not retry forever.
        self.instances.get_mut(&id).expect("failed instances exist").replaced = true;
    }

    /// Stops a failed replica and chooses a node for its replacement: one of the same
    /// cluster when one has room (the cluster level), else one of another cluster chosen
    /// by the global level. Returns the replacement's spec.
    async fn plan_replacement(
        &mut self,
        failed: InstanceId,
    ) -> Result<InstanceSpec, OrchestratorError> {
        let old = self.instances[&failed].clone();
        let old_node = old.spec.node;
        let cores = self.workflow.stage(failed.stage).cores.get();
        // Free what the failed replica used; a dead node gives nothing back.
        if self.backend.node_alive(old_node).await {
            self.capacity.release(old_node, cores, &self.topology);
        } else if self.dead_nodes.insert(old_node) {
            warn!(node = %self.topology.node(old_node).name, "node is down");
            self.capacity.remove_node(old_node);
        }
        self.stop_one(failed).await;
        let cluster = self.topology.node(old_node).cluster;
        // A lost or cut-off cluster takes its other nodes down too: check them all before
        // the cluster level picks one.
        for node in self.topology.cluster(cluster).nodes.clone() {
            if !self.dead_nodes.contains(&node) && !self.backend.node_alive(node).await {
                warn!(node = %self.topology.node(node).name, "node is down");
                self.dead_nodes.insert(node);
                self.capacity.remove_node(node);
            }
        }
        let node = match place_replicas(&self.topology, cluster, cores, 1, &mut self.capacity) {
            Some(nodes) => nodes[0],
            None => {
                let excluded: Vec<ClusterId> = vec![cluster];
                let mut relaxed = self.workflow.clone();
                relaxed.clear_site(failed.stage);
                let target = choose_cluster_for_one(
                    &self.topology,
                    &relaxed,
                    failed.stage,
                    &self.capacity,
                    &excluded,
                )?;
                let nodes = place_replicas(&self.topology, target, cores, 1, &mut self.capacity)
                    .expect("choose_cluster checked the room");
                let stage = self.workflow.stage(failed.stage).name.clone();
                info!(%stage, from = %self.topology.cluster_path(cluster), to = %self.topology.cluster_path(target), "moving replica to another cluster");
                self.events.push(Event::ReplicaMoved {
                    stage,
                    from: self.topology.cluster_path(cluster),
                    to: self.topology.cluster_path(target),
                });
                nodes[0]
            }
        };
        let id = InstanceId {
            stage: failed.stage,
            replica: failed.replica,
            incarnation: self
                .instances
                .keys()
                .filter(|other| other.stage == failed.stage && other.replica == failed.replica)
                .map(|other| other.incarnation + 1)
                .max()
                .unwrap_or(1),
        };
        let range = (old.spec.seq_start, old.spec.events);
        Ok(self.spec_for(id, node, range))
    }

    /// Waits for a started replacement, links it in, and starts it emitting if it is a
    /// source.
    async fn finish_replacement(
        &mut self,
        failed: InstanceId,
        id: InstanceId,
    ) -> Result<(), OrchestratorError> {
        let old_name = self.instances[&failed].name.clone();
        let old_role = self.instances[&failed].spec.role;
        let node = self.instances[&id].spec.node;
        self.wait_ready(&[id]).await?;
        self.link_instance(id).await?;
        if old_role == Role::Source && self.sources_started {
            let record = &self.instances[&id];
            self.control.start(&record.name, &control_url(record)).await?;
        }
        self.instances.get_mut(&failed).expect("exists").replaced = true;
        let replacement = self.instances[&id].name.clone();
        info!(failed = %old_name, %replacement, node = %self.topology.node(node).name, "replaced failed replica");
        self.events.push(Event::InstanceReplaced {
            failed: old_name,
            replacement,
            node: self.topology.node(node).name.clone(),
            at: Instant::now(),
        });
        Ok(())
    }

    /// Gives a new instance its targets, drains it when its stage already drains, and
    /// relinks the stage before it so that upstream replicas send to it.
    async fn link_instance(&mut self, id: InstanceId) -> Result<(), OrchestratorError> {
        if id.stage.0 + 1 < self.workflow.stages().len() {
            self.send_targets(id).await?;
        }
        if id.stage.0 > 0 {
            self.relink_stage(StageId(id.stage.0 - 1)).await?;
        }
        self.request_drain(id).await
    }

    fn upstream_count(&self, stage: StageId) -> u32 {
        self.instances
            .values()
            .filter(|record| record.spec.id.stage.0 + 1 == stage.0 && !record.replaced)
            .filter(|record| !matches!(record.state, InstanceState::Stopped))
            .map(|record| (record.spec.id.stage, record.spec.id.replica))
            .collect::<BTreeSet<_>>()
            .len() as u32
    }

    fn cluster_of(&self, stage: StageId) -> ClusterId {
        self.instances
            .values()
            .find(|record| record.spec.id.stage == stage && record.state.is_live())
            .map(|record| self.topology.node(record.spec.node).cluster)
            .or_else(|| self.placement.as_ref().map(|placement| placement.cluster_of(stage)))
            .unwrap_or(ClusterId(0))
    }

    async fn stop_one(&mut self, id: InstanceId) {
        let record = self.instances.get_mut(&id).expect("known instance");
        if let Some(endpoints) = &record.endpoints {
            let url = endpoints.control_url.clone();
            let name = record.name.clone();
            let control = self.control.clone();
            // A frozen or cut-off instance never replies; do not wait for it.
            let _ = tokio::time::timeout(self.options.heartbeat, control.stop(&name, &url)).await;
        }
        if let Err(error) = self.backend.stop_instance(id).await {
            warn!(instance = %id, %error, "backend could not stop instance");
        }
        let record = self.instances.get_mut(&id).expect("known instance");
        if record.state.is_live() {
            let _ = record.state.advance(InstanceState::Stopped);
        }
        self.detector.forget(id);
    }

    /// Once every source replica has drained, asks every other stage to drain. A stage
    /// finishes only after it has received one end-of-stream frame per upstream replica and
    /// emptied its queue, so all stages can be asked at once and still finish in order.
    async fn advance_drain(&mut self) -> Result<(), OrchestratorError> {
        let sources_drained = self
            .instances
            .values()
            .filter(|record| record.spec.id.stage.0 == 0 && counts_for_drain(record))
            .all(|record| record.state == InstanceState::Drained);
        if !sources_drained {
            return Ok(());
        }
        for stage in 1..self.workflow.stages().len() {
            if self.drain_requested[stage] {
                continue;
            }
            self.drain_requested[stage] = true;
            for id in self.live_replicas_of(StageId(stage)) {
                self.request_drain(id).await?;
            }
            let stage_name = self.workflow.stage(StageId(stage)).name.clone();
            let upstream_replicas = self.upstream_count(StageId(stage));
            info!(stage = %stage_name, upstream_replicas, "requested drain");
            self.events.push(Event::DrainRequested { stage: stage_name });
        }
        Ok(())
    }
}

/// Whether an instance still has to drain: replaced and stopped ones never will.
pub fn counts_for_drain(record: &InstanceRecord) -> bool {
    !record.replaced && record.state != InstanceState::Stopped
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

/// Global level for a single replica that lost its cluster: any other cluster with room,
/// chosen as for a whole stage.
fn choose_cluster_for_one(
    topology: &Topology,
    workflow: &Workflow,
    stage: StageId,
    capacity: &Capacity,
    excluded: &[ClusterId],
) -> Result<ClusterId, PlacementError> {
    let mut single = workflow.clone();
    single.set_replicas_unchecked(stage, NonZeroU32::MIN);
    choose_cluster(topology, &single, stage, None, capacity, excluded)
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
