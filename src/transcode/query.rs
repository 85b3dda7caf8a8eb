//! Query string → fields: dotted paths (proto or JSON names) into nested
//! messages, repeated fields by repetition, `+` as a space. A parameter that
//! names no settable field is refused, naming it, unless configured otherwise.

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _, Value,
};

use super::{request::parent_mut, scalar, TranscodeOptions};
use crate::{
    error::Error,
    http_rule::{BindingPlan, BodyPlan},
};

/// Sets every parameter of `query` on `message`.
pub(super) fn apply(
    message: &mut DynamicMessage,
    plan: &BindingPlan,
    query: &str,
    options: &TranscodeOptions,
) -> Result<(), Error> {
    let input = message.descriptor();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let partial_response = plan.fields_param && key == super::FIELDS_PARAM;
        if partial_response
            || options
                .ignored_query
                .iter()
                .any(|ignored| **ignored == *key)
        {
            continue;
        }
        let fields = match settable_path(&input, plan, &key) {
            Ok(fields) => fields,
            Err(_) if options.ignore_unknown_query => continue,
            Err(reason) => return Err(Error::invalid_field(key, reason)),
        };
        let Some((leaf, parents)) = fields.split_last() else {
            continue;
        };
        let parsed = scalar::parse(leaf, &value)
            .map_err(|reason| Error::invalid_field(key.as_ref(), reason))?;
        let parent = parent_mut(message, parents)?;
        if leaf.is_list() {
            if let Value::List(items) = parent.get_field_mut(leaf) {
                items.push(parsed);
            }
        } else {
            parent.set_field(leaf, parsed);
        }
    }
    Ok(())
}

/// Resolves `key` to a field path that the query may set, or says why not.
fn settable_path(
    input: &MessageDescriptor,
    plan: &BindingPlan,
    key: &str,
) -> Result<Vec<FieldDescriptor>, String> {
    if plan.body == BodyPlan::Whole {
        return Err("unknown query parameter: the request body carries the whole message".into());
    }
    let mut fields: Vec<FieldDescriptor> = Vec::with_capacity(2);
    let mut current = input.clone();
    for part in key.split('.') {
        if let Some(parent) = fields.last() {
            match parent.kind() {
                Kind::Message(next)
                    if !parent.is_list() && !parent.is_map() && !scalar::has_string_form(&next) =>
                {
                    current = next;
                }
                _ => {
                    return Err(format!(
                        "unknown query parameter: `{}` has no subfields",
                        parent.name()
                    ))
                }
            }
        }
        let field = current
            .get_field_by_name(part)
            .or_else(|| current.get_field_by_json_name(part))
            .ok_or_else(|| {
                format!(
                    "unknown query parameter: {} has no field `{part}`",
                    current.full_name()
                )
            })?;
        fields.push(field);
    }
    if let (BodyPlan::Field(body), Some(first)) = (&plan.body, fields.first()) {
        if body == first {
            return Err(format!("`{key}` is bound by the request body"));
        }
    }
    if plan.vars.iter().any(|var| var.overlaps(&fields)) {
        return Err(format!("`{key}` is bound by the URL path"));
    }
    let Some(leaf) = fields.last() else {
        return Err("empty query parameter name".into());
    };
    if leaf.is_map() {
        return Err(format!("`{key}` is a map and cannot be set from the query"));
    }
    if let Kind::Message(message) = leaf.kind() {
        if !scalar::has_string_form(&message) {
            return Err(format!(
                "`{key}` is a message; set its fields (`{key}.<field>`) instead"
            ));
        }
    }
    Ok(fields)
}
