//! Spans exported over OTLP, received by a real collector: a tonic server
//! implementing OpenTelemetry's `TraceService` on loopback, in front of which
//! the gateway calls a real backend for a real HTTP client.

mod common;

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use common::{Gateway, HANG_GUARD};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::any_value::Value,
    trace::v1::{span::SpanKind, status::StatusCode, Span},
};
use protogate::config::OtlpConfig;
use serde_json::json;
use tokio::{
    net::TcpListener,
    sync::{Mutex, Notify},
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// What the collector received: every span, and the metadata of each export.
#[derive(Debug, Default)]
struct Received {
    spans: Vec<Span>,
    metadata: Vec<HashMap<String, String>>,
    service_names: Vec<String>,
}

/// An OTLP/gRPC trace receiver on 127.0.0.1:0.
#[derive(Clone)]
struct Collector {
    received: Arc<Mutex<Received>>,
    arrived: Arc<Notify>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let metadata = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    value.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let mut received = self.received.lock().await;
        received.metadata.push(metadata);
        for resource_spans in request.into_inner().resource_spans {
            for attribute in resource_spans.resource.unwrap_or_default().attributes {
                if attribute.key == "service.name" {
                    received.service_names.push(text_of(&attribute.value));
                }
            }
            for scope in resource_spans.scope_spans {
                received.spans.extend(scope.spans);
            }
        }
        drop(received);
        self.arrived.notify_waiters();
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> (Self, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Self {
            received: Arc::default(),
            arrived: Arc::default(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    /// Waits until `count` spans of `trace_id` have arrived, and returns them.
    async fn spans_of(&self, trace_id: &str, count: usize) -> Vec<Span> {
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                let spans: Vec<Span> = self
                    .received
                    .lock()
                    .await
                    .spans
                    .iter()
                    .filter(|span| hex(&span.trace_id) == trace_id)
                    .cloned()
                    .collect();
                assert!(spans.len() <= count, "{spans:#?}");
                if spans.len() == count {
                    return spans;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(HANG_GUARD, wait)
            .await
            .unwrap_or_else(|_| panic!("{count} spans of trace {trace_id} never arrived"))
    }

    async fn trace_ids(&self) -> Vec<String> {
        let received = self.received.lock().await;
        received.spans.iter().map(|s| hex(&s.trace_id)).collect()
    }
}

/// A gateway over the test backend exporting to `collector`, `adjust`ed.
async fn gateway(collector: SocketAddr, adjust: impl FnOnce(&mut OtlpConfig)) -> Gateway {
    let mut otlp = OtlpConfig::new(format!("http://{collector}"));
    adjust(&mut otlp);
    Gateway::start_with(move |config| config.tracing.otlp = Some(otlp)).await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text_of(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

/// The span's attributes, strings as they are and integers as text.
fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(text)) => text.clone(),
                Some(Value::IntValue(number)) => number.to_string(),
                other => panic!("unexpected value of {}: {other:?}", kv.key),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn of_kind(spans: &[Span], kind: SpanKind) -> &Span {
    let mut matching = spans.iter().filter(|s| s.kind == kind as i32);
    let span = matching
        .next()
        .unwrap_or_else(|| panic!("no {kind:?} span"));
    assert!(matching.next().is_none(), "one {kind:?} span: {spans:#?}");
    span
}

/// A request's two spans.
fn server_and_client(spans: &[Span]) -> (&Span, &Span) {
    (
        of_kind(spans, SpanKind::Server),
        of_kind(spans, SpanKind::Client),
    )
}

/// `(trace id, parent id, flags)` of a `traceparent`.
fn parts(traceparent: &str) -> (&str, &str, &str) {
    assert_eq!(traceparent.len(), 55, "{traceparent}");
    (
        &traceparent[3..35],
        &traceparent[36..52],
        &traceparent[53..55],
    )
}

/// GETs `/v1/headers` (the backend answers with the metadata it received)
/// with `traceparent` if given; the `traceparent` returned and the one the
/// backend received.
async fn headers_call(gw: &Gateway, traceparent: Option<&str>) -> (String, String) {
    let (returned, body) = gw.traced_headers_call(traceparent).await;
    (
        returned,
        body["metadata"]["traceparent"].as_str().unwrap().to_owned(),
    )
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_request_is_a_server_span_continuing_the_client_with_a_client_span_for_the_upstream() {
    let (collector, addr) = Collector::start().await;
    let gw = gateway(addr, |otlp| {
        otlp.headers.insert("x-api-key".into(), "k-123".into());
    })
    .await;
    let incoming = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (returned, mut body) = gw.traced_headers_call(Some(&incoming)).await;
    let metadata = body["metadata"].take();
    let upstream = metadata["traceparent"].as_str().unwrap();
    // The backend's own address, as the test backend reports it.
    let backend_port = metadata[":local"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    let spans = collector.spans_of(CLIENT_TRACE, 2).await;

    let (server, client) = server_and_client(&spans);
    // The server span continues the client's trace, under the client's span;
    // its id is the parent the client is given back.
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN);
    assert_eq!(
        parts(&returned),
        (CLIENT_TRACE, &*hex(&server.span_id), "01")
    );
    // The client span is the server span's child, and the parent the
    // backend received, so that the backend's spans join the trace.
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(
        parts(upstream),
        (CLIENT_TRACE, &*hex(&client.span_id), "01")
    );
    assert_ne!(client.span_id, server.span_id);
    for span in [server, client] {
        assert_eq!(span.trace_state, "vendor=abc");
        assert_eq!(span.flags & 0xff, 0x01, "sampled");
    }
    assert_eq!(
        server.flags & 0x300,
        0x300,
        "the server span's parent is remote"
    );
    assert_eq!(
        client.flags & 0x300,
        0x100,
        "the client span's parent is local"
    );

    assert_eq!(server.name, "GET /v1/headers");
    let server_attributes = attributes(server);
    for (key, value) in [
        ("http.request.method", "GET"),
        ("http.route", "/v1/headers"),
        ("url.path", "/v1/headers"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(
            server_attributes.get(key).map(String::as_str),
            Some(value),
            "{key} in {server_attributes:?}"
        );
    }
    assert!(!server_attributes.contains_key("enduser.id"), "anonymous");
    assert_eq!(server.status, None);

    assert_eq!(client.name, "protogate.testing.v1.TestService/EchoHeaders");
    let client_attributes = attributes(client);
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "protogate.testing.v1.TestService"),
        ("rpc.method", "EchoHeaders"),
        ("rpc.grpc.status_code", "0"),
        ("server.address", "127.0.0.1"),
        ("server.port", backend_port),
        ("protogate.upstream", "protogate.testing"),
    ] {
        assert_eq!(
            client_attributes.get(key).map(String::as_str),
            Some(value),
            "{key} in {client_attributes:?}"
        );
    }
    assert_eq!(client.status, None);

    // The upstream call lies within the request.
    assert!(server.start_time_unix_nano > 0);
    assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.start_time_unix_nano <= client.end_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);

    let received = collector.received.lock().await;
    assert!(received
        .metadata
        .iter()
        .all(|m| m.get("x-api-key").map(String::as_str) == Some("k-123")));
    assert!(received
        .service_names
        .iter()
        .all(|name| name == "protogate"));
}

#[tokio::test]
async fn failures_mark_the_spans_as_the_conventions_say() {
    let (collector, addr) = Collector::start().await;
    let gw = gateway(addr, |_| {}).await;
    let fail = |code: i32, trace: &str| {
        gw.client
            .post(gw.url("/v1/fail"))
            .header("traceparent", format!("00-{trace}-{CLIENT_SPAN}-01"))
            .json(&json!({"code": code, "message": "as asked"}))
    };

    // NOT_FOUND: the call failed, the request was answered as it should.
    let not_found = "11111111111111111111111111111111";
    assert_eq!(gw.send(fail(5, not_found)).await.0, 404);
    let spans = collector.spans_of(not_found, 2).await;
    let (server, client) = server_and_client(&spans);
    assert_eq!(server.status, None, "a 4xx is no server error");
    assert_eq!(attributes(server)["http.response.status_code"], "404");
    assert_eq!(attributes(client)["rpc.grpc.status_code"], "5");
    let status = client.status.as_ref().unwrap();
    assert_eq!(
        (status.code, &*status.message),
        (StatusCode::Error as i32, "NOT_FOUND")
    );

    // UNAVAILABLE: both spans are errors.
    let unavailable = "22222222222222222222222222222222";
    assert_eq!(gw.send(fail(14, unavailable)).await.0, 503);
    let spans = collector.spans_of(unavailable, 2).await;
    let (server, client) = server_and_client(&spans);
    assert_eq!(
        server.status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    let server_attributes = attributes(server);
    assert_eq!(server_attributes["http.response.status_code"], "503");
    assert_eq!(server_attributes["error.type"], "503");
    assert_eq!(attributes(client)["rpc.grpc.status_code"], "14");
    assert_eq!(
        client.status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );

    // No route: a server span named by the method alone, and no call.
    let unrouted = "33333333333333333333333333333333";
    let response = gw
        .client
        .get(gw.url("/v1/nowhere"))
        .header("traceparent", format!("00-{unrouted}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    // A later request's spans arrive after this one's: then it is all there is.
    let after = "44444444444444444444444444444444";
    headers_call(&gw, Some(&format!("00-{after}-{CLIENT_SPAN}-01"))).await;
    collector.spans_of(after, 2).await;
    let spans = collector.spans_of(unrouted, 1).await;
    assert_eq!(spans[0].name, "GET");
    assert!(!attributes(&spans[0]).contains_key("http.route"));
}

#[tokio::test]
async fn the_consumer_is_the_enduser() {
    let (collector, addr) = Collector::start().await;
    let key = common::tokens::EcKey::generate("k1");
    let pem = key.public_pem();
    let otlp = OtlpConfig::new(format!("http://{addr}"));
    let gw = Gateway::start_with(move |config| {
        config.tracing.otlp = Some(otlp);
        config.auth = Some(
            serde_yaml_ng::from_str(&format!(
                "providers: [{{ issuer: '{}', algorithms: [ES256], public_key_pem: {:?} }}]",
                common::tokens::ISSUER,
                pem
            ))
            .unwrap(),
        );
    })
    .await;
    let token = key.sign(&common::tokens::claims("alice", &[]));
    let response = gw
        .client
        .get(gw.url("/v1/orders/o-1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let returned = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let spans = collector.spans_of(parts(&returned).0, 2).await;
    let server = of_kind(&spans, SpanKind::Server);
    assert_eq!(attributes(server)["enduser.id"], "alice");
    assert_eq!(attributes(server)["http.route"], "/v1/orders/{id}");
    let client = of_kind(&spans, SpanKind::Client);
    assert_eq!(client.name, "acme.orders.v1.OrderService/GetOrder");
}

#[tokio::test]
async fn an_unsampled_parent_is_followed_and_nothing_is_exported() {
    let (collector, addr) = Collector::start().await;
    let gw = gateway(addr, |_| {}).await;
    let unsampled = "55555555555555555555555555555555";
    let (returned, upstream) =
        headers_call(&gw, Some(&format!("00-{unsampled}-{CLIENT_SPAN}-00"))).await;
    assert_eq!(parts(&returned).2, "00");
    assert_eq!(parts(&upstream), (unsampled, parts(&returned).1, "00"));

    // Spans leave in the order requests end: once a later sampled request's
    // spans are in, the unsampled one would have been too.
    headers_call(&gw, Some(&format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))).await;
    collector.spans_of(CLIENT_TRACE, 2).await;
    assert_eq!(collector.trace_ids().await, [CLIENT_TRACE, CLIENT_TRACE]);
}

#[tokio::test]
async fn new_traces_are_sampled_by_ratio() {
    // Ratio 0: a new trace is not sampled, and says so upstream; a client's
    // sampled trace still is.
    let (collector, addr) = Collector::start().await;
    let gw = gateway(addr, |otlp| otlp.sample_ratio = 0.0).await;
    for _ in 0..5 {
        let (returned, upstream) = headers_call(&gw, None).await;
        assert_eq!(parts(&returned).2, "00");
        assert_eq!(parts(&upstream).2, "00");
    }
    headers_call(&gw, Some(&format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))).await;
    collector.spans_of(CLIENT_TRACE, 2).await;
    assert_eq!(collector.trace_ids().await, [CLIENT_TRACE, CLIENT_TRACE]);

    // Ratio 1: every new trace is, as a root.
    let (collector, addr) = Collector::start().await;
    let gw = gateway(addr, |otlp| otlp.sample_ratio = 1.0).await;
    for _ in 0..5 {
        let (returned, upstream) = headers_call(&gw, None).await;
        let (trace, server_span, flags) = parts(&returned);
        assert_eq!(flags, "01");
        let spans = collector.spans_of(trace, 2).await;
        let server = of_kind(&spans, SpanKind::Server);
        assert!(server.parent_span_id.is_empty(), "a root span");
        assert_eq!(server.flags & 0x300, 0x100, "no remote parent");
        assert_eq!(hex(&server.span_id), server_span);
        assert_eq!(
            hex(&of_kind(&spans, SpanKind::Client).span_id),
            parts(&upstream).1
        );
    }
}

#[tokio::test]
async fn with_the_collector_down_requests_are_answered_and_spans_counted_as_dropped() {
    // A port nothing listens on any more.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = gateway(closed, |_| {}).await;
    let dropped = || async {
        let text = gw.text(format!("http://{}/metrics", gw.admin_addr)).await;
        text.lines()
            .find_map(|line| line.strip_prefix("protogate_otlp_dropped_spans_total "))
            .map_or(0.0, |value| value.trim().parse::<f64>().unwrap())
    };
    for _ in 0..3 {
        assert_eq!(gw.get("/v1/headers").await.0, 200);
    }
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    // Two spans per request (server and client), all three requests'.
    while dropped().await < 6.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spans of 3 requests were never counted as dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.get("/v1/headers").await.0, 200);
}

#[tokio::test]
async fn a_streaming_call_has_its_client_span_too() {
    let (collector, addr) = Collector::start().await;
    let gw = gateway(addr, |_| {}).await;
    // Server streaming: a CSV download, over when the stream ends.
    let exported = "66666666666666666666666666666666";
    let response = gw
        .client
        .get(gw.url("/v1/orders:export"))
        .header("traceparent", format!("00-{exported}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(!response.text().await.unwrap().is_empty());
    // Client streaming: an NDJSON import.
    let imported = "77777777777777777777777777777777";
    let lines = "{\"customerId\": \"c-5\", \"items\": [{\"sku\": \"pen\", \"quantity\": 1}]}\n";
    let response = gw
        .client
        .post(gw.url("/v1/orders:import"))
        .header("traceparent", format!("00-{imported}-{CLIENT_SPAN}-01"))
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for (trace, name) in [
        (exported, "acme.orders.v1.OrderService/ExportOrders"),
        (imported, "acme.orders.v1.OrderService/ImportOrders"),
    ] {
        let spans = collector.spans_of(trace, 2).await;
        let (server, client) = server_and_client(&spans);
        assert_eq!(client.name, name);
        assert_eq!(client.parent_span_id, server.span_id);
        assert_eq!(attributes(client)["rpc.grpc.status_code"], "0");
        assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
        assert!(client.start_time_unix_nano <= client.end_time_unix_nano);
        assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    }
}

#[tokio::test]
async fn queued_spans_are_exported_at_shutdown() {
    let (collector, addr) = Collector::start().await;
    let gw = gateway(addr, |_| {}).await;
    let (returned, _) = headers_call(&gw, None).await;
    // Well within the first second of batching: only the shutdown sends it.
    gw.stop().await.unwrap();
    let spans = collector.spans_of(parts(&returned).0, 2).await;
    assert_eq!(
        hex(&of_kind(&spans, SpanKind::Server).span_id),
        parts(&returned).1
    );
}
