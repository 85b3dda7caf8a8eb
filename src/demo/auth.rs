//! The demo's edge policies: an ES256 key generated at start, the tour's
//! policies (one public route, an admin-only one, the rest authenticated),
//! generous rate limits, and ready-made tokens for a customer and an admin.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use p256::{
    pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding},
    SecretKey,
};
use serde_json::{json, Map};

use crate::{
    config::{AuthConfig, PolicyRule, ProviderConfig, QuotaConfig, RateLimitConfig},
    token::{Claims, SigningKey},
};

const ISSUER: &str = "protogate-demo";

/// How long the printed tokens stay valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What the demo configures and prints.
#[derive(Debug)]
pub(super) struct DemoAuth {
    pub auth: AuthConfig,
    pub policies: Vec<PolicyRule>,
    pub rate_limit: RateLimitConfig,
    /// `demo-user`, role `customer`.
    pub user_token: String,
    /// `demo-admin`, roles `customer` and `admin`.
    pub admin_token: String,
}

/// Generates the key and signs the tokens.
pub(super) fn generate() -> Result<DemoAuth, String> {
    // p256 is the JWT stack's own (jsonwebtoken's `rust_crypto`).
    let key = SecretKey::random(&mut rand_core::OsRng);
    let pkcs8 = key
        .to_pkcs8_der()
        .map_err(|err| format!("cannot encode the demo key: {err}"))?;
    let pem = key
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|err| format!("cannot encode the demo key: {err}"))?;

    let signing = SigningKey::es256(pkcs8.as_bytes());
    let sign = |sub: &str, roles: &[&str]| {
        let claims = Claims {
            issuer: ISSUER.into(),
            subject: sub.into(),
            audiences: vec![ISSUER.into()],
            roles: roles.iter().map(|role| (*role).to_owned()).collect(),
            lifetime: TOKEN_LIFETIME,
            extra: Map::from_iter([("tenant".to_owned(), json!("acme"))]),
        };
        signing
            .sign(&claims, None)
            .map_err(|err| format!("cannot sign the demo token: {err}"))
    };

    let auth = AuthConfig {
        providers: vec![ProviderConfig {
            issuer: ISSUER.into(),
            audiences: vec![ISSUER.into()],
            algorithms: vec![Algorithm::ES256],
            jwks_url: None,
            jwks_file: None,
            public_key_pem: Some(pem),
            public_key_file: None,
            hmac_secret_env: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refetch: Duration::from_secs(30),
        }],
        ..AuthConfig::default()
    };
    let rule = |method: &str| PolicyRule {
        method: method.into(),
        allow_anonymous: None,
        roles: None,
        scopes: None,
        client_certificate: None,
        rate_limit: None,
    };
    let policies = vec![
        PolicyRule {
            allow_anonymous: Some(true),
            ..rule("acme.orders.v1.OrderService.ListOrders")
        },
        PolicyRule {
            roles: Some(vec!["admin".into()]),
            ..rule("acme.orders.v1.OrderService.DeleteOrder")
        },
    ];
    let rate_limit = RateLimitConfig {
        per_user: Some(QuotaConfig {
            requests: 1000,
            per: Duration::from_secs(3600),
        }),
        per_ip: Some(QuotaConfig {
            requests: 100,
            per: Duration::from_secs(60),
        }),
        ..RateLimitConfig::default()
    };
    Ok(DemoAuth {
        auth,
        policies,
        rate_limit,
        user_token: sign("demo-user", &["customer"])?,
        admin_token: sign("demo-admin", &["customer", "admin"])?,
    })
}
