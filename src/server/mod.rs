//! Assembles the data plane ([`steps`]), binds it and serves it
//! ([`workers`]: each connection's life in [`connection`], the acceptor and
//! its cap in [`accept`]) until shutdown, with the admin listener beside it.

mod accept;
mod balance;
mod connection;
mod placement;
mod steps;
mod workers;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc};

use axum::{routing::get, Router};
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
};

use self::{
    accept::Acceptor,
    balance::Balance,
    connection::Timeouts,
    steps::{DataPlane, StepParts},
};
use crate::{
    admin::{self, AdminSetupError, AdminState},
    config::{Config, ConfigError, HealthConfig, RegistryStore},
    discovery::{self, Discovery},
    gateway::Gateway,
    observe::{
        access_log::{AccessLog, AccessLogError},
        metrics::{self, Metrics},
        otlp::{self, Exporter},
    },
    openapi::{DocumentOptions, Published},
    policy::{Policies, PolicySettings, SetupError},
    redis_client::{Op, Redis, RedisMetrics},
    registry::{
        self, BuildContext, BuildOptions, Catalog, DescriptorSet, LoadError, Registry,
        SharedRegistry, Store,
    },
    tls::{Termination, TlsError},
    transcode::TranscodeOptions,
    upstream::{UpstreamError, UpstreamHealth, Upstreams},
};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("cannot read descriptor sets from {path}: {source}")]
    Descriptors {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Policy(#[from] SetupError),
    #[error(transparent)]
    AccessLog(#[from] AccessLogError),
    #[error(transparent)]
    Admin(#[from] AdminSetupError),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Redis(String),
    #[error(transparent)]
    DiscoverySetup(#[from] discovery::SetupError),
    /// `check --discover`: the servers whose schema could not be read or was refused.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Discovery(Vec<discovery::DiscoveryError>),
}

/// A gateway ready to serve: its catalog is built and its channels exist.
#[derive(Debug)]
pub struct Server {
    registry: Arc<Registry>,
    /// The data plane, and the public listener's other routes in front of
    /// it when there are any (`/metrics`).
    data_plane: DataPlane,
    router: Router,
    public_routes: bool,
    listen: SocketAddr,
    metrics: Metrics,
    health: Arc<UpstreamHealth>,
    health_config: HealthConfig,
    admin_listen: SocketAddr,
    admin_listener: Option<TcpListener>,
    admin_api: admin::ApiSettings,
    /// The shared Redis, when configured.
    redis: Option<Arc<Redis>>,
    /// The servers read through reflection, when `discover` is configured.
    discovery: Option<Arc<Discovery>>,
    watch_descriptors: bool,
    workers: usize,
    /// Where each worker runs, when `pin_workers`.
    placement: Option<Arc<placement::Placement>>,
    timeouts: Timeouts,
    max_connections: Option<usize>,
    /// The HTTPS listener's certificates, when `tls` is configured.
    tls: Option<Arc<Termination>>,
    tls_listen: Option<SocketAddr>,
    tls_listener: Option<TcpListener>,
    /// The task that sends spans to the OTLP collector, when configured.
    exporter: Option<Exporter>,
}

/// What `serve` and `check --config` both build from a config: the policies
/// set up (keys read), the upstreams, the admin API's settings and the first
/// catalog; nothing bound, nothing written.
struct Loaded {
    registry: Registry,
    policies: Policies,
    health: UpstreamHealth,
    admin_api: admin::ApiSettings,
}

impl Loaded {
    /// Must run inside a tokio runtime. Warns of what is accepted but
    /// probably not meant. Connects to nothing: `redis` connects on first use.
    /// Without `persist`, changes applied to its registry stay in memory:
    /// nothing is written to the descriptor directory or the shared Redis.
    fn new(
        config: &Config,
        extra: Vec<DescriptorSet>,
        redis: Option<&Arc<Redis>>,
        persist: bool,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let upstreams = Upstreams::new(
            &config.upstreams,
            config.limits.max_response_message_bytes,
            config.workers(),
        )?;
        let admin_api = admin::ApiSettings::new(&config.admin, config.auth.is_some())?;
        let mut sets = Vec::new();
        for path in &config.descriptors.files {
            sets.push(DescriptorSet::from_file(path).map_err(|source| {
                StartError::Descriptors {
                    path: path.clone(),
                    source,
                }
            })?);
        }
        sets.extend(extra);
        let policies = Policies::new(
            PolicySettings {
                auth: config.auth.as_ref(),
                rules: &config.policies,
                rate_limit: config.rate_limit.as_ref(),
                trusted_proxies: &config.trusted_proxies,
                headers: &config.headers,
                max_forwarded_metadata_bytes: config.limits.max_forwarded_metadata_bytes,
                cors: config.cors.as_ref(),
            },
            redis,
        )?;
        let mut context = BuildContext::new(
            BuildOptions::new(&config.descriptors, &config.filters, &config.deprecations),
            policies.rules.clone(),
            config.upstreams.clone(),
            config.limits.max_response_message_bytes,
            config.descriptors.dir.clone().map(Store::new),
            sets,
        );
        context.discover.clone_from(&config.discover);
        if config.registry.store == RegistryStore::Redis {
            let redis = redis.ok_or_else(|| {
                StartError::Redis("registry.store: `redis` needs `redis.url`".into())
            })?;
            context.shared = Some(Arc::new(SharedRegistry::new(redis.clone())));
        }
        let (stored, stored_upstreams, generation) = match &context.store {
            // Not there yet: `serve` creates it, and it holds nothing.
            Some(store) if !store.dir().exists() => Default::default(),
            Some(store) => store
                .read_sets()
                .and_then(|sets| {
                    // Only a copy of the shared registry has a generation.
                    let generation = match context.shared {
                        Some(_) => store.read_generation()?,
                        None => 0,
                    };
                    Ok((sets, store.read_upstreams()?, generation))
                })
                .map_err(|source| StartError::Descriptors {
                    path: store.dir().to_owned(),
                    source,
                })?,
            None => Default::default(),
        };
        if !persist {
            context.store = None;
            context.shared = None;
        }
        let health = UpstreamHealth::new(&upstreams, &config.health);
        let registry = Registry::start(context, upstreams, stored, stored_upstreams, generation)?;
        let catalog = registry.load();
        if policies.auth.is_none()
            && catalog
                .routes()
                .iter()
                .any(|r| catalog.method(r).policy.requires_roles_or_scopes())
        {
            tracing::warn!("some methods require roles or scopes, but `auth` is not configured: nothing is enforced");
        }
        for upstream in &config.upstreams {
            if !catalog.has_service_matching(&upstream.pattern) {
                tracing::warn!(
                    "upstream pattern `{}` matches no service of the descriptor sets: a typo?",
                    upstream.pattern
                );
            }
        }
        Ok(Self {
            registry,
            policies,
            health,
            admin_api,
        })
    }
}

/// Validates `config` as `serve` would start it, plus `extra` sets, without
/// binding or writing anything: the catalog it would serve, or why not.
/// Must run inside a tokio runtime.
pub fn check_config(
    config: &Config,
    extra: Vec<DescriptorSet>,
) -> Result<Arc<Catalog>, StartError> {
    let redis = redis_client(config, None)?;
    Ok(Loaded::new(config, extra, redis.as_ref(), false)?
        .registry
        .load())
}

/// As [`check_config`], with the schemas of `config.discover` read from
/// their servers and registered as `serve` would (in memory only): the
/// catalog that would be served, or why each server failed.
pub async fn check_discovery(
    config: &Config,
    extra: Vec<DescriptorSet>,
) -> Result<Arc<Catalog>, StartError> {
    let redis = redis_client(config, None)?;
    let registry = Arc::new(Loaded::new(config, extra, redis.as_ref(), false)?.registry);
    let discovery = Discovery::new(
        &config.discover,
        registry.clone(),
        config.admin.max_upload_bytes,
        None,
    )?;
    let failed: Vec<_> = (discovery.refresh().await.into_iter())
        .filter_map(Result::err)
        .collect();
    if !failed.is_empty() {
        return Err(StartError::Discovery(failed));
    }
    Ok(registry.load())
}

/// The shared Redis's client, when `redis.url` is set; it connects on
/// first use. `metrics`: where it counts, none for `check`.
fn redis_client(
    config: &Config,
    metrics: Option<&Metrics>,
) -> Result<Option<Arc<Redis>>, StartError> {
    let handles = metrics.map(|metrics| {
        let (up, errors, duration) = metrics.redis(&Op::ALL.map(Op::label));
        RedisMetrics {
            up,
            errors,
            duration,
        }
    });
    config
        .redis
        .as_ref()
        .map(|redis| Redis::new(redis, handles).map(Arc::new))
        .transpose()
        .map_err(StartError::Redis)
}

impl Server {
    /// Loads the configured descriptor sets plus `extra`, builds and validates
    /// the catalog and the data plane; creates the descriptor directory if
    /// it is missing. Must run inside a tokio runtime.
    pub fn new(config: &Config, extra: Vec<DescriptorSet>) -> Result<Self, StartError> {
        if let Some(dir) = &config.descriptors.dir {
            std::fs::create_dir_all(dir).map_err(|source| StartError::Descriptors {
                path: dir.clone(),
                source,
            })?;
        }
        let metrics = Metrics::new(&config.metrics)?;
        let redis = redis_client(config, Some(&metrics))?;
        let Loaded {
            registry,
            policies,
            health,
            admin_api,
        } = Loaded::new(config, extra, redis.as_ref(), true)?;
        let registry = Arc::new(registry);
        let discovery = match config.discover.as_slice() {
            [] => None,
            sources => Some(Arc::new(Discovery::new(
                sources,
                registry.clone(),
                config.admin.max_upload_bytes,
                Some(&metrics),
            )?)),
        };
        let health = Arc::new(health);
        let gateway = Arc::new(Gateway {
            options: TranscodeOptions::new(&config.json, &config.query, &config.filters),
            max_request_body: config.limits.max_request_body_bytes,
            upstream_headers_returned: !config.headers.response.is_empty(),
        });
        let published = Published::new(
            &config.openapi,
            DocumentOptions::new(&config.openapi, &config.json, config.auth.is_some()),
            policies.auth.as_ref(),
        )
        .map(Arc::new);
        let tls = match &config.tls {
            Some(tls) => Some(Arc::new(Termination::new(tls, metrics.clone())?)),
            None => None,
        };
        let (traces, exporter) = match &config.tracing.otlp {
            Some(otlp) => {
                let (traces, exporter) = otlp::pipeline(otlp, metrics.otlp_dropped_spans())?;
                (Some(Arc::new(traces)), Some(exporter))
            }
            None => (None, None),
        };
        let data_plane = DataPlane::new(StepParts {
            headers: policies.headers,
            access_log: if config.access_log.enabled {
                Some(Arc::new(AccessLog::new(&config.access_log)?))
            } else {
                None
            },
            metrics: config.metrics.enabled.then(|| metrics.clone()),
            traces,
            cors: policies.cors,
            request_timeout: config.limits.request_timeout,
            registry: registry.clone(),
            auth: policies.auth,
            rate_limit: policies.rate_limit,
            gateway,
            published,
        });
        let mut router = Router::new().fallback_service(data_plane.clone());
        if config.metrics.on_public_listener {
            // Beside the data plane, so none of its steps apply.
            router = router.route(
                "/metrics",
                get(admin::scrape).with_state((metrics.clone(), registry.clone())),
            );
        }
        Ok(Self {
            registry,
            data_plane,
            router,
            public_routes: config.metrics.on_public_listener,
            listen: config.listen,
            metrics,
            health,
            health_config: config.health.clone(),
            admin_listen: config.admin.listen,
            admin_listener: None,
            admin_api,
            // The directory is a copy of the shared registry, written by it.
            watch_descriptors: config.descriptors.watch
                && config.registry.store != RegistryStore::Redis,
            redis,
            discovery,
            workers: config.workers(),
            placement: config
                .pin_workers
                .then(|| placement::Placement::of_this_process(config.workers()))
                .flatten()
                .map(Arc::new),
            timeouts: Timeouts::from(&config.limits),
            max_connections: config.limits.max_connections,
            tls,
            tls_listen: config.tls.as_ref().map(|tls| tls.listen),
            tls_listener: None,
            exporter,
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The configured listen address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The configured HTTPS listen address, when `tls` is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_listen
    }

    /// Also serve HTTPS on `listener` (`tls` must be configured: without it
    /// the listener is not served).
    #[must_use]
    pub fn with_tls_listener(mut self, listener: TcpListener) -> Self {
        self.tls_listener = Some(listener);
        self
    }

    /// The configured admin listen address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listen
    }

    /// Also serve the admin endpoints (see [`admin`]) on `listener`.
    #[must_use]
    pub fn with_admin_listener(mut self, listener: TcpListener) -> Self {
        self.admin_listener = Some(listener);
        self
    }

    /// The admin endpoints, for serving or for `oneshot` tests.
    pub fn admin_router(&self) -> Router {
        admin::router(AdminState {
            registry: self.registry.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            api: self.admin_api.clone(),
            tls: self.tls.clone(),
            redis: self.redis.clone(),
            discovery: self.discovery.clone(),
        })
    }

    /// The data-plane service, for serving or for `oneshot` tests.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves on `listener` (and the admin listener, if given) until
    /// `shutdown` resolves, then drains in-flight requests. Upstream health
    /// probes run meanwhile.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Dropping the set at return stops the probes and the upkeep.
        let mut background = self.health.spawn_probes(&self.health_config, &self.metrics);
        let upkept = self.metrics.clone();
        background.spawn(async move {
            let mut ticks = tokio::time::interval(metrics::UPKEEP_INTERVAL);
            loop {
                ticks.tick().await;
                upkept.run_upkeep();
            }
        });
        // Reloads through the same path as an upload: directory changes and SIGHUP.
        if self.watch_descriptors {
            background.spawn(registry::watch_dir(self.registry.clone()));
        }
        background.spawn(registry::reload_on_sighup(self.registry.clone()));
        if let Some(tls) = &self.tls {
            background.spawn(tls.clone().reload_on_change());
        }
        if let Some(redis) = &self.redis {
            background.spawn(redis.clone().keep_watch());
        }
        if let Some(shared) = self.registry.shared() {
            background.spawn(registry::keep_in_sync(
                self.registry.clone(),
                shared.clone(),
            ));
        }
        if let Some(discovery) = &self.discovery {
            // Before accepting: what is up is served from the first request.
            discovery.refresh().await;
            background.spawn(discovery.clone().keep_fresh());
        }
        background.spawn(crate::allocator::purge_in_background());
        // Not in the set: told to stop once the requests have drained, it
        // exports the spans they left.
        let exporting = self.exporter.take().map(|exporter| {
            let (stop, stopped) = oneshot::channel();
            (stop, tokio::spawn(exporter.run(stopped)))
        });
        let (stop, stopped) = watch::channel(false);
        let admin = self.admin_listener.take().map(|listener| {
            let router = self.admin_router();
            let mut stopped = stopped;
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    })
                    .await
            })
        });
        let shutdown = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        let acceptor = Acceptor::new(listener, accept::max_connections(self.max_connections));
        let tls = match (self.tls_listener.take(), &self.tls) {
            (Some(listener), Some(termination)) => {
                Some((Acceptor::beside(listener, &acceptor), termination.clone()))
            }
            (Some(_), None) => {
                tracing::warn!("an HTTPS listener without `tls` configured is not served");
                None
            }
            _ => None,
        };
        let (moved, active) = self.metrics.workers();
        let balance = Balance::new(self.workers, moved, active, self.placement);
        let served = if self.public_routes {
            workers::serve(acceptor, tls, self.router, balance, self.timeouts, shutdown).await
        } else {
            // The data plane alone: no router to pass through on every
            // request (callgrind: ~4k instructions of a GET's ~80k).
            workers::serve(
                acceptor,
                tls,
                self.data_plane,
                balance,
                self.timeouts,
                shutdown,
            )
            .await
        };
        if let Some((stop, exported)) = exporting {
            let _ = stop.send(());
            let _ = exported.await;
        }
        if let Some(admin) = admin {
            admin.await.map_err(std::io::Error::other)??;
        }
        served
    }
}
