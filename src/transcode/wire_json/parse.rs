//! JSON request bodies → protobuf wire bytes, written straight from the JSON
//! by the plans that print replies: no `DynamicMessage` is built, and no
//! field or enum value is looked up by name in the descriptor pool.
//! (callgrind: prost-reflect's deserializer and then encoding the message it
//! built were a quarter of a POST's instructions.)
//!
//! Only what is decided exactly as prost-reflect decides it is written here.
//! Anything else reports [`Unsupported`], and the caller parses the body the
//! general way, which also words the error when there is one: `null`,
//! unknown or repeated keys, a second member of a oneof, internal or
//! output-only fields (the general way refuses or clears them), `Any`,
//! `Struct`, `Value`, `ListValue` and `FieldMask`, timestamps other than
//! `YYYY-MM-DDThh:mm:ss[.fraction]Z`, integers written as floats, floats
//! written as strings, enum numbers, base64 that is not canonical, and
//! objects and arrays nested more than the limit deep (which the general way
//! refuses naming it).
//!
//! Repeated numbers are written unpacked, which every protobuf parser
//! accepts for packed fields too.

use std::fmt;

use base64::{prelude::BASE64_STANDARD, Engine as _};
use prost_reflect::FieldDescriptor;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::{
    duration_in_range, EnumPlan, FieldPlan, Form, JsonPlans, Scalar, Shape, Unsupported, ValueKind,
    MAX_TIMESTAMP, MIN_TIMESTAMP,
};
use crate::{
    nesting::MAX_DEPTH,
    upstream::encode::{bytes, key, length_delimited, varint, FIXED32, FIXED64, LEN, VARINT},
};

impl JsonPlans {
    /// Appends the wire bytes of the JSON document `json` as a message of
    /// type `root`, or, with `field`, as that (singular message) field of it.
    pub fn encode_json(
        &self,
        root: usize,
        field: Option<u32>,
        json: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Unsupported> {
        let (plan, number) = match field {
            None => (root, None),
            Some(number) => {
                let message = self.messages.get(root).ok_or(Unsupported)?;
                let field = message
                    .field_index(number)
                    .map(|i| &message.fields[i])
                    .ok_or(Unsupported)?;
                match (&field.value, field.shape) {
                    (ValueKind::Message(plan), Shape::Single)
                        if !field.internal && !field.output_only =>
                    {
                        (*plan, Some(number))
                    }
                    _ => return Err(Unsupported),
                }
            }
        };
        let mut deserializer = serde_json::Deserializer::from_slice(json);
        let mut parsed = Ok(());
        let mut message = |out: &mut Vec<u8>| {
            parsed = MessageSeed {
                plans: self,
                plan,
                out,
                depth: 0,
            }
            .deserialize(&mut deserializer);
        };
        match number {
            None => message(out),
            Some(number) => {
                key(number, LEN, out);
                length_delimited(out, message);
            }
        }
        parsed.map_err(|_| Unsupported)?;
        deserializer.end().map_err(|_| Unsupported)
    }

    /// The fields a query parameter's dotted `key` names from message
    /// `root`, as `query.rs` resolves them (proto names first), into `path`:
    /// singular plain messages down to a scalar or enum field, none of them
    /// internal or output-only, at most [`MAX_DEPTH`] of them. Anything else
    /// is for the general way.
    pub fn query_path<'p>(
        &'p self,
        root: usize,
        key: &str,
        path: &mut Vec<&'p FieldDescriptor>,
    ) -> Result<(), Unsupported> {
        let mut current = root;
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            if path.len() == MAX_DEPTH {
                return Err(Unsupported);
            }
            let message = self
                .messages
                .get(current)
                .filter(|m| matches!(m.form, Form::Fields))
                .ok_or(Unsupported)?;
            let field = message
                .query_index(part)
                .map(|i| &message.fields[i])
                .filter(|f| !f.internal && !f.output_only)
                .ok_or(Unsupported)?;
            path.push(&field.descriptor);
            match (&field.value, field.shape, parts.peek()) {
                (ValueKind::Message(child), Shape::Single, Some(_)) => current = *child,
                (ValueKind::Scalar(_) | ValueKind::Enum(_), Shape::Single | Shape::List, None) => {}
                _ => return Err(Unsupported),
            }
        }
        Ok(())
    }
}

/// What makes a value go the general way.
fn unsupported<E: de::Error>() -> E {
    E::custom("not covered by the plans")
}

/// A JSON object as a message of type `plan`.
struct MessageSeed<'a> {
    plans: &'a JsonPlans,
    plan: usize,
    out: &'a mut Vec<u8>,
    depth: usize,
}

/// A JSON key, as the index of the field it names.
struct KeySeed<'a>(&'a super::MessagePlan);

/// A field's value: one value, or a JSON array of them.
struct FieldSeed<'a> {
    plans: &'a JsonPlans,
    field: &'a FieldPlan,
    out: &'a mut Vec<u8>,
    depth: usize,
}

/// One value of field `number`, with its key.
struct ValueSeed<'a> {
    plans: &'a JsonPlans,
    kind: &'a ValueKind,
    number: u32,
    out: &'a mut Vec<u8>,
    depth: usize,
}

/// A JSON object as the entries of a map field.
struct MapSeed<'a> {
    plans: &'a JsonPlans,
    key: Scalar,
    field: &'a FieldPlan,
    out: &'a mut Vec<u8>,
    depth: usize,
}

/// A map key, written as field 1 of its entry.
struct MapKeySeed<'a> {
    key: Scalar,
    out: &'a mut Vec<u8>,
}

/// A `Timestamp` or `Duration` string, written as its message.
struct TimeSeed<'a> {
    form: &'a Form,
    number: u32,
    out: &'a mut Vec<u8>,
}

struct ScalarSeed<'a> {
    scalar: Scalar,
    number: u32,
    out: &'a mut Vec<u8>,
}

struct EnumSeed<'a> {
    plan: &'a EnumPlan,
    number: u32,
    out: &'a mut Vec<u8>,
}

// === impl MessageSeed ===

impl<'de> DeserializeSeed<'de> for MessageSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let plan = self
            .plans
            .messages
            .get(self.plan)
            .filter(|plan| matches!(plan.form, Form::Fields | Form::Empty))
            .filter(|_| self.depth < MAX_DEPTH)
            .ok_or_else(unsupported)?;
        let (mut seen, mut oneofs) = (0u64, 0u64);
        while let Some(index) = map.next_key_seed(KeySeed(plan))? {
            let field = plan.fields.get(index).ok_or_else(unsupported)?;
            let bit = u32::try_from(index)
                .ok()
                .and_then(|i| 1u64.checked_shl(i))
                .ok_or_else(unsupported)?;
            if seen & bit != 0 || field.internal || field.output_only {
                return Err(unsupported());
            }
            seen |= bit;
            if let Some(oneof) = field.oneof {
                if oneofs & (1 << oneof) != 0 {
                    return Err(unsupported());
                }
                oneofs |= 1 << oneof;
            }
            map.next_value_seed(FieldSeed {
                plans: self.plans,
                field,
                out: &mut *self.out,
                depth: self.depth,
            })?;
        }
        Ok(())
    }
}

// === impl KeySeed ===

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<usize, E> {
        self.0.key_index(key).ok_or_else(unsupported)
    }
}

// === impl FieldSeed ===

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = ();

    // An array or a map's object is one level deeper, like a message's.
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let nested = self.depth + 1;
        match self.field.shape {
            Shape::Single => ValueSeed {
                plans: self.plans,
                kind: &self.field.value,
                number: self.field.number,
                out: self.out,
                depth: self.depth,
            }
            .deserialize(deserializer),
            _ if nested >= MAX_DEPTH => Err(unsupported()),
            Shape::List => deserializer.deserialize_seq(FieldSeed {
                depth: nested,
                ..self
            }),
            Shape::Map(key) => deserializer.deserialize_map(MapSeed {
                plans: self.plans,
                key,
                field: self.field,
                out: self.out,
                depth: nested,
            }),
        }
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        loop {
            let item = ValueSeed {
                plans: self.plans,
                kind: &self.field.value,
                number: self.field.number,
                out: &mut *self.out,
                depth: self.depth,
            };
            if items.next_element_seed(item)?.is_none() {
                return Ok(());
            }
        }
    }
}

// === impl ValueSeed ===

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.kind {
            ValueKind::Scalar(scalar) => deserializer.deserialize_any(ScalarSeed {
                scalar: *scalar,
                number: self.number,
                out: self.out,
            }),
            ValueKind::Enum(plan) => deserializer.deserialize_any(EnumSeed {
                plan,
                number: self.number,
                out: self.out,
            }),
            ValueKind::Message(plan) => {
                let form = &self.plans.messages.get(*plan).ok_or_else(unsupported)?.form;
                let mut parsed = Ok(());
                match form {
                    Form::Timestamp | Form::Duration => {
                        return deserializer.deserialize_str(TimeSeed {
                            form,
                            number: self.number,
                            out: self.out,
                        });
                    }
                    // The bare value, as field 1 of the wrapper.
                    Form::Wrapper(scalar) => {
                        key(self.number, LEN, self.out);
                        length_delimited(self.out, |out| {
                            parsed = deserializer.deserialize_any(ScalarSeed {
                                scalar: *scalar,
                                number: 1,
                                out,
                            });
                        });
                    }
                    Form::Fields | Form::Empty => {
                        key(self.number, LEN, self.out);
                        length_delimited(self.out, |out| {
                            parsed = deserializer.deserialize_map(MessageSeed {
                                plans: self.plans,
                                plan: *plan,
                                out,
                                depth: self.depth + 1,
                            });
                        });
                    }
                    Form::Dynamic(_) | Form::Unsupported => return Err(unsupported()),
                }
                parsed
            }
        }
    }
}

// === impl MapSeed ===

impl<'de> Visitor<'de> for MapSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    // Each entry is a message of the key (1) and the value (2); of two
    // entries with one key the last wins, on the wire as in prost-reflect.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        loop {
            let (mut more, mut parsed) = (true, Ok(()));
            let at = self.out.len();
            key(self.field.number, LEN, self.out);
            length_delimited(self.out, |out| {
                let key = MapKeySeed { key: self.key, out };
                parsed = match map.next_key_seed(key) {
                    Ok(Some(())) => map.next_value_seed(ValueSeed {
                        plans: self.plans,
                        kind: &self.field.value,
                        number: 2,
                        out,
                        depth: self.depth,
                    }),
                    Ok(None) => {
                        more = false;
                        Ok(())
                    }
                    Err(err) => Err(err),
                };
            });
            parsed?;
            if !more {
                self.out.truncate(at);
                return Ok(());
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for MapKeySeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for MapKeySeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map key")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        let key = ScalarSeed {
            scalar: self.key,
            number: 1,
            out: self.out,
        };
        match self.key {
            Scalar::String => key.visit_str(text),
            Scalar::Bool => match text {
                "true" => key.visit_bool(true),
                "false" => key.visit_bool(false),
                _ => Err(unsupported()),
            },
            _ => key.integer(decimal(text).ok_or_else(unsupported)?),
        }
    }
}

// === impl TimeSeed ===

impl Visitor<'_> for TimeSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a timestamp or duration string")
    }

    // Parsed and range-checked by prost-types as prost-reflect does, for
    // the timestamps that prost-reflect's stricter RFC 3339 check lets by.
    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        let (seconds, nanos) = match self.form {
            Form::Timestamp if utc_timestamp(text) => {
                let time: prost_types::Timestamp = text.parse().map_err(|_| unsupported())?;
                if !(MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&time.seconds) {
                    return Err(unsupported());
                }
                (time.seconds, time.nanos)
            }
            Form::Duration => {
                let span: prost_types::Duration = text.parse().map_err(|_| unsupported())?;
                if !duration_in_range(span.seconds, span.nanos) {
                    return Err(unsupported());
                }
                (span.seconds, span.nanos)
            }
            _ => return Err(unsupported()),
        };
        key(self.number, LEN, self.out);
        length_delimited(self.out, |out| {
            if seconds != 0 {
                key(1, VARINT, out);
                varint(seconds as u64, out);
            }
            if nanos != 0 {
                key(2, VARINT, out);
                varint(i64::from(nanos) as u64, out);
            }
        });
        Ok(())
    }
}

/// `YYYY-MM-DDThh:mm:ss[.f{1,9}]Z`: the form every client sends.
fn utc_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd";
    if bytes.len() < shape.len() + 1 || bytes.last() != Some(&b'Z') {
        return false;
    }
    let (head, rest) = bytes.split_at(shape.len());
    let head_ok = head.iter().zip(shape).all(|(b, s)| {
        if *s == b'd' {
            b.is_ascii_digit()
        } else {
            b == s
        }
    });
    let fraction = &rest[..rest.len() - 1];
    let fraction_ok = match fraction.split_first() {
        None => true,
        Some((b'.', digits)) => {
            (1..=9).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit)
        }
        Some(_) => false,
    };
    head_ok && fraction_ok
}

// === impl ScalarSeed ===

impl ScalarSeed<'_> {
    /// An integer (from a JSON number or a decimal string) into an integer
    /// field of any width, refused out of its range as prost-reflect does.
    fn integer<E: de::Error>(self, value: i128) -> Result<(), E> {
        let out = self.out;
        let number = self.number;
        match self.scalar {
            Scalar::Int32 => {
                let value = i32::try_from(value).map_err(|_| unsupported())?;
                key(number, VARINT, out);
                varint(i64::from(value) as u64, out);
            }
            Scalar::Sint32 => {
                let value = i32::try_from(value).map_err(|_| unsupported())?;
                key(number, VARINT, out);
                varint(u64::from(((value << 1) ^ (value >> 31)) as u32), out);
            }
            Scalar::Sfixed32 => {
                let value = i32::try_from(value).map_err(|_| unsupported())?;
                key(number, FIXED32, out);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Scalar::Uint32 => {
                let value = u32::try_from(value).map_err(|_| unsupported())?;
                key(number, VARINT, out);
                varint(u64::from(value), out);
            }
            Scalar::Fixed32 => {
                let value = u32::try_from(value).map_err(|_| unsupported())?;
                key(number, FIXED32, out);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Scalar::Int64 => {
                let value = i64::try_from(value).map_err(|_| unsupported())?;
                key(number, VARINT, out);
                varint(value as u64, out);
            }
            Scalar::Sint64 => {
                let value = i64::try_from(value).map_err(|_| unsupported())?;
                key(number, VARINT, out);
                varint(((value << 1) ^ (value >> 63)) as u64, out);
            }
            Scalar::Sfixed64 => {
                let value = i64::try_from(value).map_err(|_| unsupported())?;
                key(number, FIXED64, out);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Scalar::Uint64 => {
                let value = u64::try_from(value).map_err(|_| unsupported())?;
                key(number, VARINT, out);
                varint(value, out);
            }
            Scalar::Fixed64 => {
                let value = u64::try_from(value).map_err(|_| unsupported())?;
                key(number, FIXED64, out);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Scalar::Double | Scalar::Float | Scalar::Bool | Scalar::String | Scalar::Bytes => {
                return Err(unsupported());
            }
        }
        Ok(())
    }

    /// A JSON integer: into a float or double the nearest value, as
    /// prost-reflect converts it (the same from any integer type).
    fn json_integer<E: de::Error>(self, value: i128) -> Result<(), E> {
        match self.scalar {
            Scalar::Double => self.double(value as f64),
            Scalar::Float => self.float(value as f32),
            _ => return self.integer(value),
        }
        Ok(())
    }

    fn double(self, value: f64) {
        key(self.number, FIXED64, self.out);
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    fn float(self, value: f32) {
        key(self.number, FIXED32, self.out);
        self.out.extend_from_slice(&value.to_le_bytes());
    }
}

impl Visitor<'_> for ScalarSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        if self.scalar != Scalar::Bool {
            return Err(unsupported());
        }
        key(self.number, VARINT, self.out);
        varint(u64::from(value), self.out);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.json_integer(i128::from(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.json_integer(i128::from(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        match self.scalar {
            Scalar::Double => self.double(value),
            Scalar::Float if (f64::from(f32::MIN)..=f64::from(f32::MAX)).contains(&value) => {
                self.float(value as f32);
            }
            _ => return Err(unsupported()),
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        match self.scalar {
            Scalar::String => {
                key(self.number, LEN, self.out);
                bytes(text.as_bytes(), self.out);
            }
            Scalar::Bytes => {
                let decoded = BASE64_STANDARD.decode(text).map_err(|_| unsupported())?;
                key(self.number, LEN, self.out);
                bytes(&decoded, self.out);
            }
            Scalar::Double | Scalar::Float | Scalar::Bool => return Err(unsupported()),
            _ => return self.integer(decimal(text).ok_or_else(unsupported)?),
        }
        Ok(())
    }
}

/// An integer written as a plain decimal string (`-12`), which every
/// integer parser reads alike; anything fancier goes the general way.
fn decimal(text: &str) -> Option<i128> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

// === impl EnumSeed ===

impl Visitor<'_> for EnumSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an enum value name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<(), E> {
        let number = self
            .plan
            .number(name)
            .filter(|_| !self.plan.null_value)
            .ok_or_else(unsupported)?;
        key(self.number, VARINT, self.out);
        varint(i64::from(number) as u64, self.out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor};

    use super::*;
    use crate::{testing, transcode::FieldRules, upstream::encode::encode};

    struct Fixture {
        plans: JsonPlans,
        echo: MessageDescriptor,
        root: usize,
    }

    fn fixture() -> Fixture {
        let pool = testing::pool();
        let plans = JsonPlans::new(&pool, &FieldRules::new(&pool, &[]));
        let echo = pool
            .get_message_by_name("protogate.testing.v1.EchoMessage")
            .unwrap();
        let root = plans.index_of(&echo).unwrap();
        Fixture { plans, echo, root }
    }

    /// What the plans write for `json`; `None` when they leave it.
    fn planned(fixture: &Fixture, json: &str) -> Option<serde_json::Value> {
        let mut wire = Vec::new();
        fixture
            .plans
            .encode_json(fixture.root, None, json.as_bytes(), &mut wire)
            .ok()?;
        Some(testing::meaning(&fixture.echo, &wire))
    }

    /// What prost-reflect parses, as the gateway's general way does.
    fn general(fixture: &Fixture, json: &str) -> Option<serde_json::Value> {
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let message = DynamicMessage::deserialize_with_options(
            fixture.echo.clone(),
            &mut deserializer,
            &DeserializeOptions::new(),
        )
        .ok()?;
        deserializer.end().ok()?;
        let mut wire = Vec::new();
        encode(&message, &mut wire);
        Some(testing::meaning(&fixture.echo, &wire))
    }

    #[test]
    fn what_the_plans_write_is_the_message_prost_reflect_parses() {
        let fixture = fixture();
        let long = "x".repeat(300);
        let covered = [
            "{}".to_owned(),
            r#" { "stringValue" : "h\u00e9llo \"q\" \n" } "#.to_owned(),
            r#"{"stringValue":"s","int32Value":-5,"int64Value":"-9007199254740993",
                "uint32Value":4294967295,"uint64Value":"18446744073709551615",
                "sint32Value":-2147483648,"sint64Value":"-9223372036854775808",
                "fixed32Value":7,"fixed64Value":"8","sfixed32Value":-9,"sfixed64Value":-10,
                "floatValue":1.5,"doubleValue":-2.25e10,"boolValue":true,
                "bytesValue":"aGVsbG8=","color":"GREEN"}"#
                .to_owned(),
            r#"{"int32Value":"12","uint32Value":"0","sint64Value":7,"fixed64Value":9}"#.to_owned(),
            r#"{"floatValue":3,"doubleValue":-7}"#.to_owned(),
            r#"{"floatValue":9007199254740993,"doubleValue":18446744073709551615}"#.to_owned(),
            r#"{"floatValue":-9223372036854775807,"doubleValue":-9007199254740993}"#.to_owned(),
            r#"{"floatValue":3.4e38,"doubleValue":5e-324}"#.to_owned(),
            r#"{"string_value":"proto names","int32_value":3,"repeated_int32":[1]}"#.to_owned(),
            r#"{"str\u0069ngValue":"escaped key"}"#.to_owned(),
            r#"{"nested":{"name":"n","value":2,"tags":["a","b"],"child":{"name":"c","child":{}}}}"#
                .to_owned(),
            r#"{"repeatedString":["a",""],"repeatedInt32":[1,-2,300,"4"],
                "repeatedColor":["RED","GREEN"],"repeatedNested":[{"name":"a"},{}],
                "repeatedTimestamp":[]}"#
                .to_owned(),
            r#"{"int32Value":0,"stringValue":"","boolValue":false,"color":"COLOR_UNSPECIFIED",
                "nested":{},"optionalString":""}"#
                .to_owned(),
            r#"{"choiceString":"x"}"#.to_owned(),
            r#"{"choiceNested":{"name":"n"},"int32Value":1}"#.to_owned(),
            r#"{"labels":{"a":"b","":"","a":"c"},"nestedById":{"1":{"name":"one"},"-2":{}}}"#
                .to_owned(),
            r#"{"labels":{}}"#.to_owned(),
            r#"{"timestamp":"2024-02-29T23:59:59.123456789Z","duration":"-1.5s",
                "repeatedTimestamp":["1970-01-01T00:00:00Z","0001-01-01T00:00:00.5Z"]}"#
                .to_owned(),
            r#"{"duration":"0s","timestamp":"9999-12-31T23:59:59Z"}"#.to_owned(),
            r#"{"int32Wrapper":5,"stringWrapper":"","boolWrapper":false,"doubleWrapper":1.5,
                "int64Wrapper":"-7","uint32Wrapper":0,"bytesWrapper":"aGk=","floatWrapper":2}"#
                .to_owned(),
            r#"{"empty":{}}"#.to_owned(),
            format!(
                r#"{{"nested":{{"name":"{long}","child":{{"name":"{long}"}}}},"bytesValue":"{}"}}"#,
                BASE64_STANDARD.encode(long.as_bytes())
            ),
        ];
        for json in &covered {
            let planned = planned(&fixture, json);
            assert!(planned.is_some(), "the plans left {json}");
            assert_eq!(planned, general(&fixture, json), "{json}");
        }
    }

    #[test]
    fn what_the_plans_leave_goes_the_general_way() {
        let fixture = fixture();
        let left = [
            r#"{"stringValue":null}"#,
            r#"{"unknown":1}"#,
            r#"{"stringValue":"a","stringValue":"b"}"#,
            r#"{"stringValue":"a","string_value":"b"}"#,
            r#"{"choiceString":"a","choiceInt":1}"#,
            r#"{"internalValue":"x"}"#,
            r#"{"nested":{"secret":"s"}}"#,
            r#"{"labels":{"a":null}}"#,
            r#"{"labels":[]}"#,
            r#"{"nestedById":{"x":{}}}"#,
            r#"{"nestedById":{"+1":{}}}"#,
            r#"{"timestamp":"2024-01-01T00:00:00+01:00"}"#,
            r#"{"timestamp":"2024-02-30T00:00:00Z"}"#,
            r#"{"timestamp":"2024-01-01T00:00:00.1234567891Z"}"#,
            r#"{"timestamp":"2024-01-01 00:00:00Z"}"#,
            r#"{"timestamp":1}"#,
            r#"{"duration":"1.5"}"#,
            r#"{"duration":"315576000001s"}"#,
            r#"{"int32Wrapper":null}"#,
            r#"{"int32Wrapper":{"value":1}}"#,
            r#"{"empty":{"a":1}}"#,
            r#"{"fieldMask":"a,b"}"#,
            r#"{"structValue":{}}"#,
            r#"{"value":1}"#,
            r#"{"any":{}}"#,
            r#"{"int32Value":1.0}"#,
            r#"{"int32Value":2147483648}"#,
            r#"{"uint32Value":-1}"#,
            r#"{"uint64Value":"-1"}"#,
            r#"{"int64Value":"+5"}"#,
            r#"{"int64Value":"1e3"}"#,
            r#"{"int64Value":" 5"}"#,
            r#"{"floatValue":"1.5"}"#,
            r#"{"floatValue":1e39}"#,
            r#"{"doubleValue":"NaN"}"#,
            r#"{"boolValue":"true"}"#,
            r#"{"stringValue":5}"#,
            r#"{"color":1}"#,
            r#"{"color":"PURPLE"}"#,
            r#"{"bytesValue":"aGVsbG8"}"#,
            r#"{"bytesValue":"-_8="}"#,
            r#"{"repeatedString":["a",null]}"#,
            r#"{"repeatedString":"a"}"#,
            r#"{"nested":[]}"#,
            r#"[]"#,
            r#""text""#,
            r#"{"stringValue":"x"} trailing"#,
            r#"{"stringValue":"x""#,
        ];
        for json in left {
            assert_eq!(planned(&fixture, json), None, "{json}");
        }
    }

    #[test]
    fn a_body_field_is_written_inside_that_field() {
        let fixture = fixture();
        let json = br#"{"name":"n","tags":["t"]}"#;
        let mut wire = Vec::new();
        fixture
            .plans
            .encode_json(fixture.root, Some(17), json, &mut wire)
            .unwrap();
        let message = DynamicMessage::decode(fixture.echo.clone(), &wire[..]).unwrap();
        let nested = message.get_field_by_name("nested").unwrap();
        let nested = nested.as_message().unwrap();
        assert_eq!(
            nested.get_field_by_name("name").unwrap().as_str(),
            Some("n")
        );
        // Only singular message fields hold a body this way.
        for number in [1, 18, 22, 24, 47] {
            let planned =
                fixture
                    .plans
                    .encode_json(fixture.root, Some(number), b"{}", &mut Vec::new());
            assert_eq!(planned, Err(Unsupported), "field {number}");
        }
    }
}
