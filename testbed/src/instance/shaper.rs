//! Emulation of a network link's one-way latency and bandwidth on the sending side.
//!
//! Each link to a downstream replica delays every frame by the link's latency: a frame handed
//! to the link at instant `t` is written no earlier than `t + latency`. Frames keep their order,
//! and because whole batches share one hand-over instant the link waits once per batch, never
//! once per frame. The bandwidth limit paces writes so that the bytes written never run ahead
//! of `bandwidth_bps`. An idle link does not save up credit for a later burst.

use std::time::{Duration, Instant};

/// Latency and bandwidth state of one link.
#[derive(Debug, Clone)]
pub struct Shaper {
    latency: Duration,
    bandwidth_bps: u64,
    /// Earliest instant at which the next paced write may start.
    next_free: Option<Instant>,
}

/// Minimum piece a paced link writes at once, in bytes (one Ethernet payload).
const MIN_PACED_WRITE: usize = 1500;

impl Shaper {
    pub fn new(latency_us: u64, bandwidth_bps: u64) -> Self {
        Self { latency: Duration::from_micros(latency_us), bandwidth_bps, next_free: None }
    }

    /// Changes the link's parameters. Frames already queued are released by the new latency.
    pub fn reconfigure(&mut self, latency_us: u64, bandwidth_bps: u64) {
        self.latency = Duration::from_micros(latency_us);
        self.bandwidth_bps = bandwidth_bps;
        self.next_free = None;
    }

    /// Returns whether the link adds neither latency nor pacing.
    pub fn is_transparent(&self) -> bool {
        self.latency.is_zero() && self.bandwidth_bps == 0
    }

    /// Earliest instant at which frames handed over at `sent_at` may be written.
    pub fn release_at(&self, sent_at: Instant) -> Instant {
        sent_at + self.latency
    }

    /// Maximum piece to write between two pacing decisions: about one millisecond of the
    /// link's bandwidth, so that pacing stays smooth without a sleep per frame.
    pub fn max_write_len(&self) -> usize {
        if self.bandwidth_bps == 0 {
            return usize::MAX;
        }
        let per_ms = (self.bandwidth_bps / 8 / 1000) as usize;
        per_ms.max(MIN_PACED_WRITE)
    }

    /// Books the transmission of `bytes` and returns the instant at which writing them may
    /// start; with no bandwidth limit that is `now`.
    pub fn reserve(&mut self, now: Instant, bytes: usize) -> Instant {
        if self.bandwidth_bps == 0 {
            return now;
        }
        let start = self.next_free.map_or(now, |free| free.max(now));
        let nanos = bytes as u128 * 8 * 1_000_000_000 / u128::from(self.bandwidth_bps);
        let duration = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.next_free = Some(start + duration);
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_adds_latency_to_hand_over() {
        let shaper = Shaper::new(2_500, 0);
        let t0 = Instant::now();
        assert_eq!(shaper.release_at(t0), t0 + Duration::from_micros(2_500));
        assert!(!shaper.is_transparent());
        assert!(Shaper::new(0, 0).is_transparent());
    }

    #[test]
    fn unlimited_bandwidth_never_delays() {
        let mut shaper = Shaper::new(0, 0);
        let now = Instant::now();
        assert_eq!(shaper.reserve(now, 1 << 30), now);
        assert_eq!(shaper.reserve(now, 1 << 30), now);
        assert_eq!(shaper.max_write_len(), usize::MAX);
    }

    #[test]
    fn bandwidth_spaces_writes_by_their_size() {
        // 8 Mbit/s moves 1000 bytes per millisecond.
        let mut shaper = Shaper::new(0, 8_000_000);
        assert_eq!(shaper.max_write_len(), 1500);
        let t0 = Instant::now();
        assert_eq!(shaper.reserve(t0, 1000), t0);
        assert_eq!(shaper.reserve(t0, 2000), t0 + Duration::from_millis(1));
        assert_eq!(shaper.reserve(t0, 1000), t0 + Duration::from_millis(3));
    }

    #[test]
    fn idle_link_does_not_save_credit() {
        let mut shaper = Shaper::new(0, 8_000_000);
        let t0 = Instant::now();
        shaper.reserve(t0, 1000);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(shaper.reserve(later, 1000), later);
        assert_eq!(shaper.reserve(later, 1000), later + Duration::from_millis(1));
    }
}
