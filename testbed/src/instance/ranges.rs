//! Compact set of received sequence numbers.
//!
//! A sink must tell which sequence numbers it received and spot repeats among tens of millions
//! of events. [`SeqSet`] splits the sequence space into chunks of [`CHUNK_BITS`] numbers and
//! keeps one bit per number in each chunk it has touched, so memory is one bit per number in
//! the span actually used (1.25 MB for 10 million numbers). A chunk whose numbers have all
//! arrived collapses to a marker without a bitmap, so an in-order stream needs almost no memory.

use std::collections::BTreeMap;

/// Sequence numbers per chunk.
pub const CHUNK_BITS: u64 = 1 << 16;
const WORDS_PER_CHUNK: usize = (CHUNK_BITS / 64) as usize;

/// Set of `u64` sequence numbers stored as a chunked bitmap.
#[derive(Debug, Default)]
pub struct SeqSet {
    chunks: BTreeMap<u64, Chunk>,
    len: u64,
}

#[derive(Debug)]
enum Chunk {
    Partial { words: Box<[u64; WORDS_PER_CHUNK]>, ones: u32 },
    Full,
}

impl SeqSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct sequence numbers in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts one number and returns `false` when it was already present. `u64::MAX` cannot
    /// be stored, because ranges are half-open, and always returns `false`.
    pub fn insert(&mut self, seq: u64) -> bool {
        self.insert_run(seq, seq.saturating_add(1)) == 1
    }

    /// Inserts the half-open run `[start, end)` and returns how many of its numbers were new.
    /// The difference to the run's length is the number of repeats.
    pub fn insert_run(&mut self, start: u64, end: u64) -> u64 {
        let mut added = 0;
        let mut lo = start;
        while lo < end {
            let chunk_index = lo / CHUNK_BITS;
            let chunk_start = chunk_index * CHUNK_BITS;
            let hi = end.min(chunk_start.saturating_add(CHUNK_BITS));
            added += self.insert_in_chunk(chunk_index, lo - chunk_start, hi - chunk_start);
            lo = hi;
        }
        self.len += added;
        added
    }

    /// Returns the set as sorted, disjoint, half-open `[start, end)` ranges, with adjacent
    /// ranges merged.
    pub fn ranges(&self) -> Vec<[u64; 2]> {
        let mut ranges: Vec<[u64; 2]> = Vec::new();
        let mut push = |start: u64, end: u64| match ranges.last_mut() {
            Some(last) if last[1] == start => last[1] = end,
            _ => ranges.push([start, end]),
        };
        for (&index, chunk) in &self.chunks {
            let base = index * CHUNK_BITS;
            match chunk {
                Chunk::Full => push(base, base.saturating_add(CHUNK_BITS)),
                Chunk::Partial { words, .. } => {
                    for (start, end) in runs_of_ones(words.as_slice()) {
                        push(base + start, base + end);
                    }
                }
            }
        }
        ranges
    }

    /// Sets bits `[lo, hi)` of one chunk (offsets within the chunk) and returns how many
    /// were clear before.
    fn insert_in_chunk(&mut self, index: u64, lo: u64, hi: u64) -> u64 {
        let chunk = self
            .chunks
            .entry(index)
            .or_insert_with(|| Chunk::Partial { words: Box::new([0; WORDS_PER_CHUNK]), ones: 0 });
        let Chunk::Partial { words, ones } = chunk else {
            return 0;
        };
        let mut added = 0u64;
        let mut bit = lo;
        while bit < hi {
            let word = (bit / 64) as usize;
            let first = bit % 64;
            let last = (hi - word as u64 * 64).min(64);
            let width = last - first;
            let mask = if width == 64 { u64::MAX } else { ((1u64 << width) - 1) << first };
            added += u64::from((mask & !words[word]).count_ones());
            words[word] |= mask;
            bit += width;
        }
        // `added` is at most CHUNK_BITS, so it fits in u32.
        *ones += added as u32;
        if u64::from(*ones) == CHUNK_BITS {
            *chunk = Chunk::Full;
        }
        added
    }
}

/// Yields the half-open runs of set bits in `words`, as bit offsets.
fn runs_of_ones(words: &[u64]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let total = words.len() as u64 * 64;
    let bit_is_set = move |bit: u64| words[(bit / 64) as usize] >> (bit % 64) & 1 == 1;
    let mut bit = 0u64;
    std::iter::from_fn(move || {
        // Skip clear bits, a whole word at a time where possible.
        while bit < total && !bit_is_set(bit) {
            let rest = words[(bit / 64) as usize] >> (bit % 64);
            bit += if rest == 0 { 64 - bit % 64 } else { u64::from(rest.trailing_zeros()) };
        }
        if bit >= total {
            return None;
        }
        let start = bit;
        while bit < total && bit_is_set(bit) {
            let rest = words[(bit / 64) as usize] >> (bit % 64);
            bit += u64::from(rest.trailing_ones());
        }
        Some((start, bit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_numbers_are_reported() {
        let mut set = SeqSet::new();
        assert!(set.insert(5));
        assert!(!set.insert(5));
        assert_eq!(set.insert_run(3, 8), 4);
        assert_eq!(set.insert_run(3, 8), 0);
        assert_eq!(set.len(), 5);
        assert_eq!(set.ranges(), vec![[3, 8]]);
    }

    #[test]
    fn out_of_order_numbers_merge_into_one_range() {
        let mut set = SeqSet::new();
        for seq in [9, 1, 7, 3, 5, 0, 2, 8, 6, 4] {
            assert!(set.insert(seq), "{seq} was reported as a repeat");
        }
        assert_eq!(set.ranges(), vec![[0, 10]]);
        assert_eq!(set.len(), 10);
    }

    #[test]
    fn gaps_give_disjoint_sorted_ranges() {
        let mut set = SeqSet::new();
        set.insert_run(100, 200);
        set.insert_run(0, 10);
        set.insert_run(50, 60);
        set.insert(63);
        set.insert(64);
        assert_eq!(set.ranges(), vec![[0, 10], [50, 60], [63, 65], [100, 200]]);
    }

    #[test]
    fn ranges_merge_across_chunk_boundaries() {
        let mut set = SeqSet::new();
        let boundary = CHUNK_BITS * 3;
        set.insert_run(boundary - 10, boundary);
        set.insert_run(boundary, boundary + 10);
        assert_eq!(set.ranges(), vec![[boundary - 10, boundary + 10]]);

        // A run spanning several chunks leaves the middle ones full.
        let mut wide = SeqSet::new();
        assert_eq!(wide.insert_run(10, 3 * CHUNK_BITS + 10), 3 * CHUNK_BITS);
        assert_eq!(wide.ranges(), vec![[10, 3 * CHUNK_BITS + 10]]);
        assert!(matches!(wide.chunks.get(&1), Some(Chunk::Full)));
        assert_eq!(wide.insert_run(CHUNK_BITS, 2 * CHUNK_BITS), 0);
    }

    #[test]
    fn ten_million_in_order_numbers_use_full_chunks() {
        let mut set = SeqSet::new();
        for start in (0..10_000_000u64).step_by(250) {
            set.insert_run(start, start + 250);
        }
        assert_eq!(set.len(), 10_000_000);
        assert_eq!(set.ranges(), vec![[0, 10_000_000]]);
        let partial = set.chunks.values().filter(|c| matches!(c, Chunk::Partial { .. })).count();
        assert_eq!(partial, 1, "only the last, unfinished chunk keeps a bitmap");
    }

    #[test]
    fn interleaved_numbers_are_exact() {
        let mut set = SeqSet::new();
        for seq in (0..200_000u64).step_by(2) {
            set.insert(seq);
        }
        assert_eq!(set.len(), 100_000);
        assert_eq!(set.ranges().len(), 100_000);
        assert_eq!(set.ranges()[1], [2, 3]);
        for seq in (1..200_000u64).step_by(2) {
            set.insert(seq);
        }
        assert_eq!(set.ranges(), vec![[0, 200_000]]);
    }

    #[test]
    fn numbers_near_u64_max_are_stored() {
        let mut set = SeqSet::new();
        assert_eq!(set.insert_run(u64::MAX - 3, u64::MAX), 3);
        assert_eq!(set.ranges(), vec![[u64::MAX - 3, u64::MAX]]);
    }
}
