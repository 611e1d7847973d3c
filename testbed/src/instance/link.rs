//! Outbound connections to downstream replicas and the round-robin router over them.
//!
//! Every target from `PUT /targets` gets one TCP connection and one link thread that owns it.
//! Producers (a source's generator, a processor's workers) hand whole batches to the
//! [`Router`], which picks the next live link in turn and queues the batch on that link's
//! channel. The link thread applies the emulated latency and bandwidth ([`Shaper`]), writes
//! through a large buffered writer and flushes whenever nothing more is waiting.
//!
//! Shutdown of a link goes through a `Close` message queued behind the data, so everything
//! handed over before it is written first. On a drain the close also writes the end frame. A
//! link dropped by a later `PUT /targets` closes without one, because its receiver will not
//! count it among its expected ends.
//!
//! A link whose write fails is marked dead: the router skips it, and the batches that still
//! reach it are dropped and counted as lost. Nothing is resent.

use std::collections::VecDeque;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use orchestrator::control::Target;
use thiserror::Error;
use tracing::{debug, error, info, warn};

use super::batch::{Batch, BufferPool};
use super::frame::FrameHeader;
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
pub struct Router {
    links: Mutex<Links>,
    changed: Condvar,
    next: AtomicUsize,
    counters: Arc<Counters>,
    pool: Arc<BufferPool>,
    span: tracing::Span,
}

#[derive(Debug, Default)]
struct Links {
    current: Vec<Arc<Link>>,
    closed: bool,
}

impl Router {
    pub fn new(counters: Arc<Counters>, pool: Arc<BufferPool>, span: tracing::Span) -> Self {
        Self {
            links: Mutex::new(Links::default()),
            changed: Condvar::new(),
            next: AtomicUsize::new(0),
            counters,
            pool,
            span,
        }
    }

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
                    Arc::new(Link::spawn(target.clone(), stream, self)?)
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
            link.close(false);
        }
        Ok(())
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

    /// Queues `batch` on the next live link, waiting for targets if none is live.
    pub fn send(&self, mut batch: Batch) {
        loop {
            let link = {
                let links = self.lock();
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
            batch.sent_at = Instant::now();
            match tx.send(LinkMessage::Data(batch)) {
                Ok(()) => return,
                Err(err) => {
                    // The link thread has exited, so the next link gets the batch.
                    link.alive.store(false, Ordering::Release);
                    let LinkMessage::Data(returned) = err.into_inner() else {
                        unreachable!("the message sent was data");
                    };
                    batch = returned;
                }
            }
        }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }
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
}

enum LinkMessage {
    Data(Batch),
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
    fn spawn(target: Target, stream: TcpStream, router: &Router) -> Result<Self, TargetError> {
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
            pool: Arc::clone(&router.pool),
            alive: Arc::clone(&alive),
        };
        let span = router.span.clone();
        let thread = thread::Builder::new()
            .name(format!("link-{}", target.addr))
            .spawn(move || {
                let _entered = span.enter();
                writer.run();
            })
            .map_err(|source| TargetError::LinkThread { addr: target.addr.clone(), source })?;
        Ok(Self {
            addr: target.addr.clone(),
            target: Mutex::new(target),
            tx: Mutex::new(Some(tx)),
            alive,
            thread: Mutex::new(Some(thread)),
        })
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

/// State of a link thread.
struct LinkWriter {
    addr: String,
    stream: BufWriter<TcpStream>,
    rx: Receiver<LinkMessage>,
    shaper: Shaper,
    /// Batches received but not yet released by the latency.
    queue: VecDeque<Batch>,
    queued_bytes: usize,
    frames_sent: u64,
    counters: Arc<Counters>,
    pool: Arc<BufferPool>,
    alive: Arc<AtomicBool>,
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
                    "failed to write to target; dropping the events sent to it from now on"
                );
                self.alive.store(false, Ordering::Release);
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
                self.queued_bytes += batch.len;
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
            self.queued_bytes -= batch.len;
            self.write_paced(batch.frames())?;
            self.frames_sent += batch.events;
            Counters::add(&self.counters.events_out, batch.events);
            Counters::add(&self.counters.bytes_out, batch.payload_bytes);
            self.pool.give_back(batch.data);
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
            self.write_paced(&FrameHeader::end(self.frames_sent).to_bytes())?;
        }
        self.stream.flush()?;
        self.stream.get_ref().shutdown(Shutdown::Write)
    }

    /// Drops everything still queued or sent to this dead link, until every sender is gone.
    fn discard_until_closed(&mut self) {
        let mut lost = 0;
        for batch in std::mem::take(&mut self.queue) {
            lost += batch.events;
            self.pool.give_back(batch.data);
        }
        for message in self.rx.iter() {
            if let LinkMessage::Data(batch) = message {
                lost += batch.events;
                self.pool.give_back(batch.data);
            }
        }
        Counters::add(&self.counters.lost, lost);
        if lost > 0 {
            warn!(target_addr = %self.addr, lost_events = lost, "events lost on a failed link");
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
    use crate::instance::frame::{FrameKind, FrameReader, push_data_frame};
    use crate::instance::stats::unix_now_ns;

    fn router() -> Router {
        Router::new(
            Arc::new(Counters::default()),
            Arc::new(BufferPool::new(4)),
            tracing::Span::none(),
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
        }
    }

    /// Reads a whole connection and returns each data frame's sequence number with the delay
    /// between its creation and its arrival, plus the end frame's count.
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
            for frame in reader.by_ref() {
                let frame = frame.expect("valid frame");
                match frame.header.kind {
                    FrameKind::Data => arrivals.push((
                        frame.header.seq,
                        Duration::from_nanos(now - frame.header.created_ns),
                    )),
                    FrameKind::End => end = Some(frame.header.seq),
                }
            }
            let consumed = reader.consumed();
            pending.drain(..consumed);
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
        router.close_all();

        let mut seqs = Vec::new();
        let mut ends = Vec::new();
        for reader in readers {
            let (arrivals, end) = reader.join().expect("reader thread");
            seqs.extend(arrivals.iter().map(|(seq, _)| *seq));
            ends.push(end);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (0..20_000).collect::<Vec<_>>());
        assert_eq!(&ends[..2], &[None, None], "removed targets get no end frame");
        assert!(ends[2].is_some(), "the last target gets an end frame");
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
