//! The payload helpers both kinds of call share: the request message from
//! the body, path and query; the reply as a response; the client's field
//! selection; the body's checks (content type, size).

use std::{borrow::Cow, sync::Arc};

use axum::{
    body::{Body, Bytes},
    response::{IntoResponse, Response},
};
use bytes::BytesMut;
use http::{header, request::Parts, HeaderMap, HeaderValue};
use http_body::Body as _;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use prost_reflect::DynamicMessage;

use super::Gateway;
use crate::{
    error::Error,
    http_rule::BodyPlan,
    percent,
    registry::{MethodPlan, RouteMatch},
    transcode::{self, ReplyFilter, RequestParts},
    upstream::{Payload, Upstream},
};

/// Room in a reply's header map for the headers the later steps add (the
/// ids, rate-limit and deprecation headers) and, since hyper empties a
/// response's map and reuses it for the connection's next request, for
/// that request's headers plus the ids the first step adds: the map then
/// never grows (callgrind: a growth cost ~0.7k instructions per request).
const REPLY_HEADERS: usize = 12;

/// The upstream of a method; every method of a served catalog has one,
/// unless it was built only to be checked.
pub(super) fn upstream_of(method: &MethodPlan) -> Result<&Arc<Upstream>, Error> {
    method
        .upstream
        .as_ref()
        .ok_or_else(|| Error::Internal(format!("{} has no upstream", method.grpc_path).into()))
}

impl Gateway {
    /// The one request of a unary or server-streaming call, from the whole
    /// body (within the limit): its wire bytes written straight from the
    /// JSON when the catalog's plans cover it, else the message built the
    /// general way (or raw, for an `HttpBody`).
    pub(super) async fn request_payload(
        &self,
        matched: &RouteMatch,
        parts: &Parts,
        body: Body,
    ) -> Result<Payload, Error> {
        let body = self.request_body(matched, parts, body).await?;
        if matched.route().binding.raw_request {
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            return self
                .raw_message(matched, parts.uri.query(), content_type, body)
                .map(Payload::Message);
        }
        self.json_payload(matched, parts.uri.query(), &body)
    }

    /// The body a route binds (within the limit), checked to be JSON unless
    /// the route takes it raw.
    async fn request_body(
        &self,
        matched: &RouteMatch,
        parts: &Parts,
        body: Body,
    ) -> Result<Bytes, Error> {
        let binding = &matched.route().binding;
        let body = match binding.body {
            BodyPlan::None => Bytes::new(),
            _ => read_body(body, self.max_request_body).await?,
        };
        if !binding.raw_request && !body.is_empty() {
            check_json_content_type(&parts.headers)?;
        }
        Ok(body)
    }

    /// The request of a route that takes its body raw (`google.api.HttpBody`).
    pub(super) fn raw_message(
        &self,
        matched: &RouteMatch,
        query: Option<&str>,
        content_type: &str,
        body: Bytes,
    ) -> Result<DynamicMessage, Error> {
        transcode::raw_request_message(
            matched.catalog.json_plans(),
            &matched.method().descriptor.input(),
            &matched.route().binding,
            matched.request_rules(),
            RequestParts {
                captures: &matched.captures,
                query,
                body: b"",
            },
            (content_type, body),
            &self.options,
        )
    }

    /// A request from a JSON document (one element of a request stream, or
    /// a whole body) plus the route's path and query bindings: its wire bytes
    /// written straight from the JSON when the catalog's plans cover it, else
    /// the message built the general way (which also words every error).
    pub(super) fn json_payload(
        &self,
        matched: &RouteMatch,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Payload, Error> {
        let method = matched.method();
        let binding = &matched.route().binding;
        let parts = RequestParts {
            captures: &matched.captures,
            query,
            body,
        };
        let plans = matched.catalog.json_plans();
        if let Some(wire) = transcode::request_wire(
            plans,
            method.request_plan,
            binding,
            &method.rules,
            parts,
            &self.options,
        ) {
            return Ok(Payload::Wire(wire));
        }
        transcode::request_message(
            plans,
            &method.descriptor.input(),
            binding,
            matched.request_rules(),
            parts,
            &self.options,
        )
        .map(Payload::Message)
    }

    /// The response for a single encoded reply: filtered JSON, or raw for an `HttpBody`.
    pub(super) fn reply_response(
        &self,
        reply: &[u8],
        matched: &RouteMatch,
        filter: &ReplyFilter,
    ) -> Result<Response, Error> {
        let binding = &matched.route().binding;
        if binding.raw_response {
            let reply = transcode::decode_reply(&matched.method().descriptor, reply)?;
            let (content_type, data) = transcode::raw_reply(&reply, binding);
            let content_type = HeaderValue::from_str(&content_type)
                .map_err(|_| Error::Internal("upstream sent an invalid content type".into()))?;
            return Ok(([(header::CONTENT_TYPE, content_type)], data).into_response());
        }
        let json = filter.print(reply, matched.reply_shape(), &self.options)?;
        let mut response = Response::new(Body::from(json));
        let headers = response.headers_mut();
        *headers = HeaderMap::with_capacity(REPLY_HEADERS);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }
}

/// The client's partial-response selection, resolved against the route's
/// replies: the `fields` query parameter (when the route reserves it), else
/// the `x-fields` header.
pub(super) fn reply_filter(matched: &RouteMatch, parts: &Parts) -> Result<ReplyFilter, Error> {
    // Other parameters that do not decode are refused with the request.
    let from_query = parts
        .uri
        .query()
        .filter(|_| matched.route().binding.fields_param)
        .and_then(|query| {
            percent::query_pairs(query).find_map(|pair| match pair {
                Ok((key, value)) if key == transcode::FIELDS_PARAM => Some(Ok(value)),
                Err((key, reason)) if key == transcode::FIELDS_PARAM => {
                    Some(Err(Error::invalid_field(key, reason.to_string())))
                }
                _ => None,
            })
        })
        .transpose()?;
    let fields = match from_query {
        Some(fields) => Some(fields),
        None => match parts.headers.get("x-fields").map(HeaderValue::to_str) {
            Some(Ok(fields)) => Some(Cow::Borrowed(fields)),
            Some(Err(_)) => {
                return Err(Error::invalid_field("x-fields", "not visible ASCII"));
            }
            None => None,
        },
    };
    ReplyFilter::new(
        matched.reply_shape(),
        &matched.method().descriptor.output(),
        fields.as_deref(),
    )
}

/// The whole body, within `limit`. A body that comes in one chunk (most
/// do) is that chunk; one in several is gathered into one buffer of its
/// announced size. Trailers are dropped. (callgrind: of the ~1.3k
/// instructions a one-chunk body cost, ~0.7k were `collect`'s list of
/// chunks and its `to_bytes`.)
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Error> {
    let mut body = Limited::new(body, limit);
    let (mut first, mut gathered) = (Bytes::new(), BytesMut::new());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            if err.is::<LengthLimitError>() {
                Error::PayloadTooLarge { limit }
            } else {
                Error::BodyRead(err.to_string().into())
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if gathered.is_empty() && first.is_empty() {
            first = data;
            continue;
        }
        if gathered.is_empty() {
            let announced = usize::try_from(body.size_hint().lower()).unwrap_or(0);
            gathered.reserve((first.len() + announced).min(limit));
            gathered.extend_from_slice(&first);
        }
        gathered.extend_from_slice(&data);
    }
    Ok(if gathered.is_empty() {
        first
    } else {
        gathered.freeze()
    })
}

/// JSON bodies only: `application/json` or `application/*+json`; a body
/// without a content type is taken as JSON.
pub(super) fn check_json_content_type(headers: &HeaderMap) -> Result<(), Error> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    // What nearly every client sends, without parsing it.
    if value.as_bytes() == b"application/json" {
        return Ok(());
    }
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
