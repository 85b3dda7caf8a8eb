//! Rate limiting over real HTTP: exact 429 boundaries for user and IP quotas
//! (quotas per hour, so the boundary never depends on timing), the headers,
//! per-method overrides, and trusted versus untrusted `X-Forwarded-For`.

mod common;

use common::{
    assert_status,
    tokens::{self, claims},
    Gateway,
};
use jsonwebtoken::Algorithm;
use protogate::config::{AuthConfig, RateLimitConfig};
use reqwest::{header::HeaderMap, RequestBuilder};
use serde_json::Value as Json;
use tonic::Code;

fn limits(yaml: &str) -> Option<RateLimitConfig> {
    Some(serde_yaml_ng::from_str(yaml).unwrap())
}

async fn send(request: RequestBuilder) -> (u16, HeaderMap, Json) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Json::Null);
    (status, headers, body)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
        .to_str()
        .unwrap()
}

/// HS256 tokens from the `hmac-issuer` provider, secret in `CARGO_PKG_NAME`.
fn hmac_auth() -> Option<AuthConfig> {
    Some(
        serde_yaml_ng::from_str(
            "providers: [{ issuer: hmac-issuer, hmac_secret_env: CARGO_PKG_NAME }]",
        )
        .unwrap(),
    )
}

fn user_token(sub: &str) -> String {
    let claims = tokens::with(claims(sub, &[]), serde_json::json!({"iss": "hmac-issuer"}));
    let secret = std::env::var("CARGO_PKG_NAME").unwrap();
    tokens::hmac(Algorithm::HS256, secret.as_bytes(), &claims)
}

#[tokio::test]
async fn anonymous_callers_get_their_ip_quota_then_429() {
    let gw = Gateway::start_with(|config| {
        config.rate_limit = limits("per_ip: { requests: 3, per: 1h }");
    })
    .await;
    for remaining in ["2", "1", "0"] {
        let (status, headers, body) = send(gw.client.get(gw.url("/v1/echo/a"))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(header(&headers, "ratelimit-limit"), "3");
        assert_eq!(header(&headers, "ratelimit-remaining"), remaining);
        assert_eq!(header(&headers, "ratelimit-policy"), "3;w=3600");
    }
    let (status, headers, body) = send(gw.client.get(gw.url("/v1/echo/a"))).await;
    assert_eq!(status, 429, "{body}");
    assert_status(
        &body,
        Code::ResourceExhausted,
        "rate limit exceeded: 3 requests per 3600s",
    );
    // One request comes back every 20 minutes.
    assert_eq!(header(&headers, "retry-after"), "1200");
    assert_eq!(header(&headers, "ratelimit-remaining"), "0");
    let reset: u64 = header(&headers, "ratelimit-reset").parse().unwrap();
    assert!((3590..=3600).contains(&reset), "{reset}");
    let retry = &body["details"][0];
    assert_eq!(retry["@type"], "type.googleapis.com/google.rpc.RetryInfo");
    let delay: f64 = retry["retryDelay"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!((1190.0..=1200.0).contains(&delay), "{retry}");

    // The quota is per method policy bucket, not per path: another binding of Echo is limited too.
    let (status, _, _) = send(gw.client.get(gw.url("/v1/echo"))).await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn users_are_counted_by_subject_and_anonymous_callers_by_ip() {
    let gw = Gateway::start_with(|config| {
        config.auth = hmac_auth();
        config.rate_limit =
            limits("per_user: { requests: 2, per: 1h }\nper_ip: { requests: 1, per: 1h }");
    })
    .await;
    let alice = user_token("alice");
    for remaining in ["1", "0"] {
        let (status, headers, body) =
            send(gw.client.get(gw.url("/v1/headers")).bearer_auth(&alice)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(header(&headers, "ratelimit-limit"), "2");
        assert_eq!(header(&headers, "ratelimit-remaining"), remaining);
    }
    let (status, _, body) = send(gw.client.get(gw.url("/v1/headers")).bearer_auth(&alice)).await;
    assert_eq!(status, 429, "{body}");
    assert_status(&body, Code::ResourceExhausted, "2 requests per 3600s");

    // Same IP, another user: a bucket of its own.
    let (status, _, body) = send(
        gw.client
            .get(gw.url("/v1/headers"))
            .bearer_auth(user_token("bob")),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Anonymous calls from that IP: the IP quota.
    let (status, headers, _) = send(gw.client.get(gw.url("/v1/public/headers"))).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "ratelimit-limit"), "1");
    let (status, _, _) = send(gw.client.get(gw.url("/v1/public/headers"))).await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn users_of_two_issuers_with_the_same_subject_have_buckets_of_their_own() {
    let gw = Gateway::start_with(|config| {
        config.auth = Some(
            serde_yaml_ng::from_str(
                "providers:\n\
                 - { issuer: hmac-issuer, hmac_secret_env: CARGO_PKG_NAME }\n\
                 - { issuer: other-issuer, hmac_secret_env: CARGO_PKG_NAME }\n",
            )
            .unwrap(),
        );
        config.rate_limit = limits("per_user: { requests: 1, per: 1h }");
    })
    .await;
    let secret = std::env::var("CARGO_PKG_NAME").unwrap();
    let alice_of = |issuer: &str| {
        let claims = tokens::with(claims("alice", &[]), serde_json::json!({"iss": issuer}));
        tokens::hmac(Algorithm::HS256, secret.as_bytes(), &claims)
    };
    let headers = |token: String| gw.client.get(gw.url("/v1/headers")).bearer_auth(token);
    assert_eq!(send(headers(alice_of("hmac-issuer"))).await.0, 200);
    assert_eq!(send(headers(alice_of("hmac-issuer"))).await.0, 429);
    let (status, _, body) = send(headers(alice_of("other-issuer"))).await;
    assert_eq!(
        status, 200,
        "another issuer's alice is another user: {body}"
    );
}

#[tokio::test]
async fn bad_tokens_spend_the_client_ip_quota_then_get_429() {
    let gw = Gateway::start_with(|config| {
        config.auth = hmac_auth();
        config.rate_limit =
            limits("per_user: { requests: 100, per: 1h }\nper_ip: { requests: 3, per: 1h }");
        config.metrics.enabled = true;
    })
    .await;
    let forged = tokens::hmac(
        Algorithm::HS256,
        b"not the secret",
        &tokens::with(
            claims("mallory", &[]),
            serde_json::json!({"iss": "hmac-issuer"}),
        ),
    );
    let headers = |token: &str| gw.client.get(gw.url("/v1/headers")).bearer_auth(token);
    for _ in 0..3 {
        let (status, _, body) = send(headers(&forged)).await;
        assert_eq!(status, 401, "{body}");
        assert_status(&body, Code::Unauthenticated, "invalid signature");
    }
    for token in [forged.as_str(), "not.a-token"] {
        let (status, headers, body) = send(headers(token)).await;
        assert_eq!(status, 429, "{body}");
        assert_status(&body, Code::ResourceExhausted, "3 requests per 3600s");
        assert_eq!(header(&headers, "retry-after"), "1200");
    }
    // A good token from the same address is counted as its user.
    let (status, _, body) = send(headers(&user_token("alice"))).await;
    assert_eq!(status, 200, "{body}");

    let metrics = gw.text(format!("http://{}/metrics", gw.admin_addr)).await;
    for line in [
        "protogate_auth_refused_total{reason=\"signature\"} 4",
        "protogate_auth_refused_total{reason=\"malformed\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_rule_gives_methods_a_quota_of_their_own() {
    let gw = Gateway::start_with(|config| {
        config.rate_limit = limits("per_ip: { requests: 100, per: 1h }");
        config.policies = serde_yaml_ng::from_str(
            "[{ method: '*.EchoHeaders', rate_limit: { per_ip: { requests: 1, per: 1h } } }]",
        )
        .unwrap();
    })
    .await;
    assert_eq!(send(gw.client.get(gw.url("/v1/headers"))).await.0, 200);
    let (status, _, body) = send(gw.client.get(gw.url("/v1/headers"))).await;
    assert_eq!(status, 429, "{body}");
    let (status, headers, _) = send(gw.client.get(gw.url("/v1/echo/a"))).await;
    assert_eq!(status, 200, "other methods keep the default quota");
    assert_eq!(header(&headers, "ratelimit-limit"), "100");
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_names_the_client() {
    let gw = Gateway::start_with(|config| {
        config.rate_limit = limits("per_ip: { requests: 1, per: 1h }");
        // The test client connects from loopback: it plays the trusted proxy.
        config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    })
    .await;
    let from = |client: &str| {
        gw.client
            .get(gw.url("/v1/echo/a"))
            .header("x-forwarded-for", client)
    };
    assert_eq!(send(from("198.51.100.1")).await.0, 200);
    assert_eq!(send(from("198.51.100.1")).await.0, 429);
    assert_eq!(send(from("198.51.100.2")).await.0, 200, "another client");
    assert_eq!(
        send(from("198.51.100.2, 127.0.0.5")).await.0,
        429,
        "trusted hops are skipped from the right"
    );
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let gw = Gateway::start_with(|config| {
        config.rate_limit = limits("per_ip: { requests: 1, per: 1h }");
    })
    .await;
    let from = |client: &str| {
        gw.client
            .get(gw.url("/v1/echo/a"))
            .header("x-forwarded-for", client)
    };
    assert_eq!(send(from("198.51.100.1")).await.0, 200);
    let (status, _, body) = send(from("198.51.100.2")).await;
    assert_eq!(status, 429, "the peer address is the key: {body}");
}
