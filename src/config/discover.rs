//! The `discover` section: gRPC servers whose services are read through
//! server reflection and served without an upload.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{default_upstream_timeout, validate_upstream, Config, ConfigError, UpstreamConfig};

/// One server to read the schema of (`discover: [{url, services, refresh, timeout}]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverConfig {
    /// `http://host:port` (h2c) or `https://host:port` (TLS, with the keys
    /// below as for an upstream); its services are served from it.
    pub url: String,
    /// Globs of fully-qualified service names to serve (`acme.orders.*`).
    /// Default: every service except `grpc.*`. The reflection and health
    /// services are never served, whatever the globs say.
    #[serde(default)]
    pub services: Vec<String>,
    /// How often the schema is read again; `0` reads it only at start and on
    /// `POST /admin/v1/discover:refresh`. Default 60s.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// Longest time one reading of the schema may take. Default 5s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// As `upstreams[].ca_file`, for an `https://` url.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// As `upstreams[].client_cert_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// As `upstreams[].client_key_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// As `upstreams[].server_name`.
    #[serde(default)]
    pub server_name: Option<String>,
}

fn default_refresh() -> Duration {
    Duration::from_secs(60)
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl DiscoverConfig {
    /// `url` with every other key at its default (`serve --discover URL`).
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            services: Vec::new(),
            refresh: default_refresh(),
            timeout: default_timeout(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            server_name: None,
        }
    }

    /// The server as the upstream of `pattern`, with this entry's TLS keys:
    /// what the gateway calls its services on.
    pub fn upstream(&self, pattern: &str) -> UpstreamConfig {
        UpstreamConfig {
            pattern: pattern.to_owned(),
            url: self.url.clone(),
            timeout: default_upstream_timeout(),
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
            server_name: self.server_name.clone(),
        }
    }

    /// Its relative files, for [`Config::rebase_paths`].
    pub(super) fn paths_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        (self.ca_file.iter_mut())
            .chain(&mut self.client_cert_file)
            .chain(&mut self.client_key_file)
    }
}

/// Each entry's URL and TLS keys as an upstream's, globs that parse, a
/// timeout, and no URL twice.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    for (i, source) in config.discover.iter().enumerate() {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: format!("discover[{i}]{key}"),
            reason,
        };
        validate_upstream(&source.upstream("*")).map_err(|reason| invalid("", reason))?;
        if source.timeout.is_zero() {
            return Err(invalid(".timeout", "must be greater than 0".into()));
        }
        for (j, glob) in source.services.iter().enumerate() {
            globset::Glob::new(glob)
                .map_err(|err| invalid(&format!(".services[{j}]"), err.to_string()))?;
        }
        if config.discover[..i].iter().any(|s| s.url == source.url) {
            return Err(invalid(
                ".url",
                format!("`{}` is configured twice", source.url),
            ));
        }
    }
    Ok(())
}
