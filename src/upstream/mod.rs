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
mod tls;

use std::{
    cell::Cell,
    sync::{Arc, OnceLock},
    time::Duration,
};

pub use call::{asked_timeout, unary, Deadline};
pub use channel_calls::{bidi_streaming, client_streaming, server_streaming, ReplyStream};
pub use codec::{Outgoing, Payload};
pub use health::{HealthState, UpstreamHealth};
use tonic::transport::{Channel, Endpoint};

use self::{
    connection::{Connection, Direct},
    tls::UpstreamTls,
};

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
    /// As configured: a reload keeps the connections when it is unchanged.
    config: UpstreamConfig,
    endpoint: Endpoint,
    /// For an `https://` upstream: how a worker connection starts TLS.
    tls: Option<UpstreamTls>,
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
                let kept = self
                    .by_length
                    .iter()
                    .find(|u| u.config == *config && u.max_response_bytes == max_response_bytes);
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
        let (endpoint, tls) = endpoint(config)?;
        Ok(Self {
            name: Arc::from(config.pattern.as_str()),
            url: config.url.clone(),
            timeout: config.timeout,
            grpc_timeout: call::grpc_timeout(config.timeout),
            max_response_bytes,
            config: config.clone(),
            shared: endpoint.connect_lazy(),
            per_worker: (0..workers).map(|_| OnceLock::new()).collect(),
            endpoint,
            tls,
        })
    }

    /// The connection for a unary call from this thread.
    pub(crate) fn connection(&self) -> Connection {
        match WORKER.get().and_then(|index| self.per_worker.get(index)) {
            Some(own) => own.get_or_init(|| self.worker_connection()).clone(),
            None => Connection::Channel(self.shared.clone()),
        }
    }

    /// The channel for a streaming call or a probe.
    pub(crate) fn channel(&self) -> Channel {
        self.shared.clone()
    }

    /// h2c and TLS alike go direct, on a connection of the worker's own.
    fn worker_connection(&self) -> Connection {
        let uri = self.endpoint.uri();
        match Direct::new(uri, self.tls.clone(), connect_timeout(self.timeout)) {
            Some(direct) => Connection::Direct(Arc::new(direct)),
            None => Connection::Channel(self.endpoint.connect_lazy()),
        }
    }
}

/// The endpoint of `config`'s URL, with its TLS (CA, client certificate,
/// server name) for `https://`, and how a worker connection starts that TLS.
fn endpoint(config: &UpstreamConfig) -> Result<(Endpoint, Option<UpstreamTls>), UpstreamError> {
    let error = |reason: String| UpstreamError {
        pattern: config.pattern.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(config.url.clone())
        .map_err(|err| error(format!("invalid url `{}`: {err}", config.url)))?
        .connect_timeout(connect_timeout(config.timeout))
        .tcp_nodelay(true);
    let mut tls = None;
    if let (Some("https"), Some(url)) = (endpoint.uri().scheme_str(), endpoint.uri().authority()) {
        let connector = self::tls::connector(config, url).map_err(error)?;
        let channel_tls = self::tls::channel(config).map_err(error)?;
        endpoint = endpoint
            .tls_config(channel_tls)
            .map_err(|err| error(format!("TLS setup failed: {err}")))?;
        if let Some(authority) = connector.authority.clone() {
            let origin = http::Uri::builder()
                .scheme("https")
                .authority(authority)
                .path_and_query("/")
                .build()
                .map_err(|err| error(format!("server_name: {err}")))?;
            endpoint = endpoint.origin(origin);
        }
        tls = Some(connector);
    }
    Ok((endpoint, tls))
}

/// A lazily connected channel to `config`'s server, set up as an upstream's
/// (for calls outside the catalog: reading a server's schema).
pub fn channel(config: &UpstreamConfig) -> Result<Channel, UpstreamError> {
    Ok(endpoint(config)?.0.connect_lazy())
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

    #[tokio::test]
    async fn unary_calls_to_https_upstreams_take_the_workers_own_connection() {
        let config = UpstreamConfig {
            pattern: "acme".into(),
            url: "https://127.0.0.1:1".into(),
            timeout: Duration::from_secs(1),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            server_name: Some("backend.test".into()),
        };
        let upstream = Upstream::new(&config, 1 << 20, 1).unwrap();
        bind_worker(0);
        match upstream.connection() {
            Connection::Direct(direct) => {
                let direct = format!("{direct:?}");
                assert!(direct.contains("backend.test:1"), "{direct}");
            }
            Connection::Channel(_) => panic!("a tonic channel, not the worker's h2 connection"),
        }
    }

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
