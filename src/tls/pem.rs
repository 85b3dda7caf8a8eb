//! PEM files of certificates, keys and CAs, read for the TLS listener and
//! for upstream connections alike; errors name the file and what is wrong.

use std::path::Path;

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    RootCertStore,
};

use super::TlsError;

/// Every certificate of a PEM file, in order (a chain: the leaf first).
pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::file(path, format!("not a PEM certificate file: {err}")))?;
    if chain.is_empty() {
        return Err(TlsError::file(path, "holds no PEM certificate"));
    }
    Ok(chain)
}

/// The private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|err| TlsError::file(path, format!("holds no PEM private key: {err}")))
}

/// The CAs of a PEM file, as trust anchors.
pub(crate) fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots
            .add(certificate)
            .map_err(|err| TlsError::file(path, format!("not a usable CA certificate: {err}")))?;
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|err| TlsError::file(path, format!("cannot read: {err}")))
}
