//! PATCH without an `update_mask`: the mask is filled from the JSON keys the
//! client sent, as grpc-gateway does. Nested objects give dotted paths; maps,
//! `Struct`s, repeated fields and well-known types stop at the field; internal
//! and output-only fields are never included.

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _, Value,
};
use serde_json::{Map, Value as Json};

use super::field_rules::FieldRules;
use crate::error::Error;

/// Sets `mask_field` (a `google.protobuf.FieldMask`) on `message` from the
/// keys of `body`, a JSON object for a message of type `body_type`.
pub(super) fn fill(
    message: &mut DynamicMessage,
    mask_field: &FieldDescriptor,
    body_type: &MessageDescriptor,
    body: &[u8],
    rules: &FieldRules,
) -> Result<(), Error> {
    let Kind::Message(mask_type) = mask_field.kind() else {
        return Ok(());
    };
    let Ok(Json::Object(object)) = serde_json::from_slice::<Json>(body) else {
        return Ok(());
    };
    let mut paths = Vec::new();
    collect(&object, body_type, "", rules, &mut paths);
    let mut mask = DynamicMessage::new(mask_type);
    let Some(paths_field) = mask.descriptor().get_field_by_name("paths") else {
        return Err(Error::Internal(
            "google.protobuf.FieldMask has no paths field".into(),
        ));
    };
    mask.set_field(
        &paths_field,
        Value::List(paths.into_iter().map(Value::String).collect()),
    );
    message.set_field(mask_field, Value::Message(mask));
    Ok(())
}

fn collect(
    object: &Map<String, Json>,
    message: &MessageDescriptor,
    prefix: &str,
    rules: &FieldRules,
    out: &mut Vec<String>,
) {
    for (key, value) in object {
        let Some(field) = message
            .get_field_by_json_name(key)
            .or_else(|| message.get_field_by_name(key))
        else {
            continue;
        };
        if rules.is_internal(message, &field) || rules.is_output_only(message, &field) {
            continue;
        }
        let path = if prefix.is_empty() {
            field.name().to_owned()
        } else {
            format!("{prefix}.{}", field.name())
        };
        match (field.kind(), value) {
            (Kind::Message(inner), Json::Object(nested))
                if !field.is_list()
                    && !field.is_map()
                    && !inner.full_name().starts_with("google.protobuf.") =>
            {
                collect(nested, &inner, &path, rules, out);
            }
            _ => out.push(path),
        }
    }
}
