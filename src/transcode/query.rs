//! Query string → fields: dotted paths (proto or JSON names) into nested
//! messages, repeated fields by repetition, `+` as a space. A parameter that
//! names no settable field is refused, naming it, unless configured otherwise;
//! so is one that does not percent-decode exactly, or whose path is deeper
//! than the nesting limit. A `Timestamp` or `Duration` is set whole (its
//! string form) or by its fields (`ts.seconds`, `ts.nanos`), not both.
//! Messages name only what the client wrote, never a proto type.

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _, Value,
};

use super::{
    encode, scalar,
    wire_json::{duration_in_range, MAX_TIMESTAMP, MIN_TIMESTAMP},
    JsonPlans, TranscodeOptions,
};
use crate::{
    error::Error,
    http_rule::{BindingPlan, BodyPlan},
    nesting::{self, MAX_DEPTH},
    percent,
};

/// A `Timestamp` or `Duration` the query sets, and how.
struct TimeParameter {
    /// The field, as the path of fields to it.
    fields: Vec<FieldDescriptor>,
    /// The parameter naming it, as the client wrote it (`ts`).
    name: String,
    /// Set by its `seconds` and `nanos` rather than as one string.
    by_fields: bool,
}

/// Sets every parameter of `query` on `message`.
pub(super) fn apply(
    message: &mut DynamicMessage,
    plan: &BindingPlan,
    query: &str,
    options: &TranscodeOptions,
) -> Result<(), Error> {
    let input = message.descriptor();
    let mut times: Vec<TimeParameter> = Vec::new();
    for pair in percent::query_pairs(query) {
        let (key, value) = pair.map_err(|(key, reason)| {
            Error::invalid_field(nesting::shortened(&key), reason.to_string())
        })?;
        if skipped(plan, &key, options) {
            continue;
        }
        if key.split('.').nth(MAX_DEPTH).is_some() {
            let name = nesting::shortened(&key);
            return Err(Error::invalid_field(name, nesting::too_deep("the path")));
        }
        let fields = match settable_path(&input, plan, &key) {
            Ok(fields) => fields,
            Err(_) if options.ignore_unknown_query => continue,
            Err(reason) => return Err(Error::invalid_field(nesting::shortened(&key), reason)),
        };
        let Some((leaf, parents)) = fields.split_last() else {
            continue;
        };
        if let Some(time) = time_parameter(&key, &fields) {
            note_time(&mut times, time)?;
        }
        let parsed = scalar::parse(leaf, &value)
            .map_err(|reason| Error::invalid_field(nesting::shortened(&key), reason))?;
        let parent = parent_mut(message, parents)?;
        if leaf.is_list() {
            if let Value::List(items) = parent.get_field_mut(leaf) {
                items.push(parsed);
            }
        } else {
            parent.set_field(leaf, parsed);
        }
    }
    times
        .iter()
        .filter(|time| time.by_fields)
        .try_for_each(|time| check_time_fields(message, time))
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
    for pair in percent::query_pairs(query) {
        let (key, value) = pair.ok()?;
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
    let mut start = 0usize;
    for part in key.split('.') {
        // The parameter before this part, as the client wrote it.
        let written = &key[..start.saturating_sub(1)];
        start += part.len() + 1;
        if let Some(parent) = fields.last() {
            match parent.kind() {
                Kind::Message(next)
                    if !parent.is_list()
                        && !parent.is_map()
                        && (!scalar::has_string_form(&next) || is_time(&next)) =>
                {
                    current = next;
                }
                _ => {
                    return Err(format!(
                        "unknown query parameter: `{written}` has no fields"
                    ))
                }
            }
        }
        let field = current
            .get_field_by_name(part)
            .or_else(|| current.get_field_by_json_name(part))
            .ok_or_else(|| match written {
                "" => "unknown query parameter".to_owned(),
                _ => format!("unknown query parameter: `{written}` has no field `{part}`"),
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

fn is_time(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp" | "google.protobuf.Duration"
    )
}

/// The `Timestamp` or `Duration` that `fields` (resolved from `key`) sets,
/// whole or by one of its fields.
fn time_parameter(key: &str, fields: &[FieldDescriptor]) -> Option<TimeParameter> {
    let is_time_field = |field: &FieldDescriptor| {
        !field.is_list() && matches!(field.kind(), Kind::Message(m) if is_time(&m))
    };
    let (leaf, parents) = fields.split_last()?;
    if is_time_field(leaf) {
        return Some(TimeParameter {
            fields: fields.to_vec(),
            name: key.to_owned(),
            by_fields: false,
        });
    }
    let (name, _) = key.rsplit_once('.')?;
    parents
        .last()
        .filter(|parent| is_time_field(parent))
        .map(|_| TimeParameter {
            fields: parents.to_vec(),
            name: name.to_owned(),
            by_fields: true,
        })
}

/// Records how a time field is set; setting one both ways is refused.
fn note_time(times: &mut Vec<TimeParameter>, time: TimeParameter) -> Result<(), Error> {
    match times.iter().find(|seen| seen.fields == time.fields) {
        Some(seen) if seen.by_fields != time.by_fields => {
            let name = &time.name;
            Err(Error::invalid_field(
                name.as_str(),
                format!(
                    "set either `{name}` or its fields (`{name}.seconds`, `{name}.nanos`), not both"
                ),
            ))
        }
        Some(_) => Ok(()),
        None => {
            times.push(time);
            Ok(())
        }
    }
}

/// A time set by its fields must be one its string form could say.
fn check_time_fields(message: &mut DynamicMessage, time: &TimeParameter) -> Result<(), Error> {
    let time_message = parent_mut(message, &time.fields)?;
    let number = |name: &str| time_message.get_field_by_name(name).map(|v| v.into_owned());
    let seconds = number("seconds").and_then(|v| v.as_i64()).unwrap_or(0);
    let nanos = number("nanos").and_then(|v| v.as_i32()).unwrap_or(0);
    let (valid, reason) = match time_message.descriptor().full_name() {
        "google.protobuf.Timestamp" => (
            (MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&seconds)
                && (0..1_000_000_000).contains(&nanos),
            "`seconds` must be within the years 1 to 9999 and `nanos` within 0 to 999999999",
        ),
        _ => (
            duration_in_range(seconds, nanos) && seconds.signum() * i64::from(nanos.signum()) >= 0,
            "`seconds` must be within ±315576000000 and `nanos` within ±999999999, of the same sign",
        ),
    };
    if valid {
        Ok(())
    } else {
        Err(Error::invalid_field(time.name.as_str(), reason))
    }
}

/// The message holding the last field of a path, creating parents on the way.
pub(super) fn parent_mut<'m>(
    message: &'m mut DynamicMessage,
    parents: &[FieldDescriptor],
) -> Result<&'m mut DynamicMessage, Error> {
    parents.iter().try_fold(message, |current, field| {
        current
            .get_field_mut(field)
            .as_message_mut()
            .ok_or_else(|| {
                Error::Internal(format!("`{}` is not a message field", field.name()).into())
            })
    })
}
