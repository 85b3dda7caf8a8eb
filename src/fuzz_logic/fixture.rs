//! What every target runs over, built once per process: the catalog of the
//! example APIs and the test protos (every field kind and binding shape),
//! the transcoding options chosen by a byte of the input, and a token
//! issuer whose signing key the JWT target holds.

use std::sync::{Arc, LazyLock};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use bytes::Bytes;
use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey};

use crate::{
    config::{AuthConfig, Config, InternalInput, ProviderConfig},
    policy::Authenticator,
    registry::{BuildOptions, Catalog, CatalogBuilder, DescriptorSet, Route, RouteMatch},
    router::RouteId,
    transcode::TranscodeOptions,
    upstream::Upstreams,
};

/// The issuer of the tokens the JWT target signs.
const ISSUER: &str = "fuzz";

/// A fixed Ed25519 seed: signing is fast and repeatable, so a token the
/// fuzzer built replays the same way.
const SEED: [u8; 32] = [7; 32];

/// Omissions configured for one method, so the printer's `omit` masks run.
const CONFIG: &str = "
filters:
  responses:
    - methods: protogate.testing.v1.TestService.Leak
      omit: [nested.value, labels, repeated_nested.tags]
";

static CATALOG: LazyLock<Arc<Catalog>> = LazyLock::new(|| {
    let sets = [
        (
            "acme.orders.v1",
            &include_bytes!("../../descriptor-sets/acme.orders.v1.binpb")[..],
        ),
        (
            "acme.orders.v2",
            &include_bytes!("../../descriptor-sets/acme.orders.v2.binpb")[..],
        ),
        (
            "acme.users.v1",
            &include_bytes!("../../descriptor-sets/acme.users.v1.binpb")[..],
        ),
        ("protogate.testing.v1", crate::testing::SET),
    ]
    .map(|(name, bytes)| DescriptorSet {
        name: name.to_owned(),
        bytes: Bytes::from_static(bytes),
    });
    let config = Config::from_yaml(CONFIG).expect("the fixture's config parses");
    let catalog = CatalogBuilder::new(build_options(&config), &Upstreams::default())
        .add_sets(sets)
        .build(0)
        .expect("the fixed catalog builds");
    // The router target expects `HEAD` to answer as `GET` everywhere.
    assert!(catalog
        .routes()
        .iter()
        .all(|r| r.http_method != Method::HEAD));
    Arc::new(catalog)
});

static AUTHENTICATOR: LazyLock<Authenticator> = LazyLock::new(|| {
    let mut auth = AuthConfig {
        providers: vec![ProviderConfig {
            issuer: ISSUER.into(),
            audiences: Vec::new(),
            algorithms: vec![Algorithm::EdDSA],
            jwks_url: None,
            jwks_file: None,
            public_key_pem: Some(public_key_pem()),
            public_key_file: None,
            hmac_secret_env: None,
            jwks_refresh: std::time::Duration::from_secs(300),
            jwks_min_refetch: std::time::Duration::from_secs(30),
        }],
        required_claims: vec!["sub".into()],
        ..AuthConfig::default()
    };
    // A nested claim path besides the default `sub`, `roles` and `tenant`.
    auth.claim_headers
        .insert("org.id".into(), "x-org-id".into());
    Authenticator::new(&auth).expect("the fixture's auth config is valid")
});

/// Options for uploaded sets: those a serving gateway builds with, less
/// the upstreams (an upload's services have none here).
pub(super) fn build_options(config: &Config) -> BuildOptions {
    BuildOptions {
        require_upstreams: false,
        ..BuildOptions::new(&config.descriptors, &config.filters, &config.deprecations)
    }
}

pub(super) fn catalog() -> &'static Arc<Catalog> {
    &CATALOG
}

/// The routes `keep` selects, and of those the one `selector` picks.
pub(super) fn route(selector: u8, keep: impl Fn(&Route) -> bool) -> Option<RouteMatch> {
    let catalog = catalog();
    let ids: Vec<RouteId> = (0..catalog.routes().len())
        .filter(|&i| keep(&catalog.routes()[i]))
        .filter_map(|i| RouteId::try_from(i).ok())
        .collect();
    let route = *ids.get(usize::from(selector) % ids.len().max(1))?;
    Some(RouteMatch {
        catalog: catalog.clone(),
        route,
        captures: Vec::new(),
    })
}

/// The print and parse options the bits of `bits` turn on.
pub(super) fn options(bits: u8) -> TranscodeOptions {
    let mut config = Config::default();
    config.json.emit_unpopulated = bits & 1 != 0;
    config.json.use_proto_field_names = bits & 2 != 0;
    config.json.enums_as_numbers = bits & 4 != 0;
    config.json.ignore_unknown_fields = bits & 8 != 0;
    config.query.ignore_unknown = bits & 16 != 0;
    if bits & 32 != 0 {
        config.filters.internal_input = InternalInput::Clear;
    }
    if bits & 64 != 0 {
        config.query.ignored = vec!["access_token".into()];
    }
    TranscodeOptions::new(&config.json, &config.query, &config.filters)
}

pub(super) fn authenticator() -> &'static Authenticator {
    &AUTHENTICATOR
}

/// The key that signs tokens the fixture's issuer accepts.
pub(super) fn signing_key() -> EncodingKey {
    // PKCS#8 v1 of an Ed25519 seed (RFC 8410).
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&SEED);
    EncodingKey::from_ed_der(&pkcs8)
}

fn public_key_pem() -> String {
    let public = ed25519_dalek::SigningKey::from_bytes(&SEED).verifying_key();
    // SubjectPublicKeyInfo of an Ed25519 key (RFC 8410).
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(public.as_bytes());
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(spki)
    )
}
