//! The one request-path error.
//!
//! Every failure on the data plane becomes an [`Error`]; each variant knows its
//! gRPC code ([`Error::code`]), the HTTP status follows from the code through
//! one table ([`http_status`]), and the body is always a `google.rpc.Status` in
//! proto3 JSON carrying the request id in a `google.rpc.RequestInfo` detail.
//! A 5xx answer never carries the cause (addresses, upstream messages): that
//! stays in the [`Error`] stored in the response extensions for the log.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{json, Map, Value as Json};
use tonic::Code;

use crate::pb::google::rpc;

const BAD_REQUEST_TYPE: &str = "type.googleapis.com/google.rpc.BadRequest";
const REQUEST_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RequestInfo";
const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The request-path error. Messages are lower-case and describe this step only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no route for {method} {path}")]
    RouteNotFound { method: Method, path: Box<str> },
    #[error("method {method} is not allowed for this path")]
    MethodNotAllowed { method: Method, allow: HeaderValue },
    #[error("invalid JSON body: {0}")]
    InvalidJson(Box<str>),
    /// A field or parameter that does not parse or cannot be set; becomes a
    /// `google.rpc.BadRequest` field violation.
    #[error("invalid `{field}`: {reason}")]
    InvalidField { field: Box<str>, reason: Box<str> },
    #[error("cannot read the request body: {0}")]
    BodyRead(Box<str>),
    #[error("unsupported content type `{0}`, expected application/json")]
    UnsupportedMediaType(Box<str>),
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The metadata a request would send upstream (forwarded headers, trace
    /// context, claims) is over `limits.max_forwarded_metadata_bytes`.
    #[error("the request's headers sent upstream take {size} bytes, over the limit of {limit} (the largest is `{largest}`)")]
    MetadataTooLarge {
        size: usize,
        limit: usize,
        largest: HeaderName,
    },
    /// An HTTP/2 request's header list is over the limit the gateway
    /// answers for itself (h2 answers, without a body, only past its cap).
    #[error("request header fields too large: {size} bytes, over the limit of {limit} (names, values and 32 bytes a field, as HTTP/2 counts them)")]
    HeadersTooLarge { size: usize, limit: usize },
    #[error("upstream `{upstream}` is unavailable: {cause}")]
    UpstreamUnavailable { upstream: Arc<str>, cause: Box<str> },
    /// A reply that gRPC or the method's type does not allow (not a valid
    /// message, compressed unasked, without a status): the upstream's fault.
    #[error("upstream sent an invalid reply: {0}")]
    InvalidReply(Box<str>),
    /// An upstream reply message over `limits.max_response_message_bytes`.
    #[error("upstream reply message exceeds the limit of {limit} bytes")]
    ResponseTooLarge { limit: usize },
    #[error("upstream `{upstream}` did not answer within {timeout:?}")]
    DeadlineExceeded {
        upstream: Arc<str>,
        timeout: Duration,
    },
    /// The upstream answered with a non-OK status: code, message and details pass through.
    #[error("upstream error {:?}: {}", .0.code(), .0.message())]
    Upstream(tonic::Status),
    #[error("{0}")]
    Unimplemented(Box<str>),
    #[error("internal error: {0}")]
    Internal(Box<str>),
    /// No valid token where one is needed; answered with `challenge` as
    /// `WWW-Authenticate`. `reason` is a bounded label for metrics.
    #[error("{message}")]
    Unauthenticated {
        message: Box<str>,
        reason: &'static str,
        challenge: HeaderValue,
    },
    #[error("permission denied: {0}")]
    PermissionDenied(Box<str>),
    /// Over a quota; answered with `headers` (`Retry-After`, `RateLimit-*`)
    /// and a `google.rpc.RetryInfo` of `retry_after`.
    #[error("rate limit exceeded: {limit} requests per {window_secs}s")]
    RateLimited {
        limit: u32,
        window_secs: u64,
        retry_after: Duration,
        headers: Box<HeaderMap>,
    },
    /// A descriptor change the registry refused: 409 when it collides with
    /// another set, else 400; every problem is a field violation.
    #[error("refused: {}", .problems.iter().map(|p| &*p.description).collect::<Vec<_>>().join("; "))]
    Rejected {
        conflict: bool,
        problems: Box<[Violation]>,
    },
    /// An admin resource (descriptor set, upstream) that does not exist.
    #[error("{0}")]
    NotFound(Box<str>),
    #[error("{0}")]
    FailedPrecondition(Box<str>),
    /// The admin API's bearer token is missing or wrong.
    #[error("missing or invalid admin token")]
    AdminUnauthenticated,
    /// An admin change that lost a race with another instance's change (the
    /// shared registry moved on): 409, retry it.
    #[error("{0}")]
    Aborted(Box<str>),
    /// An admin change that cannot be stored now (the shared registry's Redis
    /// is away): 503, with the message (it names no address).
    #[error("{0}")]
    Unavailable(Box<str>),
}

/// One problem of a refused change: what it concerns (a method or a set,
/// else empty) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: Box<str>,
    pub description: Box<str>,
}

/// Removes the internal fields of a message decoded from an upstream's
/// error details, before a client sees it (the catalog's field rules).
pub trait Redact {
    fn redact(&self, message: &mut DynamicMessage);
}

/// The types an upstream's `Any` details may name, and how to redact them.
pub type DetailTypes<'a> = (&'a DescriptorPool, &'a dyn Redact);

/// Whose fault a failure was, for logs and metrics (pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Gateway,
    Upstream,
}

// === impl Error ===

impl Error {
    /// GET and HEAD only: a 405 naming them for any other method, for
    /// what is only ever read (documents, pages).
    pub(crate) fn readable(method: &Method) -> Result<(), Self> {
        if method == Method::GET || method == Method::HEAD {
            Ok(())
        } else {
            Err(Self::MethodNotAllowed {
                method: method.clone(),
                allow: HeaderValue::from_static("GET, HEAD"),
            })
        }
    }

    pub(crate) fn invalid_field(field: impl Into<Box<str>>, reason: impl Into<Box<str>>) -> Self {
        Self::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The single table from failure to gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Self::RouteNotFound { .. } => Code::NotFound,
            Self::MethodNotAllowed { .. } | Self::Unimplemented(_) => Code::Unimplemented,
            Self::InvalidJson(_)
            | Self::InvalidField { .. }
            | Self::BodyRead(_)
            | Self::UnsupportedMediaType(_)
            | Self::MetadataTooLarge { .. }
            | Self::HeadersTooLarge { .. } => Code::InvalidArgument,
            Self::PayloadTooLarge { .. } | Self::ResponseTooLarge { .. } => Code::ResourceExhausted,
            Self::UpstreamUnavailable { .. } => Code::Unavailable,
            Self::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Self::Upstream(status) => status.code(),
            Self::Internal(_) | Self::InvalidReply(_) => Code::Internal,
            Self::Unauthenticated { .. } => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::RateLimited { .. } => Code::ResourceExhausted,
            Self::Rejected { conflict: true, .. } => Code::AlreadyExists,
            Self::Rejected { .. } => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::AdminUnauthenticated => Code::Unauthenticated,
            Self::Aborted(_) => Code::Aborted,
            Self::Unavailable(_) => Code::Unavailable,
        }
    }

    /// The HTTP status: the canonical mapping of [`Error::code`], except where
    /// HTTP has a more precise status for a gateway-made error. An unsupported
    /// content type is a 400, not a 415: no gRPC code maps to 415, and its
    /// code, INVALID_ARGUMENT, maps to 400.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MetadataTooLarge { .. } | Self::HeadersTooLarge { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::ResponseTooLarge { .. } | Self::InvalidReply(_) => StatusCode::BAD_GATEWAY,
            _ => http_status(self.code()),
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Self::RouteNotFound { .. }
            | Self::MethodNotAllowed { .. }
            | Self::InvalidJson(_)
            | Self::InvalidField { .. }
            | Self::BodyRead(_)
            | Self::UnsupportedMediaType(_)
            | Self::PayloadTooLarge { .. }
            | Self::MetadataTooLarge { .. }
            | Self::HeadersTooLarge { .. }
            | Self::Unauthenticated { .. }
            | Self::PermissionDenied(_)
            | Self::RateLimited { .. }
            | Self::Rejected { .. }
            | Self::NotFound(_)
            | Self::FailedPrecondition(_)
            | Self::AdminUnauthenticated
            | Self::Aborted(_) => Fault::Client,
            Self::UpstreamUnavailable { .. }
            | Self::DeadlineExceeded { .. }
            | Self::ResponseTooLarge { .. }
            | Self::InvalidReply(_)
            | Self::Upstream(_) => Fault::Upstream,
            Self::Unimplemented(_) | Self::Internal(_) | Self::Unavailable(_) => Fault::Gateway,
        }
    }

    /// Renders the `google.rpc.Status` response. `types` resolves the `Any`
    /// details an upstream sent; the error itself rides in the extensions.
    pub fn into_response(self, request_id: &str, types: Option<DetailTypes<'_>>) -> Response {
        let status = self.http_status();
        let body = self.status_json(request_id, types);
        let mut response = json_response(status, &body);
        match &self {
            Self::MethodNotAllowed { allow, .. } => {
                response.headers_mut().insert(header::ALLOW, allow.clone());
            }
            Self::Unauthenticated { challenge, .. } => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, challenge.clone());
            }
            Self::RateLimited { headers, .. } => {
                for (name, value) in headers.iter() {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            Self::AdminUnauthenticated => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="protogate-admin""#),
                );
            }
            _ => {}
        }
        response.extensions_mut().insert(Arc::new(self));
        response
    }

    /// The `google.rpc.Status` JSON body alone: what [`Error::into_response`]
    /// sends, and what a stream ends with once its HTTP status is sent.
    pub fn status_json(&self, request_id: &str, types: Option<DetailTypes<'_>>) -> Json {
        let status = self.http_status();
        let code = self.code();
        let mut details = Vec::new();
        let shows_cause = matches!(
            self,
            Self::Unimplemented(_) | Self::ResponseTooLarge { .. } | Self::Unavailable(_)
        );
        let message = if status.is_server_error() && !shows_cause {
            // Never leak the cause of a 5xx; it is logged with the request id.
            match self {
                Self::InvalidReply(_) => "upstream sent an invalid reply",
                _ => generic_message(code),
            }
            .to_owned()
        } else {
            match &self {
                Self::Upstream(upstream) => {
                    details = upstream_details(upstream.details(), types);
                    upstream.message().to_owned()
                }
                Self::InvalidField { field, reason } => {
                    details.push(json!({
                        "@type": BAD_REQUEST_TYPE,
                        "fieldViolations": [{ "field": field, "description": reason }],
                    }));
                    self.to_string()
                }
                Self::Rejected { problems, .. } => {
                    let violations: Vec<Json> = problems
                        .iter()
                        .map(|p| json!({ "field": p.field, "description": p.description }))
                        .collect();
                    details.push(json!({
                        "@type": BAD_REQUEST_TYPE,
                        "fieldViolations": violations,
                    }));
                    self.to_string()
                }
                Self::RateLimited { retry_after, .. } => {
                    details.push(json!({
                        "@type": RETRY_INFO_TYPE,
                        "retryDelay": proto_json_duration(*retry_after),
                    }));
                    self.to_string()
                }
                _ => self.to_string(),
            }
        };
        status_json(code, &message, details, request_id)
    }
}

/// The canonical gRPC → HTTP status mapping (google.rpc.Code's documentation).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
    }
}

/// The reverse mapping, for responses that only know a status.
pub fn grpc_code(status: StatusCode) -> Code {
    match status.as_u16() {
        200..=299 => Code::Ok,
        400 | 411 | 414 | 431 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        405 | 501 => Code::Unimplemented,
        408 | 504 => Code::DeadlineExceeded,
        409 => Code::Aborted,
        413 | 429 => Code::ResourceExhausted,
        415 => Code::InvalidArgument,
        499 => Code::Cancelled,
        503 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// A `google.protobuf.Duration` in proto3 JSON: `"20s"`, `"0.250s"`.
fn proto_json_duration(duration: Duration) -> String {
    match duration.subsec_millis() {
        0 => format!("{}s", duration.as_secs()),
        millis => format!("{}.{millis:03}s", duration.as_secs()),
    }
}

fn generic_message(code: Code) -> &'static str {
    match code {
        Code::Unavailable => "upstream unavailable",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::Unimplemented => "not implemented",
        _ => "internal error",
    }
}

/// The `google.rpc.Status` body for a response that only knows its status
/// (a timeout, a panic, a tower layer's, hyper's own): the code by the
/// reverse mapping, the status's reason as the message.
pub(crate) fn bare_status_json(status: StatusCode, request_id: &str) -> Json {
    let message = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    status_json(grpc_code(status), &message, Vec::new(), request_id)
}

/// [`bare_status_json`] as a response.
pub(crate) fn bare_status_response(status: StatusCode, request_id: &str) -> Response {
    json_response(status, &bare_status_json(status, request_id))
}

fn status_json(code: Code, message: &str, mut details: Vec<Json>, request_id: &str) -> Json {
    details.push(json!({ "@type": REQUEST_INFO_TYPE, "requestId": request_id }));
    json!({ "code": code as i32, "message": message, "details": details })
}

fn json_response(status: StatusCode, body: &Json) -> Response {
    let mut response = (status, Body::from(body.to_string())).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Decodes `grpc-status-details-bin` (a `google.rpc.Status`) into JSON details.
/// Internal fields are removed; types the pool does not know are passed as
/// `{"@type", "value": base64}`, and details of a type it knows that do not
/// decode (malformed, or nested deeper than protobuf's limit) are left out:
/// their internal fields could not be removed.
fn upstream_details(bytes: &[u8], types: Option<DetailTypes<'_>>) -> Vec<Json> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let Ok(status) = rpc::Status::decode(bytes) else {
        tracing::debug!("undecodable grpc-status-details-bin");
        return Vec::new();
    };
    status
        .details
        .iter()
        .filter_map(|any| any_to_json(any, types))
        .collect()
}

fn any_to_json(any: &prost_types::Any, types: Option<DetailTypes<'_>>) -> Option<Json> {
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let known = types.and_then(|(pool, redact)| {
        let desc = pool.get_message_by_name(type_name)?;
        Some((redact, desc))
    });
    let mut object = match known {
        Some((redact, desc)) => {
            let mut message = DynamicMessage::decode(desc, any.value.as_slice()).ok()?;
            redact.redact(&mut message);
            match serde_json::to_value(&message).ok()? {
                Json::Object(object) => object,
                // Well-known types with a non-object JSON form go under "value", as in Any's JSON.
                other => Map::from_iter([("value".to_owned(), other)]),
            }
        }
        None => Map::from_iter([(
            "value".to_owned(),
            Json::String(base64::engine::general_purpose::STANDARD.encode(&any.value)),
        )]),
    };
    object.insert("@type".to_owned(), Json::String(any.type_url.clone()));
    Some(Json::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_mapping_covers_every_code() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, status) in table {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn unknown_detail_types_pass_as_base64() {
        let any = prost_types::Any {
            type_url: "type.googleapis.com/x.Unknown".into(),
            value: vec![1, 2],
        };
        assert_eq!(
            any_to_json(&any, None),
            Some(json!({"@type": "type.googleapis.com/x.Unknown", "value": "AQI="}))
        );
    }
}
