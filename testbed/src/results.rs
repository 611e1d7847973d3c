//! Results of a run computed from the instances' counters: exactly-once accounting,
//! per-stage latency percentiles and the per-second timeline.

use std::collections::BTreeMap;

use serde::Serialize;

/// Event accounting at the sink, by sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Events the scenario asked the source stage to emit.
    pub expected: u64,
    /// Events the source replicas reported as sent.
    pub sent: u64,
    /// Events the sink replicas received, duplicates included.
    pub received: u64,
    /// Expected sequence numbers that never reached a sink.
    pub lost: u64,
    /// Receptions beyond the first of a sequence number, within and across sink replicas.
    pub duplicated: u64,
}

/// Counts received, lost and duplicated events from each sink replica's received ranges
/// (sorted, disjoint, half-open) and its own duplicate counter.
pub fn count_events(expected: u64, sent: u64, sinks: &[(Vec<[u64; 2]>, u64)]) -> EventCounts {
    let mut all: Vec<[u64; 2]> =
        sinks.iter().flat_map(|(ranges, _)| ranges.iter().copied()).collect();
    let per_replica_unique: u64 = all.iter().map(|[start, end]| end.saturating_sub(*start)).sum();
    let within_replica_duplicates: u64 = sinks.iter().map(|(_, duplicates)| duplicates).sum();
    all.sort_unstable();
    let mut union = 0u64;
    let mut expected_union = 0u64;
    let mut current: Option<[u64; 2]> = None;
    let mut close = |range: [u64; 2]| {
        union += range[1] - range[0];
        let start = range[0].min(expected);
        let end = range[1].min(expected);
        expected_union += end.saturating_sub(start);
    };
    for [start, end] in all {
        if end <= start {
            continue;
        }
        current = match current {
            Some([open_start, open_end]) if start <= open_end => {
                Some([open_start, open_end.max(end)])
            }
            Some(open) => {
                close(open);
                Some([start, end])
            }
            None => Some([start, end]),
        };
    }
    if let Some(open) = current {
        close(open);
    }
    let across_replicas = per_replica_unique - union;
    EventCounts {
        expected,
        sent,
        received: per_replica_unique + within_replica_duplicates,
        lost: expected - expected_union,
        duplicated: across_replicas + within_replica_duplicates,
    }
}

/// Latency percentiles of one stage, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub count: u64,
}

/// Merges the `[value_us, count]` histograms of a stage's replicas into its percentiles.
pub fn merge_latency<'a>(histograms: impl IntoIterator<Item = &'a [[u64; 2]]>) -> LatencyMs {
    let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
    for histogram in histograms {
        for [value, count] in histogram {
            *merged.entry(*value).or_default() += count;
        }
    }
    let count: u64 = merged.values().sum();
    if count == 0 {
        return LatencyMs::default();
    }
    let percentile = |fraction: f64| -> f64 {
        let rank = ((fraction * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (value, n) in &merged {
            seen += n;
            if seen >= rank {
                return *value as f64 / 1000.0;
            }
        }
        0.0
    };
    LatencyMs {
        p50: percentile(0.50),
        p90: percentile(0.90),
        p99: percentile(0.99),
        max: merged.keys().next_back().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
        count,
    }
}

/// Cumulative counters of every stage at one moment of the streaming phase.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since the stream started.
    pub t: f64,
    /// Events each stage has handled: sent by a source, received by the others.
    pub events: Vec<u64>,
    pub replicas: Vec<u32>,
}

/// One row of `timeline.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineRow {
    pub second: u64,
    /// Events per second of each stage during this second.
    pub throughput: Vec<f64>,
    pub replicas: Vec<u32>,
}

/// Resamples counters taken at irregular moments into one row per whole second, with
/// counts interpolated linearly between samples.
pub fn timeline(samples: &[Sample]) -> Vec<TimelineRow> {
    let Some(last) = samples.last() else { return Vec::new() };
    let stages = last.events.len();
    let at = |t: f64, stage: usize| -> f64 {
        let after = samples.iter().position(|sample| sample.t >= t);
        match after {
            None => last.events[stage] as f64,
            Some(0) => samples[0].events[stage] as f64 * (t / samples[0].t.max(1e-9)).min(1.0),
            Some(index) => {
                let (a, b) = (&samples[index - 1], &samples[index]);
                let span = (b.t - a.t).max(1e-9);
                let weight = (t - a.t) / span;
                a.events[stage] as f64 + (b.events[stage] as f64 - a.events[stage] as f64) * weight
            }
        }
    };
    let seconds = last.t.ceil().max(1.0) as u64;
    (1..=seconds)
        .map(|second| {
            let t = second as f64;
            let throughput =
                (0..stages).map(|stage| (at(t, stage) - at(t - 1.0, stage)).max(0.0)).collect();
            let replicas = samples
                .iter()
                .rev()
                .find(|sample| sample.t <= t)
                .unwrap_or(&samples[0])
                .replicas
                .clone();
            TimelineRow { second, throughput, replicas }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_once_counts_clean() {
        let counts = count_events(100, 100, &[(vec![[0, 60]], 0), (vec![[60, 100]], 0)]);
        assert_eq!(counts.received, 100);
        assert_eq!(counts.lost, 0);
        assert_eq!(counts.duplicated, 0);
    }

    #[test]
    fn gaps_count_as_lost() {
        let counts = count_events(100, 100, &[(vec![[0, 10], [20, 100]], 0)]);
        assert_eq!(counts.lost, 10);
        assert_eq!(counts.received, 90);
    }

    #[test]
    fn overlap_across_sinks_counts_as_duplicates() {
        let counts = count_events(100, 100, &[(vec![[0, 60]], 2), (vec![[50, 100]], 0)]);
        assert_eq!(counts.duplicated, 12);
        assert_eq!(counts.lost, 0);
        assert_eq!(counts.received, 112);
    }

    #[test]
    fn events_beyond_expected_do_not_hide_losses() {
        let counts = count_events(10, 10, &[(vec![[5, 20]], 0)]);
        assert_eq!(counts.lost, 5);
    }

    #[test]
    fn latency_percentiles_merge_replicas() {
        let a: Vec<[u64; 2]> = vec![[1000, 50]];
        let b: Vec<[u64; 2]> = vec![[3000, 49], [9000, 1]];
        let latency = merge_latency([a.as_slice(), b.as_slice()]);
        assert_eq!(latency.count, 100);
        assert_eq!(latency.p50, 1.0);
        assert_eq!(latency.p90, 3.0);
        assert_eq!(latency.p99, 3.0);
        assert_eq!(latency.max, 9.0);
    }

    #[test]
    fn timeline_interpolates_per_second() {
        let samples = vec![
            Sample { t: 0.5, events: vec![50], replicas: vec![1] },
            Sample { t: 1.5, events: vec![150], replicas: vec![2] },
            Sample { t: 2.0, events: vec![200], replicas: vec![2] },
        ];
        let rows = timeline(&samples);
        assert_eq!(rows.len(), 2);
        assert!((rows[0].throughput[0] - 100.0).abs() < 1e-6, "{:?}", rows[0]);
        assert!((rows[1].throughput[0] - 100.0).abs() < 1e-6, "{:?}", rows[1]);
        assert_eq!(rows[1].replicas, vec![2]);
    }
}
