//! Outbound connections to downstream replicas and the round-robin router over them.
//!
//! Every target from `PUT /targets` gets one TCP connection and one link thread that owns it.
//! Producers (a source's generator, a processor's workers) hand whole batches to the
//! [`Router`], which picks the next live link in turn and queues the batch on that link's
//! channel. The link thread applies the emulated latency and bandwidth ([`Shaper`]), writes
//! through a large buffered writer and flushes whenever nothing more is waiting.
//!
//! Every event a link is handed stays in the link's unacknowledged buffer until the receiver
//! acknowledges its sequence number with an ack frame on the same connection, which the
//! link's ack reader thread reads. A buffer contains at most [`WINDOW_EVENTS`] events or
//! [`WINDOW_BYTES`] bytes; beyond that, producers wait.
//!
//! A link fails when a write or a read fails or the receiver closes the connection while
//! events are unacknowledged. The router then skips it, and its ack reader replays the
//! unacknowledged events over the remaining links, round robin, counting them in `replayed`.
//! The replayed events may reach a receiver twice, never zero times.
//!
//! On a drain, producers first wait until every event is acknowledged, then a `Close` message
//! queued behind the data writes the end frame. A link dropped by a later `PUT /targets`
//! closes without one, because its receiver will not count it among its expected ends: the
//! link writes what it has queued, and if its events are not all acknowledged within
//! [`RETIRE_GRACE`] (a frozen or dead receiver), its socket is shut down, which wakes a
//! blocked writer, and the rest is replayed.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use orchestrator::control::Target;
use thiserror::Error;
use tracing::{debug, error, info, warn};

use super::ack::AckWriter;
use super::batch::{BATCH_BYTES, Batch, BufferPool};
use super::frame::{FrameHeader, FrameKind, FrameReader, decode_ack};
use super::shaper::Shaper;
use super::stats::Counters;

/// Time during which `PUT /targets` retries a refused connection.
pub const CONNECT_WINDOW: Duration = Duration::from_secs(5);
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Batches a producer may queue on one link before it blocks.
const LINK_CHANNEL_BATCHES: usize = 16;
/// Maximum bytes waiting for their release on a delayed link's own queue. 64 MiB covers
/// 1 Gbit/s at half a second of latency.
const MAX_DELAYED_BYTES: usize = 64 * 1024 * 1024;
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Writes at least this large skip the write buffer. Copying them into it would only add a
/// memory copy, because they are large enough to make one system call worthwhile.
const DIRECT_WRITE_BYTES: usize = 32 * 1024;
/// Maximum unacknowledged events per link before producers wait for acknowledgements.
pub const WINDOW_EVENTS: usize = 65_536;
/// Maximum unacknowledged frame bytes per link before producers wait.
pub const WINDOW_BYTES: usize = 64 * 1024 * 1024;
/// Time a link removed by `PUT /targets` gets to see its events acknowledged before its
/// socket is shut down and the rest is replayed.
pub const RETIRE_GRACE: Duration = Duration::from_secs(1);

/// Invalid or unreachable target in `PUT /targets`.
#[derive(Debug, Error)]
pub enum TargetError {
    #[error("invalid target address {addr:?}: expected host:port")]
    InvalidAddress { addr: String },
    #[error(
        "target {addr} is not a loopback address; an instance bound to loopback sends only \
         to 127.0.0.0/8, ::1 or localhost"
    )]
    NotLoopback { addr: String },
    #[error("failed to resolve target {addr}")]
    Unresolvable {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to connect to target {addr} within {window:?}; is its data port listening?")]
    ConnectFailed {
        addr: String,
        window: Duration,
        #[source]
        source: io::Error,
    },
    #[error("failed to start the link thread for target {addr}")]
    LinkThread {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("the instance has drained and sends nothing more; targets can no longer change")]
    Closed,
}

/// Round-robin distribution of batches over the current links.
#[derive(Debug)]
pub struct Router(Arc<RouterInner>);

/// State of a [`Router`], shared with the ack reader threads that replay a failed link.
#[derive(Debug)]
pub struct RouterInner {
    links: Mutex<Links>,
    changed: Condvar,
    next: AtomicUsize,
    counters: Arc<Counters>,
    pool: Arc<BufferPool>,
    span: tracing::Span,
    /// Events sent and not yet acknowledged, including those being replayed.
    unacked: AtomicU64,
    /// This instance's replica index, which its end frames carry.
    replica: u32,
    weak_self: Weak<RouterInner>,
}

impl Deref for Router {
    type Target = RouterInner;

    fn deref(&self) -> &RouterInner {
        &self.0
    }
}

#[derive(Debug, Default)]
struct Links {
    current: Vec<Arc<Link>>,
    closed: bool,
}

impl Router {
    pub fn new(
        counters: Arc<Counters>,
        pool: Arc<BufferPool>,
        span: tracing::Span,
        replica: u32,
    ) -> Self {
        Self(Arc::new_cyclic(|weak_self| RouterInner {
            links: Mutex::new(Links::default()),
            changed: Condvar::new(),
            next: AtomicUsize::new(0),
            counters,
            pool,
            span,
            unacked: AtomicU64::new(0),
            replica,
            weak_self: weak_self.clone(),
        }))
    }
}

impl RouterInner {
    /// Replaces the set of targets. Links to addresses that stay keep their connection and
    /// take the new latency and bandwidth. New addresses are connected, with retries for up
    /// to [`CONNECT_WINDOW`], before anything changes, so a failure leaves the old set.
    pub fn replace(&self, targets: &[Target], loopback_only: bool) -> Result<(), TargetError> {
        let resolved = targets
            .iter()
            .map(|target| resolve_target(&target.addr, loopback_only))
            .collect::<Result<Vec<_>, _>>()?;

        let mut reusable: Vec<Arc<Link>> = {
            let links = self.lock();
            if links.closed {
                return Err(TargetError::Closed);
            }
            links.current.iter().filter(|link| link.is_alive()).cloned().collect()
        };
        let mut next_links = Vec::with_capacity(targets.len());
        for (target, addr) in targets.iter().zip(resolved) {
            let reused = reusable.iter().position(|link| link.addr == target.addr);
            let link = match reused {
                Some(index) => {
                    let link = reusable.swap_remove(index);
                    link.reconfigure(target);
                    link
                }
                None => {
                    let stream = connect_with_retries(&target.addr, addr)?;
                    Link::spawn(target.clone(), stream, self)?
                }
            };
            next_links.push(link);
        }

        let dropped = {
            let mut links = self.lock();
            if links.closed {
                return Err(TargetError::Closed);
            }
            let old = std::mem::replace(&mut links.current, next_links);
            old.into_iter()
                .filter(|link| !links.current.iter().any(|kept| Arc::ptr_eq(kept, link)))
                .collect::<Vec<_>>()
        };
        self.changed.notify_all();
        for link in dropped {
            info!(target_addr = %link.addr, "closing link to a removed target");
            link.retire();
        }
        Ok(())
    }

    /// Blocks until every event sent so far is acknowledged, replays included.
    pub fn wait_until_acked(&self) {
        while self.unacked.load(Ordering::Acquire) > 0 {
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Number of events sent and not yet acknowledged.
    pub fn unacked_events(&self) -> u64 {
        self.unacked.load(Ordering::Acquire)
    }

    /// Number of links that have not failed.
    pub fn live_links(&self) -> usize {
        self.lock().current.iter().filter(|link| link.is_alive()).count()
    }

    /// Blocks until at least one live link exists.
    pub fn wait_for_links(&self) {
        let mut links = self.lock();
        while !links.current.iter().any(|link| link.is_alive()) {
            // Dead links do not signal, so the wait also rechecks now and then.
            links = self
                .changed
                .wait_timeout(links, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Queues `batch` on the next live link, waiting for targets if none is live. After
    /// [`RouterInner::close_all`] the batch is dropped and counted as lost.
    pub fn send(&self, mut batch: Batch) {
        loop {
            let link = {
                let links = self.lock();
                if links.closed {
                    drop(links);
                    warn!(events = batch.events, "events arrived after the drain; dropped");
                    Counters::add(&self.counters.lost, batch.events);
                    self.pool.give_back(batch.data);
                    return;
                }
                let live = || links.current.iter().filter(|link| link.is_alive());
                match live().count() {
                    0 => None,
                    count => {
                        let turn = self.next.fetch_add(1, Ordering::Relaxed) % count;
                        live().nth(turn).cloned()
                    }
                }
            };
            let Some(link) = link else {
                self.wait_for_links();
                continue;
            };
            // A link closed since it was picked has no sender any more; pick again.
            let Some(tx) = link.sender() else {
                continue;
            };
            // A link whose buffer was taken for replay rejects the batch; pick again.
            let sent = match link.register(batch, self) {
                Ok(sent) => sent,
                Err(returned) => {
                    batch = returned;
                    continue;
                }
            };
            if tx.send(LinkMessage::Data(sent)).is_err() {
                // The link thread has exited after a failure. The batch is in the link's
                // unacknowledged buffer, which its ack reader replays.
                link.alive.store(false, Ordering::Release);
            }
            return;
        }
    }

    /// Sends the unacknowledged events of a failed or removed link to the other links.
    fn replay(&self, link: &Link) {
        let (batches, taken) = link.take_for_replay();
        let events: u64 = batches.iter().map(|batch| batch.events).sum();
        if events > 0 {
            warn!(target_addr = %link.addr, events, "replaying unacknowledged events to the other targets");
            Counters::add(&self.counters.replayed, events);
        }
        for batch in batches {
            // `send` counts the events that are new on their new link.
            self.send(batch);
        }
        // Subtracted only now, so that the count never drops to zero while a replay is on
        // its way.
        self.unacked.fetch_sub(taken, Ordering::AcqRel);
    }

    /// Writes an end frame on every live link, closes them all and waits until they are
    /// flushed. Afterwards the router accepts no new targets.
    pub fn close_all(&self) {
        let links = {
            let mut links = self.lock();
            links.closed = true;
            std::mem::take(&mut links.current)
        };
        for link in &links {
            link.close(true);
        }
        for link in &links {
            link.join();
        }
    }

    /// Shuts every link down at once and drops everything sent afterwards, as a dead
    /// process would: nothing is replayed and no end frame is written.
    #[cfg(test)]
    pub(crate) fn kill(&self) {
        let links = {
            let mut links = self.lock();
            links.closed = true;
            std::mem::take(&mut links.current)
        };
        for link in links {
            link.lock_unacked().closed = true;
            link.abort();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Unacknowledged events with consecutive sequence numbers `[start, end)` whose frames,
/// all `frame_len` bytes long, follow each other in `batch` from byte `offset` on.
#[derive(Debug, Clone)]
struct StoredRun {
    end: u64,
    batch: Arc<StoredBatch>,
    offset: usize,
    frame_len: usize,
}

impl StoredRun {
    /// Returns the part of the run from sequence number `start` (the run's start is `from`).
    fn suffix(&self, from: u64, start: u64) -> StoredRun {
        let mut rest = self.clone();
        rest.offset += (start - from) as usize * self.frame_len;
        rest
    }
}

/// Frames of a sent batch, shared by the link writer and the unacknowledged events. The
/// buffer goes back to the pool once it is written and all its events are acknowledged.
#[derive(Debug)]
struct StoredBatch {
    data: Vec<u8>,
    len: usize,
    origin: Option<Arc<AckWriter>>,
    pool: Arc<BufferPool>,
}

impl StoredBatch {
    fn frames(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl Drop for StoredBatch {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.data));
    }
}

/// Batch queued on a link's channel.
#[derive(Debug)]
struct SentBatch {
    stored: Arc<StoredBatch>,
    events: u64,
    payload_bytes: u64,
    /// Instant at which the batch was handed to the link. The link adds its latency to it.
    sent_at: Instant,
}

/// Unacknowledged events of one link as disjoint runs, keyed by their first sequence number.
/// Keeping runs instead of single events makes the cost per batch and per ack range, not
/// per event.
#[derive(Debug, Default)]
struct Unacked {
    runs: BTreeMap<u64, StoredRun>,
    events: usize,
    bytes: usize,
    /// Set once the events were taken for replay. The link accepts no more.
    closed: bool,
    /// Events stored once that arrived again from another upstream connection (a replay
    /// upstream can send an event a second time through another processor). Their acks go
    /// to that connection too, so that its sender is not left waiting.
    also_ack: Vec<(Range<u64>, Arc<AckWriter>)>,
}

/// One outbound connection and the thread that writes to it.
///
/// Closing a link drops its sender after queueing the `Close` message, and the link thread
/// finishes only once the channel is disconnected. A producer that picked the link just
/// before it closed still has a clone of the sender, so its batch is written, before the
/// end frame, instead of being lost in the channel.
#[derive(Debug)]
struct Link {
    /// Target as last configured. Only latency and bandwidth change after the link connects.
    target: Mutex<Target>,
    addr: String,
    /// Sender of the link's channel; `None` once the link is closed.
    tx: Mutex<Option<Sender<LinkMessage>>>,
    alive: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Handle on the connection for shutting it down from other threads.
    socket: TcpStream,
    unacked: Mutex<Unacked>,
    /// Signalled when acknowledgements free room in the window, or the buffer is taken.
    acked: Condvar,
}

enum LinkMessage {
    Data(SentBatch),
    Reconfigure { latency_us: u64, bandwidth_bps: u64 },
    Close { send_end: bool, sent_at: Instant },
}

impl std::fmt::Debug for LinkMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkMessage::Data(batch) => write!(f, "Data({} events)", batch.events),
            LinkMessage::Reconfigure { .. } => f.write_str("Reconfigure"),
            LinkMessage::Close { send_end, .. } => write!(f, "Close(send_end: {send_end})"),
        }
    }
}

impl Link {
    fn spawn(
        target: Target,
        stream: TcpStream,
        router: &RouterInner,
    ) -> Result<Arc<Self>, TargetError> {
        let thread_error = |source| TargetError::LinkThread { addr: target.addr.clone(), source };
        let socket = stream.try_clone().map_err(thread_error)?;
        let ack_stream = stream.try_clone().map_err(thread_error)?;
        let (tx, rx) = crossbeam_channel::bounded(LINK_CHANNEL_BATCHES);
        let alive = Arc::new(AtomicBool::new(true));
        let writer = LinkWriter {
            addr: target.addr.clone(),
            stream: BufWriter::with_capacity(WRITE_BUFFER_BYTES, stream),
            rx,
            shaper: Shaper::new(target.latency_us, target.bandwidth_bps),
            queue: VecDeque::new(),
            queued_bytes: 0,
            frames_sent: 0,
            counters: Arc::clone(&router.counters),
            alive: Arc::clone(&alive),
            replica: router.replica,
        };
        let span = router.span.clone();
        let thread = thread::Builder::new()
            .name(format!("link-{}", target.addr))
            .spawn(move || {
                let _entered = span.enter();
                writer.run();
            })
            .map_err(thread_error)?;
        let link = Arc::new(Self {
            addr: target.addr.clone(),
            target: Mutex::new(target),
            tx: Mutex::new(Some(tx)),
            alive,
            thread: Mutex::new(Some(thread)),
            socket,
            unacked: Mutex::new(Unacked::default()),
            acked: Condvar::new(),
        });
        let ack_reader = AckReader {
            link: Arc::clone(&link),
            router: router.weak_self.clone(),
            stream: ack_stream,
        };
        let span = router.span.clone();
        thread::Builder::new()
            .name(format!("acks-{}", link.addr))
            .spawn(move || {
                let _entered = span.enter();
                ack_reader.run();
            })
            .map_err(|source| {
                link.abort();
                TargetError::LinkThread { addr: link.addr.clone(), source }
            })?;
        Ok(link)
    }

    /// Stores the events of `batch` as unacknowledged, after waiting for room in the window.
    /// Returns the batch unchanged if the link's buffer was taken for replay, so that it
    /// goes elsewhere.
    fn register(&self, batch: Batch, router: &RouterInner) -> Result<SentBatch, Batch> {
        let mut state = self.lock_unacked();
        loop {
            if state.closed {
                return Err(batch);
            }
            if state.events < WINDOW_EVENTS && state.bytes < WINDOW_BYTES {
                break;
            }
            state = self
                .acked
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let (events, payload_bytes) = (batch.events, batch.payload_bytes);
        let stored = Arc::new(StoredBatch {
            data: batch.data,
            len: batch.len,
            origin: batch.origin,
            pool: Arc::clone(&router.pool),
        });
        let mut added = 0;
        let mut offset = 0;
        let mut pending: Option<(u64, StoredRun)> = None;
        for frame in FrameReader::new(stored.frames()) {
            let Ok(frame) = frame else { break };
            let frame_len = frame.header.frame_len();
            if frame.header.kind == FrameKind::Data {
                let seq = frame.header.seq;
                match &mut pending {
                    Some((_, run)) if run.end == seq && run.frame_len == frame_len => {
                        run.end += 1;
                    }
                    _ => {
                        if let Some((start, run)) = pending.take() {
                            added += state.insert(start, run);
                        }
                        let run = StoredRun {
                            end: seq.saturating_add(1),
                            batch: Arc::clone(&stored),
                            offset,
                            frame_len,
                        };
                        pending = Some((seq, run));
                    }
                }
            }
            offset += frame_len;
        }
        if let Some((start, run)) = pending {
            added += state.insert(start, run);
        }
        drop(state);
        router.unacked.fetch_add(added, Ordering::AcqRel);
        Ok(SentBatch { stored, events, payload_bytes, sent_at: Instant::now() })
    }

    /// Forgets the acknowledged events and, in a processor, acknowledges them upstream.
    fn acknowledge(&self, ranges: &[Range<u64>], router: &RouterInner) {
        let mut upstream: Vec<(Arc<AckWriter>, Vec<Range<u64>>)> = Vec::new();
        let mut removed = 0;
        {
            let mut state = self.lock_unacked();
            for range in ranges {
                for (start, run) in state.take_overlapping(range.start, range.end) {
                    let (from, to) = (start.max(range.start), run.end.min(range.end));
                    removed += to - from;
                    if start < range.start {
                        let mut left = run.clone();
                        left.end = range.start;
                        state.restore(start, left);
                    }
                    if run.end > range.end {
                        state.restore(range.end, run.suffix(start, range.end));
                    }
                    if let Some(origin) = &run.batch.origin {
                        add_upstream(&mut upstream, origin, from..to);
                    }
                }
                for (acked, writer) in state.take_also_acked(range) {
                    add_upstream(&mut upstream, &writer, acked);
                }
            }
        }
        self.acked.notify_all();
        router.unacked.fetch_sub(removed, Ordering::AcqRel);
        for (writer, mut acked) in upstream {
            writer.send(&merge_ranges(&mut acked));
        }
    }

    /// Takes every unacknowledged event, in sequence order, as batches of at most
    /// [`BATCH_BYTES`], and closes the buffer to new events. Also returns how many events
    /// the buffer held.
    fn take_for_replay(&self) -> (Vec<Batch>, u64) {
        let (runs, also_ack, taken) = {
            let mut state = self.lock_unacked();
            state.closed = true;
            state.bytes = 0;
            let taken = std::mem::take(&mut state.events) as u64;
            (std::mem::take(&mut state.runs), std::mem::take(&mut state.also_ack), taken)
        };
        self.acked.notify_all();

        let mut batches: Vec<Batch> = Vec::new();
        for (start, run) in &runs {
            for index in 0..(run.end - start) as usize {
                let offset = run.offset + index * run.frame_len;
                let frame = &run.batch.frames()[offset..offset + run.frame_len];
                push_replayed_frame(&mut batches, frame, &run.batch.origin);
            }
        }
        // An event that also came from a second connection is replayed once more with that
        // connection as its origin, so that both senders get their acknowledgement. The sink
        // counts the extra copy as a duplicate.
        for (range, writer) in also_ack {
            let origin = Some(writer);
            for seq in range {
                let Some((start, run)) = runs.range(..=seq).next_back() else { continue };
                if run.end <= seq {
                    continue;
                }
                let offset = run.offset + (seq - start) as usize * run.frame_len;
                let frame = &run.batch.frames()[offset..offset + run.frame_len];
                push_replayed_frame(&mut batches, frame, &origin);
            }
        }
        (batches, taken)
    }

    /// Marks the link failed and shuts its socket down, which wakes its writer and its ack
    /// reader; the ack reader then replays what is unacknowledged.
    fn abort(&self) {
        self.alive.store(false, Ordering::Release);
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    /// Closes a link removed from the targets without an end frame. Its writer finishes
    /// what is queued; what is still unacknowledged after [`RETIRE_GRACE`] is replayed.
    fn retire(self: Arc<Self>) {
        self.alive.store(false, Ordering::Release);
        // Dropping the sender, instead of queueing a `Close`, never blocks on a full channel.
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let link = Arc::clone(&self);
        let spawned =
            thread::Builder::new().name(format!("retire-{}", self.addr)).spawn(move || {
                let deadline = Instant::now() + RETIRE_GRACE;
                let mut state = link.lock_unacked();
                while state.events > 0 && !state.closed && Instant::now() < deadline {
                    state = link
                        .acked
                        .wait_timeout(state, Duration::from_millis(20))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                drop(state);
                link.abort();
            });
        if spawned.is_err() {
            self.abort();
        }
    }

    fn lock_unacked(&self) -> std::sync::MutexGuard<'_, Unacked> {
        self.unacked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Applies the latency and bandwidth of `target` if they differ from the current ones.
    fn reconfigure(&self, target: &Target) {
        let mut current = self.target.lock().unwrap_or_else(|e| e.into_inner());
        if *current == *target {
            return;
        }
        *current = target.clone();
        let (latency_us, bandwidth_bps) = (target.latency_us, target.bandwidth_bps);
        if let Some(tx) = self.sender() {
            let _ = tx.send(LinkMessage::Reconfigure { latency_us, bandwidth_bps });
        }
    }

    fn sender(&self) -> Option<Sender<LinkMessage>> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn close(&self, send_end: bool) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(LinkMessage::Close { send_end, sent_at: Instant::now() });
        }
    }

    fn join(&self) {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                error!(target_addr = %self.addr, "link thread panicked");
            }
        }
    }
}

impl Unacked {
    /// Adds the events of `run` that are not stored yet and returns how many it added. A
    /// sequence number already stored (an event sent twice) keeps its first frame, and the
    /// connection the second copy came from is noted in `also_ack`.
    fn insert(&mut self, start: u64, run: StoredRun) -> u64 {
        let mut covered: Vec<(u64, u64, Option<Arc<AckWriter>>)> = self
            .runs
            .range(..run.end)
            .rev()
            .take_while(|(_, stored)| stored.end > start)
            .map(|(from, stored)| (*from, stored.end, stored.batch.origin.clone()))
            .collect();
        covered.reverse();
        let mut added = 0;
        let mut cursor = start;
        for (from, to, stored_origin) in covered {
            if from > cursor {
                let mut gap = run.suffix(start, cursor);
                gap.end = from;
                added += from - cursor;
                self.restore(cursor, gap);
            }
            if let Some(origin) = &run.batch.origin {
                if !same_origin(&stored_origin, &run.batch.origin) {
                    self.also_ack.push((from.max(start)..to.min(run.end), Arc::clone(origin)));
                }
            }
            cursor = cursor.max(to);
        }
        if run.end > cursor {
            let mut gap = run.suffix(start, cursor);
            gap.end = run.end;
            added += run.end - cursor;
            self.restore(cursor, gap);
        }
        added
    }

    /// Removes from `also_ack` the parts inside `acked` and returns them with their writers.
    fn take_also_acked(&mut self, acked: &Range<u64>) -> Vec<(Range<u64>, Arc<AckWriter>)> {
        if self.also_ack.is_empty() {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut kept = Vec::with_capacity(self.also_ack.len());
        for (range, writer) in self.also_ack.drain(..) {
            let (from, to) = (range.start.max(acked.start), range.end.min(acked.end));
            if from >= to {
                kept.push((range, writer));
                continue;
            }
            if range.start < from {
                kept.push((range.start..from, Arc::clone(&writer)));
            }
            if to < range.end {
                kept.push((to..range.end, Arc::clone(&writer)));
            }
            taken.push((from..to, writer));
        }
        self.also_ack = kept;
        taken
    }

    /// Stores a run known to overlap no other.
    fn restore(&mut self, start: u64, run: StoredRun) {
        let events = (run.end - start) as usize;
        self.events += events;
        self.bytes += events * run.frame_len;
        self.runs.insert(start, run);
    }

    /// Removes and returns the runs that overlap `[start, end)`.
    fn take_overlapping(&mut self, start: u64, end: u64) -> Vec<(u64, StoredRun)> {
        let keys: Vec<u64> = self
            .runs
            .range(..end)
            .rev()
            .take_while(|(_, run)| run.end > start)
            .map(|(from, _)| *from)
            .collect();
        let mut taken = Vec::with_capacity(keys.len());
        for key in keys {
            let run = self.runs.remove(&key).expect("key was just listed");
            let events = (run.end - key) as usize;
            self.events -= events;
            self.bytes -= events * run.frame_len;
            taken.push((key, run));
        }
        taken
    }
}

/// Sorts `ranges` and merges those that touch or overlap.
fn merge_ranges(ranges: &mut [Range<u64>]) -> Vec<Range<u64>> {
    ranges.sort_unstable_by_key(|range| range.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges.iter() {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range.clone()),
        }
    }
    merged
}

/// Adds `range` to the ranges acknowledged to `writer`.
fn add_upstream(
    upstream: &mut Vec<(Arc<AckWriter>, Vec<Range<u64>>)>,
    writer: &Arc<AckWriter>,
    range: Range<u64>,
) {
    match upstream.iter_mut().find(|(known, _)| Arc::ptr_eq(known, writer)) {
        Some((_, acked)) => acked.push(range),
        None => upstream.push((Arc::clone(writer), vec![range])),
    }
}

/// Appends one frame to the last replay batch, or to a new one if it is full or its events
/// came from another connection.
fn push_replayed_frame(batches: &mut Vec<Batch>, frame: &[u8], origin: &Option<Arc<AckWriter>>) {
    let fits = batches.last().is_some_and(|batch| {
        batch.len + frame.len() <= BATCH_BYTES && same_origin(&batch.origin, origin)
    });
    if !fits {
        batches.push(Batch {
            data: Vec::with_capacity(BATCH_BYTES.max(frame.len())),
            len: 0,
            events: 0,
            payload_bytes: 0,
            sent_at: Instant::now(),
            origin: origin.clone(),
        });
    }
    let batch = batches.last_mut().expect("a batch was just pushed");
    batch.data.extend_from_slice(frame);
    batch.len += frame.len();
    batch.events += 1;
    batch.payload_bytes += (frame.len() - super::frame::HEADER_LEN) as u64;
}

fn same_origin(a: &Option<Arc<AckWriter>>, b: &Option<Arc<AckWriter>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Thread that reads a link's ack frames until the connection ends, then replays whatever
/// is still unacknowledged.
struct AckReader {
    link: Arc<Link>,
    router: Weak<RouterInner>,
    stream: TcpStream,
}

impl AckReader {
    fn run(mut self) {
        let addr = self.link.addr.clone();
        match self.read_until_closed() {
            Ok(()) => debug!(target_addr = %addr, "target closed the connection"),
            Err(err) => warn!(target_addr = %addr, error = %err, "reading acknowledgements failed"),
        }
        // Whatever ended the connection, this link carries nothing more.
        self.link.abort();
        if let Some(router) = self.router.upgrade() {
            router.replay(&self.link);
        }
    }

    fn read_until_closed(&mut self) -> io::Result<()> {
        let mut buf = vec![0; 64 * 1024];
        let mut filled = 0;
        loop {
            if filled == buf.len() {
                let grown = buf.len() * 2;
                buf.resize(grown, 0);
            }
            let n = match self.stream.read(&mut buf[filled..]) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            filled += n;
            let Some(router) = self.router.upgrade() else { return Ok(()) };
            let mut reader = FrameReader::new(&buf[..filled]);
            for frame in reader.by_ref() {
                let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidData, message);
                let frame = frame.map_err(|err| invalid(err.to_string()))?;
                if frame.header.kind != FrameKind::Ack {
                    return Err(invalid(format!(
                        "unexpected {:?} frame from a target",
                        frame.header.kind
                    )));
                }
                let ranges = decode_ack(&frame.header, frame.payload)
                    .map_err(|err| invalid(err.to_string()))?;
                self.link.acknowledge(&ranges, &router);
            }
            let consumed = reader.consumed();
            buf.copy_within(consumed..filled, 0);
            filled -= consumed;
        }
    }
}

/// State of a link thread.
struct LinkWriter {
    addr: String,
    stream: BufWriter<TcpStream>,
    rx: Receiver<LinkMessage>,
    shaper: Shaper,
    /// Batches received but not yet released by the latency.
    queue: VecDeque<SentBatch>,
    queued_bytes: usize,
    frames_sent: u64,
    counters: Arc<Counters>,
    alive: Arc<AtomicBool>,
    replica: u32,
}

/// `Close` message received by a link thread.
#[derive(Debug, Clone, Copy)]
struct CloseRequest {
    send_end: bool,
    sent_at: Instant,
}

impl LinkWriter {
    fn run(mut self) {
        debug!(target_addr = %self.addr, "link started");
        match self.stream_until_closed() {
            Ok(()) => debug!(target_addr = %self.addr, frames = self.frames_sent, "link closed"),
            Err(err) => {
                error!(
                    target_addr = %self.addr,
                    error = %err,
                    "failed to write to target; its unacknowledged events will be replayed"
                );
                self.alive.store(false, Ordering::Release);
                // Wakes the ack reader, which replays the link's unacknowledged events.
                let _ = self.stream.get_ref().shutdown(Shutdown::Both);
                self.discard_until_closed();
            }
        }
    }

    /// Writes until the channel is disconnected and everything received is written, then
    /// closes the connection, with an end frame if a `Close` message asked for one.
    fn stream_until_closed(&mut self) -> io::Result<()> {
        let mut close: Option<CloseRequest> = None;
        let mut disconnected = false;
        loop {
            // Take in everything that is already waiting.
            while !disconnected && self.queued_bytes < MAX_DELAYED_BYTES {
                match self.rx.try_recv() {
                    Ok(message) => self.accept(message, &mut close),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => disconnected = true,
                }
            }
            self.write_released()?;

            if disconnected && self.queue.is_empty() {
                // Without a close request every sender was dropped, as when the instance
                // itself goes away, so the link ends without an end frame.
                let request =
                    close.unwrap_or(CloseRequest { send_end: false, sent_at: Instant::now() });
                return self.finish(request);
            }

            // Nothing more is due now, so write out the buffered bytes before waiting.
            self.stream.flush()?;
            let release = self.queue.front().map(|head| self.shaper.release_at(head.sent_at));
            let can_take_more = !disconnected && self.queued_bytes < MAX_DELAYED_BYTES;
            match (release, can_take_more) {
                (None, true) => match self.rx.recv() {
                    Ok(message) => self.accept(message, &mut close),
                    Err(_) => disconnected = true,
                },
                (Some(release), true) => match self.rx.recv_deadline(release) {
                    Ok(message) => self.accept(message, &mut close),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => disconnected = true,
                },
                (Some(release), false) => sleep_until(release),
                (None, false) => {}
            }
        }
    }

    fn accept(&mut self, message: LinkMessage, close: &mut Option<CloseRequest>) {
        match message {
            LinkMessage::Data(batch) => {
                self.queued_bytes += batch.stored.len;
                self.queue.push_back(batch);
            }
            LinkMessage::Reconfigure { latency_us, bandwidth_bps } => {
                info!(target_addr = %self.addr, latency_us, bandwidth_bps, "link reconfigured");
                self.shaper.reconfigure(latency_us, bandwidth_bps);
            }
            LinkMessage::Close { send_end, sent_at } => {
                *close = Some(CloseRequest { send_end, sent_at });
            }
        }
    }

    /// Writes the queued batches whose latency has elapsed, in order.
    fn write_released(&mut self) -> io::Result<()> {
        while let Some(head) = self.queue.front() {
            if self.shaper.release_at(head.sent_at) > Instant::now() {
                return Ok(());
            }
            let batch = self.queue.pop_front().expect("queue has a head");
            self.queued_bytes -= batch.stored.len;
            self.write_paced(batch.stored.frames())?;
            self.frames_sent += batch.events;
            Counters::add(&self.counters.events_out, batch.events);
            Counters::add(&self.counters.bytes_out, batch.payload_bytes);
        }
        Ok(())
    }

    fn write_paced(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.shaper.is_transparent() {
            return self.write(bytes);
        }
        for piece in bytes.chunks(self.shaper.max_write_len()) {
            let start = self.shaper.reserve(Instant::now(), piece.len());
            if start > Instant::now() {
                self.stream.flush()?;
                sleep_until(start);
            }
            self.write(piece)?;
        }
        Ok(())
    }

    /// Writes `bytes` through the write buffer, or straight to the socket if they are large.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() < DIRECT_WRITE_BYTES {
            return self.stream.write_all(bytes);
        }
        self.stream.flush()?;
        self.stream.get_mut().write_all(bytes)
    }

    fn finish(&mut self, request: CloseRequest) -> io::Result<()> {
        if request.send_end {
            // The end frame is delayed like any other frame.
            sleep_until(self.shaper.release_at(request.sent_at));
            self.write_paced(&FrameHeader::end(self.frames_sent, Some(self.replica)).to_bytes())?;
        }
        self.stream.flush()?;
        self.stream.get_ref().shutdown(Shutdown::Write)
    }

    /// Drops everything still queued or sent to this dead link, until every sender is gone.
    /// The events are not lost: they stay in the link's unacknowledged buffer for replay.
    fn discard_until_closed(&mut self) {
        self.queue.clear();
        // Dropping a batch returns its buffer to the pool once its events are replayed.
        for message in self.rx.iter() {
            drop(message);
        }
    }
}

/// Parses `host:port` and, for an instance bound to loopback, rejects every host that is not
/// a loopback address. Such an instance resolves no names other than `localhost`, so it
/// never looks up, let alone contacts, another host.
pub fn resolve_target(addr: &str, loopback_only: bool) -> Result<SocketAddr, TargetError> {
    let invalid = || TargetError::InvalidAddress { addr: addr.to_owned() };
    let (host, port) = addr.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if host.is_empty() {
        return Err(invalid());
    }
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);

    let literal = if host.eq_ignore_ascii_case("localhost") {
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
    } else {
        host.parse::<IpAddr>().ok()
    };
    match literal {
        Some(ip) if loopback_only && !ip.is_loopback() => {
            Err(TargetError::NotLoopback { addr: addr.to_owned() })
        }
        Some(ip) => Ok(SocketAddr::new(ip, port)),
        None if loopback_only => Err(TargetError::NotLoopback { addr: addr.to_owned() }),
        None => (host, port)
            .to_socket_addrs()
            .map_err(|source| TargetError::Unresolvable { addr: addr.to_owned(), source })?
            .next()
            .ok_or_else(|| TargetError::Unresolvable {
                addr: addr.to_owned(),
                source: io::Error::new(io::ErrorKind::NotFound, "no address for host"),
            }),
    }
}

fn connect_with_retries(addr_text: &str, addr: SocketAddr) -> Result<TcpStream, TargetError> {
    let deadline = Instant::now() + CONNECT_WINDOW;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = TcpStream::connect_timeout(&addr, remaining.max(Duration::from_millis(10)));
        match attempt {
            Ok(stream) => {
                // Batching already groups small frames, so Nagle's delay would only add latency.
                let _ = stream.set_nodelay(true);
                info!(target_addr = %addr_text, "connected to target");
                return Ok(stream);
            }
            Err(source) if Instant::now() + CONNECT_RETRY_PAUSE >= deadline => {
                return Err(TargetError::ConnectFailed {
                    addr: addr_text.to_owned(),
                    window: CONNECT_WINDOW,
                    source,
                });
            }
            Err(err) => {
                debug!(target_addr = %addr_text, error = %err, "connect failed; retrying");
                thread::sleep(CONNECT_RETRY_PAUSE);
            }
        }
    }
}

fn sleep_until(instant: Instant) {
    let now = Instant::now();
    if instant > now {
        thread::sleep(instant - now);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use super::*;
    use crate::instance::frame::{
        FrameKind, FrameReader, coalesce_ranges, push_ack_frame, push_data_frame,
    };
    use crate::instance::stats::unix_now_ns;

    fn router() -> Router {
        Router::new(
            Arc::new(Counters::default()),
            Arc::new(BufferPool::new(4)),
            tracing::Span::none(),
            0,
        )
    }

    fn batch_of(seqs: std::ops::Range<u64>) -> Batch {
        let mut data = Vec::new();
        for seq in seqs.clone() {
            push_data_frame(&mut data, seq, unix_now_ns(), &[0xab; 100]);
        }
        let events = seqs.end - seqs.start;
        Batch {
            len: data.len(),
            data,
            events,
            payload_bytes: events * 100,
            sent_at: Instant::now(),
            origin: None,
        }
    }

    /// Reads a whole connection and returns each data frame's sequence number with the delay
    /// between its creation and its arrival, plus the end frame's count. It acknowledges the
    /// events of every read, as a sink does.
    fn read_all(listener: &TcpListener) -> (Vec<(u64, Duration)>, Option<u64>) {
        let (mut stream, _) = listener.accept().expect("link connects");
        let mut pending = Vec::new();
        let mut arrivals = Vec::new();
        let mut end = None;
        let mut chunk = vec![0; 64 * 1024];
        loop {
            let n = stream.read(&mut chunk).expect("read succeeds");
            if n == 0 {
                return (arrivals, end);
            }
            let now = unix_now_ns();
            pending.extend_from_slice(&chunk[..n]);
            let mut reader = FrameReader::new(&pending);
            let mut seqs = Vec::new();
            for frame in reader.by_ref() {
                let frame = frame.expect("valid frame");
                match frame.header.kind {
                    FrameKind::Data => {
                        seqs.push(frame.header.seq);
                        arrivals.push((
                            frame.header.seq,
                            Duration::from_nanos(now - frame.header.created_ns),
                        ));
                    }
                    FrameKind::End => end = Some(frame.header.seq),
                    FrameKind::Ack => panic!("a link sent an ack frame"),
                }
            }
            let consumed = reader.consumed();
            pending.drain(..consumed);
            let mut ack = Vec::new();
            push_ack_frame(&mut ack, &coalesce_ranges(&mut seqs));
            // The link may have closed its side already; its acks no longer matter then.
            let _ = stream.write_all(&ack);
        }
    }

    #[test]
    fn link_delays_frames_by_latency_and_keeps_order() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let reader = thread::spawn(move || read_all(&listener));

        let router = router();
        let latency = Duration::from_millis(40);
        let target = Target { addr, latency_us: latency.as_micros() as u64, bandwidth_bps: 0 };
        router.replace(&[target], true).expect("target accepted");
        for start in (0..50).step_by(10) {
            router.send(batch_of(start..start + 10));
            thread::sleep(Duration::from_millis(3));
        }
        router.wait_until_acked();
        router.close_all();

        let (arrivals, end) = reader.join().expect("reader thread");
        let seqs: Vec<u64> = arrivals.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (0..50).collect::<Vec<_>>(), "frames arrived out of order");
        let earliest = arrivals.iter().map(|(_, delay)| *delay).min().expect("arrivals");
        assert!(earliest >= latency, "a frame arrived {earliest:?} after creation");
        assert_eq!(end, Some(50));
        assert_eq!(Counters::get(&router.counters.events_out), 50);
    }

    #[test]
    fn link_paces_to_bandwidth() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let reader = thread::spawn(move || read_all(&listener));

        let router = router();
        // 20 batches of about 1.2 kB each at 800 kbit/s (100 kB/s) take about 240 ms.
        let target = Target { addr, latency_us: 0, bandwidth_bps: 800_000 };
        router.replace(&[target], true).expect("target accepted");
        let started = Instant::now();
        for start in (0..200).step_by(10) {
            router.send(batch_of(start..start + 10));
        }
        router.wait_until_acked();
        router.close_all();
        let elapsed = started.elapsed();
        let (arrivals, _) = reader.join().expect("reader thread");
        assert_eq!(arrivals.len(), 200);
        assert!(elapsed >= Duration::from_millis(200), "24 kB at 100 kB/s took {elapsed:?}");
    }

    #[test]
    fn events_spread_round_robin_over_targets() {
        let listeners: Vec<TcpListener> =
            (0..2).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
        let targets: Vec<Target> = listeners
            .iter()
            .map(|l| Target {
                addr: l.local_addr().expect("addr").to_string(),
                latency_us: 0,
                bandwidth_bps: 0,
            })
            .collect();
        let readers: Vec<_> =
            listeners.into_iter().map(|l| thread::spawn(move || read_all(&l))).collect();

        let router = router();
        router.replace(&targets, true).expect("targets accepted");
        for start in (0..40).step_by(10) {
            router.send(batch_of(start..start + 10));
        }
        router.wait_until_acked();
        router.close_all();
        for reader in readers {
            let (arrivals, end) = reader.join().expect("reader thread");
            assert_eq!(arrivals.len(), 20);
            assert_eq!(end, Some(20));
        }
    }

    #[test]
    fn replacing_targets_loses_no_batches() {
        let listeners: Vec<TcpListener> =
            (0..3).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
        let targets: Vec<Target> = listeners
            .iter()
            .map(|l| Target {
                addr: l.local_addr().expect("addr").to_string(),
                latency_us: 0,
                bandwidth_bps: 0,
            })
            .collect();
        let readers: Vec<_> =
            listeners.into_iter().map(|l| thread::spawn(move || read_all(&l))).collect();

        let router = Arc::new(router());
        router.replace(&targets[..1], true).expect("first target accepted");
        let sender = {
            let router = Arc::clone(&router);
            thread::spawn(move || {
                for start in (0..20_000).step_by(10) {
                    router.send(batch_of(start..start + 10));
                }
            })
        };
        for target in &targets[1..] {
            thread::sleep(Duration::from_millis(5));
            router.replace(std::slice::from_ref(target), true).expect("target accepted");
        }
        sender.join().expect("sender thread");
        router.wait_until_acked();
        router.close_all();

        let mut seqs = Vec::new();
        let mut ends = Vec::new();
        for reader in readers {
            let (arrivals, end) = reader.join().expect("reader thread");
            seqs.extend(arrivals.iter().map(|(seq, _)| *seq));
            ends.push(end);
        }
        assert_eq!(assert_all_present(seqs, 20_000), 0, "events were repeated");
        assert_eq!(&ends[..2], &[None, None], "removed targets get no end frame");
        assert!(ends[2].is_some(), "the last target gets an end frame");
    }

    fn target_of(listener: &TcpListener) -> Target {
        Target {
            addr: listener.local_addr().expect("addr").to_string(),
            latency_us: 0,
            bandwidth_bps: 0,
        }
    }

    /// Checks that `seqs` contains every number of `0..count` and returns how many repeats it
    /// contains.
    fn assert_all_present(mut seqs: Vec<u64>, count: u64) -> usize {
        let total = seqs.len();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs, (0..count).collect::<Vec<_>>(), "some events were lost");
        total - seqs.len()
    }

    #[test]
    fn events_of_a_closed_target_are_replayed() {
        let healthy = TcpListener::bind("127.0.0.1:0").expect("bind");
        let dying = TcpListener::bind("127.0.0.1:0").expect("bind");
        let targets = [target_of(&healthy), target_of(&dying)];
        let healthy_reader = thread::spawn(move || read_all(&healthy));
        // This target reads a little, never acknowledges, and closes: a receiver that dies.
        let dying_reader = thread::spawn(move || {
            let (mut stream, _) = dying.accept().expect("link connects");
            let mut chunk = vec![0; 4096];
            let n = stream.read(&mut chunk).expect("read succeeds");
            assert!(n > 0);
        });

        let router = router();
        router.replace(&targets, true).expect("targets accepted");
        for start in (0..10_000).step_by(10) {
            router.send(batch_of(start..start + 10));
        }
        dying_reader.join().expect("dying reader");
        router.wait_until_acked();
        router.close_all();

        let (arrivals, end) = healthy_reader.join().expect("healthy reader");
        assert_all_present(arrivals.iter().map(|(seq, _)| *seq).collect(), 10_000);
        assert!(end.is_some(), "the remaining target gets an end frame");
        assert!(Counters::get(&router.counters.replayed) > 0, "nothing was replayed");
        assert_eq!(Counters::get(&router.counters.lost), 0);
    }

    #[test]
    fn frozen_target_removed_is_replayed() {
        let frozen = TcpListener::bind("127.0.0.1:0").expect("bind");
        let healthy = TcpListener::bind("127.0.0.1:0").expect("bind");
        let frozen_target = target_of(&frozen);
        let healthy_target = target_of(&healthy);
        // The frozen target accepts and then neither reads nor acknowledges.
        let frozen_holder = thread::spawn(move || {
            let (stream, _) = frozen.accept().expect("link connects");
            thread::sleep(RETIRE_GRACE * 3);
            drop(stream);
        });
        let healthy_reader = thread::spawn(move || read_all(&healthy));

        let router = Arc::new(router());
        router.replace(&[frozen_target], true).expect("target accepted");
        let sender = {
            let router = Arc::clone(&router);
            // Enough bytes to fill the socket buffers, so the writer blocks.
            thread::spawn(move || {
                for start in (0..20_000).step_by(100) {
                    router.send(batch_of(start..start + 100));
                }
            })
        };
        thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        router.replace(&[healthy_target], true).expect("target accepted");
        sender.join().expect("sender thread");
        router.wait_until_acked();
        let waited = started.elapsed();
        router.close_all();

        let (arrivals, end) = healthy_reader.join().expect("healthy reader");
        assert_all_present(arrivals.iter().map(|(seq, _)| *seq).collect(), 20_000);
        assert_eq!(end, Some(arrivals.len() as u64));
        assert!(Counters::get(&router.counters.replayed) > 0, "nothing was replayed");
        assert!(waited < RETIRE_GRACE * 2, "replay took {waited:?}");
        frozen_holder.join().expect("frozen target thread");
    }

    fn stored_run(end: u64) -> StoredRun {
        let pool = Arc::new(BufferPool::new(1));
        let batch = StoredBatch { data: vec![0; 4096], len: 4096, origin: None, pool };
        StoredRun { end, batch: Arc::new(batch), offset: 0, frame_len: 32 }
    }

    #[test]
    fn unacked_runs_stay_disjoint() {
        let mut unacked = Unacked::default();
        assert_eq!(unacked.insert(10, stored_run(20)), 10);
        assert_eq!(unacked.insert(15, stored_run(25)), 5, "only 20..25 is new");
        assert_eq!(unacked.insert(0, stored_run(30)), 15, "0..10 and 25..30 are new");
        assert_eq!(unacked.events, 30);
        assert_eq!(unacked.bytes, 30 * 32);

        let taken = unacked.take_overlapping(12, 22);
        let starts: Vec<u64> = taken.iter().map(|(start, _)| *start).collect();
        assert_eq!(starts, vec![20, 10]);
        assert_eq!(unacked.events, 30 - 15);
        let spans: Vec<(u64, u64)> = unacked.runs.iter().map(|(s, run)| (*s, run.end)).collect();
        assert_eq!(spans, vec![(0, 10), (25, 30)]);
    }

    /// An ack writer on a loopback connection, and the peer that reads its frames.
    fn ack_pair() -> (Arc<AckWriter>, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        (Arc::new(AckWriter::new(writer)), peer)
    }

    fn run_from(end: u64, origin: &Arc<AckWriter>) -> StoredRun {
        let pool = Arc::new(BufferPool::new(1));
        let batch =
            StoredBatch { data: vec![0; 4096], len: 4096, origin: Some(Arc::clone(origin)), pool };
        StoredRun { end, batch: Arc::new(batch), offset: 0, frame_len: 32 }
    }

    #[test]
    fn an_event_from_two_connections_is_acked_to_both() {
        let (first, _first_peer) = ack_pair();
        let (second, _second_peer) = ack_pair();
        let mut unacked = Unacked::default();
        assert_eq!(unacked.insert(0, run_from(10, &first)), 10);
        assert_eq!(unacked.insert(5, run_from(15, &second)), 5, "5..10 is stored already");
        assert_eq!(unacked.also_ack.len(), 1);
        assert_eq!(unacked.also_ack[0].0, 5..10);
        assert!(Arc::ptr_eq(&unacked.also_ack[0].1, &second));

        let acked = unacked.take_also_acked(&(7..20));
        assert_eq!(acked.len(), 1);
        assert_eq!(acked[0].0, 7..10);
        assert!(Arc::ptr_eq(&acked[0].1, &second));
        assert_eq!(unacked.also_ack.len(), 1, "5..7 still waits for its ack");
        assert_eq!(unacked.also_ack[0].0, 5..7);

        // The same connection sending an event twice is not noted.
        assert_eq!(unacked.insert(0, run_from(3, &first)), 0);
        assert_eq!(unacked.also_ack.len(), 1);
    }

    #[test]
    fn ranges_merge_when_they_touch() {
        let mut ranges = vec![5..8, 0..2, 2..4, 7..9];
        assert_eq!(merge_ranges(&mut ranges), vec![0..4, 5..9]);
    }

    #[test]
    fn loopback_instances_reject_other_addresses() {
        let cases = [
            ("127.0.0.1:7000", true),
            ("127.4.5.6:7000", true),
            ("localhost:7000", true),
            ("[::1]:7000", true),
            ("10.1.1.10:7771", false),
            ("192.168.0.5:7000", false),
            ("8.8.8.8:53", false),
            ("farm-node-12:7000", false),
        ];
        for (addr, accepted) in cases {
            let result = resolve_target(addr, true);
            assert_eq!(result.is_ok(), accepted, "{addr}: {result:?}");
            if !accepted {
                assert!(matches!(result, Err(TargetError::NotLoopback { .. })), "{addr}");
            }
        }
    }

    #[test]
    fn malformed_addresses_are_invalid() {
        for addr in ["127.0.0.1", "127.0.0.1:", ":7000", "127.0.0.1:99999", "127.0.0.1:port"] {
            let result = resolve_target(addr, false);
            assert!(matches!(result, Err(TargetError::InvalidAddress { .. })), "{addr}");
        }
    }
}
