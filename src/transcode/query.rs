//! Query string → fields: dotted paths (proto or JSON names) into nested
//! messages, repeated fields by repetition, `+` as a space. A parameter that
//! names no settable field is refused, naming it, unless configured otherwise.

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _, Value,
};

use super::{request::parent_mut, scalar, JsonPlans, TranscodeOptions};
use crate::{
    error::Error,
    http_rule::{BindingPlan, BodyPlan},
    upstream::encode,
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
        if skipped(plan, &key, options) {
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

/// Appends every parameter of `query` as wire bytes, its path resolved by
/// the catalog's plans; `None` for any parameter that [`apply`] would refuse
/// or that the plans leave to it.
pub(super) fn write(
    plans: &JsonPlans,
    input: usize,
    plan: &BindingPlan,
    query: &str,
    options: &TranscodeOptions,
    out: &mut Vec<u8>,
) -> Option<()> {
    let mut path = Vec::with_capacity(4);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if skipped(plan, &key, options) {
            continue;
        }
        if plan.body == BodyPlan::Whole {
            return None;
        }
        path.clear();
        plans.query_path(input, &key, &mut path).ok()?;
        let bound_by_body = matches!(
            (&plan.body, path.first()),
            (BodyPlan::Field(body), Some(first)) if body == *first
        );
        let bound_by_path = plan
            .vars
            .iter()
            .any(|var| var.fields().iter().zip(&path).all(|(a, b)| a == *b));
        if bound_by_body || bound_by_path {
            return None;
        }
        let parsed = scalar::parse(path.last()?, &value).ok()?;
        encode::path_value(&path, &parsed, out);
    }
    Some(())
}

/// The partial-response parameter and configured ignored parameters.
fn skipped(plan: &BindingPlan, key: &str, options: &TranscodeOptions) -> bool {
    (plan.fields_param && key == super::FIELDS_PARAM)
        || options
            .ignored_query
            .iter()
            .any(|ignored| **ignored == *key)
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
