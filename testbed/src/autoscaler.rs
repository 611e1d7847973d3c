//! The autoscaler loop: once per window it measures every processing stage and applies
//! [`orchestrator::autoscale::decide`] through the orchestrator's rescale path.

use std::collections::BTreeMap;

use orchestrator::autoscale::{Bounds, StageRates, decide};
use orchestrator::control::{Role, Stats};
use orchestrator::model::{InstanceId, StageId};
use orchestrator::orchestrator::Orchestrator;
use tracing::{info, warn};

use crate::faults::RescaleRecord;

/// Seconds of counters each decision is based on.
const WINDOW_S: f64 = 1.0;
/// Windows to wait after a rescale before deciding again, so that new replicas show up in
/// the measurements first.
const COOLDOWN_WINDOWS: u32 = 2;

pub struct Autoscaler {
    enabled: bool,
    /// Counters of each stage at the start of the current window: events in, events out,
    /// busy microseconds.
    window_start: Option<(f64, BTreeMap<StageId, [u64; 3]>)>,
    cooldown: u32,
}

impl Autoscaler {
    pub fn new(enabled: bool) -> Autoscaler {
        Autoscaler { enabled, window_start: None, cooldown: 0 }
    }

    /// Measures, and when a window is complete decides and rescales at most one stage.
    pub async fn step(
        &mut self,
        orchestrator: &mut Orchestrator,
        stats: &BTreeMap<InstanceId, Stats>,
        now_s: f64,
    ) -> Option<RescaleRecord> {
        if !self.enabled {
            return None;
        }
        let mut totals: BTreeMap<StageId, [u64; 3]> = BTreeMap::new();
        for (id, stats) in stats {
            let entry = totals.entry(id.stage).or_default();
            entry[0] += stats.events_in;
            entry[1] += stats.events_out;
            entry[2] += stats.exec_time_us;
        }
        let Some((started, previous)) = self.window_start.take() else {
            self.window_start = Some((now_s, totals));
            return None;
        };
        let elapsed = now_s - started;
        if elapsed < WINDOW_S {
            self.window_start = Some((started, previous));
            return None;
        }
        self.window_start = Some((now_s, totals.clone()));
        if self.cooldown > 0 {
            self.cooldown -= 1;
            return None;
        }
        let delta = |stage: StageId, field: usize| -> u64 {
            let now = totals.get(&stage).map(|t| t[field]).unwrap_or(0);
            let before = previous.get(&stage).map(|t| t[field]).unwrap_or(0);
            now.saturating_sub(before)
        };
        let stages: Vec<(StageId, String, u32, u32)> = orchestrator
            .workflow()
            .stages()
            .iter()
            .filter(|stage| stage.role == Role::Processor)
            .map(|stage| {
                (stage.id, stage.name.clone(), stage.min_replicas.get(), stage.max_replicas.get())
            })
            .collect();
        for (stage, name, min, max) in stages {
            let upstream = StageId(stage.0 - 1);
            let rates = StageRates {
                input_eps: delta(upstream, 1) as f64 / elapsed,
                processed: delta(stage, 0),
                busy_s: delta(stage, 2) as f64 / 1e6,
                replicas: orchestrator.live_replicas(stage),
            };
            let capacity = rates.replicas + orchestrator.free_slots(stage);
            let Some(target) = decide(rates, Bounds { min, max, capacity }) else { continue };
            info!(stage = %name, from = rates.replicas, to = target, ?rates, "autoscaler decision");
            let started_at = tokio::time::Instant::now();
            match orchestrator.rescale(stage, target).await {
                Ok(reached) => {
                    self.cooldown = COOLDOWN_WINDOWS;
                    return Some(RescaleRecord {
                        stage: name,
                        from: rates.replicas,
                        to: reached,
                        at_s: now_s,
                        settled_after_s: started_at.elapsed().as_secs_f64(),
                        steps: 1,
                        automatic: true,
                    });
                }
                Err(error) => warn!(stage = %name, %error, "autoscaler could not rescale"),
            }
        }
        None
    }
}
