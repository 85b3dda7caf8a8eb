//! The last step of the data plane: the matched route → request message →
//! upstream call → JSON reply. Unary calls are served here, the streaming
//! kinds by [`streaming`]; both build their messages and replies with the
//! helpers of [`payload`]. Errors become `google.rpc.Status` responses here,
//! where the catalog's pool can resolve the details an upstream sent.

mod payload;
mod streaming;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{extract::Request, response::Response};
use http::{request::Parts, HeaderValue};
use tonic::Code;

use self::payload::{reply_filter, upstream_of};
use crate::{
    error::Error,
    observe::RequestContext,
    policy::UpstreamHeaders,
    registry::{CallKind, RouteMatch},
    transcode::TranscodeOptions,
    upstream::{self, Deadline, Metadata},
};

/// What the gateway service needs besides the matched route.
#[derive(Debug)]
pub struct Gateway {
    pub options: TranscodeOptions,
    pub max_request_body: usize,
    /// Whether the header policy returns any upstream response metadata:
    /// when not, a reply's metadata is dropped here rather than carried.
    pub upstream_headers_returned: bool,
}

/// The last step of the data plane, after the route and the policies.
/// `request_id`: the request's `x-request-id`, for an error's body (handed
/// down from step 1 rather than looked up again).
#[allow(
    clippy::manual_async_fn,
    reason = "the request's future stays small: docs/architecture.md"
)]
pub fn handle(
    gateway: &Arc<Gateway>,
    matched: RouteMatch,
    metadata: Metadata,
    request: Request,
    request_id: Option<HeaderValue>,
) -> impl Future<Output = Response> + Send + '_ {
    async move {
        let (catalog, route) = (matched.catalog.clone(), matched.route);
        let result = match matched.method().kind {
            CallKind::Unary => gateway.call(matched, metadata, request).await,
            // Boxed: the streaming future is larger than the unary one, and
            // would otherwise set the size (and the cost of every move) of
            // every unary request's future.
            _ => Box::pin(streaming::call(gateway, matched, metadata, request)).await,
        };
        result.unwrap_or_else(|err| {
            let id = request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if err.http_status().is_server_error() {
                // The client sees a generic message: the cause is told here.
                let method = catalog.method(catalog.route(route));
                let upstream = method.upstream.as_ref().map_or("none", |u| &*u.name);
                tracing::warn!(request_id = id, upstream, rpc = %method.grpc_path, error = %err, "request failed");
            }
            err.into_response(id, Some(catalog.detail_types()))
        })
    }
}

impl Gateway {
    fn call(
        &self,
        matched: RouteMatch,
        metadata: Metadata,
        request: Request,
    ) -> impl Future<Output = Result<Response, Error>> + Send + '_ {
        let (parts, body) = request.into_parts();
        async move {
            let method = matched.method();
            let upstream = upstream_of(method)?;
            let filter = reply_filter(&matched, &parts)?;
            let asked = upstream::asked_timeout(&parts.headers)?;
            let message = self.request_payload(&matched, &parts, body).await?;
            let deadline = Deadline::start(upstream, asked);
            let started = deadline.started();
            let path = method.grpc_path.clone();
            let call = upstream::unary(upstream, path, &message, metadata, deadline);
            // Framed by now: the request's future need not keep the message.
            drop(message);
            let reply = call.await;
            let code = reply.as_ref().map_or_else(Error::code, |_| Code::Ok);
            record_upstream_call(&parts, started, Some((started.elapsed(), code)));
            let reply = reply?;
            let mut response = self.reply_response(&reply.message, &matched, &filter)?;
            if self.upstream_headers_returned {
                response
                    .extensions_mut()
                    .insert(UpstreamHeaders(reply.metadata()));
            }
            Ok(response)
        }
    }
}

/// Tells the request's observers (metrics, log, spans) about its upstream
/// call: when it started, and how long it took and how it ended when it is
/// over (unary; a stream ends with the response).
fn record_upstream_call(parts: &Parts, started: Instant, finished: Option<(Duration, Code)>) {
    if let Some(context) = parts.extensions.get::<Arc<RequestContext>>() {
        context.set_upstream_call(started, finished);
    }
}
