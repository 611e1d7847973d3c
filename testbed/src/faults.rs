//! Scenario actions during a run, and what they cost: detection and recovery times of
//! faults, settling of rescales, events replayed, and the throughput dip.
//!
//! Recovery means the sink's throughput is back within 10% of its level in the second
//! before the fault. That level is only meaningful for a source with a fixed `rate`; with
//! `rate: 0` the sink runs as fast as it can and a fault near the end of the stream may end
//! it before throughput recovers.

use serde::Serialize;

use crate::results::Sample;

/// Fraction of the throughput before a fault that counts as recovered.
pub const RECOVERED_FRACTION: f64 = 0.9;
/// Window over which throughput is averaged when looking for recovery, in seconds.
const RATE_WINDOW_S: f64 = 0.5;

/// One injected fault and its measured cost.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: String,
    pub target: String,
    /// Seconds after streaming started.
    pub injected_at_s: f64,
    /// From injection to the orchestrator declaring an instance failed.
    pub detected_after_s: Option<f64>,
    /// From injection to sink throughput back within 10% of its level before the fault.
    pub recovered_after_s: Option<f64>,
    pub events_replayed: u64,
    /// Lowest sink throughput after the fault as a fraction below the level before it
    /// (0 = no dip, 1 = throughput fell to zero).
    pub dip_depth: f64,
    /// Seconds the sink throughput stayed below 90% of its level before the fault.
    pub dip_length_s: f64,
}

/// One rescale and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct RescaleRecord {
    pub stage: String,
    pub from: u32,
    pub to: u32,
    /// Seconds after streaming started.
    pub at_s: f64,
    /// From the decision to every new replica running and linked, or every removed one
    /// stopped.
    pub settled_after_s: f64,
    /// Decisions it took to reach the final replica count; the orchestrator applies each
    /// rescale in one.
    pub steps: u32,
    /// True when the autoscaler decided it, false for a scenario action.
    pub automatic: bool,
}

/// Sink throughput averaged over the window that ends at `t`, from cumulative samples.
pub fn rate_at(samples: &[Sample], t: f64, window: f64) -> f64 {
    let count_at = |time: f64| -> f64 {
        let after = samples.iter().position(|sample| sample.t >= time);
        let sink = |sample: &Sample| sample.events.last().copied().unwrap_or(0) as f64;
        match after {
            None => samples.last().map(sink).unwrap_or(0.0),
            Some(0) => sink(&samples[0]) * (time / samples[0].t.max(1e-9)).clamp(0.0, 1.0),
            Some(index) => {
                let (a, b) = (&samples[index - 1], &samples[index]);
                let weight = (time - a.t) / (b.t - a.t).max(1e-9);
                sink(a) + (sink(b) - sink(a)) * weight
            }
        }
    };
    let start = (t - window).max(0.0);
    if t <= start {
        return 0.0;
    }
    (count_at(t) - count_at(start)) / (t - start)
}

/// Fills in recovery time and dip of a fault from the samples taken during the run.
/// `end` is when streaming ended, in seconds.
pub fn measure_recovery(record: &mut FaultRecord, samples: &[Sample], end: f64) {
    let before = rate_at(samples, record.injected_at_s, 1.0);
    if before <= 0.0 {
        return;
    }
    let step = 0.05;
    let mut t = record.injected_at_s + step;
    let mut lowest = before;
    let mut below = 0.0;
    let mut recovered = None;
    while t <= end {
        let rate = rate_at(samples, t, RATE_WINDOW_S);
        lowest = lowest.min(rate);
        if rate < before * RECOVERED_FRACTION {
            below += step;
        } else if lowest < before * RECOVERED_FRACTION && recovered.is_none() {
            recovered = Some(t - record.injected_at_s);
            break;
        }
        t += step;
    }
    // Throughput that never dipped recovered at once.
    if lowest >= before * RECOVERED_FRACTION {
        recovered = Some(0.0);
    }
    tracing::debug!(
        fault = %record.kind,
        before_eps = before,
        lowest_eps = lowest,
        below_s = below,
        ?recovered,
        "measured recovery"
    );
    record.recovered_after_s = recovered;
    record.dip_depth = (1.0 - lowest / before).clamp(0.0, 1.0);
    record.dip_length_s = below;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples every 0.1 s of a sink at 1000 events/s that stops between `gap_from` and
    /// `gap_to` seconds.
    fn samples_with_gap(gap_from: f64, gap_to: f64, end: f64) -> Vec<Sample> {
        let mut samples = Vec::new();
        let mut count = 0.0;
        let mut t = 0.0;
        while t < end {
            t += 0.1;
            if !(gap_from..gap_to).contains(&t) {
                count += 100.0;
            }
            samples.push(Sample { t, events: vec![count as u64], replicas: vec![1] });
        }
        samples
    }

    fn fault_at(t: f64) -> FaultRecord {
        FaultRecord {
            kind: "kill_instance".into(),
            target: "P/0".into(),
            injected_at_s: t,
            detected_after_s: None,
            recovered_after_s: None,
            events_replayed: 0,
            dip_depth: 0.0,
            dip_length_s: 0.0,
        }
    }

    #[test]
    fn steady_rate_measured() {
        let samples = samples_with_gap(100.0, 100.0, 5.0);
        let rate = rate_at(&samples, 3.0, 1.0);
        assert!((rate - 1000.0).abs() < 1.0, "{rate}");
    }

    #[test]
    fn gap_gives_recovery_time_and_full_dip() {
        let samples = samples_with_gap(2.0, 3.0, 8.0);
        let mut record = fault_at(2.0);
        measure_recovery(&mut record, &samples, 8.0);
        let recovered = record.recovered_after_s.expect("recovered");
        assert!((1.3..=1.7).contains(&recovered), "{recovered}");
        assert!(record.dip_depth > 0.95, "{}", record.dip_depth);
        assert!(record.dip_length_s > 0.9, "{}", record.dip_length_s);
    }

    #[test]
    fn fault_without_dip_recovers_at_once() {
        let samples = samples_with_gap(100.0, 100.0, 6.0);
        let mut record = fault_at(2.0);
        measure_recovery(&mut record, &samples, 6.0);
        assert_eq!(record.recovered_after_s, Some(0.0));
        assert!(record.dip_depth < 0.1);
    }

    #[test]
    fn stream_ending_in_gap_never_recovers() {
        let samples = samples_with_gap(2.0, 100.0, 5.0);
        let mut record = fault_at(2.0);
        measure_recovery(&mut record, &samples, 5.0);
        assert_eq!(record.recovered_after_s, None);
    }
}
