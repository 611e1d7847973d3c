//! HTTP client for the control API of mock instances (see [`crate::control`]).

use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::control::{Drain, Health, REQUEST_TIMEOUT, Stats, Targets};

/// A failed control request, naming the instance, the request and what happened.
#[derive(Debug, thiserror::Error)]
#[error("{method} {url} on instance {instance} failed: {reason}")]
pub struct ControlError {
    pub instance: String,
    pub method: String,
    pub url: String,
    pub reason: String,
    /// True when the instance could not be reached at all, as opposed to an error reply.
    pub unreachable: bool,
}

impl ControlError {
    /// True when the instance rejected the request as conflicting with its state (HTTP 409),
    /// such as new targets after it has drained.
    pub fn is_conflict(&self) -> bool {
        self.reason.starts_with("HTTP 409")
    }
}

/// Operations on a running instance, whatever carries them: HTTP for real processes and
/// containers, function calls for simulated instances. `endpoint` is the instance's
/// `control_url`.
#[async_trait::async_trait]
pub trait InstanceControl: Send + Sync {
    async fn health(&self, instance: &str, endpoint: &str) -> Result<Health, ControlError>;
    async fn stats(
        &self,
        instance: &str,
        endpoint: &str,
        ranges: bool,
    ) -> Result<Stats, ControlError>;
    async fn report(
        &self,
        instance: &str,
        endpoint: &str,
    ) -> Result<serde_json::Value, ControlError>;
    async fn set_targets(
        &self,
        instance: &str,
        endpoint: &str,
        targets: &Targets,
    ) -> Result<(), ControlError>;
    async fn start(&self, instance: &str, endpoint: &str) -> Result<(), ControlError>;
    async fn drain(
        &self,
        instance: &str,
        endpoint: &str,
        drain: &Drain,
    ) -> Result<(), ControlError>;
    async fn stop(&self, instance: &str, endpoint: &str) -> Result<(), ControlError>;
}

#[async_trait::async_trait]
impl InstanceControl for ControlClient {
    async fn health(&self, instance: &str, endpoint: &str) -> Result<Health, ControlError> {
        ControlClient::health(self, instance, endpoint).await
    }
    async fn stats(
        &self,
        instance: &str,
        endpoint: &str,
        ranges: bool,
    ) -> Result<Stats, ControlError> {
        ControlClient::stats(self, instance, endpoint, ranges).await
    }
    async fn report(
        &self,
        instance: &str,
        endpoint: &str,
    ) -> Result<serde_json::Value, ControlError> {
        ControlClient::report(self, instance, endpoint).await
    }
    async fn set_targets(
        &self,
        instance: &str,
        endpoint: &str,
        targets: &Targets,
    ) -> Result<(), ControlError> {
        ControlClient::set_targets(self, instance, endpoint, targets).await
    }
    async fn start(&self, instance: &str, endpoint: &str) -> Result<(), ControlError> {
        ControlClient::start(self, instance, endpoint).await
    }
    async fn drain(
        &self,
        instance: &str,
        endpoint: &str,
        drain: &Drain,
    ) -> Result<(), ControlError> {
        ControlClient::drain(self, instance, endpoint, drain).await
    }
    async fn stop(&self, instance: &str, endpoint: &str) -> Result<(), ControlError> {
        ControlClient::stop(self, instance, endpoint).await
    }
}

/// Control client shared by every instance of a run; it adds the run's token to each request.
#[derive(Clone)]
pub struct ControlClient {
    http: Client,
    token: String,
}

impl ControlClient {
    pub fn new(token: &str) -> ControlClient {
        let http = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .expect("a client without TLS or proxy settings always builds");
        ControlClient { http, token: token.to_string() }
    }

    pub async fn health(&self, instance: &str, base: &str) -> Result<Health, ControlError> {
        self.request(instance, Method::GET, base, "/health", None::<&()>).await
    }

    pub async fn stats(
        &self,
        instance: &str,
        base: &str,
        ranges: bool,
    ) -> Result<Stats, ControlError> {
        let path = if ranges { "/stats?ranges=true" } else { "/stats" };
        self.request(instance, Method::GET, base, path, None::<&()>).await
    }

    pub async fn report(
        &self,
        instance: &str,
        base: &str,
    ) -> Result<serde_json::Value, ControlError> {
        self.request(instance, Method::GET, base, "/report", None::<&()>).await
    }

    pub async fn metrics(&self, instance: &str, base: &str) -> Result<String, ControlError> {
        let url = format!("{base}/metrics");
        let response = self.send(instance, Method::GET, &url, None::<&()>).await?;
        response
            .text()
            .await
            .map_err(|error| self.error(instance, "GET", &url, error.to_string(), false))
    }

    pub async fn set_targets(
        &self,
        instance: &str,
        base: &str,
        targets: &Targets,
    ) -> Result<(), ControlError> {
        self.command(instance, Method::PUT, base, "/targets", Some(targets)).await
    }

    pub async fn start(&self, instance: &str, base: &str) -> Result<(), ControlError> {
        self.command(instance, Method::POST, base, "/start", None::<&()>).await
    }

    pub async fn drain(
        &self,
        instance: &str,
        base: &str,
        drain: &Drain,
    ) -> Result<(), ControlError> {
        self.command(instance, Method::POST, base, "/drain", Some(drain)).await
    }

    pub async fn stop(&self, instance: &str, base: &str) -> Result<(), ControlError> {
        self.command(instance, Method::POST, base, "/stop", None::<&()>).await
    }

    async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        instance: &str,
        method: Method,
        base: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ControlError> {
        let url = format!("{base}{path}");
        let response = self.send(instance, method.clone(), &url, body).await?;
        response.json().await.map_err(|error| {
            self.error(instance, method.as_str(), &url, format!("invalid reply: {error}"), false)
        })
    }

    async fn command<B: Serialize>(
        &self,
        instance: &str,
        method: Method,
        base: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), ControlError> {
        let url = format!("{base}{path}");
        self.send(instance, method, &url, body).await.map(drop)
    }

    async fn send<B: Serialize>(
        &self,
        instance: &str,
        method: Method,
        url: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, ControlError> {
        let mut request = self.http.request(method.clone(), url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|error| {
            let unreachable = error.is_connect() || error.is_timeout();
            self.error(instance, method.as_str(), url, describe(&error), unreachable)
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let reason = match status {
            StatusCode::UNAUTHORIZED => {
                "401 unauthorized: the instance belongs to another run or the token is wrong"
                    .to_string()
            }
            _ => format!("HTTP {status}: {}", text.trim()),
        };
        Err(self.error(instance, method.as_str(), url, reason, false))
    }

    fn error(
        &self,
        instance: &str,
        method: &str,
        url: &str,
        reason: String,
        unreachable: bool,
    ) -> ControlError {
        ControlError {
            instance: instance.to_string(),
            method: method.to_string(),
            url: url.to_string(),
            reason,
            unreachable,
        }
    }
}

/// The error with its causes, which reqwest keeps in its source chain.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::ControlError;

    fn error(reason: &str) -> ControlError {
        ControlError {
            instance: "HipoReader-s0r0".into(),
            method: "PUT".into(),
            url: "http://127.0.0.1:1/targets".into(),
            reason: reason.into(),
            unreachable: false,
        }
    }

    #[test]
    fn conflict_is_http_409_only() {
        assert!(error("HTTP 409 Conflict: drained").is_conflict());
        assert!(!error("HTTP 400 Bad Request: bad target").is_conflict());
        assert!(!error("401 unauthorized: the token is wrong").is_conflict());
    }
}
