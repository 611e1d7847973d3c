//! `testbed bench compare` on real files: verdicts, exit codes and the Markdown table.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::json;

/// Builds a benchmarks.json with repetitions of a throughput and a latency, and a loss count.
fn benchmarks(throughput: &[f64], latency_ms: &[f64], lost: f64) -> serde_json::Value {
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    json!([
        {
            "name": "smoke/sink_throughput",
            "unit": "events/s",
            "value": median(throughput),
            "values": throughput
        },
        {
            "name": "smoke/latency_p99",
            "unit": "ms",
            "value": median(latency_ms),
            "values": latency_ms
        },
        { "name": "smoke/events_lost", "unit": "events", "value": lost }
    ])
}

fn baseline() -> serde_json::Value {
    benchmarks(&[10000.0, 10150.0, 9900.0, 10050.0, 9980.0], &[20.0, 20.5, 19.8, 20.2, 20.1], 0.0)
}

fn write(folder: &Path, name: &str, value: &serde_json::Value) -> PathBuf {
    let path = folder.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value).unwrap()).unwrap();
    path
}

fn compare(baseline: &Path, candidate: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_testbed"));
    command
        .arg("bench")
        .arg("compare")
        .arg("--baseline")
        .arg(baseline)
        .arg("--candidate")
        .arg(candidate)
        .timeout(std::time::Duration::from_secs(30));
    command
}

fn stdout_of(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stdout).into_owned()
}

fn stderr_of(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stderr).into_owned()
}

#[test]
fn compare_passes_identical_candidate() {
    let folder = tempfile::tempdir().unwrap();
    let base = write(folder.path(), "baseline.json", &baseline());
    let cand = write(folder.path(), "candidate.json", &baseline());

    let assert = compare(&base, &cand).assert().code(0);
    let stdout = stdout_of(&assert);
    assert!(stdout.contains("no regression"), "{stdout}");
    assert!(stdout.contains("| metric | unit | baseline | candidate | change | verdict |"));
    assert_eq!(stdout.matches("within threshold").count(), 3, "{stdout}");
    assert!(stdout.contains("+0.0%"), "{stdout}");
}

#[test]
fn compare_flags_slowed_candidate() {
    let folder = tempfile::tempdir().unwrap();
    let base = write(folder.path(), "baseline.json", &baseline());
    // 30% fewer events per second and 40% more latency, both well outside the baseline's range.
    let slowed =
        benchmarks(&[7000.0, 7100.0, 6900.0, 7050.0, 6980.0], &[28.0, 28.5, 27.8, 28.2, 28.1], 0.0);
    let cand = write(folder.path(), "candidate.json", &slowed);

    let assert = compare(&base, &cand).assert().code(1);
    let stdout = stdout_of(&assert);
    let stderr = stderr_of(&assert);
    assert!(stdout.contains("**2 regressions**"), "{stdout}");
    let throughput_line = stdout.lines().find(|line| line.contains("sink_throughput")).unwrap();
    assert!(throughput_line.contains("-30.0%"), "{throughput_line}");
    assert!(throughput_line.contains("regression"), "{throughput_line}");
    let latency_line = stdout.lines().find(|line| line.contains("latency_p99")).unwrap();
    assert!(latency_line.contains("regression"), "{latency_line}");
    assert!(stderr.contains("smoke/sink_throughput"), "{stderr}");
    assert!(stderr.contains("smoke/latency_p99"), "{stderr}");
}

#[test]
fn compare_flags_new_lost_events() {
    let folder = tempfile::tempdir().unwrap();
    let base = write(folder.path(), "baseline.json", &baseline());
    let lossy = benchmarks(
        &[10000.0, 10150.0, 9900.0, 10050.0, 9980.0],
        &[20.0, 20.5, 19.8, 20.2, 20.1],
        3.0,
    );
    let cand = write(folder.path(), "candidate.json", &lossy);

    let assert = compare(&base, &cand).assert().code(1);
    let stdout = stdout_of(&assert);
    let lost_line = stdout.lines().find(|line| line.contains("events_lost")).unwrap();
    assert!(lost_line.contains("up from 0"), "{lost_line}");
    assert!(lost_line.contains("regression"), "{lost_line}");
}

#[test]
fn compare_warn_only_exits_zero() {
    let folder = tempfile::tempdir().unwrap();
    let base = write(folder.path(), "baseline.json", &baseline());
    let slowed = benchmarks(&[5000.0, 5100.0, 4900.0], &[20.0, 20.5, 19.8], 0.0);
    let cand = write(folder.path(), "candidate.json", &slowed);

    let assert = compare(&base, &cand).arg("--warn-only").assert().code(0);
    assert!(stdout_of(&assert).contains("**1 regression**"));
    assert!(stderr_of(&assert).contains("warning:"));
}

#[test]
fn compare_ignores_change_inside_spread() {
    let folder = tempfile::tempdir().unwrap();
    // The baseline's repetitions spread from 7000 to 12000, so a median of 8500 is noise.
    let noisy_base =
        benchmarks(&[7000.0, 12000.0, 10000.0, 11000.0, 9000.0], &[20.0, 20.5, 19.8], 0.0);
    let base = write(folder.path(), "baseline.json", &noisy_base);
    let cand_values = benchmarks(&[8400.0, 8500.0, 8600.0], &[20.0, 20.5, 19.8], 0.0);
    let cand = write(folder.path(), "candidate.json", &cand_values);

    let assert = compare(&base, &cand).assert().code(0);
    let stdout = stdout_of(&assert);
    let line = stdout.lines().find(|line| line.contains("sink_throughput")).unwrap();
    assert!(line.contains("within noise"), "{line}");
}

#[test]
fn compare_threshold_option_applies() {
    let folder = tempfile::tempdir().unwrap();
    let base =
        write(folder.path(), "baseline.json", &json!([{"name": "t", "unit": "s", "value": 10.0}]));
    let cand =
        write(folder.path(), "candidate.json", &json!([{"name": "t", "unit": "s", "value": 11.5}]));

    compare(&base, &cand).assert().code(1);
    compare(&base, &cand).arg("--threshold=20").assert().code(0);
}

#[test]
fn compare_rejects_invalid_file() {
    let folder = tempfile::tempdir().unwrap();
    let base = write(folder.path(), "baseline.json", &baseline());
    let cand = folder.path().join("candidate.json");
    std::fs::write(&cand, "{\"name\": \"not an array\"}").unwrap();

    let assert = compare(&base, &cand).assert().code(2);
    let stderr = stderr_of(&assert);
    assert!(stderr.contains("candidate.json"), "{stderr}");
    assert!(stderr.contains("not a benchmarks file"), "{stderr}");
}

#[test]
fn compare_rejects_missing_file() {
    let folder = tempfile::tempdir().unwrap();
    let base = write(folder.path(), "baseline.json", &baseline());
    let missing = folder.path().join("missing.json");

    let assert = compare(&base, &missing).assert().code(2);
    assert!(stderr_of(&assert).contains("missing.json"));
}
