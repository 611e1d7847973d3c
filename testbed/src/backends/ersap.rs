//! The `ersap` backend: mock instances that are ERSAP DPEs, deployed and watched over xMsg.
//!
//! The backend starts a front end (a `mock-ersap front-end` process on a free loopback port)
//! or uses one that already runs (`--ersap-fe HOST:PORT`). Each instance is a local
//! `mock-ersap` process that runs as a worker DPE of that front end: it binds its own xMsg
//! proxy and registers itself with the front end's registrar. For every instance the backend
//!
//! 1. finds the DPE through the registrar (`findSubscriber dpe:<name>`),
//! 2. sends `startContainer` and `startService` to the DPE over xMsg and checks the replies,
//! 3. checks that the service is now registered,
//!
//! and from then on judges its health from the `dpeAlive` reports that the DPE publishes to
//! the front end once per second. Real ERSAP registrations never expire, so a DPE counts as
//! failed when its process has ended or when no `dpeAlive` arrived for [`ALIVE_TIMEOUT`].
//!
//! The data plane stays the testbed's framed TCP streams, and targets, start, drain and
//! counters keep going through each instance's HTTP control API.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orchestrator::backend::{Backend, BackendError, InstanceEndpoints, InstanceSpec};
use orchestrator::control::Role;
use orchestrator::model::{InstanceId, Topology};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::process::{instance_args, journal_arg, log_tail};
use super::{HARNESS_PID_ENV, RUN_ID_ENV, RunLabels, TOKEN_ENV};
use crate::xmsg::client::CHECK_TIMEOUT;
use crate::xmsg::{
    DpeName, OwnerType, ProxyAddress, Publisher, RegistrarClient, Requester, Status, Subscriber,
    XmsgError,
};

/// Report period the backend gives every DPE, in seconds.
pub const REPORT_PERIOD_S: u64 = 1;
/// Time without a `dpeAlive` after which a DPE counts as failed: four report periods and a
/// second of slack for a busy machine.
pub const ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one DPE request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new DPE may take to appear in the registrar.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of one registrar request.
const REGISTRAR_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a new process may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopped process may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Name of the backend in requests and registrar queries.
const ORCHESTRATOR_NAME: &str = "testbed-orchestrator";

pub struct ErsapBackend {
    mock_bin: PathBuf,
    labels: RunLabels,
    token: String,
    log_dir: PathBuf,
    /// A front end given with `--ersap-fe`, or `None` to start one.
    external_front_end: Option<String>,
    front_end: Option<FrontEnd>,
    /// When each DPE's last `dpeAlive` arrived, by DPE name.
    alive: Arc<Mutex<HashMap<String, Instant>>>,
    monitor: Option<JoinHandle<()>>,
    instances: BTreeMap<InstanceId, Deployed>,
}

struct FrontEnd {
    address: ProxyAddress,
    /// The front-end process, when the backend started it.
    child: Option<Child>,
}

struct Deployed {
    name: String,
    dpe: String,
    child: Child,
    exit: Option<String>,
    /// When deployment finished; the alive timeout counts from here until a report arrives.
    deployed_at: Instant,
}

/// Ready line of a `mock-ersap` worker DPE: the usual one plus its DPE name.
#[derive(Debug, Deserialize)]
struct DpeReadyLine {
    data_port: u16,
    control_port: u16,
    pid: u32,
    dpe: String,
}

/// Ready line of a `mock-ersap front-end` process.
#[derive(Debug, Deserialize)]
struct FrontEndReadyLine {
    port: u16,
    dpe: String,
    pid: u32,
}

impl ErsapBackend {
    /// A backend that starts its own front end, or uses `external_front_end` (`HOST:PORT`,
    /// where HOST must be a loopback address).
    pub fn new(
        mock_bin: &Path,
        labels: RunLabels,
        token: &str,
        log_dir: &Path,
        external_front_end: Option<String>,
    ) -> ErsapBackend {
        ErsapBackend {
            mock_bin: mock_bin.to_path_buf(),
            labels,
            token: token.to_owned(),
            log_dir: log_dir.to_path_buf(),
            external_front_end,
            front_end: None,
            alive: Arc::new(Mutex::new(HashMap::new())),
            monitor: None,
            instances: BTreeMap::new(),
        }
    }

    fn front_end_address(&self) -> Result<ProxyAddress, BackendError> {
        self.front_end.as_ref().map(|front_end| front_end.address).ok_or_else(|| {
            BackendError::Environment("the ersap backend was not provisioned".to_owned())
        })
    }

    fn registrar(&self) -> Result<RegistrarClient, BackendError> {
        Ok(RegistrarClient::new(self.front_end_address()?, ORCHESTRATOR_NAME, REGISTRAR_TIMEOUT))
    }

    /// Spawns `mock-ersap` with `args` and returns the child with its first stdout line.
    async fn spawn(
        &self,
        name: &str,
        node: &str,
        args: Vec<String>,
    ) -> Result<(Child, String), BackendError> {
        let start_error = |reason: String| BackendError::Start {
            instance: name.to_owned(),
            node: node.to_owned(),
            reason,
        };
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).map_err(|error| {
            start_error(format!("cannot create {}: {error}", log_path.display()))
        })?;
        let mut command = Command::new(&self.mock_bin);
        command
            .args(args)
            .arg(format!("--harness-pid={}", self.labels.harness_pid))
            .env(TOKEN_ENV, &self.token)
            .env(RUN_ID_ENV, &self.labels.run_id)
            .env(HARNESS_PID_ENV, self.labels.harness_pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            // Its own process group, so that a Ctrl-C at the terminal reaches only the harness.
            .process_group(0);
        let mut child = command.spawn().map_err(|error| {
            start_error(format!("cannot run {}: {error}", self.mock_bin.display()))
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = child.wait().await.map(|s| s.to_string()).unwrap_or_default();
                return Err(start_error(format!(
                    "it exited ({status}) before it was ready; last log lines:\n{}",
                    log_tail(&log_path, 10)
                )));
            }
            Err(_) => {
                let _ = child.start_kill();
                return Err(start_error(format!(
                    "no ready line within {READY_TIMEOUT:?}; see {}",
                    log_path.display()
                )));
            }
        };
        // Later output goes to the log through stderr. Stdout is drained so that a stray print
        // cannot fill the pipe and block the child.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((child, line))
    }

    /// Starts a front end on a free loopback port.
    async fn start_front_end(&self) -> Result<FrontEnd, BackendError> {
        let args = vec![
            "front-end".to_owned(),
            "--port=0".to_owned(),
            format!("--session={}", self.labels.run_id),
            format!("--report-period-s={REPORT_PERIOD_S}"),
        ];
        let (child, line) = self.spawn("front-end", "front end", args).await?;
        let ready: FrontEndReadyLine =
            serde_json::from_str(&line).map_err(|error| BackendError::Provision {
                what: "the ERSAP front end".to_owned(),
                reason: format!("invalid ready line `{line}`: {error}"),
            })?;
        info!(port = ready.port, dpe = %ready.dpe, pid = ready.pid, "front end started");
        Ok(FrontEnd {
            address: ProxyAddress::new(Ipv4Addr::LOCALHOST, ready.port),
            child: Some(child),
        })
    }

    /// Starts the task that records the `dpeAlive` reports of this run's DPEs.
    async fn start_monitor(&mut self, front_end: ProxyAddress) -> Result<(), BackendError> {
        let prefix = format!("dpeAlive:{}:", self.labels.run_id);
        let mut subscriber =
            Subscriber::connect(front_end, std::slice::from_ref(&prefix), CHECK_TIMEOUT)
                .await
                .map_err(|error| front_end_error(front_end, &error))?;
        let alive = Arc::clone(&self.alive);
        self.monitor = Some(tokio::spawn(async move {
            loop {
                match subscriber.recv().await {
                    Ok(Ok(message)) => {
                        let Some(dpe) = message.topic.strip_prefix(&prefix) else { continue };
                        let mut alive = alive.lock().unwrap_or_else(|e| e.into_inner());
                        alive.insert(dpe.to_owned(), Instant::now());
                    }
                    Ok(Err(error)) => {
                        warn!(topic = error.topic().unwrap_or("?"), %error, "dropped a malformed report");
                    }
                    Err(error) => {
                        warn!(%error, "receiving dpeAlive reports failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
        Ok(())
    }

    /// Finds a DPE in the registrar, deploys the instance's container and service on it over
    /// xMsg and checks that the service is registered.
    async fn deploy(&self, spec: &InstanceSpec, dpe: &str) -> Result<(), String> {
        let registrar = self.registrar().map_err(|error| error.to_string())?;
        discover(&registrar, dpe).await?;
        let name = DpeName::parse(dpe).map_err(|error| error.to_string())?;
        if !name.host.is_loopback() {
            return Err(format!("DPE {dpe} is not on a loopback address; refusing to contact it"));
        }
        let proxy = ProxyAddress::new(name.host, name.port);
        let mut requester = Requester::connect(proxy, ORCHESTRATOR_NAME, CHECK_TIMEOUT)
            .await
            .map_err(|error| format!("cannot reach DPE {dpe}: {error}"))?;
        let pool = if spec.role == Role::Processor { spec.cost.threads.get() } else { 1 };
        let description = format!("testbed {} of stage {}", spec.role, spec.stage);
        let requests = [
            format!("startContainer?{}?{pool}?{description}", spec.container),
            format!(
                "startService?{}?{}?{}?{pool}?{description}?undefined",
                spec.container, spec.stage, spec.engine_class
            ),
        ];
        let topic = name.request_topic();
        for request in &requests {
            let reply = requester
                .request(&topic, request, REQUEST_TIMEOUT)
                .await
                .map_err(|error| format!("DPE {dpe}: {error}"))?;
            if reply.meta.status_value() != Some(Status::Info) {
                return Err(format!("DPE {dpe} rejected `{request}`: {}", reply.payload_text()));
            }
        }
        let services = registrar
            .find(OwnerType::Subscriber, dpe, &spec.container, &spec.stage)
            .await
            .map_err(|error| error.to_string())?;
        if services.is_empty() {
            return Err(format!(
                "DPE {dpe} replied to startService but the service {dpe}:{}:{} is not registered",
                spec.container, spec.stage
            ));
        }
        Ok(())
    }
}

/// Returns how long a DPE has been silent at `now`: since its last `dpeAlive`, or since its
/// deployment when no report arrived after it.
fn silence(last_alive: Option<Instant>, deployed_at: Instant, now: Instant) -> Duration {
    let since = last_alive.map_or(deployed_at, |last| last.max(deployed_at));
    now.saturating_duration_since(since)
}

/// Waits until the registrar lists `dpe:<dpe>`.
async fn discover(registrar: &RegistrarClient, dpe: &str) -> Result<(), String> {
    let deadline = Instant::now() + DISCOVERY_TIMEOUT;
    loop {
        match registrar.find(OwnerType::Subscriber, "dpe", dpe, "*").await {
            Ok(found) if !found.is_empty() => return Ok(()),
            Ok(_) => {}
            Err(error) => return Err(error.to_string()),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "DPE {dpe} did not appear in the registrar at {} within {DISCOVERY_TIMEOUT:?}",
                registrar.front_end()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Builds an error about the front end that names its address and every port the backend uses.
fn front_end_error(address: ProxyAddress, error: &XmsgError) -> BackendError {
    BackendError::Environment(format!(
        "cannot use the ERSAP front end at {address} (proxy ports {}, {}, {}; registrar port \
         {}): {error}",
        address.pub_port(),
        address.sub_port(),
        address.control_port(),
        address.registrar_port(),
    ))
}

/// Parses `--ersap-fe`, which must name a loopback address.
fn parse_front_end(text: &str) -> Result<ProxyAddress, BackendError> {
    let address: SocketAddrV4 = text.parse().map_err(|_| {
        BackendError::Environment(format!(
            "invalid --ersap-fe `{text}`: expected IPV4:PORT, such as 127.0.0.1:7771"
        ))
    })?;
    if !address.ip().is_loopback() {
        return Err(BackendError::Environment(format!(
            "invalid --ersap-fe `{text}`: the testbed only talks to loopback addresses"
        )));
    }
    Ok(ProxyAddress::new(*address.ip(), address.port()))
}

#[async_trait]
impl Backend for ErsapBackend {
    fn kind(&self) -> &'static str {
        "ersap"
    }

    async fn provision(&mut self, _topology: &Topology) -> Result<(), BackendError> {
        std::fs::create_dir_all(&self.log_dir).map_err(|error| BackendError::Provision {
            what: format!("log folder {}", self.log_dir.display()),
            reason: error.to_string(),
        })?;
        if !self.mock_bin.is_file() {
            return Err(BackendError::Environment(format!(
                "mock instance binary {} not found; build it with `cargo build --release -p \
                 testbed` or pass --mock-bin",
                self.mock_bin.display()
            )));
        }
        let front_end = match &self.external_front_end {
            Some(text) => {
                let address = parse_front_end(text)?;
                let registrar = RegistrarClient::new(address, ORCHESTRATOR_NAME, REGISTRAR_TIMEOUT);
                let dpes = registrar
                    .all(OwnerType::Subscriber)
                    .await
                    .map_err(|error| front_end_error(address, &error))?;
                Publisher::connect(address, CHECK_TIMEOUT)
                    .await
                    .map_err(|error| front_end_error(address, &error))?;
                info!(%address, registrations = dpes.len(), "using a running front end");
                FrontEnd { address, child: None }
            }
            None => self.start_front_end().await?,
        };
        let address = front_end.address;
        self.front_end = Some(front_end);
        self.start_monitor(address).await
    }

    async fn start_instance(
        &mut self,
        spec: &InstanceSpec,
    ) -> Result<InstanceEndpoints, BackendError> {
        let name = spec.name();
        let front_end = self.front_end_address()?;
        let mut args = instance_args(spec, &self.labels, "127.0.0.1");
        args.extend(journal_arg(spec, &self.log_dir));
        args.push(format!("--xmsg-fe={front_end}"));
        args.push(format!("--report-period-s={REPORT_PERIOD_S}"));
        let (child, line) = self.spawn(&name, &spec.node_name, args).await?;
        let start_error = |reason: String| BackendError::Start {
            instance: name.clone(),
            node: spec.node_name.clone(),
            reason,
        };
        let ready: DpeReadyLine = serde_json::from_str(&line)
            .map_err(|error| start_error(format!("invalid ready line `{line}`: {error}")))?;
        let mut deployed = Deployed {
            name: name.clone(),
            dpe: ready.dpe.clone(),
            child,
            exit: None,
            deployed_at: Instant::now(),
        };
        if let Err(reason) = self.deploy(spec, &ready.dpe).await {
            let _ = deployed.child.start_kill();
            return Err(start_error(reason));
        }
        deployed.deployed_at = Instant::now();
        debug!(instance = %name, dpe = %ready.dpe, pid = ready.pid, "deployed over xMsg");
        self.instances.insert(spec.id, deployed);
        Ok(InstanceEndpoints {
            control_url: format!("http://127.0.0.1:{}", ready.control_port),
            data_addr: format!("127.0.0.1:{}", ready.data_port),
            handle: format!("DPE {} (pid {})", ready.dpe, ready.pid),
        })
    }

    async fn stop_instance(&mut self, id: InstanceId) -> Result<(), BackendError> {
        let Some(deployed) = self.instances.get_mut(&id) else { return Ok(()) };
        if deployed.exit.is_some() {
            return Ok(());
        }
        let ended = super::process::stop_child(&deployed.name, &mut deployed.child, EXIT_GRACE);
        deployed.exit = Some(ended.await?);
        Ok(())
    }

    async fn exited(&mut self, id: InstanceId) -> Option<String> {
        let deployed = self.instances.get_mut(&id)?;
        if let Some(exit) = &deployed.exit {
            return Some(exit.clone());
        }
        match deployed.child.try_wait() {
            Ok(Some(status)) => {
                deployed.exit = Some(format!("process exited: {status}"));
                return deployed.exit.clone();
            }
            Ok(None) => {}
            Err(error) => return Some(format!("cannot query the process: {error}")),
        }
        let last = {
            let alive = self.alive.lock().unwrap_or_else(|e| e.into_inner());
            alive.get(&deployed.dpe).copied()
        };
        let silent = silence(last, deployed.deployed_at, Instant::now());
        (silent > ALIVE_TIMEOUT).then(|| {
            format!(
                "no dpeAlive from DPE {} for {:.1} s (timeout {:?})",
                deployed.dpe,
                silent.as_secs_f64(),
                ALIVE_TIMEOUT
            )
        })
    }

    async fn teardown(&mut self) -> Result<(), BackendError> {
        for deployed in self.instances.values_mut() {
            if deployed.exit.is_none() {
                let _ = deployed.child.start_kill();
                let status = deployed.child.wait().await.map(|s| s.to_string()).unwrap_or_default();
                deployed.exit = Some(format!("killed at teardown ({status})"));
            }
        }
        if let Some(monitor) = self.monitor.take() {
            monitor.abort();
        }
        if let Some(child) = self.front_end.as_mut().and_then(|front_end| front_end.child.as_mut())
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        Ok(())
    }

    fn log_dir(&self) -> Option<PathBuf> {
        Some(self.log_dir.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ersap_front_end_option_accepts_only_loopback() {
        let address = parse_front_end("127.0.0.1:7771").expect("loopback is accepted");
        assert_eq!(address, ProxyAddress::new(Ipv4Addr::LOCALHOST, 7771));
        for text in ["10.0.0.1:7771", "127.0.0.1", "localhost:7771", "127.0.0.1:x"] {
            assert!(parse_front_end(text).is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn ersap_silence_counts_from_last_alive() {
        let deployed = Instant::now();
        let later = deployed + Duration::from_secs(7);
        let cases = [
            (None, 7, "no report since deployment"),
            (Some(deployed + Duration::from_secs(5)), 2, "report after deployment"),
            (Some(deployed - Duration::from_secs(3)), 7, "report before deployment"),
        ];
        for (last, expected, case) in cases {
            let silent = silence(last, deployed, later);
            assert_eq!(silent, Duration::from_secs(expected), "{case}");
        }
        assert!(silence(None, deployed, later) > ALIVE_TIMEOUT, "7 s exceeds the timeout");
    }

    #[test]
    fn ersap_front_end_error_lists_every_port() {
        let address = ProxyAddress::new(Ipv4Addr::LOCALHOST, 7771);
        let error = XmsgError::ConnectionCheck {
            kind: "publisher",
            host: "127.0.0.1".to_owned(),
            port: 7771,
            waited: CHECK_TIMEOUT,
        };
        let text = front_end_error(address, &error).to_string();
        for port in ["7771", "7772", "7773", "7775"] {
            assert!(text.contains(port), "{text}");
        }
    }
}
