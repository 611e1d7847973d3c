//! The mock instance as an ERSAP DPE on xMsg.
//!
//! - Worker mode (`--xmsg-fe HOST:PORT`): the instance binds its own xMsg proxy, registers as
//!   a DPE with that front end, handles DPE requests and publishes `dpeAlive` and
//!   `dpeReport` there every `--report-period-s`. The data plane and the HTTP control API
//!   run as usual. The DPE name carries the proxy's base port, `<host>%<port>_<lang>`, and
//!   the ready line gains `dpe` and `xmsg_port`.
//! - Front-end mode (`mock-ersap front-end`): a DPE with a proxy and the registrar and no
//!   data plane, which worker DPEs (mock or real) register with.
//!
//! In both modes the DPE stops with the process: its registrations are removed on the way
//! out, as a real DPE removes them on SIGTERM. A `stopDpe` request stops the process.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

use super::report::{
    self, CanonicalNames, ContainerRegistration, ContainerRuntime, DpeReport, Registration,
    Runtime, ServiceRegistration, ServiceRuntime,
};
use super::{Args, Instance, InstanceError, Shared, Signals};
use crate::xmsg::client::CHECK_TIMEOUT;
use crate::xmsg::dpe::{self, Alive, DpeOptions, DpeState, MockEngine, ReportSource};
use crate::xmsg::{DpeName, Proxy, ProxyAddress, RegistrarServer, Subscriber, XmsgError};

/// First argument that selects front-end mode.
pub const FRONT_END_COMMAND: &str = "front-end";
/// Format of ERSAP's report timestamps.
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";
/// Base ports a front end tries before it gives up on finding five free ones.
const FRONT_END_ATTEMPTS: usize = 20;

/// Runs a worker instance: the usual instance plus its DPE, until shutdown.
pub fn run_worker(mut args: Args, token: String) -> Result<(), InstanceError> {
    let front_end = parse_front_end(args.xmsg_fe.as_deref().unwrap_or_default())?;
    let host = advertised_ipv4(&args)?;
    let (port_tx, port_rx) = mpsc::channel::<Result<u16, InstanceError>>();
    let (shared_tx, shared_rx) = tokio::sync::oneshot::channel::<Arc<Shared>>();
    let (started_tx, started_rx) = mpsc::channel::<Result<String, InstanceError>>();
    let requested_port = args.xmsg_port;
    let dpe_thread = thread::Builder::new()
        .name("xmsg-dpe".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(source) => {
                    let _ =
                        port_tx.send(Err(InstanceError::Start { what: "xMsg runtime", source }));
                    return;
                }
            };
            runtime.block_on(worker_dpe(
                host,
                requested_port,
                front_end,
                port_tx,
                shared_rx,
                started_tx,
            ));
        })
        .map_err(|source| InstanceError::Start { what: "xMsg DPE thread", source })?;

    args.xmsg_port = recv_or_exit(&port_rx)??;
    let instance = Instance::start(args, token, Signals::Handle)?;
    let _ = shared_tx.send(Arc::clone(&instance.shared));
    let dpe = match recv_or_exit(&started_rx)? {
        Ok(dpe) => dpe,
        Err(error) => {
            instance.stop();
            let _ = instance.wait();
            return Err(error);
        }
    };
    let mut line = serde_json::to_value(instance.ready_line()).expect("ready line serialises");
    line["dpe"] = Value::String(dpe);
    line["xmsg_port"] = Value::from(instance.shared.args.xmsg_port);
    print_line(&line)?;
    let result = instance.wait();
    // The DPE removes its registrations once the instance's shutdown token is cancelled.
    let _ = dpe_thread.join();
    result
}

fn recv_or_exit<T>(receiver: &mpsc::Receiver<T>) -> Result<T, InstanceError> {
    receiver.recv().map_err(|_| InstanceError::Start {
        what: "xMsg DPE",
        source: io::Error::other("the xMsg thread ended early"),
    })
}

/// Runs the DPE thread of a worker: binds the proxy, waits for the instance, then serves.
async fn worker_dpe(
    host: Ipv4Addr,
    requested_port: u16,
    front_end: ProxyAddress,
    port_tx: mpsc::Sender<Result<u16, InstanceError>>,
    shared_rx: tokio::sync::oneshot::Receiver<Arc<Shared>>,
    started_tx: mpsc::Sender<Result<String, InstanceError>>,
) {
    let bound = if requested_port == 0 {
        Proxy::bind_free(host).await
    } else {
        Proxy::bind(ProxyAddress::new(host, requested_port)).await
    };
    let proxy = match bound {
        Ok(proxy) => proxy,
        Err(error) => {
            let _ = port_tx.send(Err(xmsg_error(error)));
            return;
        }
    };
    let _ = port_tx.send(Ok(proxy.address().port));
    // The instance starts on the main thread meanwhile; without it there is nothing to run.
    let Ok(shared) = shared_rx.await else { return };
    let span = shared.span.clone();
    serve_worker(&proxy, host, front_end, shared, started_tx).instrument(span).await;
    proxy.stop().await;
}

async fn serve_worker(
    proxy: &Proxy,
    host: Ipv4Addr,
    front_end: ProxyAddress,
    shared: Arc<Shared>,
    started_tx: mpsc::Sender<Result<String, InstanceError>>,
) {
    let name = DpeName::new(host, proxy.address().port, shared.args.lang.as_str());
    let report_name = CanonicalNames::of(&shared).dpe;
    if name.to_string() != report_name {
        // Only a proxy on the language's default port gives a name without the port.
        warn!(dpe = %name, report = %report_name, "the DPE and its report use different names");
    }
    let state = DpeState::new(name.clone(), Some(shared.args.engine_class.clone()));
    let options = DpeOptions {
        session: shared.args.run_id.clone(),
        front_end,
        report_period: Duration::from_secs(shared.args.report_period_s),
    };
    let source = Arc::new(WorkerReports { shared: Arc::clone(&shared) });
    let stop = shared.shutdown.clone();
    match dpe::start(state, proxy.address(), options, source, stop).await {
        Ok(running) => {
            let _ = started_tx.send(Ok(name.to_string()));
            running.join().await;
        }
        Err(error) => {
            error!(%error, "the DPE could not start");
            let _ = started_tx.send(Err(xmsg_error(error)));
        }
    }
}

fn xmsg_error(error: XmsgError) -> InstanceError {
    InstanceError::Start { what: "xMsg DPE", source: io::Error::other(error.to_string()) }
}

/// Parses `--xmsg-fe`, which must name a loopback address because instances run locally.
fn parse_front_end(text: &str) -> Result<ProxyAddress, InstanceError> {
    let invalid = |reason: &str| InstanceError::InvalidArgument {
        name: "--xmsg-fe",
        value: text.to_owned(),
        reason: reason.to_owned(),
    };
    let address: SocketAddrV4 =
        text.parse().map_err(|_| invalid("expected IPV4:PORT, such as 127.0.0.1:7771"))?;
    if !address.ip().is_loopback() {
        return Err(invalid("must be a loopback address"));
    }
    Ok(ProxyAddress::new(*address.ip(), address.port()))
}

/// Returns the IPv4 address in the DPE's name, which is also where its proxy binds.
fn advertised_ipv4(args: &Args) -> Result<Ipv4Addr, InstanceError> {
    let host = args.advertised_host();
    let address: Ipv4Addr = host.parse().map_err(|_| InstanceError::InvalidArgument {
        name: "--advertise",
        value: host.clone(),
        reason: "an xMsg DPE needs an IPv4 address in its name".to_owned(),
    })?;
    if !address.is_loopback() {
        return Err(InstanceError::InvalidArgument {
            name: "--bind",
            value: host,
            reason: "an xMsg DPE binds its proxy on a loopback address only".to_owned(),
        });
    }
    Ok(address)
}

fn print_line(line: &Value) -> Result<(), InstanceError> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|source| InstanceError::Start { what: "ready line on stdout", source })
}

/// Reports of a worker: the HTTP report of the instance, plus the control-plane-only
/// services started over xMsg.
struct WorkerReports {
    shared: Arc<Shared>,
}

impl ReportSource for WorkerReports {
    fn alive_json(&self) -> String {
        let alive = Alive {
            name: CanonicalNames::of(&self.shared).dpe,
            n_cores: n_cores(),
            ersap_home: std::env::var("ERSAP_HOME").unwrap_or_default(),
        };
        serde_json::to_string(&alive).expect("alive JSON serialises")
    }

    fn report_json(&self, state: &DpeState) -> String {
        let report = report::build(&self.shared);
        let mut value = serde_json::to_value(&report).expect("report serialises");
        let lang = self.shared.args.lang.as_str();
        let (registrations, runtimes) = idle_containers(state, lang);
        merge_containers(&mut value["DPERegistration"]["containers"], registrations);
        merge_containers(&mut value["DPERuntime"]["containers"], runtimes);
        value.to_string()
    }
}

/// Adds containers to a report's container list; services of a container that is already
/// listed join its `services`.
fn merge_containers<T: serde::Serialize>(list: &mut Value, containers: Vec<T>) {
    let Some(list) = list.as_array_mut() else { return };
    for container in containers {
        let container = serde_json::to_value(container).expect("container serialises");
        let existing = list.iter_mut().find(|listed| listed["name"] == container["name"]);
        match existing {
            Some(listed) => {
                if let (Some(services), Some(added)) =
                    (listed["services"].as_array_mut(), container["services"].as_array())
                {
                    services.extend(added.iter().cloned());
                }
            }
            None => list.push(container),
        }
    }
}

/// Report entries of the containers whose services run the idle engine.
fn idle_containers(
    state: &DpeState,
    lang: &str,
) -> (Vec<ContainerRegistration>, Vec<ContainerRuntime>) {
    let dpe = state.name.to_string();
    let now = chrono::Local::now().format(TIME_FORMAT).to_string();
    let author = std::env::var("USER").unwrap_or_else(|_| "testbed".to_owned());
    let mut registrations = Vec::new();
    let mut runtimes = Vec::new();
    for (container, container_state) in &state.containers {
        let name = format!("{dpe}:{container}");
        let idle: Vec<_> = container_state
            .services
            .iter()
            .filter(|(_, service)| service.engine == MockEngine::Idle)
            .collect();
        if idle.is_empty() && !container_state.services.is_empty() {
            continue;
        }
        registrations.push(ContainerRegistration {
            name: name.clone(),
            language: lang.to_owned(),
            start_time: container_state.start_time.clone(),
            author: author.clone(),
            services: idle
                .iter()
                .map(|(engine, service)| ServiceRegistration {
                    name: format!("{name}:{engine}"),
                    class_name: service.class.clone(),
                    language: lang.to_owned(),
                    pool_size: service.pool,
                    start_time: service.start_time.clone(),
                    author: author.clone(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    description: service.description.clone(),
                })
                .collect(),
        });
        runtimes.push(ContainerRuntime {
            name: name.clone(),
            snapshot_time: now.clone(),
            n_requests: 0,
            services: idle
                .iter()
                .map(|(engine, _)| ServiceRuntime {
                    name: format!("{name}:{engine}"),
                    snapshot_time: now.clone(),
                    n_requests: 0,
                    n_failures: 0,
                    shm_reads: 0,
                    shm_writes: 0,
                    bytes_recv: 0,
                    bytes_sent: 0,
                    exec_time: 0,
                })
                .collect(),
        });
    }
    (registrations, runtimes)
}

fn n_cores() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

/// Command line of `mock-ersap front-end`.
///
/// A mock ERSAP front end: a DPE with an xMsg proxy on PORT .. PORT+2 and the registrar on
/// PORT+4, and no data plane. It prints one JSON line `{"event":"ready","port":..,"dpe":..,
/// "pid":..}` on stdout once it listens, and runs until SIGTERM, SIGINT, a `stopDpe` request
/// or the exit of the harness.
#[derive(Debug, Clone, Parser)]
#[command(name = "mock-ersap front-end", version)]
pub struct FrontEndArgs {
    /// Base port of the proxy (0 = a free one, with PORT+4 free for the registrar).
    #[arg(long, default_value_t = 7771)]
    pub port: u16,

    /// Loopback address that every socket binds to.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: Ipv4Addr,

    /// Session in the topics of the front end's own reports.
    #[arg(long, default_value = "testbed")]
    pub session: String,

    /// Report period, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub report_period_s: u64,

    /// PID of the harness. The front end exits within 1 s after that process is gone.
    #[arg(long)]
    pub harness_pid: Option<u32>,
}

/// Returns whether the command line selects front-end mode.
pub fn front_end_requested() -> bool {
    std::env::args().nth(1).as_deref() == Some(FRONT_END_COMMAND)
}

/// Runs `mock-ersap front-end` and returns the process exit code: 0 after a normal stop, 2
/// for invalid arguments or ports that cannot be bound.
pub fn run_front_end() -> ExitCode {
    let args = FrontEndArgs::parse_from(std::env::args().skip(1));
    tracing_subscriber::fmt()
        .with_env_filter(
            // The zeromq crate logs every peer that disconnects at info.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,zeromq=warn".into()),
        )
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .init();
    if !args.host.is_loopback() {
        eprintln!(
            "error: invalid --host {}: the front end binds loopback addresses only",
            args.host
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(front_end(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: mock ERSAP front end failed: {error}");
            ExitCode::from(2)
        }
    }
}

async fn front_end(args: FrontEndArgs) -> Result<(), XmsgError> {
    let (proxy, registrar) = bind_front_end(args.host, args.port).await?;
    let address = proxy.address();
    let name = DpeName::new(args.host, address.port, "java");
    let state = DpeState::new(name.clone(), None);
    let options = DpeOptions {
        session: args.session.clone(),
        front_end: address,
        report_period: Duration::from_secs(args.report_period_s),
    };
    let source = Arc::new(FrontEndReports {
        name: name.to_string(),
        session: args.session.clone(),
        start_time: chrono::Local::now().format(TIME_FORMAT).to_string(),
    });
    let stop = CancellationToken::new();
    let running = dpe::start(state, address, options, source, stop.clone()).await?;
    let line = serde_json::json!({
        "event": "ready",
        "port": address.port,
        "dpe": name.to_string(),
        "pid": std::process::id(),
    });
    if let Err(error) = print_line(&line) {
        warn!(%error, "could not print the ready line");
    }
    info!(%address, dpe = %name, "front end ready");
    let watcher = tokio::spawn(log_alive_reports(address));
    tokio::select! {
        () = stop.cancelled() => info!("stopDpe received; stopping"),
        name = stop_signal() => info!(signal = name, "signal received; stopping"),
        () = harness_gone(args.harness_pid) => warn!("harness process is gone; stopping"),
    }
    stop.cancel();
    watcher.abort();
    running.join().await;
    registrar.stop().await;
    proxy.stop().await;
    Ok(())
}

/// Logs the first `dpeAlive` of every DPE that reports to this front end, so that a person
/// who starts a real DPE against it sees it arrive.
async fn log_alive_reports(address: ProxyAddress) {
    let topics = ["dpeAlive:".to_owned()];
    let mut subscriber = match Subscriber::connect(address, &topics, CHECK_TIMEOUT).await {
        Ok(subscriber) => subscriber,
        Err(error) => {
            warn!(%error, "cannot watch dpeAlive reports");
            return;
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    loop {
        match subscriber.recv().await {
            Ok(Ok(message)) => {
                if seen.insert(message.topic.clone()) {
                    info!(topic = %message.topic, "first dpeAlive");
                }
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
}

/// Binds the proxy and the registrar, on `port` or on free ports when it is 0.
async fn bind_front_end(host: Ipv4Addr, port: u16) -> Result<(Proxy, RegistrarServer), XmsgError> {
    if port != 0 {
        let proxy = Proxy::bind(ProxyAddress::new(host, port)).await?;
        let registrar = RegistrarServer::bind(host, proxy.address().registrar_port()).await?;
        return Ok((proxy, registrar));
    }
    let mut last_error = None;
    for _ in 0..FRONT_END_ATTEMPTS {
        let proxy = Proxy::bind_free(host).await?;
        match RegistrarServer::bind(host, proxy.address().registrar_port()).await {
            Ok(registrar) => return Ok((proxy, registrar)),
            Err(error) => {
                proxy.stop().await;
                last_error = Some(error);
            }
        }
    }
    Err(last_error.expect("at least one attempt"))
}

/// Completes on SIGTERM or SIGINT and returns the signal's name.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};

    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut terminate), Ok(mut interrupt)) => tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        },
        (Err(error), _) | (_, Err(error)) => {
            error!(%error, "failed to install SIGTERM and SIGINT handlers");
            std::future::pending().await
        }
    }
}

/// Completes once the harness process is gone; never, without a harness.
async fn harness_gone(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) else {
        return std::future::pending().await;
    };
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    loop {
        interval.tick().await;
        if !super::process_is_running(pid) {
            return;
        }
    }
}

/// Reports of a front end, built from the DPE state alone.
struct FrontEndReports {
    name: String,
    session: String,
    start_time: String,
}

impl ReportSource for FrontEndReports {
    fn alive_json(&self) -> String {
        let alive = Alive {
            name: self.name.clone(),
            n_cores: n_cores(),
            ersap_home: std::env::var("ERSAP_HOME").unwrap_or_default(),
        };
        serde_json::to_string(&alive).expect("alive JSON serialises")
    }

    fn report_json(&self, state: &DpeState) -> String {
        let (containers, runtimes) = idle_containers(state, "java");
        let now = chrono::Local::now().format(TIME_FORMAT).to_string();
        let report = DpeReport {
            registration: Registration {
                name: self.name.clone(),
                language: "java".to_owned(),
                session: self.session.clone(),
                start_time: self.start_time.clone(),
                ersap_home: std::env::var("ERSAP_HOME").unwrap_or_default(),
                n_cores: n_cores(),
                memory_size: 0,
                containers,
            },
            runtime: Runtime {
                name: self.name.clone(),
                snapshot_time: now,
                cpu_usage: 0.0,
                memory_usage: 0,
                load: 0.0,
                containers: runtimes,
            },
        };
        serde_json::to_string(&report).expect("report serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xmsg_front_end_option_must_be_loopback() {
        assert!(parse_front_end("127.0.0.1:7771").is_ok());
        assert!(parse_front_end("192.0.2.1:7771").is_err());
        assert!(parse_front_end("7771").is_err());
    }
}
