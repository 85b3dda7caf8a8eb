//! The YAML model of TLS termination: the `tls` section (certificates,
//! client certificates, the HTTPS listener), its defaults and validation.
//! TLS is off until the key is present.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use super::{deserialize_addr, Config, ConfigError};

/// TLS termination (rustls: TLS 1.2 and 1.3; ALPN `h2` and `http/1.1`).
/// The certificate and CA files are read again when they change, on SIGHUP
/// and on `POST /admin/v1/tls/reload`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the HTTPS listener (a host name is resolved). Default `127.0.0.1:8443`.
    #[serde(default = "default_tls_listen", deserialize_with = "deserialize_addr")]
    pub listen: SocketAddr,
    /// Certificates chosen by the client's SNI among their DNS names; the
    /// first one serves clients whose name matches none (or that send none).
    pub certificates: Vec<CertificateConfig>,
    /// PEM file of the CAs whose client certificates are accepted (mutual
    /// TLS). Default: none, no client certificate is asked for.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (default; a handshake without a
    /// valid client certificate fails) or `optional` (one is asked for, and
    /// verified when sent).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Which field of a verified client certificate names the caller (it
    /// becomes `x-user-id` and the per-user rate-limit key): `subject_cn`
    /// (default), `san_dns`, `san_uri` (SPIFFE ids) or `san_email`; the
    /// first such value.
    #[serde(default)]
    pub client_identity: ClientIdentityField,
    /// Reload when one of the files changes (SIGHUP and the admin API always
    /// reload). Default `true`.
    #[serde(default = "default_true")]
    pub watch: bool,
}

/// One certificate of the TLS listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM chain: the server's certificate first, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1): RSA, ECDSA or Ed25519.
    pub key_file: PathBuf,
}

/// See [`TlsConfig::client_auth`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    Optional,
    #[default]
    Required,
}

/// See [`TlsConfig::client_identity`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientIdentityField {
    #[default]
    SubjectCn,
    SanDns,
    SanUri,
    SanEmail,
}

fn default_tls_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}

impl TlsConfig {
    /// `certificates` on the default address, without client certificates.
    pub fn new(certificates: Vec<CertificateConfig>) -> Self {
        Self {
            listen: default_tls_listen(),
            certificates,
            client_ca_file: None,
            client_auth: ClientAuth::default(),
            client_identity: ClientIdentityField::default(),
            watch: true,
        }
    }
}

fn default_true() -> bool {
    true
}

/// Checks what serde cannot: at least one certificate, a listener of its own.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    let Some(tls) = &config.tls else {
        return Ok(());
    };
    let invalid = |key: &str, reason: &str| ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    if tls.certificates.is_empty() {
        return Err(invalid("tls.certificates", "at least one is needed"));
    }
    if tls.listen == config.listen {
        return Err(invalid(
            "tls.listen",
            "must differ from `listen`, the cleartext listener",
        ));
    }
    Ok(())
}
