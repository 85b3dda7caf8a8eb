//! CORS (tower-http's `CorsLayer`), configured per gateway. It sits before the
//! route step, so a preflight (`OPTIONS`) is answered by the gateway without
//! routing or touching an upstream, and every response -- errors included --
//! carries the CORS headers.

use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::CorsConfig;

/// The layer for `config` (validated by `Config::validate`; invalid entries are skipped).
pub fn layer(config: &CorsConfig) -> CorsLayer {
    let origins = if config.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let names = |names: &[String]| -> Vec<HeaderName> {
        names
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect()
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods(
            config
                .allowed_methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect::<Vec<_>>(),
        )
        .allow_headers(names(&config.allowed_headers))
        .expose_headers(names(&config.exposed_headers))
        .allow_credentials(config.allow_credentials)
        .max_age(config.max_age)
}
