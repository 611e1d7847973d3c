//! Bookkeeping that decides when a processor or sink has handled its last event.
//!
//! A receiver is finished when three things hold: `POST /drain` has set how many end frames
//! to expect, that many have arrived, and no received event is still queued. Readers count an
//! end frame only after handing over every data frame before it, and workers decrement the
//! queue only after handing their output to a link, so once the condition holds every event is
//! on a link's channel, ahead of the end frames that closing the links appends.

use std::sync::atomic::AtomicU64;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::stats::Counters;

/// Expected and received end frames, with a condition variable for the thread that waits.
#[derive(Debug, Default)]
pub struct DrainGate {
    state: Mutex<EndCount>,
    changed: Condvar,
}

#[derive(Debug, Default, Clone, Copy)]
struct EndCount {
    expected: Option<u32>,
    received: u32,
}

/// Interval at which the waiting thread rechecks the queue depth. Workers signal when the queue
/// empties, but the signal can race with the check, so the wait is also bounded.
const RECHECK: Duration = Duration::from_millis(5);

impl DrainGate {
    /// Records the number of end frames that finish the stream; a later request replaces it.
    pub fn request(&self, expected_ends: u32) {
        self.lock().expected = Some(expected_ends);
        self.changed.notify_all();
    }

    pub fn end_received(&self) {
        self.lock().received += 1;
        self.changed.notify_all();
    }

    /// Wakes the waiting thread so that it rechecks the queue.
    pub fn queue_emptied(&self) {
        self.changed.notify_all();
    }

    /// Number of end frames received so far.
    pub fn ends_received(&self) -> u32 {
        self.lock().received
    }

    /// Blocks until the drain was requested, all expected end frames arrived and `queued`
    /// is zero.
    pub fn wait_until_drained(&self, queued: &AtomicU64) {
        let mut state = self.lock();
        loop {
            let ends_complete = state.expected.is_some_and(|expected| state.received >= expected);
            if ends_complete && Counters::get(queued) == 0 {
                return;
            }
            state = self.changed.wait_timeout(state, RECHECK).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EndCount> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::thread;

    use super::*;

    #[test]
    fn drain_waits_for_ends_and_empty_queue() {
        let gate = Arc::new(DrainGate::default());
        let queued = Arc::new(AtomicU64::new(5));
        let waiter = {
            let (gate, queued) = (Arc::clone(&gate), Arc::clone(&queued));
            thread::spawn(move || gate.wait_until_drained(&queued))
        };

        gate.end_received();
        gate.request(2);
        thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "drained with one of two ends");

        gate.end_received();
        thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "drained with events still queued");

        queued.store(0, Ordering::Relaxed);
        gate.queue_emptied();
        waiter.join().expect("waiter returns once drained");
        assert_eq!(gate.ends_received(), 2);
    }
}
