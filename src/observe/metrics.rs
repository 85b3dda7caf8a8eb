//! Prometheus metrics, owned by one `Server`: its own
//! recorder and exposition handle, so that gateways sharing a process (the
//! tests run many) never mix their counts. Labels are bounded: the route
//! template or `unmatched`, the upstream pattern, the RPC path.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `protogate_http_requests_total` | counter | route, method, status, grpc_code, upstream |
//! | `protogate_http_request_duration_seconds` | histogram | route, method |
//! | `protogate_http_request_size_bytes` | histogram | route |
//! | `protogate_http_response_size_bytes` | histogram | route |
//! | `protogate_upstream_duration_seconds` | histogram | upstream, rpc |
//! | `protogate_upstream_healthy` | gauge | upstream |
//! | `protogate_catalog_generation`, `protogate_routes` | gauge | |
//! | `protogate_catalog_reloads_total` | counter | result (`applied`, `unchanged`, `refused`) |
//! | `protogate_rate_limited_total` | counter | route, key_kind (`user` or `ip`) |
//! | `protogate_auth_failures_total` | counter | reason |
//! | `protogate_auth_refused_total` | counter | reason (of `policy::AuthError::reason`) |
//! | `protogate_tls_certificate_expiry_timestamp_seconds` | gauge | certificate (the configured `cert_file`) |
//! | `protogate_redis_up` | gauge | |
//! | `protogate_redis_errors_total` | counter | op (`rate_limit`, `registry_read`, `registry_write`, `subscribe`, `ping`) |
//! | `protogate_redis_command_duration_seconds` | histogram | op |
//! | `protogate_otlp_dropped_spans_total` | counter | |
//! | `protogate_discovery_errors_total` | counter | url (a configured `discover[].url`) |
//! | `protogate_workers_active` | gauge | |
//! | `protogate_connections_moved_total` | counter | |

use std::{
    fmt,
    hash::BuildHasher as _,
    sync::{Arc, OnceLock, PoisonError, RwLock},
    time::Duration,
};

use axum::{body::Body, extract::Request, response::Response};
use http::Method;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Recorder, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::{body::Observed, code_name, Outcome, Refusal, RequestContext, RouteLabels};
use crate::config::{ConfigError, MetricsConfig};

/// The catalog's figures at a scrape: its generation, its routes, and the
/// changes applied, unchanged and refused so far.
#[derive(Debug, Clone, Copy)]
pub struct CatalogFigures {
    pub generation: u64,
    pub routes: usize,
    pub reloads: [(&'static str, u64); 3],
}

/// Also read back, from the exposition, by the admin console's live figures.
pub(crate) const REQUESTS: &str = "protogate_http_requests_total";
pub(crate) const REQUEST_DURATION: &str = "protogate_http_request_duration_seconds";
const REQUEST_SIZE: &str = "protogate_http_request_size_bytes";
const RESPONSE_SIZE: &str = "protogate_http_response_size_bytes";
const UPSTREAM_DURATION: &str = "protogate_upstream_duration_seconds";
const UPSTREAM_HEALTHY: &str = "protogate_upstream_healthy";
const CATALOG_GENERATION: &str = "protogate_catalog_generation";
const ROUTES: &str = "protogate_routes";
const RELOADS: &str = "protogate_catalog_reloads_total";
const RATE_LIMITED: &str = "protogate_rate_limited_total";
const AUTH_FAILURES: &str = "protogate_auth_failures_total";
const AUTH_REFUSED: &str = "protogate_auth_refused_total";
const CERTIFICATE_EXPIRY: &str = "protogate_tls_certificate_expiry_timestamp_seconds";
const REDIS_UP: &str = "protogate_redis_up";
const REDIS_ERRORS: &str = "protogate_redis_errors_total";
const REDIS_DURATION: &str = "protogate_redis_command_duration_seconds";
const OTLP_DROPPED: &str = "protogate_otlp_dropped_spans_total";
const DISCOVERY_ERRORS: &str = "protogate_discovery_errors_total";
const WORKERS_ACTIVE: &str = "protogate_workers_active";
const CONNECTIONS_MOVED: &str = "protogate_connections_moved_total";

/// Redis command buckets: 100 µs to 1 s (loopback answers in tens of µs).
const REDIS_BUCKETS: [f64; 9] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 1.0,
];

/// Body size buckets: 64 B to 16 MiB, by fours.
const SIZE_BUCKETS: [f64; 10] = [
    64.0,
    256.0,
    1_024.0,
    4_096.0,
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
];

/// A server's metrics: cheap to clone, shared by its data plane, probes and
/// admin listener.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The handles of every label combination seen, so that a request
    /// records without building label sets and looking them up by name.
    series: RwLock<hashbrown::HashTable<Arc<Series>>>,
    hasher: hashbrown::DefaultHashBuilder,
}

/// The per-request metrics of one combination of labels.
struct Series {
    hash: u64,
    route: Box<str>,
    method: &'static str,
    status: u16,
    grpc_code: &'static str,
    upstream: Box<str>,
    rpc: Box<str>,
    duration: Histogram,
    request_size: Histogram,
    response_size: Histogram,
    /// Registered on first use: requests answered before any upstream call
    /// (404s, refusals) must not create an empty upstream series.
    upstream_duration: OnceLock<Histogram>,
    requests: Counter,
}

// === impl Metrics ===

impl Metrics {
    pub fn new(config: &MetricsConfig) -> Result<Self, ConfigError> {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in [
            (REQUEST_DURATION, &config.duration_buckets[..]),
            (UPSTREAM_DURATION, &config.duration_buckets[..]),
            (REQUEST_SIZE, &SIZE_BUCKETS[..]),
            (RESPONSE_SIZE, &SIZE_BUCKETS[..]),
            (REDIS_DURATION, &REDIS_BUCKETS[..]),
        ] {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                .map_err(|err| ConfigError::Invalid {
                    key: "metrics.duration_buckets".into(),
                    reason: err.to_string(),
                })?;
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let metrics = Self {
            inner: Arc::new(Inner {
                recorder,
                handle,
                series: RwLock::default(),
                hasher: hashbrown::DefaultHashBuilder::default(),
            }),
        };
        metrics.record(describe);
        Ok(metrics)
    }

    /// Runs `f` with this server's recorder as the one the `metrics` macros use.
    fn record<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.inner.recorder as &dyn Recorder, f)
    }

    /// The exposition text, with the catalog's figures as read now.
    pub fn render(&self, catalog: &CatalogFigures) -> String {
        self.record(|| {
            gauge!(CATALOG_GENERATION).set(catalog.generation as f64);
            gauge!(ROUTES).set(catalog.routes as f64);
            for (result, count) in catalog.reloads {
                counter!(RELOADS, "result" => result).absolute(count);
            }
        });
        self.inner.handle.render()
    }

    /// Drains histogram samples into their buckets; run periodically so
    /// that memory stays bounded between scrapes.
    pub fn run_upkeep(&self) {
        self.inner.handle.run_upkeep();
    }

    pub fn set_upstream_healthy(&self, upstream: &Arc<str>, healthy: bool) {
        self.record(|| {
            gauge!(UPSTREAM_HEALTHY, "upstream" => upstream.clone())
                .set(f64::from(u8::from(healthy)));
        });
    }

    /// When the certificate served from `cert_file` expires (Unix seconds).
    pub fn set_certificate_expiry(&self, cert_file: &std::path::Path, expires: i64) {
        let certificate = cert_file.display().to_string();
        self.record(|| {
            gauge!(CERTIFICATE_EXPIRY, "certificate" => certificate).set(expires as f64);
        });
    }

    /// The Redis metrics' handles: `up`, and an error counter and a
    /// duration histogram for each of `ops`.
    pub fn redis<const N: usize>(
        &self,
        ops: &[&'static str; N],
    ) -> (Gauge, [Counter; N], [Histogram; N]) {
        self.record(|| {
            (
                gauge!(REDIS_UP),
                ops.map(|op| counter!(REDIS_ERRORS, "op" => op)),
                ops.map(|op| histogram!(REDIS_DURATION, "op" => op)),
            )
        })
    }

    /// The counter of failed schema readings (or refused registrations) of
    /// the server at `url`, registered at 0.
    pub fn discovery_errors(&self, url: &str) -> Counter {
        self.record(|| {
            let counter = counter!(DISCOVERY_ERRORS, "url" => url.to_owned());
            counter.absolute(0);
            counter
        })
    }

    /// The count of connections moved between workers, and the count of
    /// workers serving cleartext HTTP/1.1 connections.
    pub fn workers(&self) -> (Counter, Gauge) {
        self.record(|| {
            let moved = counter!(CONNECTIONS_MOVED);
            moved.absolute(0);
            (moved, gauge!(WORKERS_ACTIVE))
        })
    }

    /// The count of spans dropped on their way to the OTLP collector.
    pub fn otlp_dropped_spans(&self) -> Counter {
        self.record(|| counter!(OTLP_DROPPED))
    }

    fn request_finished(
        &self,
        context: &RequestContext,
        method: &'static str,
        outcome: Outcome,
        bytes_out: u64,
    ) {
        let labels = context.labels();
        let series = self.series(labels, method, &outcome);
        series.duration.record(context.elapsed().as_secs_f64());
        series.request_size.record(context.bytes_in() as f64);
        series.response_size.record(bytes_out as f64);
        if let Some(latency) = context.upstream_latency() {
            let upstream_duration = series.upstream_duration.get_or_init(|| {
                self.record(|| {
                    histogram!(
                        UPSTREAM_DURATION,
                        "upstream" => labels.upstream.to_owned(),
                        "rpc" => labels.rpc.to_owned(),
                    )
                })
            });
            upstream_duration.record(latency.as_secs_f64());
        }
        match outcome.refusal {
            Some(Refusal::RateLimited) => {
                let key_kind = if context.consumer() == "anonymous" {
                    "ip"
                } else {
                    "user"
                };
                self.record(|| {
                    counter!(RATE_LIMITED, "route" => labels.route.to_owned(), "key_kind" => key_kind)
                        .increment(1);
                });
            }
            Some(Refusal::Auth(reason)) => {
                self.record(|| counter!(AUTH_FAILURES, "reason" => reason).increment(1));
            }
            None => {}
        }
        if let Some(reason) = context.refused_token() {
            self.record(|| counter!(AUTH_REFUSED, "reason" => reason).increment(1));
        }
        // Last, so a scrape that sees the count sees the histograms too.
        series.requests.increment(1);
    }

    /// The handles for these labels: found without allocating, registered once.
    fn series(
        &self,
        labels: RouteLabels<'_>,
        method: &'static str,
        outcome: &Outcome,
    ) -> Arc<Series> {
        let status = outcome.status.as_u16();
        let grpc_code = code_name(outcome.code);
        let hash = self.inner.hasher.hash_one((
            labels.route,
            method,
            status,
            grpc_code,
            labels.upstream,
            labels.rpc,
        ));
        let is = |series: &Arc<Series>| {
            series.hash == hash
                && *series.route == *labels.route
                && series.method == method
                && series.status == status
                && series.grpc_code == grpc_code
                && *series.upstream == *labels.upstream
                && *series.rpc == *labels.rpc
        };
        let table = &self.inner.series;
        if let Some(found) = table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .find(hash, is)
        {
            return found.clone();
        }
        let route = labels.route.to_owned();
        let created = Arc::new(self.record(|| Series {
            hash,
            duration: histogram!(REQUEST_DURATION, "route" => route.clone(), "method" => method),
            request_size: histogram!(REQUEST_SIZE, "route" => route.clone()),
            response_size: histogram!(RESPONSE_SIZE, "route" => route.clone()),
            upstream_duration: OnceLock::new(),
            requests: counter!(
                REQUESTS,
                "route" => route.clone(),
                "method" => method,
                "status" => outcome.status.as_str().to_owned(),
                "grpc_code" => grpc_code,
                "upstream" => labels.upstream.to_owned(),
            ),
            route: route.into(),
            method,
            status,
            grpc_code,
            upstream: labels.upstream.into(),
            rpc: labels.rpc.into(),
        }));
        let mut table = table.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = table.find(hash, is) {
            return found.clone();
        }
        table.insert_unique(hash, created.clone(), |series| series.hash);
        created
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn describe() {
    describe_counter!(
        REQUESTS,
        "HTTP requests finished, by route template and outcome"
    );
    describe_counter!(
        RELOADS,
        "Catalog changes by result: applied, unchanged or refused"
    );
    describe_counter!(RATE_LIMITED, "Requests refused by the rate limiter");
    describe_counter!(
        AUTH_FAILURES,
        "Requests refused by authentication or authorization"
    );
    describe_counter!(
        AUTH_REFUSED,
        "Tokens refused, whether answered 401 or 429 (the client IP's quota spent)"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "whole requests as the client sees them, until the last response byte"
    );
    describe_histogram!(REQUEST_SIZE, Unit::Bytes, "request body bytes read");
    describe_histogram!(RESPONSE_SIZE, Unit::Bytes, "response body bytes sent");
    describe_histogram!(UPSTREAM_DURATION, Unit::Seconds, "upstream gRPC calls");
    describe_gauge!(
        UPSTREAM_HEALTHY,
        "1 when the last grpc.health.v1 probe (or connection) succeeded"
    );
    describe_gauge!(CATALOG_GENERATION, "generation of the catalog being served");
    describe_gauge!(ROUTES, "REST routes in the catalog being served");
    describe_gauge!(
        CERTIFICATE_EXPIRY,
        Unit::Seconds,
        "when each certificate of the TLS listener being served expires (Unix time)"
    );
    describe_gauge!(
        REDIS_UP,
        "1 while the shared Redis answers, 0 while it is away"
    );
    describe_counter!(
        REDIS_ERRORS,
        "Redis commands that failed or timed out (redis.timeout), by purpose"
    );
    describe_histogram!(REDIS_DURATION, Unit::Seconds, "Redis commands, by purpose");
    describe_counter!(
        DISCOVERY_ERRORS,
        "schema readings through server reflection that failed or were refused, by server"
    );
    describe_counter!(
        OTLP_DROPPED,
        "Spans dropped, not exported: the queue to the OTLP collector was full, or the collector did not take them"
    );
    describe_gauge!(
        WORKERS_ACTIVE,
        "workers serving cleartext HTTP/1.1 connections: as few as the load needs"
    );
    describe_counter!(
        CONNECTIONS_MOVED,
        "HTTP/1.1 connections moved between two requests to another worker, as the load changed"
    );
}

/// The HTTP method as a bounded label: the standard ones, else `other`
/// (a client can send any token as a method).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A request being counted; see [`Metrics::begin`].
pub(crate) struct Pending {
    context: Arc<RequestContext>,
    method: &'static str,
}

impl Metrics {
    /// Step 4, on the way in: starts the request's clock.
    pub(crate) fn begin(request: &mut Request) -> Pending {
        Pending {
            context: RequestContext::attach(request),
            method: method_label(request.method()),
        }
    }

    /// Step 4, on the way out: counts and times the request, from the
    /// outcome the response carries, when its body has been sent.
    pub(crate) fn finish(&self, pending: Pending, response: Response) -> Response {
        let outcome = Outcome::of(&response);
        let metrics = self.clone();
        let (parts, body) = response.into_parts();
        let body = Body::new(Observed::new(body, move |bytes_out| {
            metrics.request_finished(&pending.context, pending.method, outcome, bytes_out);
        }));
        Response::from_parts(parts, body)
    }
}

/// How often histogram samples are drained between scrapes.
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
