//! The mock ERSAP front end and worker DPEs over xMsg, and the `ersap` backend end to end.
//! Every process listens on 127.0.0.1 with free ports.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use testbed::xmsg::{
    DpeName, OwnerType, Proxy, ProxyAddress, Publisher, RegistrarClient, Requester, Status,
    Subscriber,
};

use crate::support::{latest_json, testbed_run};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A child process that is killed when the test ends, with its parsed ready line.
struct Running {
    child: Child,
    ready: Value,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[String]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-ersap"))
        .args(args)
        .env("TESTBED_TOKEN", "xmsg-test-token")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("mock-ersap runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
    let ready: Value =
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("`{line}`: {error}"));
    Running { child, ready }
}

fn start_front_end() -> (Running, ProxyAddress) {
    let front_end = spawn(&["front-end".into(), "--port=0".into(), "--report-period-s=1".into()]);
    let port = front_end.ready["port"].as_u64().expect("port") as u16;
    (front_end, ProxyAddress::new(Ipv4Addr::LOCALHOST, port))
}

fn start_worker(front_end: ProxyAddress, class: &str) -> (Running, DpeName) {
    let worker = spawn(&[
        "--role=processor".into(),
        "--run-id=xmsg-e2e".into(),
        "--stage=Reco".into(),
        format!("--engine-class={class}"),
        "--container=box".into(),
        format!("--xmsg-fe={front_end}"),
        "--report-period-s=1".into(),
    ]);
    let name = worker.ready["dpe"].as_str().expect("dpe in the ready line").to_owned();
    (worker, DpeName::parse(&name).expect("canonical DPE name"))
}

#[tokio::test]
async fn xmsg_front_end_answers_registrar_and_requests() {
    let (mut front_end, address) = start_front_end();
    let registrar = RegistrarClient::new(address, "e2e", TIMEOUT);
    let dpes = registrar.all(OwnerType::Subscriber).await.expect("registrar answers");
    let name = front_end.ready["dpe"].as_str().expect("dpe").to_owned();
    assert!(dpes.iter().any(|registration| registration.name == name), "{dpes:?}");

    let mut requester = Requester::connect(address, "e2e", TIMEOUT).await.expect("requester");
    let topic = format!("dpe:{name}");
    let ping = requester.request(&topic, "pingDpe", TIMEOUT).await.expect("pingDpe");
    let alive: Value = serde_json::from_slice(&ping.payload).expect("alive JSON");
    assert_eq!(alive["name"], name.as_str());
    let report = requester.request(&topic, "reportJson", TIMEOUT).await.expect("reportJson");
    let report: Value = serde_json::from_slice(&report.payload).expect("report JSON");
    assert_eq!(report["DPERegistration"]["name"], name.as_str());

    let stop = requester.request(&topic, "stopDpe", TIMEOUT).await.expect("stopDpe");
    assert_eq!(stop.meta.status_value(), Some(Status::Info));
    let status = front_end.child.wait().expect("front end exits");
    assert!(status.success(), "front end exit status {status}");
}

#[tokio::test]
async fn xmsg_worker_registers_reports_and_deploys() {
    let (_front_end, address) = start_front_end();
    let (worker, dpe) = start_worker(address, "org.example.Reco");
    let name = dpe.to_string();
    let registrar = RegistrarClient::new(address, "e2e", TIMEOUT);
    let found = registrar.find(OwnerType::Subscriber, "dpe", &name, "*").await.expect("find");
    assert_eq!(found.len(), 1, "{found:?}");

    let mut alive = Subscriber::connect(address, &["dpeAlive:xmsg-e2e:".to_owned()], TIMEOUT)
        .await
        .expect("subscriber");
    let message = tokio::time::timeout(TIMEOUT, alive.recv())
        .await
        .expect("dpeAlive within the timeout")
        .expect("receive")
        .expect("valid message");
    assert_eq!(message.topic, format!("dpeAlive:xmsg-e2e:{name}"));
    let json: Value = serde_json::from_slice(&message.payload).expect("alive JSON");
    assert_eq!(json["name"], name.as_str());

    let own = ProxyAddress::new(dpe.host, dpe.port);
    let mut requester = Requester::connect(own, "e2e", TIMEOUT).await.expect("requester");
    let topic = dpe.request_topic();

    // A malformed message on the request topic is dropped and the DPE keeps answering.
    let mut raw = Publisher::connect(own, TIMEOUT).await.expect("publisher");
    raw.publish_frames(vec![topic.clone().into_bytes(), vec![0xff, 0xff], b"x".to_vec()])
        .await
        .expect("publish");
    raw.publish_frames(vec![topic.clone().into_bytes()]).await.expect("publish");

    let error = requester
        .request(&topic, "startService?box?Reco?org.example.Reco?1?x?undefined", TIMEOUT)
        .await
        .expect("reply");
    assert_eq!(error.meta.status_value(), Some(Status::Error));
    assert!(error.payload_text().ends_with("missing container"), "{}", error.payload_text());
    for request in
        ["startContainer?box?1?e2e", "startService?box?Reco?org.example.Reco?1?x?undefined"]
    {
        let reply = requester.request(&topic, request, TIMEOUT).await.expect(request);
        assert_eq!(reply.meta.status_value(), Some(Status::Info), "{}", reply.payload_text());
        assert_eq!(reply.payload_text(), request);
    }
    let unknown = requester
        .request(&topic, "startService?box?Other?org.example.Missing?1?x?undefined", TIMEOUT)
        .await
        .expect("reply");
    assert_eq!(unknown.meta.status_value(), Some(Status::Error));
    let services =
        registrar.find(OwnerType::Subscriber, &name, "box", "Reco").await.expect("find service");
    assert_eq!(services.len(), 1, "{services:?}");

    // The report over xMsg has the registration part of the HTTP report.
    let report = requester.request(&topic, "reportJson", TIMEOUT).await.expect("reportJson");
    let over_xmsg: Value = serde_json::from_slice(&report.payload).expect("report JSON");
    let control_port = worker.ready["control_port"].as_u64().expect("control port");
    let over_http: Value = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{control_port}/report"))
        .bearer_auth("xmsg-test-token")
        .send()
        .await
        .expect("GET /report")
        .json()
        .await
        .expect("report JSON");
    assert_eq!(over_xmsg["DPERegistration"], over_http["DPERegistration"]);

    let stop = requester.request(&topic, "stopDpe", TIMEOUT).await.expect("stopDpe");
    assert_eq!(stop.payload_text(), "stopDpe");
    drop(worker);
}

#[test]
fn ersap_backend_runs_smoke_scenario() {
    let output = tempfile::tempdir().unwrap();
    let assert = testbed_run(output.path()).args(["--backend=ersap", "--events=3000"]).assert();
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert.success();
    assert!(stdout.contains("PASSED smoke"), "{stdout}");
    let summary = latest_json(output.path(), "summary.json");
    assert_eq!(summary["passed"], true);
    assert_eq!(summary["backend"], "ersap");
    assert_eq!(summary["events"]["received"], 3000);
    assert_eq!(summary["events"]["lost"], 0);
    assert_eq!(summary["events"]["duplicated"], 0);
    let logs = output.path().join("latest").join("logs");
    assert!(logs.join("front-end.log").is_file(), "the front end has a log");
}

#[tokio::test]
async fn ersap_backend_names_unreachable_front_end() {
    // A proxy that was stopped leaves a base port whose neighbours nobody listens on.
    let proxy = Proxy::bind_free(Ipv4Addr::LOCALHOST).await.expect("proxy");
    let address = proxy.address();
    proxy.stop().await;
    let output = tempfile::tempdir().unwrap();
    let assert = testbed_run(output.path())
        .args(["--backend=ersap", "--events=100", &format!("--ersap-fe={address}")])
        .assert();
    let result = assert.get_output();
    assert!(!result.status.success(), "the run must fail");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    let summary = std::fs::read_to_string(output.path().join("latest").join("summary.json"))
        .unwrap_or_default();
    let all = format!("{text}{summary}");
    assert!(all.contains(&address.to_string()), "{all}");
    assert!(all.contains(&address.registrar_port().to_string()), "{all}");
}
