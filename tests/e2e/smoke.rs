//! The smoke scenario on the process backend: exactly-once delivery and every artifact.

use crate::support::{file_names, latest_json, testbed_run};

#[test]
fn smoke_run_delivers_every_event_once() {
    let output = tempfile::tempdir().unwrap();
    let assert = testbed_run(output.path()).arg("--events=6000").assert();
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert.success();
    assert!(stdout.contains("PASSED smoke"), "{stdout}");

    let summary = latest_json(output.path(), "summary.json");
    assert_eq!(summary["passed"], true);
    assert_eq!(summary["backend"], "process");
    assert_eq!(summary["scenario"], "smoke");
    assert!(summary["commit"].as_str().is_some_and(|commit| !commit.is_empty()));
    assert_eq!(summary["events"]["expected"], 6000);
    assert_eq!(summary["events"]["sent"], 6000);
    assert_eq!(summary["events"]["received"], 6000);
    assert_eq!(summary["events"]["lost"], 0);
    assert_eq!(summary["events"]["duplicated"], 0);
    let stages = summary["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 5, "reader, three services, writer");
    for stage in stages {
        assert!(stage["throughput_eps"].as_f64().unwrap() > 0.0, "{stage}");
        assert!(stage["latency_ms"]["p99"].as_f64().is_some(), "{stage}");
    }
    let sink = stages.last().unwrap();
    assert_eq!(sink["events_in"], 6000);
    assert!(sink["cluster"].as_str().unwrap().starts_with("jlab/"), "{sink}");
    // Events cross jlab -> nersc -> ornl -> jlab, which adds 32 + 28 + 9 ms of link delay.
    assert!(sink["latency_ms"]["p50"].as_f64().unwrap() >= 69.0, "{sink}");
    for phase in ["provision", "deploy", "stream", "drain", "teardown", "total"] {
        assert!(summary["phases_s"][phase].as_f64().is_some(), "phase {phase}");
    }
}

#[test]
fn smoke_run_writes_every_artifact() {
    let output = tempfile::tempdir().unwrap();
    testbed_run(output.path()).arg("--events=2000").assert().success();
    let latest = output.path().join("latest");

    let benchmarks = latest_json(output.path(), "benchmarks.json");
    let entries = benchmarks.as_array().expect("benchmarks.json is an array");
    assert!(!entries.is_empty());
    for entry in entries {
        assert!(entry["name"].is_string(), "{entry}");
        assert!(entry["unit"].is_string(), "{entry}");
        assert!(entry["value"].is_number(), "{entry}");
    }

    let timeline = std::fs::read_to_string(latest.join("timeline.csv")).unwrap();
    let header = timeline.lines().next().unwrap();
    assert!(header.starts_with("second,HipoReader_eps"), "{header}");
    assert!(header.contains("HipoWriter_replicas"), "{header}");
    assert!(timeline.lines().count() >= 2, "{timeline}");

    let junit = std::fs::read_to_string(latest.join("junit.xml")).unwrap();
    assert!(junit.contains("events lost"), "{junit}");
    assert!(!junit.contains("<failure"), "{junit}");

    let names = file_names(&latest.join("logs"));
    let logs = names.iter().filter(|name| name.ends_with(".log")).count();
    assert_eq!(logs, 8, "one log per instance, 1 + 2 + 2 + 2 + 1: {names:?}");
    let journals: Vec<&String> = names.iter().filter(|name| name.ends_with(".journal")).collect();
    assert_eq!(journals, ["HipoWriter-s4r0.journal"], "one journal per sink: {names:?}");
    assert_eq!(names.len(), logs + journals.len(), "nothing else: {names:?}");
    assert!(latest.join("testbed.log").is_file());

    let reports: Vec<_> = std::fs::read_dir(latest.join("reports")).unwrap().flatten().collect();
    assert_eq!(reports.len(), 8);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reports[0].path()).unwrap()).unwrap();
    assert!(report["DPERegistration"]["containers"].is_array(), "{report}");
    assert!(report["DPERuntime"]["containers"].is_array(), "{report}");
}

#[test]
fn killed_harness_leaves_no_instance() {
    let output = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_testbed"))
        .current_dir(crate::support::project_root())
        .args(["run", "--quiet", "--events=100000000"])
        .arg(format!("--output={}", output.path().display()))
        .env("TESTBED_MOCK_BIN", env!("CARGO_BIN_EXE_mock-ersap"))
        .spawn()
        .unwrap();
    let harness_pid = child.id().to_string();
    // Wait until its instances exist, then kill the harness without a chance to clean up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while instances_of(&harness_pid) < 8 {
        assert!(std::time::Instant::now() < deadline, "instances never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while instances_of(&harness_pid) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} instances outlived their harness",
            instances_of(&harness_pid)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Counts live processes whose environment names `harness_pid` as their harness.
fn instances_of(harness_pid: &str) -> usize {
    let needle = format!("TESTBED_HARNESS_PID={harness_pid}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| {
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // A zombie has exited already; only its parent has not collected it yet.
            let zombie =
                stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
            !zombie && environ.split(|b| *b == 0).any(|variable| variable == needle.as_bytes())
        })
        .count()
}
