//! The front end's registrar: a database of publishers and subscribers behind a REP socket on
//! the proxy's `port + 4`.
//!
//! A request is three frames `[type, sender, xMsgRegistration]`; the reply is
//! `[type, "<host>:registrar", status, registrations...]` where the status is `success` or
//! the reason of the failure. Request types:
//!
//! | type | effect | registrations in the reply |
//! |---|---|---|
//! | `registerPublisher`, `registerSubscriber` | store the registration, replacing an equal one | none |
//! | `removePublisherRegistration`, `removeSubscriberRegistration` | remove it | none |
//! | `findPublisher`, `findSubscriber` | | those whose domain, subject and type equal the request's |
//! | `allPublisher`, `allSubscriber` | | every one of that owner type |
//!
//! `find` compares the three parts literally, as the real Java registrar did in the
//! recordings. A search for subject `*` and type `*` returned no registration although two
//! DPEs were registered, and a search for one DPE's subject with type `*` returned that DPE.
//! Replies list registrations sorted by topic and name, which reproduces the order of the
//! recorded replies.
//!
//! NOTE: only the subscriber spellings of the request types were recorded; the publisher ones
//! follow the same pattern.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use prost::bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};
use zeromq::{RepSocket, Socket, SocketRecv, SocketSend};

use super::error::XmsgError;
use super::message::frames_to_zmq;
use super::proto::{OwnerType, Registration};

/// Status of a request that succeeded.
pub const SUCCESS: &str = "success";
/// Status of a request whose type is not one of the table above, in the Java registrar's wording.
pub const UNKNOWN_REQUEST: &str = "unknown registration request";

/// Operation of a registrar request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Register,
    Remove,
    Find,
    All,
}

/// Returns the request type's kind and owner type, or `None` for an unknown type.
pub fn parse_request_type(request_type: &str) -> Option<(RequestKind, OwnerType)> {
    use OwnerType::{Publisher, Subscriber};
    use RequestKind::{All, Find, Register, Remove};
    Some(match request_type {
        "registerPublisher" => (Register, Publisher),
        "registerSubscriber" => (Register, Subscriber),
        "removePublisherRegistration" => (Remove, Publisher),
        "removeSubscriberRegistration" => (Remove, Subscriber),
        "findPublisher" => (Find, Publisher),
        "findSubscriber" => (Find, Subscriber),
        "allPublisher" => (All, Publisher),
        "allSubscriber" => (All, Subscriber),
        _ => return None,
    })
}

/// Request type of `kind` for registrations of `owner`.
pub fn request_type(kind: RequestKind, owner: OwnerType) -> &'static str {
    match (kind, owner) {
        (RequestKind::Register, OwnerType::Publisher) => "registerPublisher",
        (RequestKind::Register, OwnerType::Subscriber) => "registerSubscriber",
        (RequestKind::Remove, OwnerType::Publisher) => "removePublisherRegistration",
        (RequestKind::Remove, OwnerType::Subscriber) => "removeSubscriberRegistration",
        (RequestKind::Find, OwnerType::Publisher) => "findPublisher",
        (RequestKind::Find, OwnerType::Subscriber) => "findSubscriber",
        (RequestKind::All, OwnerType::Publisher) => "allPublisher",
        (RequestKind::All, OwnerType::Subscriber) => "allSubscriber",
    }
}

/// The registration database. Registrations never expire, as in ERSAP: a DPE that crashed
/// stays registered until someone removes it.
#[derive(Debug, Clone)]
pub struct Registrar {
    /// Second frame of every reply: `<host>:registrar`.
    reply_sender: String,
    publishers: Vec<Registration>,
    subscribers: Vec<Registration>,
}

impl Registrar {
    /// Creates an empty registrar whose replies name `host`.
    pub fn new(host: &str) -> Registrar {
        Registrar {
            reply_sender: format!("{host}:registrar"),
            publishers: Vec::new(),
            subscribers: Vec::new(),
        }
    }

    /// Returns every registration of `owner`, sorted as replies list them.
    pub fn registrations(&self, owner: OwnerType) -> Vec<Registration> {
        let mut all = match owner {
            OwnerType::Publisher => self.publishers.clone(),
            OwnerType::Subscriber => self.subscribers.clone(),
        };
        all.sort_by_cached_key(|registration| (registration.topic(), registration.name.clone()));
        all
    }

    /// Handles one request and returns the frames of the reply. Never fails: a malformed
    /// request gets a reply whose status names the problem, because a REP socket must reply
    /// to every request before it can receive the next.
    pub fn handle<F: AsRef<[u8]>>(&mut self, frames: &[F]) -> Vec<Vec<u8>> {
        let request_type =
            frames.first().map(|frame| String::from_utf8_lossy(frame.as_ref()).into_owned());
        let request_type = request_type.unwrap_or_default();
        let (status, found) = self.execute(&request_type, frames);
        let mut reply = vec![
            request_type.into_bytes(),
            self.reply_sender.clone().into_bytes(),
            status.into_bytes(),
        ];
        reply.extend(found.iter().map(|registration| registration.encode_to_vec()));
        reply
    }

    fn execute<F: AsRef<[u8]>>(
        &mut self,
        request_type: &str,
        frames: &[F],
    ) -> (String, Vec<Registration>) {
        if frames.len() != 3 {
            return (format!("invalid request: expected 3 frames, got {}", frames.len()), vec![]);
        }
        let Some((kind, owner)) = parse_request_type(request_type) else {
            return (UNKNOWN_REQUEST.to_owned(), vec![]);
        };
        if kind == RequestKind::All {
            return (SUCCESS.to_owned(), self.registrations(owner));
        }
        let data = match Registration::decode(frames[2].as_ref()) {
            Ok(data) => data,
            Err(error) => return (format!("invalid registration data: {error}"), vec![]),
        };
        let store = match owner {
            OwnerType::Publisher => &mut self.publishers,
            OwnerType::Subscriber => &mut self.subscribers,
        };
        match kind {
            RequestKind::Register => {
                store.retain(|stored| !same_registration(stored, &data));
                store.push(data);
                (SUCCESS.to_owned(), vec![])
            }
            RequestKind::Remove => {
                store.retain(|stored| !same_registration(stored, &data));
                (SUCCESS.to_owned(), vec![])
            }
            RequestKind::Find => {
                let found = self
                    .registrations(owner)
                    .into_iter()
                    .filter(|stored| {
                        stored.domain == data.domain
                            && stored.subject == data.subject
                            && stored.r#type == data.r#type
                    })
                    .collect();
                (SUCCESS.to_owned(), found)
            }
            RequestKind::All => unreachable!("answered above"),
        }
    }
}

/// Two registrations of the same actor on the same topic; the description may differ.
fn same_registration(a: &Registration, b: &Registration) -> bool {
    a.name == b.name
        && a.host == b.host
        && a.port == b.port
        && a.domain == b.domain
        && a.subject == b.subject
        && a.r#type == b.r#type
}

/// A registrar served on a REP socket. Dropping it stops the server.
#[derive(Debug)]
pub struct RegistrarServer {
    port: u16,
    database: Arc<Mutex<Registrar>>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// Pause after a receive error, so that a failing socket cannot spin the loop.
const ERROR_PAUSE: Duration = Duration::from_millis(5);

impl RegistrarServer {
    /// Binds the REP socket on `host:port` and serves an empty registrar. Must be called
    /// inside a tokio runtime.
    pub async fn bind(host: Ipv4Addr, port: u16) -> Result<RegistrarServer, XmsgError> {
        let mut socket = RepSocket::new();
        socket.bind(&format!("tcp://{host}:{port}")).await.map_err(|error| XmsgError::Bind {
            socket: "registrar REP",
            host: host.to_string(),
            port,
            reason: error.to_string(),
        })?;
        let database = Arc::new(Mutex::new(Registrar::new(&host.to_string())));
        let shutdown = CancellationToken::new();
        let span = tracing::debug_span!("registrar", port);
        let task =
            tokio::spawn(serve(socket, Arc::clone(&database), shutdown.clone()).instrument(span));
        info!(%host, port, "registrar listening");
        Ok(RegistrarServer { port, database, shutdown, task: Some(task) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the database, for callers that read or change it directly.
    pub fn database(&self) -> Arc<Mutex<Registrar>> {
        Arc::clone(&self.database)
    }

    /// Stops serving and waits until the socket is closed.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RegistrarServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn serve(
    mut socket: RepSocket,
    database: Arc<Mutex<Registrar>>,
    shutdown: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = socket.recv() => received,
        };
        let frames = match received {
            Ok(message) => message.into_vec(),
            Err(error) => {
                debug!(%error, "receive on the registrar socket failed");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let reply =
            database.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).handle(&frames);
        log_request(&frames, &reply);
        if let Err(error) = socket.send(frames_to_zmq(reply)).await {
            warn!(%error, "failed to send a registrar reply");
        }
    }
    debug!("registrar stopped");
}

/// Logs registrations and removals at info, searches at debug and failures as warnings.
fn log_request(frames: &[Bytes], reply: &[Vec<u8>]) {
    let request = String::from_utf8_lossy(&reply[0]);
    let sender = frames.get(1).map(|frame| String::from_utf8_lossy(frame)).unwrap_or_default();
    let status = String::from_utf8_lossy(&reply[2]);
    if status != SUCCESS {
        warn!(%request, %sender, %status, "registrar request failed");
        return;
    }
    match parse_request_type(&request) {
        Some((RequestKind::Register | RequestKind::Remove, _)) => {
            info!(%request, %sender, "registrar request");
        }
        _ => debug!(%request, %sender, "registrar request"),
    }
}
