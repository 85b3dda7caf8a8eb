//! Streaming calls. A reply stream has no overall deadline: the upstream's
//! timeout bounds the wait for the reply headers, and the wait for the first
//! message stops there too (so that the HTTP status is known before it is
//! sent, yet a quiet stream such as a watch still starts); then the stream
//! lasts as long as both ends keep it open. Client streaming has one reply and
//! is bounded like a unary call.
//! Dropping a [`ReplyStream`] (or a call future) resets the HTTP/2 stream,
//! which cancels the call at the upstream.

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use futures_util::Stream;
use http::uri::PathAndQuery;
use tonic::{client::Grpc, metadata::MetadataMap, transport::Channel, Status, Streaming};

use super::{
    call::{classify, deadline_exceeded, unavailable, Deadline},
    codec::{DynamicCodec, Outgoing, Payload, StreamCodec},
    Upstream,
};
use crate::error::Error;

/// A reply stream whose first message has arrived, or that ended empty, or
/// that stayed quiet for the upstream's whole timeout.
#[derive(Debug)]
pub struct ReplyStream {
    /// `None` when the stream ended or stayed quiet before its first message.
    pub first: Option<Bytes>,
    rest: Streaming<Bytes>,
    upstream: Arc<Upstream>,
}

impl ReplyStream {
    /// The next message after [`ReplyStream::first`]; `None` at a clean end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Error> {
        self.rest
            .message()
            .await
            .map_err(|status| classify(&self.upstream, status, None))
    }
}

/// Calls a server-streaming method with one request message.
pub async fn server_streaming(
    upstream: &Arc<Upstream>,
    path: PathAndQuery,
    message: Payload,
    metadata: MetadataMap,
) -> Result<ReplyStream, Error> {
    let request = tonic::Request::from_parts(metadata, Default::default(), message);
    let mut grpc = client(upstream);
    until_first_reply(upstream, async {
        ready(&mut grpc, upstream).await?;
        Ok(grpc.server_streaming(request, path, DynamicCodec).await)
    })
    .await
}

/// Calls a bidirectional method; `messages` are sent as the stream yields them.
pub async fn bidi_streaming(
    upstream: &Arc<Upstream>,
    path: PathAndQuery,
    messages: impl Stream<Item = Outgoing> + Send + 'static,
    metadata: MetadataMap,
) -> Result<ReplyStream, Error> {
    let request = tonic::Request::from_parts(metadata, Default::default(), messages);
    let mut grpc = client(upstream);
    until_first_reply(upstream, async {
        ready(&mut grpc, upstream).await?;
        Ok(grpc.streaming(request, path, StreamCodec).await)
    })
    .await
}

/// Calls a client-streaming method and waits for its one reply, at most
/// until the `deadline` (also sent as `grpc-timeout`).
pub async fn client_streaming(
    upstream: &Upstream,
    path: PathAndQuery,
    messages: impl Stream<Item = Outgoing> + Send + 'static,
    metadata: MetadataMap,
    deadline: Deadline,
) -> Result<Bytes, Error> {
    let mut request = tonic::Request::from_parts(metadata, Default::default(), messages);
    request.set_timeout(deadline.timeout());
    let mut grpc = client(upstream);
    let call = async {
        ready(&mut grpc, upstream).await?;
        grpc.client_streaming(request, path, StreamCodec)
            .await
            .map_err(|status| classify(upstream, status, Some(&deadline)))
    };
    match tokio::time::timeout(deadline.timeout(), call).await {
        Ok(reply) => reply.map(tonic::Response::into_inner),
        Err(_) => Err(deadline_exceeded(upstream, deadline.timeout())),
    }
}

fn client(upstream: &Upstream) -> Grpc<Channel> {
    Grpc::new(upstream.channel()).max_decoding_message_size(upstream.max_response_bytes)
}

async fn ready(grpc: &mut Grpc<Channel>, upstream: &Upstream) -> Result<(), Error> {
    grpc.ready()
        .await
        .map_err(|err| unavailable(upstream, &err))
}

/// Opens the reply stream and waits for its first message, both within the
/// upstream's timeout: no reply headers by then is a deadline error, no
/// message by then is a quiet stream.
async fn until_first_reply(
    upstream: &Arc<Upstream>,
    call: impl Future<Output = Result<Result<tonic::Response<Streaming<Bytes>>, Status>, Error>>,
) -> Result<ReplyStream, Error> {
    let deadline = tokio::time::Instant::now() + upstream.timeout;
    let Ok(opened) = tokio::time::timeout_at(deadline, call).await else {
        return Err(deadline_exceeded(upstream, upstream.timeout));
    };
    let mut rest = opened?
        .map_err(|status| classify(upstream, status, None))?
        .into_inner();
    // `message` is cancel-safe: a message half read when the wait ends stays buffered.
    let first = match tokio::time::timeout_at(deadline, rest.message()).await {
        Ok(first) => first.map_err(|status| classify(upstream, status, None))?,
        Err(_) => None,
    };
    Ok(ReplyStream {
        first,
        rest,
        upstream: upstream.clone(),
    })
}
