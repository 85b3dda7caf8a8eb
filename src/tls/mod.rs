//! TLS termination for the public HTTPS listener (rustls with ring; TLS 1.2
//! and 1.3; ALPN `h2` and `http/1.1`).
//!
//! [`Termination`] keeps the current rustls `ServerConfig` behind one
//! `ArcSwap`: each handshake loads it once, so a reload (a file change,
//! SIGHUP, `POST /admin/v1/tls/reload`) changes new handshakes only, and
//! open connections finish on the certificate they began with. A reload
//! that cannot read, match or trust the new files is refused and logged,
//! and the old configuration keeps serving.

mod certificates;
mod peer;

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use rustls::{crypto::CryptoProvider, server::WebPkiClientVerifier, ServerConfig};
use tokio::{net::TcpStream, sync::mpsc};
use tokio_rustls::{server::TlsStream, TlsAcceptor};

use self::certificates::Certificates;
pub use crate::pem::FileError;
use crate::{
    config::{ClientAuth, TlsConfig},
    observe::metrics::Metrics,
    pem,
    policy::Identity,
};

/// A certificate, key or CA that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{0}")]
    Config(String),
}

/// The HTTPS listener's certificates and client verification, swappable.
#[derive(Debug)]
pub struct Termination {
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<ServerConfig>,
    metrics: Metrics,
}

/// What a successful load serves: each certificate file and its expiry.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Loaded {
    pub certificates: Vec<LoadedCertificate>,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadedCertificate {
    pub cert_file: PathBuf,
    /// Unix seconds.
    pub expires: i64,
}

/// How long the files must be quiet after a change before they are read:
/// a certificate and its key are written one after the other.
const SETTLE: Duration = Duration::from_millis(200);
const FILE_CHANGE: &str = "file change";

// === impl TlsError ===

impl TlsError {
    pub(crate) fn file(path: &Path, reason: impl Into<String>) -> Self {
        Self::File(FileError::new(path, reason))
    }
}

// === impl Termination ===

impl Termination {
    /// Reads the configured files; any problem refuses the start.
    pub fn new(config: &TlsConfig, metrics: Metrics) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (server, loaded) = server_config(config, &provider)?;
        let termination = Self {
            config: config.clone(),
            provider,
            current: ArcSwap::from_pointee(server),
            metrics,
        };
        termination.record(&loaded);
        Ok(termination)
    }

    /// Reads the files again and serves them to new handshakes, or keeps
    /// the current ones; either is logged as caused by `trigger`.
    pub fn reload(&self, trigger: &str) -> Result<Loaded, TlsError> {
        match server_config(&self.config, &self.provider) {
            Ok((server, loaded)) => {
                self.current.store(Arc::new(server));
                self.record(&loaded);
                tracing::info!(
                    trigger,
                    certificates = loaded.certificates.len(),
                    "TLS certificates reloaded"
                );
                Ok(loaded)
            }
            Err(error) => {
                tracing::error!(
                    trigger,
                    %error,
                    "TLS reload refused; the current certificates keep serving"
                );
                Err(error)
            }
        }
    }

    /// The TLS handshake on `tcp` with the current configuration, and the
    /// caller its verified client certificate names, if any.
    pub(crate) async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<(TlsStream<TcpStream>, Option<Arc<Identity>>)> {
        let stream = TlsAcceptor::from(self.current.load_full())
            .accept(tcp)
            .await?;
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| peer::identity(leaf, self.config.client_identity))
            .map(Arc::new);
        Ok((stream, identity))
    }

    /// Reloads when a configured file changes (with `tls.watch`) and on
    /// SIGHUP, until dropped.
    pub async fn reload_on_change(self: Arc<Self>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _watcher = self
            .config
            .watch
            .then(|| self.watch_files(tx.clone()))
            .flatten();
        tokio::spawn(hangups(tx));
        while let Some(trigger) = rx.recv().await {
            if trigger == FILE_CHANGE {
                // Wait until the files are quiet, then reload once.
                while let Ok(Some(_)) = tokio::time::timeout(SETTLE, rx.recv()).await {}
            }
            let _ = self.reload(trigger);
        }
    }

    /// Watches the folders of the configured files (an editor or a
    /// certificate manager replaces a file rather than writing it).
    fn watch_files(&self, tx: mpsc::UnboundedSender<&'static str>) -> Option<impl Sized> {
        use notify::Watcher as _;
        let files: Vec<PathBuf> = (self.config.certificates.iter())
            .flat_map(|c| [c.cert_file.clone(), c.key_file.clone()])
            .chain(self.config.client_ca_file.clone())
            .map(|file| std::path::absolute(&file).unwrap_or(file))
            .collect();
        let mut folders: Vec<PathBuf> = files
            .iter()
            .filter_map(|file| file.parent().map(Path::to_owned))
            .collect();
        folders.sort();
        folders.dedup();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if !event.kind.is_access() && event.paths.iter().any(|p| files.contains(p)) {
                let _ = tx.send(FILE_CHANGE);
            }
        });
        let watching = watcher.and_then(|mut watcher| {
            for folder in &folders {
                watcher.watch(folder, notify::RecursiveMode::NonRecursive)?;
            }
            Ok(watcher)
        });
        match watching {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::error!(%error, "cannot watch the TLS files; reload them with SIGHUP or the admin API");
                None
            }
        }
    }

    fn record(&self, loaded: &Loaded) {
        for certificate in &loaded.certificates {
            self.metrics
                .set_certificate_expiry(&certificate.cert_file, certificate.expires);
        }
    }
}

/// Sends a reload request on every SIGHUP.
#[cfg(unix)]
async fn hangups(tx: mpsc::UnboundedSender<&'static str>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGHUP");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        if tx.send("SIGHUP").is_err() {
            return;
        }
    }
}

#[cfg(not(unix))]
async fn hangups(_tx: mpsc::UnboundedSender<&'static str>) {}

/// The rustls configuration of `config`'s files, read now.
fn server_config(
    config: &TlsConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<(ServerConfig, Loaded), TlsError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
    let certificates = Certificates::load(&config.certificates, provider, now)?;
    let loaded = Loaded {
        certificates: certificates.loaded.to_vec(),
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| TlsError::Config(err.to_string()))?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = Arc::new(pem::roots(path)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let verifier = match config.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|err| TlsError::file(path, err.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(certificates));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((server, loaded))
}
