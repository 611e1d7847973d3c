//! Tests against traffic recorded from the real Java front end and C++ worker DPE: decoding
//! every recorded frame, encoding the same content, and replaying recorded requests to the
//! project's proxy, registrar and mock DPE. The recordings are read in place; under `CI=true`
//! a missing folder fails the test instead of skipping it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use prost::bytes::Bytes;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use zeromq::util::PeerIdentity;
use zeromq::{
    DealerSocket, PubSocket, ReqSocket, Socket, SocketOptions, SocketRecv, SocketSend, SubSocket,
};

use super::dpe::{self, DpeOptions, DpeState, ReportSource};
use super::message::{Message, frames_to_zmq};
use super::proto::{Meta, OwnerType, Registration, Status};
use super::proxy::{Proxy, ProxyAddress};
use super::registrar::{Registrar, RegistrarServer};
use super::topic::DpeName;

const WIRE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/ersap-wire");

/// One recorded frame set: its sidecar JSON and the exact bytes of its frames.
struct Recording {
    name: String,
    sidecar: Value,
    frames: Vec<Vec<u8>>,
}

impl Recording {
    fn kind(&self) -> &str {
        self.sidecar["kind"].as_str().unwrap_or_default()
    }

    fn t(&self) -> f64 {
        self.sidecar["t"].as_f64().unwrap_or_default()
    }

    fn text(&self, index: usize) -> String {
        String::from_utf8_lossy(&self.frames[index]).into_owned()
    }
}

/// Returns the recordings folder, or `None` (and a note) when it is missing outside CI.
fn wire_dir() -> Option<PathBuf> {
    let dir = Path::new(WIRE_DIR);
    if dir.is_dir() {
        return Some(dir.to_path_buf());
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI needs the recorded ERSAP traffic at {}", dir.display());
    }
    eprintln!("skipped: recorded ERSAP traffic not found at {}", dir.display());
    None
}

/// Loads every recording of one exchange folder, in file order.
fn load(dir: &Path, exchange: &str) -> Vec<Recording> {
    let folder = dir.join(exchange);
    let mut sidecars: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", folder.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .collect();
    sidecars.sort();
    sidecars
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("sidecar is readable");
            let sidecar: Value = serde_json::from_str(&text).expect("sidecar is JSON");
            let stem = path.file_stem().expect("file name").to_string_lossy().into_owned();
            let count = sidecar["frame_count"].as_u64().expect("frame_count") as usize;
            let frames = (0..count)
                .map(|index| {
                    let frame = folder.join(format!("{stem}.frame{index}.bin"));
                    std::fs::read(&frame)
                        .unwrap_or_else(|error| panic!("cannot read {}: {error}", frame.display()))
                })
                .collect();
            Recording { name: format!("{exchange}/{stem}"), sidecar, frames }
        })
        .collect()
}

fn all_recordings(dir: &Path) -> Vec<Recording> {
    let exchanges = [
        "01-connection-check",
        "02-registrar",
        "03-reports",
        "04-dpe-requests",
        "05-error-replies",
        "06-observed-other",
    ];
    exchanges.iter().flat_map(|exchange| load(dir, exchange)).collect()
}

/// Lists the metadata fields that are set, by their JSON name, with their values as JSON.
fn meta_fields(meta: &Meta) -> Vec<(&'static str, Value)> {
    let mut fields = Vec::new();
    let text = |value: &Option<String>| value.clone().map(Value::String);
    let entries = [
        ("author", text(&meta.author)),
        ("status", meta.status_value().map(|status| Value::String(status.name().to_owned()))),
        ("severityId", meta.severity_id.map(Value::from)),
        ("sender", text(&meta.sender)),
        ("communicationId", meta.communication_id.map(Value::from)),
        ("composition", text(&meta.composition)),
        ("executionTime", meta.execution_time.map(Value::from)),
        ("action", meta.action.map(Value::from)),
        ("dataType", Some(Value::String(meta.data_type.clone()))),
        ("replyTo", text(&meta.reply_to)),
        ("byteOrder", meta.byte_order.map(Value::from)),
    ];
    for (name, value) in entries {
        if let Some(value) = value {
            fields.push((name, value));
        }
    }
    fields
}

fn registration_fields(registration: &Registration) -> Vec<(&'static str, Value)> {
    let text = |value: &Option<String>| value.clone().map(Value::String);
    let owner = registration.owner().map(|owner| Value::String(owner.name().to_owned()));
    let entries = [
        ("name", Some(Value::String(registration.name.clone()))),
        ("description", text(&registration.description)),
        ("host", Some(Value::String(registration.host.clone()))),
        ("port", Some(Value::from(registration.port))),
        ("domain", Some(Value::String(registration.domain.clone()))),
        ("subject", text(&registration.subject)),
        ("type", text(&registration.r#type)),
        ("ownerType", owner),
    ];
    entries.into_iter().filter_map(|(name, value)| value.map(|value| (name, value))).collect()
}

/// Asserts that decoded fields equal the sidecar's values and its list of present fields.
fn assert_fields(name: &str, expected: &Value, actual: &[(&'static str, Value)]) {
    let present: BTreeSet<&str> = expected["_present_fields"]
        .as_array()
        .expect("_present_fields")
        .iter()
        .map(|field| field.as_str().expect("field name"))
        .collect();
    let decoded: BTreeSet<&str> = actual.iter().map(|(field, _)| *field).collect();
    assert_eq!(decoded, present, "{name}: present fields");
    for (field, value) in actual {
        assert_eq!(&expected[*field], value, "{name}: field {field}");
    }
}

/// Builds metadata from the sidecar's values alone, the way the project encodes a message.
fn meta_from_sidecar(meta: &Value) -> Meta {
    let text = |field: &str| meta[field].as_str().map(str::to_owned);
    let status = meta["status"].as_str().map(|status| match status {
        "INFO" => Status::Info as i32,
        "WARNING" => Status::Warning as i32,
        "ERROR" => Status::Error as i32,
        other => panic!("unknown status {other}"),
    });
    Meta {
        author: text("author"),
        status,
        sender: text("sender"),
        reply_to: text("replyTo"),
        ..Meta::with_data_type(meta["dataType"].as_str().expect("dataType"))
    }
}

fn registration_from_sidecar(registration: &Value) -> Registration {
    let text = |field: &str| registration[field].as_str().map(str::to_owned);
    let owner = match registration["ownerType"].as_str() {
        Some("PUBLISHER") => OwnerType::Publisher,
        Some("SUBSCRIBER") => OwnerType::Subscriber,
        other => panic!("unknown owner type {other:?}"),
    };
    Registration {
        name: text("name").expect("name"),
        description: text("description"),
        host: text("host").expect("host"),
        port: registration["port"].as_u64().expect("port") as u32,
        domain: text("domain").expect("domain"),
        subject: text("subject"),
        r#type: text("type"),
        owner_type: owner as i32,
    }
}

/// Recorded registrations with their sidecar values: requests carry one in frame 2, replies
/// one per frame from frame 3 on.
fn recorded_registrations(recordings: &[Recording]) -> Vec<(String, Vec<u8>, Value)> {
    let mut found = Vec::new();
    for recording in recordings {
        let body = recording.sidecar["body"].as_array().cloned().unwrap_or_default();
        let first_frame = match recording.kind() {
            "registrar-request" => 2,
            "registrar-reply" => 3,
            _ => continue,
        };
        let registrations: Vec<&Value> =
            body.iter().filter_map(|part| part.get("registration")).collect();
        assert_eq!(
            registrations.len(),
            recording.frames.len() - first_frame,
            "{}: one registration per frame",
            recording.name
        );
        for (offset, expected) in registrations.into_iter().enumerate() {
            let frame = recording.frames[first_frame + offset].clone();
            found.push((
                format!("{} frame {}", recording.name, first_frame + offset),
                frame,
                expected.clone(),
            ));
        }
    }
    found
}

#[test]
fn recorded_metadata_decodes_to_sidecar_values() {
    let Some(dir) = wire_dir() else { return };
    let mut checked = 0;
    for recording in all_recordings(&dir).iter().filter(|recording| recording.kind() == "xmsg") {
        let expected = &recording.sidecar;
        if expected["meta"].is_null() {
            // The proxy's replies to subscriber checks are two frames without metadata.
            assert_eq!(recording.frames.len(), 2, "{}", recording.name);
            continue;
        }
        let message = Message::from_frames(&recording.frames)
            .unwrap_or_else(|error| panic!("{}: {error}", recording.name));
        assert_eq!(message.topic, expected["topic"].as_str().expect("topic"), "{}", recording.name);
        assert_fields(&recording.name, &expected["meta"], &meta_fields(&message.meta));
        assert_eq!(message.payload, recording.frames[2], "{}: payload", recording.name);
        checked += 1;
    }
    assert!(checked >= 60, "only {checked} recorded messages with metadata");
}

#[test]
fn recorded_registrations_decode_to_sidecar_values() {
    let Some(dir) = wire_dir() else { return };
    let registrations = recorded_registrations(&load(&dir, "02-registrar"));
    assert!(registrations.len() >= 15, "only {} registrations", registrations.len());
    for (name, frame, expected) in registrations {
        let decoded = Registration::decode(frame.as_slice())
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_fields(&name, &expected, &registration_fields(&decoded));
    }
}

#[test]
fn project_encoding_of_recorded_content_matches() {
    let Some(dir) = wire_dir() else { return };
    for recording in all_recordings(&dir).iter().filter(|recording| recording.kind() == "xmsg") {
        let meta = &recording.sidecar["meta"];
        if meta.is_null() {
            continue;
        }
        let ours = meta_from_sidecar(meta);
        let decoded = Meta::decode(ours.encode_to_vec().as_slice()).expect("our metadata decodes");
        assert_fields(&recording.name, meta, &meta_fields(&decoded));
        assert_eq!(ours.encode_to_vec(), recording.frames[1], "{}: metadata bytes", recording.name);
    }
    for (name, frame, expected) in recorded_registrations(&load(&dir, "02-registrar")) {
        let ours = registration_from_sidecar(&expected);
        let decoded = Registration::decode(ours.encode_to_vec().as_slice()).expect("decodes");
        assert_fields(&name, &expected, &registration_fields(&decoded));
        assert_eq!(ours.encode_to_vec(), frame, "{name}: registration bytes");
    }
}

/// How long a live test waits for one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

async fn recv_frames<S: SocketRecv>(socket: &mut S, what: &str) -> Vec<Bytes> {
    match tokio::time::timeout(REPLY_TIMEOUT, socket.recv()).await {
        Ok(Ok(message)) => message.into_vec(),
        Ok(Err(error)) => panic!("{what}: receive failed: {error}"),
        Err(_) => panic!("{what}: no reply within {REPLY_TIMEOUT:?}"),
    }
}

fn bytes(frames: &[Vec<u8>]) -> Vec<Bytes> {
    frames.iter().map(|frame| Bytes::from(frame.clone())).collect()
}

/// Sends `frames` on `publisher` every 100 ms until `receive` yields a message, as the real
/// clients repeat their checks until the proxy has seen their connection.
async fn send_until_reply<S: SocketRecv>(
    publisher: &mut PubSocket,
    frames: &[Vec<u8>],
    receiver: &mut S,
    what: &str,
) -> Vec<Bytes> {
    for _ in 0..30 {
        publisher.send(frames_to_zmq(frames.to_vec())).await.expect("publish");
        if let Ok(Ok(message)) =
            tokio::time::timeout(Duration::from_millis(100), receiver.recv()).await
        {
            return message.into_vec();
        }
    }
    panic!("{what}: no reply after 30 attempts");
}

#[tokio::test]
async fn proxy_answers_recorded_connection_checks() {
    let Some(dir) = wire_dir() else { return };
    let recordings = load(&dir, "01-connection-check");
    let proxy = Proxy::bind_free(Ipv4Addr::LOCALHOST).await.expect("proxy binds");
    let address = proxy.address();
    let mut publisher = PubSocket::new();
    publisher.connect(&address.endpoint(address.pub_port())).await.expect("connect");
    let mut checked = 0;
    for (index, request) in recordings.iter().enumerate() {
        let is_check = request.kind() == "control"
            && request.frames.len() == 3
            && request.text(0).starts_with("xmsg:control");
        if !is_check {
            continue;
        }
        // The reply recorded right after the request, when it came from a real proxy.
        let recorded_reply = recordings
            .get(index + 1)
            .filter(|reply| {
                reply.sidecar["direction"].as_str().unwrap_or_default().contains("REAL")
            })
            .map(|reply| bytes(&reply.frames));
        let value = request.frames[2].clone();
        let received = match request.text(1).as_str() {
            "pub" => {
                let mut options = SocketOptions::default();
                options.peer_identity(PeerIdentity::try_from(value.as_slice()).expect("identity"));
                let mut dealer = DealerSocket::with_options(options);
                dealer.connect(&address.endpoint(address.control_port())).await.expect("connect");
                let received =
                    send_until_reply(&mut publisher, &request.frames, &mut dealer, &request.name)
                        .await;
                assert_eq!(received, vec![Bytes::from_static(b"pub")], "{}", request.name);
                received
            }
            "sub" => {
                let topic = String::from_utf8(value.clone()).expect("topic");
                let mut subscriber = SubSocket::new();
                subscriber.connect(&address.endpoint(address.sub_port())).await.expect("connect");
                subscriber.subscribe(&topic).await.expect("subscribe");
                let received = send_until_reply(
                    &mut publisher,
                    &request.frames,
                    &mut subscriber,
                    &request.name,
                )
                .await;
                let expected = vec![Bytes::from(value), Bytes::from_static(b"sub")];
                assert_eq!(received, expected, "{}", request.name);
                received
            }
            other => panic!("{}: unknown check {other}", request.name),
        };
        if let Some(reply) = recorded_reply {
            assert_eq!(received, reply, "{}: reply differs from the real proxy's", request.name);
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} recorded checks");
    proxy.stop().await;
}

/// Returns the Java front end's own registration, which it made before the recording
/// started. It is the last registration in the first `allSubscriber` reply.
fn java_front_end_registration(registrar: &[Recording]) -> Vec<u8> {
    let reply =
        registrar.iter().find(|r| r.name.ends_with("02-allSubscriber-reply")).expect("reply");
    reply.frames[4].clone()
}

fn ordered_pairs(registrar: &[Recording]) -> Vec<(&Recording, &Recording)> {
    let mut pairs: Vec<(&Recording, &Recording)> =
        registrar.chunks(2).map(|pair| (&pair[0], &pair[1])).collect();
    for (request, reply) in &pairs {
        assert_eq!(request.kind(), "registrar-request", "{}", request.name);
        assert_eq!(reply.kind(), "registrar-reply", "{}", reply.name);
    }
    pairs.sort_by(|a, b| a.0.t().total_cmp(&b.0.t()));
    pairs
}

#[test]
fn registrar_database_replays_recorded_replies() {
    let Some(dir) = wire_dir() else { return };
    let recordings = load(&dir, "02-registrar");
    let mut registrar = Registrar::new("127.0.0.1");
    let seed = [
        b"registerSubscriber".to_vec(),
        b"127.0.0.1_java".to_vec(),
        java_front_end_registration(&recordings),
    ];
    assert_eq!(registrar.handle(&seed)[2], b"success");
    for (request, reply) in ordered_pairs(&recordings) {
        assert_eq!(registrar.handle(&request.frames), reply.frames, "reply to {}", request.name);
    }
}

#[tokio::test]
async fn registrar_server_answers_recorded_requests() {
    let Some(dir) = wire_dir() else { return };
    let recordings = load(&dir, "02-registrar");
    let proxy = Proxy::bind_free(Ipv4Addr::LOCALHOST).await.expect("proxy binds");
    let address = proxy.address();
    let server = RegistrarServer::bind(address.host, address.registrar_port()).await.expect("bind");
    let seed = [
        b"registerSubscriber".to_vec(),
        b"127.0.0.1_java".to_vec(),
        java_front_end_registration(&recordings),
    ];
    server.database().lock().unwrap().handle(&seed);
    for (request, reply) in ordered_pairs(&recordings) {
        let mut socket = ReqSocket::new();
        socket.connect(&address.endpoint(address.registrar_port())).await.expect("connect");
        socket.send(frames_to_zmq(request.frames.clone())).await.expect("send");
        let received = recv_frames(&mut socket, &request.name).await;
        assert_eq!(received, bytes(&reply.frames), "reply to {}", request.name);
    }
    server.stop().await;
    proxy.stop().await;
}

/// Report source of a DPE under test, with fixed JSON.
struct FixedReports;

impl ReportSource for FixedReports {
    fn alive_json(&self) -> String {
        r#"{"name":"127.0.0.1_cpp","n_cores":2,"ersap_home":"/opt/ersap"}"#.to_owned()
    }

    fn report_json(&self, _state: &DpeState) -> String {
        r#"{"DPERuntime":{},"DPERegistration":{}}"#.to_owned()
    }
}

/// A mock DPE named like the recorded C++ worker, on a free proxy, registered with a front
/// end on another free proxy.
struct DpeUnderTest {
    own: Proxy,
    front_end: Proxy,
    registrar: RegistrarServer,
    stop: CancellationToken,
    dpe: dpe::RunningDpe,
}

async fn start_dpe(name: &str, data_plane_class: &str) -> DpeUnderTest {
    let own = Proxy::bind_free(Ipv4Addr::LOCALHOST).await.expect("own proxy");
    let front_end = Proxy::bind_free(Ipv4Addr::LOCALHOST).await.expect("front-end proxy");
    let fe = front_end.address();
    let registrar = RegistrarServer::bind(fe.host, fe.registrar_port()).await.expect("registrar");
    let state =
        DpeState::new(DpeName::parse(name).expect("name"), Some(data_plane_class.to_owned()));
    let options = DpeOptions {
        session: "testbed".to_owned(),
        front_end: fe,
        report_period: Duration::from_millis(300),
    };
    let stop = CancellationToken::new();
    let dpe = dpe::start(state, own.address(), options, Arc::new(FixedReports), stop.clone())
        .await
        .expect("DPE starts");
    DpeUnderTest { own, front_end, registrar, stop, dpe }
}

#[tokio::test]
async fn mock_dpe_answers_recorded_cpp_requests() {
    let Some(dir) = wire_dir() else { return };
    let mut exchanges = load(&dir, "04-dpe-requests");
    exchanges.extend(load(&dir, "05-error-replies"));
    let cpp: Vec<&Recording> =
        exchanges.iter().filter(|recording| recording.name.contains("-cpp-")).collect();
    let mut pairs: Vec<(&Recording, &Recording)> =
        cpp.chunks(2).map(|pair| (pair[0], pair[1])).collect();
    pairs.sort_by(|a, b| a.0.t().total_cmp(&b.0.t()));

    let under_test = start_dpe("127.0.0.1_cpp", "echo_service").await;
    let own = under_test.own.address();
    let mut subscriber = SubSocket::new();
    subscriber.connect(&own.endpoint(own.sub_port())).await.expect("connect");
    subscriber.subscribe("ret:").await.expect("subscribe");
    let mut publisher = PubSocket::new();
    publisher.connect(&own.endpoint(own.pub_port())).await.expect("connect");
    // The subscription must reach the proxy before the replay starts, so pingDpe is repeated
    // until its reply arrives. Repeating it is harmless because it changes nothing.
    let (ping, _) =
        pairs.iter().find(|(request, _)| request.name.contains("pingDpe")).expect("ping");
    send_until_reply(&mut publisher, &ping.frames, &mut subscriber, "pingDpe").await;
    while tokio::time::timeout(Duration::from_millis(300), subscriber.recv()).await.is_ok() {}

    let mut checked = 0;
    for (request, reply) in pairs {
        if request.name.contains("reportJson") {
            continue;
        }
        publisher.send(frames_to_zmq(request.frames.clone())).await.expect("publish");
        let received = recv_frames(&mut subscriber, &request.name).await;
        assert_eq!(received[0], reply.frames[0], "{}: reply topic", request.name);
        assert_eq!(received[1], reply.frames[1], "{}: reply metadata", request.name);
        let text = String::from_utf8_lossy(&received[2]).into_owned();
        let expected = reply.text(2);
        if request.name.contains("missing-class") {
            // The real reason after the library name is the dynamic loader's message.
            let prefix = "could not start service 127.0.0.1_cpp:box:Ghost: could not load \
                          'libno_such_engine.so': ";
            assert!(expected.starts_with(prefix), "recorded: {expected}");
            assert!(text.starts_with(prefix), "{}: {text}", request.name);
        } else {
            assert_eq!(text, expected, "{}: reply text", request.name);
        }
        checked += 1;
    }
    assert_eq!(checked, 7, "C++ requests replayed");

    under_test.stop.cancel();
    under_test.dpe.join().await;
    let registrations =
        under_test.registrar.database().lock().unwrap().registrations(OwnerType::Subscriber);
    assert!(registrations.is_empty(), "left registered: {registrations:?}");
}

#[tokio::test]
async fn mock_dpe_registers_like_recorded_cpp_dpe() {
    let Some(dir) = wire_dir() else { return };
    let recordings = load(&dir, "02-registrar");
    let registered: Vec<Registration> = recordings
        .iter()
        .filter(|recording| recording.kind() == "registrar-request")
        .filter(|recording| recording.text(0) == "registerSubscriber")
        .map(|recording| Registration::decode(recording.frames[2].as_slice()).expect("decodes"))
        .collect();
    let under_test = start_dpe("127.0.0.1_cpp", "echo_service").await;
    let own = under_test.own.address();
    let mut requester = super::Requester::connect(own, "orchestrator", Duration::from_secs(1))
        .await
        .expect("requester");
    for text in [
        "startContainer?box?2?golden container",
        "startService?box?Echo?echo_service?1?echo engine?undefined",
    ] {
        let reply = requester.request("dpe:127.0.0.1_cpp", text, REPLY_TIMEOUT).await.expect(text);
        assert_eq!(reply.meta.status_value(), Some(Status::Info), "{text}");
    }
    let mut ours =
        under_test.registrar.database().lock().unwrap().registrations(OwnerType::Subscriber);
    let mut expected = registered.clone();
    ours.sort_by_key(|registration| registration.name.clone());
    expected.sort_by_key(|registration| registration.name.clone());
    assert_eq!(ours, expected);
    drop(requester);
    under_test.stop.cancel();
    under_test.dpe.join().await;
    let _ = (under_test.front_end, under_test.own);
}

#[tokio::test]
async fn mock_java_dpe_reports_and_answers_ping() {
    let under_test = start_dpe("127.0.0.1%7000_java", "org.example.Reco").await;
    let fe: ProxyAddress = under_test.front_end.address();
    let mut alive =
        super::Subscriber::connect(fe, &["dpeAlive:testbed:".to_owned()], Duration::from_secs(1))
            .await
            .expect("subscriber");
    let message = tokio::time::timeout(REPLY_TIMEOUT, alive.recv())
        .await
        .expect("dpeAlive within the timeout")
        .expect("receive")
        .expect("valid message");
    assert_eq!(message.topic, "dpeAlive:testbed:127.0.0.1%7000_java");
    assert_eq!(message.meta.sender.as_deref(), Some("127.0.0.1%7000_java"));
    assert_eq!(message.meta.data_type, super::APPLICATION_JSON);

    let own = under_test.own.address();
    let mut requester = super::Requester::connect(own, "orchestrator", Duration::from_secs(1))
        .await
        .expect("requester");
    let topic = "dpe:127.0.0.1%7000_java";
    let ping = requester.request(topic, "pingDpe", REPLY_TIMEOUT).await.expect("ping");
    assert_eq!(ping.payload_text(), FixedReports.alive_json());
    let error = requester
        .request(
            topic,
            "startService?nobox?Ghost?org.example.NoSuchEngine?1?missing?undefined",
            REPLY_TIMEOUT,
        )
        .await
        .expect("reply");
    assert_eq!(error.meta.status_value(), Some(Status::Error));
    assert_eq!(
        error.payload_text(),
        "could not start service = 127.0.0.1%7000_java:nobox:Ghost: missing container"
    );
    requester.request(topic, "startContainer?box?1?x", REPLY_TIMEOUT).await.expect("container");
    let unknown = requester
        .request(
            topic,
            "startService?box?Ghost?org.example.NoSuchEngine?1?x?undefined",
            REPLY_TIMEOUT,
        )
        .await
        .expect("reply");
    assert_eq!(unknown.meta.status_value(), Some(Status::Error));
    assert!(
        unknown.payload_text().contains("org.example.NoSuchEngine"),
        "{}",
        unknown.payload_text()
    );

    let stop = requester.request(topic, "stopDpe", REPLY_TIMEOUT).await.expect("stopDpe");
    assert_eq!(stop.payload_text(), "stopDpe");
    tokio::time::timeout(REPLY_TIMEOUT, under_test.dpe.join())
        .await
        .expect("DPE stops after stopDpe");
    assert!(under_test.stop.is_cancelled(), "stopDpe cancels the DPE's token");
}

#[tokio::test]
async fn request_timeout_names_topic_and_wait() {
    let proxy = Proxy::bind_free(Ipv4Addr::LOCALHOST).await.expect("proxy");
    let mut requester =
        super::Requester::connect(proxy.address(), "orchestrator", Duration::from_secs(1))
            .await
            .expect("requester");
    let error = requester
        .request("dpe:127.0.0.1%9_java", "pingDpe", Duration::from_millis(200))
        .await
        .expect_err("nobody answers");
    let text = error.to_string();
    assert!(text.contains("pingDpe"), "{text}");
    assert!(text.contains("dpe:127.0.0.1%9_java"), "{text}");
    assert!(text.contains("200ms"), "{text}");
}

#[tokio::test]
async fn unreachable_registrar_names_address_and_port() {
    // A proxy that was stopped leaves its ports closed, and no registrar ever listened there.
    let proxy = Proxy::bind_free(Ipv4Addr::LOCALHOST).await.expect("proxy");
    let address = proxy.address();
    proxy.stop().await;
    let client = super::RegistrarClient::new(address, "orchestrator", Duration::from_millis(300));
    let error = client.all(OwnerType::Subscriber).await.expect_err("nothing listens");
    let text = error.to_string();
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(text.contains(&address.registrar_port().to_string()), "{text}");
}

#[tokio::test]
async fn random_frames_leave_proxy_and_registrar_working() {
    use rand::{Rng, SeedableRng};

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut attempts = 0;
    let (proxy, server) = loop {
        let proxy = Proxy::bind_free(Ipv4Addr::LOCALHOST).await.expect("proxy");
        let address = proxy.address();
        match RegistrarServer::bind(address.host, address.registrar_port()).await {
            Ok(server) => break (proxy, server),
            // The registrar's port follows the proxy's, and another test can take it first.
            Err(error) if attempts < 5 => {
                attempts += 1;
                eprintln!("registrar port taken ({error:?}); binding again");
            }
            Err(error) => panic!("registrar: {error:?}"),
        }
    };
    let address = proxy.address();
    let mut publisher = PubSocket::new();
    publisher.connect(&address.endpoint(address.pub_port())).await.expect("connect");
    let prefixes: [&[u8]; 4] = [b"xmsg:control", b"xmsg:control:con", b"xmsg:control:sub", b""];
    let random_frames = |rng: &mut rand::rngs::StdRng| -> Vec<Vec<u8>> {
        let count = rng.random_range(1..6);
        (0..count)
            .map(|index| {
                let length = rng.random_range(0..40);
                let mut frame: Vec<u8> = (0..length).map(|_| rng.random()).collect();
                if index == 0 && rng.random_bool(0.5) {
                    let prefix = prefixes[rng.random_range(0..prefixes.len())];
                    frame.splice(0..0, prefix.iter().copied());
                }
                if index == 1 && rng.random_bool(0.3) {
                    frame = if rng.random_bool(0.5) { b"pub".to_vec() } else { b"sub".to_vec() };
                }
                frame
            })
            .collect()
    };
    for _ in 0..300 {
        let frames = random_frames(&mut rng);
        publisher.send(frames_to_zmq(frames)).await.expect("publish");
    }
    for _ in 0..100 {
        let mut frames = random_frames(&mut rng);
        if rng.random_bool(0.5) {
            frames[0] = b"registerSubscriber".to_vec();
        }
        let mut socket = ReqSocket::new();
        socket.connect(&address.endpoint(address.registrar_port())).await.expect("connect");
        socket.send(frames_to_zmq(frames)).await.expect("send");
        let reply = recv_frames(&mut socket, "random registrar request").await;
        assert!(reply.len() >= 3, "a reply has a status frame");
    }
    // Both still work after the noise.
    super::Publisher::connect(address, Duration::from_secs(2)).await.expect("publisher check");
    let client = super::RegistrarClient::new(address, "orchestrator", Duration::from_secs(2));
    client.all(OwnerType::Subscriber).await.expect("registrar answers");
    server.stop().await;
    proxy.stop().await;
}
