//! Reply message → proto3 JSON bytes, selecting `response_body` when the
//! binding names one.

use prost_reflect::{
    DynamicMessage, FieldDescriptor, MessageDescriptor, ReflectMessage as _, SerializeOptions,
    Value,
};

use super::{
    field_mask::{client_fields, MaskTree},
    field_rules::{child_type, for_each_json, for_each_message, FieldRules, MethodRules},
    TranscodeOptions,
};
use crate::{error::Error, http_rule::BindingPlan};

/// What a route's replies are filtered by, resolved per method when the
/// catalog was built: internal fields (proto marks) and configured omissions.
#[derive(Debug, Clone, Copy)]
pub struct ReplyShape<'a> {
    pub rules: &'a FieldRules,
    pub method: &'a MethodRules,
    pub omit: Option<&'a MaskTree>,
    pub plan: &'a BindingPlan,
}

/// The client's `fields` selection for one request, applied after the
/// route's [`ReplyShape`] to every reply (one, or each message of a stream).
#[derive(Debug, Default)]
pub struct ReplyFilter {
    keep: Option<MaskTree>,
}

impl ReplyFilter {
    /// `fields` is relative to what the client receives (the `response_body`
    /// field when the binding has one); internal, omitted and unknown paths are
    /// all refused alike.
    pub fn new(
        shape: ReplyShape<'_>,
        output: &MessageDescriptor,
        fields: Option<&str>,
    ) -> Result<Self, Error> {
        let Some(fields) = fields.filter(|f| !f.trim().is_empty()) else {
            return Ok(Self::default());
        };
        let invalid = |reason: String| Error::invalid_field(super::FIELDS_PARAM, reason);
        let (visible, omitted) = match &shape.plan.response_body {
            None => (output.clone(), shape.omit),
            Some(field) => (
                child_type(field)
                    .ok_or_else(|| invalid("this response has no fields to select".into()))?,
                shape.omit.and_then(|omit| omit.child(field)),
            ),
        };
        let keep = client_fields(&visible, fields, shape.rules, omitted).map_err(invalid)?;
        Ok(Self { keep: Some(keep) })
    }

    /// Filters the reply and encodes it (or its `response_body` field).
    pub fn encode(
        &self,
        reply: &mut DynamicMessage,
        shape: ReplyShape<'_>,
        options: &TranscodeOptions,
    ) -> Result<Vec<u8>, Error> {
        self.apply(reply, shape);
        let plan = shape.plan;
        let filters = shape.method.reply.is_some() || shape.omit.is_some() || self.keep.is_some();
        if !options.emit_unpopulated || !filters {
            return response_json(reply, plan, options);
        }
        // Cleared fields would print as defaults: drop their keys as well.
        let mut json = response_value(reply, plan, options)?;
        let key: fn(&FieldDescriptor) -> &str = if options.use_proto_field_names {
            FieldDescriptor::name
        } else {
            FieldDescriptor::json_name
        };
        let visible = plan.response_body.as_ref();
        let omit = match visible {
            None => shape.omit,
            Some(field) => shape.omit.and_then(|omit| omit.child(field)),
        };
        let prune = |json: &mut serde_json::Value| {
            match visible.and_then(child_type) {
                None => shape.rules.prune_reply_json(json, shape.method, &key),
                Some(message) => shape.rules.prune_json(json, &message, &key),
            }
            if let Some(omit) = omit {
                omit.omit_json(json, &key);
            }
            if let Some(keep) = &self.keep {
                keep.keep_json(json, &key);
            }
        };
        match visible {
            None => prune(&mut json),
            Some(field) => for_each_json(&mut json, field, prune),
        }
        serde_json::to_vec(&json).map_err(|err| Error::Internal(err.to_string().into()))
    }

    fn apply(&self, reply: &mut DynamicMessage, shape: ReplyShape<'_>) {
        shape.rules.redact_reply(reply, shape.method);
        if let Some(omit) = shape.omit {
            omit.omit(reply);
        }
        if let Some(keep) = &self.keep {
            match &shape.plan.response_body {
                None => keep.keep(reply),
                Some(field) if reply.has_field(field) => {
                    for_each_message(reply.get_field_mut(field), |inner| keep.keep(inner));
                }
                Some(_) => {}
            }
        }
    }
}

/// Serializes the reply (or its `response_body` field) with the configured options.
fn response_json(
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

/// [`response_json`] as a JSON tree, for the keys to be pruned.
fn response_value(
    message: &DynamicMessage,
    plan: &BindingPlan,
    options: &TranscodeOptions,
) -> Result<serde_json::Value, Error> {
    let serializer = serde_json::value::Serializer;
    let result = match &plan.response_body {
        None => message.serialize_with_options(serializer, &options.serialize),
        Some(field) => match message.get_field(field).as_ref() {
            Value::Message(inner) => inner.serialize_with_options(serializer, &options.serialize),
            _ => return field_json(message, field, &options.serialize),
        },
    };
    result.map_err(|err| Error::Internal(format!("cannot serialize reply: {err}").into()))
}

/// The JSON of a non-message field, serialized through a parent holding only
/// that field; a field holding its default still prints (`[]`, `{}`, `0`).
fn field_json(
    message: &DynamicMessage,
    field: &FieldDescriptor,
    options: &SerializeOptions,
) -> Result<serde_json::Value, Error> {
    let serialize = |parent: &DynamicMessage, options: &SerializeOptions| {
        parent
            .serialize_with_options(serde_json::value::Serializer, options)
            .map_err(|err| Error::Internal(format!("cannot serialize reply: {err}").into()))
    };
    let mut only = DynamicMessage::new(message.descriptor());
    only.set_field(field, message.get_field(field).into_owned());
    let mut json = serialize(&only, options)?;
    // One of the two names, depending on `use_proto_field_name`.
    let key = if json.get(field.json_name()).is_some() {
        field.json_name()
    } else {
        field.name()
    };
    if let Some(value) = json.get_mut(key) {
        return Ok(value.take());
    }
    let defaults = serialize(&only, &options.clone().skip_default_fields(false))?;
    Ok(defaults
        .get(field.json_name())
        .or_else(|| defaults.get(field.name()))
        .cloned()
        .unwrap_or_default())
}
