//! Event generator of a source.
//!
//! After `POST /start`, and once at least one target is connected, the source emits
//! `--events` data frames with sequence numbers `--seq-start ..` at `--rate`, then closes every
//! link with an end frame and becomes drained.
//!
//! Frames are written into batch buffers at fixed offsets. Payload bytes are never written:
//! buffers come zero-filled from the pool and only ever receive headers at the same offsets,
//! so a recycled buffer's payloads are still zero and only the headers need rewriting.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use orchestrator::control::Phase;
use tracing::{error, info};

use super::batch::{BATCH_BYTES, Batch};
use super::frame::{FrameHeader, HEADER_LEN};
use super::stats::{Counters, unix_now_ns};
use super::{InstanceError, Shared, StartSignal};

/// Maximum events per batch. Fewer are used when a batch would exceed [`BATCH_BYTES`], and when
/// the run is short, so that round-robin still spreads a few hundred events over all targets.
const MAX_BATCH_EVENTS: u64 = 256;

/// Starts the generator thread, which waits for `POST /start`.
pub(crate) fn spawn(shared: Arc<Shared>, start_rx: StartSignal) -> Result<(), InstanceError> {
    let spawned = thread::Builder::new().name("source".to_owned()).spawn(move || {
        let _entered = shared.span.enter();
        if start_rx.recv().is_err() {
            return;
        }
        info!("start requested");
        shared.router.wait_for_links();
        shared.phase.set(Phase::Running);
        let started = Instant::now();
        emit(&shared);
        // The end frames go out only once every event is acknowledged, so a target that
        // fails before then has its events replayed to the others, which then get the end.
        shared.router.wait_until_acked();
        shared.router.close_all();
        info!(elapsed_s = started.elapsed().as_secs_f64(), "all events sent");
        shared.mark_drained();
    });
    spawned.map(drop).map_err(|source| InstanceError::Start { what: "source thread", source })
}

fn emit(shared: &Shared) {
    let args = &shared.args;
    let frame_len = HEADER_LEN + args.event_size as usize;
    let fit = (BATCH_BYTES / frame_len).max(1) as u64;
    let max_events = MAX_BATCH_EVENTS.min(fit);
    // Aim for at least eight batches per target, so short runs still reach every target.
    let batch_events =
        (args.events / (8 * shared.router.live_links().max(1) as u64)).clamp(1, max_events);
    let buffer_len = frame_len * max_events as usize;

    let started = Instant::now();
    let mut batch = new_batch(shared, buffer_len);
    for (index, seq) in (args.seq_start..args.seq_start + args.events).enumerate() {
        if args.rate > 0.0 {
            let offset = Duration::try_from_secs_f64(index as f64 / args.rate).ok();
            let Some(due) = offset.and_then(|offset| started.checked_add(offset)) else {
                error!(seq, "emission time is beyond the clock's range; stopping the source");
                break;
            };
            if due > Instant::now() {
                // Send what is ready before waiting, so that events are not held back.
                if batch.events > 0 {
                    send(shared, std::mem::replace(&mut batch, new_batch(shared, buffer_len)));
                }
                thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        let header = FrameHeader::data(seq, unix_now_ns(), args.event_size);
        header.encode_into(&mut batch.data[batch.len..]);
        batch.len += frame_len;
        batch.events += 1;
        batch.payload_bytes += u64::from(args.event_size);
        if batch.events == batch_events {
            send(shared, std::mem::replace(&mut batch, new_batch(shared, buffer_len)));
        }
    }
    if batch.events > 0 {
        send(shared, batch);
    } else {
        shared.pool.give_back(batch.data);
    }
}

fn new_batch(shared: &Shared, buffer_len: usize) -> Batch {
    Batch {
        data: shared.pool.take(buffer_len),
        len: 0,
        events: 0,
        payload_bytes: 0,
        sent_at: Instant::now(),
        origin: None,
    }
}

fn send(shared: &Shared, batch: Batch) {
    Counters::add(&shared.counters.requests, batch.events);
    shared.router.send(batch);
}
