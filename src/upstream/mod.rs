//! Upstreams: the configured `pattern → URL`s, resolved for a service by
//! longest match, and their lazily made connections: one per serving worker
//! thread for unary calls, driven by that worker's runtime (see
//! `connection`), and a shared tonic [`Channel`] for streaming calls, probes
//! and calls from other threads. Connections live outside the catalog so
//! that a reload never reconnects them.

mod call;
mod channel_calls;
mod codec;
mod connection;
mod health;

use std::{
    cell::Cell,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

pub use call::{asked_timeout, unary, Deadline};
pub use channel_calls::{bidi_streaming, client_streaming, server_streaming, ReplyStream};
pub use codec::{Outgoing, Payload};
pub use health::{HealthState, UpstreamHealth};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use self::connection::{Connection, Direct};

use crate::config::UpstreamConfig;

/// A gRPC server that serves some packages or services.
#[derive(Debug)]
pub struct Upstream {
    /// The configured pattern, used as the upstream's name in logs and errors.
    pub name: Arc<str>,
    pub url: String,
    /// Deadline for each call, sent as `grpc-timeout`.
    pub timeout: Duration,
    /// Largest reply message accepted.
    pub max_response_bytes: usize,
    /// `timeout` as the `grpc-timeout` value.
    grpc_timeout: http::HeaderValue,
    ca_file: Option<PathBuf>,
    endpoint: Endpoint,
    /// One connection per serving worker, made on the worker's runtime at its
    /// first call, so that it is driven by the thread that uses it (and one
    /// connection's task and stream lock do not carry every call).
    per_worker: Box<[OnceLock<Connection>]>,
    /// For calls from other threads: health probes, embedders' runtimes.
    shared: Channel,
}

/// Every configured upstream, longest pattern first.
#[derive(Debug, Default)]
pub struct Upstreams {
    by_length: Vec<Arc<Upstream>>,
    workers: usize,
}

/// An upstream that cannot be set up (bad URL, unreadable CA file).
#[derive(Debug, thiserror::Error)]
#[error("upstream `{pattern}`: {reason}")]
pub struct UpstreamError {
    pattern: String,
    reason: String,
}

// === impl Upstreams ===

impl Upstreams {
    /// Sets up each upstream for `workers` serving threads; nothing connects
    /// until the first call. Must run inside a tokio runtime.
    pub fn new(
        configs: &[UpstreamConfig],
        max_response_bytes: usize,
        workers: usize,
    ) -> Result<Self, UpstreamError> {
        let mut by_length = configs
            .iter()
            .map(|config| Upstream::new(config, max_response_bytes, workers).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        by_length.sort_by_key(|u| std::cmp::Reverse(specificity(&u.name)));
        Ok(Self { by_length, workers })
    }

    /// The upstream whose pattern is the longest match for `service`
    /// (a fully-qualified service name): the name itself, a package prefix, or `*`.
    pub fn resolve(&self, service: &str) -> Option<Arc<Upstream>> {
        self.by_length
            .iter()
            .find(|u| matches(&u.name, service))
            .cloned()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.by_length.iter()
    }

    /// The upstreams for `configs`, keeping the channel of every upstream whose
    /// settings did not change, so that a reload never reconnects it.
    /// Must run inside a tokio runtime.
    pub fn reconfigure(
        &self,
        configs: &[UpstreamConfig],
        max_response_bytes: usize,
    ) -> Result<Self, UpstreamError> {
        let mut by_length = configs
            .iter()
            .map(|config| {
                let kept = self.by_length.iter().find(|u| {
                    *u.name == *config.pattern
                        && u.url == config.url
                        && u.timeout == config.timeout
                        && u.ca_file == config.ca_file
                        && u.max_response_bytes == max_response_bytes
                });
                match kept {
                    Some(upstream) => Ok(upstream.clone()),
                    None => Upstream::new(config, max_response_bytes, self.workers).map(Arc::new),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        by_length.sort_by_key(|u| std::cmp::Reverse(specificity(&u.name)));
        Ok(Self {
            by_length,
            workers: self.workers,
        })
    }
}

/// Longer dotted names are more specific; `*` is the least specific.
fn specificity(pattern: &str) -> usize {
    if pattern == "*" {
        0
    } else {
        pattern.len() + 1
    }
}

/// Whether `pattern` (a package, package prefix, service or `*`) covers `service`.
pub(crate) fn matches(pattern: &str, service: &str) -> bool {
    pattern == "*"
        || service
            .strip_prefix(pattern)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

// === impl Upstream ===

impl Upstream {
    fn new(
        config: &UpstreamConfig,
        max_response_bytes: usize,
        workers: usize,
    ) -> Result<Self, UpstreamError> {
        let error = |reason: String| UpstreamError {
            pattern: config.pattern.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(config.url.clone())
            .map_err(|err| error(format!("invalid url `{}`: {err}", config.url)))?
            .connect_timeout(connect_timeout(config.timeout))
            .tcp_nodelay(true);
        if config.url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &config.ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|err| {
                        error(format!("cannot read CA file {}: {err}", path.display()))
                    })?;
                    tls.ca_certificate(Certificate::from_pem(pem))
                }
                None => tls.with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|err| error(format!("TLS setup failed: {err}")))?;
        }
        Ok(Self {
            name: Arc::from(config.pattern.as_str()),
            url: config.url.clone(),
            timeout: config.timeout,
            grpc_timeout: call::grpc_timeout(config.timeout),
            max_response_bytes,
            ca_file: config.ca_file.clone(),
            shared: endpoint.connect_lazy(),
            per_worker: (0..workers).map(|_| OnceLock::new()).collect(),
            endpoint,
        })
    }

    /// The connection for a unary call from this thread.
    pub(crate) fn connection(&self) -> Connection {
        match WORKER.get().and_then(|index| self.per_worker.get(index)) {
            Some(own) => own.get_or_init(|| self.worker_connection()).clone(),
            None => Connection::Channel(self.shared.clone()),
        }
    }

    /// The channel for a streaming call or a probe: the worker's own for a TLS
    /// upstream, else the shared one.
    pub(crate) fn channel(&self) -> Channel {
        match self.connection() {
            Connection::Channel(channel) => channel,
            Connection::Direct(_) => self.shared.clone(),
        }
    }

    /// h2c goes direct; TLS through a channel of the worker's own.
    fn worker_connection(&self) -> Connection {
        let uri = self.endpoint.uri();
        let direct = (uri.scheme_str() == Some("http"))
            .then(|| Direct::new(uri, connect_timeout(self.timeout)))
            .flatten();
        match direct {
            Some(direct) => Connection::Direct(Arc::new(direct)),
            None => Connection::Channel(self.endpoint.connect_lazy()),
        }
    }
}

/// A connection attempt gives up after the call's timeout, 5 s at most.
fn connect_timeout(call_timeout: Duration) -> Duration {
    call_timeout.min(Duration::from_secs(5))
}

thread_local! {
    /// The serving worker this thread is, if it is one.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks this thread as serving worker `index`: its calls use that worker's
/// own connections, created on the runtime it runs.
pub(crate) fn bind_worker(index: usize) {
    WORKER.set(Some(index));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_pattern_wins() {
        assert!(matches("acme", "acme.orders.v1.OrderService"));
        assert!(matches("acme.orders.v1", "acme.orders.v1.OrderService"));
        assert!(!matches("acme.ord", "acme.orders.v1.OrderService"));
        assert!(matches("*", "x.Y"));
        let mut names = ["*", "acme", "acme.orders.v1.OrderService", "acme.orders.v1"];
        names.sort_by_key(|n| std::cmp::Reverse(specificity(n)));
        assert_eq!(
            names,
            ["acme.orders.v1.OrderService", "acme.orders.v1", "acme", "*"]
        );
    }
}
