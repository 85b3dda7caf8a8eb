//! The access log: one `tracing` event per finished request, written by a
//! subscriber that belongs to the access log alone (JSON or text, stdout or
//! a file, through a non-blocking writer), so it never mixes with the
//! diagnostic log and each gateway in a process writes its own.
//!
//! Fields: `timestamp`, `request_id`, `correlation_id`, `trace_id`,
//! `client_ip`, `consumer`, `method`, `route`, `path` (never the query),
//! `status`, `grpc_code`, `latency_ms`, `upstream`, `upstream_latency_ms`,
//! `bytes_in`, `bytes_out`, `user_agent`, and `fault` on failure. No other
//! header is read, so `Authorization` and tokens cannot leak into it.

use std::{
    fmt,
    fs::OpenOptions,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request},
    response::Response,
};
use http::{header, HeaderValue, Method, Uri};
use tracing::Dispatch;
use tracing_appender::non_blocking::WorkerGuard;

use super::{body::Observed, code_name, fault_name, trace_context, Outcome, RequestContext};
use crate::{
    config::{AccessLogConfig, AccessLogFormat},
    policy::{X_CORRELATION_ID, X_REQUEST_ID},
};

/// A server's access log.
pub struct AccessLog {
    dispatch: Dispatch,
    sampler: Sampler,
    /// Flushes the writer's buffered lines when the log is dropped.
    _flush: WorkerGuard,
}

/// The access log's file cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the access log {path}: {source}")]
pub struct AccessLogError {
    path: PathBuf,
    source: std::io::Error,
}

/// Keeps exactly the configured fraction of 2xx lines, evenly spread.
#[derive(Debug)]
struct Sampler {
    rate: f64,
    seen: AtomicU64,
}

/// What is known of a request before it is answered.
struct RequestFacts {
    request_id: Option<HeaderValue>,
    correlation_id: Option<HeaderValue>,
    trace_id: trace_context::TraceId,
    client_ip: Option<SocketAddr>,
    method: Method,
    uri: Uri,
    user_agent: Option<HeaderValue>,
}

// === impl AccessLog ===

impl AccessLog {
    pub fn new(config: &AccessLogConfig) -> Result<Self, AccessLogError> {
        let (writer, flush) = match &config.file {
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AccessLogError {
                        path: path.clone(),
                        source,
                    })?;
                tracing_appender::non_blocking(file)
            }
            None => tracing_appender::non_blocking(std::io::stdout()),
        };
        let builder = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO);
        let dispatch = match config.format {
            AccessLogFormat::Json => Dispatch::new(
                builder
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .finish(),
            ),
            AccessLogFormat::Text => Dispatch::new(builder.finish()),
        };
        Ok(Self {
            dispatch,
            sampler: Sampler {
                rate: config.sample_2xx,
                seen: AtomicU64::new(0),
            },
            _flush: flush,
        })
    }

    fn write(
        &self,
        facts: &RequestFacts,
        context: &RequestContext,
        outcome: Outcome,
        bytes_out: u64,
    ) {
        let header = |value: &Option<HeaderValue>| {
            value
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let labels = context.labels();
        let upstream_latency_ms = context.upstream_latency().map(|d| d.as_secs_f64() * 1e3);
        tracing::dispatcher::with_default(&self.dispatch, || {
            tracing::info!(
                target: "protogate::access",
                request_id = header(&facts.request_id),
                correlation_id = header(&facts.correlation_id),
                trace_id = %facts.trace_id,
                client_ip = facts.client_ip.map(|a| a.ip().to_string()).unwrap_or_default(),
                consumer = context.consumer(),
                method = facts.method.as_str(),
                route = labels.route,
                path = facts.uri.path(),
                status = outcome.status.as_u16(),
                grpc_code = code_name(outcome.code),
                latency_ms = context.elapsed().as_secs_f64() * 1e3,
                upstream = labels.upstream,
                upstream_latency_ms,
                bytes_in = context.bytes_in(),
                bytes_out,
                user_agent = header(&facts.user_agent),
                fault = outcome.fault.map(fault_name),
            );
        });
    }
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("sampler", &self.sampler)
            .finish_non_exhaustive()
    }
}

// === impl Sampler ===

impl Sampler {
    /// Whether the next 2xx is logged: the n-th is kept when ⌊n·rate⌋ steps up.
    fn keep(&self) -> bool {
        if self.rate >= 1.0 {
            return true;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.rate).floor() > (n * self.rate).floor()
    }
}

/// Step 3, on the way in: what the line will say of the request.
pub(crate) fn begin(request: &mut Request) -> Pending {
    let context = RequestContext::attach(request);
    let headers = request.headers();
    Pending {
        facts: RequestFacts {
            request_id: headers.get(X_REQUEST_ID).cloned(),
            correlation_id: headers.get(X_CORRELATION_ID).cloned(),
            trace_id: trace_context::trace_id(request),
            client_ip: request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0),
            method: request.method().clone(),
            uri: request.uri().clone(),
            user_agent: headers.get(header::USER_AGENT).cloned(),
        },
        context,
    }
}

/// A request whose line is written once its response body is over.
pub(crate) struct Pending {
    facts: RequestFacts,
    context: Arc<RequestContext>,
}

impl Pending {
    /// Step 3, on the way out: logs the request once its response body is
    /// over (or dropped), with the outcome the response carries.
    pub(crate) fn finish(self, log: &Arc<AccessLog>, response: Response) -> Response {
        let outcome = Outcome::of(&response);
        if outcome.status.is_success() && !log.sampler.keep() {
            return response;
        }
        let log = log.clone();
        let (parts, body) = response.into_parts();
        let body = Body::new(Observed::new(body, move |bytes_out| {
            log.write(&self.facts, &self.context, outcome, bytes_out);
        }));
        Response::from_parts(parts, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(rate: f64, of: usize) -> usize {
        let sampler = Sampler {
            rate,
            seen: AtomicU64::new(0),
        };
        (0..of).filter(|_| sampler.keep()).count()
    }

    #[test]
    fn sampling_keeps_the_exact_fraction() {
        assert_eq!(kept(1.0, 10), 10);
        assert_eq!(kept(0.0, 10), 0);
        assert_eq!(kept(0.5, 10), 5);
        assert_eq!(kept(0.25, 100), 25);
    }
}
