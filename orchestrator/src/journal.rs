//! A sink's journal: the file that plays the part of an ERSAP writer's output.
//!
//! A sink appends every range of sequence numbers it receives to its journal before it
//! acknowledges them. An acknowledged event is never sent again. Without the journal, a sink
//! that dies, freezes or is cut off would take the record of what it received with it, and
//! the run would count those events as lost although they reached the writer. The harness
//! reads the journal of every sink replica that no longer returns its counters.
//!
//! The format is a sequence of records of 16 bytes: the first and one past the last sequence
//! number of a range, both little-endian `u64`. Ranges repeat when an event arrives twice.
//! A record cut short by the death of the writer is ignored.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::backend::SinkRecord;

const RECORD_LEN: usize = 16;

/// An open journal. Appends from several reader threads are serialised by its lock.
#[derive(Debug)]
pub struct Journal {
    file: Mutex<File>,
    failed: AtomicBool,
}

impl Journal {
    /// Creates the file, or appends to it if it exists.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file: Mutex::new(file), failed: AtomicBool::new(false) })
    }

    /// Records that an append failed and returns true the first time, so that a writer that
    /// keeps failing (a full disk) is logged once, not on every read.
    pub fn first_failure(&self) -> bool {
        !self.failed.swap(true, Ordering::Relaxed)
    }

    /// Appends `ranges` with one write. The data reaches the kernel before this returns, so
    /// it survives the process being killed right after.
    pub fn append(&self, ranges: &[Range<u64>]) -> io::Result<()> {
        if ranges.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(ranges.len() * RECORD_LEN);
        for range in ranges {
            bytes.extend_from_slice(&range.start.to_le_bytes());
            bytes.extend_from_slice(&range.end.to_le_bytes());
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&bytes)
    }
}

/// Path of an instance's journal in a run's log folder, next to its log.
pub fn path_in(log_dir: &Path, instance: &str) -> PathBuf {
    log_dir.join(format!("{instance}.journal"))
}

/// Reads the journal of `instance` in `log_dir`; `None`, with a warning, when it cannot.
pub fn read_in(log_dir: &Path, instance: &str) -> Option<SinkRecord> {
    let path = path_in(log_dir, instance);
    match read(&path) {
        Ok(record) => Some(record),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot read a sink's journal");
            None
        }
    }
}

/// Reads a journal written by [`Journal::append`].
pub fn read(path: &Path) -> io::Result<SinkRecord> {
    let bytes = std::fs::read(path)?;
    Ok(parse(&bytes))
}

fn parse(bytes: &[u8]) -> SinkRecord {
    let mut all: Vec<[u64; 2]> = bytes
        .chunks_exact(RECORD_LEN)
        .map(|record| {
            let start = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
            let end = u64::from_le_bytes(record[8..].try_into().expect("8 bytes"));
            [start, end]
        })
        .filter(|[start, end]| end > start)
        .collect();
    let total = all.iter().fold(0u64, |sum, [start, end]| sum.saturating_add(end - start));
    all.sort_unstable();
    let mut ranges: Vec<[u64; 2]> = Vec::new();
    for [start, end] in all {
        match ranges.last_mut() {
            Some(last) if start <= last[1] => last[1] = last[1].max(end),
            _ => ranges.push([start, end]),
        }
    }
    let distinct = ranges.iter().fold(0u64, |sum, [start, end]| sum.saturating_add(end - start));
    SinkRecord { ranges, duplicates: total.saturating_sub(distinct) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_reads_back_ranges_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.journal");
        let journal = Journal::open(&path).unwrap();
        journal.append(&[0..10, 20..30]).unwrap();
        journal.append(std::slice::from_ref(&(5..12))).unwrap();
        drop(journal);
        // A second open appends instead of truncating.
        Journal::open(&path).unwrap().append(std::slice::from_ref(&(40..41))).unwrap();

        let record = read(&path).unwrap();
        assert_eq!(record.ranges, vec![[0, 12], [20, 30], [40, 41]]);
        assert_eq!(record.duplicates, 5);
    }

    #[test]
    fn journal_ignores_truncated_record() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(&7u64.to_le_bytes());
        bytes.extend_from_slice(&9u64.to_le_bytes());
        let record = parse(&bytes);
        assert_eq!(record.ranges, vec![[3, 7]]);
        assert_eq!(record.duplicates, 0);
    }

    #[test]
    fn journal_missing_file_is_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join("absent.journal")).is_err());
    }
}
