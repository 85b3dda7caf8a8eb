//! The YAML model of the edge policies: `auth`, `policies`, `rate_limit`,
//! `headers`, `cors` and `trusted_proxies`, their defaults and validation.
//! Every policy is off until its key is present.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use globset::Glob;
use http::{HeaderName, HeaderValue, Method};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;

use super::ConfigError;

/// JWT authentication: on when this key is present.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Token issuers; a token is checked by the provider whose `issuer` is its `iss`. At least one.
    pub providers: Vec<ProviderConfig>,
    /// Clock skew tolerated on `exp` and `nbf`. Default 30s.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Claims every token must carry. Default `[exp, sub]`.
    pub required_claims: Vec<String>,
    /// Claim (a dotted path such as `realm_access.roles`) → upstream metadata header.
    /// Default `{sub: x-user-id, roles: x-user-roles, tenant: x-tenant-id}`.
    pub claim_headers: BTreeMap<String, String>,
    /// Claim holding the caller's roles: an array, or a space- or comma-separated string. Default `roles`.
    pub roles_claim: String,
    /// Claim holding the caller's scopes, in the same forms. Default `scope`.
    pub scopes_claim: String,
}

/// One token issuer and where its keys come from: exactly one of `jwks_url`,
/// `jwks_file`, `public_key_pem`, `public_key_file`, `hmac_secret_env`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The `iss` claim of this provider's tokens.
    pub issuer: String,
    /// Accepted `aud` values; a token must name one. Default: none (`aud` not checked).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted `alg` values. Default: every algorithm of the key source's family.
    #[serde(default)]
    pub algorithms: Vec<Algorithm>,
    /// JWKS document over HTTP(S): fetched at start, on an interval and on an unknown `kid`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// JWKS document in a file, read at start.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A PEM public key (RSA, EC or Ed25519), inline.
    #[serde(default)]
    pub public_key_pem: Option<String>,
    /// A PEM public key in a file, read at start.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// Name of the environment variable holding the HMAC secret, read at start.
    #[serde(default)]
    pub hmac_secret_env: Option<String>,
    /// `jwks_url` only: how often the keys are refreshed. Default 5m.
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// `jwks_url` only: least time between two fetches caused by unknown `kid`s. Default 30s.
    #[serde(default = "default_jwks_min_refetch", with = "humantime_serde")]
    pub jwks_min_refetch: Duration,
}

/// A config override of the policy of the methods `method` matches. Fields
/// left out keep what the proto option (or an earlier rule) said; rules apply
/// in the order written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// A full method name (`acme.orders.v1.OrderService.GetOrder`) or a glob over
    /// them (`acme.orders.v1.OrderService.*`, `acme.*`).
    pub method: String,
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// The caller needs at least one of these roles.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// The caller needs every one of these scopes.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// A client certificate verified by the TLS listener (`tls.client_ca_file`)
    /// authenticates the caller in place of a token; roles and scopes still
    /// need a token. Default `false`.
    #[serde(default)]
    pub client_certificate: Option<bool>,
    /// Quotas of their own for these methods (buckets shared by all methods the rule matches).
    #[serde(default)]
    pub rate_limit: Option<QuotasConfig>,
}

/// Rate limiting: on when this key is present (or a policy rule sets quotas).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Quota of an authenticated caller, keyed by the token's issuer and subject. Default: none.
    pub per_user: Option<QuotaConfig>,
    /// Quota of an anonymous caller (and of failed authentications), keyed by client IP. Default: none.
    pub per_ip: Option<QuotaConfig>,
    /// Most clients remembered per bucket; beyond it new clients share one key. Default 100000.
    pub max_keys: usize,
    /// Where the buckets are counted: `local` (this instance, default) or
    /// `redis` (shared by every instance; needs `redis.url`).
    pub policy: RateLimitPolicy,
    /// With `policy: redis`, what a decision is while Redis does not answer:
    /// `local` (this instance's own buckets, default), `allow` or `deny`.
    pub on_redis_error: OnRedisError,
}

/// See [`RateLimitConfig::policy`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitPolicy {
    #[default]
    Local,
    Redis,
}

/// See [`RateLimitConfig::on_redis_error`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    #[default]
    Local,
    Allow,
    Deny,
}

/// The quotas a policy rule overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    pub per_user: Option<QuotaConfig>,
    pub per_ip: Option<QuotaConfig>,
}

/// `requests` per `per`, refilled evenly (GCRA), with bursts up to `requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub requests: u32,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

/// What travels upstream besides the request message, and back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersConfig {
    /// Metadata carrying the time the gateway received the request (`t=<unix ms>`);
    /// empty turns it off. Default `x-request-start`.
    pub request_start: String,
    /// Metadata sent on every upstream call. Default: none.
    #[serde(rename = "static")]
    pub static_headers: BTreeMap<String, String>,
    /// Client headers forwarded as metadata: names or globs (`x-tenant-*`).
    /// Hop-by-hop, `grpc-*` and identity headers never are. Default: none.
    pub forward: Vec<String>,
    /// Upstream response metadata returned as HTTP headers: names or globs. Default: none.
    pub response: Vec<String>,
}

/// CORS: on when this key is present; preflights are answered by the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`) or `*`. At least one.
    pub allowed_origins: Vec<String>,
    /// Default `[GET, POST, PUT, PATCH, DELETE]`.
    pub allowed_methods: Vec<String>,
    /// Default `[authorization, content-type, x-request-id, x-correlation-id]`.
    pub allowed_headers: Vec<String>,
    /// Response headers scripts may read. Default: the ids and the rate-limit headers.
    pub exposed_headers: Vec<String>,
    /// Allow cookies and `Authorization` from scripts; not with `*` origins. Default `false`.
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer. Default 10m.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_jwks_min_refetch() -> Duration {
    Duration::from_secs(30)
}

/// The identity headers of the defaults, stripped from every request whatever the config says.
pub(crate) const DEFAULT_CLAIM_HEADERS: [(&str, &str); 3] = [
    ("sub", "x-user-id"),
    ("roles", "x-user-roles"),
    ("tenant", "x-tenant-id"),
];

// === impl AuthConfig ===

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            leeway: Duration::from_secs(30),
            required_claims: vec!["exp".into(), "sub".into()],
            claim_headers: DEFAULT_CLAIM_HEADERS
                .iter()
                .map(|(claim, header)| ((*claim).to_owned(), (*header).to_owned()))
                .collect(),
            roles_claim: "roles".into(),
            scopes_claim: "scope".into(),
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_user: None,
            per_ip: None,
            max_keys: 100_000,
            policy: RateLimitPolicy::Local,
            on_redis_error: OnRedisError::Local,
        }
    }
}

impl Default for HeadersConfig {
    fn default() -> Self {
        Self {
            request_start: "x-request-start".into(),
            static_headers: BTreeMap::new(),
            forward: Vec::new(),
            response: Vec::new(),
        }
    }
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: ["GET", "POST", "PUT", "PATCH", "DELETE"]
                .map(str::to_owned)
                .to_vec(),
            allowed_headers: [
                "authorization",
                "content-type",
                "x-request-id",
                "x-correlation-id",
            ]
            .map(str::to_owned)
            .to_vec(),
            exposed_headers: [
                "x-request-id",
                "x-correlation-id",
                "retry-after",
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
            ]
            .map(str::to_owned)
            .to_vec(),
            allow_credentials: false,
            max_age: Duration::from_secs(600),
        }
    }
}

// === impl ProviderConfig ===

impl ProviderConfig {
    /// The family of the configured key source (`None` for JWKS, which may hold any).
    pub(crate) fn key_family(&self) -> Option<AlgorithmFamily> {
        self.hmac_secret_env.as_ref().map(|_| AlgorithmFamily::Hmac)
    }

    fn validate(&self) -> Result<(), String> {
        let sources = [
            self.jwks_url.is_some(),
            self.jwks_file.is_some(),
            self.public_key_pem.is_some(),
            self.public_key_file.is_some(),
            self.hmac_secret_env.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() != 1 {
            return Err("needs exactly one of jwks_url, jwks_file, public_key_pem, public_key_file, hmac_secret_env".into());
        }
        if self.issuer.is_empty() {
            return Err("issuer must not be empty".into());
        }
        if let Some(url) = &self.jwks_url {
            let uri: http::Uri = url
                .parse()
                .map_err(|err| format!("jwks_url `{url}` is invalid: {err}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(format!(
                    "jwks_url `{url}` must be an http:// or https:// URL"
                ));
            }
            if self.jwks_refresh.is_zero() {
                return Err("jwks_refresh must be greater than 0".into());
            }
        }
        // Algorithm confusion is refused at the door: an HMAC secret only
        // verifies HMAC algorithms, a public key never does.
        let hmac = self.key_family() == Some(AlgorithmFamily::Hmac);
        for alg in &self.algorithms {
            if (alg.family() == AlgorithmFamily::Hmac) != hmac {
                return Err(format!(
                    "algorithm {alg:?} does not fit the key source ({})",
                    if hmac {
                        "an HMAC secret"
                    } else {
                        "public keys"
                    }
                ));
            }
        }
        Ok(())
    }
}

// === impl QuotaConfig ===

impl QuotaConfig {
    fn validate(self) -> Result<(), String> {
        if self.requests == 0 {
            return Err("requests must be greater than 0".into());
        }
        if self.per.is_zero() {
            return Err("per must be greater than 0".into());
        }
        Ok(())
    }
}

/// Checks what serde cannot; each error names its key.
pub(crate) fn validate(config: &super::Config) -> Result<(), ConfigError> {
    let invalid = |key: String, reason: String| ConfigError::Invalid { key, reason };
    if let Some(auth) = &config.auth {
        if auth.providers.is_empty() {
            return Err(invalid(
                "auth.providers".into(),
                "at least one provider is needed".into(),
            ));
        }
        for (i, provider) in auth.providers.iter().enumerate() {
            provider
                .validate()
                .map_err(|reason| invalid(format!("auth.providers[{i}]"), reason))?;
            if auth.providers[..i]
                .iter()
                .any(|p| p.issuer == provider.issuer)
            {
                return Err(invalid(
                    format!("auth.providers[{i}].issuer"),
                    format!("`{}` is configured twice", provider.issuer),
                ));
            }
        }
        for (claim, header) in &auth.claim_headers {
            check_header_name(header)
                .map_err(|reason| invalid(format!("auth.claim_headers.{claim}"), reason))?;
        }
    }
    for (i, rule) in config.policies.iter().enumerate() {
        Glob::new(&rule.method)
            .map_err(|err| invalid(format!("policies[{i}].method"), err.to_string()))?;
        if let Some(quotas) = &rule.rate_limit {
            for (name, quota) in [("per_user", quotas.per_user), ("per_ip", quotas.per_ip)] {
                if let Some(quota) = quota {
                    quota.validate().map_err(|reason| {
                        invalid(format!("policies[{i}].rate_limit.{name}"), reason)
                    })?;
                }
            }
        }
    }
    if let Some(limits) = &config.rate_limit {
        for (name, quota) in [("per_user", limits.per_user), ("per_ip", limits.per_ip)] {
            if let Some(quota) = quota {
                quota
                    .validate()
                    .map_err(|reason| invalid(format!("rate_limit.{name}"), reason))?;
            }
        }
        if limits.max_keys == 0 {
            return Err(invalid(
                "rate_limit.max_keys".into(),
                "must be greater than 0".into(),
            ));
        }
        if limits.policy == RateLimitPolicy::Redis && config.redis.is_none() {
            return Err(invalid(
                "rate_limit.policy".into(),
                "`redis` needs `redis.url` (or `serve --redis URL`)".into(),
            ));
        }
    }
    let headers = &config.headers;
    if !headers.request_start.is_empty() {
        check_header_name(&headers.request_start)
            .map_err(|reason| invalid("headers.request_start".into(), reason))?;
    }
    for (name, value) in &headers.static_headers {
        check_header_name(name)
            .and_then(|()| {
                HeaderValue::from_str(value)
                    .map(drop)
                    .map_err(|_| format!("value `{value}` is not a valid header value"))
            })
            .map_err(|reason| invalid(format!("headers.static.{name}"), reason))?;
    }
    for (key, globs) in [
        ("headers.forward", &headers.forward),
        ("headers.response", &headers.response),
    ] {
        for (i, glob) in globs.iter().enumerate() {
            Glob::new(&glob.to_ascii_lowercase())
                .map_err(|err| invalid(format!("{key}[{i}]"), err.to_string()))?;
        }
    }
    if let Some(cors) = &config.cors {
        validate_cors(cors)?;
    }
    Ok(())
}

fn validate_cors(cors: &CorsConfig) -> Result<(), ConfigError> {
    let invalid = |key: String, reason: String| ConfigError::Invalid { key, reason };
    if cors.allowed_origins.is_empty() {
        return Err(invalid(
            "cors.allowed_origins".into(),
            "at least one origin (or `*`) is needed".into(),
        ));
    }
    let any_origin = cors.allowed_origins.iter().any(|o| o == "*");
    if any_origin && cors.allowed_origins.len() > 1 {
        return Err(invalid(
            "cors.allowed_origins".into(),
            "`*` cannot be combined with other origins".into(),
        ));
    }
    if any_origin && cors.allow_credentials {
        return Err(invalid(
            "cors.allow_credentials".into(),
            "browsers refuse credentials with `*` origins: list the origins".into(),
        ));
    }
    for (i, origin) in cors.allowed_origins.iter().enumerate() {
        HeaderValue::from_str(origin).map_err(|_| {
            invalid(
                format!("cors.allowed_origins[{i}]"),
                format!("`{origin}` is not a valid origin"),
            )
        })?;
    }
    for (i, method) in cors.allowed_methods.iter().enumerate() {
        Method::from_bytes(method.as_bytes()).map_err(|_| {
            invalid(
                format!("cors.allowed_methods[{i}]"),
                format!("`{method}` is not an HTTP method"),
            )
        })?;
    }
    for (key, names) in [
        ("cors.allowed_headers", &cors.allowed_headers),
        ("cors.exposed_headers", &cors.exposed_headers),
    ] {
        for (i, name) in names.iter().enumerate() {
            check_header_name(name).map_err(|reason| invalid(format!("{key}[{i}]"), reason))?;
        }
    }
    Ok(())
}

fn check_header_name(name: &str) -> Result<(), String> {
    HeaderName::from_bytes(name.as_bytes())
        .map(drop)
        .map_err(|_| format!("`{name}` is not a valid header name"))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn error(yaml: &str) -> String {
        Config::from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn provider_needs_exactly_one_key_source() {
        let err = error("auth: { providers: [{ issuer: a }] }");
        assert!(
            err.starts_with("auth.providers[0]: needs exactly one"),
            "{err}"
        );
        let err =
            error("auth: { providers: [{ issuer: a, jwks_file: k.json, hmac_secret_env: S }] }");
        assert!(err.contains("exactly one"), "{err}");
    }

    #[test]
    fn hmac_algorithm_on_a_public_key_is_refused() {
        let err = error(
            "auth: { providers: [{ issuer: a, jwks_url: 'https://x/jwks', algorithms: [RS256, HS256] }] }",
        );
        assert!(err.contains("HS256 does not fit"), "{err}");
        let err =
            error("auth: { providers: [{ issuer: a, hmac_secret_env: S, algorithms: [RS256] }] }");
        assert!(err.contains("RS256 does not fit"), "{err}");
    }

    #[test]
    fn unknown_algorithm_is_named_with_its_line() {
        let err = error(
            "auth:\n  providers:\n    - { issuer: a, hmac_secret_env: S, algorithms: [none] }\n",
        );
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn credentials_with_any_origin_are_refused() {
        let err = error("cors: { allowed_origins: ['*'], allow_credentials: true }");
        assert!(err.starts_with("cors.allow_credentials"), "{err}");
    }

    #[test]
    fn zero_quota_and_bad_globs_are_named() {
        let err = error("rate_limit: { per_ip: { requests: 0, per: 1m } }");
        assert!(err.starts_with("rate_limit.per_ip"), "{err}");
        let err = error("policies: [{ method: 'acme.[' }]");
        assert!(err.starts_with("policies[0].method"), "{err}");
        let err = error("headers: { static: { 'bad header': x } }");
        assert!(err.starts_with("headers.static.bad header"), "{err}");
    }

    #[test]
    fn trusted_proxies_must_be_networks() {
        let err = error("trusted_proxies: ['10.0.0.0/33']");
        assert!(err.contains("trusted_proxies"), "{err}");
        let config = Config::from_yaml("trusted_proxies: ['10.0.0.0/8', '::1/128']").unwrap();
        assert_eq!(config.trusted_proxies.len(), 2);
    }
}
