//! Finding and removing what killed runs left behind.
//!
//! Every instance process carries `TESTBED_RUN_ID` and `TESTBED_HARNESS_PID` in its
//! environment. A process whose harness no longer exists is left over. The docker backend's
//! containers and networks carry the same facts as labels instead.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use testcontainers::bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptions,
};
use tracing::warn;

use crate::backends::docker::engine::{self, Labelled, Removed};
use crate::backends::docker::labels;
use crate::backends::{HARNESS_PID_ENV, RUN_ID_ENV};

/// An instance process whose harness is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftoverProcess {
    pub pid: i32,
    pub run_id: String,
    pub harness_pid: i32,
}

/// Lists instance processes of runs whose harness process no longer exists.
pub fn leftover_processes() -> Vec<LeftoverProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let mut run_id = None;
        let mut harness_pid = None;
        for variable in environ.split(|byte| *byte == 0) {
            let text = String::from_utf8_lossy(variable);
            if let Some(value) = text.strip_prefix(&format!("{RUN_ID_ENV}=")) {
                run_id = Some(value.to_string());
            } else if let Some(value) = text.strip_prefix(&format!("{HARNESS_PID_ENV}=")) {
                harness_pid = value.parse::<i32>().ok();
            }
        }
        if let (Some(run_id), Some(harness_pid)) = (run_id, harness_pid) {
            if !process_exists(harness_pid) {
                found.push(LeftoverProcess { pid, run_id, harness_pid });
            }
        }
    }
    found
}

/// Removes the folders under /tmp of local Slurm clusters whose runs have no process
/// left; returns how many it removed. Call it after the leftover processes are killed.
pub fn remove_slurm_dirs() -> usize {
    let Ok(entries) = std::fs::read_dir("/tmp") else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(run_id) = name.strip_prefix(crate::backends::slurm::local::RUNTIME_DIR_PREFIX)
        else {
            continue;
        };
        if crate::backends::slurm::local::run_processes_with(run_id, &[]).is_empty()
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Kills the given processes with SIGKILL; returns how many were still there to kill.
pub fn kill_processes(processes: &[LeftoverProcess]) -> usize {
    processes
        .iter()
        .filter(|process| kill(Pid::from_raw(process.pid), Signal::SIGKILL).is_ok())
        .count()
}

fn process_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

// Docker leftovers. Every container and network of the docker backend carries the labels of
// `backends::docker::labels`. One whose harness pid no longer runs on this host is left over.

/// Containers and networks of docker runs whose harness process no longer exists.
#[derive(Debug, Default)]
pub struct DockerLeftovers {
    /// Names of the containers, running or not.
    pub containers: Vec<String>,
    /// Names of the networks.
    pub networks: Vec<String>,
    /// Run ids they belong to.
    pub runs: BTreeSet<String>,
    labelled: Labelled,
}

impl DockerLeftovers {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.networks.is_empty()
    }
}

/// Lists the Docker containers and networks of runs whose harness is gone. Only resources
/// labelled with this host's name are judged, because a pid means nothing on another host.
/// Returns an error message when the engine cannot be reached.
pub async fn docker_leftovers() -> Result<DockerLeftovers, String> {
    let docker = engine::connect().await.map_err(|error| error.to_string())?;
    let labelled = engine::list_labelled(&docker, labels::HARNESS_PID).await?;
    let host = crate::artifacts::host_name();
    let is_leftover = |resource_labels: Option<&HashMap<String, String>>| {
        let Some(resource_labels) = resource_labels else { return false };
        let same_host = resource_labels.get(labels::HARNESS_HOST).is_none_or(|name| *name == host);
        let harness_gone = resource_labels
            .get(labels::HARNESS_PID)
            .and_then(|pid| pid.parse::<i32>().ok())
            .is_some_and(|pid| !process_exists(pid));
        same_host && harness_gone
    };
    let mut leftovers = DockerLeftovers::default();
    for container in labelled.containers {
        if is_leftover(container.labels.as_ref()) {
            let name = container.names.as_ref().and_then(|names| names.first()).cloned();
            leftovers.containers.push(name.unwrap_or_default().trim_start_matches('/').to_string());
            leftovers.runs.extend(run_id_label(container.labels.as_ref()));
            leftovers.labelled.containers.push(container);
        }
    }
    for network in labelled.networks {
        if is_leftover(network.labels.as_ref()) {
            leftovers.networks.push(network.name.clone().unwrap_or_default());
            leftovers.runs.extend(run_id_label(network.labels.as_ref()));
            leftovers.labelled.networks.push(network);
        }
    }
    Ok(leftovers)
}

/// Removes the listed containers, then the listed networks.
pub async fn remove_docker_leftovers(leftovers: &DockerLeftovers) -> Result<Removed, String> {
    let docker = engine::connect().await.map_err(|error| error.to_string())?;
    Ok(engine::remove(&docker, &leftovers.labelled).await)
}

/// Removes node images that no container uses, except the newest one, which the next run is
/// likely to reuse. Returns the references of the removed images.
pub async fn remove_unused_images() -> Result<Vec<String>, String> {
    let docker = engine::connect().await.map_err(|error| error.to_string())?;
    let filters = HashMap::from([("label", vec![labels::MANAGED])]);
    let mut images = docker
        .list_images(Some(ListImagesOptionsBuilder::new().filters(&filters).build()))
        .await
        .map_err(|error| format!("cannot list images: {error}"))?;
    let containers = docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
        .await
        .map_err(|error| format!("cannot list containers: {error}"))?;
    let used: BTreeSet<String> =
        containers.into_iter().filter_map(|container| container.image_id).collect();
    images.sort_by_key(|image| std::cmp::Reverse(image.created));
    let mut removed = Vec::new();
    for image in images.iter().skip(1).filter(|image| !used.contains(&image.id)) {
        let reference = image.repo_tags.first().cloned().unwrap_or_else(|| image.id.clone());
        match docker.remove_image(&image.id, None::<RemoveImageOptions>, None).await {
            Ok(_) => removed.push(reference),
            Err(error) => warn!(image = %reference, %error, "cannot remove an old node image"),
        }
    }
    Ok(removed)
}

fn run_id_label(resource_labels: Option<&HashMap<String, String>>) -> Option<String> {
    resource_labels.and_then(|all| all.get(labels::RUN_ID)).cloned()
}
