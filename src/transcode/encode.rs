//! A request message to protobuf wire bytes in one pass. prost-reflect's
//! `Message::encode` measures every nested message again at each level, and
//! decides which fields to write by building each field's default value and
//! comparing (callgrind: ~30% of a POST's instructions for a small order).
//! Here each set field is visited once, and a nested message is written in
//! place after a one-byte length that is widened afterwards when it needs to be.

use std::borrow::Borrow;

use prost_reflect::{
    DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage as _, Value,
};
use prost_types::field_descriptor_proto::{Label, Type};

/// Protobuf wire types.
pub(crate) const VARINT: u32 = 0;
pub(crate) const FIXED64: u32 = 1;
pub(crate) const LEN: u32 = 2;
const START_GROUP: u32 = 3;
const END_GROUP: u32 = 4;
pub(crate) const FIXED32: u32 = 5;

/// What the encoder asks of a field or an extension, only when the value
/// needs it: most values say their wire type themselves, and each question
/// is a descriptor lookup.
trait Describe {
    fn number(&self) -> u32;
    fn kind(&self) -> Kind;
    fn is_packed(&self) -> bool;
    fn is_group(&self) -> bool;
}

/// Appends `message`'s wire encoding to `out`: known fields in number order,
/// then extensions, then unknown fields (prost-reflect interleaves those two
/// by number; fields may come in any order on the wire).
pub fn encode(message: &DynamicMessage, out: &mut Vec<u8>) {
    let mut first = None;
    for (desc, value) in message.fields() {
        field_value(&desc, value, out);
        first.get_or_insert(desc);
    }
    // The message's type, from a field at hand when there is one (the
    // message's own would be one more clone of the pool).
    match &first {
        Some(field) => negative_zeros(message, field.parent_message(), out),
        None => negative_zeros(message, &message.descriptor(), out),
    }
    for (desc, value) in message.extensions() {
        field_value(&desc, value, out);
    }
    for unknown in message.unknown_fields() {
        unknown.encode(out);
    }
}

/// The `-0.0`s of a message's singular float and double fields without
/// presence. prost-reflect holds them but counts them as unset (`-0.0 ==
/// 0.0`); the protobuf runtimes test the bits, and write them. Found through
/// the descriptor's own protos: no descriptor is built for other fields.
fn negative_zeros(message: &DynamicMessage, descriptor: &MessageDescriptor, out: &mut Vec<u8>) {
    for field in &descriptor.descriptor_proto().field {
        let float = matches!(field.r#type(), Type::Double | Type::Float);
        let number = u32::try_from(field.number()).unwrap_or(0);
        if !float || field.label() == Label::Repeated || message.has_field_by_number(number) {
            continue;
        }
        match message.get_field_by_number(number).as_deref() {
            Some(Value::F64(v)) if v.to_bits() == (-0.0f64).to_bits() => {
                key(number, FIXED64, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Some(Value::F32(v)) if v.to_bits() == (-0.0f32).to_bits() => {
                key(number, FIXED32, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
}

/// Appends `value` as the last field of `path` (each field before it a
/// singular message), written even when it is the default: on the wire the
/// last value of a field wins, so it overrides any written before it.
pub(crate) fn path_value<F: Borrow<FieldDescriptor>>(path: &[F], value: &Value, out: &mut Vec<u8>) {
    path_with(path, out, |leaf, out| {
        let kind = leaf.kind();
        key(leaf.number(), wire_type(&kind), out);
        scalar(&kind, value, out);
    });
}

/// [`path_value`] for a string field's `text`, without making a `Value`
/// of it (a copy of the text, on every request with a path variable).
pub(crate) fn path_text<F: Borrow<FieldDescriptor>>(path: &[F], text: &str, out: &mut Vec<u8>) {
    path_with(path, out, |leaf, out| {
        key(leaf.number(), LEN, out);
        bytes(text.as_bytes(), out);
    });
}

/// `leaf` written as the last field of `path`, inside its parents.
fn path_with<F: Borrow<FieldDescriptor>>(
    path: &[F],
    out: &mut Vec<u8>,
    leaf: impl FnOnce(&FieldDescriptor, &mut Vec<u8>),
) {
    match path {
        [] => {}
        [last] => leaf(last.borrow(), out),
        [parent, rest @ ..] => {
            key(parent.borrow().number(), LEN, out);
            length_delimited(out, |out| path_with(rest, out, leaf));
        }
    }
}

fn field_value(desc: &impl Describe, value: &Value, out: &mut Vec<u8>) {
    let number = desc.number();
    match value {
        Value::List(items) => match items.first() {
            Some(Value::Message(_)) => {
                let group = desc.is_group();
                for item in items {
                    if let Value::Message(message) = item {
                        nested(number, group, message, out);
                    }
                }
            }
            _ => {
                let kind = desc.kind();
                if desc.is_packed() {
                    key(number, LEN, out);
                    length_delimited(out, |out| {
                        for item in items {
                            scalar(&kind, item, out);
                        }
                    });
                } else {
                    for item in items {
                        key(number, wire_type(&kind), out);
                        scalar(&kind, item, out);
                    }
                }
            }
        },
        Value::Map(entries) => {
            let Kind::Message(entry) = desc.kind() else {
                return;
            };
            let (key_field, value_field) =
                (entry.map_entry_key_field(), entry.map_entry_value_field());
            let (key_kind, value_kind) = (key_field.kind(), value_field.kind());
            // Entries leave out a default key or scalar value, as prost-reflect
            // does, unless those fields have presence (proto2).
            let (all_keys, all_values) = (
                key_field.supports_presence(),
                value_field.supports_presence(),
            );
            for (map_key, map_value) in entries {
                key(number, LEN, out);
                length_delimited(out, |out| {
                    match map_key {
                        MapKey::String(text) if text.is_empty() && !all_keys => {}
                        MapKey::Bool(false)
                        | MapKey::I32(0)
                        | MapKey::I64(0)
                        | MapKey::U32(0)
                        | MapKey::U64(0)
                            if !all_keys => {}
                        MapKey::String(text) => {
                            key(1, LEN, out);
                            bytes(text.as_bytes(), out);
                        }
                        MapKey::Bool(v) => {
                            key(1, VARINT, out);
                            varint(u64::from(*v), out);
                        }
                        MapKey::I32(v) => map_key_integer(&key_kind, i64::from(*v), out),
                        MapKey::I64(v) => map_key_integer(&key_kind, *v, out),
                        MapKey::U32(v) => map_key_integer(&key_kind, i64::from(*v), out),
                        MapKey::U64(v) => map_key_integer(&key_kind, *v as i64, out),
                    }
                    match map_value {
                        Value::Message(message) => nested(2, false, message, out),
                        _ if !all_values && is_default_scalar(map_value) => {}
                        _ => {
                            key(2, wire_type(&value_kind), out);
                            scalar(&value_kind, map_value, out);
                        }
                    }
                });
            }
        }
        Value::Message(message) => nested(number, desc.is_group(), message, out),
        Value::I32(_) | Value::I64(_) | Value::U32(_) | Value::U64(_) => {
            let kind = desc.kind();
            key(number, wire_type(&kind), out);
            scalar(&kind, value, out);
        }
        // The other scalars' variants say how they are written.
        _ => {
            let wire = match value {
                Value::F32(_) => FIXED32,
                Value::F64(_) => FIXED64,
                Value::String(_) | Value::Bytes(_) => LEN,
                _ => VARINT,
            };
            key(number, wire, out);
            untyped(value, out);
        }
    }
}

/// A message field: length-delimited, or between group tags.
fn nested(number: u32, group: bool, message: &DynamicMessage, out: &mut Vec<u8>) {
    if group {
        key(number, START_GROUP, out);
        encode(message, out);
        key(number, END_GROUP, out);
    } else {
        key(number, LEN, out);
        length_delimited(out, |out| encode(message, out));
    }
}

/// A scalar's payload, without its key; `kind` says how an integer is written.
fn scalar(kind: &Kind, value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::I32(v) => integer(kind, i64::from(*v), out),
        Value::I64(v) => integer(kind, *v, out),
        Value::U32(v) => integer(kind, i64::from(*v), out),
        Value::U64(v) => integer(kind, *v as i64, out),
        _ => untyped(value, out),
    }
}

/// The payload of a scalar whose variant alone says how it is written.
fn untyped(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Bool(v) => varint(u64::from(*v), out),
        Value::EnumNumber(v) => varint(*v as i64 as u64, out),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::String(v) => bytes(v.as_bytes(), out),
        Value::Bytes(v) => bytes(v, out),
        _ => {}
    }
}

/// An integer as its kind writes it: zigzag, fixed width, or a plain varint
/// (negative 32-bit values sign-extended to ten bytes, as protobuf requires).
fn integer(kind: &Kind, value: i64, out: &mut Vec<u8>) {
    match kind {
        Kind::Sint32 | Kind::Sint64 => varint(((value << 1) ^ (value >> 63)) as u64, out),
        Kind::Fixed32 | Kind::Sfixed32 => out.extend_from_slice(&(value as u32).to_le_bytes()),
        Kind::Fixed64 | Kind::Sfixed64 => out.extend_from_slice(&value.to_le_bytes()),
        _ => varint(value as u64, out),
    }
}

macro_rules! describe {
    ($($descriptor:ty),*) => {$(
        impl Describe for $descriptor {
            fn number(&self) -> u32 {
                self.number()
            }
            fn kind(&self) -> Kind {
                self.kind()
            }
            fn is_packed(&self) -> bool {
                self.is_packed()
            }
            fn is_group(&self) -> bool {
                self.is_group()
            }
        }
    )*};
}

describe!(FieldDescriptor, ExtensionDescriptor);

fn map_key_integer(kind: &Kind, value: i64, out: &mut Vec<u8>) {
    key(1, wire_type(kind), out);
    integer(kind, value, out);
}

fn is_default_scalar(value: &Value) -> bool {
    match value {
        Value::Bool(v) => !v,
        Value::I32(v) | Value::EnumNumber(v) => *v == 0,
        Value::I64(v) => *v == 0,
        Value::U32(v) => *v == 0,
        Value::U64(v) => *v == 0,
        // By bits: a `-0.0` map value is written, as the runtimes write it.
        Value::F32(v) => v.to_bits() == 0,
        Value::F64(v) => v.to_bits() == 0,
        Value::String(v) => v.is_empty(),
        Value::Bytes(v) => v.is_empty(),
        Value::Message(_) | Value::List(_) | Value::Map(_) => false,
    }
}

fn wire_type(kind: &Kind) -> u32 {
    match kind {
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => FIXED64,
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => FIXED32,
        Kind::String | Kind::Bytes | Kind::Message(_) => LEN,
        _ => VARINT,
    }
}

pub(crate) fn key(number: u32, wire_type: u32, out: &mut Vec<u8>) {
    varint(u64::from(number << 3 | wire_type), out);
}

pub(crate) fn bytes(data: &[u8], out: &mut Vec<u8>) {
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

pub(crate) fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Writes what `body` writes, preceded by its length: one byte is reserved,
/// and the body moved up when its length needs more.
pub(crate) fn length_delimited(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.push(0);
    body(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
        return;
    }
    let mut prefix = [0; 10];
    let mut width = 0;
    let mut rest = len;
    while rest >= 0x80 {
        prefix[width] = (rest as u8) | 0x80;
        rest >>= 7;
        width += 1;
    }
    prefix[width] = rest as u8;
    width += 1;
    out.resize(out.len() + width - 1, 0);
    out.copy_within(at + 1..at + 1 + len, at + width);
    out[at..at + width].copy_from_slice(&prefix[..width]);
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_reflect::MessageDescriptor;

    use super::*;

    fn echo_message() -> MessageDescriptor {
        crate::testing::message("protogate.testing.v1.EchoMessage")
    }

    fn from_json(json: &str) -> DynamicMessage {
        let mut deserializer = serde_json::Deserializer::from_str(json);
        DynamicMessage::deserialize(echo_message(), &mut deserializer).unwrap()
    }

    /// Byte for byte what prost-reflect writes (map entries in the same
    /// order, since both walk the same map).
    fn assert_same_as_prost_reflect(message: &DynamicMessage) {
        let mut ours = Vec::new();
        encode(message, &mut ours);
        assert!(
            ours == message.encode_to_vec(),
            "differs from prost-reflect"
        );
    }

    #[test]
    fn every_kind_is_written_as_prost_reflect_writes_it() {
        let long = "x".repeat(300);
        let json = format!(
            r#"{{
            "stringValue": "{long}", "int32Value": -5, "int64Value": "-9000000000",
            "uint32Value": 4000000000, "uint64Value": "18000000000000000000",
            "sint32Value": -3, "sint64Value": "-70000000000", "fixed32Value": 7,
            "fixed64Value": "8", "sfixed32Value": -9, "sfixed64Value": "-10",
            "floatValue": 1.5, "doubleValue": -2.25, "boolValue": true, "bytesValue": "AAEC",
            "repeatedString": ["a", "", "{long}"], "repeatedInt32": [1, -1, 300],
            "repeatedColor": ["COLOR_UNSPECIFIED", 7],
            "repeatedNested": [{{"name": "n", "value": 1, "tags": ["t"]}}, {{}}, {{"name": "{long}"}}],
            "labels": {{"k": "v", "": "empty key", "no value": ""}},
            "nestedById": {{"-4": {{"value": 2}}, "5": {{}}, "0": {{"name": "zero"}}}},
            "timestamp": "2024-01-02T03:04:05.5Z", "duration": "-1.5s",
            "fieldMask": "a.b,c", "doubleWrapper": 0, "int64Wrapper": "-1",
            "boolWrapper": false, "stringWrapper": "", "bytesWrapper": "",
            "structValue": {{"a": [1, "b", null, {{"c": true}}]}}, "value": 3,
            "listValue": [{{}}, []], "empty": {{}},
            "repeatedTimestamp": ["1970-01-01T00:00:00Z", "2000-01-01T00:00:00Z"],
            "optionalString": ""
        }}"#
        );
        assert_same_as_prost_reflect(&from_json(&json));
        // Defaults are not written unless the field has presence.
        assert_same_as_prost_reflect(&from_json(
            r#"{"int32Value": 0, "stringValue": "", "repeatedInt32": [], "labels": {}}"#,
        ));
        assert_same_as_prost_reflect(&from_json("{}"));
    }

    #[test]
    fn lengths_that_need_more_bytes_move_the_body_up() {
        // Nested bodies of 127, 128 and 16384 bytes: one, two and three length bytes.
        for len in [125, 126, 16_382] {
            let name = "n".repeat(len);
            let message = from_json(&format!(r#"{{"repeatedNested": [{{"name": "{name}"}}]}}"#));
            assert_same_as_prost_reflect(&message);
        }
    }

    #[test]
    fn unknown_fields_are_kept() {
        let mut bytes = from_json(r#"{"int32Value": 3}"#).encode_to_vec();
        // Field 999 (not in the schema), varint 42.
        bytes.extend_from_slice(&[0xb8, 0x3e, 42]);
        let message = DynamicMessage::decode(echo_message(), &bytes[..]).unwrap();
        assert_eq!(message.unknown_fields().count(), 1);
        let mut ours = Vec::new();
        encode(&message, &mut ours);
        assert_eq!(ours, bytes);
    }
}
