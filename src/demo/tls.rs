//! `protogate demo --tls`: a CA and a `localhost` certificate it signs,
//! generated at start and written to a folder of their own (removed when
//! the demo stops), so that curl can be told to trust the CA (`--cacert`)
//! instead of being told to trust nothing.

use std::{net::SocketAddr, path::PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::DemoError;
use crate::config::{CertificateConfig, TlsConfig};

/// The demo's TLS settings on `listen`, and the CA file a client trusts,
/// alone in its folder.
pub(super) fn generate(listen: SocketAddr) -> Result<(TlsConfig, PathBuf), DemoError> {
    let keys = |err: rcgen::Error| DemoError::Keys(err.to_string());
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(keys)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "protogate demo CA");
    let ca_key = KeyPair::generate().map_err(keys)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(keys)?;
    let issuer = Issuer::new(ca, ca_key);
    let names = vec!["localhost".to_owned(), listen.ip().to_string()];
    let leaf_key = KeyPair::generate().map_err(keys)?;
    let leaf = CertificateParams::new(names)
        .map_err(keys)?
        .signed_by(&leaf_key, &issuer)
        .map_err(keys)?;

    let dir = std::env::temp_dir().join(format!("protogate-demo-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca_file = dir.join("ca.pem");
    let certificate = CertificateConfig {
        cert_file: dir.join("localhost.pem"),
        key_file: dir.join("localhost-key.pem"),
    };
    std::fs::write(&ca_file, ca_cert.pem())?;
    std::fs::write(&certificate.cert_file, leaf.pem())?;
    std::fs::write(&certificate.key_file, leaf_key.serialize_pem())?;
    let tls = TlsConfig {
        listen,
        ..TlsConfig::new(vec![certificate])
    };
    Ok((tls, ca_file))
}
