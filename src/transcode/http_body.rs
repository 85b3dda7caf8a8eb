//! `google.api.HttpBody`: the HTTP body passes through raw, as the message's
//! `data`, with its `content_type`. This is how uploads and downloads pass.
//! HttpBody's shape is fixed by google/api/httpbody.proto, so its two fields
//! are reached by name.

use bytes::Bytes;
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};

use super::{request_message, FieldRules, JsonPlans, MethodRules, RequestParts, TranscodeOptions};
use crate::{
    error::Error,
    http_rule::{BindingPlan, BodyPlan},
};

const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The request message of a binding whose body is an HttpBody (see
/// [`BindingPlan::raw_request`]): path and query as usual, the body raw.
pub fn raw_request_message(
    plans: &JsonPlans,
    input: &MessageDescriptor,
    plan: &BindingPlan,
    rules: (&FieldRules, &MethodRules),
    parts: RequestParts<'_>,
    (content_type, body): (&str, Bytes),
    options: &TranscodeOptions,
) -> Result<DynamicMessage, Error> {
    let parts = RequestParts { body: b"", ..parts };
    let mut message = request_message(plans, input, plan, rules, parts, options)?;
    let http_body = match &plan.body {
        BodyPlan::Field(field) => message.get_field_mut(field).as_message_mut(),
        BodyPlan::Whole => Some(&mut message),
        BodyPlan::None => None,
    }
    .ok_or_else(|| Error::Internal("the body binding is not an HttpBody".into()))?;
    http_body
        .try_set_field_by_name("content_type", Value::String(content_type.to_owned()))
        .and_then(|()| http_body.try_set_field_by_name("data", Value::Bytes(body)))
        .map_err(|err| Error::Internal(format!("cannot fill HttpBody: {err}").into()))?;
    Ok(message)
}

/// The content type and bytes of a reply whose body is an HttpBody (see
/// [`BindingPlan::raw_response`]).
pub fn raw_reply(message: &DynamicMessage, plan: &BindingPlan) -> (String, Bytes) {
    let selected;
    let http_body = match &plan.response_body {
        Some(field) => {
            selected = message.get_field(field);
            selected.as_message().unwrap_or(message)
        }
        None => message,
    };
    let content_type = http_body
        .get_field_by_name("content_type")
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned());
    let data = http_body
        .get_field_by_name("data")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    (content_type, data)
}
