//! PEM files of certificates, keys and CAs, read for the TLS listener and
//! for upstream connections alike; errors name the file and what is wrong.

use std::path::{Path, PathBuf};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    RootCertStore,
};

/// A file that cannot be used, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FileError {
    pub path: PathBuf,
    pub reason: String,
}

impl FileError {
    pub(crate) fn new(path: &Path, reason: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Every certificate of a PEM file, in order (a chain: the leaf first).
pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| FileError::new(path, format!("not a PEM certificate file: {err}")))?;
    if chain.is_empty() {
        return Err(FileError::new(path, "holds no PEM certificate"));
    }
    Ok(chain)
}

/// The private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|err| FileError::new(path, format!("holds no PEM private key: {err}")))
}

/// The CAs of a PEM file, as trust anchors.
pub(crate) fn roots(path: &Path) -> Result<RootCertStore, FileError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots
            .add(certificate)
            .map_err(|err| FileError::new(path, format!("not a usable CA certificate: {err}")))?;
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|err| FileError::new(path, format!("cannot read: {err}")))
}
