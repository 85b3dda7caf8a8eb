//! JWT authentication and coarse authorization (step 10).
//!
//! `Authorization: Bearer <jwt>` → the provider named by the token's `iss` →
//! its key (by `kid`) → signature, `exp`, `nbf`, `iss`, `aud` and required
//! claims → [`Identity`] in the request extensions. The method's
//! [`RoutePolicy`] then decides: no identity on a route that needs one → 401,
//! a missing role or scope → 403. Refused outright: `alg: none`, an algorithm
//! the provider does not allow, and an algorithm of another family than the
//! key (an HMAC token checked against a public key: algorithm confusion).

use std::{fmt, sync::Arc};

use axum::extract::Request;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use http::{header, HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{errors::ErrorKind, Algorithm, AlgorithmFamily, DecodingKey, Validation};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::{Map, Value as Json};

use super::{
    jwks::{JwksCache, KeySet, Keys},
    RoutePolicy, SetupError,
};
use crate::{
    config::{AuthConfig, ProviderConfig},
    error::Error,
    observe::RequestContext,
};

/// The claims JWT libraries call registered; jsonwebtoken checks their presence itself.
const SPEC_CLAIMS: [&str; 5] = ["exp", "nbf", "aud", "iss", "sub"];

/// Claim values that are not valid header text are percent-encoded (UTF-8).
const CLAIM_VALUE_ESCAPES: &AsciiSet = &CONTROLS.add(b'%');

/// Verifies tokens and tells who the caller is.
#[derive(Debug)]
pub struct Authenticator {
    providers: Box<[Provider]>,
    /// Required claims jsonwebtoken does not check (those outside [`SPEC_CLAIMS`]).
    required_custom: Box<[ClaimPath]>,
    claim_headers: Box<[(ClaimPath, HeaderName)]>,
    roles_claim: ClaimPath,
    scopes_claim: ClaimPath,
}

#[derive(Debug)]
struct Provider {
    /// Shared by the identities it verifies: half of their rate-limit key.
    issuer: Arc<str>,
    /// One validation per accepted algorithm (jsonwebtoken wants the algorithm
    /// list to match the key's family), built at start.
    validations: Box<[(Algorithm, Validation)]>,
    keys: Keys,
}

/// A dotted claim path (`realm_access.roles`), split once at start.
#[derive(Debug, Clone)]
struct ClaimPath(Box<[Box<str>]>);

/// The verified caller, stored in the request extensions.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `iss`: two issuers' users of the same `sub` are two users.
    pub issuer: Arc<str>,
    /// The token's `sub`; with the issuer, the rate-limit key of authenticated calls.
    pub subject: Arc<str>,
    pub roles: Box<[Box<str>]>,
    pub scopes: Box<[Box<str>]>,
    /// Claims mapped to upstream metadata (`x-user-id`, ...), computed once.
    pub metadata: Box<[(HeaderName, HeaderValue)]>,
}

/// Why a token was refused. The messages never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("expected `Authorization: Bearer <token>`")]
    NotBearer,
    #[error("malformed token")]
    Malformed,
    #[error("unsigned tokens (alg `none`) are not accepted")]
    Unsigned,
    #[error("algorithm {0} is not accepted")]
    Algorithm(Box<str>),
    #[error("algorithm {0} does not match the key")]
    AlgorithmMismatch(Box<str>),
    #[error("unknown issuer")]
    UnknownIssuer,
    #[error("no key matches the token's kid")]
    UnknownKey,
    #[error("invalid signature")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is not meant for this audience")]
    Audience,
    #[error("missing required claim `{0}`")]
    MissingClaim(Box<str>),
    #[error("invalid claim `{0}`")]
    InvalidClaim(Box<str>),
}

impl AuthError {
    /// A bounded label for `protogate_auth_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::NotBearer => "not_bearer",
            Self::Malformed => "malformed",
            Self::Unsigned => "unsigned",
            Self::Algorithm(_) => "algorithm",
            Self::AlgorithmMismatch(_) => "algorithm_mismatch",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKey => "unknown_key",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Audience => "audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
        }
    }
}

/// Step 10: who calls, and may they call what `policy` guards (the matched
/// method, or the published API)? A verified caller's [`Identity`] goes into
/// the request (and its subject into the request context) for the steps after.
/// Without a token, the identity of a verified client certificate (put there
/// by the TLS listener) stands in where the policy accepts it; a token always
/// wins.
pub async fn authenticate(
    auth: &Authenticator,
    policy: &RoutePolicy,
    request: &mut Request,
) -> Result<(), Error> {
    let identity = match auth.identify(request.headers()).await {
        Ok(identity) => identity.map(Arc::new),
        Err(refused) => {
            if let Some(context) = RequestContext::of(request) {
                context.set_refused_token(refused.reason());
            }
            return Err(refused.into());
        }
    };
    let identity = identity.or_else(|| {
        policy
            .client_certificate
            .then(|| request.extensions().get::<Arc<Identity>>().cloned())
            .flatten()
    });
    authorize(policy, identity.as_deref())?;
    if let Some(identity) = identity {
        if let Some(context) = request.extensions().get::<Arc<RequestContext>>() {
            context.set_consumer(identity.subject.clone());
        }
        request.extensions_mut().insert(identity);
    }
    Ok(())
}

/// The policy's verdict on the caller.
fn authorize(policy: &RoutePolicy, identity: Option<&Identity>) -> Result<(), Error> {
    let Some(identity) = identity else {
        return if policy.allow_anonymous {
            Ok(())
        } else {
            Err(AuthError::Missing.into())
        };
    };
    if !policy.roles.is_empty() && !policy.roles.iter().any(|r| identity.roles.contains(r)) {
        return Err(Error::PermissionDenied(
            format!("requires one of the roles: {}", policy.roles.join(", ")).into(),
        ));
    }
    let missing: Vec<&str> = policy
        .scopes
        .iter()
        .filter(|s| !identity.scopes.contains(s))
        .map(|s| &**s)
        .collect();
    if !missing.is_empty() {
        return Err(Error::PermissionDenied(
            format!("requires the scopes: {}", missing.join(", ")).into(),
        ));
    }
    Ok(())
}

// === impl Authenticator ===

impl Authenticator {
    /// Reads every key source (JWKS URLs are fetched by a background task).
    pub fn new(config: &AuthConfig) -> Result<Self, SetupError> {
        let needs_client = config.providers.iter().any(|p| p.jwks_url.is_some());
        let client = if needs_client {
            Some(
                reqwest::Client::builder()
                    .build()
                    .map_err(|err| SetupError {
                        key: "auth.providers".into(),
                        reason: format!("cannot build the JWKS HTTP client: {err}"),
                    })?,
            )
        } else {
            None
        };
        let (spec, custom): (Vec<&str>, Vec<&str>) = config
            .required_claims
            .iter()
            .map(String::as_str)
            .partition(|c| SPEC_CLAIMS.contains(c));
        let checks = Checks {
            leeway: config.leeway.as_secs(),
            required_spec: spec,
        };
        let providers = config
            .providers
            .iter()
            .enumerate()
            .map(|(i, provider)| {
                Provider::new(provider, client.as_ref(), &checks).map_err(|reason| SetupError {
                    key: format!("auth.providers[{i}]"),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        let mut claim_headers = Vec::with_capacity(config.claim_headers.len());
        for (claim, header) in &config.claim_headers {
            let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| SetupError {
                key: format!("auth.claim_headers.{claim}"),
                reason: format!("`{header}` is not a valid header name"),
            })?;
            claim_headers.push((ClaimPath::new(claim), name));
        }
        Ok(Self {
            providers,
            required_custom: custom.iter().map(|c| ClaimPath::new(c)).collect(),
            claim_headers: claim_headers.into_boxed_slice(),
            roles_claim: ClaimPath::new(&config.roles_claim),
            scopes_claim: ClaimPath::new(&config.scopes_claim),
        })
    }

    /// The caller's identity: `None` without an `Authorization` header.
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Option<Identity>, AuthError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let token = bearer_token(value)?;
        let unverified = Unverified::parse(token)?;
        let provider = self
            .providers
            .iter()
            .find(|p| Some(&*p.issuer) == unverified.issuer.as_deref())
            .ok_or(AuthError::UnknownIssuer)?;
        let Some((_, validation)) = provider
            .validations
            .iter()
            .find(|(alg, _)| *alg == unverified.algorithm)
        else {
            return Err(AuthError::Algorithm(
                format!("{:?}", unverified.algorithm).into(),
            ));
        };
        let key = provider
            .keys
            .find(unverified.kid.as_deref())
            .await
            .ok_or(AuthError::UnknownKey)?;
        if key.family() != unverified.algorithm.family() {
            return Err(AuthError::AlgorithmMismatch(
                format!("{:?}", unverified.algorithm).into(),
            ));
        }
        let claims = verify(token, unverified.algorithm, &key, validation)?;
        self.identity(&provider.issuer, &claims).map(Some)
    }

    fn identity(
        &self,
        issuer: &Arc<str>,
        claims: &Map<String, Json>,
    ) -> Result<Identity, AuthError> {
        if let Some(missing) = self
            .required_custom
            .iter()
            .find(|path| path.get(claims).is_none_or(Json::is_null))
        {
            return Err(AuthError::MissingClaim(missing.to_string().into()));
        }
        let subject = match claims.get("sub") {
            None => "",
            Some(Json::String(sub)) => sub,
            Some(_) => return Err(AuthError::InvalidClaim("sub".into())),
        };
        let metadata = self
            .claim_headers
            .iter()
            .filter_map(|(path, name)| Some((name.clone(), header_value(path.get(claims)?)?)))
            .collect();
        Ok(Identity {
            issuer: issuer.clone(),
            subject: subject.into(),
            roles: list(self.roles_claim.get(claims)),
            scopes: list(self.scopes_claim.get(claims)),
            metadata,
        })
    }
}

/// Checks the signature and the claims jsonwebtoken knows.
fn verify(
    token: &str,
    algorithm: Algorithm,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Map<String, Json>, AuthError> {
    let data = jsonwebtoken::decode::<Map<String, Json>>(token, key, validation).map_err(
        |err| match err.into_kind() {
            ErrorKind::InvalidSignature => AuthError::Signature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidAudience => AuthError::Audience,
            ErrorKind::InvalidIssuer => AuthError::UnknownIssuer,
            ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.into()),
            ErrorKind::InvalidClaimFormat(claim) => AuthError::InvalidClaim(claim.into()),
            ErrorKind::InvalidAlgorithm => {
                AuthError::AlgorithmMismatch(format!("{algorithm:?}").into())
            }
            _ => AuthError::Malformed,
        },
    )?;
    Ok(data.claims)
}

/// The claim checks shared by every provider.
struct Checks<'a> {
    leeway: u64,
    required_spec: Vec<&'a str>,
}

// === impl Provider ===

impl Provider {
    fn new(
        config: &ProviderConfig,
        client: Option<&reqwest::Client>,
        checks: &Checks<'_>,
    ) -> Result<Self, String> {
        let (keys, family) = if let Some(url) = &config.jwks_url {
            let client = client.ok_or("no HTTP client for jwks_url")?.clone();
            let cache = JwksCache::start(
                client,
                url.clone(),
                config.jwks_refresh,
                config.jwks_min_refetch,
            );
            (Keys::Remote(cache), None)
        } else if let Some(path) = &config.jwks_file {
            let bytes = std::fs::read(path)
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            let set = KeySet::from_jwks(&bytes)
                .map_err(|err| format!("{} is not a usable JWKS: {err}", path.display()))?;
            (Keys::Static(set), None)
        } else if let Some(env) = &config.hmac_secret_env {
            let secret = std::env::var(env)
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("environment variable {env} is not set"))?;
            (
                Keys::Static(KeySet::single(DecodingKey::from_secret(secret.as_bytes()))),
                Some(AlgorithmFamily::Hmac),
            )
        } else {
            let pem = match (&config.public_key_pem, &config.public_key_file) {
                (Some(pem), _) => pem.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|err| format!("cannot read {}: {err}", path.display()))?,
                (None, None) => return Err("no key source".into()),
            };
            let key = public_key(pem.as_bytes())?;
            let family = key.family();
            (Keys::Static(KeySet::single(key)), Some(family))
        };
        let algorithms = if config.algorithms.is_empty() {
            default_algorithms(family)
        } else {
            config.algorithms.clone()
        };
        if let Some(family) = family {
            if let Some(alg) = algorithms.iter().find(|a| a.family() != family) {
                return Err(format!("algorithm {alg:?} does not fit the {family:?} key"));
            }
        }
        let validations = algorithms
            .into_iter()
            .map(|algorithm| {
                let mut validation = Validation::new(algorithm);
                validation.leeway = checks.leeway;
                validation.validate_nbf = true;
                validation.set_issuer(&[&config.issuer]);
                // A claim the provider checks must be there: jsonwebtoken
                // checks `iss` and `aud` only when a token carries them.
                let mut required = checks.required_spec.clone();
                required.push("iss");
                if config.audiences.is_empty() {
                    validation.validate_aud = false;
                } else {
                    validation.set_audience(&config.audiences);
                    required.push("aud");
                }
                validation.set_required_spec_claims(&required);
                (algorithm, validation)
            })
            .collect();
        Ok(Self {
            issuer: config.issuer.as_str().into(),
            validations,
            keys,
        })
    }
}

/// A PEM public key of any supported type.
fn public_key(pem: &[u8]) -> Result<DecodingKey, String> {
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .map_err(|_| "public key is not an RSA, EC or Ed25519 PEM public key".into())
}

/// Every algorithm of the key's family; public-key families for JWKS.
fn default_algorithms(family: Option<AlgorithmFamily>) -> Vec<Algorithm> {
    use Algorithm::*;
    match family {
        Some(AlgorithmFamily::Hmac) => vec![HS256, HS384, HS512],
        Some(AlgorithmFamily::Rsa) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        Some(AlgorithmFamily::Ec) => vec![ES256, ES384],
        Some(AlgorithmFamily::Ed) => vec![EdDSA],
        None => vec![
            RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
        ],
    }
}

fn bearer_token(value: &HeaderValue) -> Result<&str, AuthError> {
    let text = value.to_str().map_err(|_| AuthError::NotBearer)?;
    let (scheme, token) = text.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::NotBearer);
    }
    Ok(token.trim())
}

/// What is read from a token before its signature is checked: only to pick
/// the provider, the algorithm and the key.
struct Unverified {
    algorithm: Algorithm,
    kid: Option<String>,
    issuer: Option<String>,
}

impl Unverified {
    fn parse(token: &str) -> Result<Self, AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let decode = |part: &str| -> Result<Map<String, Json>, AuthError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| AuthError::Malformed)?;
            serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
        };
        let header = decode(header)?;
        let alg = header
            .get("alg")
            .and_then(Json::as_str)
            .ok_or(AuthError::Malformed)?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(AuthError::Unsigned);
        }
        let algorithm = alg
            .parse::<Algorithm>()
            .map_err(|_| AuthError::Algorithm("(unsupported)".into()))?;
        let claims = decode(payload)?;
        Ok(Self {
            algorithm,
            kid: header.get("kid").and_then(Json::as_str).map(str::to_owned),
            issuer: claims.get("iss").and_then(Json::as_str).map(str::to_owned),
        })
    }
}

// === impl ClaimPath ===

impl ClaimPath {
    fn new(path: &str) -> Self {
        Self(path.split('.').map(Into::into).collect())
    }

    fn get<'a>(&self, claims: &'a Map<String, Json>) -> Option<&'a Json> {
        let (first, rest) = self.0.split_first()?;
        rest.iter()
            .try_fold(claims.get(&**first)?, |value, key| value.get(&**key))
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// Roles or scopes: an array of strings, or one space- or comma-separated string.
fn list(value: Option<&Json>) -> Box<[Box<str>]> {
    match value {
        Some(Json::Array(items)) => items
            .iter()
            .filter_map(Json::as_str)
            .map(Into::into)
            .collect(),
        Some(Json::String(text)) => text
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(Into::into)
            .collect(),
        _ => Box::default(),
    }
}

/// A claim as header text: strings as they are, arrays comma-joined, numbers
/// and booleans printed; non-ASCII is percent-encoded. Objects and nulls are skipped.
fn header_value(value: &Json) -> Option<HeaderValue> {
    let text = match value {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        Json::Bool(b) => b.to_string(),
        Json::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Json::String(s) => Some(s.clone()),
                Json::Number(_) | Json::Bool(_) => Some(item.to_string()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(","),
        Json::Null | Json::Object(_) => return None,
    };
    HeaderValue::from_str(&utf8_percent_encode(&text, CLAIM_VALUE_ESCAPES).to_string()).ok()
}

/// A refused token is a 401 that names the refusal in `WWW-Authenticate`.
impl From<AuthError> for Error {
    fn from(refused: AuthError) -> Self {
        Self::Unauthenticated {
            challenge: www_authenticate(&refused),
            reason: refused.reason(),
            message: refused.to_string().into(),
        }
    }
}

/// `WWW-Authenticate` for a 401 (RFC 6750 §3): no error code when no token was sent.
fn www_authenticate(err: &AuthError) -> HeaderValue {
    if *err == AuthError::Missing {
        return HeaderValue::from_static(r#"Bearer realm="protogate""#);
    }
    // Our messages hold no quotes; the filter keeps it that way.
    let description: String = err
        .to_string()
        .chars()
        .map(|c| if c == '"' || c == '\\' { '\'' } else { c })
        .collect();
    HeaderValue::from_str(&format!(
        r#"Bearer realm="protogate", error="invalid_token", error_description="{description}""#
    ))
    .unwrap_or(HeaderValue::from_static(
        r#"Bearer realm="protogate", error="invalid_token""#,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: Json) -> Map<String, Json> {
        match json {
            Json::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn nested_claim_paths_resolve() {
        let claims = claims(serde_json::json!({"realm_access": {"roles": ["a", "b"]}}));
        let path = ClaimPath::new("realm_access.roles");
        assert_eq!(&*list(path.get(&claims)), [Box::from("a"), Box::from("b")]);
        assert!(ClaimPath::new("realm_access.none").get(&claims).is_none());
    }

    #[test]
    fn scopes_split_on_spaces_and_commas() {
        let value = Json::String("read write,admin".into());
        assert_eq!(list(Some(&value)).len(), 3);
    }

    #[test]
    fn claim_values_become_header_text() {
        assert_eq!(
            header_value(&serde_json::json!(["a", "b", 3])).unwrap(),
            "a,b,3"
        );
        assert_eq!(header_value(&serde_json::json!("Zoë")).unwrap(), "Zo%C3%AB");
        assert_eq!(
            header_value(&serde_json::json!("a\r\nb")).unwrap(),
            "a%0D%0Ab"
        );
        assert!(header_value(&serde_json::json!({"a": 1})).is_none());
    }

    #[test]
    fn only_bearer_tokens_are_read() {
        let ok = HeaderValue::from_static("bearer abc");
        assert_eq!(bearer_token(&ok).unwrap(), "abc");
        for bad in ["Basic abc", "Bearer ", "Bearer"] {
            assert_eq!(
                bearer_token(&HeaderValue::from_static(bad)).unwrap_err(),
                AuthError::NotBearer,
                "{bad}"
            );
        }
    }

    #[test]
    fn unsigned_and_garbled_tokens_are_refused_before_any_key() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#);
        let token = format!("{header}.{payload}.");
        assert_eq!(Unverified::parse(&token).err(), Some(AuthError::Unsigned));
        assert_eq!(Unverified::parse("a.b").err(), Some(AuthError::Malformed));
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"XS999\""}"#);
        let token = format!("{header}.{payload}.sig");
        assert_eq!(
            Unverified::parse(&token).err(),
            Some(AuthError::Algorithm("(unsupported)".into()))
        );
    }

    #[test]
    fn www_authenticate_follows_rfc_6750() {
        assert_eq!(
            www_authenticate(&AuthError::Missing),
            r#"Bearer realm="protogate""#
        );
        assert_eq!(
            www_authenticate(&AuthError::Expired),
            r#"Bearer realm="protogate", error="invalid_token", error_description="token has expired""#
        );
    }
}
