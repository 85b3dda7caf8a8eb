//! The admin listener: its own small router on its own address, never
//! sharing the data plane's steps.
//!
//! * `GET /` -- the console ([`console`]): one page that reads and changes
//!   everything through the admin API, with the token the operator types in
//! * `GET /metrics` -- Prometheus text exposition of this server's metrics
//! * `GET /healthz` -- 200 while the process serves
//! * `GET /readyz` -- 200 when the catalog is loaded and every upstream is
//!   healthy or within its grace period, else 503; the body lists each
//!   upstream, and says whether the shared Redis answers (`"redis": "up"`
//!   or `"down"`: reported, not required, since the data plane serves
//!   without it), and each server of `discover`: its set, when it was last
//!   read, and why the last reading failed; a server whose schema was never
//!   registered makes it 503, its routes being unserved
//! * `/admin/v1/...` -- the admin API ([`api`]): descriptor sets, upstreams,
//!   routes, live figures per route, TLS certificate reload, discovery
//!   refresh
//!
//! Only the admin API requires the bearer token: probes and Prometheus
//! scrapes read nothing secret and must work without credentials, and the
//! console page holds no data of its own (a browser cannot send a bearer
//! token with a navigation; the page sends it with each API call). Without a
//! token (then the listener is loopback-only) a request whose `Host` is not a
//! loopback name or address is refused (403): a web page the operator visits
//! could otherwise reach the listener through DNS rebinding, its own name
//! resolving to 127.0.0.1.

mod api;
mod client;
mod console;
mod traffic;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use axum::{
    extract::{Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get},
    Router,
};
use http::{header, uri::Authority, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};
use tower_http::request_id::{MakeRequestUuid, SetRequestIdLayer};

pub use self::client::{AdminClient, ClientError};
use crate::{
    config::{AdminConfig, AdminToken},
    discovery::Discovery,
    error::Error,
    observe::metrics::Metrics,
    redis_client::Redis,
    registry::Registry,
    request_ids,
    upstream::{HealthState, UpstreamHealth},
};

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    pub health: Arc<UpstreamHealth>,
    pub api: ApiSettings,
    /// The HTTPS listener's certificates, reloaded by `POST /admin/v1/tls/reload`.
    pub tls: Option<Arc<crate::tls::Termination>>,
    /// The shared Redis, when configured: `/readyz` says whether it answers.
    pub redis: Option<Arc<Redis>>,
    /// The servers read through reflection, when `discover` is configured.
    pub discovery: Option<Arc<Discovery>>,
}

/// How the admin API is protected and what it accepts, resolved at start.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `None`: the admin API is open (only allowed on a loopback address).
    pub token: Option<Arc<AdminToken>>,
    pub max_upload_bytes: usize,
    /// Whether the data plane checks tokens (`auth` is configured), so that
    /// route listings do not claim policies nothing enforces.
    pub auth: bool,
}

/// Why the admin API cannot be served as configured.
#[derive(Debug, thiserror::Error)]
pub enum AdminSetupError {
    #[error("cannot read the admin token from {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the admin listener {0} is not a loopback address: set PROTOGATE_ADMIN_TOKEN or admin.token_file")]
    Unprotected(SocketAddr),
}

impl ApiSettings {
    /// Reads the token (`admin.token`, else `admin.token_file`); refuses an
    /// open admin API on a non-loopback address.
    pub fn new(config: &AdminConfig, auth: bool) -> Result<Self, AdminSetupError> {
        let token = match (&config.token, &config.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| AdminSetupError::Token {
                        path: path.clone(),
                        source,
                    })?;
                Some(AdminToken(text.trim().to_owned()))
            }
            (None, None) => None,
        }
        .filter(|token| !token.0.is_empty());
        if token.is_none() && !is_loopback(config.listen) {
            return Err(AdminSetupError::Unprotected(config.listen));
        }
        Ok(Self {
            token: token.map(Arc::new),
            max_upload_bytes: config.max_upload_bytes,
            auth,
        })
    }
}

/// `GET /metrics`: the Prometheus text exposition (also on the public
/// listener with `metrics.on_public_listener`).
pub(crate) async fn scrape(
    State((metrics, registry)): State<(Metrics, Arc<Registry>)>,
) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        metrics.render(&registry.figures()),
    )
        .into_response()
}

fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The admin router; add endpoints here.
pub fn router(state: AdminState) -> Router {
    let open = state.api.token.is_none();
    let router = Router::new()
        .merge(api::router(
            state.registry.clone(),
            state.metrics.clone(),
            state.api.clone(),
            state.tls.clone(),
            state.discovery.clone(),
        ))
        .route("/", any(console::page))
        .route(
            "/metrics",
            get(scrape).with_state((state.metrics.clone(), state.registry.clone())),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz).with_state(state));
    let router = if open {
        router.layer(middleware::from_fn(loopback_host_only))
    } else {
        router
    };
    // Minted first, so that every refusal carries a request id.
    router.layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Answers only requests for a loopback host: `localhost` or a loopback
/// address, with any port (`Host`, or the HTTP/2 authority).
async fn loopback_host_only(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(Authority::as_str))
        .unwrap_or_default();
    if is_loopback_host(host) {
        return next.run(request).await;
    }
    let refused = Error::PermissionDenied(
        format!("without an admin token only requests for localhost, 127.0.0.1 or [::1] are answered, not for `{host}`").into(),
    );
    refused.into_response(request_ids::request_id(request.headers()), None)
}

fn is_loopback_host(host: &str) -> bool {
    // A `Host` has no user part (an authority may).
    let Some(authority) = host
        .parse::<Authority>()
        .ok()
        .filter(|_| !host.contains('@'))
    else {
        return false;
    };
    let name = authority.host();
    name.eq_ignore_ascii_case("localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let catalog = state.registry.load();
    let generation = catalog.generation();
    let mut ready = generation > 0;
    let mut upstreams = Map::new();
    for (name, health, within_grace) in state.health.states() {
        ready &= within_grace;
        let label = match health {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        };
        upstreams.insert(name.to_owned(), Value::from(label));
    }
    let mut body = json!({ "ready": ready, "generation": generation, "upstreams": upstreams });
    // Reported, not required: without Redis the data plane still serves.
    if let Some(redis) = &state.redis {
        body["redis"] = Value::from(if redis.is_up() { "up" } else { "down" });
    }
    if let Some(discovery) = &state.discovery {
        let mut sources = Map::new();
        for source in discovery.status() {
            let serving = catalog.sets().iter().any(|set| set.name == source.set);
            ready &= serving;
            let last_read = source.last_read.map(api::rfc3339);
            let entry = json!({ "set": source.set, "serving": serving, "lastRead": last_read, "error": source.error });
            sources.insert(source.url, entry);
        }
        body["ready"] = Value::from(ready);
        body["discovery"] = Value::Object(sources);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_names_and_addresses_of_loopback_with_any_port() {
        for host in [
            "localhost",
            "LOCALHOST:9901",
            "127.0.0.1",
            "127.0.0.1:9901",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:9901",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1:9901",
            "[::2]:9901",
            "user@localhost",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
