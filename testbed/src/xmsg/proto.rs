//! The protobuf (proto2) messages of xMsg, derived by hand with prost.
//!
//! Field numbers and types come from ERSAP's documentation and were checked against frames
//! recorded from the real Java and C++ programs (`author` = 3, for example, appears on every
//! request and reply). Fields the testbed never sets or reads are left out: prost skips
//! unknown fields when it decodes, so a peer that sends them is still understood.
//!
//! Deriving the structs by hand avoids `protoc` at build time, which keeps the build free of
//! system packages, including the statically linked build of `mock-ersap`.
//!
//! The same schema in proto2 syntax:
//!
//! ```text
//! message xMsgMeta {
//!   optional string author = 3;
//!   optional Status status = 4;          // INFO = 1, WARNING = 2, ERROR = 3
//!   optional int32 severityId = 5;
//!   optional string sender = 6;
//!   optional fixed32 communicationId = 8;
//!   optional string composition = 10;
//!   optional int64 executionTime = 11;   // microseconds
//!   optional ControlAction action = 12;  // EXECUTE = 0, CONFIGURE = 1
//!   required string dataType = 14;       // a mime type
//!   optional string replyTo = 16;
//!   optional int32 byteOrder = 17;
//! }
//! message xMsgRegistration {
//!   required string name = 1;
//!   optional string description = 2;
//!   required string host = 3;
//!   required fixed32 port = 4;
//!   required string domain = 5;
//!   optional string subject = 6;
//!   optional string type = 7;
//!   required OwnerType ownerType = 8;    // PUBLISHER = 1, SUBSCRIBER = 2
//! }
//! ```

/// `xMsgMeta`: the metadata frame of every xMsg message.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Meta {
    #[prost(string, optional, tag = "3")]
    pub author: Option<String>,
    #[prost(enumeration = "Status", optional, tag = "4")]
    pub status: Option<i32>,
    #[prost(int32, optional, tag = "5")]
    pub severity_id: Option<i32>,
    #[prost(string, optional, tag = "6")]
    pub sender: Option<String>,
    #[prost(fixed32, optional, tag = "8")]
    pub communication_id: Option<u32>,
    #[prost(string, optional, tag = "10")]
    pub composition: Option<String>,
    /// Execution time of the service that produced the message, in microseconds.
    #[prost(int64, optional, tag = "11")]
    pub execution_time: Option<i64>,
    #[prost(enumeration = "Action", optional, tag = "12")]
    pub action: Option<i32>,
    /// Mime type of the payload.
    #[prost(string, required, tag = "14")]
    pub data_type: String,
    /// Topic on which the receiver publishes its reply; set on synchronous requests only.
    #[prost(string, optional, tag = "16")]
    pub reply_to: Option<String>,
    /// ERSAP's byte-order enumeration, kept as its number because the testbed never sets it.
    #[prost(int32, optional, tag = "17")]
    pub byte_order: Option<i32>,
}

/// Status of a reply or a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Status {
    Info = 1,
    Warning = 2,
    Error = 3,
}

/// What a service request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Action {
    Execute = 0,
    Configure = 1,
}

/// `xMsgRegistration`: one publisher or subscriber as the registrar stores it.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Registration {
    #[prost(string, required, tag = "1")]
    pub name: String,
    #[prost(string, optional, tag = "2")]
    pub description: Option<String>,
    #[prost(string, required, tag = "3")]
    pub host: String,
    #[prost(fixed32, required, tag = "4")]
    pub port: u32,
    #[prost(string, required, tag = "5")]
    pub domain: String,
    #[prost(string, optional, tag = "6")]
    pub subject: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub r#type: Option<String>,
    #[prost(enumeration = "OwnerType", required, tag = "8")]
    pub owner_type: i32,
}

/// Whether a registration is a publisher's or a subscriber's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum OwnerType {
    Publisher = 1,
    Subscriber = 2,
}

impl Status {
    /// Name of the status as ERSAP prints it: `INFO`, `WARNING` or `ERROR`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Info => "INFO",
            Status::Warning => "WARNING",
            Status::Error => "ERROR",
        }
    }
}

impl OwnerType {
    /// Name of the owner type as ERSAP prints it: `PUBLISHER` or `SUBSCRIBER`.
    pub fn name(self) -> &'static str {
        match self {
            OwnerType::Publisher => "PUBLISHER",
            OwnerType::Subscriber => "SUBSCRIBER",
        }
    }
}

impl Meta {
    /// Metadata with only the mime type set.
    pub fn with_data_type(data_type: &str) -> Meta {
        Meta { data_type: data_type.to_owned(), ..Meta::default() }
    }

    /// The status, or `None` when it is absent or not one of ERSAP's values.
    pub fn status_value(&self) -> Option<Status> {
        self.status.and_then(|value| Status::try_from(value).ok())
    }
}

impl Registration {
    /// The topic `domain[:subject[:type]]` that this registration stands for.
    pub fn topic(&self) -> String {
        let mut topic = self.domain.clone();
        for part in [&self.subject, &self.r#type].into_iter().flatten() {
            topic.push(':');
            topic.push_str(part);
        }
        topic
    }

    /// The owner type, or `None` when the number is not one of ERSAP's values.
    pub fn owner(&self) -> Option<OwnerType> {
        OwnerType::try_from(self.owner_type).ok()
    }
}
