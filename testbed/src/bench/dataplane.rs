//! Data-plane benchmark: how close a chain of mock instances comes to raw loopback TCP.
//!
//! The benchmark makes two measurements in one run on 127.0.0.1:
//!
//! 1. Raw loopback throughput: one thread writes 256 KiB buffers to a TCP connection for
//!    [`LOOPBACK_DURATION`], another thread reads them.
//! 2. A zero-cost chain source → processor → sink of three `mock-ersap` processes, linked
//!    with `PUT /targets`, timed from `POST /start` until the sink reports `drained`.
//!
//! Both throughputs count payload bytes only, in MB/s (10^6 bytes per second). The chain
//! moves every byte over two TCP connections with three processes sharing the CPUs, so a
//! ratio of about one half is close to the best it can reach on two cores.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use orchestrator::control::{Drain, Health, Phase, ReadyLine, Stats, Target, Targets};
use rand::Rng;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::instance::TOKEN_ENV;

/// How long the raw loopback measurement writes.
pub const LOOPBACK_DURATION: Duration = Duration::from_secs(2);
/// Maximum wait for a mock instance to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between two checks of the sink's phase. Each check costs the sink a request, so
/// checking much more often would slow down the chain being measured.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
const WRITE_BYTES: usize = 256 * 1024;

/// Results of one benchmark run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DataplaneFigures {
    /// Raw loopback TCP throughput, in MB/s.
    pub loopback_mb_s: f64,
    /// Events per second through the whole chain.
    pub chain_events_s: f64,
    /// Payload throughput of the chain, in MB/s.
    pub chain_mb_s: f64,
    pub events: u64,
    /// Payload size of each event, in bytes.
    pub event_size: u32,
}

impl DataplaneFigures {
    /// Chain throughput as a fraction of raw loopback throughput.
    pub fn ratio(&self) -> f64 {
        if self.loopback_mb_s > 0.0 { self.chain_mb_s / self.loopback_mb_s } else { 0.0 }
    }
}

/// Runs both measurements; `mock_bin` is the path of the `mock-ersap` binary.
pub async fn run(
    mock_bin: &Path,
    events: u64,
    event_size: u32,
) -> anyhow::Result<DataplaneFigures> {
    ensure!(events > 0, "the chain needs at least one event");
    let loopback_mb_s = tokio::task::spawn_blocking(|| measure_loopback(LOOPBACK_DURATION))
        .await
        .context("loopback measurement thread failed")??;
    let elapsed = run_chain(mock_bin, events, event_size).await?;
    let seconds = elapsed.as_secs_f64();
    Ok(DataplaneFigures {
        loopback_mb_s,
        chain_events_s: events as f64 / seconds,
        chain_mb_s: events as f64 * f64::from(event_size) / seconds / 1e6,
        events,
        event_size,
    })
}

/// Measures the throughput of one loopback TCP connection, in MB/s.
pub fn measure_loopback(duration: Duration) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("failed to bind 127.0.0.1:0")?;
    let addr = listener.local_addr().context("failed to read the listener's address")?;
    let reader = thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; WRITE_BYTES];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });

    let mut stream =
        TcpStream::connect(addr).with_context(|| format!("failed to connect to {addr}"))?;
    let buf = vec![0x5au8; WRITE_BYTES];
    let started = Instant::now();
    while started.elapsed() < duration {
        stream.write_all(&buf).context("failed to write to the loopback connection")?;
    }
    stream.shutdown(Shutdown::Write).context("failed to close the loopback connection")?;
    let total = match reader.join() {
        Ok(result) => result.context("failed to read the loopback connection")?,
        Err(_) => bail!("loopback reader thread panicked"),
    };
    Ok(total as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// Runs the three-process chain and returns the time from start until the sink drained.
async fn run_chain(mock_bin: &Path, events: u64, event_size: u32) -> anyhow::Result<Duration> {
    let token = format!("{:032x}", rand::rng().random::<u128>());
    let client = reqwest::Client::builder()
        .timeout(orchestrator::control::REQUEST_TIMEOUT)
        .build()
        .context("failed to build the HTTP client")?;
    let events_text = events.to_string();
    let size_text = event_size.to_string();
    let sink = Mock::spawn(mock_bin, &token, "sink", &[]).await?;
    let processor = Mock::spawn(mock_bin, &token, "processor", &[]).await?;
    let source = Mock::spawn(
        mock_bin,
        &token,
        "source",
        &["--events", &events_text, "--event-size", &size_text],
    )
    .await?;
    let control = Control { client: &client, token: &token };

    control.set_target(&processor, &sink).await?;
    control.set_target(&source, &processor).await?;
    let drain = Drain { expected_ends: 1 };

    let started = Instant::now();
    control.post(&source, "/start", None::<&()>).await?;
    control.post(&processor, "/drain", Some(&drain)).await?;
    control.post(&sink, "/drain", Some(&drain)).await?;
    // Allow well over the time a slow machine needs: 10 MB/s plus a fixed margin.
    let deadline =
        Duration::from_secs(30) + Duration::from_secs(events * u64::from(event_size) / 10_000_000);
    loop {
        let health: Health = control.get(&sink, "/health").await?;
        if health.phase == Phase::Drained {
            break;
        }
        if started.elapsed() > deadline {
            bail!(
                "sink not drained {deadline:?} after start (phase {:?}); see the instances' \
                 logs on stderr",
                health.phase
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let elapsed = started.elapsed();

    let stats: Stats = control.get(&sink, "/stats").await?;
    ensure!(
        stats.events_in == events && stats.duplicates == 0,
        "sink received {} events and {} duplicates; expected {events} and none",
        stats.events_in,
        stats.duplicates
    );
    for mock in [&source, &processor, &sink] {
        // The processes are killed on drop anyway, so a failed stop changes nothing.
        let _ = control.post(mock, "/stop", None::<&()>).await;
    }
    for mock in [source, processor, sink] {
        mock.wait_for_exit().await;
    }
    Ok(elapsed)
}

/// A `mock-ersap` child process, killed when dropped.
struct Mock {
    role: &'static str,
    child: Child,
    ready: ReadyLine,
    /// Kept open so that the child never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Mock {
    async fn spawn(
        bin: &Path,
        token: &str,
        role: &'static str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(["--role", role, "--run-id", "bench-dataplane", "--stage", role])
            .args(["--harness-pid", &std::process::id().to_string()])
            .args(extra)
            .env(TOKEN_ENV, token)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {} as a {role}", bin.display()))?;
        let stdout = child.stdout.take().context("child stdout is not piped")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        match tokio::time::timeout(READY_TIMEOUT, stdout.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => bail!("mock {role} exited before printing its ready line"),
            Ok(Err(err)) => return Err(err).context(format!("failed to read the {role}'s stdout")),
            Err(_) => bail!("mock {role} printed no ready line within {READY_TIMEOUT:?}"),
        }
        let ready: ReadyLine = serde_json::from_str(line.trim())
            .with_context(|| format!("invalid ready line from the {role}: {line:?}"))?;
        Ok(Self { role, child, ready, _stdout: stdout })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ready.control_port)
    }

    async fn wait_for_exit(mut self) {
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            tracing::warn!(role = self.role, "mock did not exit after /stop; killing it");
            let _ = self.child.kill().await;
        }
    }
}

/// Authenticated control requests.
struct Control<'a> {
    client: &'a reqwest::Client,
    token: &'a str,
}

impl Control<'_> {
    async fn set_target(&self, from: &Mock, to: &Mock) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", to.ready.data_port);
        let targets = Targets { targets: vec![Target { addr, latency_us: 0, bandwidth_bps: 0 }] };
        let request = self.client.put(from.url("/targets")).json(&targets);
        self.send(from, "PUT /targets", request).await.map(drop)
    }

    async fn post<T: Serialize>(
        &self,
        mock: &Mock,
        path: &str,
        body: Option<&T>,
    ) -> anyhow::Result<()> {
        let mut request = self.client.post(mock.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(mock, &format!("POST {path}"), request).await.map(drop)
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        mock: &Mock,
        path: &str,
    ) -> anyhow::Result<T> {
        let request = self.client.get(mock.url(path));
        let response = self.send(mock, &format!("GET {path}"), request).await?;
        response
            .json()
            .await
            .with_context(|| format!("invalid reply to GET {path} from the {}", mock.role))
    }

    async fn send(
        &self,
        mock: &Mock,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let response = request
            .bearer_auth(self.token)
            .send()
            .await
            .with_context(|| format!("{what} to the {} failed", mock.role))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("{what} to the {} returned {status}: {body}", mock.role);
        }
        Ok(response)
    }
}
