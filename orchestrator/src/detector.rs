//! Failure detection from heartbeats.
//!
//! Every answered poll of an instance is a heartbeat. A failure is to be declared within
//! `missed` heartbeat intervals (two by default) of the last heartbeat. Silence is only
//! checked once per poll period, so an instance is suspected once it has been silent for
//! `missed` intervals less one poll period; the check that first sees that lands within
//! the `missed` intervals. Real ERSAP registrations never expire, so the orchestrator cannot learn
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
    /// A detector for heartbeats every `interval`, checked every `poll_period`, that declares
    /// an instance failed within `missed` intervals of its last heartbeat. The silence it
    /// tolerates is never shorter than one interval.
    pub fn new(interval: Duration, missed: u32, poll_period: Duration) -> FailureDetector {
        let timeout = (interval * missed.max(1)).saturating_sub(poll_period).max(interval);
        FailureDetector { interval, timeout, last_seen: BTreeMap::new() }
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

    /// How long a watched instance has been without a heartbeat; `None` when not watched.
    pub fn silent_for(&self, id: InstanceId, now: Instant) -> Option<Duration> {
        self.last_seen.get(&id).map(|seen| now.saturating_duration_since(*seen))
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
        let mut detector = FailureDetector::new(interval, 2, Duration::ZERO);
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
        let mut detector = FailureDetector::new(interval, 2, Duration::ZERO);
        detector.watch(id(0), Instant::now());
        tokio::time::advance(interval * 5).await;
        assert_eq!(detector.suspects(Instant::now()).len(), 1);
        detector.heartbeat(id(0), Instant::now());
        assert!(detector.suspects(Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn forgotten_instance_never_suspected() {
        let mut detector = FailureDetector::new(Duration::from_millis(100), 2, Duration::ZERO);
        detector.watch(id(0), Instant::now());
        detector.forget(id(0));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(detector.suspects(Instant::now()).is_empty());
        detector.heartbeat(id(0), Instant::now());
        assert!(detector.suspects(Instant::now()).is_empty());
    }

    #[test]
    fn timeout_leaves_room_for_one_poll() {
        let ms = Duration::from_millis;
        let detector = FailureDetector::new(ms(200), 2, Duration::ZERO);
        assert_eq!(detector.timeout(), ms(400));
        assert_eq!(detector.interval(), ms(200));
        assert_eq!(FailureDetector::new(ms(200), 2, ms(100)).timeout(), ms(300));
        // Polls slower than the interval never shrink the timeout below one interval.
        assert_eq!(FailureDetector::new(ms(200), 2, ms(500)).timeout(), ms(200));
        assert_eq!(FailureDetector::new(ms(200), 0, ms(100)).timeout(), ms(200));
    }

    /// Polled every 100 ms with 200 ms heartbeats, an instance that goes silent at any
    /// moment is declared at the first poll after its timeout, within two intervals.
    #[tokio::test(start_paused = true)]
    async fn declared_within_two_intervals_whenever_it_dies() {
        let (interval, poll) = (Duration::from_millis(200), Duration::from_millis(100));
        for offset_ms in (0..100).step_by(10) {
            let mut detector = FailureDetector::new(interval, 2, poll);
            let start = Instant::now();
            detector.watch(id(0), start);
            // Alive up to `death`, a moment between two polls; polls continue at 100 ms.
            let death = start + Duration::from_millis(1000 + offset_ms);
            let mut at = start;
            let declared = loop {
                at += poll;
                if at <= death {
                    detector.heartbeat(id(0), at);
                } else if !detector.suspects(at).is_empty() {
                    break at;
                }
            };
            let after = declared - death;
            assert!(after <= interval * 2, "died {offset_ms} ms after a poll: {after:?}");
            assert!(after > interval, "died {offset_ms} ms after a poll: {after:?}");
        }
    }
}
