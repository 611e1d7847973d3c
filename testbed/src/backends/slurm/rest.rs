//! Client of slurmrestd's REST API, version v0.0.38 (the newest that Slurm 22.05 serves).
//!
//! Only the calls the backend needs: ping, node and job listings, scheduler statistics,
//! job submission and cancel. Slurm reports errors with HTTP 4xx or 5xx and a JSON body
//! whose `errors` list gives the reason. Both end up in [`RestError`].

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// API version of every path.
pub const API: &str = "v0.0.38";
/// Longest wait for one REST reply. slurmrestd asks slurmctld, which can take seconds
/// when it is busy or restarting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("slurmrestd {method} {path}: {reason}")]
pub struct RestError {
    pub method: String,
    pub path: String,
    pub reason: String,
}

/// Client of one slurmrestd: its base URL and the user and token the requests act as.
#[derive(Debug, Clone)]
pub struct SlurmRest {
    http: Client,
    base: String,
    user: String,
    token: String,
}

/// A job as Slurm reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct JobInfo {
    pub job_id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub job_state: String,
    #[serde(default)]
    pub state_reason: String,
    #[serde(default)]
    pub nodes: String,
    /// Raw wait status of the batch script: 768 for `exit 3`, 9 for SIGKILL.
    #[serde(default)]
    pub exit_code: Option<i64>,
}

impl JobInfo {
    /// True once the job will not run again: Slurm's requeue is off for the testbed's jobs.
    pub fn is_finished(&self) -> bool {
        !matches!(
            self.job_state.as_str(),
            "PENDING" | "RUNNING" | "CONFIGURING" | "SUSPENDED" | "REQUEUED" | "RESIZING"
        ) && !self.job_state.is_empty()
    }

    /// Describes how the job ended, for failure reports.
    pub fn describe_end(&self) -> String {
        let mut text = format!("slurm job {} ended {}", self.job_id, self.job_state);
        if !self.state_reason.is_empty() && self.state_reason != "None" {
            text.push_str(&format!(" ({})", self.state_reason));
        }
        if let Some(status) = self.exit_code {
            text.push_str(&format!(", wait status {status}"));
        }
        text
    }
}

/// A node as Slurm reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub state_flags: Vec<String>,
    #[serde(default)]
    pub partitions: Vec<String>,
}

impl NodeInfo {
    /// Returns true when the node is idle, mixed or allocated and responds to its controller.
    pub fn is_usable(&self) -> bool {
        matches!(self.state.as_str(), "idle" | "mixed" | "allocated")
            && !self.state_flags.iter().any(|flag| {
                matches!(flag.as_str(), "NOT_RESPONDING" | "DRAIN" | "DRAINING" | "DRAINED")
            })
    }
}

/// Request of [`SlurmRest::submit`]: one batch job pinned to one node.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub name: String,
    pub partition: String,
    pub node: String,
    pub script: String,
    pub working_dir: String,
    pub stdout: String,
    pub stderr: String,
    pub environment: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Errors {
    #[serde(default)]
    errors: Vec<Value>,
}

impl SlurmRest {
    pub fn new(base: &str, user: &str, token: &str) -> Result<SlurmRest, String> {
        let http = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|error| format!("cannot build an HTTP client: {error}"))?;
        Ok(SlurmRest {
            http,
            base: base.trim_end_matches('/').to_string(),
            user: user.to_string(),
            token: token.to_string(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, RestError> {
        let url = format!("{}/slurm/{API}{path}", self.base);
        let error =
            |reason: String| RestError { method: method.to_string(), path: path.into(), reason };
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header("X-SLURM-USER-NAME", &self.user)
            .header("X-SLURM-USER-TOKEN", &self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| error(describe(&e)))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| error(describe(&e)))?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(error(
                "401 unauthorized: the token or user name is wrong (a token comes from \
                 `scontrol token`)"
                    .to_string(),
            ));
        }
        let reported = serde_json::from_str::<Errors>(&text).map(|body| body.errors);
        let reported = reported.unwrap_or_default();
        if !status.is_success() || !reported.is_empty() {
            let detail = if reported.is_empty() {
                text.trim().chars().take(300).collect::<String>()
            } else {
                reported.iter().map(error_text).collect::<Vec<_>>().join("; ")
            };
            return Err(error(format!("HTTP {status}: {detail}")));
        }
        serde_json::from_str(&text).map_err(|e| error(format!("unexpected reply ({e}): {text}")))
    }

    pub async fn ping(&self) -> Result<(), RestError> {
        self.call::<Value>(Method::GET, "/ping", None).await.map(|_| ())
    }

    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, RestError> {
        #[derive(Deserialize)]
        struct Reply {
            nodes: Vec<NodeInfo>,
        }
        Ok(self.call::<Reply>(Method::GET, "/nodes", None).await?.nodes)
    }

    pub async fn jobs(&self) -> Result<Vec<JobInfo>, RestError> {
        #[derive(Deserialize)]
        struct Reply {
            jobs: Vec<JobInfo>,
        }
        Ok(self.call::<Reply>(Method::GET, "/jobs", None).await?.jobs)
    }

    pub async fn job(&self, job_id: u64) -> Result<JobInfo, RestError> {
        #[derive(Deserialize)]
        struct Reply {
            jobs: Vec<JobInfo>,
        }
        let path = format!("/job/{job_id}");
        let reply = self.call::<Reply>(Method::GET, &path, None).await?;
        reply.jobs.into_iter().next().ok_or_else(|| RestError {
            method: "GET".into(),
            path,
            reason: "the reply lists no job".into(),
        })
    }

    /// Scheduling cycles the controller has run. A job submitted before the first one can
    /// wait seconds, so a new cluster counts as ready only once this is at least 1.
    pub async fn schedule_cycles(&self) -> Result<u64, RestError> {
        let reply = self.call::<Value>(Method::GET, "/diag", None).await?;
        Ok(reply["statistics"]["schedule_cycle_total"].as_u64().unwrap_or(0))
    }

    /// Submits a batch job and returns its id. Slurm's own requeue is off for it
    /// (`no_requeue`), so that a job on a failed node ends instead of coming back: the
    /// recovery measured is the orchestrator's.
    pub async fn submit(&self, job: &JobRequest) -> Result<u64, RestError> {
        let body = json!({
            "script": job.script,
            "job": {
                "name": job.name,
                "partition": job.partition,
                "nodelist": job.node,
                "nodes": 1,
                "no_requeue": true,
                "current_working_directory": job.working_dir,
                "standard_output": job.stdout,
                "standard_error": job.stderr,
                "environment": job.environment,
            }
        });
        #[derive(Deserialize)]
        struct Reply {
            job_id: u64,
        }
        Ok(self.call::<Reply>(Method::POST, "/job/submit", Some(body)).await?.job_id)
    }

    /// Cancels a job: Slurm sends SIGTERM, then SIGKILL after its kill wait.
    pub async fn cancel(&self, job_id: u64) -> Result<(), RestError> {
        self.call::<Value>(Method::DELETE, &format!("/job/{job_id}"), None).await.map(|_| ())
    }
}

fn error_text(error: &Value) -> String {
    let description = error["description"].as_str().or_else(|| error["error"].as_str());
    match (description, error["error_number"].as_i64().or_else(|| error["error_code"].as_i64())) {
        (Some(text), Some(code)) => format!("{text} (error {code})"),
        (Some(text), None) => text.to_string(),
        _ => error.to_string(),
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_builder() {
        "invalid URL; write it as http://HOST:PORT".to_string()
    } else if error.is_connect() {
        "cannot connect; is slurmrestd running at that address?".to_string()
    } else if error.is_timeout() {
        format!("no reply within {} s", REQUEST_TIMEOUT.as_secs())
    } else {
        error.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: &str) -> JobInfo {
        JobInfo {
            job_id: 7,
            name: "x".into(),
            job_state: state.into(),
            state_reason: "NodeDown".into(),
            nodes: "farm-01".into(),
            exit_code: Some(9),
        }
    }

    #[test]
    fn finished_states_are_the_final_ones() {
        for state in ["PENDING", "RUNNING", "CONFIGURING", ""] {
            assert!(!job(state).is_finished(), "{state}");
        }
        for state in ["COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT"] {
            assert!(job(state).is_finished(), "{state}");
        }
        assert_eq!(
            job("NODE_FAIL").describe_end(),
            "slurm job 7 ended NODE_FAIL (NodeDown), wait status 9"
        );
    }

    #[test]
    fn nodes_not_responding_are_not_usable() {
        let node = |state: &str, flags: &[&str]| NodeInfo {
            name: "n".into(),
            state: state.into(),
            state_flags: flags.iter().map(|flag| flag.to_string()).collect(),
            partitions: Vec::new(),
        };
        assert!(node("idle", &[]).is_usable());
        assert!(node("mixed", &[]).is_usable());
        assert!(!node("idle", &["NOT_RESPONDING"]).is_usable());
        assert!(!node("down", &[]).is_usable());
        assert!(!node("idle", &["DRAIN"]).is_usable());
    }
}
