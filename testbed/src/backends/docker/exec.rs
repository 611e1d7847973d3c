//! Instances as processes in node containers, started with `docker exec`.
//!
//! Each instance's exec stream is attached: a task reads the first stdout line (the ready
//! line), appends everything on stderr, and any later stdout, to the instance's log file, and
//! records how the process ended once the stream closes. The stream closes when the process
//! exits or its container stops.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use orchestrator::control::ReadyLine;
use testcontainers::bollard::Docker;
use testcontainers::bollard::container::LogOutput;
use testcontainers::bollard::errors::Error as DockerError;
use testcontainers::bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tracing::debug;

use super::engine;

/// How long a new instance may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Interval and count of the inspections after a process's output closed, until Docker reports
/// its exit code. The output can close a moment before Docker records the exit.
const EXIT_CODE_POLL: Duration = Duration::from_millis(50);
const EXIT_CODE_POLLS: u32 = 20;

/// A command to run in a node container.
pub struct ExecRequest<'a> {
    pub container: &'a str,
    pub command: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    pub log_path: PathBuf,
}

/// A process started in a node container.
pub struct ExecProcess {
    pub exec_id: String,
    /// Process id in the host's PID namespace, as Docker reports it.
    pub host_pid: Option<i64>,
    pub ready: ReadyLine,
    exit: watch::Receiver<Option<String>>,
}

impl ExecProcess {
    /// Returns how the process ended, or `None` while it runs.
    pub fn exit_reason(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// Waits up to `timeout` for the process to end; returns how it ended.
    pub async fn wait(&mut self, timeout: Duration) -> Option<String> {
        let ended = tokio::time::timeout(timeout, self.exit.wait_for(Option::is_some)).await;
        match ended {
            Ok(Ok(reason)) => reason.clone(),
            _ => None,
        }
    }
}

/// Starts a process in a container and returns once it printed its ready line. The error is a
/// reason for [`orchestrator::backend::BackendError::Start`].
pub async fn start(docker: &Docker, request: ExecRequest<'_>) -> Result<ExecProcess, String> {
    let options = CreateExecOptions {
        cmd: Some(request.command),
        env: Some(request.env),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let created = docker
        .create_exec(request.container, options)
        .await
        .map_err(|error| format!("docker exec in {} failed: {error}", request.container))?;
    let options = StartExecOptions { detach: false, tty: false, output_capacity: None };
    let started = docker.start_exec(&created.id, Some(options)).await.map_err(|error| {
        format!("docker exec in {} failed to start: {error}", request.container)
    })?;
    let StartExecResults::Attached { output, input } = started else {
        return Err("docker exec started detached although attached was requested".to_string());
    };
    let log = tokio::fs::File::create(&request.log_path)
        .await
        .map_err(|error| format!("cannot create {}: {error}", request.log_path.display()))?;
    let (ready_sender, ready_receiver) = oneshot::channel();
    let (exit_sender, mut exit) = watch::channel(None);
    tokio::spawn(pump(
        docker.clone(),
        created.id.clone(),
        output,
        input,
        log,
        ready_sender,
        exit_sender,
    ));

    let line = match tokio::time::timeout(READY_TIMEOUT, ready_receiver).await {
        Ok(Ok(line)) => line,
        Ok(Err(_)) => {
            let reason =
                exit.wait_for(Option::is_some).await.ok().and_then(|reason| reason.clone());
            return Err(format!(
                "it ended ({}) before it was ready; last log lines:\n{}",
                reason.unwrap_or_else(|| "no exit status".to_string()),
                engine::tail(&request.log_path, 10)
            ));
        }
        Err(_) => {
            return Err(format!(
                "no ready line within {} s; see {}",
                READY_TIMEOUT.as_secs(),
                request.log_path.display()
            ));
        }
    };
    let ready: ReadyLine = serde_json::from_str(&line)
        .map_err(|error| format!("invalid ready line `{line}`: {error}"))?;
    let host_pid = exec_pid(docker, &created.id).await;
    Ok(ExecProcess { exec_id: created.id, host_pid, ready, exit })
}

/// Host pid of a running exec. The engine can report pid 0 for a short while after the
/// process has started, so a zero is asked again for up to a second.
async fn exec_pid(docker: &Docker, exec_id: &str) -> Option<i64> {
    for _ in 0..50 {
        match docker.inspect_exec(exec_id).await.ok().and_then(|inspect| inspect.pid) {
            Some(pid) if pid > 0 => return Some(pid),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    None
}

type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;

/// Reads an exec's output until it closes: the first stdout line goes to `ready`, the rest to
/// the log. Then records how the process ended in `exit`.
async fn pump(
    docker: Docker,
    exec_id: String,
    mut output: Output,
    // Held until the output ends: the exec's connection stays whole while the process runs.
    _input: Pin<Box<dyn AsyncWrite + Send>>,
    mut log: tokio::fs::File,
    ready: oneshot::Sender<String>,
    exit: watch::Sender<Option<String>>,
) {
    let mut ready = Some(ready);
    let mut first_line = Vec::new();
    while let Some(item) = output.next().await {
        match item {
            Ok(LogOutput::StdErr { message }) => append(&mut log, &message).await,
            Ok(LogOutput::StdOut { message }) => match ready.take() {
                Some(sender) => {
                    first_line.extend_from_slice(&message);
                    match first_line.iter().position(|byte| *byte == b'\n') {
                        Some(end) => {
                            let line = String::from_utf8_lossy(&first_line[..end]);
                            let _ = sender.send(line.trim().to_string());
                            append(&mut log, &first_line[end + 1..]).await;
                        }
                        None => ready = Some(sender),
                    }
                }
                None => append(&mut log, &message).await,
            },
            Ok(_) => {}
            Err(error) => {
                append(
                    &mut log,
                    format!("testbed: reading the output failed: {error}\n").as_bytes(),
                )
                .await;
                break;
            }
        }
    }
    // A dropped sender lets a waiting `start` know that no ready line will come.
    drop(ready);
    let reason = exit_reason(&docker, &exec_id).await;
    debug!(exec = %exec_id, %reason, "instance process ended");
    let _ = log.flush().await;
    let _ = exit.send(Some(reason));
}

async fn exit_reason(docker: &Docker, exec_id: &str) -> String {
    for _ in 0..EXIT_CODE_POLLS {
        match docker.inspect_exec(exec_id).await {
            Ok(inspect) if inspect.running == Some(true) => {}
            Ok(inspect) => {
                return match inspect.exit_code {
                    Some(code) => format!("process exited with code {code}"),
                    None => "process ended without an exit code; its container was stopped or \
                             killed"
                        .to_string(),
                };
            }
            Err(error) => return format!("process ended; its exit code is unknown: {error}"),
        }
        tokio::time::sleep(EXIT_CODE_POLL).await;
    }
    "output closed but Docker still reports the process as running".to_string()
}

async fn append(log: &mut tokio::fs::File, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // A log that cannot be written must not stop the instance; the harness's own log names
    // the folder, and the run goes on.
    if log.write_all(bytes).await.is_ok() {
        let _ = log.flush().await;
    }
}

/// Path of an instance's log file.
pub fn log_path(log_dir: &Path, instance: &str) -> PathBuf {
    log_dir.join(format!("{instance}.log"))
}
