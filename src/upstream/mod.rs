//! Upstreams: the configured `pattern → URL`s, resolved for a service by
//! longest match, and their lazily made HTTP/2 connections: a pair per
//! serving worker thread (unary calls on this crate's client, `http2`;
//! streaming calls on `h2`'s), driven by that worker's runtime, and a pair
//! shared by other threads (health probes, embedders). Every kind of call
//! takes the same way (`call`, `protocol`, `connection`); the thread only
//! picks which of the upstream's connections it goes on. Connections live outside the
//! catalog so that a reload never reconnects them. A server read by schema
//! discovery is an upstream of its own ([`Upstream::standalone`]), called
//! the same way on its shared connection.

mod call;
mod connection;
mod deadline;
mod health;
mod http2;
mod metadata;
mod protocol;
mod tls;

use std::{
    cell::Cell,
    sync::{Arc, OnceLock},
    time::Duration,
};

pub use call::{
    bidi_streaming, client_streaming, server_streaming, unary, Outgoing, Reply, ReplyStream,
};
pub use deadline::{asked_timeout, Deadline};
pub use health::{HealthState, UpstreamHealth};
#[cfg(any(test, fuzzing))]
pub(crate) use http2::calls_against;
pub use metadata::Metadata;
pub use protocol::Payload;

use self::connection::{Connection, Target};

use crate::config::UpstreamConfig;

/// A gRPC server that serves some packages or services.
#[derive(Debug)]
pub struct Upstream {
    /// The configured pattern, used as the upstream's name in logs and errors.
    pub name: Arc<str>,
    pub url: String,
    /// `url`, parsed.
    uri: http::Uri,
    /// Deadline for each call, sent as `grpc-timeout`.
    pub timeout: Duration,
    /// Largest reply message accepted.
    pub max_response_bytes: usize,
    /// `timeout` as the `grpc-timeout` value.
    grpc_timeout: http::HeaderValue,
    /// As configured: a reload keeps the connections when it is unchanged.
    config: UpstreamConfig,
    /// Where the connections go, and how they start TLS for `https://`.
    target: Arc<Target>,
    /// One connection per serving worker, made on the worker's runtime at its
    /// first call, so that it is driven by the thread that uses it (and one
    /// connection's task and stream lock do not carry every call).
    per_worker: Box<[OnceLock<Connection>]>,
    /// For calls from other threads: health probes, embedders' runtimes.
    shared: Connection,
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
        let error = |reason: String| UpstreamError {
            pattern: config.pattern.clone(),
            reason,
        };
        let url: http::Uri = config
            .url
            .parse()
            .map_err(|err| error(format!("invalid url `{}`: {err}", config.url)))?;
        let tls = match (url.scheme_str(), url.authority()) {
            (Some("https"), Some(host)) => Some(self::tls::connector(config, host).map_err(error)?),
            _ => None,
        };
        let target = Target::new(&url, tls, connect_timeout(config.timeout)).ok_or_else(|| {
            error(format!(
                "url `{}` must be http://host:port or https://host:port",
                config.url
            ))
        })?;
        let target = Arc::new(target);
        Ok(Self {
            name: Arc::from(config.pattern.as_str()),
            url: config.url.clone(),
            uri: url,
            timeout: config.timeout,
            grpc_timeout: deadline::grpc_timeout(config.timeout),
            max_response_bytes,
            config: config.clone(),
            per_worker: (0..workers).map(|_| OnceLock::new()).collect(),
            shared: Connection::new(target.clone()),
            target,
        })
    }

    /// An upstream outside the catalog (a server that discovery reads by
    /// reflection), whose replies are refused over `max_response_bytes`.
    /// It has no serving worker's connection: every call, from whatever
    /// thread, goes on its shared one.
    pub fn standalone(
        config: &UpstreamConfig,
        max_response_bytes: usize,
    ) -> Result<Self, UpstreamError> {
        Self::new(config, max_response_bytes, 0)
    }

    /// The URL it is called at, parsed.
    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }

    /// The connection for a call from this thread: a serving worker's own,
    /// else the shared one.
    fn connection(&self) -> &Connection {
        match WORKER.get().and_then(|index| self.per_worker.get(index)) {
            Some(own) => own.get_or_init(|| Connection::new(self.target.clone())),
            None => &self.shared,
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
    fn a_worker_calls_on_its_own_connection_and_other_threads_on_the_shared_one() {
        let config = UpstreamConfig {
            pattern: "acme".into(),
            url: "https://127.0.0.1:1".into(),
            timeout: Duration::from_secs(1),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            server_name: Some("backend.test".into()),
        };
        let upstream = Upstream::new(&config, 1 << 20, 2).unwrap();
        let shared: *const Connection = &upstream.shared;
        let on_thread = |worker: Option<usize>| {
            std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        if let Some(index) = worker {
                            bind_worker(index);
                        }
                        let connection = upstream.connection();
                        (
                            std::ptr::from_ref(connection) as usize,
                            format!("{connection:?}"),
                        )
                    })
                    .join()
                    .unwrap()
            })
        };
        let (elsewhere, named) = on_thread(None);
        assert_eq!(elsewhere, shared as usize);
        assert!(named.contains("backend.test:1"), "{named}");
        let (first, named) = on_thread(Some(0));
        let (second, _) = on_thread(Some(1));
        assert_ne!(first, shared as usize);
        assert_ne!(first, second);
        assert_eq!(on_thread(Some(0)).0, first, "a worker keeps its connection");
        assert!(named.contains("backend.test:1"), "{named}");
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
