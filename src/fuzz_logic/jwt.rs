//! `Authorization` headers: the token's header and claims read before its
//! signature is checked, then the verified claims made into an identity.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use http::{header, HeaderMap, HeaderValue};
use jsonwebtoken::Algorithm;
use serde_json::Value as Json;

use super::{fixture, ready};

/// Any header value is refused with a reason or names a caller.
pub(super) fn header(value: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    identify(value);
}

/// A token whose header and claims are the fuzzer's JSON, signed with the
/// fixture issuer's key, so that the checks after the signature run too:
/// the identity it gives is the one its claims name.
pub(super) fn signed(header: &[u8], claims: &[u8]) {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &fixture::signing_key(),
        Algorithm::EdDSA,
    )
    .expect("an Ed25519 key signs");
    let value = HeaderValue::from_str(&format!("Bearer {signing_input}.{signature}"))
        .expect("base64url is header text");
    let Some(identity) = identify(value) else {
        return;
    };
    let claims: Json = serde_json::from_slice(claims).expect("verified claims are JSON");
    let subject = claims.get("sub").and_then(Json::as_str).unwrap_or_default();
    assert_eq!(&*identity.subject, subject, "the subject of {claims}");
}

fn identify(value: HeaderValue) -> Option<crate::policy::Identity> {
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value);
    let identity = ready(fixture::authenticator().identify(&headers)).ok()??;
    for (name, value) in identity.metadata.iter() {
        assert!(
            value.to_str().is_ok(),
            "{name}: {value:?} is not visible ASCII"
        );
    }
    Some(identity)
}
