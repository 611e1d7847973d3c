//! HTTP control API of an instance, served by axum on a single-threaded tokio runtime.
//!
//! Routes and bodies are those of `orchestrator::control`. Every request must carry
//! `Authorization: Bearer <token>`; anything else gets 401 before routing. Errors are JSON
//! objects `{"error": "..."}`. The server stops when the instance's shutdown token is
//! cancelled, after finishing the requests in flight (at most [`SHUTDOWN_GRACE`]).

use std::future::IntoFuture;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use orchestrator::control::{Drain, Health, Phase, Role, Targets};
use serde::Deserialize;
use tracing::{error, info, warn};

use super::link::TargetError;
use super::metrics::{self, MetricValues};
use super::report::{self, CanonicalNames};
use super::stats::{self, Counters};
use super::{InstanceError, Shared, Signals};

/// Maximum wait for requests in flight once shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Starts the control thread, which returns when the server has shut down.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    listener: TcpListener,
    signals: Signals,
) -> Result<JoinHandle<Result<(), InstanceError>>, InstanceError> {
    let start_error = |source| InstanceError::Start { what: "control server", source };
    listener.set_nonblocking(true).map_err(start_error)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(start_error)?;
    thread::Builder::new()
        .name("control".to_owned())
        .spawn(move || {
            let span = shared.span.clone();
            let _entered = span.enter();
            runtime.block_on(serve(shared, listener, signals))
        })
        .map_err(start_error)
}

async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    signals: Signals,
) -> Result<(), InstanceError> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(InstanceError::Control)?;
    let shutdown = shared.shutdown.clone();
    if signals == Signals::Handle {
        tokio::spawn(stop_on_signal(shutdown.clone()));
    }
    tokio::spawn(log_periodic_reports(Arc::clone(&shared)));
    let server = axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let grace_expired = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = server => result.map_err(InstanceError::Control),
        () = grace_expired => {
            warn!(grace = ?SHUTDOWN_GRACE, "control requests still open after the grace period");
            Ok(())
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};

    let (mut terminate, mut interrupt) =
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
            (Err(err), _) | (_, Err(err)) => {
                error!(error = %err, "failed to install SIGTERM and SIGINT handlers");
                return;
            }
        };
    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
        () = shutdown.cancelled() => return,
    };
    info!(signal = name, "signal received; stopping");
    shutdown.cancel();
}

/// Logs the counters every `--report-period-s`, the period at which a real DPE publishes its
/// report, until shutdown.
async fn log_periodic_reports(shared: Arc<Shared>) {
    let period = Duration::from_secs(shared.args.report_period_s);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
        let counters = &shared.counters;
        info!(
            phase = ?shared.phase.get(),
            events_in = Counters::get(&counters.events_in),
            events_out = Counters::get(&counters.events_out),
            queue_depth = Counters::get(&counters.queued),
            duplicates = Counters::get(&counters.duplicates),
            lost = Counters::get(&counters.lost),
            "report"
        );
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/report", get(report))
        .route("/metrics", get(metrics))
        .route("/targets", put(targets))
        .route("/start", post(start))
        .route("/drain", post(drain))
        .route("/stop", post(stop))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), require_token))
        .with_state(shared)
}

async fn require_token(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(token) if tokens_match(token.as_bytes(), shared.token.as_bytes()) => {
            next.run(request).await
        }
        _ => error_response(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token; send the run's token as Authorization: Bearer <token>",
        ),
    }
}

/// Compares two tokens in time that depends only on their lengths.
fn tokens_match(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len()
        && presented.iter().zip(expected).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

async fn health(State(shared): State<Arc<Shared>>) -> Json<Health> {
    Json(Health {
        phase: shared.phase.get(),
        role: shared.role,
        stage: shared.args.stage.clone(),
        replica: shared.args.replica,
        pid: std::process::id(),
        uptime_s: shared.started_at.elapsed().as_secs_f64(),
    })
}

#[derive(Debug, Deserialize)]
struct StatsQuery {
    #[serde(default)]
    ranges: bool,
}

async fn stats(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("invalid query: {rejection}; expected ?ranges=true or ?ranges=false"),
            );
        }
    };
    let snapshot = stats::snapshot(
        shared.role,
        shared.phase.get(),
        &shared.counters,
        &shared.latency,
        shared.received.as_ref(),
        query.ranges,
    );
    Json(snapshot).into_response()
}

async fn report(State(shared): State<Arc<Shared>>) -> Response {
    Json(report::build(&shared)).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let figures = report::process_figures(&shared);
    let counters = &shared.counters;
    let values = MetricValues {
        requests: Counters::get(&counters.requests),
        failures: Counters::get(&counters.failures),
        exec_time_seconds: Counters::get(&counters.exec_time_ns) as f64 / 1e9,
        bytes_received: Counters::get(&counters.bytes_in),
        bytes_sent: Counters::get(&counters.bytes_out),
        cpu_usage_percent: figures.cpu_usage,
        memory_usage_bytes: figures.memory_usage,
    };
    let text = metrics::render(&CanonicalNames::of(&shared), &values);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

async fn targets(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let targets: Targets = match serde_json::from_slice(&body) {
        Ok(targets) => targets,
        Err(err) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("invalid targets body: {err}; expected {{\"targets\": [...]}}"),
            );
        }
    };
    if shared.role == Role::Sink && !targets.targets.is_empty() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "a sink sends nothing downstream, so its target list must be empty",
        );
    }
    let addrs: Vec<String> = targets.targets.iter().map(|t| t.addr.clone()).collect();
    let loopback_only = shared.args.is_process_mode();
    let worker = Arc::clone(&shared);
    let replaced =
        tokio::task::spawn_blocking(move || worker.router.replace(&targets.targets, loopback_only))
            .await;
    match replaced {
        Ok(Ok(())) => {
            info!(targets = ?addrs, "targets replaced");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Err(err)) => {
            warn!(targets = ?addrs, error = %error_chain(&err), "targets rejected");
            let status = match err {
                TargetError::InvalidAddress { .. }
                | TargetError::NotLoopback { .. }
                | TargetError::Unresolvable { .. } => StatusCode::BAD_REQUEST,
                TargetError::ConnectFailed { .. } => StatusCode::BAD_GATEWAY,
                TargetError::Closed => StatusCode::CONFLICT,
                TargetError::LinkThread { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error_response(status, &error_chain(&err))
        }
        Err(err) => {
            error!(error = %err, "target update task failed");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "target update task failed")
        }
    }
}

async fn start(State(shared): State<Arc<Shared>>) -> StatusCode {
    if shared.role == Role::Source {
        // A second start finds the channel full or closed; the source starts only once.
        if shared.start_tx.try_send(()).is_ok() {
            info!("start accepted");
        }
    }
    StatusCode::NO_CONTENT
}

async fn drain(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: Drain = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("invalid drain body: {err}; expected {{\"expected_ends\": <count>}}"),
            );
        }
    };
    if shared.role != Role::Source {
        info!(
            expected_ends = request.expected_ends,
            received_ends = shared.drain.ends_received(),
            "drain requested"
        );
        shared.drain.request(request.expected_ends);
        shared.phase.advance(Phase::Ready, Phase::Draining);
        shared.phase.advance(Phase::Running, Phase::Draining);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn stop(State(shared): State<Arc<Shared>>) -> StatusCode {
    info!("stop requested");
    shared.shutdown.cancel();
    StatusCode::NO_CONTENT
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Formats an error with its sources, separated by ": ".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(tokens_match(b"secret", b"secret"));
        assert!(!tokens_match(b"secreT", b"secret"));
        assert!(!tokens_match(b"secret2", b"secret"));
        assert!(!tokens_match(b"", b"secret"));
    }
}
