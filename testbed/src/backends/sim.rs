//! The `sim` backend: a deterministic discrete-time simulation of the mock instances, driven
//! by the same orchestrator code as the other backends.
//!
//! The run executes on a single-threaded tokio runtime whose clock is paused (see
//! [`runtime`]): tokio advances virtual time whenever every task waits, so a scenario of
//! minutes runs in much less wall time, and the same seed gives the same result. The
//! orchestrator polls, detects failures, heals and rescales exactly as it does against real
//! processes; only the instances are replaced by [`World`], stepped every [`STEP`] of virtual
//! time.
//!
//! Events move as ranges of sequence numbers, not counts, so the sink's exactly-once check is
//! the real one: a range lost in the model shows up as lost events. When an instance is lost,
//! the ranges it held (its queue and what was in flight to it) go back to the upstream
//! replicas that sent them and are sent again to their current targets; these count as
//! replayed. A frozen instance neither steps nor answers control requests.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use orchestrator::backend::{
    Backend, BackendError, Fault, InstanceEndpoints, InstanceSpec, SinkRecord,
};
use orchestrator::client::{ControlError, InstanceControl};
use orchestrator::control::{Drain, Health, LatencySummary, Phase, Role, Stats, Targets};
use orchestrator::model::{ClusterId, InstanceId, NodeId, StageId, Topology};
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// Virtual time between two steps of the model.
pub const STEP: Duration = Duration::from_millis(5);

/// A current-thread runtime with a paused clock, which the sim backend needs.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build()
}

/// Half-open range of sequence numbers `[start, end)`.
type SeqRange = (u64, u64);

struct SimInstance {
    spec: InstanceSpec,
    /// Events per second one replica processes (processors), or emits (sources).
    speed: f64,
    phase: Phase,
    alive: bool,
    frozen: bool,
    started: bool,
    targets: Vec<(InstanceId, Duration)>,
    next_target: usize,
    /// Ranges waiting to be processed, with the upstream replica that sent each.
    queue: VecDeque<(SeqRange, InstanceId)>,
    /// Ranges sent to each target and not yet processed there, for replay on loss.
    unacked: BTreeMap<InstanceId, Vec<SeqRange>>,
    /// Ranges a processor sent on, with the upstream replica each came from.
    origins: Vec<(SeqRange, InstanceId)>,
    /// Ranges to replay once the instance has targets again.
    pending_replay: Vec<SeqRange>,
    /// Source: next sequence number to emit and the end of its range.
    next_seq: u64,
    end_seq: u64,
    /// Fractional events carried to the next step.
    credit: f64,
    expected_ends: Option<u32>,
    /// Upstream replicas, as stage and replica index, whose end arrived; a replacement's
    /// end does not count again, as on a real receiver.
    ends: BTreeSet<(StageId, u32)>,
    sent_end: bool,
    events_in: u64,
    events_out: u64,
    exec_time_us: f64,
    replayed: u64,
    duplicates: u64,
    received: Vec<SeqRange>,
}

/// Ranges in flight on a link: delivered to `to` at `at`.
struct InFlight {
    at: Instant,
    from: InstanceId,
    to: InstanceId,
    range: Option<SeqRange>,
}

/// Every simulated instance and the links between them.
pub struct World {
    instances: BTreeMap<InstanceId, SimInstance>,
    /// Instance of each control endpoint and data address, for control requests.
    by_endpoint: HashMap<String, InstanceId>,
    by_addr: HashMap<String, InstanceId>,
    in_flight: VecDeque<InFlight>,
    rng: rand::rngs::StdRng,
    nodes_of_cluster: BTreeMap<ClusterId, Vec<NodeId>>,
    down_nodes: BTreeSet<NodeId>,
    frozen_nodes: BTreeSet<NodeId>,
    /// Model steps taken, for the benchmark's events per second.
    pub steps: u64,
}

impl World {
    fn new(seed: u64) -> World {
        World {
            instances: BTreeMap::new(),
            by_endpoint: HashMap::new(),
            by_addr: HashMap::new(),
            in_flight: VecDeque::new(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            nodes_of_cluster: BTreeMap::new(),
            down_nodes: BTreeSet::new(),
            frozen_nodes: BTreeSet::new(),
            steps: 0,
        }
    }

    /// Advances the model by one step of `STEP` at virtual time `now`.
    fn step(&mut self, now: Instant) {
        self.steps += 1;
        self.deliver(now);
        let ids: Vec<InstanceId> = self.instances.keys().copied().collect();
        for id in ids {
            self.step_instance(id, now);
        }
    }

    fn deliver(&mut self, now: Instant) {
        let mut pending = VecDeque::new();
        while let Some(flight) = self.in_flight.pop_front() {
            if flight.at > now {
                pending.push_back(flight);
                continue;
            }
            let Some(target) = self.instances.get_mut(&flight.to) else { continue };
            if !target.alive {
                // The sender keeps it as unacknowledged and replays it when relinked.
                continue;
            }
            match flight.range {
                Some(range) => {
                    target.events_in += range.1 - range.0;
                    if target.spec.role == Role::Sink {
                        record_received(target, range);
                        self.ack_chain(flight.from, flight.to, range);
                    } else {
                        target.queue.push_back((range, flight.from));
                    }
                }
                None => {
                    target.ends.insert((flight.from.stage, flight.from.replica));
                }
            }
        }
        self.in_flight = pending;
    }

    fn step_instance(&mut self, id: InstanceId, now: Instant) {
        let step_s = STEP.as_secs_f64();
        let (role, frozen, alive) = {
            let instance = &self.instances[&id];
            (instance.spec.role, instance.frozen, instance.alive)
        };
        if frozen || !alive {
            return;
        }
        match role {
            Role::Source => {
                let instance = self.instances.get_mut(&id).expect("listed");
                if !instance.started || instance.targets.is_empty() {
                    return;
                }
                instance.credit += instance.speed * step_s;
                let count =
                    (instance.credit.floor() as u64).min(instance.end_seq - instance.next_seq);
                instance.credit -= count as f64;
                if count > 0 {
                    let range = (instance.next_seq, instance.next_seq + count);
                    instance.next_seq += count;
                    self.send(id, range, now);
                }
                let instance = self.instances.get_mut(&id).expect("listed");
                if instance.next_seq == instance.end_seq {
                    self.finish(id, now);
                }
            }
            Role::Processor => {
                let instance = self.instances.get_mut(&id).expect("listed");
                instance.credit = (instance.credit + instance.speed * step_s).min(instance.speed);
                let mut budget = instance.credit.floor() as u64;
                let mut outputs = Vec::new();
                if instance.targets.is_empty() {
                    return;
                }
                while budget > 0 {
                    let Some((range, from)) = instance.queue.pop_front() else { break };
                    let take = (range.1 - range.0).min(budget);
                    if take < range.1 - range.0 {
                        instance.queue.push_front(((range.0 + take, range.1), from));
                    }
                    budget -= take;
                    instance.credit -= take as f64;
                    instance.exec_time_us += take as f64 / instance.speed * 1e6;
                    outputs.push(((range.0, range.0 + take), from));
                }
                if instance.queue.is_empty() {
                    instance.credit = instance.credit.min(1.0);
                }
                for (range, from) in outputs {
                    // Acknowledged upstream only once downstream acknowledges it, so that a
                    // range inside a lost processor is still held by its sender.
                    self.instances.get_mut(&id).expect("listed").origins.push((range, from));
                    self.send(id, range, now);
                }
                self.maybe_finish(id, now);
            }
            Role::Sink => self.maybe_finish(id, now),
        }
    }

    /// Sends `range` to the next target round robin, after the link's latency.
    fn send(&mut self, from: InstanceId, range: SeqRange, now: Instant) {
        let instance = self.instances.get_mut(&from).expect("sender exists");
        let (to, latency) = instance.targets[instance.next_target % instance.targets.len()];
        instance.next_target += 1;
        instance.events_out += range.1 - range.0;
        instance.unacked.entry(to).or_default().push(range);
        self.in_flight.push_back(InFlight { at: now + latency, from, to, range: Some(range) });
    }

    fn maybe_finish(&mut self, id: InstanceId, now: Instant) {
        let instance = &self.instances[&id];
        let Some(expected) = instance.expected_ends else { return };
        if instance.ends.len() as u32 >= expected && instance.queue.is_empty() {
            self.finish(id, now);
        }
    }

    /// Sends end-of-stream to every target once everything sent was processed downstream.
    fn finish(&mut self, id: InstanceId, now: Instant) {
        let instance = self.instances.get_mut(&id).expect("exists");
        if instance.unacked.values().any(|ranges| !ranges.is_empty()) {
            return;
        }
        if !instance.sent_end {
            instance.sent_end = true;
            let ends: Vec<(InstanceId, Duration)> = instance.targets.clone();
            for (to, latency) in ends {
                self.in_flight.push_back(InFlight { at: now + latency, from: id, to, range: None });
            }
        }
        self.instances.get_mut(&id).expect("exists").phase = Phase::Drained;
    }

    /// Gives every range a lost instance held back to its senders, to be sent again.
    fn lose(&mut self, lost: InstanceId, now: Instant) {
        let mut held: Vec<(InstanceId, SeqRange)> = Vec::new();
        for (sender, instance) in self.instances.iter_mut() {
            if let Some(ranges) = instance.unacked.remove(&lost) {
                held.extend(ranges.into_iter().map(|range| (*sender, range)));
            }
        }
        if let Some(instance) = self.instances.get_mut(&lost) {
            instance.alive = false;
            instance.queue.clear();
        }
        for (sender, range) in held {
            self.replay(sender, range, now);
        }
    }
}

impl World {
    /// Sends a range again from `sender` to one of its current targets.
    fn replay(&mut self, sender: InstanceId, range: SeqRange, now: Instant) {
        let Some(instance) = self.instances.get_mut(&sender) else { return };
        if !instance.alive {
            return;
        }
        instance.replayed += range.1 - range.0;
        instance.events_out -= range.1 - range.0;
        instance.sent_end = false;
        if instance.phase == Phase::Drained {
            instance.phase = Phase::Draining;
        }
        if instance.targets.is_empty() {
            // Kept until the orchestrator relinks the sender.
            instance.pending_replay.push(range);
        } else {
            self.send(sender, range, now);
        }
    }
}

impl World {
    /// Sends a range that waited for targets; it was counted as replayed already.
    fn replay_waiting(&mut self, sender: InstanceId, range: SeqRange, now: Instant) {
        if self.instances[&sender].targets.is_empty() {
            self.instances.get_mut(&sender).expect("exists").pending_replay.push(range);
        } else {
            self.send(sender, range, now);
        }
    }
}

impl World {
    /// Acknowledges `range` from `target` to `sender`, and on to the replica that sent it to
    /// `sender` when `sender` is a processor.
    fn ack_chain(&mut self, sender: InstanceId, target: InstanceId, range: SeqRange) {
        let Some(instance) = self.instances.get_mut(&sender) else { return };
        ack(instance, target, range);
        let origin = instance
            .origins
            .iter()
            .position(|(held, _)| held.0 <= range.0 && range.1 <= held.1)
            .map(|index| {
                let (held, origin) = instance.origins.swap_remove(index);
                if held.0 < range.0 {
                    instance.origins.push(((held.0, range.0), origin));
                }
                if range.1 < held.1 {
                    instance.origins.push(((range.1, held.1), origin));
                }
                origin
            });
        if let Some(origin) = origin {
            self.ack_chain(origin, sender, range);
        }
    }
}

fn ack(sender: &mut SimInstance, target: InstanceId, range: SeqRange) {
    let Some(ranges) = sender.unacked.get_mut(&target) else { return };
    let Some(index) = ranges.iter().position(|held| held.0 <= range.0 && range.1 <= held.1) else {
        return;
    };
    let held = ranges.remove(index);
    if held.0 < range.0 {
        ranges.push((held.0, range.0));
    }
    if range.1 < held.1 {
        ranges.push((range.1, held.1));
    }
}

fn record_received(sink: &mut SimInstance, range: SeqRange) {
    let (start, end) = range;
    // Count overlap with what was received before as duplicates.
    for (a, b) in &sink.received {
        let overlap = end.min(*b).saturating_sub(start.max(*a));
        sink.duplicates += overlap;
    }
    sink.received.push((start, end));
    sink.received.sort_unstable();
    let mut merged: Vec<SeqRange> = Vec::with_capacity(sink.received.len());
    for (a, b) in sink.received.drain(..) {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    sink.received = merged;
}

/// The sim backend and the control channel into its world.
pub struct SimBackend {
    world: Arc<Mutex<World>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    log_dir: PathBuf,
}

impl SimBackend {
    pub fn new(seed: u64, log_dir: &std::path::Path) -> SimBackend {
        SimBackend {
            world: Arc::new(Mutex::new(World::new(seed))),
            ticker: None,
            log_dir: log_dir.to_path_buf(),
        }
    }

    /// Model steps taken so far.
    pub fn steps(&self) -> u64 {
        self.world.lock().expect("world lock").steps
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for SimBackend {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
    }
}

/// Events per second a processor replica handles: its threads divided by the cost of one
/// event of `size` bytes.
fn processing_speed(spec: &InstanceSpec, size: u32) -> f64 {
    let ns_per_event = spec.cost.ns_per_byte * f64::from(size);
    let threads = f64::from(spec.cost.threads.get());
    if ns_per_event <= 0.0 { 1e9 } else { threads * 1e9 / ns_per_event }
}

#[async_trait]
impl Backend for SimBackend {
    fn kind(&self) -> &'static str {
        "sim"
    }

    /// Returns the ranges the model kept for a lost sink, as a real sink's journal keeps them.
    fn lost_sink_record(&self, id: InstanceId, _name: &str) -> Option<SinkRecord> {
        let world = self.world();
        let sink = world.instances.get(&id)?;
        let ranges = sink.received.iter().map(|&(start, end)| [start, end]).collect();
        Some(SinkRecord { ranges, duplicates: sink.duplicates })
    }

    async fn provision(&mut self, topology: &Topology) -> Result<(), BackendError> {
        let _ = std::fs::create_dir_all(&self.log_dir);
        self.world().nodes_of_cluster =
            topology.clusters().iter().map(|cluster| (cluster.id, cluster.nodes.clone())).collect();
        let world = self.world.clone();
        self.ticker = Some(tokio::spawn(async move {
            let mut interval = tokio::time::interval(STEP);
            loop {
                interval.tick().await;
                let now = Instant::now();
                world.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).step(now);
            }
        }));
        Ok(())
    }

    async fn start_instance(
        &mut self,
        spec: &InstanceSpec,
    ) -> Result<InstanceEndpoints, BackendError> {
        let mut world = self.world();
        if world.down_nodes.contains(&spec.node) {
            return Err(BackendError::Start {
                instance: spec.name(),
                node: spec.node_name.clone(),
                reason: "the node is down".into(),
            });
        }
        // Replicas differ by up to 5% in speed, drawn from the seeded generator.
        let jitter: f64 = world.rng.random_range(0.95..1.05);
        let speed = match spec.role {
            Role::Source if spec.rate > 0.0 => spec.rate,
            Role::Source => 1e6,
            Role::Processor => processing_speed(spec, spec.event_size.max(1)) * jitter,
            Role::Sink => f64::INFINITY,
        };
        let frozen = world.frozen_nodes.contains(&spec.node);
        world.instances.insert(
            spec.id,
            SimInstance {
                spec: spec.clone(),
                speed,
                phase: Phase::Ready,
                alive: true,
                frozen,
                started: false,
                targets: Vec::new(),
                next_target: 0,
                queue: VecDeque::new(),
                unacked: BTreeMap::new(),
                pending_replay: Vec::new(),
                origins: Vec::new(),
                next_seq: spec.seq_start,
                end_seq: spec.seq_start + spec.events,
                credit: 0.0,
                expected_ends: None,
                ends: BTreeSet::new(),
                sent_end: false,
                events_in: 0,
                events_out: 0,
                exec_time_us: 0.0,
                replayed: 0,
                duplicates: 0,
                received: Vec::new(),
            },
        );
        let endpoints = InstanceEndpoints {
            control_url: format!("sim://{}", spec.id),
            data_addr: format!("sim:{}", spec.id),
            handle: format!("sim {}", spec.id),
        };
        world.by_endpoint.insert(endpoints.control_url.clone(), spec.id);
        world.by_addr.insert(endpoints.data_addr.clone(), spec.id);
        Ok(endpoints)
    }

    async fn stop_instance(&mut self, id: InstanceId) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut world = self.world();
        let alive = world.instances.get(&id).is_some_and(|instance| instance.alive);
        if alive {
            world.lose(id, now);
        }
        Ok(())
    }

    async fn exited(&mut self, id: InstanceId) -> Option<String> {
        let world = self.world();
        let instance = world.instances.get(&id)?;
        (!instance.alive).then(|| "simulated instance lost".to_string())
    }

    async fn teardown(&mut self) -> Result<(), BackendError> {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        Ok(())
    }

    fn log_dir(&self) -> Option<PathBuf> {
        None
    }

    async fn node_alive(&mut self, node: NodeId) -> bool {
        let world = self.world();
        !world.down_nodes.contains(&node) && !world.frozen_nodes.contains(&node)
    }

    async fn inject(&mut self, fault: Fault) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut world = self.world();
        let on_nodes = |world: &World, nodes: &[NodeId]| -> Vec<InstanceId> {
            world
                .instances
                .iter()
                .filter(|(_, instance)| nodes.contains(&instance.spec.node) && instance.alive)
                .map(|(id, _)| *id)
                .collect()
        };
        let cluster_nodes = |world: &World, cluster: ClusterId| {
            world.nodes_of_cluster.get(&cluster).cloned().unwrap_or_default()
        };
        match fault {
            Fault::KillInstance(id) => world.lose(id, now),
            Fault::KillNode(node) => {
                world.down_nodes.insert(node);
                for id in on_nodes(&world, &[node]) {
                    world.lose(id, now);
                }
            }
            Fault::LoseCluster(cluster) => {
                let nodes = cluster_nodes(&world, cluster);
                world.down_nodes.extend(nodes.iter().copied());
                for id in on_nodes(&world, &nodes) {
                    world.lose(id, now);
                }
            }
            Fault::PauseNode(node) => set_frozen(&mut world, &[node], true),
            Fault::ResumeNode(node) => set_frozen(&mut world, &[node], false),
            Fault::Partition(cluster) => {
                let nodes = cluster_nodes(&world, cluster);
                set_frozen(&mut world, &nodes, true);
            }
            Fault::Heal(cluster) => {
                let nodes = cluster_nodes(&world, cluster);
                set_frozen(&mut world, &nodes, false);
            }
        }
        Ok(())
    }

    fn control(&self) -> Option<Arc<dyn InstanceControl>> {
        Some(Arc::new(SimControl { world: self.world.clone() }))
    }
}

fn set_frozen(world: &mut World, nodes: &[NodeId], frozen: bool) {
    for node in nodes {
        if frozen {
            world.frozen_nodes.insert(*node);
        } else {
            world.frozen_nodes.remove(node);
        }
    }
    for instance in world.instances.values_mut() {
        if nodes.contains(&instance.spec.node) {
            instance.frozen = frozen;
        }
    }
}

/// Control requests answered from the model. `endpoint` is `sim://<instance id>`.
struct SimControl {
    world: Arc<Mutex<World>>,
}

impl SimControl {
    fn with<T>(
        &self,
        instance: &str,
        endpoint: &str,
        method: &str,
        action: impl FnOnce(&mut World, InstanceId) -> T,
    ) -> Result<T, ControlError> {
        let mut world = self.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let id = world.by_endpoint.get(endpoint).copied();
        let unreachable = |reason: &str| ControlError {
            instance: instance.to_string(),
            method: method.to_string(),
            url: endpoint.to_string(),
            reason: reason.to_string(),
            unreachable: true,
        };
        let id = id.ok_or_else(|| unreachable("no such simulated instance"))?;
        let state = &world.instances[&id];
        if !state.alive {
            return Err(unreachable("simulated instance lost"));
        }
        if state.frozen {
            return Err(unreachable("simulated instance frozen"));
        }
        Ok(action(&mut world, id))
    }
}

#[async_trait]
impl InstanceControl for SimControl {
    async fn health(&self, instance: &str, endpoint: &str) -> Result<Health, ControlError> {
        self.with(instance, endpoint, "GET", |world, id| {
            let state = &world.instances[&id];
            Health {
                phase: state.phase,
                role: state.spec.role,
                stage: state.spec.stage.clone(),
                replica: id.replica,
                pid: 0,
                uptime_s: 0.0,
            }
        })
    }

    async fn stats(
        &self,
        instance: &str,
        endpoint: &str,
        ranges: bool,
    ) -> Result<Stats, ControlError> {
        self.with(instance, endpoint, "GET", |world, id| {
            let state = &world.instances[&id];
            Stats {
                phase: state.phase,
                role: state.spec.role,
                events_in: state.events_in,
                events_out: state.events_out,
                bytes_in: state.events_in * u64::from(state.spec.event_size),
                bytes_out: state.events_out * u64::from(state.spec.event_size),
                duplicates: state.duplicates,
                queue_depth: state.queue.iter().map(|(range, _)| range.1 - range.0).sum(),
                exec_time_us: state.exec_time_us as u64,
                failures: 0,
                replayed: state.replayed,
                latency: LatencySummary { count: state.events_in, ..LatencySummary::default() },
                received: (ranges && state.spec.role == Role::Sink)
                    .then(|| state.received.iter().map(|(a, b)| [*a, *b]).collect()),
            }
        })
    }

    async fn report(
        &self,
        instance: &str,
        endpoint: &str,
    ) -> Result<serde_json::Value, ControlError> {
        self.with(instance, endpoint, "GET", |world, id| {
            let state = &world.instances[&id];
            serde_json::json!({
                "simulated": true,
                "name": state.spec.name(),
                "events_in": state.events_in,
                "events_out": state.events_out,
            })
        })
    }

    async fn set_targets(
        &self,
        instance: &str,
        endpoint: &str,
        targets: &Targets,
    ) -> Result<(), ControlError> {
        let now = Instant::now();
        // A real instance that has drained refuses new targets; so does a simulated one.
        let drained =
            self.with(instance, endpoint, "PUT", |world, id| world.instances[&id].sent_end)?;
        if drained {
            return Err(ControlError {
                instance: instance.to_string(),
                method: "PUT".to_string(),
                url: endpoint.to_string(),
                reason: "HTTP 409 Conflict: the instance has drained".to_string(),
                unreachable: false,
            });
        }
        self.with(instance, endpoint, "PUT", |world, id| {
            let resolved: Vec<(InstanceId, Duration)> = targets
                .targets
                .iter()
                .filter_map(|target| {
                    let id = world.by_addr.get(&target.addr).copied()?;
                    Some((id, Duration::from_micros(target.latency_us)))
                })
                .collect();
            let removed: Vec<InstanceId> = world.instances[&id]
                .targets
                .iter()
                .map(|(target, _)| *target)
                .filter(|target| !resolved.iter().any(|(kept, _)| kept == target))
                .collect();
            world.instances.get_mut(&id).expect("exists").targets = resolved;
            // Ranges held for a removed target are sent again to the remaining ones, and so
            // is what waited for targets (already counted as replayed when it started waiting).
            let waiting =
                std::mem::take(&mut world.instances.get_mut(&id).expect("exists").pending_replay);
            for target in removed {
                let held = world.instances.get_mut(&id).expect("exists").unacked.remove(&target);
                for range in held.unwrap_or_default() {
                    world.replay(id, range, now);
                }
            }
            for range in waiting {
                world.replay_waiting(id, range, now);
            }
        })
    }

    async fn start(&self, instance: &str, endpoint: &str) -> Result<(), ControlError> {
        self.with(instance, endpoint, "POST", |world, id| {
            let state = world.instances.get_mut(&id).expect("exists");
            state.started = true;
            state.phase = Phase::Running;
        })
    }

    async fn drain(
        &self,
        instance: &str,
        endpoint: &str,
        drain: &Drain,
    ) -> Result<(), ControlError> {
        self.with(instance, endpoint, "POST", |world, id| {
            let state = world.instances.get_mut(&id).expect("exists");
            state.expected_ends = Some(drain.expected_ends);
            if state.phase != Phase::Drained {
                state.phase = Phase::Draining;
            }
        })
    }

    async fn stop(&self, instance: &str, endpoint: &str) -> Result<(), ControlError> {
        let now = Instant::now();
        self.with(instance, endpoint, "POST", |world, id| world.lose(id, now))
    }
}
