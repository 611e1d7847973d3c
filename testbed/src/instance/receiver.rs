//! Inbound side of processors and sinks: accepting data connections and reading frames.
//!
//! Each connection gets a reader thread that fills a large buffer with whatever one `read`
//! returns and walks the complete frames in it once, recording latency, counts and, in a sink,
//! the sequence numbers. A processor's reader then hands the buffer to the workers, and a
//! sink's reader reuses it. An incomplete frame at the end of the buffer moves to the front of the
//! next one. So the cost per event is one header decode, with no allocation or system call.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use crossbeam_channel::Sender;
use orchestrator::control::{Phase, Role};
use tracing::{debug, error, info, warn};

use super::ack::AckWriter;
use super::batch::{BATCH_BYTES, Batch};
use super::frame::{FrameKind, FrameReader, HEADER_LEN};
use super::processor;
use super::stats::{Counters, unix_now_ns};
use super::{InstanceError, Shared};

/// Starts the thread that accepts data connections, plus the workers and the drain
/// coordinator of a processor or sink. A source accepts and closes inbound connections.
pub(crate) fn spawn_acceptor(
    shared: Arc<Shared>,
    listener: TcpListener,
) -> Result<(), InstanceError> {
    let work_tx = match shared.role {
        Role::Processor => Some(processor::spawn_workers(&shared)?),
        Role::Sink | Role::Source => None,
    };
    if shared.role != Role::Source {
        spawn_drain_coordinator(Arc::clone(&shared))?;
    }
    let spawned = thread::Builder::new().name("acceptor".to_owned()).spawn(move || {
        let _entered = shared.span.enter();
        accept_connections(&shared, &listener, work_tx);
    });
    spawned.map(drop).map_err(|source| InstanceError::Start { what: "acceptor thread", source })
}

fn accept_connections(
    shared: &Arc<Shared>,
    listener: &TcpListener,
    work_tx: Option<Sender<Batch>>,
) {
    for (index, stream) in listener.incoming().enumerate() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                error!(error = %err, "failed to accept a data connection");
                continue;
            }
        };
        let peer = stream.peer_addr().ok();
        if shared.role == Role::Source {
            warn!(?peer, "a source receives no events; closing the inbound connection");
            continue;
        }
        info!(?peer, "data connection accepted");
        if let Ok(handle) = stream.try_clone() {
            let mut inbound = shared.inbound.lock().unwrap_or_else(|e| e.into_inner());
            // Closed connections need no handle any more; keep the list short.
            inbound.retain(|stream| stream.peer_addr().is_ok());
            inbound.push(handle);
        }
        let reader = ConnectionReader {
            shared: Arc::clone(shared),
            work_tx: work_tx.clone(),
            peer,
            runs: Vec::new(),
            acks: None,
        };
        let spawned = thread::Builder::new().name(format!("reader-{index}")).spawn(move || {
            let _entered = reader.shared.span.clone().entered();
            reader.run(stream);
        });
        if let Err(err) = spawned {
            error!(?peer, error = %err, "failed to start a reader thread; connection dropped");
        }
    }
}

/// Waits for the drain condition, then closes the outbound links and marks the instance
/// drained.
fn spawn_drain_coordinator(shared: Arc<Shared>) -> Result<(), InstanceError> {
    let spawned = thread::Builder::new().name("drain".to_owned()).spawn(move || {
        let _entered = shared.span.enter();
        shared.drain.wait_until_drained(&shared.counters.queued);
        if shared.role == Role::Processor {
            shared.router.wait_until_acked();
            shared.router.close_all();
        }
        shared.mark_drained();
    });
    spawned
        .map(drop)
        .map_err(|source| InstanceError::Start { what: "drain coordinator thread", source })
}

/// State of one inbound connection's reader thread.
struct ConnectionReader {
    shared: Arc<Shared>,
    /// Processor only: channel to the workers.
    work_tx: Option<Sender<Batch>>,
    peer: Option<SocketAddr>,
    /// Sink only: runs of consecutive sequence numbers found in the current buffer.
    runs: Vec<SeqRun>,
    /// Writer of ack frames back to the sender on this connection.
    acks: Option<Arc<AckWriter>>,
}

/// Consecutive sequence numbers `[start, end)` whose payloads all have `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeqRun {
    pub start: u64,
    pub end: u64,
    pub len: u32,
}

/// Result of one pass over a buffer.
#[derive(Debug, Default)]
struct Scan {
    /// Bytes of the complete data frames at the start of the buffer.
    data_len: usize,
    events: u64,
    payload_bytes: u64,
    /// The end frame's count of data frames, if the buffer contains the end frame.
    end: Option<u64>,
    /// The replica index that the end frame names as its sender, if it names one.
    end_sender: Option<u32>,
    /// Bytes taken by complete frames, the end frame included.
    consumed: usize,
    invalid: Option<String>,
}

impl ConnectionReader {
    fn run(mut self, mut stream: TcpStream) {
        let peer = self.peer;
        match stream.try_clone() {
            Ok(clone) => self.acks = Some(Arc::new(AckWriter::new(clone))),
            Err(err) => warn!(?peer, error = %err, "failed to clone the connection; no acks sent"),
        }
        self.shared.phase.advance(Phase::Ready, Phase::Running);
        let mut buf = self.shared.pool.take(BATCH_BYTES);
        let mut filled = 0;
        let mut events_on_connection = 0u64;
        loop {
            if filled == buf.len() {
                // One frame is larger than the buffer, so the buffer grows to hold it.
                let needed = FrameReader::new(&buf[..filled]).pending_frame_len();
                buf.resize(needed.unwrap_or(filled + HEADER_LEN).max(filled * 2), 0);
            }
            let n = match stream.read(&mut buf[filled..]) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    warn!(?peer, error = %err, events_on_connection, "data connection failed");
                    break;
                }
            };
            if n == 0 {
                if filled > 0 {
                    warn!(?peer, bytes = filled, "connection closed inside a frame");
                } else {
                    // The sender dropped this target from its set, or it failed.
                    warn!(?peer, events_on_connection, "connection closed without an end frame");
                }
                break;
            }
            filled += n;

            let scan = self.scan(&buf[..filled]);
            events_on_connection += scan.events;
            if scan.events > 0 {
                buf = self.deliver(buf, filled, &scan);
            }
            // Move the incomplete tail to the front, unless `deliver` copied it to a new buffer.
            if self.work_tx.is_none() || scan.events == 0 {
                buf.copy_within(scan.consumed..filled, 0);
            }
            filled -= scan.consumed;

            if let Some(reason) = scan.invalid {
                error!(?peer, %reason, "invalid frame; closing the data connection");
                Counters::add(&self.shared.counters.failures, 1);
                break;
            }
            if let Some(announced) = scan.end {
                if announced != events_on_connection {
                    warn!(
                        ?peer,
                        announced,
                        received = events_on_connection,
                        "end frame announces a different number of events than arrived"
                    );
                }
                if filled > 0 {
                    warn!(?peer, bytes = filled, "bytes after the end frame were ignored");
                }
                let sender = scan.end_sender;
                debug!(?peer, events_on_connection, ?sender, "end frame received");
                if !self.shared.drain.end_received(sender) {
                    info!(
                        ?peer,
                        ?sender,
                        "second end frame from one upstream replica; not counted"
                    );
                }
                break;
            }
        }
        self.shared.pool.give_back(buf);
    }

    /// Walks the complete frames of `bytes`, records their latency, and for a sink collects
    /// their sequence numbers in `self.runs`.
    fn scan(&mut self, bytes: &[u8]) -> Scan {
        let arrival_ns = unix_now_ns();
        let is_sink = self.shared.role == Role::Sink;
        self.runs.clear();
        let mut scan = Scan::default();
        let mut latency = self.shared.latency.lock();
        let mut reader = FrameReader::new(bytes);
        for frame in reader.by_ref() {
            let frame = match frame {
                Ok(frame) => frame,
                Err(err) => {
                    scan.invalid = Some(err.to_string());
                    break;
                }
            };
            let header = frame.header;
            match header.kind {
                FrameKind::Data => {}
                FrameKind::End => {
                    scan.end = Some(header.seq);
                    scan.end_sender = header.end_sender();
                    break;
                }
                FrameKind::Ack => {
                    scan.invalid = Some("ack frame sent by an upstream instance".to_owned());
                    break;
                }
            }
            latency.record(arrival_ns, header.created_ns);
            scan.events += 1;
            scan.payload_bytes += u64::from(header.len);
            if is_sink {
                match self.runs.last_mut() {
                    Some(run) if run.end == header.seq && run.len == header.len => run.end += 1,
                    _ => self.runs.push(SeqRun {
                        start: header.seq,
                        end: header.seq.saturating_add(1),
                        len: header.len,
                    }),
                }
            }
        }
        drop(latency);
        scan.consumed = reader.consumed();
        scan.data_len = match scan.end {
            Some(_) => scan.consumed - HEADER_LEN,
            None => scan.consumed,
        };
        scan
    }

    /// Passes the data frames of a buffer on and returns the buffer to read into next.
    fn deliver(&mut self, buf: Vec<u8>, filled: usize, scan: &Scan) -> Vec<u8> {
        let counters = &self.shared.counters;
        let Some(work_tx) = &self.work_tx else {
            self.record_in_sink(scan);
            return buf;
        };
        Counters::add(&counters.events_in, scan.events);
        Counters::add(&counters.bytes_in, scan.payload_bytes);
        Counters::add(&counters.queued, scan.events);

        let tail = &buf[scan.consumed..filled];
        let mut next = self.shared.pool.take(BATCH_BYTES.max(tail.len()));
        next[..tail.len()].copy_from_slice(tail);
        let batch = Batch {
            data: buf,
            len: scan.data_len,
            events: scan.events,
            payload_bytes: scan.payload_bytes,
            sent_at: Instant::now(),
            origin: self.acks.clone(),
        };
        let unit_events = processor::work_unit_events(&self.shared.args, &batch);
        let mut workers_gone = false;
        processor::split_into_units(batch, unit_events, &self.shared.pool, |unit| {
            workers_gone |= work_tx.send(unit).is_err();
        });
        if workers_gone {
            error!(peer = ?self.peer, "processor workers are gone; events dropped");
        }
        next
    }

    fn record_in_sink(&mut self, scan: &Scan) {
        let Some(received) = &self.shared.received else {
            return;
        };
        let mut unique_events = 0;
        let mut unique_bytes = 0;
        {
            let mut set = received.lock().unwrap_or_else(|e| e.into_inner());
            for run in &self.runs {
                let added = set.insert_run(run.start, run.end);
                unique_events += added;
                unique_bytes += added * u64::from(run.len);
            }
        }
        let counters = &self.shared.counters;
        Counters::add(&counters.events_in, unique_events);
        Counters::add(&counters.requests, unique_events);
        Counters::add(&counters.bytes_in, unique_bytes);
        Counters::add(&counters.duplicates, scan.events - unique_events);

        // Recorded events, duplicates included, are journaled and acknowledged in one frame
        // per read.
        let mut ranges: Vec<std::ops::Range<u64>> = Vec::with_capacity(self.runs.len());
        for run in &self.runs {
            match ranges.last_mut() {
                Some(last) if last.end == run.start => last.end = run.end,
                _ => ranges.push(run.start..run.end),
            }
        }
        if let Some(journal) = &self.shared.journal {
            if let Err(err) = journal.append(&ranges) {
                // Were this sink to die, events without a record would count as lost, so
                // they stay unacknowledged and their sender keeps them.
                if journal.first_failure() {
                    error!(peer = ?self.peer, error = %err, "failed to write the journal; no ack sent, later failures are logged at debug level");
                } else {
                    debug!(peer = ?self.peer, error = %err, "failed to write the journal; no ack sent");
                }
                return;
            }
        }
        if let Some(acks) = &self.acks {
            acks.send(&ranges);
        }
    }
}
