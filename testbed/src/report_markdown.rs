//! `testbed summary --markdown`: a run's `summary.json` as Markdown for a CI job summary
//! (`$GITHUB_STEP_SUMMARY`): the result, the event counts, the phase timings, the stages,
//! faults and rescales with their timings, the expectations, any errors, and a link to the
//! artifacts.
//!
//! It reads the JSON file rather than taking a [`crate::artifacts::Summary`], so that it also
//! works on run folders downloaded from CI; fields it does not show are ignored.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

/// Reads `<run_folder>/summary.json` and renders it; `artifacts_url` becomes the link to the
/// run's artifacts, and without it the summary names the local folder.
pub fn render_run_folder(run_folder: &Path, artifacts_url: Option<&str>) -> anyhow::Result<String> {
    let path = run_folder.join("summary.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}; the run ended before writing its artifacts, or the folder is not a \
             run folder",
            path.display()
        )
    })?;
    let summary: RunSummary = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a testbed summary", path.display()))?;
    let artifacts = match artifacts_url {
        Some(url) => format!("[artifacts of this run]({url})"),
        None => format!("`{}`", run_folder.display()),
    };
    Ok(render(&summary, &artifacts))
}

/// Builds the URL of the current GitHub Actions run's page, which lists its artifacts, from the
/// `GITHUB_SERVER_URL`, `GITHUB_REPOSITORY` and `GITHUB_RUN_ID` variables that Actions sets.
pub fn github_run_url() -> Option<String> {
    let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let server = variable("GITHUB_SERVER_URL")?;
    let repository = variable("GITHUB_REPOSITORY")?;
    let run_id = variable("GITHUB_RUN_ID")?;
    Some(format!("{server}/{repository}/actions/runs/{run_id}"))
}

/// The fields of `summary.json` that the Markdown shows.
#[derive(Debug, Deserialize)]
struct RunSummary {
    passed: bool,
    run_id: String,
    backend: String,
    commit: String,
    #[serde(default)]
    host: String,
    scenario: String,
    events: Events,
    #[serde(default)]
    stages: Vec<Stage>,
    phases_s: Phases,
    #[serde(default)]
    expectations: Vec<Expectation>,
    #[serde(default)]
    errors: Vec<String>,
    #[serde(default)]
    faults: Vec<Fault>,
    #[serde(default)]
    rescales: Vec<Rescale>,
}

#[derive(Debug, Deserialize)]
struct Fault {
    kind: String,
    target: String,
    injected_at_s: f64,
    #[serde(default)]
    detected_after_s: Option<f64>,
    #[serde(default)]
    recovered_after_s: Option<f64>,
    #[serde(default)]
    events_replayed: u64,
}

#[derive(Debug, Deserialize)]
struct Rescale {
    stage: String,
    from: u32,
    to: u32,
    at_s: f64,
    settled_after_s: f64,
}

#[derive(Debug, Deserialize)]
struct Events {
    expected: u64,
    sent: u64,
    received: u64,
    lost: u64,
    duplicated: u64,
}

#[derive(Debug, Deserialize)]
struct Stage {
    name: String,
    #[serde(default)]
    cluster: String,
    replicas: u32,
    throughput_eps: f64,
    latency_ms: Latency,
}

#[derive(Debug, Deserialize)]
struct Latency {
    p50: f64,
    p99: f64,
    count: u64,
}

#[derive(Debug, Deserialize)]
struct Phases {
    provision: f64,
    deploy: f64,
    stream: f64,
    drain: f64,
    teardown: f64,
    total: f64,
}

#[derive(Debug, Deserialize)]
struct Expectation {
    name: String,
    passed: bool,
    expected: String,
    actual: String,
}

fn render(summary: &RunSummary, artifacts: &str) -> String {
    let mut text = String::new();
    let (mark, result) = if summary.passed { ("✅", "passed") } else { ("❌", "failed") };
    let _ = writeln!(
        text,
        "## {mark} testbed: `{}` {result} on the {} backend\n",
        cell(&summary.scenario),
        cell(&summary.backend)
    );
    let short_commit: String = summary.commit.chars().take(12).collect();
    let _ = writeln!(
        text,
        "Run `{}` at commit `{}` on `{}`. Artifacts: {artifacts}.\n",
        cell(&summary.run_id),
        cell(&short_commit),
        cell(&summary.host)
    );

    let events = &summary.events;
    text.push_str("| events | expected | sent | received | lost | duplicated |\n");
    text.push_str("|---|--:|--:|--:|--:|--:|\n");
    let _ = writeln!(
        text,
        "| count | {} | {} | {} | {} | {} |\n",
        events.expected, events.sent, events.received, events.lost, events.duplicated
    );

    let phases = &summary.phases_s;
    let _ = writeln!(
        text,
        "**Timings**: provision {:.2} s, deploy {:.2} s, stream {:.2} s, drain {:.2} s, \
         teardown {:.2} s, total {:.2} s.\n",
        phases.provision, phases.deploy, phases.stream, phases.drain, phases.teardown, phases.total
    );

    if !summary.stages.is_empty() {
        text.push_str("| stage | cluster | replicas | events/s | p50 ms | p99 ms |\n");
        text.push_str("|---|---|--:|--:|--:|--:|\n");
        for stage in &summary.stages {
            let (p50, p99) = if stage.latency_ms.count > 0 {
                (format!("{:.1}", stage.latency_ms.p50), format!("{:.1}", stage.latency_ms.p99))
            } else {
                ("–".to_string(), "–".to_string())
            };
            let _ = writeln!(
                text,
                "| {} | {} | {} | {:.0} | {p50} | {p99} |",
                cell(&stage.name),
                cell(&stage.cluster),
                stage.replicas,
                stage.throughput_eps
            );
        }
        text.push('\n');
    }

    if !summary.faults.is_empty() {
        text.push_str(
            "| fault | target | at s | detected after s | recovered after s | events replayed |\n\
             |---|---|--:|--:|--:|--:|\n",
        );
        for fault in &summary.faults {
            let _ = writeln!(
                text,
                "| {} | {} | {:.2} | {} | {} | {} |",
                cell(&fault.kind),
                cell(&fault.target),
                fault.injected_at_s,
                seconds_or_never(fault.detected_after_s),
                seconds_or_never(fault.recovered_after_s),
                fault.events_replayed
            );
        }
        text.push('\n');
    }

    if !summary.rescales.is_empty() {
        text.push_str("| rescale | replicas | at s | settled after s |\n|---|---|--:|--:|\n");
        for rescale in &summary.rescales {
            let _ = writeln!(
                text,
                "| {} | {} → {} | {:.2} | {:.2} |",
                cell(&rescale.stage),
                rescale.from,
                rescale.to,
                rescale.at_s,
                rescale.settled_after_s
            );
        }
        text.push('\n');
    }

    if !summary.expectations.is_empty() {
        text.push_str("| expectation | expected | actual | result |\n|---|---|---|---|\n");
        for expectation in &summary.expectations {
            let result = if expectation.passed { "✅ passed" } else { "❌ failed" };
            let _ = writeln!(
                text,
                "| {} | {} | {} | {result} |",
                cell(&expectation.name),
                cell(&expectation.expected),
                cell(&expectation.actual)
            );
        }
        text.push('\n');
    }

    if !summary.errors.is_empty() {
        text.push_str("Errors:\n\n");
        for error in &summary.errors {
            let _ = writeln!(text, "- {}", cell(error));
        }
        text.push('\n');
    }
    text
}

fn seconds_or_never(seconds: Option<f64>) -> String {
    match seconds {
        Some(seconds) => format!("{seconds:.2}"),
        None => "never".to_string(),
    }
}

/// Makes text safe inside a Markdown table cell or code span: one line, no column separator,
/// no backtick that would end the span.
fn cell(text: &str) -> String {
    text.replace(['\n', '\r'], " ").replace('|', "\\|").replace('`', "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = r#"{
      "passed": false, "run_id": "20260101-000000-abcdef", "backend": "process",
      "commit": "0123456789abcdef0123", "host": "ci", "started_at": "2026-01-01T00:00:00Z",
      "scenario": "smoke", "topology": "t.yaml", "workflow": "w.yaml",
      "events": {"expected": 100, "sent": 100, "received": 98, "lost": 2, "duplicated": 0},
      "stages": [
        {"name": "Reader", "cluster": "jlab/farm", "replicas": 1, "throughput_eps": 50.0,
         "latency_ms": {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "count": 0}},
        {"name": "Writer", "cluster": "jlab/farm", "replicas": 1, "throughput_eps": 49.0,
         "latency_ms": {"p50": 10.0, "p90": 12.0, "p99": 14.5, "max": 15.0, "count": 98}}
      ],
      "phases_s": {"provision": 0.1, "deploy": 0.2, "stream": 2.0, "drain": 0.3,
                   "teardown": 0.1, "total": 2.7},
      "expectations": [
        {"name": "events lost", "passed": false, "expected": "at most 0", "actual": "2"}
      ],
      "faults": [
        {"kind": "kill", "target": "Writer/0", "injected_at_s": 1.0, "detected_after_s": 0.25,
         "recovered_after_s": null, "events_replayed": 12, "dip_depth": 1.0, "dip_length_s": 1.5}
      ],
      "rescales": [
        {"stage": "Writer", "from": 1, "to": 2, "at_s": 0.5, "settled_after_s": 0.4,
         "steps": 1, "automatic": false}
      ],
      "errors": ["sink | stopped"]
    }"#;

    fn rendered() -> String {
        let summary: RunSummary = serde_json::from_str(SUMMARY).unwrap();
        render(&summary, "[artifacts of this run](https://example.invalid/run/1)")
    }

    #[test]
    fn markdown_states_result_and_link() {
        let text = rendered();
        assert!(text.starts_with("## ❌ testbed: `smoke` failed on the process backend"), "{text}");
        assert!(text.contains("commit `0123456789ab`"), "{text}");
        assert!(text.contains("(https://example.invalid/run/1)"), "{text}");
    }

    #[test]
    fn markdown_lists_events_timings_and_stages() {
        let text = rendered();
        assert!(text.contains("| count | 100 | 100 | 98 | 2 | 0 |"), "{text}");
        assert!(text.contains("stream 2.00 s"), "{text}");
        assert!(text.contains("total 2.70 s"), "{text}");
        assert!(text.contains("| Reader | jlab/farm | 1 | 50 | – | – |"), "{text}");
        assert!(text.contains("| Writer | jlab/farm | 1 | 49 | 10.0 | 14.5 |"), "{text}");
    }

    #[test]
    fn markdown_shows_failed_expectation_and_escaped_error() {
        let text = rendered();
        assert!(text.contains("| events lost | at most 0 | 2 | ❌ failed |"), "{text}");
        assert!(text.contains("- sink \\| stopped"), "{text}");
    }

    #[test]
    fn markdown_lists_faults_and_rescales() {
        let text = rendered();
        assert!(text.contains("| kill | Writer/0 | 1.00 | 0.25 | never | 12 |"), "{text}");
        assert!(text.contains("| Writer | 1 → 2 | 0.50 | 0.40 |"), "{text}");
    }

    #[test]
    fn missing_summary_names_file() {
        let folder = tempfile::tempdir().unwrap();
        let error = render_run_folder(folder.path(), None).unwrap_err();
        assert!(format!("{error:#}").contains("summary.json"), "{error:#}");
    }
}
