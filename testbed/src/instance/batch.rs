//! Batches of encoded frames and the pool that recycles their buffers.
//!
//! Events travel through an instance in batches: a reader hands over everything one socket
//! read returned, a source fills a batch before sending it. Moving a whole buffer through a
//! channel costs the same as moving one event, and recycling buffers through [`BufferPool`]
//! avoids allocating (and page-faulting) a fresh large buffer for every batch.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::ack::AckWriter;

/// Size of the buffers that readers and sources fill, in bytes.
pub const BATCH_BYTES: usize = 256 * 1024;

/// Encoded frames ready to be written to one connection.
#[derive(Debug)]
pub struct Batch {
    /// Storage, of which only `data[..len]` contains frames. The storage keeps its length between uses so
    /// that a source can reuse the payload bytes already in it.
    pub data: Vec<u8>,
    pub len: usize,
    /// Data frames in `data[..len]`.
    pub events: u64,
    /// Payload bytes of those frames, headers excluded.
    pub payload_bytes: u64,
    /// Instant at which the batch was handed to a link. The link adds its latency to it.
    pub sent_at: Instant,
    /// Processor only: the inbound connection the events came from, which receives their
    /// acknowledgements once the downstream instance has acknowledged the output.
    pub origin: Option<Arc<AckWriter>>,
}

impl Batch {
    pub fn frames(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

/// Free list of large buffers shared by the threads of one instance.
#[derive(Debug)]
pub struct BufferPool {
    free_tx: Sender<Vec<u8>>,
    free_rx: Receiver<Vec<u8>>,
}

impl BufferPool {
    /// Creates a pool that keeps at most `capacity` unused buffers.
    pub fn new(capacity: usize) -> Self {
        let (free_tx, free_rx) = crossbeam_channel::bounded(capacity);
        Self { free_tx, free_rx }
    }

    /// Takes a buffer whose length is at least `min_len`, zero-filled where it is new.
    pub fn take(&self, min_len: usize) -> Vec<u8> {
        match self.free_rx.try_recv() {
            Ok(mut buf) => {
                if buf.len() < min_len {
                    buf.resize(min_len, 0);
                }
                buf
            }
            Err(_) => vec![0; min_len.max(BATCH_BYTES)],
        }
    }

    /// Returns a buffer to the pool, or frees it when the pool is full.
    pub fn give_back(&self, buf: Vec<u8>) {
        // A full pool means enough buffers are in circulation, so this one is simply freed.
        let _ = self.free_tx.try_send(buf);
    }
}
