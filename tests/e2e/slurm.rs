//! The slurm backend on a private Slurm that each run starts on this machine: every event
//! arrives once, a lost node loses no event, and nothing of the run is left afterwards.
//!
//! The tests need Debian's Slurm packages (`cargo xtask install-slurm`). Under `CI=true` a
//! missing Slurm fails them; elsewhere they are skipped with a note.

use std::path::Path;

use crate::support::{latest_json, testbed_run};

/// True when the Slurm daemons are installed; panics under CI when they are not.
pub fn slurm_installed() -> bool {
    let found = ["slurmctld", "slurmd", "slurmrestd", "munged"]
        .iter()
        .all(|name| Path::new("/usr/sbin").join(name).is_file());
    if found {
        return true;
    }
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("Slurm is not installed; CI must run `cargo xtask install-slurm` first");
    }
    eprintln!("note: Slurm is not installed; skipping (cargo xtask install-slurm)");
    false
}

/// Processes whose environment names `run_id`: daemons, job steps or instances of that run.
fn run_processes(run_id: &str) -> Vec<String> {
    let wanted = format!("TESTBED_RUN_ID={run_id}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|byte| *byte == 0).any(|var| var == wanted.as_bytes()) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push(format!("{} {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

fn assert_nothing_left(summary: &serde_json::Value) {
    let run_id = summary["run_id"].as_str().unwrap();
    assert_eq!(run_processes(run_id), Vec::<String>::new(), "processes of run {run_id} remain");
    let runtime = format!("/tmp/testbed-slurm-{run_id}");
    assert!(!Path::new(&runtime).exists(), "{runtime} remains");
}

#[test]
fn slurm_smoke_delivers_every_event_once() {
    if !slurm_installed() {
        return;
    }
    let folder = tempfile::tempdir().unwrap();
    let output = folder.path().join("out");
    let result = testbed_run(&output).arg("--backend=slurm").output().unwrap();
    let summary = latest_json(&output, "summary.json");
    assert!(
        result.status.success(),
        "{}\n{}\n{summary}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(summary["backend"], "slurm");
    let events = &summary["events"];
    assert_eq!(events["lost"], 0, "{summary}");
    assert_eq!(events["duplicated"], 0, "{summary}");
    assert_eq!(events["received"], events["expected"], "{summary}");
    // Every instance ran as a Slurm job of the run's local cluster.
    let slurm = output.join("latest").join("slurm");
    let conf = std::fs::read_to_string(slurm.join("slurm.conf")).unwrap();
    for partition in ["farm", "perlmutter", "defiant"] {
        assert!(conf.contains(&format!("PartitionName={partition} ")), "{conf}");
    }
    let ready_lines = std::fs::read_dir(slurm.join("jobs")).unwrap().count();
    assert_eq!(ready_lines, 8, "one job per instance");
    let ctld_log = std::fs::read_to_string(slurm.join("log").join("slurmctld.log")).unwrap();
    assert!(ctld_log.contains("Allocate JobId=8"), "eight jobs were allocated:\n{ctld_log}");
    assert_nothing_left(&summary);
}

#[test]
fn slurm_node_loss_loses_nothing() {
    if !slurm_installed() {
        return;
    }
    let folder = tempfile::tempdir().unwrap();
    let scenario = folder.path().join("node-loss.yaml");
    std::fs::write(
        &scenario,
        "name: node-loss\nstream: {events: 30000, event_size: 1024, rate: 10000}\n\
         timeout_s: 60\nheartbeat_ms: 200\nactions:\n  - {at_s: 1, kill_node: nid-001}\n\
         expect: {max_lost: 0, max_duplicates: 30000}\n",
    )
    .unwrap();
    let output = folder.path().join("out");
    let result = testbed_run(&output)
        .arg("--backend=slurm")
        .arg(format!("--scenario={}", scenario.display()))
        .output()
        .unwrap();
    let summary = latest_json(&output, "summary.json");
    assert!(result.status.success(), "{}\n{summary}", String::from_utf8_lossy(&result.stdout));
    assert_eq!(summary["events"]["lost"], 0, "{summary}");
    let fault = &summary["faults"][0];
    assert_eq!(fault["kind"], "kill_node");
    assert!(fault["detected_after_s"].as_f64().is_some(), "{summary}");

    // Slurm itself ended the node's jobs.
    let ctld_log = std::fs::read_to_string(output.join("latest/slurm/log/slurmctld.log")).unwrap();
    assert!(ctld_log.contains("Killing JobId="), "no job was ended by the node loss:\n{ctld_log}");
    assert_nothing_left(&summary);
}

#[test]
fn slurm_unreachable_rest_exits_2() {
    let folder = tempfile::tempdir().unwrap();
    let output = folder.path().join("out");
    // A port on loopback that nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let result = testbed_run(&output)
        .args(["--backend=slurm", "--slurm-token=not-a-token"])
        .arg(format!("--slurm-url=http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert_eq!(result.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("is slurmrestd running at that address?"),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn slurm_killed_harness_is_cleaned_by_clean() {
    if !slurm_installed() {
        return;
    }
    let output = tempfile::tempdir().unwrap();
    let mut harness = std::process::Command::new(env!("CARGO_BIN_EXE_testbed"))
        .current_dir(crate::support::project_root())
        .args(["run", "--quiet", "--backend=slurm", "--events=100000000"])
        .arg(format!("--output={}", output.path().display()))
        .env("TESTBED_MOCK_BIN", env!("CARGO_BIN_EXE_mock-ersap"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the run has deployed: the sink's job printed its ready line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let run_dir = loop {
        let deployed = std::fs::read_dir(output.path()).unwrap().flatten().find(|run| {
            let ready = run.path().join("slurm/jobs/HipoReader-s0r0.ready");
            std::fs::read_to_string(ready).is_ok_and(|text| text.contains('\n'))
        });
        if let Some(run) = deployed {
            break run.path();
        }
        if let Ok(Some(status)) = harness.try_wait() {
            panic!("the harness ended ({status}) before it deployed");
        }
        assert!(std::time::Instant::now() < deadline, "the run did not deploy in time");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let run_id = run_dir.file_name().unwrap().to_string_lossy().into_owned();
    harness.kill().unwrap();
    harness.wait().unwrap();
    let left = run_processes(&run_id);
    assert!(
        left.iter().any(|process| process.contains("slurmctld")),
        "a killed harness cannot stop its Slurm: {left:?}"
    );

    let clean = std::process::Command::new(env!("CARGO_BIN_EXE_testbed"))
        .current_dir(crate::support::project_root())
        .arg("clean")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success(), "{stdout}{}", String::from_utf8_lossy(&clean.stderr));
    assert!(stdout.contains("folders of local Slurm clusters"), "{stdout}");
    // SIGKILLed processes leave /proc once reaped; allow them a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !run_processes(&run_id).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(run_processes(&run_id), Vec::<String>::new());
    assert!(!Path::new(&format!("/tmp/testbed-slurm-{run_id}")).exists());
}

#[test]
fn slurm_rejects_names_it_cannot_use() {
    let topology = std::fs::read_to_string(
        crate::support::project_root().join("fixtures/topologies/three-sites.yaml"),
    )
    .unwrap();
    let long = "n".repeat(30);
    let cases =
        [("nid-001", long.as_str(), "allows at most"), ("perlmutter", "default", "Slurm reserves")];
    for (from, to, expected) in cases {
        let folder = tempfile::tempdir().unwrap();
        let file = folder.path().join("topology.yaml");
        std::fs::write(&file, topology.replace(from, to)).unwrap();
        let output = folder.path().join("out");
        let result = testbed_run(&output)
            .arg("--backend=slurm")
            .arg(format!("--topology={}", file.display()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{to}: {stderr}");
        assert!(stderr.contains(expected), "{to}: {stderr}");
    }
}
