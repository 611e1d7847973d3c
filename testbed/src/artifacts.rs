//! Artifact writers: `summary.json`, `benchmarks.json`, `timeline.csv`, `junit.xml`, DPE
//! reports, and the `latest` link next to the run folders.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::results::{EventCounts, LatencyMs, TimelineRow};

/// Everything `summary.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub passed: bool,
    pub run_id: String,
    pub backend: String,
    pub commit: String,
    pub host: String,
    pub started_at: String,
    pub scenario: String,
    pub topology: String,
    pub workflow: String,
    pub events: EventCounts,
    pub stages: Vec<StageSummary>,
    /// Wall time of each phase, in seconds.
    pub phases_s: Phases,
    pub expectations: Vec<ExpectationResult>,
    /// Faults the scenario injected and what each cost.
    pub faults: Vec<crate::faults::FaultRecord>,
    /// Rescales, from scenario actions and from the autoscaler.
    pub rescales: Vec<crate::faults::RescaleRecord>,
    /// Errors that ended the run early, if any.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageSummary {
    pub name: String,
    pub role: String,
    pub class: String,
    pub cluster: String,
    pub nodes: Vec<String>,
    pub replicas: u32,
    pub events_in: u64,
    pub events_out: u64,
    /// Events handled per second over the streaming phase.
    pub throughput_eps: f64,
    /// Highest per-second throughput in the timeline.
    pub peak_eps: f64,
    /// From creation at the source to arrival at this stage.
    pub latency_ms: LatencyMs,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Phases {
    pub provision: f64,
    pub deploy: f64,
    pub stream: f64,
    pub drain: f64,
    pub teardown: f64,
    pub total: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExpectationResult {
    pub name: String,
    pub passed: bool,
    pub expected: String,
    pub actual: String,
}

/// One entry of `benchmarks.json`, in the format github-action-benchmark reads.
#[derive(Debug, Clone, Serialize)]
pub struct Benchmark {
    pub name: String,
    pub unit: String,
    pub value: f64,
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot serialize")?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

pub fn write_timeline(path: &Path, stages: &[String], rows: &[TimelineRow]) -> anyhow::Result<()> {
    let mut text = String::from("second");
    for stage in stages {
        text.push_str(&format!(",{stage}_eps"));
    }
    for stage in stages {
        text.push_str(&format!(",{stage}_replicas"));
    }
    text.push('\n');
    for row in rows {
        text.push_str(&row.second.to_string());
        for value in &row.throughput {
            text.push_str(&format!(",{value:.1}"));
        }
        for value in &row.replicas {
            text.push_str(&format!(",{value}"));
        }
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes the expectations as a JUnit test suite, one test case per expectation.
pub fn write_junit(path: &Path, summary: &Summary) -> anyhow::Result<()> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new(format!("testbed {}", summary.run_id));
    let mut suite = TestSuite::new(format!("{}.{}", summary.scenario, summary.backend));
    for expectation in &summary.expectations {
        let status = if expectation.passed {
            TestCaseStatus::success()
        } else {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status.set_message(format!(
                "expected {}, got {}",
                expectation.expected, expectation.actual
            ));
            status
        };
        suite.add_test_case(TestCase::new(expectation.name.clone(), status));
    }
    for error in &summary.errors {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        status.set_message(error.clone());
        suite.add_test_case(TestCase::new("run", status));
    }
    report.add_test_suite(suite);
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    report.serialize(&mut file).context("cannot serialize the JUnit report")?;
    file.flush().ok();
    Ok(())
}

/// Points `<output>/latest` at the run folder, replacing an older link atomically.
pub fn link_latest(output: &Path, run_id: &str) -> anyhow::Result<PathBuf> {
    let link = output.join("latest");
    let temporary = output.join(format!(".latest-{run_id}"));
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(run_id, &temporary)
        .with_context(|| format!("cannot create {}", temporary.display()))?;
    std::fs::rename(&temporary, &link)
        .with_context(|| format!("cannot replace {}", link.display()))?;
    Ok(link)
}

/// The commit of the working tree, with `-dirty` when it has uncommitted changes.
pub fn current_commit() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(commit) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{commit}-dirty") } else { commit }
        }
        None => "unknown".to_string(),
    }
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
