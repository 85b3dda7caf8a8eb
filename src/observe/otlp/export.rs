//! The exporter task: traced requests off the queue, made into OTLP spans,
//! sent to the collector in batches of up to [`MAX_BATCH`] requests, at
//! least every [`FLUSH_INTERVAL`], one export at a time. An export the
//! collector does not take (down, slow, refusing) is dropped and counted,
//! never retried: the queue behind it is what holds spans meanwhile, and
//! when it is full the request path drops them itself.

use std::{fmt, time::SystemTime};

use metrics::Counter;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{trace_service_client::TraceServiceClient, ExportTraceServiceRequest},
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    resource::v1::Resource,
    trace::v1::{span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status},
};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Duration, MissedTickBehavior},
};
use tonic::{
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
    Code,
};

use super::{Finished, EXPORT_TIMEOUT};
use crate::observe::code_name;

/// Requests per export (each one or two spans).
const MAX_BATCH: usize = 512;

/// The longest a finished request waits for its export.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// `Span.flags`: whether the parent is known to be remote, and that it is.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// The exporting half of trace export: run it with [`Exporter::run`].
pub struct Exporter {
    queue: mpsc::Receiver<Finished>,
    endpoint: Endpoint,
    headers: MetadataMap,
    dropped: Counter,
    /// Whether the last export failed: the log tells each change once.
    failing: bool,
}

impl Exporter {
    pub(super) fn new(
        queue: mpsc::Receiver<Finished>,
        endpoint: Endpoint,
        headers: MetadataMap,
        dropped: Counter,
    ) -> Self {
        Self {
            queue,
            endpoint,
            headers,
            dropped,
            failing: false,
        }
    }

    /// Exports until `stop` fires (or every request path is gone), then
    /// exports what is queued (or, while exports fail, counts it as
    /// dropped) and returns.
    pub async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        // Connects at the first export, and again after a failure.
        let mut client = TraceServiceClient::new(self.endpoint.connect_lazy());
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut flush = tokio::time::interval(FLUSH_INTERVAL);
        flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let room = MAX_BATCH - batch.len();
            tokio::select! {
                _ = &mut stop => break,
                received = self.queue.recv_many(&mut batch, room) => {
                    if received == 0 {
                        break;
                    }
                    if batch.len() < MAX_BATCH {
                        continue;
                    }
                }
                _ = flush.tick() => {
                    if batch.is_empty() {
                        continue;
                    }
                }
            }
            self.export(&mut client, &mut batch).await;
        }
        // What is left, unless the collector is failing: shutdown must not
        // wait out a timeout per batch.
        self.queue.close();
        while let Ok(finished) = self.queue.try_recv() {
            batch.push(finished);
            if batch.len() == MAX_BATCH || self.queue.is_empty() {
                if self.failing {
                    let count = batch.drain(..).map(|f| f.span_count()).sum();
                    self.dropped.increment(count);
                } else {
                    self.export(&mut client, &mut batch).await;
                }
            }
        }
        if !batch.is_empty() {
            self.export(&mut client, &mut batch).await;
        }
    }

    /// Sends `batch`'s spans and empties it.
    async fn export(
        &mut self,
        client: &mut TraceServiceClient<Channel>,
        batch: &mut Vec<Finished>,
    ) {
        let count: u64 = batch.iter().map(Finished::span_count).sum();
        let mut spans = Vec::with_capacity(batch.len() * 2);
        for finished in batch.drain(..) {
            finished.spans(&mut spans);
        }
        let mut request = tonic::Request::new(export_request(spans));
        *request.metadata_mut() = self.headers.clone();
        let rejected = match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
            Ok(Ok(response)) => {
                if self.failing {
                    tracing::info!(endpoint = %self.endpoint.uri(), "the OTLP collector takes spans again");
                    self.failing = false;
                }
                let partial = response.into_inner().partial_success;
                partial.map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
            }
            Ok(Err(status)) => self.failed(&status.to_string(), count),
            Err(_elapsed) => self.failed("no answer in time", count),
        };
        self.dropped.increment(rejected);
    }

    /// The spans to count as dropped for a failed export; its log line.
    fn failed(&mut self, error: &str, count: u64) -> u64 {
        if !self.failing {
            tracing::warn!(
                endpoint = %self.endpoint.uri(),
                error,
                "OTLP export failed: spans are dropped (protogate_otlp_dropped_spans_total) until the collector takes them"
            );
            self.failing = true;
        }
        count
    }
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter")
            .field("endpoint", self.endpoint.uri())
            .finish_non_exhaustive()
    }
}

/// One export of `spans`, all of this gateway.
fn export_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    let version = env!("CARGO_PKG_VERSION");
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", "protogate"),
                    text("service.version", version),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "protogate".into(),
                    version: version.into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

// === impl Finished ===

impl Finished {
    /// The request's server span, and its client span when an upstream was
    /// called, with the HTTP and RPC semantic-convention attributes.
    fn spans(self, out: &mut Vec<Span>) {
        let Self {
            request,
            outcome,
            ended,
        } = self;
        let context = &request.context;
        let facts = context.span_facts();
        let labels = context.labels();
        let trace_id = request.hop.trace_id.to_be_bytes().to_vec();
        let trace_state = request
            .tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let flags = u32::from(request.hop.flags) | HAS_IS_REMOTE;

        let method = match request.method {
            http::Method::GET
            | http::Method::HEAD
            | http::Method::POST
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::PATCH
            | http::Method::OPTIONS
            | http::Method::CONNECT
            | http::Method::TRACE => request.method.as_str(),
            _ => "_OTHER",
        };
        let mut attributes = vec![
            text("http.request.method", method),
            text("url.path", request.uri.path()),
            int("http.response.status_code", outcome.status.as_u16().into()),
        ];
        if let Some(facts) = &facts {
            attributes.push(text("http.route", facts.template));
        }
        if context.consumer() != "anonymous" {
            attributes.push(text("enduser.id", context.consumer()));
        }
        let server_error = outcome.status.is_server_error();
        if server_error {
            attributes.push(text("error.type", outcome.status.as_str()));
        }
        out.push(Span {
            trace_id: trace_id.clone(),
            span_id: request.hop.parent_id.to_be_bytes().to_vec(),
            trace_state: trace_state.clone(),
            parent_span_id: request
                .spans
                .caller
                .map(|id| id.to_be_bytes().to_vec())
                .unwrap_or_default(),
            flags: flags
                | if request.spans.caller.is_some() {
                    IS_REMOTE
                } else {
                    0
                },
            name: match facts {
                Some(_) => labels.route.to_owned(),
                None => method.to_owned(),
            },
            kind: SpanKind::Server as i32,
            start_time_unix_nano: unix_nanos(request.started),
            end_time_unix_nano: unix_nanos(ended),
            attributes,
            status: server_error.then(|| error_status(outcome.status.as_str())),
            ..Default::default()
        });

        let (Some(call), Some(facts)) = (context.upstream_call(), facts) else {
            return;
        };
        let started = request.started + call.started;
        let (end, code) = match call.finished {
            Some((latency, code)) => (started + latency, code),
            // A stream: over with the response.
            None => (ended, outcome.code),
        };
        let mut attributes = vec![
            text("rpc.system", "grpc"),
            text("rpc.service", facts.service),
            text("rpc.method", facts.method),
            int("rpc.grpc.status_code", code as i64),
            text("protogate.upstream", labels.upstream),
        ];
        if let Some(uri) = facts.upstream {
            attributes.push(text("server.address", uri.host().unwrap_or_default()));
            let default_port = if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            };
            attributes.push(int(
                "server.port",
                uri.port_u16().unwrap_or(default_port).into(),
            ));
        }
        out.push(Span {
            trace_id,
            span_id: request.spans.client.to_be_bytes().to_vec(),
            trace_state,
            parent_span_id: request.hop.parent_id.to_be_bytes().to_vec(),
            flags,
            name: format!("{}/{}", facts.service, facts.method),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: unix_nanos(started),
            end_time_unix_nano: unix_nanos(end),
            attributes,
            status: (code != Code::Ok).then(|| error_status(code_name(code))),
            ..Default::default()
        });
    }
}

fn error_status(message: &str) -> Status {
    Status {
        message: message.to_owned(),
        code: StatusCode::Error as i32,
    }
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

fn text(key: &str, value: &str) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.to_owned()))
}

fn int(key: &str, value: i64) -> KeyValue {
    attribute(key, any_value::Value::IntValue(value))
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}
