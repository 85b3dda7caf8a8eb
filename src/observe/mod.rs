//! Observability: logging set-up, the per-request [`RequestContext`] that
//! outer steps read after inner ones filled it, and the request span.
//!
//! * [`metrics`] -- Prometheus metrics, labelled by route template, never raw path
//! * [`access_log`] -- one structured line per finished request
//! * [`otlp`] -- a server and a client span per sampled request, to an
//!   OpenTelemetry collector

pub mod access_log;
mod body;
pub mod metrics;
pub mod otlp;

use std::{
    io::IsTerminal as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use axum::{body::Body, extract::Request, response::Response};
use http::StatusCode;
use http_body::Body as _;
use tonic::Code;
use tracing::Span;
use tracing_subscriber::EnvFilter;

use crate::{
    error::{self, Error, Fault},
    request_ids::{self, trace_context},
    router::RouteId,
};

/// Installs the global subscriber once; later calls are no-ops.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal only, never escape codes in a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// What the steps of one request learn about it, shared by `Arc` in the
/// request extensions: created by the outermost observing step, the route
/// filled by the route step, the upstream latency by the gateway, the
/// consumer by authentication. Read when the response body ends.
#[derive(Debug)]
pub struct RequestContext {
    started: Instant,
    bytes_in: AtomicU64,
    route: OnceLock<(Arc<dyn LabelledRoutes>, RouteId)>,
    upstream_call: OnceLock<UpstreamCall>,
    consumer: OnceLock<Arc<str>>,
    /// Why the request's token was refused, as a bounded label.
    refused_token: OnceLock<&'static str>,
}

/// The upstream call of a request, as the gateway made it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamCall {
    /// When it started, since the request's start.
    pub(crate) started: Duration,
    /// How long a unary call took and its gRPC code; `None` for a stream,
    /// which ends with the response.
    pub(crate) finished: Option<(Duration, Code)>,
}

/// Where a matched route's labels are read (the catalog it was matched
/// in), kept by the request until its log line and metrics are written.
pub trait LabelledRoutes: Send + Sync + std::fmt::Debug {
    fn labels(&self, route: RouteId) -> RouteLabels<'_>;
    fn span_facts(&self, route: RouteId) -> SpanFacts<'_>;
}

/// What a matched route's spans say of it besides its labels.
#[derive(Debug, Clone, Copy)]
pub struct SpanFacts<'a> {
    /// The path template alone: `/v1/orders/{id}`.
    pub template: &'a str,
    /// `acme.orders.v1.OrderService`.
    pub service: &'a str,
    /// `GetOrder`.
    pub method: &'a str,
    /// The upstream's URL; `None` in catalogs built for `protogate check`.
    pub upstream: Option<&'a http::Uri>,
}

/// The bounded labels of a request: route template, upstream and RPC.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabels<'a> {
    /// `GET /v1/orders/{id}`, or `unmatched`.
    pub route: &'a str,
    /// The upstream's configured pattern, or `none`.
    pub upstream: &'a str,
    /// `/package.Service/Method`, or `none`.
    pub rpc: &'a str,
}

/// How a request ended, from the response and the [`Error`] it carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) status: StatusCode,
    pub(crate) code: Code,
    /// `None` for a success.
    pub(crate) fault: Option<Fault>,
    /// A policy refused the request.
    pub(crate) refusal: Option<Refusal>,
}

/// Which policy refused a request, for the refusal counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    RateLimited,
    /// Authentication or authorization, with a bounded reason label.
    Auth(&'static str),
}

// === impl RequestContext ===

impl RequestContext {
    /// The request's context, created (with its start time and a counter
    /// of body bytes read) if no outer step did.
    pub(crate) fn attach(request: &mut Request) -> Arc<Self> {
        if let Some(context) = request.extensions().get::<Arc<Self>>() {
            return context.clone();
        }
        let context = Arc::new(Self {
            started: Instant::now(),
            bytes_in: AtomicU64::new(0),
            route: OnceLock::new(),
            upstream_call: OnceLock::new(),
            consumer: OnceLock::new(),
            refused_token: OnceLock::new(),
        });
        // A body that has already ended (most GETs) has nothing to count.
        if !request.body().is_end_stream() {
            let counter = context.clone();
            let body = std::mem::take(request.body_mut());
            *request.body_mut() = Body::new(body::Observed::new(body, move |read| {
                counter.bytes_in.store(read, Ordering::Relaxed);
            }));
        }
        request.extensions_mut().insert(context.clone());
        context
    }

    pub fn of(request: &Request) -> Option<&Arc<Self>> {
        request.extensions().get::<Arc<Self>>()
    }

    /// Records the matched route (route step), also on the request span.
    pub(crate) fn set_route(&self, routes: Arc<dyn LabelledRoutes>, route: RouteId) {
        Span::current().record("route", routes.labels(route).route);
        let _ = self.route.set((routes, route));
    }

    /// Records the upstream call that started at `started` (gateway), and
    /// how long it took and its code when it is over already (unary).
    pub(crate) fn set_upstream_call(&self, started: Instant, finished: Option<(Duration, Code)>) {
        let _ = self.upstream_call.set(UpstreamCall {
            started: started.saturating_duration_since(self.started),
            finished,
        });
    }

    pub(crate) fn upstream_call(&self) -> Option<UpstreamCall> {
        self.upstream_call.get().copied()
    }

    /// Records who called: the verified token subject (authentication).
    pub fn set_consumer(&self, subject: Arc<str>) {
        let _ = self.consumer.set(subject);
    }

    /// Records that the request's token was refused, and why (authentication).
    pub(crate) fn set_refused_token(&self, reason: &'static str) {
        let _ = self.refused_token.set(reason);
    }

    /// Why the request's token was refused, whatever the answer (401, or
    /// 429 once the client's quota is spent).
    pub fn refused_token(&self) -> Option<&'static str> {
        self.refused_token.get().copied()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// How long a unary upstream call took.
    pub fn upstream_latency(&self) -> Option<Duration> {
        Some(self.upstream_call.get()?.finished?.0)
    }

    /// Request body bytes read so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// The token subject, or `anonymous`.
    pub fn consumer(&self) -> &str {
        self.consumer.get().map_or("anonymous", |c| c)
    }

    /// The matched route's facts, for its spans.
    pub(crate) fn span_facts(&self) -> Option<SpanFacts<'_>> {
        let (routes, id) = self.route.get()?;
        Some(routes.span_facts(*id))
    }

    pub fn labels(&self) -> RouteLabels<'_> {
        match self.route.get() {
            Some((routes, id)) => routes.labels(*id),
            None => RouteLabels {
                route: "unmatched",
                upstream: "none",
                rpc: "none",
            },
        }
    }
}

// === impl Outcome ===

impl Outcome {
    pub(crate) fn of(response: &Response) -> Self {
        let status = response.status();
        match response.extensions().get::<Arc<Error>>() {
            Some(err) => Self {
                status,
                code: err.code(),
                fault: Some(err.fault()),
                refusal: match err.as_ref() {
                    Error::RateLimited { .. } => Some(Refusal::RateLimited),
                    Error::Unauthenticated { reason, .. } => Some(Refusal::Auth(reason)),
                    Error::PermissionDenied(_) => Some(Refusal::Auth("permission_denied")),
                    _ => None,
                },
            },
            // Answered with only a status (timeout, panic).
            None => Self {
                status,
                code: error::grpc_code(status),
                fault: if status.is_server_error() {
                    Some(Fault::Gateway)
                } else if status.is_client_error() {
                    Some(Fault::Client)
                } else {
                    None
                },
                refusal: None,
            },
        }
    }
}

/// The request span (step 2): method, path (never the query), ids; the
/// route is recorded once matched. At debug level, like linkerd2-proxy's
/// per-request spans: an enabled span cost a GET about 15% of the
/// gateway's CPU (its fields formatted on every request), and the access
/// log already says all of this. Events above debug on a request's path
/// name the request id themselves.
pub fn request_span(request: &http::Request<Body>, trace_id: trace_context::TraceId) -> Span {
    // The field values are only computed when the span is enabled.
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = request.uri().path(),
        request_id = request_ids::request_id(request.headers()),
        trace_id = %trace_id,
        route = tracing::field::Empty,
    )
}

/// The canonical name of a gRPC code, as in `google.rpc.Code`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The fault as a label value.
pub fn fault_name(fault: Fault) -> &'static str {
    match fault {
        Fault::Client => "client",
        Fault::Gateway => "gateway",
        Fault::Upstream => "upstream",
    }
}
