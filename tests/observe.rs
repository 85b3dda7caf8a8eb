//! Observability over real sockets: Prometheus metrics scraped from the admin
//! listener and parsed, upstream health probes, the access log read back as
//! JSON, and W3C trace context arriving at the backend.

mod common;

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{upstream, Backend, Gateway, Testing};
use protogate::pb::protogate::testing::v1::test_service_server::TestServiceServer;
use serde_json::{json, Value as Json};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;

const ORDER_ROUTE: &str = "GET /v1/orders/{id}";
const ORDER_RPC: &str = "/acme.orders.v1.OrderService/GetOrder";

/// One sample of the text exposition: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (comments skipped, label values unescaped).
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("sample has a value");
        let name = line[..name_end].to_owned();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            let mut key = String::new();
            loop {
                let (i, c) = chars.next().expect("labels are closed");
                match c {
                    '}' => {
                        rest = &body[i + 1..];
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                        let mut value = String::new();
                        loop {
                            match chars.next().expect("value is closed").1 {
                                '"' => break,
                                '\\' => match chars.next().expect("escape").1 {
                                    'n' => value.push('\n'),
                                    other => value.push(other),
                                },
                                other => value.push(other),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    other => key.push(other),
                }
            }
        }
        let value = rest
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("value in `{line}`"));
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// The sum of the series of `name` whose labels include `labels`.
fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(gw: &Gateway) -> Vec<Sample> {
    let response = gw
        .client
        .get(format!("http://{}/metrics", gw.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    parse_exposition(&response.text().await.unwrap())
}

/// Polls `check` until it holds, for at most 10 s (recording happens when
/// the response body is over, which can trail the client by a moment).
async fn eventually<T, F>(what: &str, mut attempt: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Scrapes until the request counter reaches `requests`, then returns the samples.
async fn scrape_after(gw: &Gateway, requests: f64) -> Vec<Sample> {
    eventually("the request count", || async move {
        let samples = scrape(gw).await;
        let seen = total(&samples, "protogate_http_requests_total", &[]);
        assert!(seen <= requests, "{seen} requests counted, {requests} sent");
        (seen == requests).then_some(samples)
    })
    .await
}

#[tokio::test]
async fn requests_are_counted_by_route_template_and_outcome() {
    let gw = Gateway::start_with(|config| config.limits.max_request_body_bytes = 64).await;
    let mut order_bytes = 0;
    for _ in 0..3 {
        let response = gw
            .client
            .get(gw.url("/v1/orders/o-1"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        order_bytes += response.bytes().await.unwrap().len();
    }
    assert_eq!(gw.get("/v1/nowhere/1").await.0, 404);
    assert_eq!(gw.get("/v1/nowhere/2").await.0, 404);
    let (status, _) = gw
        .send(gw.client.put(gw.url("/v1/orders/o-1")).body("{}"))
        .await;
    assert_eq!(status, 405);
    for (code, status) in [(16, 401), (8, 429), (13, 500)] {
        let (got, _) = gw.post("/v1/fail", json!({ "code": code })).await;
        assert_eq!(got, status);
    }
    let (status, _) = gw
        .post("/v1/echo", json!({ "stringValue": "x".repeat(100) }))
        .await;
    assert_eq!(status, 413);

    let samples = scrape_after(&gw, 10.0).await;
    let requests =
        |labels: &[(&str, &str)]| total(&samples, "protogate_http_requests_total", labels);
    assert_eq!(
        requests(&[
            ("route", ORDER_ROUTE),
            ("method", "GET"),
            ("status", "200"),
            ("grpc_code", "OK"),
            ("upstream", "acme"),
        ]),
        3.0
    );
    assert_eq!(
        requests(&[
            ("route", "unmatched"),
            ("status", "404"),
            ("grpc_code", "NOT_FOUND"),
            ("upstream", "none")
        ]),
        2.0
    );
    assert_eq!(
        requests(&[
            ("route", "unmatched"),
            ("method", "PUT"),
            ("status", "405"),
            ("grpc_code", "UNIMPLEMENTED")
        ]),
        1.0
    );
    let fail = [
        ("route", "POST /v1/fail"),
        ("upstream", "protogate.testing"),
    ];
    for (status, code) in [
        ("401", "UNAUTHENTICATED"),
        ("429", "RESOURCE_EXHAUSTED"),
        ("500", "INTERNAL"),
    ] {
        let labels = [fail[0], fail[1], ("status", status), ("grpc_code", code)];
        assert_eq!(requests(&labels), 1.0, "{status}");
    }
    assert_eq!(
        requests(&[
            ("route", "POST /v1/echo"),
            ("status", "413"),
            ("grpc_code", "RESOURCE_EXHAUSTED")
        ]),
        1.0
    );

    let duration = "protogate_http_request_duration_seconds_count";
    assert_eq!(
        total(
            &samples,
            duration,
            &[("route", ORDER_ROUTE), ("method", "GET")]
        ),
        3.0
    );
    assert_eq!(total(&samples, duration, &[("route", "unmatched")]), 3.0);
    assert_eq!(total(&samples, duration, &[]), 10.0);
    let upstream_count = "protogate_upstream_duration_seconds_count";
    assert_eq!(
        total(
            &samples,
            upstream_count,
            &[("upstream", "acme"), ("rpc", ORDER_RPC)]
        ),
        3.0
    );
    assert_eq!(
        total(&samples, upstream_count, &[]),
        6.0,
        "only requests that reached an upstream"
    );
    assert_eq!(
        total(
            &samples,
            "protogate_http_response_size_bytes_sum",
            &[("route", ORDER_ROUTE)]
        ),
        order_bytes as f64
    );
    assert_eq!(
        total(
            &samples,
            "protogate_http_request_size_bytes_count",
            &[("route", ORDER_ROUTE)]
        ),
        3.0
    );
    // The bucket bounds are the configured defaults, 1 ms to 10 s.
    let buckets: Vec<&str> = samples
        .iter()
        .filter(|s| {
            s.name == "protogate_http_request_duration_seconds_bucket"
                && s.labels["route"] == ORDER_ROUTE
        })
        .map(|s| s.labels["le"].as_str())
        .collect();
    assert_eq!(buckets.first(), Some(&"0.001"));
    assert!(
        buckets.contains(&"10") && buckets.last() == Some(&"+Inf"),
        "{buckets:?}"
    );
    // Bounded labels: no raw path or id anywhere.
    for sample in &samples {
        for value in sample.labels.values() {
            assert!(
                !value.contains("o-1") && !value.contains("nowhere"),
                "{sample:?}"
            );
        }
    }
    assert_eq!(total(&samples, "protogate_catalog_generation", &[]), 1.0);
    assert!(total(&samples, "protogate_routes", &[]) > 20.0);

    // Counting moves by exactly the next request, and only its series.
    assert_eq!(gw.get("/v1/orders/o-1").await.0, 200);
    let samples = scrape_after(&gw, 11.0).await;
    assert_eq!(
        total(
            &samples,
            "protogate_http_requests_total",
            &[("route", ORDER_ROUTE)]
        ),
        4.0
    );
}

#[tokio::test]
async fn the_overall_timeout_is_counted_on_its_route_as_a_gateway_answer() {
    let gw = Gateway::start_with(|config| {
        config.limits.request_timeout = Duration::from_millis(100);
    })
    .await;
    let (status, body) = gw.get("/v1/sleep/3000").await;
    assert_eq!(status, 504);
    common::assert_status(&body, Code::DeadlineExceeded, "gateway timeout");
    let samples = scrape_after(&gw, 1.0).await;
    let labels = [
        ("route", "GET /v1/sleep/{millis}"),
        ("status", "504"),
        ("grpc_code", "DEADLINE_EXCEEDED"),
    ];
    assert_eq!(
        total(&samples, "protogate_http_requests_total", &labels),
        1.0
    );
    assert_eq!(gw.get("/v1/orders/o-1").await.0, 200);
}

#[tokio::test]
async fn admin_listener_serves_liveness_and_readiness() {
    let gw = Gateway::start().await;
    let admin = |path: &str| format!("http://{}{path}", gw.admin_addr);
    let response = gw.client.get(admin("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let gw = &gw;
    let ready: Json = eventually("readiness", || async move {
        let response = gw.client.get(admin("/readyz")).send().await.unwrap();
        let status = response.status();
        let body: Json = response.json().await.unwrap();
        (status == 200 && body["upstreams"]["acme"] == "healthy").then_some(body)
    })
    .await;
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["generation"], 1);
    // The data plane does not serve /metrics unless asked to.
    let (status, body) = gw.get("/metrics").await;
    assert_eq!(status, 404);
    common::assert_status(&body, Code::NotFound, "no route for GET /metrics");
    let response = gw.client.get(admin("/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn metrics_can_also_be_served_on_the_public_listener() {
    let gw = Gateway::start_with(|config| config.metrics.on_public_listener = true).await;
    assert_eq!(gw.get("/v1/orders/o-1").await.0, 200);
    let text = gw.text(gw.url("/metrics")).await;
    let samples = parse_exposition(&text);
    assert_eq!(total(&samples, "protogate_catalog_generation", &[]), 1.0);
    // The scrape itself is not a data-plane request.
    let samples = scrape_after(&gw, 1.0).await;
    assert_eq!(
        total(
            &samples,
            "protogate_http_requests_total",
            &[("route", ORDER_ROUTE)]
        ),
        1.0
    );
}

/// A gateway whose upstreams are all at `addr`, probed every 50 ms, without grace.
async fn probed_gateway(addr: SocketAddr) -> Gateway {
    Gateway::start_with(move |config| {
        let url = format!("http://{addr}");
        config.upstreams = vec![upstream("acme", &url), upstream("protogate.testing", &url)];
        config.health.interval = Duration::from_millis(50);
        config.health.timeout = Duration::from_secs(1);
        config.health.grace_period = Duration::ZERO;
    })
    .await
}

/// Polls until the upstream's gauge and readiness both say `healthy`.
async fn until_health(gw: &Gateway, healthy: bool) {
    let want = if healthy { 1.0 } else { 0.0 };
    eventually(&format!("healthy = {healthy}"), || async move {
        let samples = scrape(gw).await;
        let gauge = samples
            .iter()
            .find(|s| s.name == "protogate_upstream_healthy" && s.labels["upstream"] == "acme")
            .map(|s| s.value);
        let ready = gw
            .client
            .get(format!("http://{}/readyz", gw.admin_addr))
            .send()
            .await
            .unwrap()
            .status();
        (gauge == Some(want) && (ready == 200) == healthy).then_some(())
    })
    .await;
}

#[tokio::test]
async fn upstream_health_flips_when_the_backend_stops_and_comes_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = Backend::start_on(listener);
    let gw = probed_gateway(addr).await;
    until_health(&gw, true).await;

    drop(backend);
    until_health(&gw, false).await;
    assert_eq!(gw.get("/v1/orders/o-1").await.0, 503);

    let _backend = Backend::start_on(TcpListener::bind(addr).await.unwrap());
    until_health(&gw, true).await;
    assert_eq!(gw.get("/v1/orders/o-1").await.0, 200);
}

#[tokio::test]
async fn an_upstream_without_the_health_service_counts_by_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TestServiceServer::new(Testing))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let gw = probed_gateway(addr).await;
    until_health(&gw, true).await;

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = probed_gateway(closed).await;
    until_health(&gw, false).await;
}

/// A temporary access log file, removed on drop.
struct LogFile(PathBuf);

impl LogFile {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "protogate-access-{test}-{}.log",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }

    /// Waits for `count` lines and returns them parsed.
    async fn lines(&self, count: usize) -> Vec<Json> {
        eventually(&format!("{count} access log lines"), || async move {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            let lines: Vec<Json> = text
                .lines()
                .map(|line| {
                    serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"))
                })
                .collect();
            assert!(lines.len() <= count, "too many lines: {text}");
            (lines.len() == count).then_some(lines)
        })
        .await
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn access_log_lines_are_json_with_every_field() {
    let log = LogFile::new("fields");
    let file = log.0.clone();
    let gw = Gateway::start_with(move |config| {
        config.access_log.enabled = true;
        config.access_log.file = Some(file);
        config.query.ignored = vec!["access_token".into()];
    })
    .await;
    let response = gw
        .client
        .get(gw.url("/v1/orders/o-1?access_token=secret-in-query"))
        .header("authorization", "Bearer secret-bearer-token")
        .header("user-agent", "observe-test/1.0")
        .header("x-correlation-id", "corr-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let traceparent = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let bytes_out = response.bytes().await.unwrap().len();
    let first = log.lines(1).await;
    let ok = &first[0];

    let body = r#"{"stringValue":"hello"}"#;
    let (status, _) = gw
        .send(
            gw.client
                .post(gw.url("/v1/echo"))
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(gw.get("/v1/nowhere").await.0, 404);
    assert_eq!(gw.post("/v1/fail", json!({ "code": 14 })).await.0, 503);
    let lines = log.lines(4).await;

    assert_eq!(ok["request_id"], request_id);
    assert_eq!(ok["correlation_id"], "corr-1");
    assert_eq!(ok["trace_id"].as_str().unwrap(), &traceparent[3..35]);
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["consumer"], "anonymous");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["route"], ORDER_ROUTE);
    assert_eq!(ok["path"], "/v1/orders/o-1");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["grpc_code"], "OK");
    assert!(ok["latency_ms"].as_f64().unwrap() > 0.0, "{ok}");
    assert_eq!(ok["upstream"], "acme");
    assert!(ok["upstream_latency_ms"].as_f64().unwrap() <= ok["latency_ms"].as_f64().unwrap());
    assert_eq!(ok["bytes_in"], 0);
    assert_eq!(ok["bytes_out"], bytes_out);
    assert_eq!(ok["user_agent"], "observe-test/1.0");
    assert!(ok.get("fault").is_none(), "{ok}");
    assert!(
        ok["timestamp"].as_str().is_some_and(|t| t.len() > 18),
        "{ok}"
    );

    let by_route = |route: &str| {
        lines
            .iter()
            .find(|l| l["route"] == route)
            .unwrap_or_else(|| panic!("no line for {route}"))
    };
    assert_eq!(by_route("POST /v1/echo")["bytes_in"], body.len());
    let not_found = by_route("unmatched");
    assert_eq!(
        (not_found["status"].clone(), not_found["fault"].clone()),
        (json!(404), json!("client"))
    );
    assert_eq!(not_found["grpc_code"], "NOT_FOUND");
    assert!(not_found.get("upstream_latency_ms").is_none());
    let failed = by_route("POST /v1/fail");
    assert_eq!(
        (failed["status"].clone(), failed["fault"].clone()),
        (json!(503), json!("upstream"))
    );

    let text = std::fs::read_to_string(&log.0).unwrap();
    assert!(!text.contains("secret"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("bearer"), "{text}");
}

#[tokio::test]
async fn access_log_samples_successes_and_keeps_every_failure() {
    let log = LogFile::new("sampled");
    let file = log.0.clone();
    let gw = Gateway::start_with(move |config| {
        config.access_log.enabled = true;
        config.access_log.file = Some(file);
        config.access_log.sample_2xx = 0.5;
    })
    .await;
    for _ in 0..4 {
        assert_eq!(gw.get("/v1/orders/o-1").await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(gw.get("/v1/nowhere").await.0, 404);
    }
    let lines = log.lines(4).await;
    let statuses: Vec<u64> = lines
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 404).count(),
        2,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn access_log_can_be_text() {
    let log = LogFile::new("text");
    let file = log.0.clone();
    let gw = Gateway::start_with(move |config| {
        config.access_log.enabled = true;
        config.access_log.file = Some(file);
        config.access_log.format = protogate::config::AccessLogFormat::Text;
    })
    .await;
    assert_eq!(gw.get("/v1/orders/o-1").await.0, 200);
    let path = &log.0;
    let text = eventually("a text line", || async move {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.ends_with('\n').then_some(text)
    })
    .await;
    assert!(
        text.contains("route=\"GET /v1/orders/{id}\"") && text.contains("status=200"),
        "{text}"
    );
}

fn trace_id_of(traceparent: &str) -> &str {
    assert_eq!(traceparent.len(), 55, "{traceparent}");
    &traceparent[3..35]
}

#[tokio::test]
async fn traceparent_is_forwarded_to_the_upstream_as_a_new_hop() {
    let gw = Gateway::start().await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = gw
        .client
        .get(gw.url("/v1/headers"))
        .header("traceparent", incoming)
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let returned = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Json = response.json().await.unwrap();
    let received = body["metadata"]["traceparent"].as_str().unwrap();
    assert_eq!(trace_id_of(received), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        received, incoming,
        "the gateway is a hop with its own parent id"
    );
    assert!(received.ends_with("-01"));
    assert_eq!(received, returned);
    assert_eq!(body["metadata"]["tracestate"], "vendor=abc");
}

#[tokio::test]
async fn a_trace_is_minted_when_traceparent_is_absent_or_invalid() {
    let gw = Gateway::start().await;
    let mut trace_ids = Vec::new();
    for traceparent in [None, Some("00-zz-nope-01")] {
        let (returned, body) = gw.traced_headers_call(traceparent).await;
        let received = body["metadata"]["traceparent"].as_str().unwrap();
        assert_eq!(received, returned);
        assert!(
            received.starts_with("00-") && received.ends_with("-01"),
            "{received}"
        );
        assert!(
            body["metadata"].get("tracestate").is_none(),
            "orphan tracestate dropped: {body}"
        );
        trace_ids.push(trace_id_of(received).to_owned());
    }
    assert_ne!(trace_ids[0], trace_ids[1]);
    // Error responses carry it too.
    let response = gw.client.get(gw.url("/v1/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["traceparent"].len(), 55);
}

#[tokio::test]
async fn refusals_are_counted_and_the_consumer_is_logged() {
    let log = LogFile::new("refusals");
    let file = log.0.clone();
    let key = common::tokens::EcKey::generate("k1");
    let pem = key.public_pem();
    let gw = Gateway::start_with(move |config| {
        config.access_log.enabled = true;
        config.access_log.file = Some(file);
        config.auth = Some(
            serde_yaml_ng::from_str(&format!(
                "providers: [{{ issuer: '{}', algorithms: [ES256], public_key_pem: {:?} }}]",
                common::tokens::ISSUER,
                pem
            ))
            .unwrap(),
        );
        config.rate_limit =
            Some(serde_yaml_ng::from_str("per_user: { requests: 1, per: 1h }").unwrap());
    })
    .await;
    let token = key.sign(&common::tokens::claims("alice", &[]));
    let authorized = || gw.client.get(gw.url("/v1/orders/o-1")).bearer_auth(&token);
    assert_eq!(gw.send(authorized()).await.0, 200);
    assert_eq!(gw.send(authorized()).await.0, 429);
    assert_eq!(gw.get("/v1/orders/o-1").await.0, 401);
    let bad = gw
        .client
        .get(gw.url("/v1/orders/o-1"))
        .bearer_auth("not.a.jwt");
    assert_eq!(gw.send(bad).await.0, 401);

    let samples = scrape_after(&gw, 4.0).await;
    assert_eq!(
        total(
            &samples,
            "protogate_rate_limited_total",
            &[("route", ORDER_ROUTE), ("key_kind", "user")]
        ),
        1.0
    );
    assert_eq!(
        total(
            &samples,
            "protogate_auth_failures_total",
            &[("reason", "missing")]
        ),
        1.0
    );
    assert_eq!(
        total(
            &samples,
            "protogate_auth_failures_total",
            &[("reason", "malformed")]
        ),
        1.0
    );
    assert_eq!(total(&samples, "protogate_auth_failures_total", &[]), 2.0);

    let lines = log.lines(4).await;
    assert_eq!(lines[0]["consumer"], "alice");
    assert_eq!(lines[1]["consumer"], "alice");
    assert_eq!(lines[2]["consumer"], "anonymous");
    assert!(
        !std::fs::read_to_string(&log.0).unwrap().contains(&token),
        "the token is never logged"
    );
}

// === the Grafana dashboard ===

/// What a dashboard's queries ask of the exposition: each metric name, each
/// label matched in a selector (with its metric), and each label grouped
/// by (with the metrics it groups).
#[derive(Debug, Default)]
struct QueryNeeds {
    metrics: Vec<String>,
    /// (metric, label) of `metric{label=...}`.
    selector_labels: Vec<(String, String)>,
    /// (label, metrics one of which must carry it) of `by (...)`,
    /// `without (...)`, `on (...)`, `ignoring (...)`, `group_left (...)`.
    grouping_labels: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone, PartialEq)]
enum PromToken {
    Ident(String),
    Punct(char),
    /// A string, a number, a range or a Grafana variable: nothing to check.
    Literal,
}

/// Splits PromQL into identifiers, punctuation and literals (strings,
/// numbers, `[ranges]`, `$variables`).
fn promql_tokens(expr: &str) -> Vec<PromToken> {
    let chars: Vec<char> = expr.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            tokens.push(PromToken::Ident(chars[start..i].iter().collect()));
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            tokens.push(PromToken::Literal);
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
            tokens.push(PromToken::Literal);
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            tokens.push(PromToken::Literal);
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            tokens.push(PromToken::Literal);
        } else {
            tokens.push(PromToken::Punct(c));
            i += 1;
        }
    }
    tokens
}

/// The metrics and labels one PromQL expression uses. A grouping clause
/// applies to the metrics of the aggregation's argument, before or after it.
fn promql_needs(expr: &str, needs: &mut QueryNeeds) {
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: [&str; 8] = [
        "bool", "and", "or", "unless", "offset", "inf", "nan", "atan2",
    ];
    enum Frame {
        /// `(...)`: the metrics inside, and labels to check against them.
        Paren {
            metrics: Vec<String>,
            labels: Vec<String>,
        },
        /// `by (...)`: labels, and whether the argument came before it.
        Grouping {
            labels: Vec<String>,
            after: Option<Vec<String>>,
        },
        /// `{...}` of a metric (none: a bare selector).
        Braces(Option<String>),
    }
    let tokens = promql_tokens(expr);
    let mut stack: Vec<Frame> = vec![Frame::Paren {
        metrics: Vec::new(),
        labels: Vec::new(),
    }];
    let mut pending: Vec<String> = Vec::new();
    let mut last_closed: Vec<String> = Vec::new();
    let mut previous: Option<PromToken> = None;
    for (i, token) in tokens.iter().enumerate() {
        let next = tokens.get(i + 1);
        match token {
            PromToken::Ident(name) => match stack.last_mut() {
                Some(Frame::Braces(metric)) => {
                    if let Some(metric) = metric {
                        needs.selector_labels.push((metric.clone(), name.clone()));
                    }
                }
                Some(Frame::Grouping { labels, .. }) => labels.push(name.clone()),
                _ if next == Some(&PromToken::Punct('(')) => {
                    if GROUPING.contains(&name.as_str()) {
                        let after =
                            (previous == Some(PromToken::Punct(')'))).then(|| last_closed.clone());
                        stack.push(Frame::Grouping {
                            labels: Vec::new(),
                            after,
                        });
                    }
                    // Else a function: its argument is the paren that follows.
                }
                // An aggregation with its clause first: `sum by (...) (...)`.
                _ if matches!(next, Some(PromToken::Ident(n)) if GROUPING.contains(&n.as_str())) => {
                }
                _ if KEYWORDS.contains(&name.as_str()) || GROUPING.contains(&name.as_str()) => {}
                _ => {
                    needs.metrics.push(name.clone());
                    for frame in stack.iter_mut() {
                        if let Frame::Paren { metrics, .. } = frame {
                            metrics.push(name.clone());
                        }
                    }
                    if next == Some(&PromToken::Punct('{')) {
                        stack.push(Frame::Braces(Some(name.clone())));
                    }
                }
            },
            PromToken::Punct('(') if !matches!(stack.last(), Some(Frame::Grouping { .. })) => {
                let labels = std::mem::take(&mut pending);
                stack.push(Frame::Paren {
                    metrics: Vec::new(),
                    labels,
                });
            }
            PromToken::Punct(')') => match stack.pop() {
                Some(Frame::Grouping {
                    labels,
                    after: Some(metrics),
                }) => {
                    needs
                        .grouping_labels
                        .extend(labels.into_iter().map(|l| (l, metrics.clone())));
                }
                Some(Frame::Grouping {
                    labels,
                    after: None,
                }) => pending = labels,
                Some(Frame::Paren { metrics, labels }) => {
                    needs
                        .grouping_labels
                        .extend(labels.into_iter().map(|l| (l, metrics.clone())));
                    last_closed = metrics;
                }
                other => panic!("unbalanced `)` in {expr}: {}", other.is_some()),
            },
            PromToken::Punct('{') if !matches!(stack.last(), Some(Frame::Braces(_))) => {
                stack.push(Frame::Braces(None));
            }
            PromToken::Punct('}') => {
                assert!(
                    matches!(stack.pop(), Some(Frame::Braces(_))),
                    "unbalanced `}}` in {expr}"
                );
            }
            _ => {}
        }
        previous = Some(token.clone());
    }
    assert_eq!(stack.len(), 1, "unclosed brackets in {expr}");
    assert!(
        pending.is_empty(),
        "a grouping clause without an argument in {expr}"
    );
}

/// Every query of a Grafana dashboard: the panels' targets (rows' panels
/// too) and the query variables (`label_values(metric, label)`).
fn dashboard_needs(dashboard: &Json) -> QueryNeeds {
    let mut needs = QueryNeeds::default();
    let mut panels: Vec<&Json> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target without expr: {target}"));
            promql_needs(expr, &mut needs);
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .unwrap();
        let args = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not label_values(metric, label): {query}"));
        let (selector, label) = args.rsplit_once(',').unwrap();
        promql_needs(selector, &mut needs);
        let metric = needs.metrics.last().unwrap().clone();
        needs
            .grouping_labels
            .push((label.trim().to_owned(), vec![metric]));
    }
    needs
}

/// What the dashboard asks for and the exposition does not have.
fn missing_from(needs: &QueryNeeds, samples: &[Sample]) -> Vec<String> {
    let labels_of = |metric: &str| -> Vec<&str> {
        samples
            .iter()
            .filter(|s| s.name == metric)
            .flat_map(|s| s.labels.keys().map(String::as_str))
            .collect()
    };
    let mut missing = Vec::new();
    for metric in &needs.metrics {
        if !samples.iter().any(|s| &s.name == metric) {
            missing.push(format!("metric {metric}"));
        }
    }
    for (metric, label) in &needs.selector_labels {
        if !labels_of(metric).contains(&label.as_str()) {
            missing.push(format!("label {label} of {metric}"));
        }
    }
    for (label, metrics) in &needs.grouping_labels {
        if !metrics
            .iter()
            .any(|m| labels_of(m).contains(&label.as_str()))
        {
            missing.push(format!("label {label} of any of {metrics:?}"));
        }
    }
    missing.sort();
    missing.dedup();
    missing
}

#[test]
fn the_promql_reader_finds_metrics_and_labels_where_they_are_used() {
    let mut needs = QueryNeeds::default();
    promql_needs(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route=~"$route", status!="2.."}[$__rate_interval]))) / on (route) group_left sum(b) without (method) + max(c)"#,
        &mut needs,
    );
    assert_eq!(needs.metrics, ["a_bucket", "b", "c"]);
    assert_eq!(
        needs.selector_labels,
        [
            ("a_bucket".to_owned(), "route".to_owned()),
            ("a_bucket".to_owned(), "status".to_owned())
        ]
    );
    let grouping: Vec<(&str, Vec<&str>)> = needs
        .grouping_labels
        .iter()
        .map(|(l, m)| (l.as_str(), m.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        grouping,
        [
            ("le", vec!["a_bucket"]),
            ("route", vec!["a_bucket"]),
            // `on` before the right-hand side: checked against it.
            ("route", vec!["b"]),
            ("method", vec!["b"]),
        ]
    );
}

/// The dashboard queries only what the gateway exports: every metric and
/// label of every panel exists in `/metrics` after traffic that touches
/// each of them (a 200, a 429, a refused token, a reload, a health probe).
#[tokio::test]
async fn every_metric_and_label_of_the_grafana_dashboard_is_exported() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grafana/protogate.json");
    let dashboard: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // A dashboard Grafana imports: a Prometheus data source chosen by variable.
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "{variables:?}"
    );
    let mut ids = std::collections::HashSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel id twice: {panel}"
        );
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{panel}");
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(
                    target["datasource"]["uid"], "${datasource}",
                    "{}",
                    panel["title"]
                );
            }
        }
    }
    let needs = dashboard_needs(&dashboard);
    // What the dashboard is for, each asked at least once.
    for metric in [
        "protogate_http_requests_total",
        "protogate_http_request_duration_seconds_bucket",
        "protogate_upstream_duration_seconds_bucket",
        "protogate_upstream_healthy",
        "protogate_rate_limited_total",
        "protogate_auth_refused_total",
        "protogate_catalog_generation",
        "protogate_catalog_reloads_total",
        "protogate_http_request_size_bytes_sum",
        "protogate_http_response_size_bytes_sum",
    ] {
        assert!(
            needs.metrics.iter().any(|m| m == metric),
            "the dashboard does not show {metric}"
        );
    }

    let key = common::tokens::EcKey::generate("k1");
    let pem = key.public_pem();
    let gw = Gateway::start_with(move |config| {
        config.auth = Some(
            serde_yaml_ng::from_str(&format!(
                "providers: [{{ issuer: '{}', algorithms: [ES256], public_key_pem: {:?} }}]",
                common::tokens::ISSUER,
                pem
            ))
            .unwrap(),
        );
        config.rate_limit =
            Some(serde_yaml_ng::from_str("per_user: { requests: 1, per: 1h }").unwrap());
        config.health.interval = Duration::from_millis(50);
    })
    .await;
    let alice = key.sign(&common::tokens::claims("alice", &[]));
    let bob = key.sign(&common::tokens::claims("bob", &[]));
    let order = || gw.client.get(gw.url("/v1/orders/o-1"));
    assert_eq!(gw.send(order().bearer_auth(&alice)).await.0, 200);
    assert_eq!(gw.send(order().bearer_auth(&alice)).await.0, 429);
    assert_eq!(gw.send(order().bearer_auth("not.a.jwt")).await.0, 401);
    let echo = gw
        .client
        .post(gw.url("/v1/echo"))
        .bearer_auth(&bob)
        .json(&json!({ "stringValue": "hi" }));
    assert_eq!(gw.send(echo).await.0, 200);
    // A reload: the configured upstream set again through the admin API.
    let admin = |path: &str| format!("http://{}/admin/v1/upstreams{path}", gw.admin_addr);
    let (_, listed) = gw.send(gw.client.get(admin(""))).await;
    let url = listed["upstreams"][0]["url"].clone();
    let put = gw
        .client
        .put(admin("/protogate.testing"))
        .json(&json!({ "url": url }));
    let (status, body) = gw.send(put).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["generation"], 2);

    let gw = &gw;
    let samples = eventually("a health probe", || async move {
        let samples = scrape_after(gw, 4.0).await;
        samples
            .iter()
            .any(|s| s.name == "protogate_upstream_healthy")
            .then_some(samples)
    })
    .await;
    assert_eq!(
        total(
            &samples,
            "protogate_catalog_reloads_total",
            &[("result", "applied")]
        ),
        1.0
    );
    let missing = missing_from(&needs, &samples);
    assert!(
        missing.is_empty(),
        "the dashboard queries what /metrics lacks: {missing:?}"
    );

    // And the check sees a panel that queries what does not exist.
    let mut broken = dashboard.clone();
    broken["panels"][1]["targets"][0]["expr"] = json!(
        r#"sum by (route, nope) (rate(protogate_nope_total[5m])) + sum(rate(protogate_http_requests_total{stauts="500"}[5m]))"#
    );
    let missing = missing_from(&dashboard_needs(&broken), &samples);
    assert_eq!(
        missing,
        [
            r#"label nope of any of ["protogate_nope_total"]"#,
            r#"label route of any of ["protogate_nope_total"]"#,
            "label stauts of protogate_http_requests_total",
            "metric protogate_nope_total",
        ]
    );
}
