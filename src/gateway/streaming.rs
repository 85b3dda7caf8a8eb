//! Server, client and bidirectional streaming methods behind the gateway.
//!
//! * Request streams: the body is NDJSON or a JSON array, cut into values as
//!   it arrives ([`JsonSplitter`]); each value becomes a message, with the
//!   path and query bindings applied, and goes upstream at once. An
//!   `HttpBody` request stream sends each body chunk raw. A bad value aborts
//!   the call (the upstream never sees a clean end of a half-read stream).
//! * Reply streams: the HTTP status waits for the first reply message, so an
//!   error before it (or a first message that cannot be printed) is an
//!   ordinary error response, as for a unary call; after it, every message
//!   is framed ([`Framer`]) and written as soon as it arrives, and an error
//!   ends the stream with a `google.rpc.Status` frame.
//! * Nothing is buffered beyond one message each way: the response body pulls
//!   the next upstream message only when the client has taken the previous
//!   one, so a slow reader slows the upstream through HTTP/2 flow control.
//!   A client that goes away drops the body, which resets the upstream call.

use std::{future::pending, sync::Arc, time::Instant};

use axum::{
    body::{Body, BodyDataStream, Bytes},
    extract::Request,
    response::{IntoResponse, Response},
};
use futures_util::{stream, Stream, StreamExt as _};
use http::{header, request::Parts, HeaderMap, HeaderValue};
use tokio::sync::oneshot;

use super::{
    payload::{check_json_content_type, reply_filter, upstream_of},
    record_upstream_call, Gateway,
};
use crate::{
    error::Error,
    http_rule::BodyPlan,
    registry::{CallKind, RouteMatch},
    request_ids,
    transcode::{self, Framer, JsonSplitter, ReplyFilter, StreamFormat},
    upstream::{self, Deadline, Metadata, Outgoing, Payload, ReplyStream},
};

/// Serves one call of a streaming method.
pub(crate) async fn call(
    gateway: &Arc<Gateway>,
    matched: RouteMatch,
    metadata: Metadata,
    request: Request,
) -> Result<Response, Error> {
    let route = matched.route();
    let method = matched.catalog.method(route);
    let upstream = upstream_of(method)?.clone();
    let path = method.grpc_path.clone();
    let kind = method.kind;
    let (parts, body) = request.into_parts();
    let filter = reply_filter(&matched, &parts)?;
    // Checked on every kind; only a client stream has a deadline to shorten.
    let asked = upstream::asked_timeout(&parts.headers)?;
    let request_id = request_ids::request_id(&parts.headers).to_owned();
    let format = StreamFormat::negotiate(&parts.headers);

    if kind == CallKind::ServerStreaming {
        let message = gateway.request_payload(&matched, &parts, body).await?;
        record_upstream_call(&parts, Instant::now(), None);
        let replies = upstream::server_streaming(&upstream, path, message, metadata).await?;
        return reply_stream(
            replies,
            None,
            gateway.clone(),
            matched,
            request_id,
            (format, filter),
        );
    }

    let (fail, failed) = oneshot::channel();
    let mut failed = Some(failed);
    let messages = RequestFeed::new(gateway.clone(), matched.clone(), &parts, body, fail)?.stream();
    record_upstream_call(&parts, Instant::now(), None);
    if kind == CallKind::ClientStreaming {
        let deadline = Deadline::start(&upstream, asked);
        let reply = tokio::select! {
            biased;
            err = request_failure(&mut failed) => return Err(err),
            reply = upstream::client_streaming(&upstream, path, messages, metadata, deadline) => {
                reply.map_err(|err| failed_first(&mut failed).unwrap_or(err))?
            }
        };
        return gateway.reply_response(&reply, &matched, &filter);
    }
    let replies = tokio::select! {
        biased;
        err = request_failure(&mut failed) => return Err(err),
        replies = upstream::bidi_streaming(&upstream, path, messages, metadata) => {
            replies.map_err(|err| failed_first(&mut failed).unwrap_or(err))?
        }
    };
    reply_stream(
        replies,
        failed,
        gateway.clone(),
        matched,
        request_id,
        (format, filter),
    )
}

/// The error that ended the request stream; pending forever when it ended
/// cleanly (the receiver is then cleared, so it is never polled again).
async fn request_failure(failed: &mut Option<oneshot::Receiver<Error>>) -> Error {
    if let Some(receiver) = failed.as_mut() {
        let result = receiver.await;
        *failed = None;
        if let Ok(err) = result {
            return err;
        }
    }
    pending().await
}

/// The request stream's error, when it failed before the call did: the
/// call's failure (the reset of an aborted stream) is then its consequence.
/// `biased` alone does not ensure this: tokio's cooperative budget can make
/// a ready receiver answer `Pending` for one poll.
fn failed_first(failed: &mut Option<oneshot::Receiver<Error>>) -> Option<Error> {
    failed.as_mut()?.try_recv().ok()
}

// === request streams ===

/// The request body of a client or bidi stream, turned into messages.
struct RequestFeed {
    gateway: Arc<Gateway>,
    matched: RouteMatch,
    query: Option<String>,
    content_type: String,
    data: BodyDataStream,
    splitter: JsonSplitter,
    /// The body has ended; what the splitter holds is all there is.
    ended: bool,
    /// A binding without a body: one message from the URL, already sent.
    url_only_sent: bool,
    fail: Option<oneshot::Sender<Error>>,
}

impl RequestFeed {
    fn new(
        gateway: Arc<Gateway>,
        matched: RouteMatch,
        parts: &Parts,
        body: Body,
        fail: oneshot::Sender<Error>,
    ) -> Result<Self, Error> {
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if !matched.route().binding.raw_request {
            check_stream_content_type(&parts.headers)?;
        }
        Ok(Self {
            splitter: JsonSplitter::new(gateway.max_request_body),
            gateway,
            matched,
            query: parts.uri.query().map(str::to_owned),
            content_type,
            data: body.into_data_stream(),
            ended: false,
            url_only_sent: false,
            fail: Some(fail),
        })
    }

    /// The messages, in body order. On a bad value the error goes to `fail`
    /// first, then the stream aborts the call: the upstream sees it fail,
    /// never a clean end as if the body had been complete.
    fn stream(self) -> impl Stream<Item = Outgoing> + Send + 'static {
        stream::unfold(self, |mut feed| async move {
            let fail = feed.fail.take()?;
            match feed.next_message().await {
                Ok(Some(message)) => {
                    feed.fail = Some(fail);
                    Some((Outgoing::Message(message), feed))
                }
                Ok(None) => None,
                Err(err) => {
                    let _ = fail.send(err);
                    Some((Outgoing::Abort, feed))
                }
            }
        })
    }

    async fn next_message(&mut self) -> Result<Option<Payload>, Error> {
        let binding = &self.matched.route().binding;
        let (url_only, raw) = (binding.body == BodyPlan::None, binding.raw_request);
        if url_only {
            if self.url_only_sent {
                return Ok(None);
            }
            self.url_only_sent = true;
            return self.message(b"").map(Some);
        }
        loop {
            if raw {
                return match self.read().await? {
                    Some(chunk) => self.raw_message(chunk).map(Some),
                    None => Ok(None),
                };
            }
            let value = if self.ended {
                self.splitter.finish()?
            } else {
                self.splitter.next_value()?
            };
            if let Some(value) = value {
                return self.message(&value).map(Some);
            }
            if self.ended {
                return Ok(None);
            }
            match self.read().await? {
                Some(chunk) => self.splitter.push(&chunk),
                None => self.ended = true,
            }
        }
    }

    /// The next non-empty body chunk, or `None` at the end of the body.
    async fn read(&mut self) -> Result<Option<Bytes>, Error> {
        while let Some(chunk) = self.data.next().await {
            let chunk = chunk.map_err(|err| Error::BodyRead(err.to_string().into()))?;
            if !chunk.is_empty() {
                return Ok(Some(chunk));
            }
        }
        Ok(None)
    }

    fn message(&self, value: &[u8]) -> Result<Payload, Error> {
        self.gateway
            .json_payload(&self.matched, self.query.as_deref(), value)
    }

    fn raw_message(&self, chunk: Bytes) -> Result<Payload, Error> {
        self.gateway
            .raw_message(
                &self.matched,
                self.query.as_deref(),
                &self.content_type,
                chunk,
            )
            .map(Payload::Message)
    }
}

/// JSON, NDJSON or JSON-lines bodies (or no content type).
fn check_stream_content_type(headers: &HeaderMap) -> Result<(), Error> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-ndjson" | "application/jsonl" | "application/json-seq" => Ok(()),
        _ => check_json_content_type(headers),
    }
}

// === reply streams ===

/// The response whose body is the reply stream, framed or raw.
fn reply_stream(
    replies: ReplyStream,
    request_failed: Option<oneshot::Receiver<Error>>,
    gateway: Arc<Gateway>,
    matched: RouteMatch,
    request_id: String,
    (format, filter): (StreamFormat, ReplyFilter),
) -> Result<Response, Error> {
    let raw = matched.route().binding.raw_response;
    let content_type = if raw {
        let content_type = match &replies.first {
            None => "application/octet-stream".to_owned(),
            Some(first) => {
                let first = transcode::decode_reply(&matched.method().descriptor, first)?;
                transcode::raw_reply(&first, &matched.route().binding).0
            }
        };
        HeaderValue::from_str(&content_type)
            .map_err(|_| Error::Internal("upstream sent an invalid content type".into()))?
    } else {
        format.content_type()
    };
    let mut body = ReplyBody {
        replies,
        request_failed,
        gateway,
        matched,
        request_id,
        framer: (!raw).then(|| Framer::new(format)),
        filter,
        first: None,
        done: false,
    };
    // Printed before the status is sent: a first message the gateway cannot
    // print is an ordinary error response, as a unary reply would be.
    body.first = body
        .replies
        .first
        .take()
        .map(|first| body.print(&first))
        .transpose()?;
    let mut response = (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body.stream()),
    )
        .into_response();
    if format == StreamFormat::EventStream && !raw {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    Ok(response)
}

/// The state behind a streamed response body.
struct ReplyBody {
    replies: ReplyStream,
    /// A bidi call's request stream reports a bad value here.
    request_failed: Option<oneshot::Receiver<Error>>,
    gateway: Arc<Gateway>,
    matched: RouteMatch,
    request_id: String,
    /// `None` for an `HttpBody` stream, written raw.
    framer: Option<Framer>,
    /// The client's `fields` selection, applied to every message.
    filter: ReplyFilter,
    /// The first message, printed.
    first: Option<Bytes>,
    done: bool,
}

/// Why a raw stream was cut short: a raw body has no room for a status, so
/// the response is aborted and the client sees an incomplete body.
#[derive(Debug, thiserror::Error)]
#[error("the reply stream failed: {0}")]
struct StreamAborted(Error);

impl ReplyBody {
    fn stream(self) -> impl Stream<Item = Result<Bytes, StreamAborted>> + Send + 'static {
        stream::unfold(self, |mut body| async move {
            let frame = body.next_frame().await?;
            Some((frame, body))
        })
    }

    async fn next_frame(&mut self) -> Option<Result<Bytes, StreamAborted>> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        let next = self
            .next_reply()
            .await
            .and_then(|next| next.map(|message| self.print(&message)).transpose());
        match next {
            Ok(Some(frame)) => Some(Ok(frame)),
            Ok(None) => {
                self.done = true;
                self.framer.as_ref()?.end().map(Ok)
            }
            Err(err) => {
                self.done = true;
                Some(self.error_frame(err))
            }
        }
    }

    /// The next upstream message, unless the request stream failed first.
    async fn next_reply(&mut self) -> Result<Option<Bytes>, Error> {
        tokio::select! {
            biased;
            err = request_failure(&mut self.request_failed) => Err(err),
            next = self.replies.next() => next,
        }
    }

    /// `reply` as the client gets it: JSON in its frame, or the raw bytes
    /// of an `HttpBody`.
    fn print(&mut self, reply: &[u8]) -> Result<Bytes, Error> {
        let Some(framer) = &mut self.framer else {
            let message = transcode::decode_reply(&self.matched.method().descriptor, reply)?;
            return Ok(transcode::raw_reply(&message, &self.matched.route().binding).1);
        };
        let shape = self.matched.reply_shape();
        let json = self.filter.print(reply, shape, &self.gateway.options)?;
        Ok(framer.message(&json))
    }

    fn error_frame(&mut self, err: Error) -> Result<Bytes, StreamAborted> {
        let method = self.matched.method();
        let upstream = method.upstream.as_ref().map_or("none", |u| &*u.name);
        tracing::warn!(error = %err, request_id = %self.request_id, upstream, rpc = %method.grpc_path, "reply stream ended with an error");
        let Some(framer) = &mut self.framer else {
            return Err(StreamAborted(err));
        };
        let status = err.status_json(&self.request_id, Some(self.matched.catalog.detail_types()));
        Ok(framer.error(status.to_string().as_bytes()))
    }
}
