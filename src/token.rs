//! Test tokens signed with a local key: what `protogate token` mints and the
//! demo prints. Not an identity provider: for trying a gateway whose `auth`
//! trusts the matching public key (or HMAC secret).

use std::{path::Path, time::Duration};

use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{json, Map, Value};

/// A private key (or HMAC secret) and the algorithm it signs with.
pub struct SigningKey {
    key: EncodingKey,
    algorithm: Algorithm,
}

/// What a test token says.
#[derive(Debug, Clone)]
pub struct Claims {
    /// `iss`: the gateway picks the provider whose `issuer` it is.
    pub issuer: String,
    pub subject: String,
    /// `aud`: one value as a string, several as an array, none left out.
    pub audiences: Vec<String>,
    /// The `roles` claim (the gateway's default `auth.roles_claim`).
    pub roles: Vec<String>,
    /// From now to `exp`.
    pub lifetime: Duration,
    /// More claims, e.g. `tenant`.
    pub extra: Map<String, Value>,
}

/// Why a token cannot be minted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Key(String),
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

// === impl SigningKey ===

impl SigningKey {
    /// A PEM private key (RSA, EC or Ed25519; PKCS#1, SEC1 or PKCS#8), or
    /// else an HMAC secret: the file's bytes without a final newline, as
    /// `export SECRET=$(cat FILE)` would set it. The algorithm defaults to
    /// RS256, ES256, EdDSA or HS256 by the key's family.
    pub fn from_file(path: &Path, algorithm: Option<Algorithm>) -> Result<Self, TokenError> {
        let bytes = std::fs::read(path).map_err(|source| TokenError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let key = if bytes.starts_with(b"-----BEGIN") {
            EncodingKey::from_rsa_pem(&bytes)
                .or_else(|_| EncodingKey::from_ec_pem(&bytes))
                .or_else(|_| EncodingKey::from_ed_pem(&bytes))
                .map_err(|err| {
                    TokenError::Key(format!(
                        "{} is not an RSA, EC or Ed25519 private key: {err}",
                        path.display()
                    ))
                })?
        } else {
            let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
            if secret.is_empty() {
                return Err(TokenError::Key(format!(
                    "{} holds no secret",
                    path.display()
                )));
            }
            EncodingKey::from_secret(secret)
        };
        let family = key.family();
        let algorithm = algorithm.unwrap_or(match family {
            AlgorithmFamily::Hmac => Algorithm::HS256,
            AlgorithmFamily::Rsa => Algorithm::RS256,
            AlgorithmFamily::Ec => Algorithm::ES256,
            AlgorithmFamily::Ed => Algorithm::EdDSA,
        });
        if algorithm.family() != family {
            return Err(TokenError::Key(format!(
                "{algorithm:?} does not fit the key in {} ({family:?})",
                path.display()
            )));
        }
        Ok(Self { key, algorithm })
    }

    /// A P-256 key in PKCS#8 DER, signing ES256.
    pub(crate) fn es256(pkcs8: &[u8]) -> Self {
        Self {
            key: EncodingKey::from_ec_der(pkcs8),
            algorithm: Algorithm::ES256,
        }
    }

    /// A compact JWT of `claims`, issued now; `kid` goes in its header.
    pub fn sign(&self, claims: &Claims, kid: Option<&str>) -> Result<String, TokenError> {
        let now = jsonwebtoken::get_current_timestamp();
        let mut body = claims.extra.clone();
        body.extend([
            ("iss".to_owned(), json!(claims.issuer)),
            ("sub".to_owned(), json!(claims.subject)),
            ("roles".to_owned(), json!(claims.roles)),
            ("iat".to_owned(), json!(now)),
            (
                "exp".to_owned(),
                json!(now.saturating_add(claims.lifetime.as_secs())),
            ),
        ]);
        let audience = match claims.audiences.as_slice() {
            [] => None,
            [one] => Some(json!(one)),
            many => Some(json!(many)),
        };
        if let Some(audience) = audience {
            body.insert("aud".to_owned(), audience);
        }
        let mut header = Header::new(self.algorithm);
        header.kid = kid.map(str::to_owned);
        Ok(jsonwebtoken::encode(&header, &body, &self.key)?)
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    fn claims() -> Claims {
        Claims {
            issuer: "issuer".into(),
            subject: "alice".into(),
            audiences: vec!["api".into()],
            roles: vec!["admin".into()],
            lifetime: Duration::from_secs(3600),
            extra: Map::new(),
        }
    }

    #[test]
    fn a_secret_file_signs_hs256_with_its_final_newline_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        let token = SigningKey::from_file(&path, None)
            .unwrap()
            .sign(&claims(), Some("k1"))
            .unwrap();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&["api"]);
        validation.set_issuer(&["issuer"]);
        let decoded = jsonwebtoken::decode::<Value>(
            &token,
            &DecodingKey::from_secret(b"s3cret"),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.header.kid.as_deref(), Some("k1"));
        let body = decoded.claims;
        assert_eq!(
            (&body["sub"], &body["aud"]),
            (&json!("alice"), &json!("api"))
        );
        assert_eq!(body["roles"], json!(["admin"]));
        let lifetime = body["exp"].as_u64().unwrap() - body["iat"].as_u64().unwrap();
        assert_eq!(lifetime, 3600);
    }

    #[test]
    fn an_algorithm_of_another_family_than_the_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret").unwrap();
        let err = SigningKey::from_file(&path, Some(Algorithm::RS256)).unwrap_err();
        assert!(
            err.to_string().starts_with("RS256 does not fit the key"),
            "{err}"
        );
        std::fs::write(&path, "\n").unwrap();
        let err = SigningKey::from_file(&path, None).unwrap_err();
        assert!(err.to_string().ends_with("holds no secret"), "{err}");
    }
}
