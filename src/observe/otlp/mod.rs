//! Spans of each sampled request, exported to an OpenTelemetry collector
//! over OTLP/gRPC (`tracing.otlp`): a SERVER span for the request, and a
//! CLIENT span under it for the upstream call, whose id is the parent the
//! upstream is sent in `traceparent` (step 1, `request_ids::trace_context`).
//!
//! The gateway already knows all that a span says (the ids from step 1;
//! start and end; the route, upstream and consumer in the
//! [`RequestContext`]; the outcome), so the spans are made from those here,
//! not through the OpenTelemetry SDK and `tracing-opentelemetry`: those
//! would open a `tracing` span per request (the debug request span, enabled,
//! cost a GET ~15% of the gateway's CPU), and box and copy every attribute
//! on the request's thread. Here a request only copies a few ids, times and
//! `Arc`s into a bounded queue, without waiting: a full queue drops the
//! request's spans and counts them (`protogate_otlp_dropped_spans_total`).
//! The [`Exporter`], a task of its own, turns them into OTLP spans and sends
//! them in batches ([`export`]).

mod export;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{body::Body, extract::Request, response::Response};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use metrics::Counter;
use tokio::sync::mpsc;
use tonic::{
    metadata::MetadataMap,
    transport::{ClientTlsConfig, Endpoint},
};

pub use self::export::Exporter;
use super::{body::Observed, Outcome, RequestContext};
use crate::{
    config::{ConfigError, OtlpConfig},
    request_ids::trace_context::{HopSpans, Sampler, TraceParent, TRACESTATE},
};

/// Requests whose spans wait for the exporter; past this they are dropped.
const QUEUE_CAPACITY: usize = 2048;

/// Longest wait for the collector to connect or answer an export.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The request path's half: decides sampling and queues finished requests.
#[derive(Debug)]
pub struct Traces {
    sampler: Sampler,
    queue: mpsc::Sender<Finished>,
    dropped: Counter,
}

/// A sampled request being traced; see [`Traces::begin`].
#[derive(Debug)]
pub(crate) struct Pending {
    hop: TraceParent,
    spans: HopSpans,
    tracestate: Option<HeaderValue>,
    started: SystemTime,
    method: Method,
    uri: Uri,
    context: Arc<RequestContext>,
}

/// A traced request, answered: what its spans are made of.
#[derive(Debug)]
struct Finished {
    request: Box<Pending>,
    outcome: Outcome,
    ended: SystemTime,
}

/// The two halves of trace export for `config`: the steps' [`Traces`] and
/// the [`Exporter`] task. Spans that cannot be exported count on `dropped`.
pub fn pipeline(config: &OtlpConfig, dropped: Counter) -> Result<(Traces, Exporter), ConfigError> {
    let invalid = |key: &str, reason: String| ConfigError::Invalid {
        key: key.to_owned(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
        .map_err(|err| invalid("tracing.otlp.endpoint", err.to_string()))?
        .connect_timeout(EXPORT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT)
        .tcp_nodelay(true);
    if endpoint.uri().scheme_str() == Some("https") {
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().with_native_roots())
            .map_err(|err| invalid("tracing.otlp.endpoint", err.to_string()))?;
    }
    let mut headers = HeaderMap::with_capacity(config.headers.len());
    for (name, value) in &config.headers {
        let key = || format!("tracing.otlp.headers.{name}");
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|err| invalid(&key(), err.to_string()))?;
        let value = HeaderValue::from_str(value).map_err(|err| invalid(&key(), err.to_string()))?;
        headers.insert(name, value);
    }
    let (queue, received) = mpsc::channel(QUEUE_CAPACITY);
    Ok((
        Traces {
            sampler: Sampler::ratio(config.sample_ratio),
            queue,
            dropped: dropped.clone(),
        },
        Exporter::new(
            received,
            endpoint,
            MetadataMap::from_headers(headers),
            dropped,
        ),
    ))
}

// === impl Traces ===

impl Traces {
    /// How new traces are sampled (step 1).
    pub(crate) fn sampler(&self) -> Sampler {
        self.sampler
    }

    /// Step 2, on the way in: the request's ids and start, when step 1
    /// sampled it. Boxed: the request's future holds the option whether
    /// or not spans are exported, and must stay small.
    pub(crate) fn begin(request: &mut Request, hop: TraceParent) -> Option<Box<Pending>> {
        let spans = *request.extensions().get::<HopSpans>()?;
        Some(Box::new(Pending {
            hop,
            spans,
            tracestate: request.headers().get(&TRACESTATE).cloned(),
            started: SystemTime::now(),
            method: request.method().clone(),
            uri: request.uri().clone(),
            context: RequestContext::attach(request),
        }))
    }

    /// Step 2, on the way out: queues the request's spans when its body has
    /// been sent, or drops and counts them when the queue is full.
    pub(crate) fn finish(self: &Arc<Self>, request: Box<Pending>, response: Response) -> Response {
        let outcome = Outcome::of(&response);
        let traces = self.clone();
        let (parts, body) = response.into_parts();
        let body = Body::new(Observed::new(body, move |_| {
            let finished = Finished {
                request,
                outcome,
                ended: SystemTime::now(),
            };
            let spans = finished.span_count();
            if traces.queue.try_send(finished).is_err() {
                traces.dropped.increment(spans);
            }
        }));
        Response::from_parts(parts, body)
    }
}

// === impl Finished ===

impl Finished {
    /// The server span, and the client span when an upstream was called.
    fn span_count(&self) -> u64 {
        1 + u64::from(self.request.context.upstream_call().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::MetricsConfig,
        observe::metrics::{CatalogFigures, Metrics},
        request_ids::trace_context,
    };

    #[test]
    fn a_full_queue_drops_and_counts_spans_without_waiting() {
        let metrics = Metrics::new(&MetricsConfig::default()).unwrap();
        let config = OtlpConfig::new("http://127.0.0.1:1");
        // The exporter never runs: nothing empties the queue.
        let (traces, _exporter) = pipeline(&config, metrics.otlp_dropped_spans()).unwrap();
        let traces = Arc::new(traces);
        for _ in 0..QUEUE_CAPACITY + 3 {
            let mut request = Request::new(Body::empty());
            let (hop, _) = trace_context::start(&mut request, Some(traces.sampler()));
            let pending = Traces::begin(&mut request, hop).expect("sampled at ratio 1");
            // The body ends as the response is dropped.
            drop(traces.finish(pending, Response::new(Body::empty())));
        }
        let text = metrics.render(&CatalogFigures {
            generation: 0,
            routes: 0,
            reloads: [("applied", 0), ("unchanged", 0), ("refused", 0)],
        });
        // One server span each, no upstream call.
        assert!(
            text.lines()
                .any(|line| line == "protogate_otlp_dropped_spans_total 3"),
            "{text}"
        );
    }
}
