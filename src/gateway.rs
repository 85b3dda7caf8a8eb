//! The innermost service: the matched route → request message → upstream
//! call → JSON reply. Errors become `google.rpc.Status` responses here, where
//! the catalog's pool can resolve the details an upstream sent.

use std::{borrow::Cow, sync::Arc, time::Instant};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use http::{header, HeaderMap, HeaderValue};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

use crate::{
    error::{self, Error},
    http_rule::BodyPlan,
    observe::RequestContext,
    policy::{UpstreamHeaders, UpstreamMetadata},
    registry::{CallKind, RouteMatch},
    transcode::{self, ReplyFilter, RequestParts, TranscodeOptions},
    upstream,
};

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
    match gateway.call(matched, request).await {
        Ok(response) => response,
        Err(err) => {
            let id = request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            err.into_response(id, Some(&catalog))
        }
    }
}

impl Gateway {
    async fn call(&self, matched: RouteMatch, request: Request) -> Result<Response, Error> {
        let route = matched.route();
        let method = matched.catalog.method(route);
        if method.kind != CallKind::Unary {
            return Err(Error::Unimplemented(
                "streaming methods are not served yet".into(),
            ));
        }
        let Some(upstream) = &method.upstream else {
            return Err(Error::Internal(
                format!("{} has no upstream", method.grpc_path).into(),
            ));
        };
        let (mut parts, body) = request.into_parts();
        // Decided once by the header policy layer (ids, identity, allow-listed headers).
        let metadata = parts
            .extensions
            .remove::<UpstreamMetadata>()
            .unwrap_or_default()
            .0;
        let body = match route.binding.body {
            BodyPlan::None => Bytes::new(),
            _ => {
                let body = read_body(body, self.max_request_body).await?;
                if !body.is_empty() {
                    check_json_content_type(&parts.headers)?;
                }
                body
            }
        };
        let catalog = &matched.catalog;
        let fields = partial_response_fields(&parts, route.binding.fields_param);
        let filter = ReplyFilter::new(
            catalog.field_rules(),
            &method.rules,
            method.omit.as_ref(),
            &method.descriptor.output(),
            &route.binding,
            fields.as_deref(),
        )?;
        let request_parts = RequestParts {
            captures: &matched.captures,
            query: parts.uri.query(),
            body: &body,
        };
        let message = transcode::request_message(
            &method.descriptor.input(),
            &route.binding,
            (catalog.field_rules(), &method.rules),
            request_parts,
            &self.options,
        )?;
        let started = Instant::now();
        let reply = upstream::unary(
            upstream,
            method.grpc_path.clone(),
            method.descriptor.output(),
            message,
            metadata,
        )
        .await;
        if let Some(context) = parts.extensions.get::<Arc<RequestContext>>() {
            context.set_upstream_latency(started.elapsed());
        }
        let (reply_metadata, mut reply, _) = reply?.into_parts();
        let json = filter.encode(&mut reply, &route.binding, &self.options)?;
        let mut response = (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json,
        )
            .into_response();
        response
            .extensions_mut()
            .insert(UpstreamHeaders(reply_metadata.into_headers()));
        Ok(response)
    }
}

/// The client's partial-response selection: the `fields` query parameter
/// (when the route reserves it), else the `x-fields` header.
fn partial_response_fields(parts: &http::request::Parts, from_query: bool) -> Option<Cow<'_, str>> {
    let query = parts.uri.query().filter(|_| from_query).and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == transcode::FIELDS_PARAM)
            .map(|(_, value)| value)
    });
    query.or_else(|| {
        parts
            .headers
            .get("x-fields")
            .and_then(|v| v.to_str().ok())
            .map(Cow::Borrowed)
    })
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
fn check_json_content_type(headers: &HeaderMap) -> Result<(), Error> {
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
