//! Every bad input and every upstream failure: the exact status, a
//! google.rpc.Status body, and the gateway still serving afterwards.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{
    assert_status,
    process::{free_port, protogate, wait_for, Child},
    raw_exchange,
    raw_upstream::{frame_of, Answer, RawUpstream},
    upstream, violations, Backend, Gateway,
};
use prost::Message as _;
use protogate::pb::google::rpc::{ErrorInfo, Status as RpcStatus};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;

/// The canonical mapping, checked end to end: the backend fails with each code.
#[tokio::test]
async fn every_grpc_code_maps_to_its_http_status_and_body() {
    let gw = Gateway::start().await;
    let table = [
        (Code::Cancelled, 499),
        (Code::Unknown, 500),
        (Code::InvalidArgument, 400),
        (Code::DeadlineExceeded, 504),
        (Code::NotFound, 404),
        (Code::AlreadyExists, 409),
        (Code::PermissionDenied, 403),
        (Code::ResourceExhausted, 429),
        (Code::FailedPrecondition, 400),
        (Code::Aborted, 409),
        (Code::OutOfRange, 400),
        (Code::Unimplemented, 501),
        (Code::Internal, 500),
        (Code::Unavailable, 503),
        (Code::DataLoss, 500),
        (Code::Unauthenticated, 401),
    ];
    for (code, http) in table {
        let message = format!("secret detail of {code:?}");
        let (status, body) = gw
            .post("/v1/fail", json!({"code": code as i32, "message": message}))
            .await;
        assert_eq!(status, http, "{code:?}: {body}");
        if http >= 500 {
            assert_status(&body, code, "");
            assert!(
                !body.to_string().contains("secret detail"),
                "a 5xx leaks the upstream message: {body}"
            );
        } else {
            assert_status(&body, code, &message);
        }
    }
}

#[tokio::test]
async fn upstream_details_are_decoded_with_their_type() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .post(
            "/v1/fail",
            json!({"code": 3, "message": "naïve 100% ✓ message", "withDetails": true}),
        )
        .await;
    assert_eq!(status, 400);
    assert_status(&body, Code::InvalidArgument, "naïve 100% ✓ message");
    let details = body["details"].as_array().unwrap();
    assert_eq!(details.len(), 5, "{body}");
    assert_eq!(
        details[0],
        json!({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": "code", "description": "as asked"}]})
    );
    assert_eq!(
        details[1],
        json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "TEST_FAILURE", "domain": "protogate.test"})
    );
    // Internal fields are removed from details too.
    assert_eq!(
        details[2],
        json!({"@type": "type.googleapis.com/protogate.testing.v1.Nested", "name": "detail"})
    );
    assert_eq!(
        details[3],
        json!({"@type": "type.googleapis.com/unknown.Type", "value": "AQID"})
    );
}

#[tokio::test]
async fn request_id_is_kept_or_minted_and_returned() {
    let gw = Gateway::start().await;
    let response = gw
        .client
        .get(gw.url("/v1/nothing"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-123");
    assert_eq!(response.headers()["x-correlation-id"], "req-123");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["details"][0]["requestId"], "req-123");

    let response = gw
        .client
        .get(gw.url("/v1/orders/o-1"))
        .header("x-correlation-id", "flow-9")
        .send()
        .await
        .unwrap();
    let minted = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(minted.len(), 36, "a UUID: {minted}");
    assert_eq!(response.headers()["x-correlation-id"], "flow-9");
}

#[tokio::test]
async fn malformed_json_is_400_and_the_next_request_succeeds() {
    let gw = Gateway::start().await;
    let cases: [(&str, &str); 3] = [
        ("{", "invalid JSON body: EOF while parsing"),
        ("{\"int32Value\": tru}", "invalid JSON body: expected ident"),
        ("{} trailing", "invalid JSON body: trailing characters"),
    ];
    for (text, message) in cases {
        let request = gw
            .client
            .post(gw.url("/v1/echo"))
            .header("content-type", "application/json")
            .body(text);
        let (status, body) = gw.send(request).await;
        assert_eq!(status, 400, "{text}: {body}");
        assert_status(&body, Code::InvalidArgument, message);
        assert_eq!(
            gw.post("/v1/echo", json!({"int32Value": 1})).await,
            (200, json!({"int32Value": 1}))
        );
    }
}

/// A bad value names its field by its JSON path, in the message and as a
/// field violation, whichever way the body is parsed: the plans refuse a
/// number themselves; prost-reflect words what they leave (`"three"`).
#[tokio::test]
async fn a_bad_value_in_the_body_names_its_field() {
    let gw = Gateway::start().await;
    let cases = [
        (
            json!({"int32Value": "three"}),
            "int32Value",
            "invalid digit",
        ),
        (
            json!({"int32Value": 1.5}),
            "int32Value",
            "`1.5` is not an integer",
        ),
        (
            json!({"color": "PURPLE"}),
            "color",
            "unrecognized enum value",
        ),
        (
            json!({"repeatedNested": [{}, {"value": "three"}]}),
            "repeatedNested[1].value",
            "invalid digit",
        ),
        (
            json!({"nestedById": {"7": {"value": 1e10}}}),
            "nestedById.7.value",
            "out of range for a 32-bit integer",
        ),
        (json!({"floatValue": "1e39"}), "floatValue", "out of range"),
    ];
    for (doc, field, reason) in cases {
        let (status, body) = gw.post("/v1/echo", doc.clone()).await;
        assert_eq!(status, 400, "{doc}: {body}");
        assert_status(&body, Code::InvalidArgument, &format!("invalid `{field}`"));
        let violations = violations(&body);
        assert_eq!(violations.len(), 1, "{body}");
        assert_eq!(violations[0].0, field, "{body}");
        assert!(violations[0].1.contains(reason), "{body}");
    }
    // The path is relative to the body, here the order of `body: "order"`.
    let order = json!({"customerId": "c-1", "items": [{"sku": "pen", "quantity": "three"}]});
    let (status, body) = gw.post("/v1/orders", order).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(violations(&body)[0].0, "items[0].quantity", "{body}");
}

#[tokio::test]
async fn unknown_json_field_is_named() {
    let gw = Gateway::start().await;
    let (status, body) = gw.post("/v1/echo", json!({"nested": {"nmae": "x"}})).await;
    assert_eq!(status, 400);
    assert_status(
        &body,
        Code::InvalidArgument,
        "unrecognized field name 'nmae'",
    );
}

#[tokio::test]
async fn wrong_content_type_is_400_invalid_argument() {
    let gw = Gateway::start().await;
    let request = gw
        .client
        .post(gw.url("/v1/echo"))
        .header("content-type", "text/plain")
        .body("{}");
    let (status, body) = gw.send(request).await;
    assert_eq!(status, 400);
    assert_status(
        &body,
        Code::InvalidArgument,
        "unsupported content type `text/plain`",
    );
    let request = gw
        .client
        .post(gw.url("/v1/echo"))
        .header(
            "content-type",
            "application/merge-patch+json; charset=utf-8",
        )
        .body("{}");
    assert_eq!(gw.send(request).await, (200, json!({})));
}

#[tokio::test]
async fn oversized_body_is_413() {
    let gw = Gateway::start_with(|config| config.limits.max_request_body_bytes = 64).await;
    let (status, body) = gw
        .post("/v1/echo", json!({"stringValue": "x".repeat(100)}))
        .await;
    assert_eq!(status, 413);
    assert_status(
        &body,
        Code::ResourceExhausted,
        "exceeds the limit of 64 bytes",
    );
    assert_eq!(
        gw.post("/v1/echo", json!({"stringValue": "ok"})).await,
        (200, json!({"stringValue": "ok"}))
    );
}

/// What hyper answers on its own to an HTTP/1.1 head it cannot take (the
/// data plane never sees it), and the gateway's 413 beside them: each with a
/// google.rpc.Status body and the request id in the header and the body.
#[tokio::test]
async fn a_refused_request_head_has_a_status_body_and_a_request_id() {
    let gw = Gateway::start_with(|config| config.limits.max_request_body_bytes = 64).await;
    let long_uri = format!(
        "GET /v1/echo/{} HTTP/1.1\r\nHost: gateway\r\n\r\n",
        "a".repeat(100_000)
    );
    let many_headers = format!(
        "GET /v1/echo/hello HTTP/1.1\r\nHost: gateway\r\n{}\r\n",
        (0..120)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    let broken_header = "GET /v1/echo/hello HTTP/1.1\r\nHost gateway\r\n\r\n".to_owned();
    let big_body = format!(
        "POST /v1/echo HTTP/1.1\r\nHost: gateway\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"stringValue\": \"{}\"}}",
        "x".repeat(81)
    );
    let cases = [
        (long_uri, 414, Code::InvalidArgument, "uri too long"),
        (
            many_headers,
            431,
            Code::InvalidArgument,
            "request header fields too large",
        ),
        (broken_header, 400, Code::InvalidArgument, "bad request"),
        (
            big_body,
            413,
            Code::ResourceExhausted,
            "exceeds the limit of 64 bytes",
        ),
    ];
    for (request, status, code, message) in cases {
        let response = raw_exchange(gw.addr, request.as_bytes()).await;
        assert_eq!(response.status, status, "{response:?}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        let body = response.json();
        assert_status(&body, code, message);
        let id = response.header("x-request-id").expect("a request id");
        assert_eq!(
            body["details"].as_array().unwrap().last().unwrap()["requestId"],
            id
        );
        assert_eq!(
            gw.get("/v1/echo/ok").await,
            (200, json!({"stringValue": "ok"}))
        );
    }
}

/// HTTP/2 header lists over 16 KiB: h2 takes them (up to its cap) so that
/// the gateway answers, with a body and a request id like HTTP/1.1's 431,
/// where h2 used to answer a bare 431 itself.
#[tokio::test]
async fn an_http2_header_list_over_the_limit_has_a_status_body_and_a_request_id() {
    let gw = Gateway::start().await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = gw.url("/v1/echo/hello");
    let response = client
        .get(&url)
        .header("x-large", "a".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 431);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_status(
        &body,
        Code::InvalidArgument,
        "request header fields too large",
    );
    assert!(body["message"].to_string().contains("16384"), "{body}");
    assert_eq!(
        body["details"].as_array().unwrap().last().unwrap()["requestId"],
        id
    );
    // Under the limit, on the same connection.
    let response = client
        .get(&url)
        .header("x-large", "a".repeat(10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Past h2's cap (64 KiB), h2's own answer stands: a 431 without a body.
    let response = client
        .get(&url)
        .header("x-large", "a".repeat(70_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    assert!(response.headers().get("x-request-id").is_none());
}

#[tokio::test]
async fn unreachable_upstream_is_503_without_leaking_its_address() {
    // Bind then drop: a loopback port that refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("http://127.0.0.1:{port}");
    let gw =
        Gateway::start_with(|config| config.upstreams.push(upstream("acme.users", &dead))).await;
    let (status, body) = gw.get("/v1/tenants/acme/users/alice").await;
    assert_eq!(status, 503, "{body}");
    assert_status(&body, Code::Unavailable, "upstream unavailable");
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");
    assert_eq!(
        gw.get("/v1/orders/o-1").await.0,
        200,
        "other upstreams still serve"
    );
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let gw = Gateway::start_with(|config| {
        for upstream in &mut config.upstreams {
            upstream.timeout = Duration::from_millis(200);
        }
    })
    .await;
    let (status, body) = gw.get("/v1/sleep/3000").await;
    assert_eq!(status, 504, "{body}");
    assert_status(&body, Code::DeadlineExceeded, "deadline exceeded");
    assert_eq!(gw.get("/v1/sleep/1").await, (200, json!({})));
}

#[tokio::test]
async fn a_clients_grpc_timeout_shortens_the_deadline_and_never_lengthens_it() {
    // The harness gives the upstream 5 s.
    let gw = Gateway::start().await;
    let asking = |path: &str, timeout: &str| {
        gw.client
            .get(gw.url(path))
            .header("grpc-timeout", timeout.to_owned())
    };
    // 3 s of work, 200 ms asked: the client's deadline.
    let (status, body) = gw.send(asking("/v1/sleep/3000", "200m")).await;
    assert_eq!(status, 504, "{body}");
    assert_status(&body, Code::DeadlineExceeded, "deadline exceeded");
    assert_eq!(gw.send(asking("/v1/sleep/1", "2S")).await.0, 200);
    // The upstream is told the shorter deadline, and never a longer one.
    for (asked, sent) in [("250m", "250000u"), ("1H", "5000000u")] {
        let (status, body) = gw.send(asking("/v1/headers", asked)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["metadata"]["grpc-timeout"], sent, "{asked}");
    }
    for malformed in ["soon", "5", "1.5S", "123456789S", "-1S"] {
        let (status, body) = gw.send(asking("/v1/sleep/1", malformed)).await;
        assert_eq!(status, 400, "{malformed}: {body}");
        assert_status(&body, Code::InvalidArgument, "invalid `grpc-timeout`");
        assert_eq!(
            violations(&body),
            [(
                "grpc-timeout".into(),
                format!("`{malformed}` is not a gRPC timeout: 1 to 8 digits and a unit (H, M, S, m, u or n)")
            )]
        );
    }

    // An upstream of 200 ms: an hour asked is still 200 ms.
    let short = Gateway::start_with(|config| {
        for upstream in &mut config.upstreams {
            upstream.timeout = Duration::from_millis(200);
        }
    })
    .await;
    let request = short
        .client
        .get(short.url("/v1/sleep/3000"))
        .header("grpc-timeout", "1H");
    let (status, body) = short.send(request).await;
    assert_eq!(status, 504, "{body}");

    // Through a tonic channel (calls from outside the serving workers) too.
    let backend = Backend::start().await;
    let mut config = protogate::Config {
        upstreams: vec![upstream("protogate.testing", &backend.url())],
        ..protogate::Config::default()
    };
    config.access_log.enabled = false;
    let server = protogate::Server::new(&config, vec![common::testing_set()]).unwrap();
    let request = http::Request::get("/v1/sleep/3000")
        .header("grpc-timeout", "200m")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(server.router(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
}

#[tokio::test]
async fn overall_request_ceiling_is_504_with_a_status_body() {
    let gw =
        Gateway::start_with(|config| config.limits.request_timeout = Duration::from_millis(200))
            .await;
    let (status, body) = gw.get("/v1/sleep/3000").await;
    assert_eq!(status, 504, "{body}");
    assert_status(&body, Code::DeadlineExceeded, "gateway timeout");
}

#[tokio::test]
async fn bad_path_value_is_a_bad_request_field_violation() {
    let gw = Gateway::start().await;
    let (status, body) = gw.get("/v1/sleep/soon").await;
    assert_eq!(status, 400);
    assert_eq!(
        violations(&body),
        [("millis".into(), "`soon` is not a 64-bit integer".into())]
    );
}

#[tokio::test]
async fn upstream_that_comes_back_is_reconnected() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gateway::start_with(|config| {
        config
            .upstreams
            .push(upstream("acme.users", &format!("http://{addr}")))
    })
    .await;
    assert_eq!(gw.get("/v1/tenants/acme/users/alice").await.0, 503);

    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(protogate::demo::serve_examples(
        listener,
        std::future::pending(),
    ));
    let (last, _) = get_until(&gw, "/v1/tenants/acme/users/alice", 200).await;
    assert_eq!(
        last, 200,
        "the channel reconnects once the upstream is back"
    );
}

/// GETs `path` until it answers `status` (10 s at most); the last answer.
async fn get_until(gw: &Gateway, path: &str, status: u16) -> (u16, serde_json::Value) {
    let mut last = gw.get(path).await;
    for _ in 0..100 {
        if last.0 == status {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = gw.get(path).await;
    }
    last
}

#[tokio::test]
async fn upstream_that_restarts_is_reconnected() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = Backend::start_on(listener);
    let gw = Gateway::start_with(|config| {
        config.workers = 1;
        config
            .upstreams
            .push(upstream("acme.users", &format!("http://{addr}")))
    })
    .await;
    let path = "/v1/tenants/acme/users/alice";
    assert_eq!(gw.get(path).await.0, 200);

    drop(backend);
    let (last, body) = get_until(&gw, path, 503).await;
    assert_eq!(
        last, 503,
        "a call while the upstream is down is UNAVAILABLE"
    );
    assert_status(&body, Code::Unavailable, "upstream unavailable");

    let _backend = Backend::start_on(TcpListener::bind(addr).await.unwrap());
    let (last, _) = get_until(&gw, path, 200).await;
    assert_eq!(last, 200, "the closed connection is replaced");
}

#[tokio::test]
async fn https_upstream_is_verified_against_the_configured_ca() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    let identity =
        tonic::transport::Identity::from_pem(&cert_pem, certified.signing_key.serialize_pem());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tonic::transport::Server::builder()
        .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
        .unwrap()
        .add_routes(protogate::demo::example_routes())
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);

    let ca_file = std::env::temp_dir().join(format!("protogate-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &cert_pem).unwrap();
    let url = format!("https://localhost:{port}");
    let trusted = ca_file.clone();
    let gw = Gateway::start_with(move |config| {
        let mut users = upstream("acme.users", &url);
        users.ca_file = Some(trusted);
        config.upstreams.push(users);
        // The same server without its CA: the system roots do not trust it.
        config.upstreams.push(upstream("acme.orders.v2", &url));
    })
    .await;
    let (status, body) = gw.get("/v1/tenants/acme/users/alice").await;
    std::fs::remove_file(&ca_file).ok();
    assert_eq!(
        (status, body["name"].clone()),
        (200, json!("tenants/acme/users/alice")),
        "{body}"
    );
    let (status, body) = gw.get("/v2/orders/o-1").await;
    assert_eq!(status, 503, "an untrusted certificate is refused: {body}");
}

/// An HTTP/2 server on loopback that answers every call with `reply` as its
/// one message and an OK status, whatever the method's reply type.
async fn upstream_replying(reply: &'static [u8]) -> RawUpstream {
    RawUpstream::start(Answer::ok(vec![frame_of(reply)])).await
}

#[tokio::test]
async fn a_reply_that_is_not_a_valid_message_is_502_on_both_client_paths() {
    // Field 1 (the order's id) announces 5 bytes and brings 1.
    let raw = upstream_replying(b"\x0a\x05a").await;
    let url = raw.url();
    let orders_from_it =
        |config: &mut protogate::Config| config.upstreams.push(upstream("acme.orders.v1", &url));
    // A serving worker's own HTTP/2 connection.
    let gw = Gateway::start_with(orders_from_it).await;
    let (status, body) = gw.get("/v1/orders/o-1").await;
    assert_eq!(status, 502, "{body}");
    assert_status(&body, Code::Internal, "upstream sent an invalid reply");
    assert!(!body.to_string().contains("acme.orders"), "{body}");
    assert_eq!(gw.get("/v2/orders/o-1").await.0, 200, "others still serve");

    // The shared connection: how calls from outside the serving workers go.
    let backend = Backend::start().await;
    let mut config = protogate::Config {
        upstreams: vec![upstream("acme", &backend.url())],
        ..protogate::Config::default()
    };
    config.access_log.enabled = false;
    orders_from_it(&mut config);
    let server = protogate::Server::new(&config, common::example_sets()).unwrap();
    let request = http::Request::get("/v1/orders/o-1")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(server.router(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_status(&body, Code::Internal, "upstream sent an invalid reply");
}

#[tokio::test]
async fn a_reply_whose_hidden_field_does_not_decode_is_502_not_printed_without_it() {
    // The order's id, then its internal note (field 10, never shown to
    // clients) holding bytes that are not UTF-8: prost-reflect refuses to
    // decode the reply, so the gateway must not print the rest as 200.
    let raw = upstream_replying(b"\x0a\x03o-1\x52\x02a\xff").await;
    let gw = Gateway::start_with(|config| {
        config
            .upstreams
            .push(upstream("acme.orders.v1", &raw.url()));
    })
    .await;
    let (status, body) = gw.get("/v1/orders/o-1").await;
    assert_eq!(status, 502, "{body}");
    assert_status(&body, Code::Internal, "upstream sent an invalid reply");
}

#[tokio::test]
async fn the_cause_of_a_5xx_is_logged_at_warn_with_the_request_id_and_the_upstream() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("testing.binpb");
    std::fs::write(&set, common::testing_set().bytes).unwrap();
    let port = free_port();
    let child = Child(
        protogate()
            .args(["serve", "--descriptor-set"])
            .arg(&set)
            .arg("--upstream")
            .arg(format!("protogate.testing={}", backend.url()))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", "127.0.0.1:0"])
            // The default level: no RUST_LOG.
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for(&format!("http://127.0.0.1:{port}/v1/echo")).await;
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/fail"))
        .header("x-request-id", "req-cause-1")
        .json(&json!({"code": 13, "message": "disk 7 is on fire"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(!body.to_string().contains("on fire"), "{body}");

    let log = child.stop();
    let line = log
        .lines()
        .find(|line| line.contains("req-cause-1"))
        .unwrap_or_else(|| panic!("the request is not in the log:\n{log}"));
    for part in [
        "WARN",
        "upstream=\"protogate.testing\"",
        "disk 7 is on fire",
    ] {
        assert!(line.contains(part), "`{part}` missing from: {line}");
    }
}

/// The status, code, message and details (but the request id) of an answer.
fn outcome((status, body): &(u16, serde_json::Value)) -> (u16, serde_json::Value) {
    let mut body = body.clone();
    if let Some(details) = body["details"].as_array_mut() {
        details.pop();
    }
    (*status, body)
}

/// The same misbehaving upstream behind a unary method and a server-streaming
/// one: both paths give the client the same HTTP status, code, message and
/// details (a reply stream's status waits for its first message).
#[tokio::test]
async fn a_misbehaving_upstream_is_answered_the_same_on_the_unary_and_the_streaming_path() {
    let raw = RawUpstream::start(Answer::Silent).await;
    let mut config = protogate::Config {
        upstreams: vec![protogate::config::UpstreamConfig {
            timeout: Duration::from_millis(300),
            ..upstream("protogate.testing", &raw.url())
        }],
        ..protogate::Config::default()
    };
    config.access_log.enabled = false;
    config.limits.max_response_message_bytes = 1024;
    let gw = Gateway::serve(&config, vec![common::testing_set()]).await;

    let info = ErrorInfo {
        reason: "GONE".into(),
        domain: "test".into(),
        ..ErrorInfo::default()
    };
    let details = RpcStatus {
        code: Code::NotFound as i32,
        message: "no such thing".into(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
            value: info.encode_to_vec(),
        }],
    };
    let trailers_only = Answer::trailers_only(vec![
        ("grpc-status", "5".into()),
        ("grpc-message", "no%20such%20thing".into()),
        (
            "grpc-status-details-bin",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(details.encode_to_vec()),
        ),
    ]);
    let partial = frame_of(b"partial")[..8].to_vec();
    let mut compressed = frame_of(b"");
    compressed[0] = 1;
    // Before any message: after one, a stream's status is already sent.
    let no_status = Answer::Reply {
        http_status: 200,
        headers: vec![("content-type", "application/grpc".into())],
        chunks: Vec::new(),
        trailers: None,
    };
    let table = [
        (
            "not gRPC's framing",
            Answer::ok(vec![b"this is not gRPC".to_vec()]),
            (502, Code::Internal, "upstream sent an invalid reply"),
        ),
        (
            "not protobuf",
            Answer::ok(vec![frame_of(&[0xff; 8])]),
            (502, Code::Internal, "upstream sent an invalid reply"),
        ),
        (
            "over the reply limit",
            Answer::ok(vec![frame_of(&[b'x'; 2000])]),
            (
                502,
                Code::ResourceExhausted,
                "upstream reply message exceeds the limit of 1024 bytes",
            ),
        ),
        (
            "no answer",
            Answer::Silent,
            (504, Code::DeadlineExceeded, ""),
        ),
        (
            "a stream reset mid-reply",
            Answer::ResetAfter(vec![partial.clone()]),
            (503, Code::Unavailable, "upstream unavailable"),
        ),
        (
            "a connection closed mid-reply",
            Answer::HangUpAfter(vec![partial]),
            (503, Code::Unavailable, "upstream unavailable"),
        ),
        (
            "a trailers-only error with details",
            trailers_only,
            (404, Code::NotFound, "no such thing"),
        ),
        (
            "an HTTP error without a gRPC status",
            Answer::http(503),
            (503, Code::Unavailable, ""),
        ),
        (
            "an HTTP 404 without a gRPC status",
            Answer::http(404),
            (501, Code::Unimplemented, "not implemented"),
        ),
        (
            "a compressed message",
            Answer::ok(vec![compressed]),
            (502, Code::Internal, "upstream sent an invalid reply"),
        ),
        (
            "a reply that ends inside a message",
            Answer::ok(vec![frame_of(b"\x0a\x01x")[..6].to_vec()]),
            (502, Code::Internal, "upstream sent an invalid reply"),
        ),
        (
            "a reply without a grpc-status",
            no_status,
            (502, Code::Internal, "upstream sent an invalid reply"),
        ),
    ];
    for (what, answer, (http, code, message)) in table {
        raw.answer(answer);
        let unary = gw.post("/v1/echo", json!({})).await;
        let streamed = gw.get("/v1/items").await;
        assert_eq!(unary.0, http, "{what}, unary: {}", unary.1);
        assert_status(&unary.1, code, message);
        assert_eq!(
            outcome(&streamed),
            outcome(&unary),
            "{what}: the streaming path answers otherwise"
        );
        if what.contains("details") {
            assert_eq!(
                unary.1["details"][0],
                json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "GONE", "domain": "test"}),
                "{what}"
            );
        }
    }
    // An OK status and no message: a unary call lacks its reply, a stream is empty.
    raw.answer(Answer::ok(Vec::new()));
    let (status, body) = gw.post("/v1/echo", json!({})).await;
    assert_eq!(status, 502, "{body}");
    assert_status(&body, Code::Internal, "upstream sent an invalid reply");
    assert_eq!(gw.get("/v1/items").await, (200, serde_json::Value::Null));

    raw.answer(Answer::ok(vec![frame_of(b"")]));
    assert_eq!(
        gw.post("/v1/echo", json!({})).await.0,
        200,
        "and it serves on"
    );
    assert_eq!(gw.get("/v1/items").await.0, 200);
}
