//! One unary call: request metadata, deadline, the gRPC framing on a
//! worker's own HTTP/2 connection, and the mapping of failures to the
//! request-path [`Error`].

use std::{
    fmt::Display,
    future::Future,
    time::{Duration, Instant},
};

use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use bytes::{Bytes, BytesMut};
use h2::RecvStream;
use http::{header, uri::PathAndQuery, HeaderMap, HeaderName, HeaderValue, StatusCode};
use tonic::{metadata::MetadataMap, transport::Channel, Code, Status, TimeoutExpired};

use super::{
    codec::{DynamicCodec, Payload},
    connection::{Connection, Direct},
    Upstream,
};
use crate::{error::Error, transcode::encode};

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// Who calls, as gRPC clients say (tonic's channels send their own).
const USER_AGENT: &str = concat!("protogate/", env!("CARGO_PKG_VERSION"));

/// Binary metadata is base64 with or without padding (gRPC over HTTP/2).
const METADATA_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A call's time limit, counted from its start: the upstream's timeout, or
/// less when the client asked for less (its `grpc-timeout`), never more.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    timeout: Duration,
    started: Instant,
}

impl Deadline {
    /// Starts now.
    pub fn start(upstream: &Upstream, asked: Option<Duration>) -> Self {
        Self {
            timeout: asked.map_or(upstream.timeout, |asked| asked.min(upstream.timeout)),
            started: Instant::now(),
        }
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn expired(&self) -> bool {
        self.started.elapsed() >= self.timeout
    }

    /// As `grpc-timeout`: the upstream's own value unless shortened.
    fn header(&self, upstream: &Upstream) -> HeaderValue {
        if self.timeout == upstream.timeout {
            upstream.grpc_timeout.clone()
        } else {
            grpc_timeout(self.timeout)
        }
    }
}

/// Calls `path` on `upstream` with `message` and waits for the encoded reply
/// (with the upstream's response headers and trailers), at most until the
/// `deadline` (which is also sent as `grpc-timeout`).
#[allow(
    clippy::manual_async_fn,
    reason = "the request's future stays small: docs/architecture.md"
)]
pub fn unary(
    upstream: &Upstream,
    path: PathAndQuery,
    message: Payload,
    metadata: MetadataMap,
    deadline: Deadline,
) -> impl Future<Output = Result<tonic::Response<Bytes>, Error>> + Send + '_ {
    async move {
        let call = async {
            match upstream.connection() {
                Connection::Direct(direct) => {
                    direct_unary(upstream, &direct, path, &message, metadata, deadline).await
                }
                // Boxed, so that the direct way's futures do not carry tonic's size.
                Connection::Channel(channel) => {
                    Box::pin(channel_unary(
                        upstream, channel, path, message, metadata, deadline,
                    ))
                    .await
                }
            }
        };
        match tokio::time::timeout(deadline.timeout, call).await {
            Ok(reply) => reply,
            Err(_) => Err(deadline_exceeded(upstream, deadline.timeout)),
        }
    }
}

/// The call through a tonic `Channel` (calls from other threads than the workers).
async fn channel_unary(
    upstream: &Upstream,
    channel: Channel,
    path: PathAndQuery,
    message: Payload,
    metadata: MetadataMap,
    deadline: Deadline,
) -> Result<tonic::Response<Bytes>, Error> {
    let mut grpc =
        tonic::client::Grpc::new(channel).max_decoding_message_size(upstream.max_response_bytes);
    let mut request = tonic::Request::from_parts(metadata, Default::default(), message);
    request.set_timeout(deadline.timeout);
    grpc.ready()
        .await
        .map_err(|err| unavailable(upstream, &err))?;
    grpc.unary(request, path, DynamicCodec)
        .await
        .map_err(|status| classify(upstream, status, Some(&deadline)))
}

/// The call over a worker's own connection: one length-prefixed message
/// out; the reply's headers, one message, and a status in the trailers (or
/// in the headers alone) back. The headers and the frame are made before
/// the future, so that it holds them once.
fn direct_unary<'a>(
    upstream: &'a Upstream,
    direct: &'a Direct,
    path: PathAndQuery,
    message: &Payload,
    metadata: MetadataMap,
    deadline: Deadline,
) -> impl Future<Output = Result<tonic::Response<Bytes>, Error>> + Send + 'a {
    let mut headers = metadata.into_headers();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.insert(GRPC_TIMEOUT, deadline.header(upstream));
    headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    let frame = frame(message);
    async move {
        let transport = |err: &dyn Display| {
            if deadline.expired() {
                deadline_exceeded(upstream, deadline.timeout)
            } else {
                unavailable(upstream, err)
            }
        };
        let response = direct
            .send(path, headers, frame?)
            .await
            .map_err(|err| transport(&err))?
            .await
            .map_err(|err| transport(&err))?;
        let (head, mut body) = response.into_parts();
        let mut headers = head.headers;
        if let Some(status) = grpc_status(&headers) {
            // Trailers-only: the status came with the headers, and no message.
            status.map_err(|status| classify(upstream, status, Some(&deadline)))?;
            return Err(protocol_error("an OK status without a reply message"));
        }
        if head.status != StatusCode::OK {
            return Err(Error::Upstream(Status::new(
                code_for_http_status(head.status),
                format!("upstream answered HTTP {}", head.status),
            )));
        }
        let reply = read_message(&mut body, upstream.max_response_bytes, transport).await?;
        let trailers = body.trailers().await.map_err(|err| transport(&err))?;
        let status = trailers.as_ref().and_then(grpc_status);
        match status {
            Some(Ok(())) => {}
            Some(Err(status)) => return Err(classify(upstream, status, Some(&deadline))),
            None => return Err(protocol_error("a reply without a grpc-status")),
        }
        let Some(reply) = reply else {
            return Err(protocol_error("an OK status without a reply message"));
        };
        if let Some(trailers) = trailers {
            headers.extend(trailers);
        }
        Ok(tonic::Response::from_parts(
            MetadataMap::from_headers(headers),
            reply,
            Default::default(),
        ))
    }
}

/// `message` as one uncompressed gRPC frame: flag, big-endian length, bytes.
fn frame(message: &Payload) -> Result<Bytes, Error> {
    // Wire bytes get exactly the frame's size: a full `Vec` becomes `Bytes`
    // without a second allocation.
    let capacity = match message {
        Payload::Message(_) => 128,
        Payload::Wire(encoded) => 5 + encoded.len(),
    };
    let mut buf = Vec::with_capacity(capacity);
    buf.extend_from_slice(&[0; 5]);
    match message {
        Payload::Message(message) => encode::encode(message, &mut buf),
        Payload::Wire(encoded) => buf.extend_from_slice(encoded),
    }
    let len = u32::try_from(buf.len() - 5)
        .map_err(|_| Error::Internal("request message over 4 GiB".into()))?;
    buf[1..5].copy_from_slice(&len.to_be_bytes());
    Ok(buf.into())
}

/// The first message of a reply body (a unary reply has one; anything after
/// it is read and dropped, as tonic does), releasing flow-control capacity
/// as data arrives. A message in one DATA frame is sliced out of it; one
/// split across frames is gathered once. A message over `limit` stops the read.
async fn read_message(
    body: &mut RecvStream,
    limit: usize,
    transport: impl Fn(&dyn Display) -> Error,
) -> Result<Option<Bytes>, Error> {
    let mut pending = BytesMut::new();
    let mut message = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|err| transport(&err))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if message.is_some() {
            continue;
        }
        if pending.is_empty() {
            match frame_len(&chunk, limit)? {
                Some(len) if chunk.len() >= 5 + len => {
                    message = Some(chunk.slice(5..5 + len));
                    continue;
                }
                // Gathered into one buffer of the whole frame's size.
                Some(len) => pending.reserve(5 + len),
                None => {}
            }
        }
        pending.extend_from_slice(&chunk);
        match frame_len(&pending, limit)? {
            Some(len) if pending.len() >= 5 + len => {
                message = Some(pending.split_to(5 + len).freeze().slice(5..));
            }
            Some(len) => pending.reserve(5 + len - pending.len()),
            None => {}
        }
    }
    Ok(message)
}

/// The length of the message a buffer starts with, once its prefix is there.
fn frame_len(buffer: &[u8], limit: usize) -> Result<Option<usize>, Error> {
    let Some(&[flag, a, b, c, d]) = buffer.get(..5) else {
        return Ok(None);
    };
    if flag != 0 {
        // No `grpc-accept-encoding` is sent, so nothing may come compressed.
        return Err(protocol_error("a compressed reply"));
    }
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if len > limit {
        return Err(Error::ResponseTooLarge { limit });
    }
    Ok(Some(len))
}

/// The status in `headers` (trailers, or the headers of a trailers-only
/// reply), if there is one: OK, or the upstream's error with its message
/// and details.
fn grpc_status(headers: &HeaderMap) -> Option<Result<(), Status>> {
    let code = headers.get(GRPC_STATUS)?.as_bytes();
    if code == b"0" {
        return Some(Ok(()));
    }
    let message = headers.get(GRPC_MESSAGE).map_or_else(String::new, |value| {
        percent_encoding::percent_decode(value.as_bytes())
            .decode_utf8_lossy()
            .into_owned()
    });
    let details = headers
        .get(GRPC_STATUS_DETAILS)
        .and_then(|value| METADATA_BASE64.decode(value.as_bytes()).ok())
        .unwrap_or_default();
    Some(Err(Status::with_details(
        Code::from_bytes(code),
        message,
        details.into(),
    )))
}

/// A reply without a gRPC status, by its HTTP status (gRPC's
/// http-grpc-status-mapping).
fn code_for_http_status(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

fn protocol_error(what: &str) -> Error {
    Error::InvalidReply(what.into())
}

/// `grpc-timeout` for `timeout`: at most eight digits, in the finest unit
/// that fits (gRPC over HTTP/2).
pub(super) fn grpc_timeout(timeout: std::time::Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let (value, unit) = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ]
    .into_iter()
    .map(|(per_unit, unit)| (nanos.div_ceil(per_unit), unit))
    .find(|(value, _)| *value <= MAX)
    .unwrap_or((MAX, 'H'));
    let mut text = itoa::Buffer::new().format(value).to_owned();
    text.push(unit);
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("99999999H"))
}

/// Tells the deadline, size and transport failures from the upstream's own
/// answers; `deadline` is the call's, if it has one.
pub(super) fn classify(
    upstream: &Upstream,
    status: tonic::Status,
    deadline: Option<&Deadline>,
) -> Error {
    let source = std::error::Error::source(&status);
    let cancelled = matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded);
    let expired = deadline.is_some_and(Deadline::expired);
    if is_over_reply_limit(upstream, &status) {
        Error::ResponseTooLarge {
            limit: upstream.max_response_bytes,
        }
    } else if source.is_some_and(|s| s.is::<TimeoutExpired>()) || (expired && cancelled) {
        // Our grpc-timeout ran out: the channel or the server (tonic servers
        // answer CANCELLED "Timeout expired") enforced it.
        deadline_exceeded(
            upstream,
            deadline.map_or(upstream.timeout, Deadline::timeout),
        )
    } else if status.code() == Code::Unavailable && source.is_some() {
        // A transport failure (connect refused, reset) carries its cause as source.
        unavailable(upstream, &status)
    } else {
        Error::Upstream(status)
    }
}

/// tonic's own decoder refusing a reply over `max_decoding_message_size`: it
/// has no error type, so it is known by its code and the limit it names (an
/// upstream refusing our request would name its own limit).
fn is_over_reply_limit(upstream: &Upstream, status: &tonic::Status) -> bool {
    status.code() == Code::OutOfRange
        && status
            .message()
            .starts_with("Error, decoded message length too large")
        && status.message().ends_with(&format!(
            "the limit is: {} bytes",
            upstream.max_response_bytes
        ))
}

pub(super) fn deadline_exceeded(upstream: &Upstream, timeout: Duration) -> Error {
    Error::DeadlineExceeded {
        upstream: upstream.name.clone(),
        timeout,
    }
}

/// The client's `grpc-timeout`, if it sent one: it shortens the call's
/// [`Deadline`] (never lengthens it); a malformed one is refused.
pub fn asked_timeout(headers: &HeaderMap) -> Result<Option<Duration>, Error> {
    let Some(value) = headers.get(GRPC_TIMEOUT) else {
        return Ok(None);
    };
    match parse_grpc_timeout(value.as_bytes()) {
        Some(timeout) => Ok(Some(timeout)),
        None => Err(Error::invalid_field(
            GRPC_TIMEOUT.as_str(),
            format!(
                "`{}` is not a gRPC timeout: 1 to 8 digits and a unit (H, M, S, m, u or n)",
                String::from_utf8_lossy(value.as_bytes())
            ),
        )),
    }
}

/// 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`), as gRPC over
/// HTTP/2 spells a timeout; `None` for anything else.
fn parse_grpc_timeout(text: &[u8]) -> Option<Duration> {
    let (&unit, digits) = text.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u64, |value, digit| value * 10 + u64::from(digit - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(value * 3600),
        b'M' => Duration::from_secs(value * 60),
        b'S' => Duration::from_secs(value),
        b'm' => Duration::from_millis(value),
        b'u' => Duration::from_micros(value),
        b'n' => Duration::from_nanos(value),
        _ => return None,
    })
}

pub(super) fn unavailable(upstream: &Upstream, cause: &dyn std::fmt::Display) -> Error {
    Error::UpstreamUnavailable {
        upstream: upstream.name.clone(),
        cause: cause.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use h2::server::SendResponse;
    use http::Response;

    use super::*;
    use crate::config::UpstreamConfig;

    /// How the test upstream answers every call.
    #[derive(Clone, Default)]
    struct Answer {
        http_status: u16,
        headers: Vec<(&'static str, &'static str)>,
        chunks: Vec<Vec<u8>>,
        trailers: Option<Vec<(&'static str, &'static str)>>,
    }

    impl Answer {
        fn ok(chunks: Vec<Vec<u8>>) -> Self {
            Self {
                http_status: 200,
                chunks,
                trailers: Some(vec![("grpc-status", "0")]),
                ..Self::default()
            }
        }

        fn send(&self, mut respond: SendResponse<Bytes>) {
            let mut response = Response::builder().status(self.http_status);
            for (name, value) in &self.headers {
                response = response.header(*name, *value);
            }
            let ends_now = self.chunks.is_empty() && self.trailers.is_none();
            let mut stream = respond
                .send_response(response.body(()).unwrap(), ends_now)
                .unwrap();
            for (i, chunk) in self.chunks.iter().enumerate() {
                let last = i + 1 == self.chunks.len() && self.trailers.is_none();
                stream.send_data(Bytes::from(chunk.clone()), last).unwrap();
            }
            if let Some(trailers) = &self.trailers {
                let mut map = HeaderMap::new();
                for (name, value) in trailers {
                    map.insert(
                        HeaderName::from_static(name),
                        HeaderValue::from_static(value),
                    );
                }
                stream.send_trailers(map).unwrap();
            }
        }
    }

    /// A raw HTTP/2 server on loopback that gives every call `answer`, and an
    /// upstream (replies up to `limit` bytes) that this thread reaches directly.
    async fn upstream_answering(answer: Answer, limit: usize) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut connection = h2::server::handshake(tcp).await.unwrap();
                    while let Some(Ok((_, respond))) = connection.accept().await {
                        answer.send(respond);
                    }
                });
            }
        });
        let config = UpstreamConfig {
            pattern: "*".into(),
            url,
            timeout: Duration::from_secs(5),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            server_name: None,
        };
        super::super::bind_worker(0);
        let upstream = Upstream::new(&config, limit, 1).unwrap();
        assert!(matches!(upstream.connection(), Connection::Direct(_)));
        upstream
    }

    /// One call to an upstream that answers `answer`, replies up to 64 bytes.
    async fn call(answer: Answer) -> Result<tonic::Response<Bytes>, Error> {
        call_on(&upstream_answering(answer, 64).await).await
    }

    async fn call_on(upstream: &Upstream) -> Result<tonic::Response<Bytes>, Error> {
        let empty = crate::testing::message("google.protobuf.Empty");
        unary(
            upstream,
            PathAndQuery::from_static("/test.Service/Method"),
            Payload::Message(prost_reflect::DynamicMessage::new(empty)),
            MetadataMap::new(),
            Deadline::start(upstream, None),
        )
        .await
    }

    fn frame_of(message: &[u8]) -> Vec<u8> {
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(message);
        frame
    }

    fn upstream_status(result: Result<tonic::Response<Bytes>, Error>) -> Status {
        match result {
            Err(Error::Upstream(status)) => status,
            other => panic!("expected an upstream status, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_reply_in_several_data_frames_is_joined_and_trailers_are_kept() {
        let frame = frame_of(b"hello, world");
        let mut answer = Answer::ok(vec![
            frame[..3].to_vec(),
            frame[3..9].to_vec(),
            frame[9..].to_vec(),
        ]);
        answer.headers.push(("x-reply", "h"));
        answer.trailers = Some(vec![("grpc-status", "0"), ("x-trailer", "t")]);
        let reply = call(answer).await.unwrap();
        assert_eq!(reply.get_ref().as_ref(), b"hello, world");
        assert_eq!(reply.metadata().get("x-reply").unwrap(), "h");
        assert_eq!(reply.metadata().get("x-trailer").unwrap(), "t");
    }

    #[tokio::test]
    async fn a_trailers_only_error_keeps_code_message_and_details() {
        let answer = Answer {
            http_status: 200,
            headers: vec![
                ("grpc-status", "5"),
                ("grpc-message", "no%20such%20order"),
                ("grpc-status-details-bin", "AQID"),
            ],
            ..Answer::default()
        };
        let status = upstream_status(call(answer).await);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "no such order");
        assert_eq!(status.details(), [1, 2, 3]);
    }

    #[tokio::test]
    async fn an_http_error_without_a_grpc_status_maps_by_its_http_status() {
        for (http_status, code) in [
            (503, Code::Unavailable),
            (404, Code::Unimplemented),
            (500, Code::Unknown),
        ] {
            let answer = Answer {
                http_status,
                ..Answer::default()
            };
            let status = upstream_status(call(answer).await);
            assert_eq!(status.code(), code, "HTTP {http_status}");
            assert!(status.message().contains(&http_status.to_string()));
        }
    }

    #[tokio::test]
    async fn protocol_violations_are_invalid_replies() {
        let mut no_status = Answer::ok(vec![frame_of(b"x")]);
        no_status.trailers = None;
        let mut compressed = frame_of(b"x");
        compressed[0] = 1;
        let mut ok_alone = Answer::ok(Vec::new());
        ok_alone.headers.push(("grpc-status", "0"));
        ok_alone.trailers = None;
        for (answer, what) in [
            (no_status, "without a grpc-status"),
            (Answer::ok(vec![compressed]), "a compressed reply"),
            (Answer::ok(Vec::new()), "without a reply message"),
            (ok_alone, "without a reply message"),
        ] {
            match call(answer).await {
                Err(Error::InvalidReply(why)) => assert!(why.contains(what), "{why}"),
                other => panic!("expected an invalid reply, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_reply_over_the_limit_is_refused_by_its_length() {
        let result = call(Answer::ok(vec![frame_of(&[7; 65])])).await;
        assert!(
            matches!(result, Err(Error::ResponseTooLarge { limit: 64 })),
            "{result:?}"
        );
        let reply = call(Answer::ok(vec![frame_of(&[7; 64])])).await.unwrap();
        assert_eq!(reply.get_ref().len(), 64);
    }

    #[tokio::test]
    async fn a_reply_larger_than_the_stream_window_is_read_as_it_arrives() {
        // 3 MiB through a 2 MiB stream window: unless what was read is
        // released, the upstream stops sending and the call waits out its deadline.
        let reply = frame_of(&vec![7; 3 << 20]);
        let upstream = upstream_answering(Answer::ok(vec![reply]), 4 << 20).await;
        for _ in 0..2 {
            let reply = call_on(&upstream).await.unwrap();
            assert_eq!(reply.get_ref().len(), 3 << 20);
        }
    }

    #[test]
    fn status_details_that_are_not_base64_are_dropped_not_fatal() {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_STATUS, HeaderValue::from_static("3"));
        headers.insert(GRPC_STATUS_DETAILS, HeaderValue::from_static("%%%"));
        let status = grpc_status(&headers).unwrap().unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.details().is_empty());
        headers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        assert!(grpc_status(&headers).unwrap().is_ok());
        assert!(grpc_status(&HeaderMap::new()).is_none());
    }

    #[test]
    fn a_clients_grpc_timeout_is_read_as_grpc_spells_it() {
        for (text, timeout) in [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("30S", Duration::from_secs(30)),
            ("250m", Duration::from_millis(250)),
            ("7u", Duration::from_micros(7)),
            ("99999999n", Duration::from_nanos(99_999_999)),
            ("0S", Duration::ZERO),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
        ] {
            assert_eq!(parse_grpc_timeout(text.as_bytes()), Some(timeout), "{text}");
        }
        for text in [
            "",
            "S",
            "5",
            "5s",
            "5 S",
            "-5S",
            "+5S",
            "123456789S",
            "1.5S",
            "5SS",
        ] {
            assert_eq!(parse_grpc_timeout(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn grpc_timeout_takes_the_finest_unit_within_eight_digits() {
        for (timeout, text) in [
            (Duration::from_millis(50), "50000000n"),
            (Duration::from_secs(30), "30000000u"),
            (Duration::from_secs(3600), "3600000m"),
            (Duration::from_secs(400_000), "400000S"),
        ] {
            assert_eq!(grpc_timeout(timeout), text, "{timeout:?}");
        }
    }
}
