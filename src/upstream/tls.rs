//! TLS to an `https://` upstream, set up once per upstream from its config:
//! the CAs trusted (`ca_file`, else the system's), the client certificate
//! presented (`client_cert_file`, `client_key_file`: mutual TLS into a
//! mesh) and the name sent as SNI and `:authority` (`server_name`, else the
//! URL's host). Every connection to the upstream starts TLS with them
//! (rustls, ALPN `h2`).

use std::sync::Arc;

use http::uri::Authority;
use rustls::{pki_types::ServerName, ClientConfig, RootCertStore};

use crate::{config::UpstreamConfig, pem};

/// How a connection to the upstream starts TLS, and what its calls name
/// as `:authority`.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) server_name: ServerName<'static>,
    /// `server_name` with the URL's port, when `server_name` is set.
    pub(crate) authority: Option<Authority>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The connections' TLS for `config`, whose URL is `https://` at `url`.
pub(super) fn connector(config: &UpstreamConfig, url: &Authority) -> Result<UpstreamTls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match &config.ca_file {
        Some(path) => pem::roots(path).map_err(|err| err.to_string())?,
        None => native_roots(),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots);
    let mut client = match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = pem::certificates(cert).map_err(|err| err.to_string())?;
            let key = pem::private_key(key).map_err(|err| err.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| format!("client certificate: {err}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    client.alpn_protocols = vec![b"h2".to_vec()];
    let name = config.server_name.as_deref().unwrap_or(url.host());
    // An IPv6 host comes bracketed in a URL.
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let server_name = ServerName::try_from(name.to_owned())
        .map_err(|_| format!("`{name}` is not a DNS name or IP address for TLS"))?;
    let authority = match (&config.server_name, url.port()) {
        (None, _) => None,
        (Some(name), Some(port)) => Some(format!("{name}:{port}")),
        (Some(name), None) => Some(name.clone()),
    };
    let authority = authority
        .map(|authority| authority.parse())
        .transpose()
        .map_err(|err| format!("server_name: {err}"))?;
    Ok(UpstreamTls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        server_name,
        authority,
    })
}

/// The system's CAs; those it cannot read are logged and left out.
fn native_roots() -> RootCertStore {
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "cannot read a system CA certificate");
    }
    let mut roots = RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::debug!(ignored, "system CA certificates rustls cannot use");
    }
    roots
}
