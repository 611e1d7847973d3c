//! Scenario suites: `recovery`, `rescale` and `nightly` (both) run fixture scenarios on one
//! backend several times and combine every run's `benchmarks.json` into one, with the median
//! and every repetition of each metric.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::artifacts::Summary;
use crate::bench::compare::{BenchmarkEntry, read_file, write_file};
use crate::run::{self, BackendKind, Inputs, RunConfig};

/// Fixture scenarios of the recovery suite, one per fault kind.
pub const RECOVERY: &[&str] =
    &["kill-instance", "kill-node", "pause-node", "partition", "lose-cluster"];
/// Fixture scenarios of the rescale suite.
pub const RESCALE: &[&str] = &["scale-out", "autoscale"];

/// What a suite run produced.
pub struct SuiteResult {
    pub entries: Vec<BenchmarkEntry>,
    /// Runs whose expectations failed, as `scenario #repetition: reason`.
    pub failures: Vec<String>,
    pub runs: usize,
}

/// Runs every scenario `repetitions` times on `backend`, writing each run's folder under
/// `output` and the combined `benchmarks.json` into `output`.
pub async fn run_suite(
    scenarios: &[&str],
    backend: BackendKind,
    repetitions: u32,
    mock_bin: &Path,
    output: &Path,
    progress: impl Fn(&str),
) -> anyhow::Result<SuiteResult> {
    std::fs::create_dir_all(output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    let mut values: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut runs = 0;
    for scenario in scenarios {
        for repetition in 1..=repetitions {
            let config = RunConfig {
                backend,
                topology: PathBuf::from("fixtures/topologies/three-sites.yaml"),
                workflow: PathBuf::from("fixtures/workflows/clas12-pipeline.yaml"),
                scenario: PathBuf::from(format!("fixtures/scenarios/{scenario}.yaml")),
                events: None,
                output: output.join("runs"),
                mock_bin: mock_bin.to_path_buf(),
                quiet: true,
                ersap_fe: None,
                slurm: crate::backends::slurm::SlurmTarget::Local,
                seed: u64::from(repetition),
            };
            let run_id = format!("{scenario}-{}-{repetition}", backend.as_str());
            let run_dir = config.output.join(&run_id);
            std::fs::create_dir_all(&run_dir)?;
            let summary = execute(config, run_id.clone(), run_dir.clone()).await?;
            runs += 1;
            progress(&format!(
                "{scenario} #{repetition}: {}, {} lost, {} duplicated",
                if summary.passed { "passed" } else { "FAILED" },
                summary.events.lost,
                summary.events.duplicated
            ));
            if !summary.passed {
                let mut reasons: Vec<String> = summary
                    .expectations
                    .iter()
                    .filter(|expectation| !expectation.passed)
                    .map(|expectation| format!("{}: got {}", expectation.name, expectation.actual))
                    .collect();
                reasons.extend(summary.errors.iter().cloned());
                failures.push(format!("{scenario} #{repetition}: {}", reasons.join("; ")));
            }
            let entries = read_file(&run_dir.join("benchmarks.json"))
                .map_err(|error| anyhow::anyhow!("{error}"))?;
            for entry in entries {
                values.entry((entry.name, entry.unit)).or_default().push(entry.value);
            }
        }
    }
    let entries: Vec<BenchmarkEntry> = values
        .into_iter()
        .map(|((name, unit), values)| BenchmarkEntry::from_repetitions(name, unit, &values))
        .collect();
    write_file(&output.join("benchmarks.json"), &entries)
        .with_context(|| format!("cannot write {}", output.join("benchmarks.json").display()))?;
    Ok(SuiteResult { entries, failures, runs })
}

/// Runs one scenario; the sim backend needs its own paused single-thread runtime.
async fn execute(config: RunConfig, run_id: String, run_dir: PathBuf) -> anyhow::Result<Summary> {
    let inputs = Inputs::load(&config).map_err(|error| anyhow::anyhow!("{error}"))?;
    if config.backend == BackendKind::Sim {
        return tokio::task::spawn_blocking(move || {
            let runtime = crate::backends::sim::runtime()?;
            runtime
                .block_on(run::execute(&config, inputs, &run_id, &run_dir))
                .map_err(|error| anyhow::anyhow!("{error}"))
        })
        .await?;
    }
    match run::execute(&config, inputs, &run_id, &run_dir).await {
        Ok(summary) => Ok(summary),
        Err(error) => bail!("{run_id}: {error}"),
    }
}

/// Spread of repeated values: `(min, max)`.
pub fn spread(entry: &BenchmarkEntry) -> (f64, f64) {
    let values = entry.values.clone().unwrap_or_else(|| vec![entry.value]);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}
