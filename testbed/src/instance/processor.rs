//! Worker pool of a processor: the modelled processing cost and the output events.
//!
//! A processor models an ERSAP service the way JLab's synthetic stages do: a cost in
//! nanoseconds per input byte, a number of worker threads (the service's pool size) and an
//! output size. Workers take whole batches from the readers, spend the batch's cost, rewrite
//! the events to the output size if one is set, and hand the batch to the router.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tracing::info;

use super::args::CostMode;
use super::batch::{Batch, BufferPool};
use super::frame::{FrameHeader, FrameReader, HEADER_LEN};
use super::stats::Counters;
use super::{InstanceError, Shared};

/// Batches that readers may queue for the workers before they stop reading, which in turn
/// makes TCP slow the upstream senders down.
const WORK_QUEUE_BATCHES: usize = 32;

/// Maximum modelled cost of one work unit, in nanoseconds. A worker forwards a unit only
/// once it has paid for all of it, so larger units would make each event wait for the cost
/// of the events read together with it, and would leave workers idle while one works.
const WORK_UNIT_COST_NS: f64 = 1_000_000.0;

/// Returns how many events of `batch` one worker should process at once. Cheap events are
/// processed all together. Events that cost over a millisecond each are processed one at a
/// time, so the pool shares work event by event as ERSAP's does.
pub(crate) fn work_unit_events(args: &super::Args, batch: &Batch) -> u64 {
    if batch.events == 0 || args.cost_ns_per_byte == 0.0 {
        return batch.events.max(1);
    }
    let cost_per_event = args.cost_ns_per_byte * batch.payload_bytes as f64 / batch.events as f64;
    ((WORK_UNIT_COST_NS / cost_per_event) as u64).max(1)
}

/// Splits `batch` into batches of at most `unit_events` events and passes each to `send`.
/// A batch that is small enough is passed on unchanged, without copying.
pub(crate) fn split_into_units(
    batch: Batch,
    unit_events: u64,
    pool: &BufferPool,
    mut send: impl FnMut(Batch),
) {
    if batch.events <= unit_events {
        send(batch);
        return;
    }
    let mut unit = Batch {
        data: Vec::new(),
        len: 0,
        events: 0,
        payload_bytes: 0,
        sent_at: batch.sent_at,
        origin: None,
    };
    let mut unit_start = 0;
    let mut reader = FrameReader::new(batch.frames());
    while let Some(Ok(frame)) = reader.next() {
        unit.events += 1;
        unit.payload_bytes += frame.payload.len() as u64;
        if unit.events == unit_events {
            let unit_end = reader.consumed();
            send(copy_unit(&batch, unit_start..unit_end, &unit, pool));
            unit_start = unit_end;
            unit.events = 0;
            unit.payload_bytes = 0;
        }
    }
    if unit.events > 0 {
        send(copy_unit(&batch, unit_start..batch.len, &unit, pool));
    }
    pool.give_back(batch.data);
}

/// Copies the frames in `range` of `batch` into a new batch with the counts of `unit`.
fn copy_unit(
    batch: &Batch,
    range: std::ops::Range<usize>,
    unit: &Batch,
    pool: &BufferPool,
) -> Batch {
    let len = range.len();
    let mut data = pool.take(len);
    data[..len].copy_from_slice(&batch.data[range]);
    Batch {
        data,
        len,
        events: unit.events,
        payload_bytes: unit.payload_bytes,
        sent_at: batch.sent_at,
        origin: batch.origin.clone(),
    }
}

/// Starts the worker threads and returns the channel that feeds them.
pub(crate) fn spawn_workers(shared: &Arc<Shared>) -> Result<Sender<Batch>, InstanceError> {
    let (work_tx, work_rx) = crossbeam_channel::bounded(WORK_QUEUE_BATCHES);
    for index in 0..shared.args.threads {
        let shared = Arc::clone(shared);
        let work_rx: Receiver<Batch> = work_rx.clone();
        let spawned = thread::Builder::new().name(format!("worker-{index}")).spawn(move || {
            let _entered = shared.span.enter();
            run_worker(&shared, &work_rx);
        });
        spawned.map_err(|source| InstanceError::Start { what: "worker thread", source })?;
    }
    info!(threads = shared.args.threads, "processor workers started");
    Ok(work_tx)
}

fn run_worker(shared: &Shared, work_rx: &Receiver<Batch>) {
    let mut meter = CostMeter::new(shared.args.cost_mode);
    let ns_per_byte = shared.args.cost_ns_per_byte;
    let output_size = shared.args.output_size;
    let counters = &shared.counters;
    for batch in work_rx {
        let spent = meter.spend(ns_per_byte * batch.payload_bytes as f64);
        Counters::add(&counters.exec_time_ns, spent.as_nanos() as u64);
        Counters::add(&counters.requests, batch.events);

        let events = batch.events;
        let output = if output_size == 0 {
            batch
        } else {
            let resized = resize_events(&batch, output_size, shared.pool.take(0));
            shared.pool.give_back(batch.data);
            resized
        };
        shared.router.send(output);

        // The router has the batch now, so it no longer counts as queued.
        let before = counters.queued.fetch_sub(events, std::sync::atomic::Ordering::AcqRel);
        if before == events {
            shared.drain.queue_emptied();
        }
    }
}

/// Rewrites every event of `input` to a payload of `output_size` bytes, keeping sequence
/// number and creation time. The payload starts with the input's bytes and is zero-padded.
pub(crate) fn resize_events(input: &Batch, output_size: u32, mut out: Vec<u8>) -> Batch {
    let frame_len = HEADER_LEN + output_size as usize;
    let needed = frame_len * input.events as usize;
    if out.len() < needed {
        out.resize(needed, 0);
    }
    let mut offset = 0;
    for frame in FrameReader::new(input.frames()).flatten() {
        let header = FrameHeader::data(frame.header.seq, frame.header.created_ns, output_size);
        header.encode_into(&mut out[offset..]);
        let payload = &mut out[offset + HEADER_LEN..offset + frame_len];
        let kept = frame.payload.len().min(payload.len());
        payload[..kept].copy_from_slice(&frame.payload[..kept]);
        payload[kept..].fill(0);
        offset += frame_len;
    }
    Batch {
        data: out,
        len: offset,
        events: input.events,
        payload_bytes: input.events * u64::from(output_size),
        sent_at: input.sent_at,
        origin: input.origin.clone(),
    }
}

/// Spends modelled processing time.
///
/// Costs are owed and paid in lumps of at least [`CostMeter::min_payment`], so that a cost of
/// a few nanoseconds per event does not turn into a clock read or a sleep per event. What a
/// payment overshoots (a sleep usually wakes late) is credited to the next one, up to
/// [`MAX_CREDIT`], so the total time spent tracks the total cost.
#[derive(Debug)]
pub struct CostMeter {
    mode: CostMode,
    /// Nanoseconds owed, negative when earlier payments overshot.
    owed_ns: f64,
}

/// Maximum overshoot carried to later payments. It bounds how long a worker may run without
/// paying after, for example, the scheduler kept it off the CPU during a sleep.
pub const MAX_CREDIT: Duration = Duration::from_millis(10);

impl CostMeter {
    pub fn new(mode: CostMode) -> Self {
        Self { mode, owed_ns: 0.0 }
    }

    /// Minimum amount paid at once. Sleeping for less is dominated by wake-up latency
    /// (about 50 µs of timer slack on Linux), while spinning needs only a few clock reads.
    pub fn min_payment(&self) -> Duration {
        match self.mode {
            CostMode::Burn => Duration::from_micros(5),
            CostMode::Sleep => Duration::from_micros(200),
        }
    }

    /// Adds `cost_ns` to the debt and pays it if it has reached the minimum payment.
    /// Returns the time actually spent, zero when the cost was only added to the debt.
    pub fn spend(&mut self, cost_ns: f64) -> Duration {
        self.owed_ns += cost_ns;
        if self.owed_ns < self.min_payment().as_nanos() as f64 {
            return Duration::ZERO;
        }
        let owed = Duration::from_nanos(self.owed_ns as u64);
        let started = Instant::now();
        match self.mode {
            CostMode::Burn => {
                while started.elapsed() < owed {
                    std::hint::spin_loop();
                }
            }
            CostMode::Sleep => thread::sleep(owed),
        }
        let spent = started.elapsed();
        self.owed_ns -= spent.as_nanos() as f64;
        self.owed_ns = self.owed_ns.max(-(MAX_CREDIT.as_nanos() as f64));
        spent
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::instance::frame::push_data_frame;

    #[test]
    fn small_costs_accumulate_into_one_payment() {
        let mut meter = CostMeter::new(CostMode::Burn);
        // 1000 events of 1 ns each stay below the 5 µs minimum until the end.
        let mut spent = Duration::ZERO;
        let mut payments = 0;
        for _ in 0..1000 {
            let paid = meter.spend(1.0);
            payments += usize::from(!paid.is_zero());
            spent += paid;
        }
        assert_eq!(payments, 0);
        assert_eq!(spent, Duration::ZERO);
        let paid = meter.spend(4_000.0);
        assert!(paid >= Duration::from_micros(5), "paid {paid:?}");
    }

    #[test]
    fn burn_and_sleep_spend_the_total_cost() {
        for mode in [CostMode::Burn, CostMode::Sleep] {
            let mut meter = CostMeter::new(mode);
            let started = Instant::now();
            let mut spent = Duration::ZERO;
            // 400 costs of 50 µs, 20 ms in total.
            for _ in 0..400 {
                spent += meter.spend(50_000.0);
            }
            spent += meter.spend(meter.min_payment().as_nanos() as f64);
            let elapsed = started.elapsed();
            assert!(spent >= Duration::from_millis(20), "{mode:?} spent {spent:?}");
            assert!(elapsed < Duration::from_millis(200), "{mode:?} took {elapsed:?}");
        }
    }

    fn batch_of_five() -> Batch {
        let mut data = Vec::new();
        for seq in 0..5 {
            push_data_frame(&mut data, seq, 0, &[seq as u8; 100]);
        }
        Batch {
            len: data.len(),
            data,
            events: 5,
            payload_bytes: 500,
            sent_at: Instant::now(),
            origin: None,
        }
    }

    #[test]
    fn work_units_shrink_as_cost_grows() {
        let args = |cost: &str| {
            crate::instance::Args::try_parse_from([
                "mock-ersap",
                "--role",
                "processor",
                "--run-id",
                "r",
                "--stage",
                "s",
                "--cost-ns-per-byte",
                cost,
            ])
            .expect("valid arguments")
        };
        let batch = batch_of_five();
        assert_eq!(work_unit_events(&args("0"), &batch), 5);
        // 100 bytes at 1 ns/byte cost 100 ns, so 10,000 events fit in 1 ms.
        assert_eq!(work_unit_events(&args("1"), &batch), 10_000);
        // 100 bytes at 50,000 ns/byte cost 5 ms, more than one unit.
        assert_eq!(work_unit_events(&args("50000"), &batch), 1);
    }

    #[test]
    fn costly_batch_splits_into_single_events() {
        let pool = BufferPool::new(8);
        let mut units = Vec::new();
        split_into_units(batch_of_five(), 2, &pool, |unit| units.push(unit));

        let counts: Vec<u64> = units.iter().map(|unit| unit.events).collect();
        assert_eq!(counts, vec![2, 2, 1]);
        let seqs: Vec<u64> = units
            .iter()
            .flat_map(|unit| FrameReader::new(unit.frames()).map(|f| f.expect("valid").header.seq))
            .collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
        assert_eq!(units[2].payload_bytes, 100);
        assert_eq!(units[2].len, HEADER_LEN + 100);
    }

    #[test]
    fn cheap_batch_passes_unsplit() {
        let pool = BufferPool::new(8);
        let mut units = Vec::new();
        split_into_units(batch_of_five(), 5, &pool, |unit| units.push(unit));
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].events, 5);
    }

    #[test]
    fn resize_keeps_sequence_and_pads_payload() {
        let mut data = Vec::new();
        push_data_frame(&mut data, 7, 100, &[1; 10]);
        push_data_frame(&mut data, 8, 200, &[2; 10]);
        let input = Batch {
            len: data.len(),
            data,
            events: 2,
            payload_bytes: 20,
            sent_at: Instant::now(),
            origin: None,
        };

        let grown = resize_events(&input, 16, vec![0xff; 4]);
        let frames: Vec<_> =
            FrameReader::new(grown.frames()).map(|f| f.expect("valid frame")).collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].header, FrameHeader::data(7, 100, 16));
        assert_eq!(frames[1].header, FrameHeader::data(8, 200, 16));
        assert_eq!(&frames[1].payload[..10], &[2; 10]);
        assert_eq!(&frames[1].payload[10..], &[0; 6]);
        assert_eq!(grown.payload_bytes, 32);

        let shrunk = resize_events(&input, 4, Vec::new());
        let frames: Vec<_> =
            FrameReader::new(shrunk.frames()).map(|f| f.expect("valid frame")).collect();
        assert_eq!(frames[0].payload, &[1; 4]);
        assert_eq!(shrunk.len, 2 * (HEADER_LEN + 4));
    }
}
