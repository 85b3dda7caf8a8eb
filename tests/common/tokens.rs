//! Signed test tokens: EC P-256 keys generated per test (p256), the RSA
//! fixture key, HMAC secrets, and the claims a token usually carries.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::{elliptic_curve::sec1::ToEncodedPoint as _, pkcs8::EncodePrivateKey as _};
use serde_json::{json, Value as Json};

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "protogate-tests";

/// A fresh ES256 key with its `kid`.
pub struct EcKey {
    pub kid: String,
    encoding: EncodingKey,
    point: Vec<u8>,
}

impl EcKey {
    pub fn generate(kid: &str) -> Self {
        let key = p256::SecretKey::random(&mut rand_core::OsRng);
        let pkcs8 = key.to_pkcs8_der().unwrap();
        Self {
            kid: kid.into(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_bytes()),
            point: key.public_key().to_encoded_point(false).as_bytes().to_vec(),
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Json {
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&self.point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&self.point[33..65]),
        })
    }

    /// The public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> String {
        // The fixed DER prefix of a P-256 SubjectPublicKeyInfo, then the point.
        let mut der = hex_bytes("3059301306072a8648ce3d020106082a8648ce3d030107034200");
        der.extend_from_slice(&self.point);
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    pub fn sign(&self, claims: &Json) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// A JWKS document of `keys`.
pub fn jwks(keys: &[&EcKey]) -> Json {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

/// An HMAC-signed token.
pub fn hmac(alg: Algorithm, secret: &[u8], claims: &Json) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// An RS256 token signed with tests/fixtures/rsa-private.pem.
pub fn rsa(claims: &Json) -> String {
    let pem = include_bytes!("../fixtures/rsa-private.pem");
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(pem).unwrap(),
    )
    .unwrap()
}

/// A token with `alg: none` and no signature.
pub fn unsigned(claims: &Json) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Good claims for `sub` with `roles`, valid for an hour.
pub fn claims(sub: &str, roles: &[&str]) -> Json {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles,
        "tenant": "acme", "iat": now(), "exp": now() + 3600,
    })
}

/// `claims` with `changes` merged over (a `null` removes the claim).
pub fn with(mut claims: Json, changes: Json) -> Json {
    let Json::Object(changes) = changes else {
        panic!("changes must be an object: {changes}")
    };
    for (key, value) in changes {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(&key);
        } else {
            claims[key] = value;
        }
    }
    claims
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}
