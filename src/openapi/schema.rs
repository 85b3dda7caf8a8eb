//! JSON Schemas of message and enum types as the gateway speaks them in JSON
//! (the proto3 mapping under the `json` config): the configured field names,
//! 64-bit integers as strings, bytes as base64, enums by name, the
//! well-known types in their special forms, maps as `additionalProperties`,
//! oneofs as mutually exclusive, internal fields absent, `OUTPUT_ONLY`
//! fields `readOnly`, `REQUIRED` fields `required`.
//!
//! Each type is described once, under `#/components/schemas/{full name}`,
//! and referred to by `$ref`, so that recursive types end at a reference.
//! Types are described from a work list, never by recursing into fields.

use std::collections::{BTreeMap, HashSet};

use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{json, Map, Value as Json};

use super::comments::Comments;
use crate::transcode::{FieldRules, MaskTree};

/// How the gateway prints JSON, from the `json` config.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonNames {
    /// Proto field names (`customer_id`) instead of lowerCamelCase.
    pub proto_names: bool,
    /// Enums as numbers instead of names.
    pub enums_as_numbers: bool,
}

/// The component schemas of one document, filled as operations refer to types.
pub(super) struct Schemas<'a> {
    names: JsonNames,
    rules: &'a FieldRules,
    comments: &'a Comments,
    components: BTreeMap<String, Json>,
    /// Types referred to but not described yet.
    pending: Vec<Named>,
    queued: HashSet<String>,
}

enum Named {
    Message(MessageDescriptor),
    Enum(EnumDescriptor),
}

/// The `$ref` of a component schema.
pub(super) fn reference(name: &str) -> Json {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

impl<'a> Schemas<'a> {
    pub(super) fn new(names: JsonNames, rules: &'a FieldRules, comments: &'a Comments) -> Self {
        Self {
            names,
            rules,
            comments,
            components: BTreeMap::new(),
            pending: Vec::new(),
            queued: HashSet::new(),
        }
    }

    pub(super) fn rules(&self) -> &'a FieldRules {
        self.rules
    }

    /// The JSON key of `field`.
    pub(super) fn key<'f>(&self, field: &'f FieldDescriptor) -> &'f str {
        if self.names.proto_names {
            field.name()
        } else {
            field.json_name()
        }
    }

    /// The schema of a field's value: an array for a repeated field, an
    /// object for a map.
    pub(super) fn field(&mut self, field: &FieldDescriptor) -> Json {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                return json!({ "type": "object" });
            };
            let value = entry.map_entry_value_field();
            return json!({ "type": "object", "additionalProperties": self.kind(&value.kind()) });
        }
        let single = self.kind(&field.kind());
        if field.is_list() {
            json!({ "type": "array", "items": single })
        } else {
            single
        }
    }

    /// The schema of one value of `kind`.
    pub(super) fn kind(&mut self, kind: &Kind) -> Json {
        match kind {
            Kind::Double => number("double"),
            Kind::Float => number("float"),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX })
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": "string", "format": "int64", "pattern": "^-?[0-9]+$" })
            }
            Kind::Uint64 | Kind::Fixed64 => {
                json!({ "type": "string", "format": "uint64", "pattern": "^[0-9]+$" })
            }
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => bytes(),
            Kind::Enum(en) if en.full_name() == "google.protobuf.NullValue" => {
                json!({ "type": "null" })
            }
            Kind::Enum(en) => self.named(Named::Enum(en.clone()), en.full_name()),
            Kind::Message(message) => self.message(message),
        }
    }

    /// A message type: its special form for a well-known type, else a `$ref`.
    pub(super) fn message(&mut self, message: &MessageDescriptor) -> Json {
        match well_known(message.full_name()) {
            Some(schema) => schema,
            None => self.named(Named::Message(message.clone()), message.full_name()),
        }
    }

    /// `message` described in place, less `except` and less what `omit`
    /// removes (configured response masks): a variant of its component.
    /// Recurses only along `omit`, whose depth the config's validation
    /// bounds by the nesting limit.
    pub(super) fn variant(
        &mut self,
        message: &MessageDescriptor,
        except: &[FieldDescriptor],
        omit: Option<&MaskTree>,
    ) -> Json {
        if well_known(message.full_name()).is_some() {
            return self.message(message);
        }
        let mut schema = self.describe(message, except);
        let Some(omit) = omit else {
            return schema;
        };
        for field in message.fields() {
            let Some(child) = omit.child(&field) else {
                continue;
            };
            let key = self.key(&field).to_owned();
            if child.is_empty() {
                remove_property(&mut schema, &key);
                continue;
            }
            let Kind::Message(inner) = field.kind() else {
                continue;
            };
            let value = if field.is_map() {
                let entry = inner.map_entry_value_field();
                match entry.kind() {
                    Kind::Message(value) => json!({
                        "type": "object",
                        "additionalProperties": self.variant(&value, &[], Some(child)),
                    }),
                    _ => continue,
                }
            } else if field.is_list() {
                json!({ "type": "array", "items": self.variant(&inner, &[], Some(child)) })
            } else {
                self.variant(&inner, &[], Some(child))
            };
            if let Some(slot) = schema
                .get_mut("properties")
                .and_then(|properties| properties.get_mut(&key))
            {
                *slot = value;
            }
        }
        schema
    }

    /// Describes every type referred to so far (and those they refer to).
    pub(super) fn finish(mut self) -> Map<String, Json> {
        while let Some(named) = self.pending.pop() {
            let (name, schema) = match named {
                Named::Message(message) => {
                    let schema = self.describe(&message, &[]);
                    (message.full_name().to_owned(), schema)
                }
                Named::Enum(en) => (en.full_name().to_owned(), self.enumeration(&en)),
            };
            self.components.insert(name, schema);
        }
        self.components.into_iter().collect()
    }

    fn named(&mut self, named: Named, name: &str) -> Json {
        if self.queued.insert(name.to_owned()) {
            self.pending.push(named);
        }
        reference(name)
    }

    /// An object with the message's fields, less `except` and internal fields.
    fn describe(&mut self, message: &MessageDescriptor, except: &[FieldDescriptor]) -> Json {
        let mut properties = Map::new();
        let mut required = Vec::new();
        let shown = |field: &FieldDescriptor| {
            !except.contains(field) && !self.rules.is_internal(message, field)
        };
        let fields: Vec<FieldDescriptor> = message.fields().filter(|f| shown(f)).collect();
        for field in &fields {
            let mut schema = self.field(field);
            let annotations = schema.as_object_mut();
            if let Some(annotations) = annotations {
                if let Some(text) = self.comments.of(&field.parent_file(), field.path()) {
                    annotations.insert("description".into(), text.into());
                }
                if self.rules.is_output_only(message, field) {
                    annotations.insert("readOnly".into(), true.into());
                }
                if is_deprecated(field) {
                    annotations.insert("deprecated".into(), true.into());
                }
            }
            if self.rules.is_required(message, field) {
                required.push(Json::from(self.key(field)));
            }
            properties.insert(self.key(field).to_owned(), schema);
        }
        let mut schema = Map::new();
        schema.insert("type".into(), "object".into());
        if let Some(text) = self.comments.of(&message.parent_file(), message.path()) {
            schema.insert("description".into(), text.into());
        }
        schema.insert("properties".into(), properties.into());
        if !required.is_empty() {
            schema.insert("required".into(), required.into());
        }
        schema.insert("additionalProperties".into(), false.into());
        // At most one field of a oneof: no two of its keys together.
        let mut exclusive = Vec::new();
        for oneof in message.oneofs().filter(|oneof| !oneof.is_synthetic()) {
            let keys: Vec<String> = oneof
                .fields()
                .filter(|field| fields.contains(field))
                .map(|field| self.key(&field).to_owned())
                .collect();
            for (i, first) in keys.iter().enumerate() {
                for second in &keys[i + 1..] {
                    exclusive.push(json!({ "required": [first, second] }));
                }
            }
        }
        if !exclusive.is_empty() {
            schema.insert("not".into(), json!({ "anyOf": exclusive }));
        }
        Json::Object(schema)
    }

    fn enumeration(&self, en: &EnumDescriptor) -> Json {
        let mut schema = if self.names.enums_as_numbers {
            let numbers: Vec<i32> = en.values().map(|value| value.number()).collect();
            json!({ "type": "integer", "format": "int32", "enum": numbers })
        } else {
            let names: Vec<String> = en.values().map(|value| value.name().to_owned()).collect();
            json!({ "type": "string", "enum": names })
        };
        if let (Some(text), Some(schema)) = (
            self.comments.of(&en.parent_file(), en.path()),
            schema.as_object_mut(),
        ) {
            schema.insert("description".into(), text.into());
        }
        schema
    }
}

/// Drops a property and its `required` entry.
fn remove_property(schema: &mut Json, key: &str) {
    if let Some(properties) = schema.get_mut("properties").and_then(Json::as_object_mut) {
        properties.remove(key);
    }
    if let Some(required) = schema.get_mut("required").and_then(Json::as_array_mut) {
        required.retain(|name| name != key);
    }
}

pub(super) fn is_deprecated(field: &FieldDescriptor) -> bool {
    field
        .options()
        .get_field_by_name("deprecated")
        .is_some_and(|value| value.as_bool() == Some(true))
}

/// A double or float: a JSON number, or one of the strings the mapping
/// uses for the values JSON numbers cannot hold.
fn number(format: &str) -> Json {
    json!({
        "oneOf": [
            { "type": "number", "format": format },
            { "type": "string", "enum": ["NaN", "Infinity", "-Infinity"] },
        ]
    })
}

fn bytes() -> Json {
    json!({ "type": "string", "format": "byte", "contentEncoding": "base64" })
}

/// The special JSON forms of the well-known types; `None` for other types.
fn well_known(name: &str) -> Option<Json> {
    let nullable = |schema: Json| json!({ "oneOf": [schema, { "type": "null" }] });
    Some(match name {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => json!({
            "type": "string",
            "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
            "description": "seconds with up to 9 fractional digits, then `s` (`1.5s`)",
        }),
        "google.protobuf.FieldMask" => json!({
            "type": "string",
            "description": "comma-separated field paths (`a,b.c`)",
        }),
        "google.protobuf.Struct" => json!({ "type": "object" }),
        "google.protobuf.Value" => json!({ "description": "any JSON value" }),
        "google.protobuf.ListValue" => json!({ "type": "array" }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "required": ["@type"],
            "properties": { "@type": { "type": "string" } },
            "description": "a message of the type its `@type` URL names, with its fields beside `@type`",
        }),
        "google.protobuf.DoubleValue" => nullable(number("double")),
        "google.protobuf.FloatValue" => nullable(number("float")),
        "google.protobuf.Int64Value" => {
            json!({ "type": ["string", "null"], "format": "int64", "pattern": "^-?[0-9]+$" })
        }
        "google.protobuf.UInt64Value" => {
            json!({ "type": ["string", "null"], "format": "uint64", "pattern": "^[0-9]+$" })
        }
        "google.protobuf.Int32Value" => json!({ "type": ["integer", "null"], "format": "int32" }),
        "google.protobuf.UInt32Value" => {
            json!({ "type": ["integer", "null"], "minimum": 0, "maximum": u32::MAX })
        }
        "google.protobuf.BoolValue" => json!({ "type": ["boolean", "null"] }),
        "google.protobuf.StringValue" => json!({ "type": ["string", "null"] }),
        "google.protobuf.BytesValue" => nullable(bytes()),
        _ => return None,
    })
}
