//! Client side of xMsg: publishers and subscribers that check their connection before use,
//! synchronous requests through `replyTo`, and the registrar client.
//!
//! A ZeroMQ publisher drops every message sent before the proxy's subscription has reached
//! it, so xMsg clients check a connection before they use it. [`Publisher::connect`] sends
//! the publisher check every 100 ms until its DEALER receives `"pub"`, and
//! [`Subscriber::connect`] sends the subscriber check for each topic until its SUB socket
//! receives `[topic, "sub"]`. Both give up after the timeout the caller passes (xMsg uses
//! 1000 ms).

use std::time::{Duration, Instant};

use prost::Message as _;
use prost::bytes::Bytes;
use tracing::{debug, warn};
use zeromq::util::PeerIdentity;
use zeromq::{
    DealerSocket, PubSocket, ReqSocket, Socket, SocketOptions, SocketRecv, SocketSend, SubSocket,
};

use super::TEXT_STRING;
use super::error::XmsgError;
use super::message::{Message, MessageError, frames_to_zmq};
use super::proto::{Meta, OwnerType, Registration};
use super::proxy::{
    CHECK_PUBLISHER, CHECK_SUBSCRIBER, CONTROL_CONNECT_TOPIC, CONTROL_SUBSCRIBE_TOPIC, ProxyAddress,
};
use super::registrar::{RequestKind, SUCCESS, request_type};

/// Timeout of a connection check, as xMsg's own clients use.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(1000);
/// Interval between two attempts of a connection check.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How long a TCP connection and ZeroMQ handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First sequence number of synchronous requests; replies go to `ret:<id>:<seq>`.
const FIRST_SEQUENCE: u64 = 1_000_001;

/// Returns a new control identity: a random 9-digit decimal string, the form the Java and C++
/// clients use.
pub fn new_identity() -> String {
    rand::random_range(100_000_000u32..1_000_000_000).to_string()
}

/// Connects `socket` to `port` of `address`, or names the address and port it tried.
async fn connect<S: Socket>(
    socket: &mut S,
    address: ProxyAddress,
    port: u16,
    what: &'static str,
) -> Result<(), XmsgError> {
    let unreachable = |reason: String| XmsgError::Unreachable {
        what,
        host: address.host.to_string(),
        ports: vec![port],
        reason,
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(&address.endpoint(port))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(unreachable(error.to_string())),
        Err(_) => Err(unreachable(format!("no connection within {CONNECT_TIMEOUT:?}"))),
    }
}

/// A publisher connected to a proxy's XSUB socket.
pub struct Publisher {
    socket: PubSocket,
    address: ProxyAddress,
}

impl Publisher {
    /// Connects to the proxy at `address` and runs the publisher check.
    pub async fn connect(address: ProxyAddress, timeout: Duration) -> Result<Publisher, XmsgError> {
        let mut socket = PubSocket::new();
        connect(&mut socket, address, address.pub_port(), "proxy").await?;
        let identity = new_identity();
        let mut options = SocketOptions::default();
        options.peer_identity(identity.parse::<PeerIdentity>().expect("decimal identity"));
        let mut dealer = DealerSocket::with_options(options);
        connect(&mut dealer, address, address.control_port(), "proxy control socket").await?;
        let check = [CONTROL_CONNECT_TOPIC, CHECK_PUBLISHER, identity.as_str()];
        let deadline = Instant::now() + timeout;
        loop {
            send(&mut socket, &check, address).await?;
            let wait = deadline.saturating_duration_since(Instant::now()).min(CHECK_INTERVAL);
            if let Ok(Ok(reply)) = tokio::time::timeout(wait, dealer.recv()).await {
                let frames = reply.into_vec();
                if frames.len() == 1 && frames[0] == CHECK_PUBLISHER.as_bytes() {
                    debug!(%address, %identity, "publisher connected");
                    return Ok(Publisher { socket, address });
                }
            }
            if Instant::now() >= deadline {
                return Err(XmsgError::ConnectionCheck {
                    kind: "publisher",
                    host: address.host.to_string(),
                    port: address.port,
                    waited: timeout,
                });
            }
        }
    }

    pub fn address(&self) -> ProxyAddress {
        self.address
    }

    /// Publishes a message.
    pub async fn publish(&mut self, message: &Message) -> Result<(), XmsgError> {
        self.socket.send(message.to_zmq()).await.map_err(|error| XmsgError::Socket {
            operation: format!("publishing on `{}` to {}", message.topic, self.address),
            reason: error.to_string(),
        })
    }

    /// Publishes raw frames, valid or not; tests use it to send malformed messages.
    pub async fn publish_frames(&mut self, frames: Vec<Vec<u8>>) -> Result<(), XmsgError> {
        self.socket.send(frames_to_zmq(frames)).await.map_err(|error| XmsgError::Socket {
            operation: format!("publishing raw frames to {}", self.address),
            reason: error.to_string(),
        })
    }
}

async fn send(
    socket: &mut PubSocket,
    frames: &[&str],
    address: ProxyAddress,
) -> Result<(), XmsgError> {
    let frames: Vec<Vec<u8>> = frames.iter().map(|frame| frame.as_bytes().to_vec()).collect();
    socket.send(frames_to_zmq(frames)).await.map_err(|error| XmsgError::Socket {
        operation: format!("sending a connection check to {address}"),
        reason: error.to_string(),
    })
}

/// A subscriber connected to a proxy's XPUB socket.
pub struct Subscriber {
    socket: SubSocket,
    address: ProxyAddress,
}

impl Subscriber {
    /// Connects to the proxy at `address`, subscribes to each topic prefix and runs the
    /// subscriber check for each. An empty prefix subscribes to everything and is not checked,
    /// because the check needs a topic to publish on.
    pub async fn connect(
        address: ProxyAddress,
        topics: &[String],
        timeout: Duration,
    ) -> Result<Subscriber, XmsgError> {
        let mut socket = SubSocket::new();
        connect(&mut socket, address, address.sub_port(), "proxy").await?;
        for topic in topics {
            socket.subscribe(topic).await.map_err(|error| XmsgError::Socket {
                operation: format!("subscribing to `{topic}` on {address}"),
                reason: error.to_string(),
            })?;
        }
        let mut checker = PubSocket::new();
        connect(&mut checker, address, address.pub_port(), "proxy").await?;
        for topic in topics.iter().filter(|topic| !topic.is_empty()) {
            check_subscription(&mut socket, &mut checker, address, topic, timeout).await?;
        }
        Ok(Subscriber { socket, address })
    }

    pub fn address(&self) -> ProxyAddress {
        self.address
    }

    /// Receives the next message, skipping the replies to subscriber checks. A multipart
    /// message that is not a valid xMsg message is returned as the inner error, so that the
    /// caller can log it with its topic and go on.
    pub async fn recv(&mut self) -> Result<Result<Message, MessageError>, XmsgError> {
        loop {
            let received = self.socket.recv().await.map_err(|error| XmsgError::Socket {
                operation: format!("receiving from {}", self.address),
                reason: error.to_string(),
            })?;
            let frames = received.into_vec();
            if is_check_reply(&frames) {
                continue;
            }
            return Ok(Message::from_frames(&frames));
        }
    }
}

/// Returns whether `frames` is a proxy's reply to a subscriber check, `[topic, "sub"]`.
fn is_check_reply(frames: &[Bytes]) -> bool {
    frames.len() == 2 && frames[1] == CHECK_SUBSCRIBER.as_bytes()
}

async fn check_subscription(
    socket: &mut SubSocket,
    checker: &mut PubSocket,
    address: ProxyAddress,
    topic: &str,
    timeout: Duration,
) -> Result<(), XmsgError> {
    let deadline = Instant::now() + timeout;
    let check = [CONTROL_SUBSCRIBE_TOPIC, CHECK_SUBSCRIBER, topic];
    loop {
        send(checker, &check, address).await?;
        let next_attempt = Instant::now() + CHECK_INTERVAL;
        // Messages other than the check's reply that arrive meanwhile are dropped: the
        // subscriber is not in use yet.
        while Instant::now() < next_attempt.min(deadline) {
            let wait = next_attempt.min(deadline).saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, socket.recv()).await {
                Ok(Ok(message)) => {
                    let frames = message.into_vec();
                    if is_check_reply(&frames) && frames[0] == topic.as_bytes() {
                        debug!(%address, topic, "subscription checked");
                        return Ok(());
                    }
                }
                Ok(Err(_)) | Err(_) => break,
            }
        }
        if Instant::now() >= deadline {
            return Err(XmsgError::ConnectionCheck {
                kind: "subscriber",
                host: address.host.to_string(),
                port: address.port,
                waited: timeout,
            });
        }
    }
}

/// Sends synchronous requests to topics on one proxy and waits for their replies.
///
/// It subscribes to `ret:<id>` and sets `replyTo = ret:<id>:<seq>` on every request, with a
/// new sequence number each time, so that a late reply to an earlier request is never taken
/// for the reply to the current one.
pub struct Requester {
    publisher: Publisher,
    replies: Subscriber,
    reply_prefix: String,
    author: String,
    sequence: u64,
}

impl Requester {
    /// Connects a publisher and a reply subscriber to the proxy at `address`. `author` goes
    /// into the author and sender of every request.
    pub async fn connect(
        address: ProxyAddress,
        author: &str,
        timeout: Duration,
    ) -> Result<Requester, XmsgError> {
        let reply_prefix = format!("ret:{}", new_identity());
        let replies =
            Subscriber::connect(address, std::slice::from_ref(&reply_prefix), timeout).await?;
        let publisher = Publisher::connect(address, timeout).await?;
        Ok(Requester {
            publisher,
            replies,
            reply_prefix,
            author: author.to_owned(),
            sequence: FIRST_SEQUENCE - 1,
        })
    }

    /// Sends the text request `text` on `topic` and returns the reply, or a timeout error that
    /// names the topic, the request and the time waited.
    pub async fn request(
        &mut self,
        topic: &str,
        text: &str,
        timeout: Duration,
    ) -> Result<Message, XmsgError> {
        self.sequence += 1;
        let reply_to = format!("{}:{}", self.reply_prefix, self.sequence);
        let meta = Meta {
            author: Some(self.author.clone()),
            sender: Some(self.author.clone()),
            reply_to: Some(reply_to.clone()),
            ..Meta::with_data_type(TEXT_STRING)
        };
        self.publisher.publish(&Message::text(topic, meta, text)).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let received = match tokio::time::timeout(remaining, self.replies.recv()).await {
                Ok(received) => received?,
                Err(_) => {
                    return Err(XmsgError::Timeout {
                        request: text.to_owned(),
                        topic: topic.to_owned(),
                        waited: timeout,
                    });
                }
            };
            match received {
                Ok(reply) if reply.topic == reply_to => return Ok(reply),
                Ok(other) => debug!(topic = %other.topic, "dropped a reply to an earlier request"),
                Err(error) => {
                    warn!(topic = error.topic().unwrap_or("?"), %error, "dropped a malformed reply");
                }
            }
        }
    }
}

/// Client of a front end's registrar. Every call opens its own REQ socket, so that a request
/// that timed out leaves no socket waiting for a reply.
#[derive(Debug, Clone)]
pub struct RegistrarClient {
    front_end: ProxyAddress,
    sender: String,
    timeout: Duration,
}

impl RegistrarClient {
    /// Creates a client of the registrar of the front end whose proxy is at `front_end`; `sender`
    /// is the second frame of find and list requests.
    pub fn new(front_end: ProxyAddress, sender: &str, timeout: Duration) -> RegistrarClient {
        RegistrarClient { front_end, sender: sender.to_owned(), timeout }
    }

    pub fn front_end(&self) -> ProxyAddress {
        self.front_end
    }

    /// Registers `registration`; the sender frame is its name, as DPEs send it.
    pub async fn register(&self, registration: &Registration) -> Result<(), XmsgError> {
        let kind = request_type(RequestKind::Register, owner_of(registration));
        self.call(kind, &registration.name, registration).await.map(drop)
    }

    /// Removes `registration`.
    pub async fn remove(&self, registration: &Registration) -> Result<(), XmsgError> {
        let kind = request_type(RequestKind::Remove, owner_of(registration));
        self.call(kind, &registration.name, registration).await.map(drop)
    }

    /// Returns the registrations of `owner` whose domain, subject and type equal the query's.
    pub async fn find(
        &self,
        owner: OwnerType,
        domain: &str,
        subject: &str,
        r#type: &str,
    ) -> Result<Vec<Registration>, XmsgError> {
        let query = Registration {
            subject: Some(subject.to_owned()),
            r#type: Some(r#type.to_owned()),
            ..self.query(owner, domain)
        };
        self.call(request_type(RequestKind::Find, owner), &self.sender, &query).await
    }

    /// Returns every registration of `owner`.
    pub async fn all(&self, owner: OwnerType) -> Result<Vec<Registration>, XmsgError> {
        let query = self.query(owner, "dpe");
        self.call(request_type(RequestKind::All, owner), &self.sender, &query).await
    }

    fn query(&self, owner: OwnerType, domain: &str) -> Registration {
        Registration {
            name: self.sender.clone(),
            host: self.front_end.host.to_string(),
            port: u32::from(self.front_end.port),
            domain: domain.to_owned(),
            owner_type: owner as i32,
            ..Registration::default()
        }
    }

    async fn call(
        &self,
        kind: &str,
        sender: &str,
        data: &Registration,
    ) -> Result<Vec<Registration>, XmsgError> {
        let port = self.front_end.registrar_port();
        let host = self.front_end.host.to_string();
        let mut socket = ReqSocket::new();
        connect(&mut socket, self.front_end, port, "registrar").await?;
        let frames =
            vec![kind.as_bytes().to_vec(), sender.as_bytes().to_vec(), data.encode_to_vec()];
        socket.send(frames_to_zmq(frames)).await.map_err(|error| XmsgError::Socket {
            operation: format!("sending `{kind}` to the registrar at {host}:{port}"),
            reason: error.to_string(),
        })?;
        let reply = match tokio::time::timeout(self.timeout, socket.recv()).await {
            Ok(Ok(reply)) => reply.into_vec(),
            Ok(Err(error)) => {
                return Err(XmsgError::Socket {
                    operation: format!("receiving the reply to `{kind}` from {host}:{port}"),
                    reason: error.to_string(),
                });
            }
            Err(_) => {
                return Err(XmsgError::Timeout {
                    request: kind.to_owned(),
                    topic: format!("registrar {host}:{port}"),
                    waited: self.timeout,
                });
            }
        };
        parse_reply(kind, &host, port, &reply)
    }
}

fn owner_of(registration: &Registration) -> OwnerType {
    registration.owner().unwrap_or(OwnerType::Subscriber)
}

/// Reads a registrar reply `[type, sender, status, registrations...]`.
pub fn parse_reply<F: AsRef<[u8]>>(
    kind: &str,
    host: &str,
    port: u16,
    frames: &[F],
) -> Result<Vec<Registration>, XmsgError> {
    let invalid = |reason: String| XmsgError::InvalidReply {
        request: kind.to_owned(),
        peer: format!("registrar {host}:{port}"),
        reason,
    };
    if frames.len() < 3 {
        return Err(invalid(format!("expected at least 3 frames, got {}", frames.len())));
    }
    let status = String::from_utf8_lossy(frames[2].as_ref());
    if status != SUCCESS {
        return Err(XmsgError::Registrar {
            request: kind.to_owned(),
            host: host.to_owned(),
            port,
            status: status.into_owned(),
        });
    }
    frames[3..]
        .iter()
        .map(|frame| {
            Registration::decode(frame.as_ref())
                .map_err(|error| invalid(format!("invalid registration: {error}")))
        })
        .collect()
}
