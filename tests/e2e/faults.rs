//! Fault scenarios end to end: every fault kind is detected, healed, and loses no event;
//! the sim backend gives the same result for the same seed.

use std::path::Path;

use crate::support::{latest_json, testbed_run};

/// One scenario per fault kind on the three-site fixture, streaming at a fixed rate so that
/// the fault lands mid-stream, plus two that hit the node of the only sink replica
/// (farm-02): what a lost sink recorded must still count as received. Each entry is a
/// label, the fault kind and the actions.
const FAULTS: &[(&str, &str, &str)] = &[
    (
        "kill_instance",
        "kill_instance",
        "  - {at_s: 1, kill_instance: {stage: DCReconstruction, replica: 0}}\n",
    ),
    ("kill_node", "kill_node", "  - {at_s: 1, kill_node: nid-001}\n"),
    (
        "pause_node",
        "pause_node",
        "  - {at_s: 1, pause_node: nid-002}\n  - {at_s: 2.5, resume_node: nid-002}\n",
    ),
    (
        "partition",
        "partition",
        "  - {at_s: 1, partition: nersc/perlmutter}\n  - {at_s: 2.5, heal: nersc/perlmutter}\n",
    ),
    ("lose_cluster", "lose_cluster", "  - {at_s: 1, lose_cluster: ornl/defiant}\n"),
    ("kill_sink_node", "kill_node", "  - {at_s: 1, kill_node: farm-02}\n"),
    (
        "pause_sink_node",
        "pause_node",
        "  - {at_s: 1, pause_node: farm-02}\n  - {at_s: 2.5, resume_node: farm-02}\n",
    ),
];

/// Events per fault scenario: 3 s of stream at 10,000 events/s. Slurm gets 6 s, because its
/// repair waits for a scheduling cycle and must end before the source has sent its last event.
fn events_for(backend: &str) -> u64 {
    if backend == "slurm" { 60000 } else { 30000 }
}

fn write_scenario(folder: &Path, name: &str, actions: &str, events: u64) -> std::path::PathBuf {
    let file = folder.join(format!("{name}.yaml"));
    let text = format!(
        "name: {name}\nstream: {{events: {events}, event_size: 1024, rate: 10000}}\ntimeout_s: 90\n\
         heartbeat_ms: 200\nactions:\n{actions}expect: {{max_lost: 0, max_duplicates: {events}}}\n"
    );
    std::fs::write(&file, text).unwrap();
    file
}

fn run_fault(backend: &str, name: &str, actions: &str) -> serde_json::Value {
    let folder = tempfile::tempdir().unwrap();
    let scenario = write_scenario(folder.path(), name, actions, events_for(backend));
    let output = folder.path().join("out");
    let result = testbed_run(&output)
        .arg(format!("--backend={backend}"))
        .arg(format!("--scenario={}", scenario.display()))
        .output()
        .unwrap();
    let summary = latest_json(&output, "summary.json");
    assert!(
        result.status.success(),
        "{backend} {name}: {}\n{}\n{summary}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    summary
}

fn check_fault(backend: &str, name: &str, kind: &str, summary: &serde_json::Value) {
    assert_eq!(summary["events"]["lost"], 0, "{backend} {name}: {summary}");
    assert_eq!(summary["events"]["expected"], events_for(backend), "{backend} {name}");
    let faults = summary["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 1, "{backend} {name}: {summary}");
    assert_eq!(faults[0]["kind"], kind, "{backend} {name}");
    // How fast is for the recovery benchmark; here the fault must be noticed at all.
    let detected = faults[0]["detected_after_s"].as_f64();
    assert!(detected.is_some(), "{backend} {name}: never detected: {summary}");
}

#[test]
fn sim_fault_kinds_lose_nothing() {
    for (name, kind, actions) in FAULTS {
        let summary = run_fault("sim", name, actions);
        check_fault("sim", name, kind, &summary);
    }
}

#[test]
fn process_fault_kinds_lose_nothing() {
    for (name, kind, actions) in FAULTS {
        let summary = run_fault("process", name, actions);
        check_fault("process", name, kind, &summary);
    }
}

#[test]
fn docker_fault_kinds_lose_nothing() {
    for (name, kind, actions) in FAULTS {
        let summary = run_fault("docker", name, actions);
        check_fault("docker", name, kind, &summary);
    }
}

#[test]
fn sim_same_seed_same_result() {
    let folder = tempfile::tempdir().unwrap();
    let scenario = write_scenario(
        folder.path(),
        "determinism",
        "  - {at_s: 1, kill_node: nid-001}\n  - {at_s: 1.5, scale: {stage: ECReconstruction, to: 3}}\n",
        30000,
    );
    let mut results = Vec::new();
    for attempt in 0..2 {
        let output = folder.path().join(format!("out-{attempt}"));
        testbed_run(&output)
            .args(["--backend=sim", "--seed=42"])
            .arg(format!("--scenario={}", scenario.display()))
            .assert()
            .success();
        let mut summary = latest_json(&output, "summary.json");
        for volatile in ["run_id", "started_at", "commit"] {
            summary.as_object_mut().unwrap().remove(volatile);
        }
        let timeline = std::fs::read_to_string(output.join("latest/timeline.csv")).unwrap();
        results.push((summary, timeline));
    }
    assert_eq!(results[0].0, results[1].0, "summaries differ");
    assert_eq!(results[0].1, results[1].1, "timelines differ");
    assert_eq!(results[0].0["rescales"][0]["to"], 3);
    assert_eq!(results[0].0["events"]["lost"], 0);
}

/// A replica killed after its upstream stage has drained: the replacement gets no end
/// frame from the drained upstream, so it must not wait for one. In the simulation the kill
/// at 3.1 s lands right after the source drained, before the processors did.
#[test]
fn sim_replacement_after_upstream_drained_finishes() {
    let folder = tempfile::tempdir().unwrap();
    let kill = "  - {at_s: 3.1, kill_instance: {stage: DCReconstruction, replica: 0}}\n";
    let scenario = write_scenario(folder.path(), "late_kill", kill, 30000);
    let output = folder.path().join("out");
    let result = testbed_run(&output)
        .args(["--backend=sim", "--seed=7"])
        .arg(format!("--scenario={}", scenario.display()))
        .output()
        .unwrap();
    let summary = latest_json(&output, "summary.json");
    assert!(result.status.success(), "{}\n{summary}", String::from_utf8_lossy(&result.stderr));
    check_fault("sim", "late_kill", "kill_instance", &summary);
}

#[test]
fn scenario_with_unknown_stage_lists_stages() {
    let folder = tempfile::tempdir().unwrap();
    let scenario = write_scenario(
        folder.path(),
        "bad",
        "  - {at_s: 1, scale: {stage: Tracking, to: 2}}\n",
        30000,
    );
    let output = testbed_run(&folder.path().join("out"))
        .arg(format!("--scenario={}", scenario.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{}:6:", scenario.display())), "{stderr}");
    assert!(stderr.contains("unknown stage `Tracking`"), "{stderr}");
    assert!(stderr.contains("DCReconstruction, ECReconstruction"), "{stderr}");
}

#[test]
fn slurm_fault_kinds_lose_nothing() {
    if !crate::slurm::slurm_installed() {
        return;
    }
    for (name, kind, actions) in FAULTS {
        let summary = run_fault("slurm", name, actions);
        check_fault("slurm", name, kind, &summary);
    }
}
