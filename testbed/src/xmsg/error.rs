//! Errors of the xMsg layer. Each names the address, the request and the time involved, so
//! that a message reads on its own in a log.

use std::time::Duration;

/// An xMsg operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum XmsgError {
    #[error("failed to bind the {socket} socket on {host}:{port}: {reason}")]
    Bind { socket: &'static str, host: String, port: u16, reason: String },
    #[error(
        "no {what} reachable at {host}: tried {}: {reason}\n  \
         (hint: check that the front end runs and that its base port is the one given)",
        list_ports(.ports)
    )]
    Unreachable { what: &'static str, host: String, ports: Vec<u16>, reason: String },
    #[error(
        "the proxy at {host}:{port} did not answer the {kind} connection check within {waited:?}"
    )]
    ConnectionCheck { kind: &'static str, host: String, port: u16, waited: Duration },
    #[error("request `{request}` to `{topic}` timed out after {waited:?}")]
    Timeout { request: String, topic: String, waited: Duration },
    #[error("the registrar at {host}:{port} rejected `{request}`: {status}")]
    Registrar { request: String, host: String, port: u16, status: String },
    #[error("invalid reply to `{request}` from {peer}: {reason}")]
    InvalidReply { request: String, peer: String, reason: String },
    #[error("{operation} failed: {reason}")]
    Socket { operation: String, reason: String },
}

/// Formats ports as `port 7775` or `ports 7771, 7772`.
fn list_ports(ports: &[u16]) -> String {
    let list = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    if ports.len() == 1 { format!("port {list}") } else { format!("ports {list}") }
}
