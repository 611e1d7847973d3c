//! Bookkeeping that decides when a processor or sink has handled its last event.
//!
//! A receiver is finished when three things hold: `POST /drain` has set how many end frames
//! to expect, that many upstream replicas have sent one, and no received event is still
//! queued. End frames are counted per sending replica: a replacement whose predecessor had
//! sent its end frame before it failed sends a second one, which must not count. Readers count an
//! end frame only after handing over every data frame before it, and workers decrement the
//! queue only after handing their output to a link, so once the condition holds every event is
//! on a link's channel, ahead of the end frames that closing the links appends.

use std::collections::BTreeSet;
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

#[derive(Debug, Default, Clone)]
struct EndCount {
    expected: Option<u32>,
    /// Replica indexes of the upstream replicas whose end frame arrived.
    senders: BTreeSet<u32>,
    /// End frames that name no sender, each counted.
    anonymous: u32,
}

impl EndCount {
    fn received(&self) -> u32 {
        self.senders.len() as u32 + self.anonymous
    }
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

    /// Counts an end frame from replica `sender` (or from an unnamed sender) and returns
    /// false when that replica had already sent one.
    pub fn end_received(&self, sender: Option<u32>) -> bool {
        let mut state = self.lock();
        let counted = match sender {
            Some(replica) => state.senders.insert(replica),
            None => {
                state.anonymous += 1;
                true
            }
        };
        drop(state);
        self.changed.notify_all();
        counted
    }

    /// Wakes the waiting thread so that it rechecks the queue.
    pub fn queue_emptied(&self) {
        self.changed.notify_all();
    }

    /// Number of end frames received so far.
    pub fn ends_received(&self) -> u32 {
        self.lock().received()
    }

    /// Blocks until the drain was requested, all expected end frames arrived and `queued`
    /// is zero.
    pub fn wait_until_drained(&self, queued: &AtomicU64) {
        let mut state = self.lock();
        loop {
            let ends_complete = state.expected.is_some_and(|expected| state.received() >= expected);
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

        assert!(gate.end_received(Some(0)));
        gate.request(2);
        thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "drained with one of two ends");

        // A second end frame from replica 0, as its replacement would send, does not count.
        assert!(!gate.end_received(Some(0)));
        thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "drained on a repeated end frame");
        assert_eq!(gate.ends_received(), 1);

        assert!(gate.end_received(Some(1)));
        thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "drained with events still queued");

        queued.store(0, Ordering::Relaxed);
        gate.queue_emptied();
        waiter.join().expect("waiter returns once drained");
        assert_eq!(gate.ends_received(), 2);
    }
}
