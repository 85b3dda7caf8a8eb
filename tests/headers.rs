//! Header injection and CORS over real HTTP: ids minted, kept and echoed
//! (errors included), the request start, static and allow-listed headers as
//! upstream metadata, allow-listed upstream metadata back as headers, trace
//! context, and CORS preflights answered without an upstream.

mod common;

use common::{assert_status, upstream, Gateway};
use protogate::config::CorsConfig;
use serde_json::Value as Json;
use tonic::Code;

/// Sends a request to `/v1/headers`: the response headers and the metadata the backend received.
async fn call_headers(request: reqwest::RequestBuilder) -> (reqwest::header::HeaderMap, Json) {
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let body: Json = response.json().await.unwrap();
    (headers, body["metadata"].clone())
}

#[tokio::test]
async fn well_formed_ids_are_kept_and_malformed_ones_replaced() {
    let gw = Gateway::start().await;
    let (headers, metadata) = call_headers(
        gw.client
            .get(gw.url("/v1/headers"))
            .header("x-request-id", "req-42")
            .header("x-correlation-id", "flow:7"),
    )
    .await;
    assert_eq!(headers["x-request-id"], "req-42");
    assert_eq!(metadata["x-request-id"], "req-42");
    assert_eq!(headers["x-correlation-id"], "flow:7");
    assert_eq!(metadata["x-correlation-id"], "flow:7");
    let user_agent = metadata["user-agent"].as_str().unwrap_or_default();
    assert!(user_agent.starts_with("protogate/"), "{metadata}");

    // Malformed ids, and two copies of an id even when each is well-formed,
    // are replaced: the request id minted, the correlation id falling back
    // to it.
    let long = "x".repeat(200);
    let replaced: [&[(&str, &str)]; 2] = [
        &[
            ("x-request-id", "<script>alert(1)</script>"),
            ("x-correlation-id", &long),
        ],
        &[
            ("x-request-id", "req-1"),
            ("x-request-id", "req-2"),
            ("x-correlation-id", "flow:1"),
            ("x-correlation-id", "flow:2"),
        ],
    ];
    for sent in replaced {
        let request = sent.iter().fold(
            gw.client.get(gw.url("/v1/headers")),
            |request, (name, value)| request.header(*name, *value),
        );
        let (headers, metadata) = call_headers(request).await;
        let minted = headers["x-request-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(minted).is_ok(), "{sent:?}: {minted}");
        assert_eq!(metadata["x-request-id"], minted, "{sent:?}");
        assert_eq!(headers["x-correlation-id"], minted, "{sent:?}");
        assert_eq!(metadata["x-correlation-id"], minted, "{sent:?}");
    }
}

#[tokio::test]
async fn ids_are_minted_and_echoed_on_errors_too() {
    let gw = Gateway::start().await;
    let response = gw.client.get(gw.url("/v1/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let body: Json = response.json().await.unwrap();
    assert_status(&body, Code::NotFound, "no route");
    assert_eq!(body["details"][0]["requestId"], id);
}

#[tokio::test]
async fn request_start_static_headers_and_trace_context_reach_the_upstream() {
    let gw = Gateway::start_with(|config| {
        config.headers.static_headers = [("x-gateway".to_owned(), "protogate".to_owned())].into();
    })
    .await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (_, metadata) = call_headers(
        gw.client
            .get(gw.url("/v1/headers"))
            .header("traceparent", traceparent)
            .header("tracestate", "vendor=1")
            .header("accept-language", "fr"),
    )
    .await;
    // Same trace; the gateway takes part in it as a new parent span.
    let forwarded = metadata["traceparent"].as_str().unwrap();
    assert_eq!(forwarded.len(), traceparent.len(), "{forwarded}");
    assert!(
        forwarded.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{forwarded}"
    );
    assert_ne!(forwarded, traceparent);
    assert_eq!(metadata["tracestate"], "vendor=1");
    assert_eq!(metadata["x-gateway"], "protogate");
    let start = metadata["x-request-start"].as_str().unwrap();
    let millis: u128 = start.strip_prefix("t=").unwrap().parse().unwrap();
    assert!(millis > 1_600_000_000_000, "{start}");
    assert!(
        metadata.get("accept-language").is_none(),
        "not allow-listed: {metadata}"
    );
}

#[tokio::test]
async fn only_allow_listed_client_headers_are_forwarded() {
    let gw = Gateway::start_with(|config| {
        config.headers.forward = vec![
            "Accept-Language".into(),
            "x-tenant-*".into(),
            "grpc-*".into(),
            "x-request-start".into(),
        ];
        config.headers.request_start = String::new();
    })
    .await;
    let (_, metadata) = call_headers(
        gw.client
            .get(gw.url("/v1/headers"))
            .header("accept-language", "fr")
            .header("x-tenant-region", "eu")
            .header("x-other", "no")
            .header("grpc-foo", "no")
            .header("x-request-start", "t=1"),
    )
    .await;
    assert_eq!(metadata["accept-language"], "fr");
    assert_eq!(metadata["x-tenant-region"], "eu");
    assert_eq!(
        metadata["x-request-start"], "t=1",
        "forwarded when listed and not ours"
    );
    assert!(metadata.get("x-other").is_none(), "{metadata}");
    assert!(
        metadata.get("grpc-foo").is_none(),
        "grpc-* never: {metadata}"
    );
}

#[tokio::test]
async fn the_gateway_s_own_metadata_replaces_a_forwarded_copy_and_repeated_values_keep_their_order()
{
    let gw = Gateway::start_with(|config| {
        config.headers.forward = vec![
            "x-tenant-*".into(),
            "x-gateway".into(),
            "x-request-start".into(),
        ];
        config.headers.static_headers = [("x-gateway".to_owned(), "protogate".to_owned())].into();
    })
    .await;
    let (_, metadata) = call_headers(
        gw.client
            .get(gw.url("/v1/headers"))
            .header("x-tenant-region", "eu")
            .header("x-gateway", "spoofed")
            .header("x-request-start", "t=1")
            .header("x-tenant-region", "us")
            .header("x-gateway", "spoofed again")
            .header("x-tenant-zone", "b"),
    )
    .await;
    assert_eq!(metadata["x-tenant-region"], "eu, us", "{metadata}");
    assert_eq!(metadata["x-tenant-zone"], "b", "{metadata}");
    assert_eq!(metadata["x-gateway"], "protogate", "{metadata}");
    let start = metadata["x-request-start"].as_str().unwrap();
    assert!(!start.contains(','), "the gateway's own, alone: {start}");
    assert_ne!(start, "t=1", "{metadata}");
}

#[tokio::test]
async fn allow_listed_upstream_metadata_comes_back_as_headers() {
    let gw = Gateway::start_with(|config| {
        config.headers.response = vec!["x-backend-*".into(), "grpc-*".into()];
    })
    .await;
    let response = gw.client.get(gw.url("/v1/headers")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-backend-version"], "7");
    assert!(response.headers().get("x-internal-secret").is_none());
    assert!(response.headers().get("grpc-status").is_none());
}

/// No allow-list (the default): the upstream's response metadata stays behind.
#[tokio::test]
async fn upstream_metadata_stays_behind_by_default() {
    let gw = Gateway::start_with(|_| {}).await;
    let response = gw.client.get(gw.url("/v1/headers")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-backend-version").is_none());
    assert!(response.headers().get("x-internal-secret").is_none());
}

fn cors(yaml: &str) -> Option<CorsConfig> {
    Some(serde_yaml_ng::from_str(yaml).unwrap())
}

/// The upstream is down, so only an answer from the gateway itself can be 200.
#[tokio::test]
async fn cors_preflight_is_answered_without_an_upstream() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let config = protogate::Config {
        upstreams: vec![
            upstream("acme", &dead),
            upstream("protogate.testing", &dead),
        ],
        cors: cors("{ allowed_origins: ['https://app.example'], max_age: 5m }"),
        ..protogate::Config::default()
    };
    config.validate().unwrap();
    let gw = Gateway::serve(&config, common::example_sets()).await;

    let response = gw
        .client
        .request(reqwest::Method::OPTIONS, gw.url("/v1/orders/o-1"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "DELETE")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("DELETE"), "{methods}");
    let allowed = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("authorization"), "{allowed}");
    assert_eq!(headers["access-control-max-age"], "300");

    // A real request goes to the (dead) upstream and carries the CORS headers on its error.
    let response = gw
        .client
        .get(gw.url("/v1/orders/o-1"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("x-request-id"), "{exposed}");
}

#[tokio::test]
async fn cors_refuses_unlisted_origins() {
    let gw = Gateway::start_with(|config| {
        config.cors = cors("{ allowed_origins: ['https://app.example'] }");
    })
    .await;
    let response = gw
        .client
        .request(reqwest::Method::OPTIONS, gw.url("/v1/orders/o-1"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let response = gw
        .client
        .get(gw.url("/v1/orders/o-1"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "CORS is the browser's call; the request is served"
    );
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

#[tokio::test]
async fn forwarded_metadata_over_the_limit_is_431_before_the_upstream_is_called() {
    let gw = Gateway::start_with(|config| {
        config.headers.forward = vec!["x-blob-*".into()];
    })
    .await;
    let blob = "b".repeat(5 << 10);
    // 20 KiB forwarded: over the 16 KiB header list of a tonic or h2
    // upstream, which refused it (a 500 from an HTTP 431 without a status).
    let request = (0..4).fold(gw.client.get(gw.url("/v1/headers")), |request, i| {
        request.header(format!("x-blob-{i}"), &blob)
    });
    let (status, body) = gw.send(request).await;
    assert_eq!(status, 431, "{body}");
    assert_status(
        &body,
        Code::InvalidArgument,
        "the request's headers sent upstream take",
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("over the limit of 8192 (the largest is `x-blob-"),
        "{message}"
    );

    // Within the limit it is forwarded.
    let (_, metadata) = call_headers(
        gw.client
            .get(gw.url("/v1/headers"))
            .header("x-blob-0", &blob),
    )
    .await;
    assert_eq!(
        metadata["x-blob-0"].as_str().map(str::len),
        Some(blob.len())
    );
}
