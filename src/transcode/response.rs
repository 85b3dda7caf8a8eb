//! Reply message → proto3 JSON bytes, selecting `response_body` when the
//! binding names one.

use prost_reflect::{
    DynamicMessage, FieldDescriptor, ReflectMessage as _, SerializeOptions, Value,
};

use super::{
    field_mask::{client_fields, MaskTree},
    field_rules::{child_type, for_each_json, for_each_message, FieldRules, MethodRules},
    TranscodeOptions,
};
use crate::{error::Error, http_rule::BindingPlan};

/// How the replies of one request are filtered before they are encoded:
/// internal fields (proto marks), configured omissions, then the client's
/// `fields` selection. Built once per request, applied to every reply.
#[derive(Debug)]
pub struct ReplyFilter<'a> {
    rules: &'a FieldRules,
    method: &'a MethodRules,
    omit: Option<&'a MaskTree>,
    keep: Option<MaskTree>,
    response_body: Option<&'a prost_reflect::FieldDescriptor>,
}

impl<'a> ReplyFilter<'a> {
    /// `fields` is the client's partial-response selection, relative to what it
    /// receives (the `response_body` field when the binding has one).
    pub fn new(
        rules: &'a FieldRules,
        method: &'a MethodRules,
        omit: Option<&'a MaskTree>,
        output: &prost_reflect::MessageDescriptor,
        plan: &'a BindingPlan,
        fields: Option<&str>,
    ) -> Result<Self, Error> {
        let response_body = plan.response_body.as_ref();
        let keep = match fields.filter(|f| !f.trim().is_empty()) {
            None => None,
            Some(fields) => {
                let invalid = |reason: String| Error::invalid_field(super::FIELDS_PARAM, reason);
                let (visible, omitted) = match response_body {
                    None => (output.clone(), omit),
                    Some(field) => (
                        child_type(field).ok_or_else(|| {
                            invalid("this response has no fields to select".into())
                        })?,
                        omit.and_then(|omit| omit.child(field)),
                    ),
                };
                Some(client_fields(&visible, fields, rules, omitted).map_err(invalid)?)
            }
        };
        Ok(Self {
            rules,
            method,
            omit,
            keep,
            response_body,
        })
    }

    /// Filters the reply and encodes it (or its `response_body` field).
    pub fn encode(
        &self,
        reply: &mut DynamicMessage,
        plan: &BindingPlan,
        options: &TranscodeOptions,
    ) -> Result<Vec<u8>, Error> {
        self.apply(reply);
        if !options.emit_unpopulated || !self.filters() {
            return response_json(reply, plan, options);
        }
        // Cleared fields would print as defaults: drop their keys as well.
        let mut json =
            serde_json::from_slice::<serde_json::Value>(&response_json(reply, plan, options)?)
                .map_err(|err| Error::Internal(err.to_string().into()))?;
        let key: fn(&FieldDescriptor) -> &str = if options.use_proto_field_names {
            FieldDescriptor::name
        } else {
            FieldDescriptor::json_name
        };
        let (omit, visible) = match self.response_body {
            None => (self.omit, None),
            Some(field) => (self.omit.and_then(|omit| omit.child(field)), Some(field)),
        };
        let prune = |json: &mut serde_json::Value| {
            match visible.and_then(child_type) {
                None => self.rules.prune_reply_json(json, self.method, &key),
                Some(message) => self.rules.prune_json(json, &message, &key),
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

    fn filters(&self) -> bool {
        self.method.reply.is_some() || self.omit.is_some() || self.keep.is_some()
    }

    fn apply(&self, reply: &mut DynamicMessage) {
        self.rules.redact_reply(reply, self.method);
        if let Some(omit) = self.omit {
            omit.omit(reply);
        }
        if let Some(keep) = &self.keep {
            match self.response_body {
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
