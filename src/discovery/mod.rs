//! Services read from gRPC servers through server reflection (`discover`):
//! each server's schema ([`reflection`], [`schema`]) becomes a descriptor set
//! named `discovered-…` with the server as its upstream, registered exactly
//! as an upload is, through [`Registry::apply`] (validation, conflicts,
//! policies, persistence, the shared registry, the swap).
//!
//! A schema whose digest is the one served costs one reading and nothing
//! else: no build, no generation. A reading that fails, or a schema the
//! registry refuses, keeps the last good set; it is logged once per change
//! of state, counted in `protogate_discovery_errors_total{url}` and shown
//! by `/readyz`. `serve` reads every server once before it accepts, then
//! [`Discovery::keep_fresh`] reads every `refresh`, and retries a failure
//! with a doubling wait (1 s up to 30 s).

mod reflection;
mod schema;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use metrics::Counter;
use tonic::Code;

use self::schema::Selection;
use crate::{
    config::{DiscoverConfig, UpstreamConfig},
    error::Error,
    observe::metrics::Metrics,
    registry::{self, check_name, ApplyError, Change, Registry, DISCOVERED_PREFIX},
    upstream::Upstream,
};

/// First wait after a failed reading; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The servers to discover, and what became of each.
#[derive(Debug)]
pub struct Discovery {
    registry: Arc<Registry>,
    sources: Box<[Source]>,
    /// Bound on a schema's bytes: `admin.max_upload_bytes`, as for an upload.
    max_bytes: usize,
}

#[derive(Debug)]
struct Source {
    config: DiscoverConfig,
    set: String,
    selection: Selection,
    /// The server as an upstream outside the catalog: its TLS, its
    /// `timeout`, and `max_bytes` as its reply limit.
    upstream: Upstream,
    errors: Option<Counter>,
    state: ArcSwap<State>,
}

#[derive(Debug, Clone, Default)]
struct State {
    error: Option<String>,
    last_read: Option<SystemTime>,
}

/// A server's state, for `/readyz`.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    pub url: String,
    /// The name of the set its schema is registered as.
    pub set: String,
    /// Why the last reading failed; `None` after a good one (or none yet).
    pub error: Option<String>,
    /// When its schema was last read and registered (or found unchanged).
    pub last_read: Option<SystemTime>,
}

/// A schema read and registered.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub url: String,
    pub set: String,
    pub digest: String,
    /// False when the set served was already this one: nothing was built.
    pub changed: bool,
    pub generation: u64,
}

/// Why a server's schema could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot reach it: {0}")]
    Unreachable(String),
    #[error("it does not serve gRPC server reflection (neither grpc.reflection.v1 nor grpc.reflection.v1alpha)")]
    NoReflection,
    #[error("its reflection service failed: {0}")]
    Failed(String),
    #[error("it answered what is not a schema: {0}")]
    Garbage(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("it did not describe its services within {} (discover[].timeout)", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("none of its services is selected by `services` (it serves: {})", .0.join(", "))]
    NoServices(Vec<String>),
}

/// Why a discovery changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery from {url}: {source}")]
    Read { url: String, source: ReadError },
    #[error("discovery from {url}: the schema was refused: {source}")]
    Refused { url: String, source: ApplyError },
}

/// A `discover` entry that cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("discover `{url}`: {reason}")]
pub struct SetupError {
    url: String,
    reason: String,
}

// === impl Discovery ===

impl Discovery {
    /// Sets up each server as an upstream (nothing connects yet) and, with
    /// `metrics`, its error counter.
    pub fn new(
        configs: &[DiscoverConfig],
        registry: Arc<Registry>,
        max_bytes: usize,
        metrics: Option<&Metrics>,
    ) -> Result<Self, SetupError> {
        let mut sources: Vec<Source> = Vec::with_capacity(configs.len());
        for config in configs {
            let error = |reason: String| SetupError {
                url: config.url.clone(),
                reason,
            };
            let set = set_name(&config.url);
            check_name(&set).map_err(error)?;
            if let Some(other) = sources.iter().find(|s| s.set == set) {
                return Err(error(format!(
                    "its set name `{set}` is that of `{}`",
                    other.config.url
                )));
            }
            let selection = Selection::new(&config.services).map_err(|e| error(e.to_string()))?;
            let reading = UpstreamConfig {
                timeout: config.timeout,
                ..config.upstream(&set)
            };
            let upstream =
                Upstream::standalone(&reading, max_bytes).map_err(|e| error(e.to_string()))?;
            sources.push(Source {
                config: config.clone(),
                set,
                selection,
                upstream,
                errors: metrics.map(|m| m.discovery_errors(&config.url)),
                state: ArcSwap::default(),
            });
        }
        Ok(Self {
            registry,
            sources: sources.into(),
            max_bytes,
        })
    }

    /// Reads every server's schema now and registers what changed.
    pub async fn refresh(&self) -> Vec<Result<Discovered, DiscoveryError>> {
        let mut results = Vec::with_capacity(self.sources.len());
        for source in &*self.sources {
            results.push(self.refresh_source(source).await);
        }
        results
    }

    /// Each server's state.
    pub fn status(&self) -> Vec<SourceStatus> {
        (self.sources.iter())
            .map(|source| {
                let state = source.state();
                SourceStatus {
                    url: source.config.url.clone(),
                    set: source.set.clone(),
                    error: state.error,
                    last_read: state.last_read,
                }
            })
            .collect()
    }

    /// After a first [`Discovery::refresh`] (which `serve` awaits before
    /// it accepts, so that what is up is served from the first request):
    /// reads each server every `refresh` (never again with 0), and after a
    /// failure again after a wait that doubles from 1 s to 30 s (`refresh`
    /// at most). Runs until dropped.
    pub async fn keep_fresh(self: Arc<Self>) {
        let loops = (0..self.sources.len()).map(|index| {
            let discovery = self.clone();
            async move {
                let source = &discovery.sources[index];
                let refresh = source.config.refresh;
                let mut retry = FIRST_RETRY;
                loop {
                    let wait = if source.state().error.is_none() {
                        retry = FIRST_RETRY;
                        refresh
                    } else {
                        let wait = retry;
                        retry = (retry * 2).min(MAX_RETRY);
                        if refresh.is_zero() {
                            wait
                        } else {
                            wait.min(refresh)
                        }
                    };
                    if wait.is_zero() {
                        return;
                    }
                    tokio::time::sleep(wait).await;
                    // Its outcome is recorded in the state read above.
                    let _ = discovery.refresh_source(source).await;
                }
            }
        });
        futures_util::future::join_all(loops).await;
    }

    async fn refresh_source(&self, source: &Source) -> Result<Discovered, DiscoveryError> {
        let result = self.register(source).await;
        source.record(&result);
        result
    }

    async fn register(&self, source: &Source) -> Result<Discovered, DiscoveryError> {
        let url = &source.config.url;
        let bytes = source
            .read(self.max_bytes)
            .await
            .map_err(|source| DiscoveryError::Read {
                url: url.clone(),
                source,
            })?;
        let digest = registry::digest(&bytes);
        let current = self.registry.load();
        let served = (current.sets().iter()).any(|set| {
            set.name == source.set && set.digest == digest && set.upstream.as_ref() == Some(url)
        });
        let discovered = |changed: bool, generation: u64| Discovered {
            url: url.clone(),
            set: source.set.clone(),
            digest: digest.clone(),
            changed,
            generation,
        };
        if served {
            return Ok(discovered(false, current.generation()));
        }
        let change = Change::PutSet {
            name: source.set.clone(),
            bytes,
            upstream: Some(url.clone()),
        };
        let applied =
            self.registry
                .apply(change)
                .await
                .map_err(|source| DiscoveryError::Refused {
                    url: url.clone(),
                    source,
                })?;
        Ok(discovered(applied.changed, applied.catalog.generation()))
    }
}

// === impl Source ===

impl Source {
    /// The schema of the selected services as a serialized descriptor set,
    /// within `timeout` and `max_bytes`.
    async fn read(&self, max_bytes: usize) -> Result<Bytes, ReadError> {
        let reading = async {
            let reflected = reflection::read(&self.upstream, &self.selection, max_bytes).await?;
            schema::descriptor_set(&reflected.files, &self.selection)
        };
        tokio::time::timeout(self.config.timeout, reading)
            .await
            .map_err(|_| ReadError::Timeout(self.config.timeout))?
    }

    fn state(&self) -> State {
        State::clone(&self.state.load())
    }

    /// Records `result`, and logs a change of state (a new error, a
    /// recovery, a new schema) once.
    fn record(&self, result: &Result<Discovered, DiscoveryError>) {
        let url = &self.config.url;
        let error = result.as_ref().err().map(ToString::to_string);
        let now = SystemTime::now();
        let before = self.state.rcu(|state| State {
            error: error.clone(),
            last_read: if error.is_none() {
                Some(now)
            } else {
                state.last_read
            },
        });
        match result {
            Ok(discovered) => {
                if before.error.is_some() {
                    tracing::info!(url, "discovery works again");
                }
                if discovered.changed {
                    tracing::info!(
                        url,
                        set = %discovered.set,
                        digest = %discovered.digest,
                        generation = discovered.generation,
                        "discovered schema registered"
                    );
                }
            }
            Err(_) => {
                if let Some(errors) = &self.errors {
                    errors.increment(1);
                }
                if before.error != error {
                    let error = error.unwrap_or_default();
                    tracing::error!(url, %error, "discovery failed; the last good set keeps serving");
                }
            }
        }
    }
}

// === impl ReadError ===

impl ReadError {
    /// What a reflection call's failure says about the server: over the
    /// limit, unreachable, out of time, garbage, or its own error.
    fn from_call(error: Error, upstream: &Upstream, max_bytes: usize) -> Self {
        match error {
            Error::ResponseTooLarge { .. } => Self::TooLarge(format!(
                "one of its answers is over the limit of {max_bytes} bytes (admin.max_upload_bytes)"
            )),
            Error::UpstreamUnavailable { cause, .. } => Self::Unreachable(cause.into()),
            Error::DeadlineExceeded { .. } => Self::Timeout(upstream.timeout),
            Error::InvalidReply(what) => Self::Garbage(what.into()),
            Error::Upstream(status) if status.code() == Code::Unavailable => {
                Self::Unreachable(status.message().to_owned())
            }
            Error::Upstream(status) => {
                Self::Failed(format!("{:?}: {}", status.code(), status.message()))
            }
            other => Self::Failed(other.to_string()),
        }
    }
}

/// The set a server's schema is registered as: `discovered-` and its URL
/// (`http://orders:50051` → `discovered-http-orders-50051`).
pub fn set_name(url: &str) -> String {
    let mut name = String::from(DISCOVERED_PREFIX);
    let url = url.trim_end_matches('/').replacen("://", "-", 1);
    name.extend(url.chars().map(|c| match c {
        ':' => '-',
        c if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') => c,
        _ => '_',
    }));
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_names_follow_the_url_and_are_valid_set_names() {
        for (url, name) in [
            ("http://orders:50051", "discovered-http-orders-50051"),
            ("https://10.0.0.1:443/", "discovered-https-10.0.0.1-443"),
            ("http://[::1]:50051", "discovered-http-_--1_-50051"),
        ] {
            assert_eq!(set_name(url), name);
            check_name(name).unwrap();
        }
    }
}
