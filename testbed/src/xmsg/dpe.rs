//! ERSAP's DPE protocol on top of xMsg, as the mock DPEs speak it: the requests a DPE
//! handles, the registrations it keeps at the front end, and its periodic reports.
//!
//! [`DpeState::handle`] is the request logic without sockets, so that tests can drive it
//! directly. [`start`] runs it on a proxy: it subscribes to `dpe:<name>`, registers the DPE
//! with the front end's registrar, answers requests that carry `replyTo`, publishes
//! `dpeAlive` and `dpeReport` to the front end every report period (the first one period
//! after the start, as the Java DPE does), and removes its registrations when it stops.
//!
//! Replies follow the recorded real ones: status INFO and the request text echoed for
//! successful start and stop requests (the C++ DPE's behaviour; only its successful replies
//! were recorded), status ERROR with a `text/string` reason otherwise. `pingDpe` returns the
//! alive JSON on a Java DPE and echoes the request on a C++ one.
//!
//! Mock engines are chosen by class name: the class of the instance's own data plane runs
//! the data-plane engine, [`IDLE_ENGINE_CLASS`] runs an engine that only exists in the
//! control plane, and every other class is rejected with an ERROR reply, as a real DPE
//! rejects a class it cannot load.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::client::{CHECK_TIMEOUT, Publisher, RegistrarClient, Subscriber};
use super::error::XmsgError;
use super::message::Message;
use super::proto::{OwnerType, Registration, Status};
use super::proxy::ProxyAddress;
use super::topic::DpeName;

/// Class of the mock engine that exists only in the control plane: it can be started and
/// stopped and shows in reports, but it moves no events.
pub const IDLE_ENGINE_CLASS: &str = "org.jlab.epsci.ersap.testbed.IdleEngine";
/// Timeout of the registrar requests a DPE sends.
pub const REGISTRAR_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of each registration removal when a DPE stops; short, because the front end may
/// already be gone.
const REMOVAL_TIMEOUT: Duration = Duration::from_millis(500);

/// A DPE request, parsed from its `?`-separated text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpeRequest {
    StartContainer {
        container: String,
        pool: u32,
        description: String,
    },
    StartService {
        container: String,
        engine: String,
        class: String,
        pool: u32,
        description: String,
        initial_state: String,
    },
    StopService {
        container: String,
        engine: String,
    },
    StopContainer {
        container: String,
    },
    StopDpe,
    PingDpe,
    ReportJson,
}

impl DpeRequest {
    /// Parses a request, or returns why it is invalid.
    pub fn parse(text: &str) -> Result<DpeRequest, String> {
        let fields: Vec<&str> = text.split('?').collect();
        let count = |expected: usize| {
            if fields.len() == expected {
                Ok(())
            } else {
                Err(format!(
                    "`{}` takes {} fields, got {}",
                    fields[0],
                    expected - 1,
                    fields.len() - 1
                ))
            }
        };
        let pool = |text: &str| {
            text.parse::<u32>()
                .ok()
                .filter(|pool| *pool > 0)
                .ok_or_else(|| format!("pool size `{text}` is not a positive number"))
        };
        let request = match fields[0] {
            "startContainer" => {
                count(4)?;
                DpeRequest::StartContainer {
                    container: container_name(fields[1])?,
                    pool: pool(fields[2])?,
                    description: fields[3].to_owned(),
                }
            }
            "startService" => {
                count(7)?;
                DpeRequest::StartService {
                    container: container_name(fields[1])?,
                    engine: engine_name(fields[2])?,
                    class: fields[3].to_owned(),
                    pool: pool(fields[4])?,
                    description: fields[5].to_owned(),
                    initial_state: fields[6].to_owned(),
                }
            }
            "stopService" => {
                count(3)?;
                DpeRequest::StopService {
                    container: container_name(fields[1])?,
                    engine: engine_name(fields[2])?,
                }
            }
            "stopContainer" => {
                count(2)?;
                DpeRequest::StopContainer { container: container_name(fields[1])? }
            }
            "stopDpe" => DpeRequest::StopDpe,
            "pingDpe" => DpeRequest::PingDpe,
            "reportJson" => DpeRequest::ReportJson,
            other => return Err(format!("unknown request `{other}`")),
        };
        Ok(request)
    }

    /// Returns the request's text, as an orchestrator sends it.
    pub fn to_text(&self) -> String {
        match self {
            DpeRequest::StartContainer { container, pool, description } => {
                format!("startContainer?{container}?{pool}?{description}")
            }
            DpeRequest::StartService {
                container,
                engine,
                class,
                pool,
                description,
                initial_state,
            } => {
                format!(
                    "startService?{container}?{engine}?{class}?{pool}?{description}?{initial_state}"
                )
            }
            DpeRequest::StopService { container, engine } => {
                format!("stopService?{container}?{engine}")
            }
            DpeRequest::StopContainer { container } => format!("stopContainer?{container}"),
            DpeRequest::StopDpe => "stopDpe".to_owned(),
            DpeRequest::PingDpe => "pingDpe".to_owned(),
            DpeRequest::ReportJson => "reportJson".to_owned(),
        }
    }
}

/// Checks a container name against ERSAP's `[\w-]+`.
fn container_name(name: &str) -> Result<String, String> {
    let valid =
        !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    if valid { Ok(name.to_owned()) } else { Err(format!("invalid container name `{name}`")) }
}

/// Checks an engine name against ERSAP's `\w+`.
fn engine_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_');
    if valid { Ok(name.to_owned()) } else { Err(format!("invalid engine name `{name}`")) }
}

/// The mock engine a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockEngine {
    /// The instance's own source, processor or sink.
    DataPlane,
    /// An engine that exists only in the control plane.
    Idle,
}

/// A service started through xMsg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    pub class: String,
    pub pool: u32,
    pub description: String,
    pub engine: MockEngine,
    pub start_time: String,
}

/// A container started through xMsg, with its services by engine name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub pool: u32,
    pub description: String,
    pub start_time: String,
    pub services: BTreeMap<String, ServiceState>,
}

/// A reply to send, and what the request changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    pub text: String,
    /// Registrations to add at the front end.
    pub register: Vec<Registration>,
    /// Registrations to remove from the front end.
    pub remove: Vec<Registration>,
    /// Whether the DPE stops after replying.
    pub stop: bool,
}

impl Outcome {
    fn info(text: &str) -> Outcome {
        Outcome {
            status: Status::Info,
            text: text.to_owned(),
            register: vec![],
            remove: vec![],
            stop: false,
        }
    }

    fn error(text: String) -> Outcome {
        Outcome { status: Status::Error, ..Outcome::info(&text) }
    }
}

/// The JSON a DPE publishes, which depends on what runs where.
pub trait ReportSource: Send + Sync {
    /// `dpeAlive` JSON: `{"name", "n_cores", "ersap_home"}`.
    fn alive_json(&self) -> String;
    /// `dpeReport` JSON, with the containers and services of `state`.
    fn report_json(&self, state: &DpeState) -> String;
}

/// The `dpeAlive` payload.
#[derive(Debug, Clone, Serialize)]
pub struct Alive {
    pub name: String,
    pub n_cores: usize,
    pub ersap_home: String,
}

/// Identity and containers of one mock DPE.
#[derive(Debug, Clone)]
pub struct DpeState {
    pub name: DpeName,
    /// Class name that runs the data-plane engine, if the DPE has a data plane.
    pub data_plane_class: Option<String>,
    pub containers: BTreeMap<String, ContainerState>,
}

impl DpeState {
    pub fn new(name: DpeName, data_plane_class: Option<String>) -> DpeState {
        DpeState { name, data_plane_class, containers: BTreeMap::new() }
    }

    /// Returns the engine that runs a class, or `None` for a class no mock engine has.
    pub fn engine_for_class(&self, class: &str) -> Option<MockEngine> {
        if self.data_plane_class.as_deref() == Some(class) {
            Some(MockEngine::DataPlane)
        } else if class == IDLE_ENGINE_CLASS {
            Some(MockEngine::Idle)
        } else {
            None
        }
    }

    /// Port the DPE writes in its registrations: the Java DPE registers its base port, the
    /// C++ one its XPUB port (`port + 1`).
    pub fn registration_port(&self) -> u32 {
        let port = u32::from(self.name.port);
        if self.name.lang == "cpp" { port + 1 } else { port }
    }

    /// Returns the DPE's own registration, on topic `dpe:<name>`.
    pub fn dpe_registration(&self) -> Registration {
        let name = self.name.to_string();
        self.registration(&name, "dpe", &name, "*")
    }

    fn container_registration(&self, container: &str) -> Registration {
        let dpe = self.name.to_string();
        self.registration(&format!("{dpe}:{container}"), "container", &dpe, container)
    }

    fn service_registration(&self, container: &str, engine: &str) -> Registration {
        let dpe = self.name.to_string();
        self.registration(&format!("{dpe}:{container}:{engine}"), &dpe, container, engine)
    }

    fn registration(&self, name: &str, domain: &str, subject: &str, r#type: &str) -> Registration {
        Registration {
            name: name.to_owned(),
            description: Some(String::new()),
            host: self.name.host.to_string(),
            port: self.registration_port(),
            domain: domain.to_owned(),
            subject: Some(subject.to_owned()),
            r#type: Some(r#type.to_owned()),
            owner_type: OwnerType::Subscriber as i32,
        }
    }

    /// Returns every registration the DPE holds, services first, so that removing them in this order
    /// never leaves a service without its container.
    pub fn all_registrations(&self) -> Vec<Registration> {
        let mut all = Vec::new();
        for (container, state) in &self.containers {
            for engine in state.services.keys() {
                all.push(self.service_registration(container, engine));
            }
        }
        for container in self.containers.keys() {
            all.push(self.container_registration(container));
        }
        all.push(self.dpe_registration());
        all
    }

    /// Handles one request text and returns the reply and its effects.
    pub fn handle(&mut self, text: &str, source: &dyn ReportSource) -> Outcome {
        let request = match DpeRequest::parse(text) {
            Ok(request) => request,
            Err(reason) => return Outcome::error(format!("invalid request `{text}`: {reason}")),
        };
        let dpe = self.name.to_string();
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string();
        match request {
            DpeRequest::StartContainer { container, pool, description } => {
                if self.containers.contains_key(&container) {
                    return Outcome::error(format!(
                        "could not start container = {dpe}:{container}: container already exists"
                    ));
                }
                let registration = self.container_registration(&container);
                let state = ContainerState {
                    pool,
                    description,
                    start_time: now,
                    services: BTreeMap::new(),
                };
                self.containers.insert(container, state);
                Outcome { register: vec![registration], ..Outcome::info(text) }
            }
            DpeRequest::StartService { container, engine, class, pool, description, .. } => {
                // The container is checked before the class, as the Java DPE does.
                let service = format!("{dpe}:{container}:{engine}");
                if !self.containers.contains_key(&container) {
                    return Outcome::error(format!(
                        "could not start service = {service}: missing container"
                    ));
                }
                let Some(mock) = self.engine_for_class(&class) else {
                    return Outcome::error(self.unknown_class_message(&service, &class));
                };
                let registration = self.service_registration(&container, &engine);
                let state = self.containers.get_mut(&container).expect("checked above");
                if state.services.contains_key(&engine) {
                    return Outcome::error(format!(
                        "could not start service = {service}: service already exists"
                    ));
                }
                let service_state =
                    ServiceState { class, pool, description, engine: mock, start_time: now };
                state.services.insert(engine, service_state);
                Outcome { register: vec![registration], ..Outcome::info(text) }
            }
            DpeRequest::StopService { container, engine } => {
                let removed = self
                    .containers
                    .get_mut(&container)
                    .and_then(|state| state.services.remove(&engine));
                if removed.is_none() {
                    return Outcome::error(format!(
                        "could not stop service = {dpe}:{container}:{engine}: service doesn't exist"
                    ));
                }
                let registration = self.service_registration(&container, &engine);
                Outcome { remove: vec![registration], ..Outcome::info(text) }
            }
            DpeRequest::StopContainer { container } => {
                let Some(state) = self.containers.remove(&container) else {
                    return Outcome::error(format!(
                        "could not stop container = {dpe}:{container}: container doesn't exist"
                    ));
                };
                let mut remove: Vec<Registration> = state
                    .services
                    .keys()
                    .map(|engine| self.service_registration(&container, engine))
                    .collect();
                remove.push(self.container_registration(&container));
                Outcome { remove, ..Outcome::info(text) }
            }
            DpeRequest::StopDpe => {
                Outcome { remove: self.all_registrations(), stop: true, ..Outcome::info(text) }
            }
            DpeRequest::PingDpe if self.name.lang == "cpp" => Outcome::info(text),
            DpeRequest::PingDpe => Outcome::info(&source.alive_json()),
            DpeRequest::ReportJson => Outcome::info(&source.report_json(self)),
        }
    }

    fn unknown_class_message(&self, service: &str, class: &str) -> String {
        if self.name.lang == "cpp" {
            format!(
                "could not start service {service}: could not load 'lib{class}.so': \
                 no mock engine has this class name"
            )
        } else {
            format!("could not start service = {service}: no mock engine has class {class}")
        }
    }

    /// Sender of replies and reports: the DPE's name on a Java or Python DPE, none on a C++
    /// one, as recorded.
    fn sender(&self) -> Option<String> {
        (self.name.lang != "cpp").then(|| self.name.to_string())
    }
}

/// Session, front end and report period of a DPE.
#[derive(Debug, Clone)]
pub struct DpeOptions {
    pub session: String,
    /// Proxy of the front end, whose registrar is on `port + 4`.
    pub front_end: ProxyAddress,
    pub report_period: Duration,
}

/// A DPE running on a tokio runtime. It stops when the token passed to [`start`] is
/// cancelled, or after a `stopDpe` request, which cancels that token itself.
pub struct RunningDpe {
    state: Arc<Mutex<DpeState>>,
    task: JoinHandle<()>,
}

impl RunningDpe {
    /// Returns a copy of the DPE's containers and services.
    pub fn state(&self) -> DpeState {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Waits until the DPE has stopped and removed its registrations.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Starts a DPE on its own proxy at `own`: subscribes to its request topic, registers it with
/// the front end and starts replying and reporting. Returns once the DPE is registered.
pub async fn start(
    state: DpeState,
    own: ProxyAddress,
    options: DpeOptions,
    source: Arc<dyn ReportSource>,
    stop: CancellationToken,
) -> Result<RunningDpe, XmsgError> {
    let name = state.name.to_string();
    let requests = Subscriber::connect(own, &[state.name.request_topic()], CHECK_TIMEOUT).await?;
    let replies = Publisher::connect(own, CHECK_TIMEOUT).await?;
    let registrar = RegistrarClient::new(options.front_end, &name, REGISTRAR_TIMEOUT);
    registrar.register(&state.dpe_registration()).await?;
    let reports = Publisher::connect(options.front_end, CHECK_TIMEOUT).await?;
    info!(dpe = %name, front_end = %options.front_end, "DPE registered");
    let state = Arc::new(Mutex::new(state));
    let sockets = Sockets { requests, replies, reports, registrar };
    let span = tracing::info_span!("dpe", dpe = %name);
    let task =
        tokio::spawn(serve(Arc::clone(&state), sockets, options, source, stop).instrument(span));
    Ok(RunningDpe { state, task })
}

struct Sockets {
    requests: Subscriber,
    replies: Publisher,
    reports: Publisher,
    registrar: RegistrarClient,
}

async fn serve(
    state: Arc<Mutex<DpeState>>,
    mut sockets: Sockets,
    options: DpeOptions,
    source: Arc<dyn ReportSource>,
    stop: CancellationToken,
) {
    let period = options.report_period;
    let mut reports = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = reports.tick() => publish_reports(&state, &mut sockets, &options, &*source).await,
            received = sockets.requests.recv() => match received {
                Ok(Ok(message)) => {
                    if answer(&state, &mut sockets, &*source, message).await {
                        stop.cancel();
                        break;
                    }
                }
                Ok(Err(error)) => {
                    warn!(topic = error.topic().unwrap_or("?"), %error, "dropped a malformed message");
                }
                Err(error) => {
                    warn!(%error, "receiving requests failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    let removals = lock(&state).all_registrations();
    let registrar = sockets.registrar.clone();
    for registration in removals {
        let removal = registrar.remove(&registration);
        match tokio::time::timeout(REMOVAL_TIMEOUT, removal).await {
            Ok(Ok(())) => debug!(name = %registration.name, "registration removed"),
            Ok(Err(error)) => debug!(name = %registration.name, %error, "registration not removed"),
            Err(_) => debug!(name = %registration.name, "registration removal timed out"),
        }
    }
    info!("DPE stopped");
}

/// Handles one request and publishes the reply. Returns whether the DPE should stop.
async fn answer(
    state: &Mutex<DpeState>,
    sockets: &mut Sockets,
    source: &dyn ReportSource,
    message: Message,
) -> bool {
    let text = match String::from_utf8(message.payload.clone()) {
        Ok(text) => text,
        Err(_) => {
            warn!(topic = %message.topic, "dropped a request whose payload is not UTF-8");
            return false;
        }
    };
    let (outcome, dpe, sender) = {
        let mut state = lock(state);
        let outcome = state.handle(&text, source);
        (outcome, state.name.to_string(), state.sender())
    };
    match outcome.status {
        Status::Info => info!(request = %text, "request handled"),
        _ => warn!(request = %text, reply = %outcome.text, "request failed"),
    }
    for registration in &outcome.remove {
        if let Err(error) = sockets.registrar.remove(registration).await {
            warn!(name = %registration.name, %error, "failed to remove a registration");
        }
    }
    for registration in &outcome.register {
        if let Err(error) = sockets.registrar.register(registration).await {
            warn!(name = %registration.name, %error, "failed to register");
        }
    }
    match message.meta.reply_to.as_deref() {
        Some(reply_to) if !reply_to.is_empty() => {
            let meta = Message::text_meta(outcome.status, &dpe, sender.as_deref());
            let reply = Message::text(reply_to, meta, &outcome.text);
            if let Err(error) = sockets.replies.publish(&reply).await {
                warn!(%error, reply_to, "failed to publish a reply");
            }
        }
        _ => debug!(request = %text, "no replyTo; reply not sent"),
    }
    outcome.stop
}

async fn publish_reports(
    state: &Mutex<DpeState>,
    sockets: &mut Sockets,
    options: &DpeOptions,
    source: &dyn ReportSource,
) {
    let (dpe, sender, report) = {
        let state = lock(state);
        (state.name.to_string(), state.sender(), source.report_json(&state))
    };
    let meta = Message::json_meta(sender.as_deref());
    let alive = Message {
        topic: format!("dpeAlive:{}:{dpe}", options.session),
        meta: meta.clone(),
        payload: source.alive_json().into_bytes(),
    };
    let report = Message {
        topic: format!("dpeReport:{}:{dpe}", options.session),
        meta,
        payload: report.into_bytes(),
    };
    for message in [alive, report] {
        if let Err(error) = sockets.reports.publish(&message).await {
            warn!(%error, topic = %message.topic, "failed to publish a report");
        }
    }
}

fn lock(state: &Mutex<DpeState>) -> std::sync::MutexGuard<'_, DpeState> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
