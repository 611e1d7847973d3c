//! Failure detection from heartbeats.
//!
//! Every answered poll of an instance is a heartbeat. An instance is suspected once no
//! heartbeat arrived for `timeout`, which defaults to two heartbeat intervals: one interval
//! for a poll that was in flight when the instance died, and one for the poll that first
//! found it silent. Real ERSAP registrations never expire, so the orchestrator cannot learn
//! about a dead DPE from the registrar; this detector is what notices.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::InstanceId;

#[derive(Debug, Clone)]
pub struct FailureDetector {
    interval: Duration,
    timeout: Duration,
    last_seen: BTreeMap<InstanceId, Instant>,
}

impl FailureDetector {
    /// A detector for heartbeats every `interval` that suspects an instance after
    /// `missed` intervals without one.
    pub fn new(interval: Duration, missed: u32) -> FailureDetector {
        FailureDetector { interval, timeout: interval * missed.max(1), last_seen: BTreeMap::new() }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Starts watching an instance as if it had just sent a heartbeat.
    pub fn watch(&mut self, id: InstanceId, now: Instant) {
        self.last_seen.insert(id, now);
    }

    /// Stops watching an instance that was stopped on purpose or already declared failed.
    pub fn forget(&mut self, id: InstanceId) {
        self.last_seen.remove(&id);
    }

    /// Records a heartbeat; heartbeats of instances not watched are ignored.
    pub fn heartbeat(&mut self, id: InstanceId, now: Instant) {
        if let Some(seen) = self.last_seen.get_mut(&id) {
            *seen = (*seen).max(now);
        }
    }

    /// Instances silent for longer than the timeout, with how long each has been silent.
    pub fn suspects(&self, now: Instant) -> Vec<(InstanceId, Duration)> {
        self.last_seen
            .iter()
            .filter_map(|(id, seen)| {
                let silent = now.saturating_duration_since(*seen);
                (silent > self.timeout).then_some((*id, silent))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StageId;

    fn id(replica: u32) -> InstanceId {
        InstanceId::new(StageId(1), replica)
    }

    #[tokio::test(start_paused = true)]
    async fn silent_instance_suspected_after_two_intervals() {
        let interval = Duration::from_millis(200);
        let mut detector = FailureDetector::new(interval, 2);
        let start = Instant::now();
        detector.watch(id(0), start);
        detector.watch(id(1), start);
        for tick in 1..=3 {
            tokio::time::advance(interval).await;
            detector.heartbeat(id(0), Instant::now());
            let suspects = detector.suspects(Instant::now());
            if tick < 3 {
                assert!(suspects.is_empty(), "tick {tick}: {suspects:?}");
            } else {
                assert_eq!(suspects.len(), 1);
                assert_eq!(suspects[0].0, id(1));
                assert_eq!(suspects[0].1, interval * 3);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_clears_suspicion() {
        let interval = Duration::from_millis(100);
        let mut detector = FailureDetector::new(interval, 2);
        detector.watch(id(0), Instant::now());
        tokio::time::advance(interval * 5).await;
        assert_eq!(detector.suspects(Instant::now()).len(), 1);
        detector.heartbeat(id(0), Instant::now());
        assert!(detector.suspects(Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn forgotten_instance_never_suspected() {
        let mut detector = FailureDetector::new(Duration::from_millis(100), 2);
        detector.watch(id(0), Instant::now());
        detector.forget(id(0));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(detector.suspects(Instant::now()).is_empty());
        detector.heartbeat(id(0), Instant::now());
        assert!(detector.suspects(Instant::now()).is_empty());
    }

    #[test]
    fn timeout_is_interval_times_missed() {
        let detector = FailureDetector::new(Duration::from_millis(200), 2);
        assert_eq!(detector.timeout(), Duration::from_millis(400));
        assert_eq!(detector.interval(), Duration::from_millis(200));
    }
}
