//! The admin listener: its own small router on its own address, never
//! sharing the data plane's layers.
//!
//! * `GET /metrics` -- Prometheus text exposition of this server's metrics
//! * `GET /healthz` -- 200 while the process serves
//! * `GET /readyz` -- 200 when the catalog is loaded and every upstream is
//!   healthy or within its grace period, else 503; the body lists each upstream

use std::sync::Arc;

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};

use crate::{
    observe::metrics::{self, Metrics},
    registry::Registry,
    upstream::{HealthState, UpstreamHealth},
};

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    pub health: Arc<UpstreamHealth>,
}

/// The admin router; add endpoints here.
pub fn router(state: AdminState) -> Router {
    Router::new()
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
