//! gRPC over HTTP/2, as every call speaks it, whatever its kind: the
//! request's headers and length-prefixed frames; the reply's head, its
//! messages cut out of DATA frames (each within the reply size limit) and
//! its status; and how a failure becomes the request-path [`Error`]. Unary
//! and streaming calls, and health probes, go through this one layer, so
//! that a misbehaving upstream is answered the same on every path.

use std::fmt::Display;

use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use bytes::{Buf as _, Bytes, BytesMut};
use h2::RecvStream;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use prost_reflect::DynamicMessage;
use tonic::{Code, Status};

use super::{
    deadline::{Deadline, GRPC_TIMEOUT},
    metadata::Metadata,
    Upstream,
};
use crate::{error::Error, transcode::encode};

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
/// Who calls, as gRPC clients say.
const USER_AGENT: &str = concat!("protogate/", env!("CARGO_PKG_VERSION"));

/// Binary metadata is base64 with or without padding (gRPC over HTTP/2).
const METADATA_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One request message.
#[derive(Debug)]
pub enum Payload {
    Message(DynamicMessage),
    /// Its wire bytes, when the gateway transcoded the JSON straight to them.
    Wire(Vec<u8>),
}

/// The request headers of a call: its metadata, gRPC's own headers, and
/// `grpc-timeout` when the call has a deadline.
pub(super) fn request_headers(metadata: Metadata, timeout: Option<HeaderValue>) -> HeaderMap {
    let mut headers = metadata.into_headers();
    let [content_type, te, user_agent] = fixed_request_headers();
    headers.insert(content_type.0, content_type.1);
    headers.insert(te.0, te.1);
    if let Some(timeout) = timeout {
        headers.insert(GRPC_TIMEOUT, timeout);
    }
    headers.insert(user_agent.0, user_agent.1);
    headers
}

/// The headers every call sends, whatever its metadata.
pub(super) fn fixed_request_headers() -> [(HeaderName, HeaderValue); 3] {
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        ),
        (header::TE, HeaderValue::from_static("trailers")),
        (header::USER_AGENT, HeaderValue::from_static(USER_AGENT)),
    ]
}

/// Whether a metadata entry of this name gives way to gRPC's own headers
/// (the fixed ones and `grpc-timeout`), as `request_headers` replaces it.
pub(super) fn is_fixed_request_header(name: &HeaderName) -> bool {
    *name == header::CONTENT_TYPE
        || *name == header::TE
        || *name == header::USER_AGENT
        || *name == GRPC_TIMEOUT
}

/// `message` as one uncompressed gRPC frame: flag, big-endian length, bytes.
pub(super) fn frame(message: &Payload) -> Result<Bytes, Error> {
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

// === the reply ===

/// What a reply's headers say before any message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReplyHead {
    /// Messages (and then the trailers) follow.
    Messages,
    /// Trailers-only with an OK status: the call ended without a message.
    EndedOk,
}

/// Reads a reply's head: a status in the headers (trailers-only) ends the
/// call, an error status fails it; a reply without one must be HTTP 200.
pub(super) fn reply_head<'a>(
    status: StatusCode,
    headers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    failures: Failures<'_>,
) -> Result<ReplyHead, Error> {
    if let Some(grpc) = grpc_status(headers) {
        grpc.map_err(|grpc| failures.status(grpc))?;
        return Ok(ReplyHead::EndedOk);
    }
    if status != StatusCode::OK {
        return Err(Error::Upstream(Status::new(
            code_for_http_status(status),
            format!("upstream answered HTTP {status}"),
        )));
    }
    Ok(ReplyHead::Messages)
}

/// Reads a reply body message by message, then its trailers.
#[derive(Debug)]
pub(super) struct ReplyReader {
    body: RecvStream,
    messages: Messages,
}

impl ReplyReader {
    /// Messages over `limit` bytes are refused.
    pub(super) fn new(body: RecvStream, limit: usize) -> Self {
        Self {
            body,
            messages: Messages::new(limit),
        }
    }

    /// The next message; `None` at the end of the body. Flow-control
    /// capacity is released as data is read, so the upstream sends ahead
    /// no more than the stream's window. Cancel-safe: what was read stays.
    pub(super) async fn message(&mut self, failures: Failures<'_>) -> Result<Option<Bytes>, Error> {
        loop {
            if let Some(message) = self.messages.next()? {
                return Ok(Some(message));
            }
            match self.body.data().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|err| failures.transport(&err))?;
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.messages.push(chunk);
                }
                None => {
                    self.messages.finish()?;
                    return Ok(None);
                }
            }
        }
    }

    /// After the last message: the trailers, when their status is OK.
    pub(super) async fn trailers(&mut self, failures: Failures<'_>) -> Result<HeaderMap, Error> {
        let trailers = self
            .body
            .trailers()
            .await
            .map_err(|err| failures.transport(&err))?;
        trailers_status(trailers, failures)
    }
}

/// A reply's trailers, when there are some and their status is OK.
pub(super) fn trailers_status<T>(trailers: Option<T>, failures: Failures<'_>) -> Result<T, Error>
where
    for<'a> &'a T: IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
{
    let trailers = trailers.ok_or_else(|| protocol_error("a reply without a grpc-status"))?;
    match grpc_status(&trailers) {
        Some(Ok(())) => Ok(trailers),
        Some(Err(status)) => Err(failures.status(status)),
        None => Err(protocol_error("a reply without a grpc-status")),
    }
}

/// Cuts length-prefixed messages out of a reply's DATA frames as they come.
/// A message inside one frame is sliced out of it; one split across frames
/// is gathered once, into a buffer of its whole size.
#[derive(Debug)]
pub(super) struct Messages {
    /// The rest of the last DATA frame, not yet cut.
    held: Bytes,
    /// A message (from its prefix on) that spans DATA frames.
    gathered: BytesMut,
    limit: usize,
}

impl Messages {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            held: Bytes::new(),
            gathered: BytesMut::new(),
            limit,
        }
    }

    /// The next DATA frame, once [`Messages::next`] has taken all of the last.
    pub(super) fn push(&mut self, chunk: Bytes) {
        debug_assert!(self.held.is_empty());
        self.held = chunk;
    }

    /// The next whole message in what was pushed, if there is one.
    pub(super) fn next(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            if self.gathered.is_empty() {
                if let Some(len) = frame_len(&self.held, self.limit)? {
                    if self.held.len() >= 5 + len {
                        let message = self.held.slice(5..5 + len);
                        self.held.advance(5 + len);
                        return Ok(Some(message));
                    }
                    self.gathered.reserve(5 + len);
                }
                self.gathered.extend_from_slice(&self.held);
                self.held.clear();
                return Ok(None);
            }
            if self.held.is_empty() {
                return Ok(None);
            }
            let wanted = frame_len(&self.gathered, self.limit)?.map_or(5, |len| 5 + len);
            let take = (wanted - self.gathered.len()).min(self.held.len());
            self.gathered.extend_from_slice(&self.held.split_to(take));
            match frame_len(&self.gathered, self.limit)? {
                Some(len) if self.gathered.len() == 5 + len => {
                    return Ok(Some(self.gathered.split().freeze().slice(5..)));
                }
                Some(len) => self.gathered.reserve(5 + len - self.gathered.len()),
                None => {}
            }
        }
    }

    /// At the end of the body: nothing may be left of a message.
    pub(super) fn finish(&self) -> Result<(), Error> {
        if self.held.is_empty() && self.gathered.is_empty() {
            Ok(())
        } else {
            Err(protocol_error("a reply that ends inside a message"))
        }
    }
}

/// The length of the message a buffer starts with, once its prefix is there.
fn frame_len(buffer: &[u8], limit: usize) -> Result<Option<usize>, Error> {
    let Some(&[flag, a, b, c, d]) = buffer.get(..5) else {
        return Ok(None);
    };
    match flag {
        0 => {}
        // No `grpc-accept-encoding` is sent, so nothing may come compressed.
        1 => return Err(protocol_error("a compressed reply")),
        _ => return Err(protocol_error("a reply that is not gRPC's message framing")),
    }
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if len > limit {
        return Err(Error::ResponseTooLarge { limit });
    }
    Ok(Some(len))
}

/// Whether a reply's fields carry a gRPC status (a trailers-only reply's head).
pub(super) fn has_status<'a>(
    headers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) -> bool {
    headers.into_iter().any(|(name, _)| name == GRPC_STATUS)
}

/// The status in `headers` (trailers, or the headers of a trailers-only
/// reply), if there is one: OK, or the upstream's error with its message
/// and details.
fn grpc_status<'a>(
    headers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) -> Option<Result<(), Status>> {
    // A reply's head and trailers carry a few names: one pass over them
    // costs less than hashing these (the first value of each, as `get`
    // finds).
    let (mut code, mut message, mut details) = (None, None, None);
    for (name, value) in headers {
        let first = if name == GRPC_STATUS {
            &mut code
        } else if name == GRPC_MESSAGE {
            &mut message
        } else if name == GRPC_STATUS_DETAILS {
            &mut details
        } else {
            continue;
        };
        first.get_or_insert(value);
    }
    let code = code?.as_bytes();
    if code == b"0" {
        return Some(Ok(()));
    }
    let message = message.map_or_else(String::new, |value| {
        percent_encoding::percent_decode(value.as_bytes())
            .decode_utf8_lossy()
            .into_owned()
    });
    let details = details
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

pub(super) fn protocol_error(what: &str) -> Error {
    Error::InvalidReply(what.into())
}

// === failures ===

/// How a call's failures become the request-path [`Error`]: one
/// classification for every kind of call. `deadline` is the call's, if it
/// has one (a reply stream has none once it has started).
#[derive(Debug, Clone, Copy)]
pub(super) struct Failures<'a> {
    upstream: &'a Upstream,
    deadline: Option<Deadline>,
}

impl<'a> Failures<'a> {
    pub(super) fn new(upstream: &'a Upstream, deadline: Option<Deadline>) -> Self {
        Self { upstream, deadline }
    }

    /// The upstream's own error status. CANCELLED or DEADLINE_EXCEEDED once
    /// the deadline has passed is that deadline, enforced by the server from
    /// our `grpc-timeout` (tonic servers answer CANCELLED "Timeout expired").
    pub(super) fn status(self, status: Status) -> Error {
        let cancelled = matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded);
        if cancelled && self.expired() {
            self.timed_out()
        } else {
            Error::Upstream(status)
        }
    }

    /// The connection or the stream failed (refused, reset, closed): after
    /// the deadline that is the deadline, before it the upstream is unavailable.
    pub(super) fn transport(self, cause: &dyn Display) -> Error {
        if self.expired() {
            self.timed_out()
        } else {
            Error::UpstreamUnavailable {
                upstream: self.upstream.name.clone(),
                cause: cause.to_string().into(),
            }
        }
    }

    /// The call's time ran out: its deadline's, else the upstream's timeout.
    pub(super) fn timed_out(self) -> Error {
        Error::DeadlineExceeded {
            upstream: self.upstream.name.clone(),
            timeout: self.deadline.map_or(self.upstream.timeout, |d| d.timeout()),
        }
    }

    fn expired(self) -> bool {
        self.deadline.is_some_and(|deadline| deadline.expired())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(message: &[u8]) -> Vec<u8> {
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(message);
        frame
    }

    /// Every message of `data` pushed in `chunks`, then whether it ended cleanly.
    fn cut(data: &[u8], chunks: &[usize], limit: usize) -> Result<Vec<Vec<u8>>, Error> {
        let mut messages = Messages::new(limit);
        let mut out = Vec::new();
        let mut rest = Bytes::copy_from_slice(data);
        for &len in chunks.iter().chain(std::iter::repeat(&usize::MAX)) {
            while let Some(message) = messages.next()? {
                out.push(message.to_vec());
            }
            if rest.is_empty() {
                break;
            }
            messages.push(rest.split_to(len.min(rest.len())));
        }
        messages.finish()?;
        Ok(out)
    }

    #[test]
    fn messages_are_cut_the_same_at_every_split_of_the_data() {
        let mut data = frame_of(b"hello");
        data.extend(frame_of(b""));
        data.extend(frame_of(&[7; 40]));
        let whole = cut(&data, &[], 64).unwrap();
        assert_eq!(whole, [b"hello".to_vec(), Vec::new(), vec![7; 40]]);
        for first in 1..data.len() {
            for second in 1..data.len() - first {
                let chunks = [first, second, 1, 3];
                assert_eq!(cut(&data, &chunks, 64).unwrap(), whole, "{chunks:?}");
            }
        }
    }

    #[test]
    fn a_message_over_the_limit_is_refused_by_its_prefix() {
        let data = frame_of(&[7; 65]);
        for chunk in [1, 5, 6, 70] {
            let result = cut(&data, &[chunk], 64);
            assert!(
                matches!(result, Err(Error::ResponseTooLarge { limit: 64 })),
                "{chunk}: {result:?}"
            );
        }
        assert_eq!(cut(&frame_of(&[7; 64]), &[3], 64).unwrap(), [vec![7; 64]]);
    }

    #[test]
    fn framing_violations_are_invalid_replies() {
        let mut compressed = frame_of(b"x");
        compressed[0] = 1;
        let mut cut_short = frame_of(b"hello");
        cut_short.pop();
        for (data, what) in [
            (compressed, "a compressed reply"),
            (b"not a frame".to_vec(), "not gRPC's message framing"),
            (cut_short, "ends inside a message"),
            (vec![0, 0], "ends inside a message"),
        ] {
            match cut(&data, &[2], 64) {
                Err(Error::InvalidReply(why)) => assert!(why.contains(what), "{why}"),
                other => panic!("expected an invalid reply, got {other:?}"),
            }
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
}
