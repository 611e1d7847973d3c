//! The docker backend on the machine's Docker engine: provisioning and teardown, fault
//! primitives, the smoke scenario end to end, and cleanup after a panic and after a killed
//! harness.
//!
//! These tests need a reachable Docker engine and never skip: without one they fail with a
//! message that names the missing engine. The first of them may spend minutes building the static mock-ersap
//! for the node image; later runs reuse it.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use orchestrator::backend::{Backend, Fault};
use orchestrator::model::Topology;
use testbed::backends::RunLabels;
use testbed::backends::docker::DockerBackend;
use testcontainers::bollard::Docker;
use testcontainers::bollard::models::ContainerInspectResponse;
use testcontainers::bollard::models::ContainerStateStatusEnum;
use testcontainers::bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
};

use crate::support::{file_names, latest_json, project_root, testbed_run};

/// Long enough for the first run to build the static mock-ersap in release mode.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

#[tokio::test(flavor = "multi_thread")]
async fn docker_provision_and_teardown_leave_nothing() {
    let docker = engine().await;
    let logs = tempfile::tempdir().unwrap();
    let mut backend = connect(logs.path()).await;
    let run_filter = format!("testbed.run-id={}", backend.run_id());
    backend.provision(&three_sites()).await.expect("provision");

    let (containers, networks) = labelled(&docker, &run_filter).await;
    assert_eq!(containers.len(), 6, "one container per node: {containers:?}");
    assert_eq!(networks.len(), 4, "one network per cluster and the wan: {networks:?}");
    let wan = format!("tb-{}-wan", backend.run_id());
    assert!(networks.contains(&wan), "{networks:?}");
    for (node, container) in backend.node_containers() {
        let inspect = inspect(&docker, &container).await;
        let labels = inspect.config.clone().unwrap().labels.unwrap();
        assert_eq!(labels["testbed.node"], node);
        assert_eq!(labels["testbed.run-id"], backend.run_id());
        assert_eq!(labels["testbed.harness-pid"], std::process::id().to_string());
        assert!(labels.contains_key("testbed.site"), "{labels:?}");
        assert!(labels.contains_key("testbed.cluster"), "{labels:?}");
        let state = inspect.state.unwrap();
        assert_eq!(state.status, Some(ContainerStateStatusEnum::RUNNING), "{container}");
        let endpoints = inspect.network_settings.clone().unwrap().networks.unwrap();
        assert_eq!(endpoints.len(), 2, "{container} joins its cluster and the wan: {endpoints:?}");
        assert!(endpoints.contains_key(&wan), "{endpoints:?}");
        for (network, endpoint) in &endpoints {
            let aliases = endpoint.aliases.clone().unwrap_or_default();
            assert!(aliases.contains(&node), "{node} is its alias on {network}: {aliases:?}");
        }
        let host_config = inspect.host_config.unwrap();
        let binds = host_config.binds.unwrap_or_default();
        assert!(binds.iter().all(|bind| !bind.contains("docker.sock")), "{binds:?}");
        let published = host_config.port_bindings.unwrap_or_default();
        assert!(published.is_empty(), "no port is published on the host: {published:?}");
    }
    assert!(logs.path().join("node-farm-01.log").is_file());

    backend.teardown().await.expect("teardown");
    let (containers, networks) = labelled(&docker, &run_filter).await;
    assert!(containers.is_empty(), "containers left: {containers:?}");
    assert!(networks.is_empty(), "networks left: {networks:?}");
    backend.teardown().await.expect("a second teardown does nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_faults_change_node_state() {
    let docker = engine().await;
    let logs = tempfile::tempdir().unwrap();
    let mut backend = connect(logs.path()).await;
    let run_filter = format!("testbed.run-id={}", backend.run_id());
    backend.provision(&three_sites()).await.expect("provision");
    let containers: HashMap<String, String> = backend.node_containers().into_iter().collect();
    let wan = format!("tb-{}-wan", backend.run_id());

    backend.pause_node("farm-01").await.unwrap();
    assert_eq!(status(&docker, &containers["farm-01"]).await, ContainerStateStatusEnum::PAUSED);
    backend.unpause_node("farm-01").await.unwrap();
    assert_eq!(status(&docker, &containers["farm-01"]).await, ContainerStateStatusEnum::RUNNING);

    backend.disconnect_cluster("nersc/perlmutter").await.unwrap();
    for node in ["nid-001", "nid-002"] {
        let attached = attached_networks(&docker, &containers[node]).await;
        assert!(!attached.contains(&wan), "{node} is cut off from other sites: {attached:?}");
        assert_eq!(attached.len(), 1, "{node} keeps its cluster network: {attached:?}");
    }
    let other = attached_networks(&docker, &containers["dfnt-01"]).await;
    assert!(other.contains(&wan), "other clusters keep the wan: {other:?}");
    backend.reconnect_cluster("perlmutter").await.unwrap();
    for node in ["nid-001", "nid-002"] {
        let attached = attached_networks(&docker, &containers[node]).await;
        assert!(attached.contains(&wan), "{node} is back on the wan: {attached:?}");
    }

    backend.disconnect_node("dfnt-01").await.unwrap();
    assert!(!attached_networks(&docker, &containers["dfnt-01"]).await.contains(&wan));
    backend.reconnect_node("dfnt-01").await.unwrap();
    assert!(attached_networks(&docker, &containers["dfnt-01"]).await.contains(&wan));

    let stopping = Instant::now();
    backend.stop_node("dfnt-02").await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(4), "the agent ends on SIGTERM at once");
    assert_eq!(status(&docker, &containers["dfnt-02"]).await, ContainerStateStatusEnum::EXITED);
    assert_eq!(exit_code(&docker, &containers["dfnt-02"]).await, 0);
    backend.start_node("dfnt-02").await.unwrap();
    assert_eq!(status(&docker, &containers["dfnt-02"]).await, ContainerStateStatusEnum::RUNNING);

    backend.kill_node("farm-02").await.unwrap();
    let exited = ContainerStateStatusEnum::EXITED;
    assert_eq!(status_within(&docker, &containers["farm-02"], exited).await, exited);
    assert_eq!(exit_code(&docker, &containers["farm-02"]).await, 137, "128 + SIGKILL");

    let error = backend.pause_node("no-such-node").await.unwrap_err();
    assert!(error.to_string().contains("no such node"), "{error}");
    let error = backend.disconnect_cluster("no-such-cluster").await.unwrap_err();
    assert!(error.to_string().contains("no such cluster"), "{error}");

    // The same primitives through the trait the scenario engine uses.
    let topology = three_sites();
    let node = topology.node_by_name("dfnt-01").unwrap().id;
    backend.inject(Fault::PauseNode(node)).await.unwrap();
    assert_eq!(status(&docker, &containers["dfnt-01"]).await, ContainerStateStatusEnum::PAUSED);
    assert!(!backend.node_alive(node).await, "a paused node cannot run instances");
    backend.inject(Fault::ResumeNode(node)).await.unwrap();
    assert_eq!(status(&docker, &containers["dfnt-01"]).await, ContainerStateStatusEnum::RUNNING);
    let cluster = topology.cluster_by_name("jlab/farm").unwrap().id;
    backend.inject(Fault::LoseCluster(cluster)).await.unwrap();
    assert_eq!(status_within(&docker, &containers["farm-01"], exited).await, exited);

    backend.teardown().await.expect("teardown");
    let (containers, networks) = labelled(&docker, &run_filter).await;
    assert!(containers.is_empty(), "containers left: {containers:?}");
    assert!(networks.is_empty(), "networks left: {networks:?}");
}

#[test]
fn docker_smoke_run_delivers_every_event_once() {
    let output = tempfile::tempdir().unwrap();
    let assert = testbed_run(output.path())
        .args(["--backend=docker", "--events=3000"])
        .timeout(RUN_TIMEOUT)
        .assert();
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(assert.get_output().status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("PASSED smoke"), "{stdout}");

    let summary = latest_json(output.path(), "summary.json");
    assert_eq!(summary["passed"], true);
    assert_eq!(summary["backend"], "docker");
    assert_eq!(summary["scenario"], "smoke");
    assert_eq!(summary["events"]["expected"], 3000);
    assert_eq!(summary["events"]["sent"], 3000);
    assert_eq!(summary["events"]["received"], 3000);
    assert_eq!(summary["events"]["lost"], 0);
    assert_eq!(summary["events"]["duplicated"], 0);
    let stages = summary["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 5, "reader, three services, writer");
    for stage in stages {
        assert!(stage["throughput_eps"].as_f64().unwrap() > 0.0, "{stage}");
        assert!(stage["latency_ms"]["p99"].as_f64().is_some(), "{stage}");
    }
    let sink = stages.last().unwrap();
    assert_eq!(sink["events_in"], 3000);
    assert!(sink["cluster"].as_str().unwrap().starts_with("jlab/"), "{sink}");
    // Events cross jlab -> nersc -> ornl -> jlab, which adds 32 + 28 + 9 ms of link delay.
    assert!(sink["latency_ms"]["p50"].as_f64().unwrap() >= 69.0, "{sink}");

    let logs = output.path().join("latest").join("logs");
    let names = file_names(&logs);
    let node_logs = names.iter().filter(|name| name.starts_with("node-")).count();
    assert_eq!(node_logs, 6, "one log per node container: {names:?}");
    let journals: Vec<&String> = names.iter().filter(|name| name.ends_with(".journal")).collect();
    assert_eq!(journals, ["HipoWriter-s4r0.journal"], "the sink's journal: {names:?}");
    let instance_logs = names.len() - node_logs - journals.len();
    assert_eq!(instance_logs, 8, "one log per instance: {names:?}");
    let writer_log = std::fs::read_to_string(logs.join("HipoWriter-s4r0.log")).unwrap();
    assert!(writer_log.contains("instance listening"), "{writer_log}");

    let run_id = summary["run_id"].as_str().unwrap();
    let (containers, networks) = labelled_blocking(&format!("testbed.run-id={run_id}"));
    assert!(containers.is_empty(), "containers left: {containers:?}");
    assert!(networks.is_empty(), "networks left: {networks:?}");
}

#[test]
fn docker_panic_after_deploy_leaves_nothing() {
    let output = tempfile::tempdir().unwrap();
    let assert = testbed_run(output.path())
        .args(["--backend=docker", "--events=3000"])
        .env("TESTBED_PANIC_AFTER_DEPLOY", "1")
        .timeout(RUN_TIMEOUT)
        .assert();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert_eq!(assert.get_output().status.code(), Some(101), "a panic exits 101: {stderr}");
    assert!(stderr.contains("panicking after deploy"), "{stderr}");
    assert!(stderr.contains("removed 6 containers and 4 networks"), "{stderr}");

    let run_id = only_run_id(output.path());
    let (containers, networks) = labelled_blocking(&format!("testbed.run-id={run_id}"));
    assert!(containers.is_empty(), "containers left: {containers:?}");
    assert!(networks.is_empty(), "networks left: {networks:?}");
    let logs = output.path().join(&run_id).join("logs");
    assert!(logs.join("node-farm-01.log").is_file(), "node logs survive the panic");
    assert!(logs.join("HipoReader-s0r0.log").is_file(), "instance logs survive the panic");
}

#[test]
fn docker_killed_harness_is_cleaned_by_clean() {
    let output = tempfile::tempdir().unwrap();
    let mut harness = StdCommand::new(env!("CARGO_BIN_EXE_testbed"))
        .current_dir(project_root())
        .args(["run", "--quiet", "--backend=docker", "--events=100000000"])
        .arg(format!("--output={}", output.path().display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let filter = format!("testbed.harness-pid={}", harness.id());
    // Wait until the run has deployed: every node container exists and the sink has a log.
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let (containers, _) = labelled_blocking(&filter);
        let deployed = std::fs::read_dir(output.path())
            .unwrap()
            .flatten()
            .any(|run| run.path().join("logs").join("HipoReader-s0r0.log").is_file());
        if containers.len() == 6 && deployed {
            break;
        }
        if let Ok(Some(status)) = harness.try_wait() {
            panic!("the harness ended ({status}) before it deployed");
        }
        assert!(Instant::now() < deadline, "the run did not deploy within {RUN_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    harness.kill().unwrap();
    harness.wait().unwrap();
    let (containers, networks) = labelled_blocking(&filter);
    assert_eq!(containers.len(), 6, "a killed harness cannot remove its containers");
    assert_eq!(networks.len(), 4);

    let clean = StdCommand::new(env!("CARGO_BIN_EXE_testbed"))
        .current_dir(project_root())
        .arg("clean")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success(), "{stdout}{}", String::from_utf8_lossy(&clean.stderr));
    assert!(stdout.contains("leftover containers"), "{stdout}");
    let (containers, networks) = labelled_blocking(&filter);
    assert!(containers.is_empty(), "containers left: {containers:?}");
    assert!(networks.is_empty(), "networks left: {networks:?}");
}

#[test]
fn docker_unreachable_engine_exits_2() {
    let output = tempfile::tempdir().unwrap();
    let assert = testbed_run(output.path())
        .arg("--backend=docker")
        .env("DOCKER_HOST", "unix:///nonexistent/testbed-docker.sock")
        .assert();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert_eq!(assert.get_output().status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DOCKER_HOST=unix:///nonexistent/testbed-docker.sock"), "{stderr}");
    assert!(stderr.contains("hint: start the Docker daemon"), "{stderr}");
}

/// Connects to the engine and pings it; fails the test when no engine replies.
async fn engine() -> Docker {
    let docker = Docker::connect_with_defaults().unwrap_or_else(|error| no_engine(&error));
    docker.ping().await.unwrap_or_else(|error| no_engine(&error));
    docker
}

fn no_engine(error: &dyn std::fmt::Display) -> ! {
    panic!(
        "the docker backend tests need a Docker engine at DOCKER_HOST or \
         /var/run/docker.sock, and none answered: {error}"
    )
}

async fn connect(log_dir: &Path) -> DockerBackend {
    let labels = RunLabels { run_id: testbed::run::new_run_id(), harness_pid: std::process::id() };
    DockerBackend::connect(labels, "test-token", log_dir)
        .await
        .unwrap_or_else(|error| panic!("the docker backend cannot start: {error}"))
}

fn three_sites() -> Topology {
    Topology::load(&project_root().join("fixtures/topologies/three-sites.yaml")).unwrap()
}

/// Names of the containers (running or not) and networks whose labels match `filter`.
async fn labelled(docker: &Docker, filter: &str) -> (Vec<String>, Vec<String>) {
    let filters = HashMap::from([("label", vec![filter])]);
    let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    let containers = docker.list_containers(Some(options)).await.unwrap();
    let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
    let networks = docker.list_networks(Some(options)).await.unwrap();
    let container_names = containers
        .into_iter()
        .map(|container| container.names.unwrap_or_default().join(","))
        .collect();
    let network_names = networks.into_iter().filter_map(|network| network.name).collect();
    (container_names, network_names)
}

fn labelled_blocking(filter: &str) -> (Vec<String>, Vec<String>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async { labelled(&engine().await, filter).await })
}

async fn inspect(docker: &Docker, container: &str) -> ContainerInspectResponse {
    docker.inspect_container(container, None::<InspectContainerOptions>).await.unwrap()
}

async fn attached_networks(docker: &Docker, container: &str) -> Vec<String> {
    let inspect = inspect(docker, container).await;
    let networks = inspect.network_settings.and_then(|settings| settings.networks);
    networks.map(|networks| networks.into_keys().collect()).unwrap_or_default()
}

/// Waits up to 5 s for a container to reach `expected` and returns its last status. A killed
/// node's init gets SIGKILL from this host, and the engine records the exit a moment later.
async fn status_within(
    docker: &Docker,
    container: &str,
    expected: ContainerStateStatusEnum,
) -> ContainerStateStatusEnum {
    let start = Instant::now();
    loop {
        let current = status(docker, container).await;
        if current == expected || start.elapsed() > Duration::from_secs(5) {
            return current;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(docker: &Docker, container: &str) -> ContainerStateStatusEnum {
    let inspect = inspect(docker, container).await;
    inspect.state.and_then(|state| state.status).expect("a container has a status")
}

async fn exit_code(docker: &Docker, container: &str) -> i64 {
    let inspect = inspect(docker, container).await;
    inspect.state.and_then(|state| state.exit_code).expect("a stopped container has an exit code")
}

/// Returns the id of the only run folder in `output`.
fn only_run_id(output: &Path) -> String {
    let runs: Vec<String> = std::fs::read_dir(output)
        .unwrap()
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}
