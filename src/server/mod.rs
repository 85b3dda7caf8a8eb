//! Assembles the data plane (layers + gateway service), binds it and serves
//! it until shutdown. The layer order is written once, here, outermost first.

mod workers;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    extract::{Request, State},
    middleware::{self, Next},
    response::Response,
    routing::get,
    Router,
};
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceBuilder;
use tower_http::{catch_panic::CatchPanicLayer, timeout::TimeoutLayer, trace::TraceLayer};

use crate::{
    admin::{self, AdminState},
    config::{Config, ConfigError, HealthConfig},
    error::{self, Error},
    gateway::{self, Gateway},
    observe::{
        self,
        access_log::{self, AccessLog, AccessLogError},
        metrics::{self, Metrics},
        trace_context, RequestContext,
    },
    policy::{self, HeaderPolicy, LocalLimiter, Policies, SetupError},
    registry::{self, BuildContext, DescriptorSet, LoadError, Registry, RouteMatch},
    router::Lookup,
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
    #[error("cannot read the admin token from {path}: {source}")]
    AdminToken {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the admin listener {0} is not a loopback address: set PROTOGATE_ADMIN_TOKEN or admin.token_file")]
    AdminUnprotected(SocketAddr),
}

/// A gateway ready to serve: its catalog is built and its channels exist.
#[derive(Debug)]
pub struct Server {
    registry: Arc<Registry>,
    router: Router,
    listen: SocketAddr,
    metrics: Metrics,
    health: Arc<UpstreamHealth>,
    health_config: HealthConfig,
    admin_listen: SocketAddr,
    admin_listener: Option<TcpListener>,
    admin_api: admin::ApiSettings,
    watch_descriptors: bool,
    workers: usize,
}

impl Server {
    /// Loads the configured descriptor sets plus `extra`, builds and validates
    /// the catalog and the data plane. Must run inside a tokio runtime.
    pub fn new(config: &Config, extra: Vec<DescriptorSet>) -> Result<Self, StartError> {
        config.validate()?;
        let upstreams = Upstreams::new(
            &config.upstreams,
            config.limits.max_response_message_bytes,
            config.workers(),
        )?;
        let admin_api = admin::ApiSettings::new(&config.admin)?;
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
        let policies = Policies::new(config)?;
        let context = BuildContext::new(config, policies.rules.clone(), sets);
        let (stored, stored_upstreams) = match &context.store {
            Some(store) => store
                .read_sets()
                .and_then(|sets| Ok((sets, store.read_upstreams()?)))
                .map_err(|source| StartError::Descriptors {
                    path: store.dir().to_owned(),
                    source,
                })?,
            None => Default::default(),
        };
        let health = Arc::new(UpstreamHealth::new(&upstreams, &config.health));
        let registry = Arc::new(Registry::start(
            context,
            upstreams,
            stored,
            stored_upstreams,
        )?);
        let catalog = registry.load();
        if policies.auth.is_none()
            && catalog
                .routes()
                .iter()
                .any(|r| catalog.method(r).policy.requires_roles_or_scopes())
        {
            tracing::warn!("some methods require roles or scopes, but `auth` is not configured: nothing is enforced");
        }
        let gateway = Arc::new(Gateway {
            options: TranscodeOptions::new(config),
            max_request_body: config.limits.max_request_body_bytes,
        });
        let metrics = Metrics::new(&config.metrics)?;
        let observers = Observers {
            access_log: if config.access_log.enabled {
                Some(Arc::new(AccessLog::new(&config.access_log)?))
            } else {
                None
            },
            metrics: config.metrics.enabled.then(|| metrics.clone()),
        };
        let mut router = data_plane(
            registry.clone(),
            gateway,
            config.limits.request_timeout,
            &policies,
            observers,
        );
        if config.metrics.on_public_listener {
            // Added after the layers, so the data plane's stack does not apply.
            router = router.route(
                "/metrics",
                get(metrics::scrape).with_state((metrics.clone(), registry.clone())),
            );
        }
        Ok(Self {
            registry,
            router,
            listen: config.listen,
            metrics,
            health,
            health_config: config.health.clone(),
            admin_listen: config.admin.listen,
            admin_listener: None,
            admin_api,
            watch_descriptors: config.descriptors.watch,
            workers: config.workers(),
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The configured listen address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
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
        let served = workers::serve(listener, self.router, self.workers, async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await;
        if let Some(admin) = admin {
            admin.await.map_err(std::io::Error::other)??;
        }
        served
    }
}

/// The observing layers that are switched on.
struct Observers {
    access_log: Option<Arc<AccessLog>>,
    metrics: Option<Metrics>,
}

/// The data-plane stack, outermost first.
fn data_plane(
    registry: Arc<Registry>,
    gateway: Arc<Gateway>,
    request_timeout: Duration,
    policies: &Policies,
    observers: Observers,
) -> Router {
    Router::new()
        .fallback(gateway::handle)
        .with_state(gateway)
        .layer(
            ServiceBuilder::new()
                // 1. Ids first: every later layer, log line and error body carries them.
                //    Malformed ids and any copy of the identity headers are dropped before.
                .layer(middleware::from_fn_with_state(
                    policies.headers.clone(),
                    request_ids,
                ))
                // 2. One span per request, carrying the ids; the route is recorded at 10.
                .layer(TraceLayer::new_for_http().make_span_with(observe::request_span))
                // 3. Outside everything that can fail, so every final response is logged.
                .option_layer(
                    observers
                        .access_log
                        .map(|log| middleware::from_fn_with_state(log, access_log::layer)),
                )
                // 4. Counted where 3 logs: 404/405/413/timeouts/5xx included.
                .option_layer(
                    observers
                        .metrics
                        .map(|m| middleware::from_fn_with_state(m, metrics::layer)),
                )
                // 7. CORS before routing: preflights never reach the router or an upstream.
                .option_layer(policies.cors.clone())
                // 5. Responses made below by layers that only know a status get a google.rpc.Status body.
                .layer(middleware::from_fn(status_body))
                // 6. A panic is a 500 (rewritten by 5), never a dropped connection.
                .layer(CatchPanicLayer::new())
                // 9. Overall ceiling; per-upstream deadlines travel as grpc-timeout.
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::GATEWAY_TIMEOUT,
                    request_timeout,
                ))
                // 10. Match once; the gateway (and later policies) read RouteMatch.
                .layer(middleware::from_fn_with_state(registry, route))
                // 11. Who calls, and may they call this method? (its policy, from RouteMatch)
                .option_layer(
                    policies
                        .auth
                        .clone()
                        .map(|auth| middleware::from_fn_with_state(auth, policy::authenticate)),
                )
                // 12. After auth: the consumer's subject is the key, the client IP otherwise.
                .option_layer(policies.rate_limit.clone().map(|limits| {
                    middleware::from_fn_with_state(limits, policy::rate_limit::<Arc<LocalLimiter>>)
                }))
                // 13. The upstream metadata, decided once; allow-listed upstream headers back.
                .layer(middleware::from_fn_with_state(
                    policies.headers.clone(),
                    policy::header_policy,
                )),
        )
}

/// Layer 1: the request's ids, decided once. Malformed ids and spoofed
/// identity headers go first; then `x-request-id` (minted when absent),
/// `x-correlation-id` (the client's, else the request id) and this hop's
/// `traceparent`, each set on the request (for the upstream) and on the
/// response. One layer, not five: each layer costs a boxed future and a
/// clone of the stack below it on every request.
async fn request_ids(
    State(headers): State<Arc<HeaderPolicy>>,
    mut request: Request,
    next: Next,
) -> Response {
    policy::sanitize(&headers, &mut request);
    let request_id = match request.headers().get(X_REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let mut buffer = uuid::Uuid::encode_buffer();
            let minted = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
            let id = HeaderValue::from_str(minted).unwrap_or(HeaderValue::from_static(""));
            request.headers_mut().insert(X_REQUEST_ID, id.clone());
            id
        }
    };
    let correlation_id = request
        .headers()
        .get(X_CORRELATION_ID)
        .cloned()
        .unwrap_or_else(|| request_id.clone());
    request
        .headers_mut()
        .insert(X_CORRELATION_ID, correlation_id.clone());
    let traceparent = trace_context::start(&mut request);
    let mut response = next.run(request).await;
    let out = response.headers_mut();
    if !out.contains_key(X_REQUEST_ID) {
        out.insert(X_REQUEST_ID, request_id);
    }
    out.insert(X_CORRELATION_ID, correlation_id);
    out.insert(trace_context::TRACEPARENT.clone(), traceparent);
    response
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// Gives a `google.rpc.Status` body to error responses that have none of ours
/// (timeouts, panics, anything a tower layer answered with a bare status).
async fn status_body(request: Request, next: Next) -> Response {
    let request_id = error::request_id(request.headers()).to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<Arc<Error>>().is_some()
    {
        return response;
    }
    let code = error::grpc_code(status);
    let message = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    let (parts, _) = response.into_parts();
    let mut rebuilt = error::status_response(status, code, &message, Vec::new(), &request_id);
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            rebuilt.headers_mut().insert(name, value.clone());
        }
    }
    rebuilt
}

/// Matches the route once against the current catalog and pins the request to it.
async fn route(
    State(registry): State<Arc<Registry>>,
    mut request: Request,
    next: Next,
) -> Response {
    let catalog = registry.load();
    match catalog.lookup(request.method(), request.uri().path()) {
        Lookup::Found { route, captures } => {
            if let Some(context) = RequestContext::of(&request) {
                context.set_route(&catalog, route);
            }
            let deprecation = catalog.method(catalog.route(route)).deprecation.clone();
            request.extensions_mut().insert(RouteMatch {
                catalog,
                route,
                captures,
            });
            let mut response = next.run(request).await;
            if let Some(deprecation) = deprecation {
                deprecation.write(response.headers_mut());
            }
            response
        }
        Lookup::MethodNotAllowed { allow } => {
            let allow = allow
                .iter()
                .map(http::Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let err = Error::MethodNotAllowed {
                method: request.method().clone(),
                allow: HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("")),
            };
            err.into_response(error::request_id(request.headers()), None)
        }
        Lookup::NotFound => {
            let err = Error::RouteNotFound {
                method: request.method().clone(),
                path: request.uri().path().into(),
            };
            err.into_response(error::request_id(request.headers()), None)
        }
    }
}
