//! The YAML configuration model, its defaults, validation and CLI overrides.
//!
//! Every field has a default, so an empty file (or none) is a valid config and
//! a gateway can run from flags alone. Unknown keys and bad values are errors
//! that name the key and its line (serde_yaml_ng's path + location).

use std::{
    net::{SocketAddr, ToSocketAddrs as _},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

mod discover;
mod openapi;
mod policy;
mod tls;
mod tracing;

pub use self::discover::DiscoverConfig;
pub use self::openapi::{DocumentPolicy, OpenApiConfig, ServerConfig};
pub(crate) use self::policy::DEFAULT_CLAIM_HEADERS;
pub use self::policy::{
    AuthConfig, CorsConfig, HeadersConfig, OnRedisError, PolicyRule, ProviderConfig, QuotaConfig,
    QuotasConfig, RateLimitConfig, RateLimitPolicy,
};
pub use self::tls::{CertificateConfig, ClientAuth, ClientIdentityField, TlsConfig};
pub use self::tracing::{OtlpConfig, OtlpProtocol, TracingConfig};
pub use crate::deprecation::DeprecationConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the public listener (a host name is resolved). Default `127.0.0.1:8080`.
    #[serde(deserialize_with = "deserialize_addr")]
    pub listen: SocketAddr,
    /// Threads serving the public listener, each with its own runtime and
    /// upstream connections. Default `0`: one per core.
    pub workers: usize,
    /// While the load fits on one worker, each worker on a CPU of its own
    /// (of those the process may use, in turn), where its caches stay warm:
    /// well below saturation a worker that the scheduler moves to whichever
    /// CPU is free pays for it in cache misses (`loadbench --rate`: a
    /// quarter of a GET's CPU). Default `true`; `false` when the gateway
    /// shares its CPUs with other busy processes that a pinned worker
    /// would have to wait for.
    pub pin_workers: bool,
    pub descriptors: DescriptorsConfig,
    /// Where each package or service is served; longest pattern wins.
    pub upstreams: Vec<UpstreamConfig>,
    pub json: JsonConfig,
    pub query: QueryConfig,
    pub limits: LimitsConfig,
    pub filters: FiltersConfig,
    /// JWT authentication; off when absent.
    pub auth: Option<AuthConfig>,
    /// Per-method policy overrides, applied in order over the proto options.
    pub policies: Vec<PolicyRule>,
    /// Rate limiting; off when absent.
    pub rate_limit: Option<RateLimitConfig>,
    /// Ids, request start, static, forwarded and returned headers.
    pub headers: HeadersConfig,
    /// CORS; off when absent.
    pub cors: Option<CorsConfig>,
    /// Peers whose `X-Forwarded-For` names the client (CIDRs). Default: none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub admin: AdminConfig,
    pub metrics: MetricsConfig,
    pub access_log: AccessLogConfig,
    pub health: HealthConfig,
    /// Methods answered with `Deprecation`, `Sunset` and `Link` headers, on
    /// top of those the protos mark `deprecated`; the first match wins.
    pub deprecations: Vec<DeprecationConfig>,
    /// The published OpenAPI document and reference page.
    pub openapi: OpenApiConfig,
    /// HTTPS on a listener of its own, beside the cleartext `listen`; off when absent.
    pub tls: Option<TlsConfig>,
    /// The Redis that several instances share (quotas, registry); none by default.
    pub redis: Option<RedisConfig>,
    pub registry: RegistryConfig,
    /// Spans of each request, exported to an OpenTelemetry collector.
    pub tracing: TracingConfig,
    /// gRPC servers whose services are read through server reflection and
    /// served from them; none by default.
    pub discover: Vec<DiscoverConfig>,
}

/// The Redis shared by several gateway instances: `rate_limit.policy: redis`
/// counts quotas there, `registry.store: redis` keeps the managed
/// descriptor sets and upstreams there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Put in front of every key and channel, so that several gateways (or
    /// other programs) can share one Redis. Default `protogate:`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Longest wait for one command; past it the command counts as a Redis
    /// error. Default 50ms.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Name of the environment variable holding the password, when it is
    /// not in the URL. Default: none.
    #[serde(default)]
    pub password_env: Option<String>,
}

/// Where the descriptor sets and upstreams managed at run time are kept.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `directory` (default): `descriptors.dir`; `redis`: in Redis, shared by
    /// every instance, with `descriptors.dir` as this instance's copy.
    pub store: RegistryStore,
}

/// See [`RegistryConfig::store`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryStore {
    #[default]
    Directory,
    Redis,
}

/// Which descriptor sets to load at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DescriptorsConfig {
    /// Every `*.binpb`, `*.pb` and `*.desc` file in this directory; admin
    /// uploads are persisted here. Default: none.
    pub dir: Option<PathBuf>,
    /// Reload when a file in `dir` changes (SIGHUP always reloads). Default `true`.
    pub watch: bool,
    /// Individual descriptor set files. Default: none.
    pub files: Vec<PathBuf>,
    /// Expose methods without a `google.api.http` annotation at
    /// `POST /{package.Service}/{Method}` with body `*`. Default `false`.
    pub expose_unannotated: bool,
}

/// One upstream: the gRPC server for a package or a fully-qualified service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    /// PEM certificate chain presented to an `https://` upstream that asks
    /// for one (mutual TLS); needs `client_key_file`. Default: none.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (RSA, ECDSA or Ed25519) of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// The name sent as SNI, checked against the upstream's certificate and
    /// sent as `:authority`, when it is not the URL's host (a mesh address
    /// dialled by IP). Default: the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
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
    /// Largest metadata sent upstream (names, values and 32 bytes per entry,
    /// as HTTP/2 counts a header list); larger → 431 before any call. Below
    /// the 16 KiB header list tonic and h2 servers accept by default, with
    /// room for the gateway's own call headers. Default 8 KiB.
    pub max_forwarded_metadata_bytes: usize,
    /// Longest a client may take to send a request's headers, from its first
    /// byte (a new connection's first request: from the connect); then 408
    /// and close. Default 10s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection on which no request starts for this long is closed (one
    /// in flight is finished first). Default 60s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How often an HTTP/2 connection that has read nothing is pinged. Default 30s.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// A ping not answered within this closes the HTTP/2 connection. Default 10s.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// Client connections served at once; past it new ones are refused at
    /// once. Default: the open-file limit (raised to its hard limit at
    /// start) less a quarter, at most 4096 kept back for everything else.
    pub max_connections: Option<usize>,
}

/// Response and request filtering beyond what the protos mark.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FiltersConfig {
    /// What a request that sets an internal field gets: `reject` (400, default)
    /// or `clear` (the field is dropped silently).
    pub internal_input: InternalInput,
    /// Field-mask paths omitted from the responses of matching methods; they
    /// add up with the fields the protos mark internal.
    pub responses: Vec<ResponseFilterConfig>,
    /// Fields that never leave, by type (`acme.orders.v1.LineItem.unit_price_cents`):
    /// treated exactly as if the proto marked them `(protogate.v1.field).internal`,
    /// in every reply and request where their message appears.
    pub fields: Vec<String>,
}

/// See [`FiltersConfig::internal_input`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InternalInput {
    #[default]
    Reject,
    Clear,
}

/// Paths to omit from the responses of the methods a glob matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFilterConfig {
    /// A glob over method, service or package names: `acme.orders.v1.OrderService.GetOrder`,
    /// `acme.orders.v1.OrderService`, `acme.orders.*`.
    pub methods: String,
    /// Paths relative to the method's reply, e.g. `internal_note`, `items.cost_cents`.
    pub omit: Vec<String>,
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz` and the admin API
/// (`/admin/v1/...`); never the data plane's steps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener (a host name is resolved). Default `127.0.0.1:9901`.
    #[serde(deserialize_with = "deserialize_addr")]
    pub listen: SocketAddr,
    /// File holding the admin API's bearer token (the environment variable
    /// `PROTOGATE_ADMIN_TOKEN` wins). Without a token the admin API is open,
    /// which is refused unless `listen` is a loopback address. Default: none.
    pub token_file: Option<PathBuf>,
    /// Largest descriptor set or `.proto` archive accepted. Default 16 MiB.
    pub max_upload_bytes: usize,
    /// The token itself: from the environment, never from the file.
    #[serde(skip)]
    pub token: Option<AdminToken>,
}

/// A bearer token that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Prometheus metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record request metrics (the data plane's metrics step). Default `true`.
    pub enabled: bool,
    /// Also serve `GET /metrics` on the public listener. Default `false`.
    pub on_public_listener: bool,
    /// Upper bounds, in seconds, of the request and upstream latency
    /// histogram buckets. Default: 1 ms to 10 s.
    pub duration_buckets: Vec<f64>,
}

/// The access log: one structured line per finished request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Default `true`.
    pub enabled: bool,
    /// `json` (default) or `text`.
    pub format: AccessLogFormat,
    /// Append to this file instead of writing to stdout. Default: stdout.
    pub file: Option<PathBuf>,
    /// Without `file`, write to stderr instead of stdout: the demo's stdout
    /// is its banner. Not a config key.
    #[serde(skip)]
    pub stderr: bool,
    /// Fraction of 2xx responses logged, from 0 to 1; every other status is
    /// always logged. Default `1`.
    pub sample_2xx: f64,
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    #[default]
    Json,
    Text,
}

/// Upstream health probes (`grpc.health.v1.Health/Check`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Time between probes of each upstream. Default 10s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Longest wait for a probe's answer. Default 2s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long after start, or after its last healthy probe, an upstream
    /// still counts as ready in `/readyz`. Default 30s.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
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

/// More serving threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

fn default_upstream_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_key_prefix() -> String {
    "protogate:".to_owned()
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}

// === impl Config ===

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            pin_workers: true,
            descriptors: DescriptorsConfig::default(),
            upstreams: Vec::new(),
            json: JsonConfig::default(),
            query: QueryConfig::default(),
            limits: LimitsConfig::default(),
            filters: FiltersConfig::default(),
            auth: None,
            policies: Vec::new(),
            rate_limit: None,
            headers: HeadersConfig::default(),
            cors: None,
            trusted_proxies: Vec::new(),
            admin: AdminConfig::default(),
            metrics: MetricsConfig::default(),
            access_log: AccessLogConfig::default(),
            health: HealthConfig::default(),
            deprecations: Vec::new(),
            openapi: OpenApiConfig::default(),
            tls: None,
            redis: None,
            registry: RegistryConfig::default(),
            tracing: TracingConfig::default(),
            discover: Vec::new(),
        }
    }
}

impl Default for DescriptorsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            watch: true,
            files: Vec::new(),
            expose_unannotated: false,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            token_file: None,
            max_upload_bytes: 16 << 20,
            token: None,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            on_public_listener: false,
            duration_buckets: vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        }
    }
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            format: AccessLogFormat::Json,
            file: None,
            stderr: false,
            sample_2xx: 1.0,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            grace_period: Duration::from_secs(30),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 4 << 20,
            max_response_message_bytes: 16 << 20,
            request_timeout: Duration::from_secs(60),
            max_forwarded_metadata_bytes: 8 << 10,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            max_connections: None,
        }
    }
}

impl Config {
    /// Reads and validates a YAML file. Its relative paths are relative to
    /// its folder, so that it means the same from any working directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_yaml(&text).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        if let Some(folder) = path.parent() {
            config.rebase_paths(folder);
        }
        Ok(config)
    }

    /// Puts `folder` in front of every relative path of the file.
    fn rebase_paths(&mut self, folder: &Path) {
        let providers = self.auth.iter_mut().flat_map(|auth| &mut auth.providers);
        let paths = (self.descriptors.dir.iter_mut())
            .chain(&mut self.descriptors.files)
            .chain(self.upstreams.iter_mut().flat_map(|u| {
                (u.ca_file.iter_mut())
                    .chain(&mut u.client_cert_file)
                    .chain(&mut u.client_key_file)
            }))
            .chain(self.discover.iter_mut().flat_map(DiscoverConfig::paths_mut))
            .chain(self.tls.iter_mut().flat_map(|tls| {
                (tls.certificates.iter_mut())
                    .flat_map(|c| [&mut c.cert_file, &mut c.key_file])
                    .chain(&mut tls.client_ca_file)
            }))
            .chain(providers.flat_map(|p| p.jwks_file.iter_mut().chain(&mut p.public_key_file)))
            .chain(&mut self.admin.token_file)
            .chain(&mut self.access_log.file);
        for path in paths {
            if path.is_relative() {
                *path = folder.join(&*path);
            }
        }
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        // An empty document is the all-defaults config.
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|err| ConfigError::Parse {
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
            client_cert_file: None,
            client_key_file: None,
            server_name: None,
        };
        validate_upstream(&upstream).map_err(|reason| invalid(&reason))?;
        self.upstreams.retain(|u| u.pattern != upstream.pattern);
        self.upstreams.push(upstream);
        Ok(())
    }

    /// Adds a server to discover given on the command line (`--discover
    /// URL`), with the defaults; it replaces a configured one with the same URL.
    pub fn override_discover(&mut self, url: &str) {
        self.discover.retain(|source| source.url != url);
        self.discover.push(DiscoverConfig::new(url));
    }

    /// The serving threads: `workers`, or one per core when it is 0.
    pub fn workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
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
        for (i, filter) in self.filters.responses.iter().enumerate() {
            if let Err(err) = globset::Glob::new(&filter.methods) {
                return Err(ConfigError::Invalid {
                    key: format!("filters.responses[{i}].methods"),
                    reason: err.to_string(),
                });
            }
        }
        if self.workers > MAX_WORKERS {
            return Err(ConfigError::Invalid {
                key: "workers".into(),
                reason: format!("at most {MAX_WORKERS} (0 is one per core)"),
            });
        }
        if self.limits.max_request_body_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "limits.max_request_body_bytes".into(),
                reason: "must be greater than 0".into(),
            });
        }
        let limits = &self.limits;
        for (key, timeout) in [
            ("limits.request_timeout", limits.request_timeout),
            ("limits.header_read_timeout", limits.header_read_timeout),
            ("limits.idle_timeout", limits.idle_timeout),
            (
                "limits.http2_keepalive_interval",
                limits.http2_keepalive_interval,
            ),
            (
                "limits.http2_keepalive_timeout",
                limits.http2_keepalive_timeout,
            ),
        ] {
            if timeout.is_zero() {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    reason: "must be greater than 0".into(),
                });
            }
        }
        if limits.max_connections == Some(0) {
            return Err(ConfigError::Invalid {
                key: "limits.max_connections".into(),
                reason: "must be greater than 0".into(),
            });
        }
        for (i, rule) in self.deprecations.iter().enumerate() {
            crate::deprecation::validate(rule).map_err(|reason| ConfigError::Invalid {
                key: format!("deprecations[{i}]"),
                reason,
            })?;
        }
        self.openapi
            .validate(self.auth.is_some())
            .map_err(|(key, reason)| ConfigError::Invalid {
                key: key.into(),
                reason,
            })?;
        policy::validate(self)?;
        tls::validate(self)?;
        tracing::validate(&self.tracing)?;
        discover::validate(self)?;
        self.validate_redis()?;
        self.validate_observability()
    }

    /// Sets `redis.url` (`serve --redis URL`), keeping the other `redis` keys.
    pub fn override_redis_url(&mut self, url: &str) {
        match &mut self.redis {
            Some(redis) => url.clone_into(&mut redis.url),
            None => {
                self.redis = Some(RedisConfig {
                    url: url.to_owned(),
                    key_prefix: default_key_prefix(),
                    timeout: default_redis_timeout(),
                    password_env: None,
                });
            }
        }
    }

    fn validate_redis(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.to_owned(),
            reason,
        };
        if self.registry.store == RegistryStore::Redis {
            if self.redis.is_none() {
                return Err(invalid(
                    "registry.store",
                    "`redis` needs `redis.url` (or `serve --redis URL`)".into(),
                ));
            }
            if self.descriptors.dir.is_none() {
                return Err(invalid(
                    "registry.store",
                    "`redis` needs `descriptors.dir`: this instance's copy of the registry, served while Redis is away".into(),
                ));
            }
        }
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        check_redis_url(&redis.url).map_err(|reason| invalid("redis.url", reason))?;
        if redis.timeout.is_zero() {
            return Err(invalid("redis.timeout", "must be greater than 0".into()));
        }
        if let Some(name) = &redis.password_env {
            if std::env::var_os(name).is_none() {
                return Err(invalid(
                    "redis.password_env",
                    format!("the environment variable `{name}` is not set"),
                ));
            }
        }
        Ok(())
    }

    fn validate_observability(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let buckets = &self.metrics.duration_buckets;
        if buckets.is_empty()
            || buckets.iter().any(|b| !b.is_finite() || *b <= 0.0)
            || buckets.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(invalid(
                "metrics.duration_buckets",
                "must be positive seconds in increasing order",
            ));
        }
        if !(0.0..=1.0).contains(&self.access_log.sample_2xx) {
            return Err(invalid("access_log.sample_2xx", "must be between 0 and 1"));
        }
        if self.health.interval.is_zero() || self.health.timeout.is_zero() {
            return Err(invalid(
                "health",
                "interval and timeout must be greater than 0",
            ));
        }
        Ok(())
    }
}

/// A listen or connect address: `IP:port` as is, or `host:port` resolved
/// (`localhost:8080`), preferring its first IPv4 address: every host has
/// IPv4 loopback, not every container IPv6.
pub fn resolve_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|err| format!("`{text}` is not an address (host:port): {err}"))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

pub(super) fn deserialize_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    resolve_addr(&text).map_err(serde::de::Error::custom)
}

/// `redis://` or `rediss://` (TLS), with host, port, database, user and
/// password as the URL gives them.
fn check_redis_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(format!(
            "`{}` must be redis://host:port[/db] or rediss://host:port[/db]",
            redacted(url)
        ));
    }
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(drop)
        .map_err(|err| format!("`{}` is not a Redis URL: {err}", redacted(url)))
}

/// The URL without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

pub(crate) fn validate_upstream(upstream: &UpstreamConfig) -> Result<(), String> {
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
    if upstream.client_cert_file.is_some() != upstream.client_key_file.is_some() {
        return Err("client_cert_file and client_key_file go together".into());
    }
    let tls_only = [
        ("ca_file", upstream.ca_file.is_some()),
        ("client_cert_file", upstream.client_cert_file.is_some()),
        ("server_name", upstream.server_name.is_some()),
    ];
    if let Some((key, _)) = tls_only.iter().find(|(_, set)| *set) {
        if uri.scheme_str() != Some("https") {
            return Err(format!("{key} needs an https:// url"));
        }
    }
    if let Some(name) = &upstream.server_name {
        rustls::pki_types::ServerName::try_from(name.as_str())
            .map_err(|_| format!("server_name `{name}` is not a DNS name or IP address"))?;
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
        assert_eq!(config.auth.map(|a| a.providers.len()), Some(1));
        assert_eq!(config.policies.len(), 3);
        assert_eq!(
            config.metrics.duration_buckets,
            MetricsConfig::default().duration_buckets
        );
        assert_eq!(config.admin.listen, AdminConfig::default().listen);
        assert_eq!(config.deprecations.len(), 1);
        assert!(config.descriptors.watch);
    }

    #[test]
    fn tls_keys_parse_and_are_checked() {
        let config = Config::from_yaml(
            "tls:\n\
             \x20 listen: 127.0.0.1:9443\n\
             \x20 certificates: [{ cert_file: a.pem, key_file: a-key.pem }]\n\
             \x20 client_ca_file: ca.pem\n\
             \x20 client_auth: optional\n\
             \x20 client_identity: san_uri\n\
             upstreams:\n\
             - { pattern: acme, url: 'https://10.0.0.1:443', server_name: orders.mesh, client_cert_file: c.pem, client_key_file: k.pem }\n",
        )
        .unwrap();
        let tls = config.tls.unwrap();
        assert_eq!(tls.listen.port(), 9443);
        assert_eq!(tls.certificates[0].key_file, Path::new("a-key.pem"));
        assert_eq!(tls.client_auth, ClientAuth::Optional);
        assert_eq!(tls.client_identity, ClientIdentityField::SanUri);
        assert!(tls.watch);
        assert_eq!(
            config.upstreams[0].server_name.as_deref(),
            Some("orders.mesh")
        );

        for (yaml, key, reason) in [
            (
                "tls: { certificates: [] }",
                "tls.certificates",
                "at least one",
            ),
            (
                "listen: 127.0.0.1:8443\ntls: { certificates: [{ cert_file: a, key_file: b }] }",
                "tls.listen",
                "must differ",
            ),
            (
                "upstreams: [{ pattern: acme, url: 'http://h:1', server_name: x }]",
                "upstreams[0]",
                "server_name needs an https:// url",
            ),
            (
                "upstreams: [{ pattern: acme, url: 'https://h:1', client_cert_file: c.pem }]",
                "upstreams[0]",
                "go together",
            ),
            (
                "upstreams: [{ pattern: acme, url: 'https://h:1', server_name: 'not a name' }]",
                "upstreams[0]",
                "not a DNS name",
            ),
        ] {
            match Config::from_yaml(yaml) {
                Err(ConfigError::Invalid { key: k, reason: r }) => {
                    assert_eq!(k, key, "{yaml}");
                    assert!(r.contains(reason), "{yaml}: {r}");
                }
                other => panic!("{yaml}: {other:?}"),
            }
        }
        let unknown = Config::from_yaml("tls: { certificates: [], client_auth: sometimes }");
        assert!(
            matches!(unknown, Err(ConfigError::Parse { ref message, .. }) if message.contains("client_auth")),
            "{unknown:?}"
        );
    }

    #[test]
    fn observability_keys_parse_and_are_checked() {
        let config = Config::from_yaml(
            "admin: { listen: 0.0.0.0:9000 }\n\
             access_log: { format: text, file: /tmp/a.log, sample_2xx: 0.1 }\n\
             health: { interval: 1s, grace_period: 0s }\n",
        )
        .unwrap();
        assert_eq!(config.admin.listen.port(), 9000);
        assert_eq!(config.access_log.format, AccessLogFormat::Text);
        assert_eq!(config.health.interval, Duration::from_secs(1));
        for (yaml, key) in [
            (
                "metrics: { duration_buckets: [1, 0.5] }",
                "metrics.duration_buckets",
            ),
            (
                "metrics: { duration_buckets: [] }",
                "metrics.duration_buckets",
            ),
            ("access_log: { sample_2xx: 2 }", "access_log.sample_2xx"),
            ("health: { interval: 0s }", "health"),
        ] {
            let err = Config::from_yaml(yaml).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{key}: ")), "{yaml}: {err}");
        }
        let err = Config::from_yaml("access_log: { format: xml }").unwrap_err();
        assert!(err.to_string().contains("access_log.format"), "{err}");
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
    fn connection_limits_parse_and_are_checked() {
        let config = Config::from_yaml(
            "limits: { header_read_timeout: 2s, idle_timeout: 5m, http2_keepalive_interval: 1s, \
             http2_keepalive_timeout: 500ms, max_connections: 100 }",
        )
        .unwrap();
        assert_eq!(config.limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(config.limits.idle_timeout, Duration::from_secs(300));
        assert_eq!(
            config.limits.http2_keepalive_interval,
            Duration::from_secs(1)
        );
        assert_eq!(
            config.limits.http2_keepalive_timeout,
            Duration::from_millis(500)
        );
        assert_eq!(config.limits.max_connections, Some(100));
        for (yaml, key) in [
            (
                "limits: { header_read_timeout: 0s }",
                "limits.header_read_timeout",
            ),
            ("limits: { idle_timeout: 0s }", "limits.idle_timeout"),
            (
                "limits: { http2_keepalive_timeout: 0s }",
                "limits.http2_keepalive_timeout",
            ),
            ("limits: { max_connections: 0 }", "limits.max_connections"),
        ] {
            let err = Config::from_yaml(yaml).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{key}: ")), "{yaml}: {err}");
        }
    }

    #[test]
    fn workers_default_to_the_cores_and_are_bounded() {
        let config = Config::from_yaml("workers: 3").unwrap();
        assert_eq!(config.workers(), 3);
        assert!(config.pin_workers, "pinned unless told otherwise");
        assert!(!Config::from_yaml("pin_workers: false").unwrap().pin_workers);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(Config::default().workers(), cores);
        let err = Config::from_yaml("workers: 100000").unwrap_err();
        assert!(
            err.to_string().starts_with("workers: at most 1024"),
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
    fn listen_addresses_may_be_host_names() {
        let config =
            Config::from_yaml("listen: localhost:8085\nadmin: { listen: 'localhost:9902' }")
                .unwrap();
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 8085)));
        assert_eq!(
            config.admin.listen,
            SocketAddr::from(([127, 0, 0, 1], 9902))
        );
        let err = Config::from_yaml("listen: localhost")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`localhost` is not an address"), "{err}");
    }

    #[test]
    fn relative_paths_in_a_file_are_relative_to_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(
            &path,
            "descriptors: { dir: sets, files: [a.binpb, /abs/b.binpb] }\n\
             auth: { providers: [{ issuer: i, jwks_file: keys/jwks.json }] }\n\
             admin: { token_file: token }\naccess_log: { file: ../access.log }\n",
        )
        .unwrap();
        let config = Config::from_file(&path).unwrap();
        let folder = dir.path();
        assert_eq!(config.descriptors.dir, Some(folder.join("sets")));
        assert_eq!(
            config.descriptors.files,
            [folder.join("a.binpb"), PathBuf::from("/abs/b.binpb")]
        );
        let provider = &config.auth.unwrap().providers[0];
        assert_eq!(provider.jwks_file, Some(folder.join("keys/jwks.json")));
        assert_eq!(config.admin.token_file, Some(folder.join("token")));
        assert_eq!(config.access_log.file, Some(folder.join("../access.log")));
    }

    #[test]
    fn redis_urls_are_checked_and_passwords_never_shown() {
        assert!(check_redis_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_redis_url("rediss://cache.example:6380").is_ok());
        let err = check_redis_url("http://user:secret@127.0.0.1:6379").unwrap_err();
        assert!(err.contains("redis://") && !err.contains("secret"), "{err}");
        let err = check_redis_url("redis://:secret@127.0.0.1:6379/x").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        let err = Config::from_yaml("redis: { url: 'redis://h:1', timeout: 0s }").unwrap_err();
        assert!(err.to_string().starts_with("redis.timeout: "), "{err}");
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
