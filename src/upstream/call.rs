//! One unary call: request metadata, deadline, and the mapping of failures
//! to the request-path [`Error`].

use std::time::Instant;

use bytes::Bytes;
use http::uri::PathAndQuery;
use prost_reflect::DynamicMessage;
use tonic::{metadata::MetadataMap, Code, TimeoutExpired};

use super::{codec::DynamicCodec, Upstream};
use crate::error::Error;

/// Calls `path` on `upstream` with `message` and waits for the encoded reply (with
/// the upstream's response metadata), at most the upstream's timeout (which
/// is also sent as `grpc-timeout`).
pub async fn unary(
    upstream: &Upstream,
    path: PathAndQuery,
    message: DynamicMessage,
    metadata: MetadataMap,
) -> Result<tonic::Response<Bytes>, Error> {
    let mut grpc = tonic::client::Grpc::new(upstream.connection())
        .max_decoding_message_size(upstream.max_response_bytes);
    let mut request = tonic::Request::from_parts(metadata, Default::default(), message);
    request.set_timeout(upstream.timeout);
    let started = Instant::now();
    let call = async {
        grpc.ready()
            .await
            .map_err(|err| unavailable(upstream, &err))?;
        grpc.unary(request, path, DynamicCodec)
            .await
            .map_err(|status| classify(upstream, status, started.elapsed() >= upstream.timeout))
    };
    match tokio::time::timeout(upstream.timeout, call).await {
        Ok(reply) => reply,
        Err(_) => Err(deadline_exceeded(upstream)),
    }
}

/// Tells the deadline, size and transport failures from the upstream's own answers.
pub(super) fn classify(upstream: &Upstream, status: tonic::Status, expired: bool) -> Error {
    let source = std::error::Error::source(&status);
    let cancelled = matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded);
    if is_over_reply_limit(upstream, &status) {
        Error::ResponseTooLarge {
            limit: upstream.max_response_bytes,
        }
    } else if source.is_some_and(|s| s.is::<TimeoutExpired>()) || (expired && cancelled) {
        // Our grpc-timeout ran out: the channel or the server (tonic servers
        // answer CANCELLED "Timeout expired") enforced it.
        deadline_exceeded(upstream)
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

pub(super) fn deadline_exceeded(upstream: &Upstream) -> Error {
    Error::DeadlineExceeded {
        upstream: upstream.name.clone(),
        timeout: upstream.timeout,
    }
}

pub(super) fn unavailable(upstream: &Upstream, cause: &dyn std::fmt::Display) -> Error {
    Error::UpstreamUnavailable {
        upstream: upstream.name.clone(),
        cause: cause.to_string().into(),
    }
}
