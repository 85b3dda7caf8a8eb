//! The listener's certificates: each chain with its key, checked when read
//! (key and certificate match, not expired), and chosen per handshake by the
//! client's SNI among the DNS names of each certificate, the first one when
//! none matches.

use std::{collections::HashMap, sync::Arc};

use rustls::{
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName};

use super::{LoadedCertificate, TlsError};
use crate::{config::CertificateConfig, pem};

/// The certificates of one load, immutable; a reload builds new ones.
#[derive(Debug)]
pub(crate) struct Certificates {
    /// By lower-case DNS name.
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// `*.example.com` under `example.com`: one label of any name.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// Each certificate file and when its leaf expires.
    pub(super) loaded: Box<[LoadedCertificate]>,
}

// === impl Certificates ===

impl Certificates {
    /// Reads every configured certificate, refusing one that is unreadable,
    /// whose key does not match, or that has expired at `now` (Unix seconds).
    /// An earlier certificate keeps a name two of them share.
    pub(crate) fn load(
        configs: &[CertificateConfig],
        provider: &CryptoProvider,
        now: i64,
    ) -> Result<Self, TlsError> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        let mut loaded = Vec::with_capacity(configs.len());
        for config in configs {
            let path = &config.cert_file;
            let chain = pem::certificates(path)?;
            let key = pem::private_key(&config.key_file)?;
            let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
                .map_err(|err| TlsError::file(path, format!("not an X.509 certificate: {err}")))?;
            let expires = leaf.validity().not_after.timestamp();
            if expires < now {
                return Err(TlsError::file(
                    path,
                    format!("expired at {}", leaf.validity().not_after),
                ));
            }
            let names = dns_names(&leaf).map_err(|reason| TlsError::file(path, reason))?;
            let certified = CertifiedKey::from_der(chain, key, provider).map_err(|err| {
                TlsError::file(
                    &config.key_file,
                    format!("does not fit {}: {err}", path.display()),
                )
            })?;
            let certified = Arc::new(certified);
            for name in names {
                let (map, name) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, name.as_str()),
                };
                map.entry(name.into()).or_insert_with(|| certified.clone());
            }
            default.get_or_insert_with(|| certified.clone());
            loaded.push(LoadedCertificate {
                cert_file: path.clone(),
                expires,
            });
        }
        let default = default.ok_or_else(|| TlsError::Config("no certificate".into()))?;
        Ok(Self {
            exact,
            wildcard,
            default,
            loaded: loaded.into_boxed_slice(),
        })
    }

    /// The certificate for `name` as the client sent it in SNI.
    fn for_name(&self, name: &str) -> &Arc<CertifiedKey> {
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            &lower
        } else {
            name
        };
        self.exact
            .get(name)
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match hello.server_name() {
            Some(name) => self.for_name(name).clone(),
            None => self.default.clone(),
        })
    }
}

/// The lower-case DNS names of a certificate's subject alternative names.
fn dns_names(leaf: &X509Certificate<'_>) -> Result<Vec<String>, String> {
    let names = leaf
        .subject_alternative_name()
        .map_err(|err| format!("unreadable subject alternative names: {err}"))?;
    Ok(names
        .iter()
        .flat_map(|names| &names.value.general_names)
        .filter_map(|name| match name {
            GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(dir: &std::path::Path, name: &str, sans: &[&str]) -> CertificateConfig {
        let names = sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let certified = rcgen::generate_simple_self_signed(names).unwrap();
        let config = CertificateConfig {
            cert_file: dir.join(format!("{name}.crt")),
            key_file: dir.join(format!("{name}.key")),
        };
        std::fs::write(&config.cert_file, certified.cert.pem()).unwrap();
        std::fs::write(&config.key_file, certified.signing_key.serialize_pem()).unwrap();
        config
    }

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    #[test]
    fn names_choose_exact_then_wildcard_then_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let configs = [
            certificate(dir.path(), "first", &["first.test"]),
            certificate(dir.path(), "api", &["api.example.test"]),
            certificate(dir.path(), "any", &["*.example.test"]),
        ];
        let loaded = Certificates::load(&configs, &provider(), 0).unwrap();
        let leaf = |name: &str| loaded.for_name(name).cert[0].clone();
        let first = loaded.default.cert[0].clone();
        let api = loaded.exact["api.example.test"].cert[0].clone();
        let any = loaded.wildcard["example.test"].cert[0].clone();
        assert_eq!(leaf("API.Example.Test"), api);
        assert_eq!(leaf("web.example.test"), any);
        assert_eq!(leaf("a.b.example.test"), first, "one label only");
        assert_eq!(leaf("other.test"), first);
        assert_eq!(loaded.loaded.len(), 3);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let one = certificate(dir.path(), "one", &["one.test"]);
        let two = certificate(dir.path(), "two", &["two.test"]);
        let mismatched = CertificateConfig {
            cert_file: one.cert_file,
            key_file: two.key_file,
        };
        let err = Certificates::load(&[mismatched], &provider(), 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("two.key") && err.contains("does not fit") && err.contains("one.crt"),
            "{err}"
        );
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = certificate(dir.path(), "old", &["old.test"]);
        // rcgen's default validity ends in 4096: "now" past it.
        let err = Certificates::load(&[config], &provider(), 253_402_300_800 * 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("old.crt") && err.contains("expired"), "{err}");
    }
}
