//! JWT authentication and coarse authorization over real HTTP: real signed
//! tokens, a JWKS served over loopback HTTP, policies from the proto option
//! (`protogate.v1.policy`) and from config overrides.

mod common;

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

use arc_swap::ArcSwap;
use axum::{extract::State, http::StatusCode, Router};
use common::{
    assert_status,
    tokens::{self, claims, with, EcKey, ISSUER},
    Gateway,
};
use jsonwebtoken::Algorithm;
use protogate::{config::AuthConfig, Config, Server};
use serde_json::{json, Value as Json};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::Code;

/// A JWKS endpoint on loopback that counts its fetches and can be made to fail.
struct JwksServer {
    url: String,
    document: Arc<ArcSwap<Json>>,
    fetches: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    _stop: oneshot::Sender<()>,
}

#[derive(Clone)]
struct JwksState {
    document: Arc<ArcSwap<Json>>,
    fetches: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

async fn jwks_document(State(state): State<JwksState>) -> Result<String, StatusCode> {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    if state.failing.load(Ordering::SeqCst) {
        return Err(StatusCode::INTERNAL_SERVER_ERROR);
    }
    Ok(state.document.load().to_string())
}

impl JwksServer {
    async fn start(document: Json) -> Self {
        let state = JwksState {
            document: Arc::new(ArcSwap::from_pointee(document)),
            fetches: Arc::default(),
            failing: Arc::default(),
        };
        let router = Router::new()
            .route("/jwks.json", axum::routing::get(jwks_document))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Self {
            url,
            document: state.document,
            fetches: state.fetches,
            failing: state.failing,
            _stop: stop,
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn auth_config(yaml: &str) -> AuthConfig {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|err| panic!("{err}: {yaml}"))
}

/// The HMAC secret: cargo sets `CARGO_PKG_NAME` for test processes, so it
/// stands in for a secret variable without `set_var`.
fn hmac_secret() -> Vec<u8> {
    std::env::var("CARGO_PKG_NAME").unwrap().into_bytes()
}

/// Two providers: ES256 keys from `jwks_url` (refetch allowed at once), and
/// HS256 with the secret from an environment variable.
fn two_providers(jwks_url: &str, min_refetch: &str) -> AuthConfig {
    auth_config(&format!(
        "providers:\n\
         - {{ issuer: '{ISSUER}', audiences: [protogate-tests], algorithms: [ES256], jwks_url: '{jwks_url}', jwks_min_refetch: {min_refetch} }}\n\
         - {{ issuer: hmac-issuer, hmac_secret_env: CARGO_PKG_NAME, algorithms: [HS256] }}\n\
         required_claims: [exp, sub, tenant]\n"
    ))
}

async fn gateway_with(auth: AuthConfig, adjust: impl FnOnce(&mut Config)) -> Gateway {
    Gateway::start_with(|config| {
        config.auth = Some(auth);
        adjust(config);
    })
    .await
}

/// Sends with an optional bearer token; returns status, headers and JSON body.
async fn call(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Json) {
    let mut request = gw.client.request(method.clone(), gw.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method == reqwest::Method::POST {
        request = request.json(&json!({}));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Json::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, headers, body)
}

async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> (u16, Json) {
    let (status, _, body) = call(gw, reqwest::Method::GET, path, token).await;
    (status, body)
}

#[tokio::test]
async fn a_good_token_reaches_the_backend_with_its_claims_as_metadata() {
    let key = EcKey::generate("k1");
    let jwks = JwksServer::start(tokens::jwks(&[&key])).await;
    let gw = gateway_with(two_providers(&jwks.url, "0s"), |_| {}).await;
    let token = key.sign(&claims("alice", &["reader", "auditor"]));
    let (status, body) = get(&gw, "/v1/headers", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let metadata = &body["metadata"];
    assert_eq!(metadata["x-user-id"], "alice");
    assert_eq!(metadata["x-user-roles"], "reader,auditor");
    assert_eq!(metadata["x-tenant-id"], "acme");
    assert!(
        metadata.get("authorization").is_none(),
        "the token is not forwarded: {metadata}"
    );
}

#[tokio::test]
async fn every_key_source_verifies_its_tokens() {
    let ec = EcKey::generate("pem");
    let dir = std::env::temp_dir().join(format!("protogate-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks_file = dir.join("jwks.json");
    let file_key = EcKey::generate("file");
    std::fs::write(&jwks_file, tokens::jwks(&[&file_key]).to_string()).unwrap();
    let rsa_pem = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa-public.pem");
    let auth = auth_config(&format!(
        "providers:\n\
         - {{ issuer: rsa, public_key_file: '{rsa_pem}' }}\n\
         - {{ issuer: ec, public_key_pem: {pem:?} }}\n\
         - {{ issuer: file, jwks_file: '{file}' }}\n\
         - {{ issuer: hmac, hmac_secret_env: CARGO_PKG_NAME }}\n",
        pem = ec.public_pem(),
        file = jwks_file.display(),
    ));
    let gw = gateway_with(auth, |_| {}).await;
    let claims_of = |iss: &str| with(claims(iss, &[]), json!({ "iss": iss }));
    let cases = [
        ("rsa", tokens::rsa(&claims_of("rsa"))),
        ("ec", ec.sign(&claims_of("ec"))),
        ("file", file_key.sign(&claims_of("file"))),
        (
            "hmac",
            tokens::hmac(Algorithm::HS512, &hmac_secret(), &claims_of("hmac")),
        ),
    ];
    for (source, token) in cases {
        let (status, body) = get(&gw, "/v1/headers", Some(&token)).await;
        assert_eq!(status, 200, "{source}: {body}");
        assert_eq!(body["metadata"]["x-user-id"], source);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Each refusal: 401, RFC 6750 `WWW-Authenticate`, a google.rpc.Status that
/// says why without echoing the token, and the next good request works.
#[tokio::test]
async fn each_bad_token_is_refused_with_its_reason() {
    let key = EcKey::generate("k1");
    let stranger = EcKey::generate("k1");
    let jwks = JwksServer::start(tokens::jwks(&[&key])).await;
    let gw = gateway_with(two_providers(&jwks.url, "1h"), |_| {}).await;
    let good = claims("alice", &["reader"]);
    let now = tokens::now();
    let public_pem = key.public_pem();
    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", "not.a-token".into(), "malformed token"),
        (
            "alg none",
            tokens::unsigned(&good),
            "unsigned tokens (alg `none`) are not accepted",
        ),
        (
            "HMAC signed with the public key (algorithm confusion)",
            tokens::hmac(Algorithm::HS256, public_pem.as_bytes(), &good),
            "algorithm HS256 is not accepted",
        ),
        (
            "algorithm the provider does not allow",
            tokens::hmac(
                Algorithm::HS384,
                &hmac_secret(),
                &with(good.clone(), json!({"iss": "hmac-issuer"})),
            ),
            "algorithm HS384 is not accepted",
        ),
        (
            "expired",
            key.sign(&with(good.clone(), json!({"exp": now - 120}))),
            "token has expired",
        ),
        (
            "not yet valid",
            key.sign(&with(good.clone(), json!({"nbf": now + 600}))),
            "token is not valid yet",
        ),
        (
            "unknown issuer",
            key.sign(&with(good.clone(), json!({"iss": "https://evil.test"}))),
            "unknown issuer",
        ),
        (
            "wrong audience",
            key.sign(&with(good.clone(), json!({"aud": "someone-else"}))),
            "token is not meant for this audience",
        ),
        (
            "signed by another key with the same kid",
            stranger.sign(&good),
            "invalid signature",
        ),
        (
            "unknown kid",
            EcKey::generate("k9").sign(&good),
            "no key matches the token's kid",
        ),
        (
            "no subject",
            key.sign(&with(good.clone(), json!({"sub": null}))),
            "missing required claim `sub`",
        ),
        (
            "no tenant (a required custom claim)",
            key.sign(&with(good.clone(), json!({"tenant": null}))),
            "missing required claim `tenant`",
        ),
        (
            "no expiry",
            key.sign(&with(good.clone(), json!({"exp": null}))),
            "missing required claim `exp`",
        ),
        // The provider configures audiences: a token must name one.
        (
            "no audience",
            key.sign(&with(good.clone(), json!({"aud": null}))),
            "missing required claim `aud`",
        ),
        (
            "an audience that is not a string or a list of them",
            key.sign(&with(good.clone(), json!({"aud": 7}))),
            "missing required claim `aud`",
        ),
        (
            "issuers given as a list",
            key.sign(&with(good.clone(), json!({"iss": [ISSUER]}))),
            "unknown issuer",
        ),
        (
            "a start of validity that is not a number",
            key.sign(&with(good.clone(), json!({"nbf": "soon"}))),
            "invalid claim `nbf`",
        ),
    ];
    for (case, token, reason) in cases {
        let (status, headers, body) =
            call(&gw, reqwest::Method::GET, "/v1/headers", Some(&token)).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert_status(&body, Code::Unauthenticated, reason);
        assert_eq!(
            headers["www-authenticate"],
            format!(
                r#"Bearer realm="protogate", error="invalid_token", error_description="{reason}""#
            ),
            "{case}"
        );
        assert!(
            !body.to_string().contains(&token),
            "{case}: the token is echoed"
        );
    }

    let response = gw
        .client
        .get(gw.url("/v1/headers"))
        .header("authorization", "Basic YWxpY2U6cHc=")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Json = response.json().await.unwrap();
    assert_status(
        &body,
        Code::Unauthenticated,
        "expected `Authorization: Bearer <token>`",
    );

    let (status, body) = get(&gw, "/v1/headers", Some(&key.sign(&good))).await;
    assert_eq!(status, 200, "a good token still works: {body}");
}

#[tokio::test]
async fn expiry_within_the_leeway_is_accepted() {
    let key = EcKey::generate("k1");
    let jwks = JwksServer::start(tokens::jwks(&[&key])).await;
    let gw = gateway_with(two_providers(&jwks.url, "0s"), |_| {}).await;
    // The default leeway is 30s.
    let token = key.sign(&with(
        claims("alice", &[]),
        json!({"exp": tokens::now() - 5}),
    ));
    let (status, body) = get(&gw, "/v1/headers", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn no_token_on_a_route_without_policy_is_401_secure_by_default() {
    let key = EcKey::generate("k1");
    let jwks = JwksServer::start(tokens::jwks(&[&key])).await;
    let gw = gateway_with(two_providers(&jwks.url, "0s"), |_| {}).await;
    let (status, headers, body) = call(&gw, reqwest::Method::GET, "/v1/orders/o-1", None).await;
    assert_eq!(status, 401, "{body}");
    assert_status(&body, Code::Unauthenticated, "missing bearer token");
    assert_eq!(headers["www-authenticate"], r#"Bearer realm="protogate""#);
    let token = key.sign(&claims("alice", &[]));
    assert_eq!(get(&gw, "/v1/orders/o-1", Some(&token)).await.0, 200);
}

/// The proto option `allow_anonymous`: no token passes, a bad token does not.
#[tokio::test]
async fn proto_option_lets_anonymous_callers_through() {
    let key = EcKey::generate("k1");
    let jwks = JwksServer::start(tokens::jwks(&[&key])).await;
    let gw = gateway_with(two_providers(&jwks.url, "0s"), |_| {}).await;
    let (status, body) = get(&gw, "/v1/public/headers", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["metadata"].get("x-user-id").is_none(), "{body}");

    let expired = key.sign(&with(
        claims("alice", &[]),
        json!({"exp": tokens::now() - 3600}),
    ));
    let (status, body) = get(&gw, "/v1/public/headers", Some(&expired)).await;
    assert_eq!(status, 401, "a bad token is refused even here: {body}");

    let (status, body) = get(
        &gw,
        "/v1/public/headers",
        Some(&key.sign(&claims("bob", &[]))),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metadata"]["x-user-id"], "bob");
}

/// The proto option `roles` on a method with two bindings: both enforce it,
/// so no path reaches the method around its policy.
#[tokio::test]
async fn proto_option_roles_hold_on_every_binding() {
    let key = EcKey::generate("k1");
    let jwks = JwksServer::start(tokens::jwks(&[&key])).await;
    let gw = gateway_with(two_providers(&jwks.url, "0s"), |_| {}).await;
    let reader = key.sign(&claims("rita", &["reader"]));
    let admin = key.sign(&claims("ada", &["reader", "admin"]));
    let bindings = [
        (reqwest::Method::GET, "/v1/admin/headers"),
        (reqwest::Method::POST, "/v1/legacy/admin-headers"),
    ];
    for (method, path) in bindings {
        let (status, _, body) = call(&gw, method.clone(), path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        let (status, _, body) = call(&gw, method.clone(), path, Some(&reader)).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_status(
            &body,
            Code::PermissionDenied,
            "permission denied: requires one of the roles: admin",
        );
        let (status, _, body) = call(&gw, method.clone(), path, Some(&admin)).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["metadata"]["x-user-id"], "ada");
    }
}

/// Config rules override the proto option by method name or glob, for every
/// binding of the matched methods.
#[tokio::test]
async fn config_rules_override_the_proto_option() {
    let key = EcKey::generate("k1");
    let jwks = JwksServer::start(tokens::jwks(&[&key])).await;
    let gw = gateway_with(two_providers(&jwks.url, "0s"), |config| {
        config.policies = serde_yaml_ng::from_str(
            "- { method: protogate.testing.v1.TestService.Echo, roles: [editor] }\n\
             - { method: '*.PublicHeaders', allow_anonymous: false }\n\
             - { method: 'protogate.testing.v1.*.Fail', allow_anonymous: true }\n\
             - { method: protogate.testing.v1.TestService.Sleep, scopes: ['sleep:write'] }\n\
             - { method: '*.AdminHeaders', roles: [ops] }\n",
        )
        .unwrap();
    })
    .await;
    let reader = key.sign(&claims("rita", &["reader", "admin"]));
    let editor = key.sign(&claims("eve", &["editor", "ops"]));

    for path in [
        "/v1/echo",
        "/v1/echo/a",
        "/v1/echo/literal/search",
        "/v1/echo/a:custom",
    ] {
        let (status, body) = get(&gw, path, Some(&reader)).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_status(
            &body,
            Code::PermissionDenied,
            "requires one of the roles: editor",
        );
        assert_eq!(get(&gw, path, Some(&editor)).await.0, 200, "{path}");
    }

    let (status, _) = get(&gw, "/v1/public/headers", None).await;
    assert_eq!(status, 401, "the rule withdrew allow_anonymous");

    let (status, body) = gw
        .post("/v1/fail", json!({"code": 5, "message": "gone"}))
        .await;
    assert_eq!(status, 404, "anonymous reached the backend: {body}");

    let read_scope = key.sign(&with(claims("sam", &[]), json!({"scope": "sleep:read"})));
    let (status, body) = get(&gw, "/v1/sleep/0", Some(&read_scope)).await;
    assert_eq!(status, 403, "{body}");
    assert_status(
        &body,
        Code::PermissionDenied,
        "requires the scopes: sleep:write",
    );
    let write_scope = key.sign(&with(
        claims("sam", &[]),
        json!({"scope": "sleep:read sleep:write"}),
    ));
    assert_eq!(get(&gw, "/v1/sleep/0", Some(&write_scope)).await.0, 200);

    // The rule replaced the option's `admin` with `ops`.
    assert_eq!(get(&gw, "/v1/admin/headers", Some(&reader)).await.0, 403);
    assert_eq!(get(&gw, "/v1/admin/headers", Some(&editor)).await.0, 200);
}

#[tokio::test]
async fn a_rule_that_matches_no_method_is_refused_at_start() {
    let config = Config {
        policies: serde_yaml_ng::from_str("[{ method: 'acme.nothing.*', allow_anonymous: true }]")
            .unwrap(),
        ..Config::default()
    };
    let err = Server::new(&config, vec![common::testing_set()])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("policies[0]: `acme.nothing.*` matches no served method"),
        "{err}"
    );
}

#[tokio::test]
async fn identity_headers_sent_by_clients_are_removed_on_every_route() {
    let key = EcKey::generate("k1");
    let jwks = JwksServer::start(tokens::jwks(&[&key])).await;
    let gw = gateway_with(two_providers(&jwks.url, "0s"), |config| {
        config.headers.forward = vec!["x-*".into()];
    })
    .await;
    let spoof = |request: reqwest::RequestBuilder| {
        request
            .header("x-user-id", "root")
            .header("x-user-roles", "admin")
            .header("x-tenant-id", "other")
            .header("x-kept", "yes")
    };
    let (status, body) = gw
        .send(spoof(gw.client.get(gw.url("/v1/public/headers"))))
        .await;
    assert_eq!(status, 200, "{body}");
    let metadata = &body["metadata"];
    assert_eq!(metadata["x-kept"], "yes", "{metadata}");
    for name in ["x-user-id", "x-user-roles", "x-tenant-id"] {
        assert!(
            metadata.get(name).is_none(),
            "anonymous {name} spoofed: {metadata}"
        );
    }

    let token = key.sign(&claims("alice", &["reader"]));
    let (status, body) = gw
        .send(spoof(
            gw.client.get(gw.url("/v1/headers")).bearer_auth(token),
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metadata"]["x-user-id"], "alice");
    assert_eq!(body["metadata"]["x-user-roles"], "reader");
    assert_eq!(body["metadata"]["x-tenant-id"], "acme");
}

#[tokio::test]
async fn identity_headers_are_removed_even_without_auth() {
    let gw = Gateway::start_with(|config| config.headers.forward = vec!["x-*".into()]).await;
    let (status, body) = gw
        .send(
            gw.client
                .get(gw.url("/v1/headers"))
                .header("x-user-id", "root"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["metadata"].get("x-user-id").is_none(), "{body}");
}

#[tokio::test]
async fn nested_claims_map_to_configured_headers() {
    let key = EcKey::generate("k1");
    let jwks = JwksServer::start(tokens::jwks(&[&key])).await;
    let mut auth = two_providers(&jwks.url, "0s");
    auth.claim_headers = serde_yaml_ng::from_str(
        "{ sub: x-user-id, 'realm_access.roles': x-user-roles, email: x-user-email }",
    )
    .unwrap();
    auth.roles_claim = "realm_access.roles".into();
    let gw = gateway_with(auth, |_| {}).await;
    let token = key.sign(&with(
        claims("alice", &[]),
        json!({"realm_access": {"roles": ["admin", "ops"]}, "email": "alice@example.test"}),
    ));
    let (status, body) = get(&gw, "/v1/admin/headers", Some(&token)).await;
    assert_eq!(status, 200, "roles read from the nested claim: {body}");
    assert_eq!(body["metadata"]["x-user-roles"], "admin,ops");
    assert_eq!(body["metadata"]["x-user-email"], "alice@example.test");
    assert!(body["metadata"].get("x-tenant-id").is_none());
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks() {
    let old = EcKey::generate("old");
    let jwks = JwksServer::start(tokens::jwks(&[&old])).await;
    let gw = gateway_with(two_providers(&jwks.url, "0s"), |_| {}).await;
    assert_eq!(
        get(&gw, "/v1/headers", Some(&old.sign(&claims("a", &[]))))
            .await
            .0,
        200
    );

    let rotated = EcKey::generate("new");
    jwks.document
        .store(Arc::new(tokens::jwks(&[&old, &rotated])));
    let (status, body) = get(&gw, "/v1/headers", Some(&rotated.sign(&claims("b", &[])))).await;
    assert_eq!(status, 200, "the new key was fetched: {body}");
}

#[tokio::test]
async fn refetches_on_unknown_kids_are_rate_limited() {
    let key = EcKey::generate("k1");
    let jwks = JwksServer::start(tokens::jwks(&[&key])).await;
    let gw = gateway_with(two_providers(&jwks.url, "1h"), |_| {}).await;
    assert_eq!(
        get(&gw, "/v1/headers", Some(&key.sign(&claims("a", &[]))))
            .await
            .0,
        200
    );
    let fetched = jwks.fetches();
    for kid in ["x1", "x2", "x3"] {
        let token = EcKey::generate(kid).sign(&claims("a", &[]));
        assert_eq!(get(&gw, "/v1/headers", Some(&token)).await.0, 401, "{kid}");
    }
    assert_eq!(
        jwks.fetches(),
        fetched,
        "no refetch within jwks_min_refetch"
    );
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_last_good_keys() {
    let key = EcKey::generate("k1");
    let jwks = JwksServer::start(tokens::jwks(&[&key])).await;
    let gw = gateway_with(two_providers(&jwks.url, "0s"), |_| {}).await;
    let token = key.sign(&claims("a", &[]));
    assert_eq!(get(&gw, "/v1/headers", Some(&token)).await.0, 200);

    jwks.failing.store(true, Ordering::SeqCst);
    let fetched = jwks.fetches();
    let unknown = EcKey::generate("k2").sign(&claims("a", &[]));
    assert_eq!(get(&gw, "/v1/headers", Some(&unknown)).await.0, 401);
    assert!(
        jwks.fetches() > fetched,
        "the unknown kid caused a (failed) fetch"
    );
    let (status, body) = get(&gw, "/v1/headers", Some(&token)).await;
    assert_eq!(status, 200, "the old key still verifies: {body}");
}

#[tokio::test]
async fn keys_are_refreshed_on_the_interval() {
    let old = EcKey::generate("old");
    let jwks = JwksServer::start(tokens::jwks(&[&old])).await;
    let mut auth = two_providers(&jwks.url, "1h");
    auth.providers[0].jwks_refresh = std::time::Duration::from_millis(50);
    let gw = gateway_with(auth, |_| {}).await;
    assert_eq!(
        get(&gw, "/v1/headers", Some(&old.sign(&claims("a", &[]))))
            .await
            .0,
        200
    );

    let rotated = EcKey::generate("new");
    jwks.document.store(Arc::new(tokens::jwks(&[&rotated])));
    // Fetches run one after another: once two more have started, one that
    // began after the rotation has completed. Polled with a deadline.
    let target = jwks.fetches() + 2;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while jwks.fetches() < target {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refresh within 30s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (status, body) = get(&gw, "/v1/headers", Some(&rotated.sign(&claims("b", &[])))).await;
    assert_eq!(
        status, 200,
        "refreshed without an on-demand refetch: {body}"
    );
}
