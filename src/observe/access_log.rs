//! The access log: one line per finished request (JSON or text, stdout or
//! a file), formatted here and handed to a non-blocking writer thread that
//! writes each batch of lines at once. A serving worker gathers its lines
//! and hands them over every 100 ms or when it has 16 KiB of them, so that
//! a busy gateway wakes the writer thread once per batch, not per line (as
//! Envoy flushes its access logs on an interval).
//! It never mixes with the diagnostic log, and each gateway in a process
//! writes its own. (Formatting through a `tracing` subscriber cost about a
//! third of a GET's CPU; with a wake-up per line the log still added ~8 µs
//! of gateway CPU to a GET, with batches ~3 µs; formatted straight into the
//! batch, 5.7k instructions.)
//!
//! Fields: `timestamp`, `level`, `request_id`, `correlation_id`, `trace_id`,
//! `client_ip`, `consumer`, `method`, `route`, `path` (never the query),
//! `status`, `grpc_code`, `latency_ms`, `upstream`, `upstream_latency_ms`,
//! `bytes_in`, `bytes_out`, `user_agent`, `fault` on failure, and `target`.
//! No other header is read, so `Authorization` and tokens cannot leak into it.

use std::{
    cell::RefCell,
    fmt,
    fs::OpenOptions,
    io::{BufWriter, Write as _},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request},
    response::Response,
};
use http::{header, HeaderValue, Method, Uri};
use tokio::sync::Notify;
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};

use super::{body::Observed, code_name, fault_name, Outcome, RequestContext};
use crate::{
    config::{AccessLogConfig, AccessLogFormat},
    request_ids::{trace_context, RequestIds},
    transcode::{write_json_str, write_rfc3339},
};

/// A server's access log.
pub struct AccessLog {
    /// Tells this log's lines from another's in a worker's batch.
    id: u64,
    writer: NonBlocking,
    format: AccessLogFormat,
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

/// Lines gathered on a serving worker for one log's writer.
struct Batch {
    writer: Option<(u64, NonBlocking)>,
    lines: Vec<u8>,
    /// Told of a batch's first line, so that an idle worker is never woken
    /// to flush nothing.
    started: Arc<Notify>,
}

/// Handed to the writer thread once this full...
const BATCH_BYTES: usize = 16 << 10;
/// ...or this old at the latest.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

thread_local! {
    /// This thread's batch, when it is a serving worker (see [`batch_on_this_thread`]).
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Keeps exactly the configured fraction of 2xx lines, evenly spread.
#[derive(Debug)]
struct Sampler {
    rate: f64,
    seen: AtomicU64,
}

/// What is known of a request before it is answered.
struct RequestFacts {
    request_id: HeaderValue,
    correlation_id: HeaderValue,
    trace_id: trace_context::TraceId,
    client_ip: Option<IpAddr>,
    method: Method,
    uri: Uri,
    user_agent: Option<HeaderValue>,
}

/// One field's value, as the line shows it.
enum Value<'a> {
    Str(&'a str),
    Count(u64),
    /// Printed as milliseconds to the microsecond.
    Millis(Duration),
    Trace(trace_context::TraceId),
    /// Empty when unknown.
    Ip(Option<IpAddr>),
}

/// A field's name as each format puts it before the value.
struct Key {
    json: &'static str,
    text: &'static str,
}

/// The [`Key`] of a field, spelled out once at compile time.
macro_rules! key {
    ($name:literal) => {
        Key {
            json: concat!(",\"", $name, "\":"),
            text: concat!(" ", $name, "="),
        }
    };
}

// === impl AccessLog ===

impl AccessLog {
    pub fn new(config: &AccessLogConfig) -> Result<Self, AccessLogError> {
        // Buffered, so that the writer thread's batch goes out in one write.
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
                tracing_appender::non_blocking(BufWriter::new(file))
            }
            None if config.stderr => {
                tracing_appender::non_blocking(BufWriter::new(std::io::stderr()))
            }
            None => tracing_appender::non_blocking(BufWriter::new(std::io::stdout())),
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            writer,
            format: config.format,
            sampler: Sampler {
                rate: config.sample_2xx,
                seen: AtomicU64::new(0),
            },
            _flush: flush,
        })
    }

    fn write(&self, facts: &RequestFacts, context: &RequestContext, outcome: Outcome, bytes: u64) {
        self.emit(|out| self.format(facts, context, outcome, bytes, out));
    }

    /// Has `line` write itself straight into this worker's batch (or, off a
    /// worker, into a buffer of its own for the writer thread). When the
    /// writer lags too far behind, lines are dropped rather than a request
    /// held up.
    fn emit(&self, line: impl FnOnce(&mut Vec<u8>)) {
        let mut line = Some(line);
        BATCH.with_borrow_mut(|batch| {
            let (Some(batch), Some(line)) = (batch, line.take()) else {
                return;
            };
            if batch.writer.as_ref().is_some_and(|(id, _)| *id != self.id) {
                batch.flush();
                batch.writer = None;
            }
            if batch.writer.is_none() {
                batch.writer = Some((self.id, self.writer.clone()));
            }
            if batch.lines.is_empty() {
                batch.started.notify_one();
            }
            line(&mut batch.lines);
            if batch.lines.len() >= BATCH_BYTES {
                batch.flush();
            }
        });
        if let Some(line) = line {
            let mut out = Vec::with_capacity(512);
            line(&mut out);
            let _ = self.writer.clone().write_all(&out);
        }
    }

    fn format(
        &self,
        facts: &RequestFacts,
        context: &RequestContext,
        outcome: Outcome,
        bytes_out: u64,
        out: &mut Vec<u8>,
    ) {
        let labels = context.labels();
        let fields = [
            (
                key!("request_id"),
                Some(Value::Str(text(&facts.request_id))),
            ),
            (
                key!("correlation_id"),
                Some(Value::Str(text(&facts.correlation_id))),
            ),
            (key!("trace_id"), Some(Value::Trace(facts.trace_id))),
            (key!("client_ip"), Some(Value::Ip(facts.client_ip))),
            (key!("consumer"), Some(Value::Str(context.consumer()))),
            (key!("method"), Some(Value::Str(facts.method.as_str()))),
            (key!("route"), Some(Value::Str(labels.route))),
            (key!("path"), Some(Value::Str(facts.uri.path()))),
            (
                key!("status"),
                Some(Value::Count(outcome.status.as_u16().into())),
            ),
            (key!("grpc_code"), Some(Value::Str(code_name(outcome.code)))),
            (key!("latency_ms"), Some(Value::Millis(context.elapsed()))),
            (key!("upstream"), Some(Value::Str(labels.upstream))),
            (
                key!("upstream_latency_ms"),
                context.upstream_latency().map(Value::Millis),
            ),
            (key!("bytes_in"), Some(Value::Count(context.bytes_in()))),
            (key!("bytes_out"), Some(Value::Count(bytes_out))),
            (
                key!("user_agent"),
                Some(Value::Str(facts.user_agent.as_ref().map_or("", text))),
            ),
            (
                key!("fault"),
                outcome.fault.map(|f| Value::Str(fault_name(f))),
            ),
        ];
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        // Below one billion by construction.
        let nanos = i32::try_from(now.subsec_nanos()).unwrap_or(0);
        let present = fields
            .iter()
            .filter_map(|(key, value)| value.as_ref().map(|value| (key, value)));
        match self.format {
            AccessLogFormat::Json => {
                out.extend_from_slice(b"{\"timestamp\":\"");
                write_rfc3339(seconds, nanos, out);
                out.extend_from_slice(b"\",\"level\":\"INFO\"");
                for (key, value) in present {
                    out.extend_from_slice(key.json.as_bytes());
                    value.json(out);
                }
                out.extend_from_slice(b",\"target\":\"protogate::access\"}\n");
            }
            AccessLogFormat::Text => {
                write_rfc3339(seconds, nanos, out);
                out.extend_from_slice(b"  INFO protogate::access:");
                for (key, value) in present {
                    out.extend_from_slice(key.text.as_bytes());
                    value.text(out);
                }
                out.push(b'\n');
            }
        }
    }
}

/// Makes this thread (a serving worker) gather its lines; it must run
/// [`flush_periodically`] and call [`flush_thread`] when it stops.
pub(crate) fn batch_on_this_thread() {
    BATCH.set(Some(Batch {
        writer: None,
        lines: Vec::with_capacity(BATCH_BYTES),
        started: Arc::new(Notify::new()),
    }));
}

/// Hands this thread's gathered lines to the writer thread.
pub(crate) fn flush_thread() {
    BATCH.with_borrow_mut(|batch| {
        if let Some(batch) = batch {
            batch.flush();
        }
    });
}

/// Hands this thread's gathered lines to the writer thread at the latest
/// [`FLUSH_INTERVAL`] after the first of them; runs as long as the worker's
/// runtime, and sleeps while there is nothing to flush.
pub(crate) async fn flush_periodically() {
    let Some(started) = BATCH.with_borrow(|batch| batch.as_ref().map(|b| b.started.clone())) else {
        return;
    };
    loop {
        started.notified().await;
        crate::timers::sleep(FLUSH_INTERVAL).await;
        flush_thread();
    }
}

// === impl Batch ===

impl Batch {
    fn flush(&mut self) {
        if let (Some((_, writer)), false) = (&mut self.writer, self.lines.is_empty()) {
            let _ = writer.write_all(&self.lines);
        }
        self.lines.clear();
    }
}

/// A header's text; empty when it is not visible ASCII.
fn text(value: &HeaderValue) -> &str {
    value.to_str().unwrap_or_default()
}

// === impl Value ===

impl Value<'_> {
    fn json(&self, out: &mut Vec<u8>) {
        match self {
            Self::Str(text) => write_json_str(text, out),
            Self::Count(n) => out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
            Self::Millis(duration) => write_millis(*duration, out),
            // Neither hex digits nor an address need escaping.
            Self::Trace(id) => {
                out.push(b'"');
                if let Some(hex) = id.hex() {
                    out.extend_from_slice(&hex);
                }
                out.push(b'"');
            }
            Self::Ip(ip) => {
                out.push(b'"');
                if let Some(ip) = ip {
                    write_ip(*ip, out);
                }
                out.push(b'"');
            }
        }
    }

    /// `key="quoted"` for text, `key=value` for numbers, like `tracing`'s
    /// text format.
    fn text(&self, out: &mut Vec<u8>) {
        match self {
            Self::Str(text) => {
                let _ = write!(out, "{text:?}");
            }
            Self::Count(_) | Self::Millis(_) | Self::Trace(_) | Self::Ip(_) => self.json(out),
        }
    }
}

/// `1.234` for 1,234 µs: fixed point, without float formatting (this is
/// on every line, twice).
fn write_millis(duration: Duration, out: &mut Vec<u8>) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1_000).as_bytes());
    let fraction = micros % 1_000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ]);
}

/// An address as `Display` writes it, IPv4 without `fmt`'s machinery (this
/// is on every line, and in every shared quota's key).
pub(crate) fn write_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(ip) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
        }
        IpAddr::V6(ip) => {
            let _ = write!(out, "{ip}");
        }
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

/// Step 3, on the way in: what the line will say of the request, with the
/// ids step 1 decided.
pub(crate) fn begin(request: &mut Request, ids: &RequestIds) -> Pending {
    let context = RequestContext::attach(request);
    Pending {
        facts: RequestFacts {
            request_id: ids.request_id().clone(),
            correlation_id: ids.correlation_id().clone(),
            trace_id: ids.hop().id(),
            client_ip: request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip()),
            method: request.method().clone(),
            uri: request.uri().clone(),
            user_agent: request.headers().get(header::USER_AGENT).cloned(),
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
    fn a_workers_batch_keeps_each_logs_lines_to_that_log() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            let config = AccessLogConfig {
                file: Some(dir.path().join(name)),
                ..AccessLogConfig::default()
            };
            AccessLog::new(&config).unwrap()
        };
        let (first, second) = (open("first.log"), open("second.log"));
        batch_on_this_thread();
        let line = |text: &'static [u8]| move |out: &mut Vec<u8>| out.extend_from_slice(text);
        first.emit(line(b"1a\n"));
        first.emit(line(b"1b\n"));
        second.emit(line(b"2a\n"));
        first.emit(line(b"1c\n"));
        flush_thread();
        BATCH.set(None);
        // Dropping a log waits for its writer thread to write everything.
        drop((first, second));
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("first.log"), "1a\n1b\n1c\n");
        assert_eq!(read("second.log"), "2a\n");
    }

    /// One line of each format for a request from `client` that was
    /// answered 200 with 42 bytes.
    fn lines(client: SocketAddr) -> (serde_json::Value, String) {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/v1/orders?secret=1")
            .header(header::USER_AGENT, "curl/8 \"quoted\"")
            .header("x-request-id", "id-1")
            .header("x-correlation-id", "corr-1")
            .body(Body::empty())
            .unwrap();
        request.extensions_mut().insert(ConnectInfo(client));
        let ids = RequestIds::decide(&mut request, None);
        let pending = begin(&mut request, &ids);
        let outcome = Outcome::of(&Response::new(Body::empty()));
        let line = |format| {
            let log = AccessLog::new(&AccessLogConfig {
                format,
                ..AccessLogConfig::default()
            })
            .unwrap();
            let mut out = Vec::new();
            log.format(&pending.facts, &pending.context, outcome, 42, &mut out);
            String::from_utf8(out).unwrap()
        };
        let json = serde_json::from_str(&line(AccessLogFormat::Json)).unwrap();
        (json, line(AccessLogFormat::Text))
    }

    #[test]
    fn a_line_says_what_the_request_was_in_either_format() {
        let (json, text) = lines(SocketAddr::from(([10, 0, 255, 1], 4000)));
        assert_eq!(json["request_id"], "id-1");
        assert_eq!(json["correlation_id"], "corr-1");
        assert_eq!(json["client_ip"], "10.0.255.1");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/v1/orders");
        assert_eq!(json["route"], "unmatched");
        assert_eq!(json["status"], 200);
        assert_eq!(json["grpc_code"], "OK");
        assert_eq!(json["bytes_out"], 42);
        assert_eq!(json["user_agent"], "curl/8 \"quoted\"");
        assert_eq!(json["target"], "protogate::access");
        assert!(json["latency_ms"].as_f64().unwrap() >= 0.0);
        assert!(json.get("fault").is_none() && json.get("upstream_latency_ms").is_none());
        assert!(text.ends_with('\n') && !text.contains("secret"));
        for field in [
            " request_id=\"id-1\"",
            " client_ip=\"10.0.255.1\"",
            " status=200 ",
            " user_agent=\"curl/8 \\\"quoted\\\"\"",
        ] {
            assert!(text.contains(field), "{field} not in {text}");
        }
    }

    #[test]
    fn latencies_print_as_milliseconds_to_the_microsecond() {
        for (micros, text) in [
            (0, "0.000"),
            (7, "0.007"),
            (1_234, "1.234"),
            (60_000_050, "60000.050"),
        ] {
            let mut out = Vec::new();
            write_millis(Duration::from_micros(micros), &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
        let mut out = Vec::new();
        write_millis(Duration::from_nanos(1_999), &mut out);
        assert_eq!(out, b"0.001", "truncated, not rounded");
    }

    #[test]
    fn client_addresses_print_as_std_prints_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "192.168.1.20",
            "::1",
            "2001:db8::7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let (json, _) = lines(SocketAddr::new(ip, 1));
            assert_eq!(json["client_ip"], ip.to_string());
        }
    }

    #[test]
    fn sampling_keeps_the_exact_fraction() {
        assert_eq!(kept(1.0, 10), 10);
        assert_eq!(kept(0.0, 10), 0);
        assert_eq!(kept(0.5, 10), 5);
        assert_eq!(kept(0.25, 100), 25);
    }
}
