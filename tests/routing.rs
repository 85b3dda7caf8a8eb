//! Route matching over real HTTP: precedence, verbs, percent-decoding,
//! 404/405 with Allow, HEAD, custom methods, HTTP/2.

mod common;

use common::{assert_status, violations, Gateway};
use serde_json::json;
use tonic::Code;

#[tokio::test]
async fn literal_segment_beats_variable_and_variable_beats_double_wildcard() {
    let gw = Gateway::start().await;
    // `/v1/echo/literal/search` (literal), `{string_value}` (*), `{string_value=**}`.
    assert_eq!(
        gw.get("/v1/echo/literal/search?repeatedString=hit").await,
        (200, json!(["hit"]))
    );
    assert_eq!(
        gw.get("/v1/echo/literal/other").await,
        (200, json!({"stringValue": "other"}))
    );
    assert_eq!(
        gw.get("/v1/echo/literal/a/b/c").await,
        (200, json!({"stringValue": "a/b/c"}))
    );
    // Users: `{parent=tenants/*}/users` against `{name=tenants/*/users/*}`.
    let (_, list) = gw.get("/v1/tenants/acme/users").await;
    assert!(list["users"].is_array(), "{list}");
    let (_, user) = gw.get("/v1/tenants/acme/users/bob").await;
    assert_eq!(user["name"], "tenants/acme/users/bob");
}

#[tokio::test]
async fn single_segment_variable_decodes_everything() {
    let gw = Gateway::start().await;
    assert_eq!(
        gw.get("/v1/echo/a%2Fb%20c%3Ad").await,
        (200, json!({"stringValue": "a/b c:d"}))
    );
    assert_eq!(
        gw.get("/v1/echo/caf%C3%A9").await,
        (200, json!({"stringValue": "café"}))
    );
}

#[tokio::test]
async fn path_values_that_do_not_decode_exactly_are_refused_naming_the_variable() {
    let gw = Gateway::start().await;
    let cases = [
        ("/v1/echo/%FF%FE", "string_value", "not UTF-8"),
        ("/v1/echo/caf%C3", "string_value", "not UTF-8"),
        ("/v1/echo/%zz", "string_value", "malformed percent-encoding"),
        (
            "/v1/echo/abc%4",
            "string_value",
            "malformed percent-encoding",
        ),
        ("/v1/echo/files/files/a/%FF", "string_value", "not UTF-8"),
        ("/v1/echo/nested/n%E2%82/1", "nested.name", "not UTF-8"),
        ("/v1/orders/o%zz1", "id", "malformed percent-encoding"),
    ];
    for (path, variable, reason) in cases {
        let (status, body) = gw.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_status(&body, Code::InvalidArgument, variable);
        let found = violations(&body);
        assert_eq!(found.len(), 1, "{path}: {body}");
        assert_eq!(found[0].0, variable, "{path}");
        assert!(found[0].1.contains(reason), "{path}: {}", found[0].1);
    }
    // Well-formed escapes still decode, `%25` to a literal `%`.
    assert_eq!(
        gw.get("/v1/echo/100%25%20caf%C3%A9").await,
        (200, json!({"stringValue": "100% café"}))
    );
}

#[tokio::test]
async fn multi_segment_variable_keeps_encoded_slashes() {
    let gw = Gateway::start().await;
    assert_eq!(
        gw.get("/v1/echo/files/files/a%2Fb/c%20d/e%2f").await,
        (200, json!({"stringValue": "files/a%2Fb/c d/e%2f"}))
    );
}

#[tokio::test]
async fn registered_verb_is_matched_exactly() {
    let gw = Gateway::start().await;
    // `/v1/echo/{string_value}:custom` is registered: the verb is split off.
    assert_eq!(
        gw.get("/v1/echo/abc:custom").await,
        (200, json!({"stringValue": "abc"}))
    );
    // No route registers `:other`, so it is part of the segment.
    assert_eq!(
        gw.get("/v1/echo/abc:other").await,
        (200, json!({"stringValue": "abc:other"}))
    );
    // Verbs are case-sensitive.
    assert_eq!(
        gw.get("/v1/echo/abc:CUSTOM").await,
        (200, json!({"stringValue": "abc:CUSTOM"}))
    );
    // `:cancel` is registered for POST only: a GET falls back to `/v1/orders/{id}`
    // with the whole segment as the id, which the backend does not know.
    let (status, body) = gw.get("/v1/orders/o-1:cancel").await;
    assert_eq!(status, 404, "{body}");
    assert_status(&body, Code::NotFound, "o-1:cancel");
}

#[tokio::test]
async fn unknown_path_is_404_with_a_status_body() {
    let gw = Gateway::start().await;
    let (status, body) = gw.get("/v1/nothing/here").await;
    assert_eq!(status, 404);
    assert_status(&body, Code::NotFound, "no route for GET /v1/nothing/here");
    let (status, _) = gw.get("/v1/orders/").await;
    assert_eq!(status, 404, "an empty segment does not match a variable");
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let gw = Gateway::start().await;
    let response = gw.client.put(gw.url("/v1/orders")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD, POST");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_status(&body, Code::Unimplemented, "method PUT is not allowed");
    let response = gw
        .client
        .post(gw.url("/v1/orders/o-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "DELETE, GET, HEAD, PATCH");
}

#[tokio::test]
async fn a_misspelt_verb_is_404_not_405() {
    let gw = Gateway::start().await;
    // POST has `/v1/orders/{id}:cancel`; no route registers `:cancle`.
    let (status, body) = gw.post("/v1/orders/o-1:cancle", json!({})).await;
    assert_eq!(status, 404, "{body}");
    assert_status(
        &body,
        Code::NotFound,
        "no route for POST /v1/orders/o-1:cancle",
    );
    // The verb spelt right still cancels.
    let (status, body) = gw.post("/v1/orders/o-2:cancel", json!({})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn head_is_served_where_get_is() {
    let gw = Gateway::start().await;
    let response = gw
        .client
        .head(gw.url("/v1/orders/o-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.bytes().await.unwrap().is_empty());
    let response = gw
        .client
        .head(gw.url("/v1/orders/o-404"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn query_string_does_not_take_part_in_matching() {
    let gw = Gateway::start().await;
    assert_eq!(
        gw.get("/v1/echo/x?int32Value=1").await,
        (200, json!({"stringValue": "x", "int32Value": 1}))
    );
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let gw = Gateway::start().await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client.get(gw.url("/v1/orders/o-2")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["id"], "o-2");
}

#[tokio::test]
async fn concurrent_first_calls_share_one_upstream_connection() {
    let gw = Gateway::start_with(|config| config.workers = 1).await;
    let clients: Vec<_> = (0..16).map(|_| reqwest::Client::new()).collect();
    let peers = futures_util::future::join_all(clients.iter().map(|c| gw.upstream_peer(c))).await;
    let distinct: std::collections::HashSet<_> = peers.into_iter().collect();
    assert_eq!(
        distinct.len(),
        1,
        "one worker, one connection: {distinct:?}"
    );
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_then_refuses() {
    let gw = Gateway::start_with(|config| config.workers = 2).await;
    let addr = gw.addr;
    let in_flight = tokio::spawn({
        let request = gw.client.get(gw.url("/v1/sleep/300"));
        async move { request.send().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    gw.stop().await.unwrap();
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(response.status(), 200);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}
