//! Acknowledgements sent back to an upstream instance on its data connection.
//!
//! A sink acknowledges the events of each read once it has recorded them. A processor
//! acknowledges an event to the connection it came from only after its own downstream
//! instance has acknowledged the output event with the same sequence number. So an event
//! that is still inside a processor when the processor dies stays unacknowledged upstream,
//! and the upstream instance replays it.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::debug;

use super::frame::push_ack_frame;

/// Writing half of an inbound data connection, used only for ack frames.
#[derive(Debug)]
pub struct AckWriter {
    stream: Mutex<TcpStream>,
    failed: AtomicBool,
}

impl AckWriter {
    pub fn new(stream: TcpStream) -> Self {
        Self { stream: Mutex::new(stream), failed: AtomicBool::new(false) }
    }

    /// Writes one ack frame for `ranges`. A failed connection is not retried: its sender
    /// replays what it has not seen acknowledged.
    pub fn send(&self, ranges: &[Range<u64>]) {
        if ranges.is_empty() || self.failed.load(Ordering::Relaxed) {
            return;
        }
        let mut frame = Vec::with_capacity(21 + 16 * ranges.len());
        push_ack_frame(&mut frame, ranges);
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = stream.write_all(&frame) {
            debug!(error = %err, "failed to write acknowledgements upstream");
            self.failed.store(true, Ordering::Relaxed);
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}
