//! In-process tests of whole instances: several instances in this test process, on
//! 127.0.0.1 with free ports, steered through their real HTTP control API.

use std::time::{Duration, Instant};

use clap::Parser;
use orchestrator::control::{Drain, Health, Phase, Stats, Target, Targets};
use reqwest::StatusCode;

use super::{Args, Instance, Signals};

const TOKEN: &str = "test-token";

fn start(role: &str, extra: &[&str]) -> Instance {
    let base = ["mock-ersap", "--role", role, "--run-id", "test", "--stage", role];
    let args = Args::try_parse_from(base.iter().chain(extra)).expect("valid arguments");
    Instance::start(args, TOKEN.to_owned(), Signals::Ignore).expect("instance starts")
}

struct Client {
    http: reqwest::Client,
}

impl Client {
    fn new() -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client builds");
        Self { http }
    }

    fn url(instance: &Instance, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", instance.control_port())
    }

    async fn put_targets(&self, from: &Instance, to: &[&Instance]) -> reqwest::Response {
        let targets = to
            .iter()
            .map(|to| Target {
                addr: format!("127.0.0.1:{}", to.data_port()),
                latency_us: 0,
                bandwidth_bps: 0,
            })
            .collect();
        self.http
            .put(Self::url(from, "/targets"))
            .bearer_auth(TOKEN)
            .json(&Targets { targets })
            .send()
            .await
            .expect("PUT /targets is answered")
    }

    async fn post(&self, instance: &Instance, path: &str, body: Option<&Drain>) -> StatusCode {
        let mut request = self.http.post(Self::url(instance, path)).bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.expect("POST is answered").status()
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, instance: &Instance, path: &str) -> T {
        let response = self
            .http
            .get(Self::url(instance, path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET is answered");
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.expect("reply is JSON")
    }

    async fn wait_drained(&self, instance: &Instance) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let health: Health = self.get(instance, "/health").await;
            if health.phase == Phase::Drained {
                return;
            }
            assert!(Instant::now() < deadline, "not drained after 30 s: {health:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_delivers_every_event_exactly_once() {
    let sink = start("sink", &[]);
    let processor = start("processor", &["--threads", "2"]);
    let source = start("source", &["--events", "10000", "--event-size", "512"]);
    let client = Client::new();

    assert_eq!(client.put_targets(&processor, &[&sink]).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(client.put_targets(&source, &[&processor]).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(client.post(&source, "/start", None).await, StatusCode::NO_CONTENT);
    let drain = Drain { expected_ends: 1 };
    assert_eq!(client.post(&processor, "/drain", Some(&drain)).await, StatusCode::NO_CONTENT);
    assert_eq!(client.post(&sink, "/drain", Some(&drain)).await, StatusCode::NO_CONTENT);
    client.wait_drained(&sink).await;

    let stats: Stats = client.get(&sink, "/stats?ranges=true").await;
    assert_eq!(stats.received, Some(vec![[0, 10_000]]));
    assert_eq!(stats.events_in, 10_000);
    assert_eq!(stats.duplicates, 0);
    assert_eq!(stats.bytes_in, 10_000 * 512);
    assert_eq!(stats.latency.count, 10_000);
    assert!(!stats.latency.histogram.is_empty(), "?ranges=true lists the histogram");

    let processor_stats: Stats = client.get(&processor, "/stats").await;
    assert_eq!(processor_stats.phase, Phase::Drained);
    assert_eq!(processor_stats.events_in, 10_000);
    assert_eq!(processor_stats.events_out, 10_000);
    assert_eq!(processor_stats.queue_depth, 0);
    assert_eq!(processor_stats.received, None, "only a sink lists received ranges");
    let source_stats: Stats = client.get(&source, "/stats").await;
    assert_eq!(source_stats.phase, Phase::Drained);
    assert_eq!(source_stats.events_out, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_counts_duplicate_sequence_numbers() {
    let sink = start("sink", &[]);
    // Two sources whose ranges overlap in 100..200.
    let first = start("source", &["--events", "200", "--event-size", "16"]);
    let second = start(
        "source",
        &["--events", "200", "--seq-start", "100", "--event-size", "16", "--replica", "1"],
    );
    let client = Client::new();

    for source in [&first, &second] {
        assert_eq!(client.put_targets(source, &[&sink]).await.status(), StatusCode::NO_CONTENT);
        assert_eq!(client.post(source, "/start", None).await, StatusCode::NO_CONTENT);
    }
    let drain = Drain { expected_ends: 2 };
    assert_eq!(client.post(&sink, "/drain", Some(&drain)).await, StatusCode::NO_CONTENT);
    client.wait_drained(&sink).await;

    let stats: Stats = client.get(&sink, "/stats?ranges=true").await;
    assert_eq!(stats.duplicates, 100);
    assert_eq!(stats.events_in, 300);
    assert_eq!(stats.received, Some(vec![[0, 300]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_resizes_events_and_spreads_over_targets() {
    let sinks = [start("sink", &[]), start("sink", &[])];
    let processor = start("processor", &["--output-size", "100", "--cost-ns-per-byte", "10"]);
    let source = start("source", &["--events", "1000", "--event-size", "1000"]);
    let client = Client::new();

    let status = client.put_targets(&processor, &[&sinks[0], &sinks[1]]).await.status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(client.put_targets(&source, &[&processor]).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(client.post(&source, "/start", None).await, StatusCode::NO_CONTENT);
    let drain = Drain { expected_ends: 1 };
    assert_eq!(client.post(&processor, "/drain", Some(&drain)).await, StatusCode::NO_CONTENT);
    let mut total = 0;
    for sink in &sinks {
        assert_eq!(client.post(sink, "/drain", Some(&drain)).await, StatusCode::NO_CONTENT);
        client.wait_drained(sink).await;
        let stats: Stats = client.get(sink, "/stats").await;
        assert!(stats.events_in > 0, "round-robin left a sink without events");
        assert_eq!(stats.bytes_in, stats.events_in * 100);
        total += stats.events_in;
    }
    assert_eq!(total, 1000);

    let stats: Stats = client.get(&processor, "/stats").await;
    // 1000 events of 1000 bytes at 10 ns per byte cost 10 ms.
    assert!(stats.exec_time_us >= 9_000, "exec_time_us = {}", stats.exec_time_us);
    assert_eq!(stats.bytes_out, 1000 * 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_started_without_targets_waits_for_them() {
    let sink = start("sink", &[]);
    let source = start("source", &["--events", "50"]);
    let client = Client::new();

    assert_eq!(client.post(&source, "/start", None).await, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let health: Health = client.get(&source, "/health").await;
    assert_eq!(health.phase, Phase::Ready);

    assert_eq!(client.put_targets(&source, &[&sink]).await.status(), StatusCode::NO_CONTENT);
    let drain = Drain { expected_ends: 1 };
    assert_eq!(client.post(&sink, "/drain", Some(&drain)).await, StatusCode::NO_CONTENT);
    client.wait_drained(&sink).await;
    let stats: Stats = client.get(&sink, "/stats").await;
    assert_eq!(stats.events_in, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_token_is_unauthorized() {
    let sink = start("sink", &[]);
    let http = reqwest::Client::new();
    let url = Client::url(&sink, "/health");

    let missing = http.get(&url).send().await.expect("answered");
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = missing.json().await.expect("JSON error body");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("token")), "{body}");

    let wrong = http.get(&url).bearer_auth("other-run").send().await.expect("answered");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let stop = http.post(Client::url(&sink, "/stop")).send().await.expect("answered");
    assert_eq!(stop.status(), StatusCode::UNAUTHORIZED);

    let right = http.get(&url).bearer_auth(TOKEN).send().await.expect("answered");
    assert_eq!(right.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_instance_rejects_remote_targets() {
    let source = start("source", &["--events", "1"]);
    let http = reqwest::Client::new();
    for addr in ["10.1.1.10:7771", "farm-node-12:7000", "not-an-address"] {
        let targets = Targets {
            targets: vec![Target { addr: addr.to_owned(), latency_us: 0, bandwidth_bps: 0 }],
        };
        let response = http
            .put(Client::url(&source, "/targets"))
            .bearer_auth(TOKEN)
            .json(&targets)
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{addr}");
        let body: serde_json::Value = response.json().await.expect("JSON error body");
        assert!(body["error"].is_string(), "{addr}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_json_errors() {
    let processor = start("processor", &[]);
    let http = reqwest::Client::new();
    for (path, body) in [("/drain", "{\"expected\": 1}"), ("/drain", "not json")] {
        let response = http
            .post(Client::url(&processor, path))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path} {body}");
        let error: serde_json::Value = response.json().await.expect("JSON error body");
        assert!(error["error"].as_str().is_some_and(|e| e.contains("drain")), "{error}");
    }
    let response = http
        .get(Client::url(&processor, "/stats?ranges=maybe"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_metrics_use_ersap_names() {
    let processor = start("processor", &["--engine-name", "Reco", "--container", "user"]);
    let client = Client::new();
    let port = processor.control_port();

    let report: serde_json::Value = client.get(&processor, "/report").await;
    let dpe = format!("127.0.0.1%{port}_java");
    assert_eq!(report["DPERegistration"]["name"], dpe.as_str());
    assert_eq!(report["DPERegistration"]["session"], "test");
    let service = &report["DPERegistration"]["containers"][0]["services"][0];
    assert_eq!(service["name"], format!("{dpe}:user:Reco").as_str());
    assert_eq!(report["DPERuntime"]["containers"][0]["name"], format!("{dpe}:user").as_str());

    let response = client
        .http
        .get(Client::url(&processor, "/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("text body");
    assert!(text.contains("# TYPE ersap_service_requests_total counter"), "{text}");
    assert!(text.contains(&format!("service=\"{dpe}:user:Reco\"")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_request_ends_the_instance() {
    let sink = start("sink", &[]);
    let client = Client::new();
    assert_eq!(client.post(&sink, "/stop", None).await, StatusCode::NO_CONTENT);
    let waited = tokio::task::spawn_blocking(move || sink.wait());
    let result = tokio::time::timeout(Duration::from_secs(3), waited).await;
    let result = result.expect("instance stopped within 3 s").expect("wait thread");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_latency_shows_in_sink_latency() {
    let sink = start("sink", &[]);
    let source = start("source", &["--events", "200", "--rate", "2000"]);
    let client = Client::new();

    let target = Target {
        addr: format!("127.0.0.1:{}", sink.data_port()),
        latency_us: 20_000,
        bandwidth_bps: 0,
    };
    let response = client
        .http
        .put(Client::url(&source, "/targets"))
        .bearer_auth(TOKEN)
        .json(&Targets { targets: vec![target] })
        .send()
        .await
        .expect("PUT /targets is answered");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(client.post(&source, "/start", None).await, StatusCode::NO_CONTENT);
    let drain = Drain { expected_ends: 1 };
    assert_eq!(client.post(&sink, "/drain", Some(&drain)).await, StatusCode::NO_CONTENT);
    client.wait_drained(&sink).await;

    let stats: Stats = client.get(&sink, "/stats").await;
    assert_eq!(stats.events_in, 200);
    assert!(stats.latency.p50_us >= 20_000, "p50 = {} µs", stats.latency.p50_us);
    assert!(stats.latency.p50_us < 200_000, "p50 = {} µs", stats.latency.p50_us);
}

/// Polls `instance` until its sink stats show at least `events` events received.
async fn wait_for_events(client: &Client, instance: &Instance, events: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats: Stats = client.get(instance, "/stats").await;
        if stats.events_in >= events {
            return;
        }
        assert!(Instant::now() < deadline, "only {} events after 30 s", stats.events_in);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_processor_loses_no_events() {
    const EVENTS: u64 = 200_000;
    let sink = start("sink", &[]);
    // A cost of 64 µs per event keeps events waiting inside the doomed processor when it dies.
    let doomed = start("processor", &["--cost-ns-per-byte", "1000"]);
    let survivor = start("processor", &["--replica", "1"]);
    let source = start("source", &["--events", "200000", "--event-size", "64", "--rate", "100000"]);
    let client = Client::new();

    for processor in [&doomed, &survivor] {
        let status = client.put_targets(processor, &[&sink]).await.status();
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let status = client.put_targets(&source, &[&doomed, &survivor]).await.status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(client.post(&source, "/start", None).await, StatusCode::NO_CONTENT);
    wait_for_events(&client, &sink, EVENTS / 4).await;

    // The doomed processor dies with events in flight; a replacement takes its place.
    doomed.kill_data_plane();
    let replacement = start("processor", &[]);
    let status = client.put_targets(&replacement, &[&sink]).await.status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let status = client.put_targets(&source, &[&survivor, &replacement]).await.status();
    assert_eq!(status, StatusCode::NO_CONTENT);

    let one = Drain { expected_ends: 1 };
    let two = Drain { expected_ends: 2 };
    for processor in [&survivor, &replacement] {
        assert_eq!(client.post(processor, "/drain", Some(&one)).await, StatusCode::NO_CONTENT);
    }
    assert_eq!(client.post(&sink, "/drain", Some(&two)).await, StatusCode::NO_CONTENT);
    client.wait_drained(&sink).await;
    client.wait_drained(&source).await;

    let stats: Stats = client.get(&sink, "/stats?ranges=true").await;
    assert_eq!(stats.received, Some(vec![[0, EVENTS]]), "events were lost");
    assert_eq!(stats.events_in, EVENTS);
    let source_stats: Stats = client.get(&source, "/stats").await;
    assert!(source_stats.replayed > 0, "the source replayed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_target_loses_no_events() {
    const EVENTS: u64 = 200_000;
    let sink = start("sink", &[]);
    let first = start("processor", &[]);
    let second = start("processor", &[]);
    let source = start("source", &["--events", "200000", "--event-size", "64", "--rate", "100000"]);
    let client = Client::new();

    for processor in [&first, &second] {
        let status = client.put_targets(processor, &[&sink]).await.status();
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let status = client.put_targets(&source, &[&first, &second]).await.status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(client.post(&source, "/start", None).await, StatusCode::NO_CONTENT);
    wait_for_events(&client, &sink, EVENTS / 4).await;

    // Scale in: the first processor leaves the source's targets while events flow.
    let status = client.put_targets(&source, &[&second]).await.status();
    assert_eq!(status, StatusCode::NO_CONTENT);

    let one = Drain { expected_ends: 1 };
    assert_eq!(client.post(&second, "/drain", Some(&one)).await, StatusCode::NO_CONTENT);
    assert_eq!(client.post(&sink, "/drain", Some(&one)).await, StatusCode::NO_CONTENT);
    client.wait_drained(&sink).await;
    client.wait_drained(&source).await;

    let stats: Stats = client.get(&sink, "/stats?ranges=true").await;
    assert_eq!(stats.received, Some(vec![[0, EVENTS]]), "events were lost");
    assert_eq!(stats.events_in, EVENTS);
}
