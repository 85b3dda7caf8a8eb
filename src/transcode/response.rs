//! Reply message → proto3 JSON bytes, selecting `response_body` when the
//! binding names one.

use prost_reflect::{DynamicMessage, ReflectMessage as _, SerializeOptions, Value};

use super::TranscodeOptions;
use crate::{error::Error, http_rule::BindingPlan};

/// Serializes the reply (or its `response_body` field) with the configured options.
pub fn response_json(
    message: &DynamicMessage,
    plan: &BindingPlan,
    options: &TranscodeOptions,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::new(&mut out);
    let result = match &plan.response_body {
        None => message.serialize_with_options(&mut serializer, &options.serialize),
        Some(field) => match message.get_field(field).as_ref() {
            Value::Message(inner) => {
                inner.serialize_with_options(&mut serializer, &options.serialize)
            }
            _ => {
                let value = field_json(message, field, &options.serialize)?;
                return serde_json::to_vec(&value)
                    .map_err(|err| Error::Internal(err.to_string().into()));
            }
        },
    };
    result.map_err(|err| Error::Internal(format!("cannot serialize reply: {err}").into()))?;
    Ok(out)
}

/// The JSON of a non-message field: serialized through a parent holding only
/// that field, with defaults printed so that the key is always there.
fn field_json(
    message: &DynamicMessage,
    field: &prost_reflect::FieldDescriptor,
    options: &SerializeOptions,
) -> Result<serde_json::Value, Error> {
    let mut only = DynamicMessage::new(message.descriptor());
    only.set_field(field, message.get_field(field).into_owned());
    let options = options.clone().skip_default_fields(false);
    let json = only
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|err| Error::Internal(format!("cannot serialize reply: {err}").into()))?;
    // One of the two names, depending on `use_proto_field_name`.
    let value = json
        .get(field.json_name())
        .or_else(|| json.get(field.name()));
    Ok(value.cloned().unwrap_or(serde_json::Value::Null))
}
