//! Counters, phase and latency histogram of one instance, shared by all its threads.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use orchestrator::control::{LatencySummary, Phase, Role, Stats};

use super::ranges::SeqSet;

/// Highest latency the histogram resolves, in microseconds (one hour); larger values are
/// recorded as this value.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Cumulative counters. Event and byte counts are of data frames and their payloads; frame
/// headers are not counted.
#[derive(Debug, Default)]
pub struct Counters {
    /// Data events received. A sink leaves repeated sequence numbers out of this count.
    pub events_in: AtomicU64,
    pub events_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub duplicates: AtomicU64,
    /// Events received but not yet handed to a link.
    pub queued: AtomicU64,
    /// Events handled by the service: emitted by a source, processed by a processor,
    /// accepted by a sink. This is ERSAP's `n_requests`.
    pub requests: AtomicU64,
    pub exec_time_ns: AtomicU64,
    pub failures: AtomicU64,
    /// Events dropped because they reached the router after the drain closed it.
    pub lost: AtomicU64,
    /// Unacknowledged events sent again after their target failed or was removed.
    pub replayed: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Phase of the instance, readable and writable from any thread.
#[derive(Debug)]
pub struct PhaseCell(AtomicU8);

impl PhaseCell {
    pub fn new(phase: Phase) -> Self {
        Self(AtomicU8::new(Self::encode(phase)))
    }

    pub fn get(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Ready,
            1 => Phase::Running,
            2 => Phase::Draining,
            _ => Phase::Drained,
        }
    }

    pub fn set(&self, phase: Phase) {
        self.0.store(Self::encode(phase), Ordering::Release);
    }

    /// Moves from `from` to `to`, unless the phase is no longer `from`.
    pub fn advance(&self, from: Phase, to: Phase) {
        let _ = self.0.compare_exchange(
            Self::encode(from),
            Self::encode(to),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    fn encode(phase: Phase) -> u8 {
        match phase {
            Phase::Ready => 0,
            Phase::Running => 1,
            Phase::Draining => 2,
            Phase::Drained => 3,
        }
    }
}

/// Histogram of the delay from an event's creation at the source to its arrival here.
#[derive(Debug)]
pub struct LatencyRecorder {
    histogram: Mutex<Histogram<u64>>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        let histogram = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("constant histogram bounds are valid");
        Self { histogram: Mutex::new(histogram) }
    }
}

impl LatencyRecorder {
    /// Records the latency of every event in `created_ns`, all of which arrived at
    /// `arrival_ns` (Unix time in nanoseconds).
    ///
    /// A creation time after the arrival time, which happens when source and receiver
    /// clocks differ, counts as zero latency.
    pub fn record(&self, arrival_ns: u64, created_ns: impl IntoIterator<Item = u64>) {
        let mut guard = self.lock();
        for created in created_ns {
            guard.record(arrival_ns, created);
        }
    }

    /// Locks the histogram, so that a reader records a whole buffer of events at once.
    pub fn lock(&self) -> LatencyGuard<'_> {
        LatencyGuard(self.histogram.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Summarises the histogram; `with_histogram` adds the recorded `[value_us, count]` pairs.
    pub fn summary(&self, with_histogram: bool) -> LatencySummary {
        let histogram = self.histogram.lock().unwrap_or_else(|e| e.into_inner());
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let pairs = if with_histogram {
            histogram.iter_recorded().map(|v| [v.value_iterated_to(), v.count_at_value()]).collect()
        } else {
            Vec::new()
        };
        LatencySummary {
            count: histogram.len(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
            histogram: pairs,
        }
    }
}

/// Locked latency histogram.
pub struct LatencyGuard<'a>(MutexGuard<'a, Histogram<u64>>);

impl LatencyGuard<'_> {
    /// Records one event created at `created_ns` that arrived at `arrival_ns`.
    pub fn record(&mut self, arrival_ns: u64, created_ns: u64) {
        self.0.saturating_record(arrival_ns.saturating_sub(created_ns) / 1000);
    }
}

/// Gathers the reply of `GET /stats` from the shared parts of an instance.
pub fn snapshot(
    role: Role,
    phase: Phase,
    counters: &Counters,
    latency: &LatencyRecorder,
    received: Option<&Mutex<SeqSet>>,
    with_ranges: bool,
) -> Stats {
    let received = match (with_ranges, received) {
        (true, Some(set)) => Some(set.lock().unwrap_or_else(|e| e.into_inner()).ranges()),
        _ => None,
    };
    Stats {
        phase,
        role,
        events_in: Counters::get(&counters.events_in),
        events_out: Counters::get(&counters.events_out),
        bytes_in: Counters::get(&counters.bytes_in),
        bytes_out: Counters::get(&counters.bytes_out),
        duplicates: Counters::get(&counters.duplicates),
        queue_depth: Counters::get(&counters.queued),
        exec_time_us: Counters::get(&counters.exec_time_ns) / 1000,
        failures: Counters::get(&counters.failures),
        replayed: Counters::get(&counters.replayed),
        latency: latency.summary(with_ranges),
        received,
    }
}

/// Returns the current Unix time in nanoseconds.
pub fn unix_now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_reports_percentiles() {
        let recorder = LatencyRecorder::default();
        let arrival = 10_000_000_000;
        recorder.record(arrival, (1..=100).map(|us| arrival - us * 1000));
        let summary = recorder.summary(true);
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50_us, 50);
        assert_eq!(summary.p99_us, 99);
        assert_eq!(summary.max_us, 100);
        assert_eq!(summary.histogram.iter().map(|pair| pair[1]).sum::<u64>(), 100);
        assert!(recorder.summary(false).histogram.is_empty());
    }

    #[test]
    fn creation_after_arrival_counts_as_zero_latency() {
        let recorder = LatencyRecorder::default();
        recorder.record(1_000, [5_000]);
        assert_eq!(recorder.summary(false).max_us, 0);
    }

    #[test]
    fn phase_advance_ignores_other_phases() {
        let phase = PhaseCell::new(Phase::Ready);
        phase.advance(Phase::Running, Phase::Draining);
        assert_eq!(phase.get(), Phase::Ready);
        phase.advance(Phase::Ready, Phase::Running);
        assert_eq!(phase.get(), Phase::Running);
    }
}
