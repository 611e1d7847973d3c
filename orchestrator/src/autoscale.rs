//! Autoscaling in the manner of DS2: from each stage's true processing rate per replica and
//! its input rate, compute in one step the replica count that removes the bottleneck.
//!
//! The true rate of a replica is the events it processed divided by the time it was busy
//! processing them (ERSAP's `exec_time`), not by wall time, so an idle or starved replica
//! still reports what it could do. The input rate a stage must sustain is the rate its
//! upstream produces; for the first processing stage, the source's emission rate.

/// What the autoscaler measured for one stage over one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageRates {
    /// Events per second the stage receives (or must receive to keep up with its upstream).
    pub input_eps: f64,
    /// Events processed in the window, summed over replicas.
    pub processed: u64,
    /// Busy time in the window, summed over replicas, in seconds.
    pub busy_s: f64,
    pub replicas: u32,
}

/// Bounds the decision must respect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
    /// Replicas the stage's cluster can hold in total, its current ones included.
    pub capacity: u32,
}

/// Fraction of a replica's true rate the autoscaler plans to use, so that a stage is not
/// sized exactly at saturation.
pub const TARGET_UTILIZATION: f64 = 0.8;

/// Returns the replica count for a stage, or `None` to keep the current one. Scales in only
/// when the stage would still run below [`TARGET_UTILIZATION`] with fewer replicas.
pub fn decide(rates: StageRates, bounds: Bounds) -> Option<u32> {
    if rates.processed == 0 || rates.busy_s <= 0.0 || rates.input_eps <= 0.0 {
        return None;
    }
    let per_replica = rates.processed as f64 / rates.busy_s;
    let needed = (rates.input_eps / (per_replica * TARGET_UTILIZATION)).ceil() as u32;
    let upper = bounds.max.min(bounds.capacity).max(bounds.min);
    let target = needed.clamp(bounds.min, upper);
    (target != rates.replicas).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDE: Bounds = Bounds { min: 1, max: 32, capacity: 32 };

    #[test]
    fn bottleneck_removed_in_one_step() {
        // Each replica can do 1000 events/s; 3500 events/s arrive: 3500 / 800 -> 5 replicas.
        let rates = StageRates { input_eps: 3500.0, processed: 2000, busy_s: 2.0, replicas: 2 };
        assert_eq!(decide(rates, WIDE), Some(5));
    }

    #[test]
    fn over_provisioned_stage_scales_in() {
        let rates = StageRates { input_eps: 500.0, processed: 4000, busy_s: 4.0, replicas: 6 };
        assert_eq!(decide(rates, WIDE), Some(1));
    }

    #[test]
    fn right_sized_stage_kept() {
        let rates = StageRates { input_eps: 1500.0, processed: 1000, busy_s: 1.0, replicas: 2 };
        assert_eq!(decide(rates, WIDE), None);
    }

    #[test]
    fn decision_respects_maximum_and_capacity() {
        let rates = StageRates { input_eps: 100_000.0, processed: 1000, busy_s: 1.0, replicas: 2 };
        assert_eq!(decide(rates, Bounds { min: 1, max: 8, capacity: 32 }), Some(8));
        assert_eq!(decide(rates, Bounds { min: 1, max: 32, capacity: 6 }), Some(6));
    }

    #[test]
    fn decision_respects_minimum() {
        let rates = StageRates { input_eps: 1.0, processed: 1000, busy_s: 1.0, replicas: 4 };
        assert_eq!(decide(rates, Bounds { min: 3, max: 8, capacity: 8 }), Some(3));
    }

    #[test]
    fn no_measurement_no_decision() {
        let idle = StageRates { input_eps: 0.0, processed: 0, busy_s: 0.0, replicas: 2 };
        assert_eq!(decide(idle, WIDE), None);
    }
}
