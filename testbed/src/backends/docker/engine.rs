//! The connection to the Docker engine, networks, and removal of a run's resources by label.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures_util::future::join_all;
use orchestrator::backend::BackendError;
use testcontainers::bollard::Docker;
use testcontainers::bollard::models::{ContainerSummary, Network, NetworkCreateRequest};
use testcontainers::bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
};
use tracing::{debug, warn};

/// How long the engine may take to reply to the first request before it counts as unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns testcontainers' client for the configured engine once the engine replies to a ping.
///
/// The error names the address tried and is a [`BackendError::Environment`], which the harness
/// turns into exit code 2.
pub async fn connect() -> Result<Docker, BackendError> {
    let docker = testcontainers::core::client::docker_client_instance()
        .await
        .map_err(|error| unreachable(&error.to_string()))?;
    match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
        Ok(Ok(_)) => Ok(docker),
        Ok(Err(error)) => Err(unreachable(&error.to_string())),
        Err(_) => Err(unreachable(&format!("no reply within {} s", PING_TIMEOUT.as_secs()))),
    }
}

/// Returns a client of its own for `DOCKER_HOST` or the default socket, for code that runs on
/// a runtime other than the harness's: testcontainers' shared client keeps connections that
/// belong to the runtime that opened them.
pub fn connect_new() -> Result<Docker, String> {
    Docker::connect_with_defaults()
        .map_err(|error| format!("cannot connect to the Docker engine at {}: {error}", address()))
}

/// Returns the engine address that a connection tries, for messages.
///
/// NOTE: testcontainers also reads `tc.host` and `docker.host` from
/// `~/.testcontainers.properties` and probes rootless socket paths when `DOCKER_HOST` is unset;
/// this names only the two usual cases.
pub fn address() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => format!("DOCKER_HOST={host}"),
        _ => "unix:///var/run/docker.sock (DOCKER_HOST is not set)".to_string(),
    }
}

fn unreachable(reason: &str) -> BackendError {
    BackendError::Environment(format!(
        "cannot reach the Docker engine at {}: {reason}\n  (hint: start the Docker daemon, or \
         set DOCKER_HOST to its socket, such as unix:///run/user/1000/docker.sock; the user \
         needs access to that socket, for example as a member of the `docker` group)",
        address()
    ))
}

/// Creates a bridge network with the given labels.
pub async fn create_network(
    docker: &Docker,
    name: &str,
    labels: HashMap<String, String>,
) -> Result<(), BackendError> {
    let request = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".to_string()),
        labels: Some(labels),
        ..Default::default()
    };
    docker.create_network(request).await.map(|_| ()).map_err(|error| BackendError::Provision {
        what: format!("network {name}"),
        reason: error.to_string(),
    })
}

/// Containers and networks that carry one label.
#[derive(Debug, Default)]
pub struct Labelled {
    pub containers: Vec<ContainerSummary>,
    pub networks: Vec<Network>,
}

/// How many resources a removal removed, and the errors of those it could not remove.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub containers: usize,
    pub networks: usize,
    pub failures: Vec<String>,
}

/// Lists the containers (running or not) and networks whose labels match `filter`, which is
/// `key` or `key=value`.
pub async fn list_labelled(docker: &Docker, filter: &str) -> Result<Labelled, String> {
    let filters = HashMap::from([("label", vec![filter])]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new().all(true).filters(&filters).build(),
        ))
        .await
        .map_err(|error| format!("cannot list containers labelled {filter}: {error}"))?;
    let networks = docker
        .list_networks(Some(ListNetworksOptionsBuilder::new().filters(&filters).build()))
        .await
        .map_err(|error| format!("cannot list networks labelled {filter}: {error}"))?;
    Ok(Labelled { containers, networks })
}

/// Removes the given containers (killing them if they run), then the given networks.
pub async fn remove(docker: &Docker, labelled: &Labelled) -> Removed {
    let mut removed = Removed::default();
    let container_ids: Vec<&str> =
        labelled.containers.iter().filter_map(|container| container.id.as_deref()).collect();
    let results = join_all(container_ids.iter().map(|id| {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        docker.remove_container(id, Some(options))
    }))
    .await;
    for (id, result) in container_ids.iter().zip(results) {
        match result {
            Ok(()) => removed.containers += 1,
            Err(error) => removed.failures.push(format!("container {id}: {error}")),
        }
    }
    let network_ids: Vec<&str> =
        labelled.networks.iter().filter_map(|network| network.id.as_deref()).collect();
    let results = join_all(network_ids.iter().map(|id| docker.remove_network(id))).await;
    for (id, result) in network_ids.iter().zip(results) {
        match result {
            Ok(()) => removed.networks += 1,
            Err(error) => removed.failures.push(format!("network {id}: {error}")),
        }
    }
    removed
}

/// Removes every container and network that carries `filter`.
pub async fn remove_labelled(docker: &Docker, filter: &str) -> Removed {
    match list_labelled(docker, filter).await {
        Ok(labelled) => remove(docker, &labelled).await,
        Err(error) => Removed { failures: vec![error], ..Removed::default() },
    }
}

/// Removes every container and network that carries `filter`, blocking the calling thread.
///
/// This is the path of the drop guard, which may run while a panic unwinds through a runtime
/// thread, where blocking on async code is not allowed. The removal therefore runs on a new
/// thread with a runtime and a client of its own. When that fails, the `docker` command line
/// client is the last resort.
pub fn remove_labelled_blocking(filter: &str) -> Removed {
    let owned = filter.to_string();
    let worker = std::thread::spawn(move || -> Result<Removed, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("cannot start a runtime: {error}"))?;
        runtime.block_on(async {
            let docker = connect_new()?;
            Ok(remove_labelled(&docker, &owned).await)
        })
    });
    let result = worker.join().unwrap_or_else(|_| Err("the cleanup thread panicked".to_string()));
    match result {
        Ok(removed) if removed.failures.is_empty() => removed,
        Ok(removed) => {
            warn!(failures = ?removed.failures, "some resources were not removed; trying the docker CLI");
            remove_with_cli(filter).unwrap_or(removed)
        }
        Err(error) => {
            warn!(%error, "cleanup through the Docker API failed; trying the docker CLI");
            remove_with_cli(filter).unwrap_or_else(|cli_error| Removed {
                failures: vec![error, cli_error],
                ..Default::default()
            })
        }
    }
}

/// Removes the resources labelled `filter` with `docker rm -f` and `docker network rm`.
fn remove_with_cli(filter: &str) -> Result<Removed, String> {
    let list = |args: &[&str]| -> Result<Vec<String>, String> {
        let output = Command::new("docker")
            .args(args)
            .args(["--filter", &format!("label={filter}"), "--quiet"])
            .output()
            .map_err(|error| format!("cannot run `docker {}`: {error}", args.join(" ")))?;
        Ok(String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect())
    };
    let mut removed = Removed::default();
    let containers = list(&["ps", "--all"])?;
    if !containers.is_empty() {
        let status = Command::new("docker").args(["rm", "--force"]).args(&containers).status();
        debug!(?status, count = containers.len(), "docker rm --force");
        removed.containers = containers.len();
    }
    let networks = list(&["network", "ls"])?;
    if !networks.is_empty() {
        let status = Command::new("docker").args(["network", "rm"]).args(&networks).status();
        debug!(?status, count = networks.len(), "docker network rm");
        removed.networks = networks.len();
    }
    Ok(removed)
}

/// Returns the last `lines` lines of a log file, indented, or `(empty)`.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = crate::backends::process::log_tail(path, lines);
    if text.trim().is_empty() { "    (empty)".to_string() } else { text }
}
