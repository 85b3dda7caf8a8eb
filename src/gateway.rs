//! The innermost service: the matched route → request message → upstream
//! call → JSON reply. Errors become `google.rpc.Status` responses here, where
//! the catalog's pool can resolve the details an upstream sent. Streaming
//! methods are served by [`crate::streaming`].

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use http::{header, request::Parts, HeaderMap, HeaderValue};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use prost_reflect::DynamicMessage;
use tonic::metadata::MetadataMap;

use crate::{
    error::{self, Error},
    http_rule::BindingPlan,
    http_rule::BodyPlan,
    registry::{CallKind, RouteMatch},
    streaming,
    transcode::{self, TranscodeOptions},
    upstream,
};

/// Headers that travel to the upstream as gRPC metadata.
const FORWARDED: [&str; 2] = ["x-request-id", "x-correlation-id"];

/// What the gateway service needs besides the matched route.
#[derive(Debug)]
pub struct Gateway {
    pub options: TranscodeOptions,
    pub max_request_body: usize,
}

/// axum handler behind the route layer.
pub async fn handle(
    State(gateway): State<std::sync::Arc<Gateway>>,
    mut request: Request,
) -> Response {
    let Some(matched) = request.extensions_mut().remove::<RouteMatch>() else {
        let err = Error::Internal("the route layer did not run".into());
        return err.into_response(error::request_id(request.headers()), None);
    };
    let catalog = matched.catalog.clone();
    let request_id = request.headers().get("x-request-id").cloned();
    let kind = catalog.method(matched.route()).kind;
    let result = match kind {
        CallKind::Unary => gateway.call(matched, request).await,
        _ => streaming::call(&gateway, matched, request).await,
    };
    match result {
        Ok(response) => response,
        Err(err) => {
            let id = request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            err.into_response(id, Some(catalog.pool()))
        }
    }
}

impl Gateway {
    async fn call(&self, matched: RouteMatch, request: Request) -> Result<Response, Error> {
        let route = matched.route();
        let method = matched.catalog.method(route);
        let Some(upstream) = &method.upstream else {
            return Err(Error::Internal(
                format!("{} has no upstream", method.grpc_path).into(),
            ));
        };
        let (parts, body) = request.into_parts();
        let message = self.request_message(&matched, &parts, body).await?;
        let reply = upstream::unary(
            upstream,
            method.grpc_path.clone(),
            method.descriptor.output(),
            message,
            outgoing_metadata(&parts.headers),
        )
        .await?;
        self.reply_response(&reply, &route.binding)
    }

    /// The one request message of a unary or server-streaming call: the whole
    /// body (within the limit) as JSON, or raw for an `HttpBody`.
    pub(crate) async fn request_message(
        &self,
        matched: &RouteMatch,
        parts: &Parts,
        body: Body,
    ) -> Result<DynamicMessage, Error> {
        let route = matched.route();
        let input = matched.catalog.method(route).descriptor.input();
        let body = match route.binding.body {
            BodyPlan::None => Bytes::new(),
            _ => read_body(body, self.max_request_body).await?,
        };
        if route.binding.raw_request {
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            return transcode::raw_request_message(
                &input,
                &route.binding,
                &matched.captures,
                parts.uri.query(),
                content_type,
                body,
                &self.options,
            );
        }
        if !body.is_empty() {
            check_json_content_type(&parts.headers)?;
        }
        transcode::request_message(
            &input,
            &route.binding,
            &matched.captures,
            parts.uri.query(),
            &body,
            &self.options,
        )
    }

    /// The response for a single reply: JSON, or raw for an `HttpBody`.
    pub(crate) fn reply_response(
        &self,
        reply: &DynamicMessage,
        binding: &BindingPlan,
    ) -> Result<Response, Error> {
        if binding.raw_response {
            let (content_type, data) = transcode::raw_reply(reply, binding);
            let content_type = HeaderValue::from_str(&content_type)
                .map_err(|_| Error::Internal("upstream sent an invalid content type".into()))?;
            return Ok(([(header::CONTENT_TYPE, content_type)], data).into_response());
        }
        let json = transcode::response_json(reply, binding, &self.options)?;
        Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json,
        )
            .into_response())
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Error> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(Error::PayloadTooLarge { limit }),
        Err(err) => Err(Error::BodyRead(err.to_string().into())),
    }
}

/// JSON bodies only: `application/json` or `application/*+json`; a body
/// without a content type is taken as JSON.
pub(crate) fn check_json_content_type(headers: &HeaderMap) -> Result<(), Error> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text.split(';').next().unwrap_or_default().trim();
    let is_json = essence.eq_ignore_ascii_case("application/json")
        || essence.split_once('/').is_some_and(|(kind, sub)| {
            kind.eq_ignore_ascii_case("application") && sub.to_ascii_lowercase().ends_with("+json")
        });
    if is_json {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType(text.into()))
    }
}

pub(crate) fn outgoing_metadata(headers: &HeaderMap) -> MetadataMap {
    let mut forwarded = HeaderMap::with_capacity(FORWARDED.len());
    for name in FORWARDED {
        if let Some(value) = headers.get(name) {
            forwarded.insert(name, value.clone());
        }
    }
    MetadataMap::from_headers(forwarded)
}
