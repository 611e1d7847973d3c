//! The mock ERSAP instance: one replica of one workflow stage, run by the `mock-ersap` binary.
//!
//! An instance plays a source (ERSAP's reader), a processor (a service) or a sink (writer). It
//! moves events over TCP with the framing in [`frame`], emulates the links to its downstream
//! replicas ([`link`], [`shaper`]), and takes orders over the HTTP control API whose types
//! live in `orchestrator::control` ([`control`]). It reports like an ERSAP DPE ([`report`],
//! [`metrics`]).
//!
//! Threads of one instance:
//!
//! - the control thread runs a small tokio runtime with the HTTP server;
//! - an acceptor thread takes inbound data connections and starts one reader per connection
//!   ([`receiver`]). A sink's readers record events themselves. A processor's readers pass
//!   batches to a pool of `--threads` workers ([`processor`]);
//! - a source runs one generator thread ([`source`]);
//! - every outbound link has its own writer thread, and an ack reader thread that reads the
//!   receiver's acknowledgements and replays the link's unacknowledged events when it fails;
//! - with `--harness-pid`, a watchdog thread ends the instance when the harness is gone.
//!
//! Shutdown goes through one cancellation token: `POST /stop`, SIGTERM, SIGINT or the
//! watchdog cancel it, the HTTP server finishes the replies in flight, and [`run`] returns.
//! The data threads are not joined; the process exit ends them.

pub mod ack;
pub mod args;
pub mod batch;
pub mod control;
pub mod drain;
pub mod frame;
pub mod link;
pub mod metrics;
pub mod processor;
pub mod ranges;
pub mod receiver;
pub mod report;
pub mod shaper;
pub mod source;
pub mod stats;
pub mod xmsg_dpe;

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use orchestrator::control::{Phase, ReadyLine, Role};
use orchestrator::journal::Journal;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use args::{Args, CostMode, Lang};

use batch::BufferPool;
use drain::DrainGate;
use link::Router;
use ranges::SeqSet;
use stats::{Counters, LatencyRecorder, PhaseCell};

/// Name of the environment variable that carries the control token.
pub const TOKEN_ENV: &str = "TESTBED_TOKEN";

/// Failure to start or run an instance.
#[derive(Debug, Error)]
pub enum InstanceError {
    #[error("missing control token: set the environment variable {TOKEN_ENV} to the run's token")]
    MissingToken,
    #[error("invalid {name} {value:?}: {reason}")]
    InvalidArgument { name: &'static str, value: String, reason: String },
    #[error("failed to bind the {port} port on {addr}")]
    Bind {
        port: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("failed to start the {what}")]
    Start {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("failed to open the journal {path}")]
    Journal {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control server failed")]
    Control(#[source] io::Error),
}

impl InstanceError {
    /// Process exit code: 2 for bad arguments or environment, 1 for failures while running.
    pub fn exit_code(&self) -> i32 {
        match self {
            InstanceError::MissingToken
            | InstanceError::InvalidArgument { .. }
            | InstanceError::Bind { .. }
            | InstanceError::Journal { .. } => 2,
            InstanceError::Start { .. } | InstanceError::Control(_) => 1,
        }
    }
}

/// Runs an instance until shutdown: binds both ports, prints the ready line on stdout, and
/// returns after `POST /stop`, SIGTERM, SIGINT or the harness's exit.
pub fn run(args: Args, token: String) -> Result<(), InstanceError> {
    if args.xmsg_fe.is_some() {
        return xmsg_dpe::run_worker(args, token);
    }
    let instance = Instance::start(args, token, Signals::Handle)?;
    let line = serde_json::to_string(&instance.ready_line()).expect("ready line serialises");
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|source| InstanceError::Start { what: "ready line on stdout", source })?;
    drop(stdout);
    instance.wait()
}

/// Whether an instance installs SIGTERM and SIGINT handlers. Only a process that hosts a
/// single instance should, so tests that start several in one process leave them alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signals {
    Handle,
    Ignore,
}

/// A running instance.
#[derive(Debug)]
pub struct Instance {
    shared: Arc<Shared>,
    control_thread: JoinHandle<Result<(), InstanceError>>,
}

impl Instance {
    /// Binds the data and control ports and starts the instance's threads.
    pub fn start(args: Args, token: String, signals: Signals) -> Result<Self, InstanceError> {
        if token.is_empty() {
            return Err(InstanceError::MissingToken);
        }
        let config = args.validate()?;
        if let Some(pid) = args.harness_pid {
            check_harness_pid(pid)?;
        }
        let journal = match &args.journal {
            Some(path) => Some(
                Journal::open(path)
                    .map_err(|source| InstanceError::Journal { path: path.clone(), source })?,
            ),
            None => None,
        };
        let data_listener = bind(&args, args.data_port, "data")?;
        let control_listener = bind(&args, args.control_port, "control")?;
        let data_port = local_port(&data_listener, &args, "data")?;
        let control_port = local_port(&control_listener, &args, "control")?;

        let span = tracing::info_span!(
            "instance",
            run_id = %args.run_id,
            stage = %args.stage,
            replica = args.replica,
        );
        let counters = Arc::new(Counters::default());
        let pool = Arc::new(BufferPool::new(64));
        let (start_tx, start_rx) = crossbeam_channel::bounded(1);
        let role = args.role;
        let shared = Arc::new(Shared {
            role,
            token: Secret(token),
            config,
            data_port,
            control_port,
            phase: PhaseCell::new(Phase::Ready),
            router: Router::new(
                Arc::clone(&counters),
                Arc::clone(&pool),
                span.clone(),
                args.replica,
            ),
            counters,
            pool,
            latency: LatencyRecorder::default(),
            received: (role == Role::Sink).then(|| Mutex::new(SeqSet::new())),
            journal,
            drain: DrainGate::default(),
            inbound: Mutex::new(Vec::new()),
            start_tx,
            started_at: Instant::now(),
            start_time: chrono::Local::now(),
            shutdown: CancellationToken::new(),
            cpu_sample: Mutex::new(None),
            span,
            args,
        });

        let span = shared.span.clone();
        let _entered = span.enter();
        info!(role = %role, data_port, control_port, pid = std::process::id(), "instance listening");
        match role {
            Role::Source => source::spawn(Arc::clone(&shared), start_rx)?,
            Role::Processor | Role::Sink => drop(start_rx),
        }
        receiver::spawn_acceptor(Arc::clone(&shared), data_listener)?;
        if let Some(pid) = shared.args.harness_pid {
            spawn_harness_watchdog(Arc::clone(&shared), pid)?;
        }
        let control_thread = control::spawn(Arc::clone(&shared), control_listener, signals)?;
        Ok(Self { shared, control_thread })
    }

    /// Returns the line printed on stdout once the ports are bound.
    pub fn ready_line(&self) -> ReadyLine {
        ReadyLine {
            event: "ready".to_owned(),
            data_port: self.shared.data_port,
            control_port: self.shared.control_port,
            pid: std::process::id(),
        }
    }

    pub fn data_port(&self) -> u16 {
        self.shared.data_port
    }

    pub fn control_port(&self) -> u16 {
        self.shared.control_port
    }

    /// Asks the instance to stop, as `POST /stop` does.
    pub fn stop(&self) {
        self.shared.shutdown.cancel();
    }

    /// Cuts every data connection, inbound and outbound, as the death of the process would,
    /// and makes the instance drop whatever its threads still try to send. The control API
    /// keeps serving requests.
    #[cfg(test)]
    pub(crate) fn kill_data_plane(&self) {
        self.shared.router.kill();
        let inbound = std::mem::take(&mut *self.shared.inbound.lock().expect("inbound lock"));
        for stream in inbound {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Blocks until the control server has shut down.
    pub fn wait(self) -> Result<(), InstanceError> {
        match self.control_thread.join() {
            Ok(result) => result,
            Err(_) => Err(InstanceError::Control(io::Error::other("control thread panicked"))),
        }
    }
}

/// State shared by all threads of an instance.
#[derive(Debug)]
pub(crate) struct Shared {
    pub args: Args,
    pub role: Role,
    pub token: Secret,
    /// Parsed `--config-json`, shown in the report and never acted on.
    pub config: Option<serde_json::Value>,
    pub data_port: u16,
    pub control_port: u16,
    pub phase: PhaseCell,
    pub counters: Arc<Counters>,
    pub latency: LatencyRecorder,
    /// Sequence numbers a sink has received, or `None` for other roles.
    pub received: Option<Mutex<SeqSet>>,
    /// Sink only, with `--journal`: where received ranges are appended before their ack.
    pub journal: Option<Journal>,
    pub pool: Arc<BufferPool>,
    pub router: Router,
    pub drain: DrainGate,
    /// Handles on the inbound data connections, for shutting them down.
    pub inbound: Mutex<Vec<std::net::TcpStream>>,
    /// Channel on which `POST /start` signals a source's generator.
    pub start_tx: Sender<()>,
    pub started_at: Instant,
    pub start_time: chrono::DateTime<chrono::Local>,
    pub shutdown: CancellationToken,
    /// Previous CPU-time reading, from which the report computes CPU usage.
    pub cpu_sample: Mutex<Option<report::CpuSample>>,
    pub span: tracing::Span,
}

impl Shared {
    /// Moves to `Drained` and logs the final counters.
    fn mark_drained(&self) {
        self.phase.set(Phase::Drained);
        let counters = &self.counters;
        info!(
            events_in = Counters::get(&counters.events_in),
            events_out = Counters::get(&counters.events_out),
            duplicates = Counters::get(&counters.duplicates),
            lost = Counters::get(&counters.lost),
            "drained"
        );
    }
}

fn bind(args: &Args, port: u16, name: &'static str) -> Result<TcpListener, InstanceError> {
    let addr = SocketAddr::new(args.bind, port);
    TcpListener::bind(addr).map_err(|source| InstanceError::Bind { port: name, addr, source })
}

fn local_port(
    listener: &TcpListener,
    args: &Args,
    name: &'static str,
) -> Result<u16, InstanceError> {
    listener.local_addr().map(|addr| addr.port()).map_err(|source| InstanceError::Bind {
        port: name,
        addr: SocketAddr::new(args.bind, 0),
        source,
    })
}

/// Interval between two checks that the harness still runs, well under the promised 1 s.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(200);

/// Checks that `--harness-pid` names a running process, and returns its id as `i32`.
fn check_harness_pid(pid: u32) -> Result<i32, InstanceError> {
    let invalid = |reason: &str| InstanceError::InvalidArgument {
        name: "--harness-pid",
        value: pid.to_string(),
        reason: reason.to_owned(),
    };
    let raw_pid = i32::try_from(pid).map_err(|_| invalid("is not a valid process id"))?;
    if !process_is_running(raw_pid) {
        return Err(invalid("no such process is running"));
    }
    Ok(raw_pid)
}

fn spawn_harness_watchdog(shared: Arc<Shared>, pid: u32) -> Result<(), InstanceError> {
    let raw_pid = check_harness_pid(pid)?;
    let spawned = thread::Builder::new().name("harness-watchdog".to_owned()).spawn(move || {
        let _entered = shared.span.enter();
        while !shared.shutdown.is_cancelled() {
            if !process_is_running(raw_pid) {
                warn!(harness_pid = pid, "harness process is gone; stopping");
                shared.shutdown.cancel();
                return;
            }
            thread::sleep(WATCHDOG_PERIOD);
        }
    });
    spawned.map(drop).map_err(|source| InstanceError::Start { what: "harness watchdog", source })
}

/// Checks whether process `pid` exists and is not a zombie. A killed harness whose parent has not
/// reaped it yet is a zombie, and it counts as gone.
fn process_is_running(pid: i32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;

    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state letter follows the command name, which is in parentheses and may contain
    // spaces, so it is found after the last ')'.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    state != Some('Z')
}

/// Control token, kept out of `Debug` output so that it never reaches a log.
pub(crate) struct Secret(String);

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Channel on which the source's generator waits for `POST /start`.
pub(crate) type StartSignal = Receiver<()>;

#[cfg(test)]
mod tests;
