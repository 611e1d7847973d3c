//! xMsg, the publish-subscribe layer under ERSAP's control plane, written from its documented
//! wire format and from recordings of the real Java and C++ programs.
//!
//! - [`proto`]: the protobuf (proto2) messages `xMsgMeta` and `xMsgRegistration`.
//! - [`topic`]: `:`-separated topics, prefix subscription and ERSAP's canonical names.
//! - [`message`]: a message as its three ZeroMQ frames: topic, metadata, payload.
//! - [`proxy`]: the proxy every DPE embeds (XSUB on `port`, XPUB on `port + 1`, ROUTER on
//!   `port + 2`), including both connection checks.
//! - [`registrar`]: the front end's registration database and its REP server on `port + 4`.
//! - [`dpe`]: the DPE requests, registrations and reports that the mock DPEs implement.
//! - [`client`]: publishers and subscribers that run the connection checks, synchronous
//!   requests through `replyTo`, and the registrar client.
//!
//! Every socket here is a pure-Rust ZeroMQ socket from the `zeromq` crate and needs a tokio
//! runtime. Peers are reached on the addresses the caller passes; nothing in this module
//! connects to an address read from a message.

pub mod client;
pub mod dpe;
pub mod error;
pub mod message;
pub mod proto;
pub mod proxy;
pub mod registrar;
pub mod topic;

pub use client::{Publisher, RegistrarClient, Requester, Subscriber};
pub use error::XmsgError;
pub use message::{Message, MessageError};
pub use proto::{Action, Meta, OwnerType, Registration, Status};
pub use proxy::{Proxy, ProxyAddress};
pub use registrar::{Registrar, RegistrarServer};
pub use topic::DpeName;

/// Mime type of text payloads, such as DPE requests and their replies.
pub const TEXT_STRING: &str = "text/string";
/// Mime type of JSON payloads, such as `dpeAlive` and `dpeReport`.
pub const APPLICATION_JSON: &str = "application/json";

#[cfg(test)]
mod tests;
