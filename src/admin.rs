//! The admin listener: its own small router on its own address, never
//! sharing the data plane's steps.
//!
//! * `GET /metrics` -- Prometheus text exposition of this server's metrics
//! * `GET /healthz` -- 200 while the process serves
//! * `GET /readyz` -- 200 when the catalog is loaded and every upstream is
//!   healthy or within its grace period, else 503; the body lists each upstream
//! * `/admin/v1/...` -- the admin API ([`api`]): descriptor sets, upstreams, routes
//!
//! Only the admin API requires the bearer token: probes and Prometheus
//! scrapes read nothing secret and must work without credentials.

mod api;
mod client;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};

pub use self::client::{AdminClient, ClientError};
use crate::{
    config::{AdminConfig, AdminToken},
    observe::metrics::{self, Metrics},
    registry::Registry,
    server::StartError,
    upstream::{HealthState, UpstreamHealth},
};

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    pub health: Arc<UpstreamHealth>,
    pub api: ApiSettings,
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

impl ApiSettings {
    /// Reads the token (`admin.token`, else `admin.token_file`); refuses an
    /// open admin API on a non-loopback address.
    pub fn new(config: &AdminConfig, auth: bool) -> Result<Self, StartError> {
        let token = match (&config.token, &config.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| StartError::AdminToken {
                        path: path.clone(),
                        source,
                    })?;
                Some(AdminToken(text.trim().to_owned()))
            }
            (None, None) => None,
        }
        .filter(|token| !token.0.is_empty());
        if token.is_none() && !is_loopback(config.listen) {
            return Err(StartError::AdminUnprotected(config.listen));
        }
        Ok(Self {
            token: token.map(Arc::new),
            max_upload_bytes: config.max_upload_bytes,
            auth,
        })
    }
}

fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The admin router; add endpoints here.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .merge(api::router(state.registry.clone(), state.api.clone()))
        .route(
            "/metrics",
            get(metrics::scrape).with_state((state.metrics.clone(), state.registry.clone())),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz).with_state(state))
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let generation = state.registry.load().generation();
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
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "ready": ready, "generation": generation, "upstreams": upstreams });
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
