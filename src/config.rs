//! The YAML configuration model, its defaults, validation and CLI overrides.
//!
//! Every field has a default, so an empty file (or none) is a valid config and
//! a gateway can run from flags alone. Unknown keys and bad values are errors
//! that name the key and its line (serde_yaml's path + location).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the public listener. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    pub descriptors: DescriptorsConfig,
    /// Where each package or service is served; longest pattern wins.
    pub upstreams: Vec<UpstreamConfig>,
    pub json: JsonConfig,
    pub query: QueryConfig,
    pub limits: LimitsConfig,
}

/// Which descriptor sets to load at start.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DescriptorsConfig {
    /// Every `*.binpb`, `*.pb` and `*.desc` file in this directory. Default: none.
    pub dir: Option<PathBuf>,
    /// Individual descriptor set files. Default: none.
    pub files: Vec<PathBuf>,
    /// Expose methods without a `google.api.http` annotation at
    /// `POST /{package.Service}/{Method}` with body `*`. Default `false`.
    pub expose_unannotated: bool,
}

/// One upstream: the gRPC server for a package or a fully-qualified service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// A proto package (`acme.orders.v1`), a package prefix (`acme`) or a
    /// fully-qualified service (`acme.orders.v1.OrderService`).
    pub pattern: String,
    /// `http://host:port` (h2c) or `https://host:port` (TLS).
    pub url: String,
    /// Deadline for each call, sent as `grpc-timeout`. Default: 30s.
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM file with the CA certificates trusted for `https://`; default: the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The proto3 JSON print and parse options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonConfig {
    /// Print fields that hold their default value. Default `false`.
    pub emit_unpopulated: bool,
    /// Print proto field names (`customer_id`) instead of lowerCamelCase. Default `false`.
    pub use_proto_field_names: bool,
    /// Print enums as numbers instead of names. Default `false`.
    pub enums_as_numbers: bool,
    /// Accept and drop unknown JSON fields instead of answering 400. Default `false`.
    pub ignore_unknown_fields: bool,
}

/// How query parameters are treated.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Parameters that are dropped without error (e.g. `access_token`, `_`). Default: none.
    pub ignored: Vec<String>,
    /// Drop every parameter that names no field instead of answering 400. Default `false`.
    pub ignore_unknown: bool,
}

/// Request limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body accepted (per message for request streams); larger → 413. Default 4 MiB.
    pub max_request_body_bytes: usize,
    /// Largest upstream reply message accepted; larger → 502. Default 16 MiB.
    pub max_response_message_bytes: usize,
    /// Ceiling on a whole request, whatever the upstream timeout. Default 60s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// A configuration that cannot be used, naming the key (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn default_upstream_timeout() -> Duration {
    Duration::from_secs(30)
}

// === impl Config ===

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            descriptors: DescriptorsConfig::default(),
            upstreams: Vec::new(),
            json: JsonConfig::default(),
            query: QueryConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 4 << 20,
            max_response_message_bytes: 16 << 20,
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// Reads and validates a YAML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        // An empty document is the all-defaults config.
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml::from_str(text).map_err(|err| ConfigError::Parse {
                path: PathBuf::from("<config>"),
                message: err.to_string(),
            })?
        };
        config.validate()?;
        Ok(config)
    }

    /// Adds an upstream given on the command line as `PATTERN=URL`; it
    /// replaces a configured upstream with the same pattern.
    pub fn override_upstream(&mut self, spec: &str) -> Result<(), ConfigError> {
        let invalid = |reason: &str| ConfigError::Invalid {
            key: format!("--upstream {spec}"),
            reason: reason.to_owned(),
        };
        let (pattern, url) = spec
            .split_once('=')
            .ok_or_else(|| invalid("expected PATTERN=URL"))?;
        let upstream = UpstreamConfig {
            pattern: pattern.trim().to_owned(),
            url: url.trim().to_owned(),
            timeout: default_upstream_timeout(),
            ca_file: None,
        };
        validate_upstream(&upstream).map_err(|reason| invalid(&reason))?;
        self.upstreams.retain(|u| u.pattern != upstream.pattern);
        self.upstreams.push(upstream);
        Ok(())
    }

    /// Checks what serde cannot: upstream patterns and URLs, duplicates, limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, upstream) in self.upstreams.iter().enumerate() {
            validate_upstream(upstream).map_err(|reason| ConfigError::Invalid {
                key: format!("upstreams[{i}]"),
                reason,
            })?;
            if self.upstreams[..i]
                .iter()
                .any(|u| u.pattern == upstream.pattern)
            {
                return Err(ConfigError::Invalid {
                    key: format!("upstreams[{i}].pattern"),
                    reason: format!("`{}` is configured twice", upstream.pattern),
                });
            }
        }
        if self.limits.max_request_body_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "limits.max_request_body_bytes".into(),
                reason: "must be greater than 0".into(),
            });
        }
        if self.limits.request_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "limits.request_timeout".into(),
                reason: "must be greater than 0".into(),
            });
        }
        Ok(())
    }
}

fn validate_upstream(upstream: &UpstreamConfig) -> Result<(), String> {
    let pattern = &upstream.pattern;
    let is_ident = |part: &str| {
        part.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if pattern != "*" && !pattern.split('.').all(is_ident) {
        return Err(format!(
            "pattern `{pattern}` is not a proto package or fully-qualified service name (or `*`)"
        ));
    }
    let uri: http::Uri = upstream
        .url
        .parse()
        .map_err(|err| format!("url `{}` is invalid: {err}", upstream.url))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => {}
        _ => {
            return Err(format!(
                "url `{}` must be http://host:port or https://host:port",
                upstream.url
            ))
        }
    }
    if upstream.timeout.is_zero() {
        return Err("timeout must be greater than 0".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_is_all_defaults() {
        let config = Config::from_yaml("").unwrap();
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(config.limits.max_request_body_bytes, 4 << 20);
        assert!(!config.json.emit_unpopulated);
    }

    #[test]
    fn full_document_parses() {
        let config = Config::from_yaml(
            "listen: 0.0.0.0:9000\n\
             descriptors: { dir: descriptor-sets, expose_unannotated: true }\n\
             upstreams:\n  - { pattern: acme.orders, url: 'http://127.0.0.1:50051', timeout: 250ms }\n\
             json: { emit_unpopulated: true }\n\
             query: { ignored: [access_token, _] }\n\
             limits: { request_timeout: 5s }\n",
        )
        .unwrap();
        assert_eq!(config.upstreams[0].timeout, Duration::from_millis(250));
        assert_eq!(config.query.ignored, ["access_token", "_"]);
        assert!(config.descriptors.expose_unannotated);
        assert_eq!(config.limits.request_timeout, Duration::from_secs(5));
    }

    #[test]
    fn the_documented_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/protogate.yaml");
        let config = Config::from_file(&path).unwrap();
        assert_eq!(config.upstreams.len(), 2);
        assert_eq!(config.limits, LimitsConfig::default());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err =
            Config::from_yaml("listen: 127.0.0.1:1\njson:\n  emit_unpopulatd: true\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("emit_unpopulatd") && text.contains("line 3"),
            "{text}"
        );
    }

    #[test]
    fn bad_value_is_named() {
        let err =
            Config::from_yaml("upstreams:\n  - { pattern: a, url: 'http://x:1', timeout: soon }\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("upstreams[0].timeout") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn bad_upstream_url_and_pattern_are_refused() {
        let err = Config::from_yaml("upstreams: [{ pattern: a, url: 'ftp://x' }]").unwrap_err();
        assert!(
            err.to_string().starts_with("upstreams[0]: url `ftp://x`"),
            "{err}"
        );
        let err =
            Config::from_yaml("upstreams: [{ pattern: 'a/b', url: 'http://x:1' }]").unwrap_err();
        assert!(err.to_string().contains("pattern `a/b`"), "{err}");
    }

    #[test]
    fn cli_upstream_replaces_configured_one() {
        let mut config =
            Config::from_yaml("upstreams: [{ pattern: acme, url: 'http://a:1', timeout: 1s }]")
                .unwrap();
        config.override_upstream("acme=http://b:2").unwrap();
        assert_eq!(config.upstreams.len(), 1);
        assert_eq!(config.upstreams[0].url, "http://b:2");
        assert!(config.override_upstream("nope").is_err());
    }
}
