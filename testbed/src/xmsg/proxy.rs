//! The proxy that every DPE embeds: publishers connect to its XSUB socket on `port`,
//! subscribers to its XPUB socket on `port + 1`, and connection checks are answered through
//! its ROUTER socket on `port + 2`.
//!
//! Every message that arrives on the XSUB side is forwarded to the XPUB side, control
//! messages included (a subscriber to the empty topic sees them, as it does on the real
//! proxies). The XSUB socket subscribes to every topic, so publishers send everything and the
//! XPUB side filters by the subscribers' prefixes.
//!
//! Control messages are those whose topic starts with `xmsg:control`: the Java client sends
//! `xmsg:control:con` and `xmsg:control:sub`, the C++ client sends `xmsg:control` for both.
//! The second frame names the check:
//!
//! - `["xmsg:control…", "pub", <identity>]`: the proxy sends `[<identity>, "pub"]` on the
//!   ROUTER socket, so the client's DEALER with that identity receives the single frame
//!   `"pub"` and knows that its publisher is connected;
//! - `["xmsg:control…", "sub", <topic>]`: the proxy publishes `[<topic>, "sub"]`, so the
//!   client's SUB socket receives it once its subscription to `<topic>` has arrived.
//!
//! A control message with another shape is logged and otherwise only forwarded.

use std::net::Ipv4Addr;
use std::time::Duration;

use prost::bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, XPubSocket, XSubSocket, ZmqMessage};

use super::error::XmsgError;

/// Prefix of the topics of connection checks, in both the Java and the C++ spelling.
pub const CONTROL_TOPIC: &str = "xmsg:control";
/// Topic of the publisher check as the Java client sends it.
pub const CONTROL_CONNECT_TOPIC: &str = "xmsg:control:con";
/// Topic of the subscriber check as the Java client sends it.
pub const CONTROL_SUBSCRIBE_TOPIC: &str = "xmsg:control:sub";
/// Second frame of a publisher check, and the frame the DEALER receives in reply.
pub const CHECK_PUBLISHER: &str = "pub";
/// Second frame of a subscriber check, and the second frame of the reply.
pub const CHECK_SUBSCRIBER: &str = "sub";

/// Lowest and highest base ports tried by [`Proxy::bind_free`].
const FREE_PORT_RANGE: std::ops::Range<u16> = 20_000..60_000;
/// Base ports tried by [`Proxy::bind_free`] before it gives up.
const FREE_PORT_ATTEMPTS: usize = 50;

/// Where a proxy listens. Only the base port is stored; the others follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProxyAddress {
    pub host: Ipv4Addr,
    pub port: u16,
}

impl ProxyAddress {
    pub fn new(host: Ipv4Addr, port: u16) -> ProxyAddress {
        ProxyAddress { host, port }
    }

    /// Port of the XSUB socket, to which publishers connect.
    pub fn pub_port(&self) -> u16 {
        self.port
    }

    /// Port of the XPUB socket, to which subscribers connect.
    pub fn sub_port(&self) -> u16 {
        self.port.wrapping_add(1)
    }

    /// Port of the ROUTER socket that answers publisher checks.
    pub fn control_port(&self) -> u16 {
        self.port.wrapping_add(2)
    }

    /// Port of the front end's registrar.
    pub fn registrar_port(&self) -> u16 {
        self.port.wrapping_add(4)
    }

    /// `tcp://<host>:<port>` for ZeroMQ.
    pub fn endpoint(&self, port: u16) -> String {
        format!("tcp://{}:{port}", self.host)
    }
}

impl std::fmt::Display for ProxyAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A connection check carried by a control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlRequest {
    /// Reply `"pub"` to the DEALER with this identity.
    Publisher { identity: Bytes },
    /// Publish `[topic, "sub"]`.
    Subscriber { topic: Bytes },
}

/// Reads a connection check from a message. Returns `None` when the topic is not a control
/// topic, and `Some(Err)` with a reason when it is one but the frames are not a check.
pub fn control_request(frames: &[Bytes]) -> Option<Result<ControlRequest, String>> {
    let topic = frames.first()?;
    if !topic.starts_with(CONTROL_TOPIC.as_bytes()) {
        return None;
    }
    if frames.len() != 3 {
        return Some(Err(format!("expected 3 frames, got {}", frames.len())));
    }
    let value = frames[2].clone();
    if value.is_empty() {
        return Some(Err("empty identity or topic".to_owned()));
    }
    let request = match &frames[1][..] {
        kind if kind == CHECK_PUBLISHER.as_bytes() => ControlRequest::Publisher { identity: value },
        kind if kind == CHECK_SUBSCRIBER.as_bytes() => ControlRequest::Subscriber { topic: value },
        kind => {
            return Some(Err(format!("unknown check `{}`", String::from_utf8_lossy(kind))));
        }
    };
    Some(Ok(request))
}

/// A running proxy. Dropping it stops the proxy and closes its sockets.
#[derive(Debug)]
pub struct Proxy {
    address: ProxyAddress,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Binds the three sockets on `address` and starts forwarding. Must be called inside a
    /// tokio runtime.
    pub async fn bind(address: ProxyAddress) -> Result<Proxy, XmsgError> {
        let host = address.host.to_string();
        let bind_error = |socket: &'static str, port: u16| {
            let host = host.clone();
            move |error: zeromq::ZmqError| XmsgError::Bind {
                socket,
                host,
                port,
                reason: error.to_string(),
            }
        };
        let mut xsub = XSubSocket::new();
        xsub.bind(&address.endpoint(address.pub_port()))
            .await
            .map_err(bind_error("XSUB", address.pub_port()))?;
        let mut xpub = XPubSocket::new();
        xpub.bind(&address.endpoint(address.sub_port()))
            .await
            .map_err(bind_error("XPUB", address.sub_port()))?;
        let mut router = RouterSocket::new();
        router
            .bind(&address.endpoint(address.control_port()))
            .await
            .map_err(bind_error("ROUTER", address.control_port()))?;
        xsub.subscribe("").await.map_err(|error| XmsgError::Socket {
            operation: format!("subscribing the proxy at {address} to every topic"),
            reason: error.to_string(),
        })?;
        let shutdown = CancellationToken::new();
        let span = tracing::debug_span!("proxy", port = address.port);
        let task = tokio::spawn(forward(xsub, xpub, router, shutdown.clone()).instrument(span));
        debug!(%address, "proxy listening");
        Ok(Proxy { address, shutdown, task: Some(task) })
    }

    /// Binds a proxy on a free base port of `host`, where `port .. port + 4` are all free so
    /// that a registrar can take `port + 4`. Tries random base ports until three binds succeed.
    pub async fn bind_free(host: Ipv4Addr) -> Result<Proxy, XmsgError> {
        let mut last_error = None;
        for _ in 0..FREE_PORT_ATTEMPTS {
            let base = rand::random_range(FREE_PORT_RANGE);
            match Proxy::bind(ProxyAddress::new(host, base)).await {
                Ok(proxy) => return Ok(proxy),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    pub fn address(&self) -> ProxyAddress {
        self.address
    }

    /// Stops forwarding and waits until the sockets are closed.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Pause after a receive error, so that a socket that keeps failing cannot spin the loop.
const ERROR_PAUSE: Duration = Duration::from_millis(5);

async fn forward(
    mut xsub: XSubSocket,
    mut xpub: XPubSocket,
    router: RouterSocket,
    shutdown: CancellationToken,
) {
    let (mut router_send, mut router_recv) = router.split();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            received = xsub.recv() => match received {
                Ok(message) => {
                    let frames = message.into_vec();
                    publish(&mut xpub, frames.clone()).await;
                    answer_check(&frames, &mut xpub, &mut router_send).await;
                }
                Err(error) => {
                    debug!(%error, "receive on the XSUB socket failed");
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            },
            // Subscriptions are applied by the XPUB socket itself while it receives them; the
            // XSUB side subscribes to everything, so they need not travel upstream.
            received = xpub.recv() => if let Err(error) = received {
                debug!(%error, "receive on the XPUB socket failed");
                tokio::time::sleep(ERROR_PAUSE).await;
            },
            // Clients never send on the control socket; whatever arrives there is dropped.
            received = router_recv.recv() => if let Err(error) = received {
                debug!(%error, "receive on the ROUTER socket failed");
                tokio::time::sleep(ERROR_PAUSE).await;
            },
        }
    }
    debug!("proxy stopped");
}

async fn answer_check(
    frames: &[Bytes],
    xpub: &mut XPubSocket,
    router: &mut zeromq::RouterSendHalf,
) {
    match control_request(frames) {
        None => {}
        Some(Ok(ControlRequest::Publisher { identity })) => {
            let reply = vec![identity.clone(), Bytes::from_static(CHECK_PUBLISHER.as_bytes())];
            let reply = ZmqMessage::try_from(reply).expect("two frames");
            // The DEALER may not be connected yet; the client repeats the check until it is.
            if let Err(error) = router.send(reply).await {
                debug!(identity = %String::from_utf8_lossy(&identity), %error, "publisher check not answered");
            }
        }
        Some(Ok(ControlRequest::Subscriber { topic })) => {
            publish(xpub, vec![topic, Bytes::from_static(CHECK_SUBSCRIBER.as_bytes())]).await;
        }
        Some(Err(reason)) => {
            let topic = String::from_utf8_lossy(&frames[0]);
            warn!(%topic, %reason, "dropped an invalid control message");
        }
    }
}

async fn publish(xpub: &mut XPubSocket, frames: Vec<Bytes>) {
    let Ok(message) = ZmqMessage::try_from(frames) else { return };
    if let Err(error) = xpub.send(message).await {
        debug!(%error, "publish on the XPUB socket failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&str]) -> Vec<Bytes> {
        parts.iter().map(|part| Bytes::copy_from_slice(part.as_bytes())).collect()
    }

    #[test]
    fn control_checks_accept_java_and_cpp_topics() {
        for topic in [CONTROL_CONNECT_TOPIC, CONTROL_TOPIC] {
            let request = control_request(&frames(&[topic, "pub", "147680786"]));
            let expected = ControlRequest::Publisher { identity: Bytes::from_static(b"147680786") };
            assert_eq!(request, Some(Ok(expected)), "{topic}");
        }
        for topic in [CONTROL_SUBSCRIBE_TOPIC, CONTROL_TOPIC] {
            let request = control_request(&frames(&[topic, "sub", "dpe:127.0.0.1_cpp"]));
            let expected =
                ControlRequest::Subscriber { topic: Bytes::from_static(b"dpe:127.0.0.1_cpp") };
            assert_eq!(request, Some(Ok(expected)), "{topic}");
        }
    }

    #[test]
    fn control_checks_reject_other_shapes() {
        assert_eq!(control_request(&frames(&["dpe:x", "pub", "1"])), None);
        assert!(matches!(control_request(&frames(&["xmsg:control", "pub"])), Some(Err(_))));
        assert!(matches!(control_request(&frames(&["xmsg:control", "zzz", "1"])), Some(Err(_))));
        assert!(matches!(control_request(&frames(&["xmsg:control", "pub", ""])), Some(Err(_))));
    }

    #[test]
    fn ports_follow_the_base_port() {
        let address = ProxyAddress::new(Ipv4Addr::LOCALHOST, 7771);
        assert_eq!(address.pub_port(), 7771);
        assert_eq!(address.sub_port(), 7772);
        assert_eq!(address.control_port(), 7773);
        assert_eq!(address.registrar_port(), 7775);
        assert_eq!(address.endpoint(7772), "tcp://127.0.0.1:7772");
    }
}
