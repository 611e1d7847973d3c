//! Control protocol between the orchestrator and a mock ERSAP instance.
//!
//! Every instance serves HTTP on its control port. Every request must carry the run's token
//! as `Authorization: Bearer <token>`; the instance answers 401 otherwise, so that two runs on
//! one host cannot steer each other's instances. The JSON bodies are the types below.
//!
//! | method and path | body | reply |
//! |---|---|---|
//! | `GET /health` | | [`Health`] |
//! | `GET /stats` | | [`Stats`]; `?ranges=true` adds the received sequence ranges of a sink |
//! | `GET /report` | | DPE report in ERSAP's JSON schema (`DPERegistration`, `DPERuntime`) |
//! | `GET /metrics` | | Prometheus text under ERSAP's metric names |
//! | `PUT /targets` | [`Targets`] | 204; replaces the downstream replicas |
//! | `POST /start` | | 204; a source starts emitting, other roles ignore it |
//! | `POST /drain` | [`Drain`] | 204; the instance finishes once upstream is done |
//! | `POST /stop` | | 204; the process exits shortly after replying |

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Role of a mock instance in the workflow, after ERSAP's reader, service and writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Source,
    Processor,
    Sink,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Processor => "processor",
            Role::Sink => "sink",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lifecycle phase that an instance reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Listening, waiting for targets or for `start`.
    Ready,
    /// Emitting or processing events.
    Running,
    /// Drain requested; finishing queued events.
    Draining,
    /// Every event it will ever handle has been handled and sent on.
    Drained,
}

/// Reply of `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub phase: Phase,
    pub role: Role,
    pub stage: String,
    pub replica: u32,
    pub pid: u32,
    pub uptime_s: f64,
}

/// Latency from an event's creation at the source to its arrival at this instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Recorded values as `[value_us, count]` pairs, so that replicas of one stage can be
    /// merged into exact stage percentiles. Only present with `?ranges=true`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub histogram: Vec<[u64; 2]>,
}

/// Reply of `GET /stats`: cumulative counters since the instance started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub phase: Phase,
    pub role: Role,
    /// Data events received (sources: 0).
    pub events_in: u64,
    /// Data events sent downstream (sinks: 0).
    pub events_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Events a sink received more than once and dropped.
    pub duplicates: u64,
    /// Events received but not yet processed and sent on.
    pub queue_depth: u64,
    /// Summed processing time of all events, in microseconds (ERSAP's `exec_time`).
    pub exec_time_us: u64,
    pub failures: u64,
    /// Events sent again to a new or remaining downstream replica because the replica they
    /// went to first was lost or removed before it acknowledged them.
    #[serde(default)]
    pub replayed: u64,
    pub latency: LatencySummary,
    /// Sequence numbers a sink has received, as sorted, disjoint, half-open `[start, end)`
    /// ranges. Only present with `?ranges=true` on a sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<Vec<[u64; 2]>>,
}

/// A downstream replica and the emulated link that leads to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// `host:port` of the replica's data port, as reachable from the sending instance.
    pub addr: String,
    /// One-way delay the sender adds to every frame, in microseconds.
    pub latency_us: u64,
    /// Rate the sender holds itself to on this link, in bits per second; 0 means unlimited.
    pub bandwidth_bps: u64,
}

/// Body of `PUT /targets`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Targets {
    pub targets: Vec<Target>,
}

/// Body of `POST /drain`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drain {
    /// Number of end-of-stream frames to wait for: one per upstream replica, because every
    /// upstream replica holds one connection to every replica of the next stage.
    pub expected_ends: u32,
}

/// First line a mock instance prints on stdout once both ports are bound.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadyLine {
    pub event: String,
    pub data_port: u16,
    pub control_port: u16,
    pub pid: u32,
}

/// Default timeout of one control request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
