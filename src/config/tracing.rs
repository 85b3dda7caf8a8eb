//! The YAML model of trace export: the `tracing` section, its defaults and
//! validation. Nothing is exported until `tracing.otlp` is present.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ConfigError;

/// Distributed tracing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Spans exported to an OpenTelemetry collector; off when absent.
    pub otlp: Option<OtlpConfig>,
}

/// Where and how spans go: OTLP to a collector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's OTLP/gRPC address: `http://host:port` (usually port
    /// 4317) or `https://host:port` (verified against the system's roots).
    pub endpoint: String,
    /// `grpc`, the only one (and the default).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// The share of new traces recorded, 0 to 1, decided by the trace id
    /// (so every hop that samples by ratio agrees). A trace the client
    /// started follows its `traceparent`'s sampled flag instead. Default 1.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// gRPC metadata sent with every export (a vendor's API key). Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// See [`OtlpConfig::protocol`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
}

fn default_sample_ratio() -> f64 {
    1.0
}

impl OtlpConfig {
    /// Spans of every new trace to the collector at `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            protocol: OtlpProtocol::Grpc,
            sample_ratio: default_sample_ratio(),
            headers: BTreeMap::new(),
        }
    }
}

/// Checks what serde cannot: the endpoint's form, the ratio's range, and
/// headers that gRPC metadata can carry.
pub(super) fn validate(tracing: &TracingConfig) -> Result<(), ConfigError> {
    let Some(otlp) = &tracing.otlp else {
        return Ok(());
    };
    let invalid = |key: &str, reason: String| ConfigError::Invalid {
        key: key.to_owned(),
        reason,
    };
    let endpoint = &otlp.endpoint;
    let uri: http::Uri = endpoint.parse().map_err(|err| {
        invalid(
            "tracing.otlp.endpoint",
            format!("`{endpoint}` is invalid: {err}"),
        )
    })?;
    let bare = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() || !bare {
        return Err(invalid(
            "tracing.otlp.endpoint",
            format!("`{endpoint}` must be http://host:port or https://host:port"),
        ));
    }
    if !(0.0..=1.0).contains(&otlp.sample_ratio) {
        return Err(invalid(
            "tracing.otlp.sample_ratio",
            "must be between 0 and 1".into(),
        ));
    }
    for (name, value) in &otlp.headers {
        let key = format!("tracing.otlp.headers.{name}");
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .ok()
            .filter(|header| header.as_str() == name && !name.starts_with("grpc-"));
        if name.is_none() {
            return Err(invalid(
                &key,
                "not a gRPC metadata name (lower-case letters, digits, `-_.`; no `grpc-` prefix)"
                    .into(),
            ));
        }
        if key.ends_with("-bin") {
            return Err(invalid(
                &key,
                "binary (`-bin`) metadata is not supported".into(),
            ));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(invalid(
                &key,
                "the value must be printable ASCII text".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    use super::OtlpProtocol;

    #[test]
    fn otlp_keys_parse_with_their_defaults() {
        let config = Config::from_yaml(
            "tracing:\n\
             \x20 otlp:\n\
             \x20   endpoint: http://collector:4317\n\
             \x20   sample_ratio: 0.25\n\
             \x20   headers: { x-api-key: secret }\n",
        )
        .unwrap();
        let otlp = config.tracing.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://collector:4317");
        assert_eq!(otlp.protocol, OtlpProtocol::Grpc);
        assert_eq!(otlp.sample_ratio, 0.25);
        assert_eq!(otlp.headers["x-api-key"], "secret");
        let defaults =
            Config::from_yaml("tracing: { otlp: { endpoint: 'https://c:4317', protocol: grpc } }")
                .unwrap()
                .tracing
                .otlp
                .unwrap();
        assert_eq!(defaults.sample_ratio, 1.0);
        assert!(defaults.headers.is_empty());
        assert_eq!(Config::from_yaml("").unwrap().tracing.otlp, None);
    }

    #[test]
    fn bad_otlp_keys_are_refused_by_name() {
        for (otlp, key, reason) in [
            (
                "endpoint: 'collector:4317'",
                "tracing.otlp.endpoint",
                "must be http://host:port",
            ),
            (
                "endpoint: 'grpc://c:4317'",
                "tracing.otlp.endpoint",
                "must be http://host:port",
            ),
            (
                "endpoint: 'http://c:4317/v1/traces'",
                "tracing.otlp.endpoint",
                "must be http://host:port",
            ),
            (
                "endpoint: 'http://c:4317', sample_ratio: 1.5",
                "tracing.otlp.sample_ratio",
                "between 0 and 1",
            ),
            (
                "endpoint: 'http://c:4317', sample_ratio: -0.1",
                "tracing.otlp.sample_ratio",
                "between 0 and 1",
            ),
            (
                "endpoint: 'http://c:4317', sample_ratio: .nan",
                "tracing.otlp.sample_ratio",
                "between 0 and 1",
            ),
            (
                "endpoint: 'http://c:4317', headers: { X-Key: a }",
                "tracing.otlp.headers.X-Key",
                "not a gRPC metadata name",
            ),
            (
                "endpoint: 'http://c:4317', headers: { grpc-timeout: 1S }",
                "tracing.otlp.headers.grpc-timeout",
                "not a gRPC metadata name",
            ),
            (
                "endpoint: 'http://c:4317', headers: { key-bin: AAAA }",
                "tracing.otlp.headers.key-bin",
                "binary",
            ),
            (
                "endpoint: 'http://c:4317', headers: { key: \"a\\nb\" }",
                "tracing.otlp.headers.key",
                "printable",
            ),
        ] {
            let yaml = format!("tracing: {{ otlp: {{ {otlp} }} }}");
            match Config::from_yaml(&yaml) {
                Err(ConfigError::Invalid { key: k, reason: r }) => {
                    assert_eq!(k, key, "{yaml}");
                    assert!(r.contains(reason), "{yaml}: {r}");
                }
                other => panic!("{yaml}: {other:?}"),
            }
        }
        let protocol = "tracing: { otlp: { endpoint: 'http://c:4317', protocol: http/protobuf } }";
        let refused = Config::from_yaml(protocol).unwrap_err().to_string();
        assert!(
            refused.contains("tracing.otlp.protocol") && refused.contains("expected `grpc`"),
            "{refused}"
        );
    }
}
