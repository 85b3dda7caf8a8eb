//! The demo's edge policies: an ES256 key generated at start, the tour's
//! policies (one public route, an admin-only one, the rest authenticated),
//! generous rate limits, and ready-made tokens for a customer and an admin.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use ring::{
    rand::SystemRandom,
    signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING},
};
use serde_json::{json, Map};

use crate::{
    config::{AuthConfig, PolicyRule, ProviderConfig, QuotaConfig, RateLimitConfig},
    token::{Claims, SigningKey},
};

const ISSUER: &str = "protogate-demo";

/// How long the printed tokens stay valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The DER prefix of a P-256 SubjectPublicKeyInfo; the public point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

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
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| "cannot generate a P-256 key".to_owned())?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| "cannot read the generated key".to_owned())?;
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    let pem = pem_encode("PUBLIC KEY", &spki);

    let signing = SigningKey::es256(pkcs8.as_ref());
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

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}
