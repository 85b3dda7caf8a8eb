//! JSON request bodies → protobuf wire bytes, written straight from the JSON
//! by the plans that print replies: no `DynamicMessage` is built, and no
//! field or enum value is looked up by name in the descriptor pool.
//! (callgrind: prost-reflect's deserializer and then encoding the message it
//! built were a quarter of a POST's instructions.) The general way
//! (`request.rs`) parses bodies here too, and decodes the bytes.
//!
//! Only what is decided exactly as prost-reflect decides it, or as the
//! module doc of `wire_json` lists, is written here. What the plans do not
//! cover reports [`Declined::Unsupported`], and prost-reflect parses the body
//! (and words the error when there is one): unknown keys (unless ignored),
//! internal fields (unless cleared: the field rules refuse them), `null`
//! inside lists and maps, an `Any` whose `@type` is not its first key,
//! timestamps other than `YYYY-MM-DDThh:mm:ss[.fraction]Z`, enum names that
//! are not values, and strings that are no number for a number field.
//! `Struct`, `Value`, `ListValue` and `FieldMask` values are parsed by
//! prost-reflect in place and written by the encoder.
//!
//! Numbers are refused here ([`Declined::Invalid`]) rather than left to
//! prost-reflect, which would accept some altered: a float out of range as
//! an infinity, an integer from a number that is not integral.
//!
//! Repeated numbers are written unpacked, which every protobuf parser
//! accepts for packed fields too.

use std::{cell::Cell, fmt};

use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    DecodeError, Engine as _,
};
use prost_reflect::{DynamicMessage, FieldDescriptor};
use serde::{
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
    Deserialize as _,
};
use serde_json::value::RawValue;

use super::{
    duration_in_range, EnumPlan, FieldPlan, Form, JsonPlans, MessagePlan, Scalar, Shape,
    Unsupported, ValueKind, MAX_DEPTH, MAX_TIMESTAMP, MIN_TIMESTAMP,
};
use crate::{
    error::Error,
    transcode::encode::{
        self, bytes, key, length_delimited, varint, FIXED32, FIXED64, LEN, VARINT,
    },
    transcode::TranscodeOptions,
};

/// Why the plans did not write a body.
#[derive(Debug)]
pub enum Declined {
    /// Not covered: the general way parses it (and words any error).
    Unsupported,
    /// Refused, naming the field: a value the general way would take altered.
    Invalid(Error),
}

impl From<Unsupported> for Declined {
    fn from(_: Unsupported) -> Self {
        Self::Unsupported
    }
}

/// prost-reflect's base64 reading: padding optional, trailing bits allowed,
/// the URL-safe alphabet when the standard one meets `-` or `_`.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_allow_trailing_bits(true)
    .with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

impl JsonPlans {
    /// Appends the wire bytes of the JSON document `json` as a message of
    /// type `root`, or, with `field`, as that (singular message) field of it.
    /// On failure `out` is as it was.
    pub fn encode_json(
        &self,
        root: usize,
        field: Option<u32>,
        json: &[u8],
        options: &TranscodeOptions,
        out: &mut Vec<u8>,
    ) -> Result<(), Declined> {
        let (plan, number) = self.body_plan(root, field)?;
        let at = out.len();
        let mut raw_integers = false;
        loop {
            let ctx = Ctx::new(self, options, raw_integers);
            let mut deserializer = serde_json::Deserializer::from_slice(json);
            let written = ctx
                .body(plan, number, &mut deserializer, out)
                .and_then(|()| deserializer.end());
            if written.is_ok() {
                return Ok(());
            }
            out.truncate(at);
            if ctx.needs_raw_integers.get() && !raw_integers {
                raw_integers = true;
                continue;
            }
            if !ctx.refused.get() {
                return Err(Declined::Unsupported);
            }
            break;
        }
        // Parsed again with the path tracked, to name the field.
        let mut track = serde_path_to_error::Track::new();
        let mut deserializer = serde_json::Deserializer::from_slice(json);
        let tracked = serde_path_to_error::Deserializer::new(&mut deserializer, &mut track);
        let ctx = Ctx {
            keys_as_text: true,
            ..Ctx::new(self, options, raw_integers)
        };
        match ctx.body(plan, number, tracked, &mut Vec::new()) {
            Err(err) => Err(Declined::Invalid(body_error(&track.path(), &err))),
            Ok(()) => Err(Declined::Unsupported),
        }
    }

    /// The plan a body is parsed by, and the field it is written as.
    fn body_plan(
        &self,
        root: usize,
        field: Option<u32>,
    ) -> Result<(usize, Option<u32>), Unsupported> {
        let Some(number) = field else {
            return Ok((root, None));
        };
        let message = self.messages.get(root).ok_or(Unsupported)?;
        let field = message
            .field_index(number)
            .map(|i| &message.fields[i])
            .ok_or(Unsupported)?;
        match (&field.value, field.shape) {
            (ValueKind::Message(plan), Shape::Single) if !field.internal && !field.output_only => {
                Ok((*plan, Some(number)))
            }
            _ => Err(Unsupported),
        }
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

/// A body error as the client sees it: a value's error names its field by
/// its JSON path (`items[0].quantity`); the rest is about the document.
pub(crate) fn body_error(path: &serde_path_to_error::Path, err: &serde_json::Error) -> Error {
    if err.is_data() && path.iter().next().is_some() {
        Error::invalid_field(path.to_string(), err.to_string())
    } else {
        Error::InvalidJson(err.to_string().into())
    }
}

/// What one parse shares with every value in it.
struct Ctx<'a> {
    plans: &'a JsonPlans,
    options: &'a TranscodeOptions,
    /// Integers are read from their text (see [`IntegerSeed`]).
    raw_integers: bool,
    /// Set when an integer came in a notation that needs its text.
    needs_raw_integers: Cell<bool>,
    /// Set when a value is refused, not only left to the general way.
    refused: Cell<bool>,
    /// Keys are read as text, checked to be UTF-8 (the path tracker names
    /// only such keys), not as bytes (see [`KeySeed`]).
    keys_as_text: bool,
}

impl<'a> Ctx<'a> {
    fn new(plans: &'a JsonPlans, options: &'a TranscodeOptions, raw_integers: bool) -> Self {
        Self {
            plans,
            options,
            raw_integers,
            needs_raw_integers: Cell::new(false),
            refused: Cell::new(false),
            keys_as_text: false,
        }
    }

    fn body<'de, D: de::Deserializer<'de>>(
        &self,
        plan: usize,
        number: Option<u32>,
        deserializer: D,
        out: &mut Vec<u8>,
    ) -> Result<(), D::Error> {
        let seed = |out: &mut Vec<u8>, deserializer: D| {
            MessageSeed {
                ctx: self,
                plan,
                out,
                depth: 0,
            }
            .deserialize(deserializer)
        };
        match number {
            None => seed(out, deserializer),
            Some(number) => {
                let mut parsed = Ok(());
                key(number, LEN, out);
                length_delimited(out, |out| parsed = seed(out, deserializer));
                parsed
            }
        }
    }

    /// A value refused for good, with the reason the client reads.
    fn refuse<E: de::Error>(&self, reason: impl fmt::Display) -> E {
        self.refused.set(true);
        E::custom(reason)
    }
}

/// What makes a value go the general way.
fn unsupported<E: de::Error>() -> E {
    E::custom("not covered by the plans")
}

/// A JSON object as a message of type `plan`.
struct MessageSeed<'a> {
    ctx: &'a Ctx<'a>,
    plan: usize,
    out: &'a mut Vec<u8>,
    depth: usize,
}

/// A JSON key, as the index of the field it names (`None`: an unknown key
/// that the options say to ignore). Read as bytes, a key is checked only
/// when it names no field: field names are text, so a key that matches one
/// is the same text read either way, and what serde_json would refuse as a
/// string (invalid UTF-8, a lone surrogate, a control character) names no
/// field. (callgrind: the check was a fifth of a key's cost.)
#[derive(Clone, Copy)]
struct KeySeed<'a> {
    plan: &'a MessagePlan,
    ignore_unknown: bool,
    as_text: bool,
    /// The field tried first: the one after the previous key's.
    guess: usize,
}

/// A field's value: `null`, one value, or a JSON array or object of them.
/// Returns whether it set the field.
struct FieldSeed<'a> {
    ctx: &'a Ctx<'a>,
    field: &'a FieldPlan,
    out: &'a mut Vec<u8>,
    depth: usize,
    /// Set when the field may not be set here: refused with this reason.
    conflict: Option<&'static str>,
}

/// One value of field `number`, with its key.
struct ValueSeed<'a> {
    ctx: &'a Ctx<'a>,
    kind: &'a ValueKind,
    number: u32,
    out: &'a mut Vec<u8>,
    depth: usize,
}

/// A JSON object as the entries of a map field.
struct MapSeed<'a> {
    ctx: &'a Ctx<'a>,
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

/// A `google.protobuf.Any` object with its `@type` first (or empty).
struct AnySeed<'a> {
    ctx: &'a Ctx<'a>,
    number: u32,
    out: &'a mut Vec<u8>,
    depth: usize,
}

/// A `Timestamp` or `Duration` string, written as its message.
struct TimeSeed<'a> {
    form: &'a Form,
    number: u32,
    out: &'a mut Vec<u8>,
}

/// A float or double (a number or a string), refused when it does not
/// fit: the narrowing of `str::parse::<f64>` of its text.
struct FloatSeed<'a> {
    ctx: &'a Ctx<'a>,
    scalar: Scalar,
    number: u32,
    out: &'a mut Vec<u8>,
}

/// Every other scalar.
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
        fields(self.ctx, self.plan, &mut map, self.out, self.depth)
    }
}

/// The rest of a JSON object's entries as the fields of message `plan`.
fn fields<'de, A: MapAccess<'de>>(
    ctx: &Ctx<'_>,
    plan: usize,
    map: &mut A,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), A::Error> {
    let plan = ctx
        .plans
        .messages
        .get(plan)
        .filter(|plan| matches!(plan.form, Form::Fields | Form::Empty))
        .filter(|_| depth < MAX_DEPTH)
        .ok_or_else(unsupported)?;
    let mut keys = KeySeed {
        plan,
        // prost-reflect refuses any key in an `Empty`.
        ignore_unknown: ctx.options.ignore_unknown_fields && matches!(plan.form, Form::Fields),
        as_text: ctx.keys_as_text,
        guess: 0,
    };
    let (mut seen, mut oneofs) = (0u64, 0u64);
    while let Some(index) = map.next_key_seed(keys)? {
        let Some(index) = index else {
            map.next_value::<IgnoredAny>()?;
            continue;
        };
        keys.guess = index + 1;
        let field = plan.fields.get(index).ok_or_else(unsupported)?;
        let bit = u32::try_from(index)
            .ok()
            .and_then(|i| 1u64.checked_shl(i))
            .ok_or_else(unsupported)?;
        if field.internal && !ctx.options.clear_internal_input {
            // Refused by the field rules, naming it as they name fields.
            return Err(unsupported());
        }
        let oneof = field.oneof.map_or(0, |oneof| 1u64 << oneof);
        let conflict = if seen & bit != 0 {
            Some("the field is given twice")
        } else if oneofs & oneof != 0 {
            Some("another field of its oneof is set")
        } else {
            None
        };
        seen |= bit;
        // Internal (when cleared) and output-only values are read, then dropped.
        let mut dropped = Vec::new();
        let out = if field.internal || field.output_only {
            &mut dropped
        } else {
            &mut *out
        };
        let set = map.next_value_seed(FieldSeed {
            ctx,
            field,
            out,
            depth,
            conflict,
        })?;
        if set {
            oneofs |= oneof;
        }
    }
    Ok(())
}

// === impl KeySeed ===

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        if self.as_text {
            deserializer.deserialize_str(self)
        } else {
            deserializer.deserialize_bytes(self)
        }
    }
}

impl KeySeed<'_> {
    /// A key that names no field.
    fn unknown<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        // Extension names (`[pkg.ext]`) are for the general way.
        if self.ignore_unknown && !key.starts_with('[') {
            Ok(None)
        } else {
            Err(unsupported())
        }
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        match self.plan.key_index(key.as_bytes(), self.guess) {
            Some(index) => Ok(Some(index)),
            None => self.unknown(key),
        }
    }

    fn visit_bytes<E: de::Error>(self, key: &[u8]) -> Result<Self::Value, E> {
        if let Some(index) = self.plan.key_index(key, self.guess) {
            return Ok(Some(index));
        }
        // As serde_json checks a string; an escaped control character,
        // which it takes, goes the general way too.
        match std::str::from_utf8(key) {
            Ok(key) if !key.bytes().any(|b| b < 0x20) => self.unknown(key),
            _ => Err(unsupported()),
        }
    }
}

// === impl FieldSeed ===

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        if let Some(reason) = self.conflict {
            return Err(self.ctx.refuse(reason));
        }
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field value")
    }

    /// `null` leaves a field unset, but a `google.protobuf.Value` holds it
    /// and a `NullValue` is its only value (as prost-reflect reads it).
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        if self.field.shape != Shape::Single {
            return Ok(false);
        }
        match &self.field.value {
            ValueKind::Enum(plan) if plan.null_value => {
                key(self.field.number, VARINT, self.out);
                varint(0, self.out);
            }
            ValueKind::Message(plan) if self.ctx.plans.is_value(*plan) => {
                // `Value { null_value: NULL_VALUE }`.
                key(self.field.number, LEN, self.out);
                bytes(&[0x08, 0x00], self.out);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        self.visit_none()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        match self.field.shape {
            Shape::Single => ValueSeed {
                ctx: self.ctx,
                kind: &self.field.value,
                number: self.field.number,
                out: self.out,
                depth: self.depth,
            }
            .deserialize(deserializer)?,
            Shape::List => deserializer.deserialize_seq(ListSeed(self))?,
            Shape::Map(key) => deserializer.deserialize_map(MapSeed {
                ctx: self.ctx,
                key,
                field: self.field,
                out: self.out,
                depth: self.depth + 1,
            })?,
        }
        Ok(true)
    }
}

/// A JSON array as the values of a list field.
struct ListSeed<'a>(FieldSeed<'a>);

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let list = self.0;
        loop {
            let item = ValueSeed {
                ctx: list.ctx,
                kind: &list.field.value,
                number: list.field.number,
                out: &mut *list.out,
                // An array is one level deeper, as serde_json counts it.
                depth: list.depth + 1,
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
        let (ctx, number, out) = (self.ctx, self.number, self.out);
        let plan = match self.kind {
            ValueKind::Scalar(scalar @ (Scalar::Double | Scalar::Float)) => {
                let seed = FloatSeed {
                    ctx,
                    scalar: *scalar,
                    number,
                    out,
                };
                return deserializer.deserialize_any(seed);
            }
            ValueKind::Scalar(scalar) if scalar.is_integer() => {
                let seed = IntegerSeed {
                    ctx,
                    scalar: *scalar,
                    number,
                    out,
                };
                return seed.deserialize(deserializer);
            }
            ValueKind::Scalar(scalar) => {
                let seed = ScalarSeed {
                    scalar: *scalar,
                    number,
                    out,
                };
                return deserializer.deserialize_any(seed);
            }
            ValueKind::Enum(plan) => {
                return deserializer.deserialize_any(EnumSeed { plan, number, out });
            }
            ValueKind::Message(plan) => *plan,
        };
        let form = &ctx.plans.messages.get(plan).ok_or_else(unsupported)?.form;
        let mut parsed = Ok(());
        match form {
            Form::Timestamp | Form::Duration => {
                return deserializer.deserialize_str(TimeSeed { form, number, out });
            }
            // The bare value, as field 1 of the wrapper.
            Form::Wrapper(scalar) => {
                key(number, LEN, out);
                length_delimited(out, |out| {
                    parsed = ValueSeed {
                        ctx,
                        kind: &ValueKind::Scalar(*scalar),
                        number: 1,
                        out,
                        depth: self.depth,
                    }
                    .deserialize(deserializer);
                });
            }
            Form::Fields | Form::Empty => {
                key(number, LEN, out);
                length_delimited(out, |out| {
                    parsed = deserializer.deserialize_map(MessageSeed {
                        ctx,
                        plan,
                        out,
                        depth: self.depth + 1,
                    });
                });
            }
            Form::Dynamic(descriptor) if descriptor.full_name() == "google.protobuf.Any" => {
                return deserializer.deserialize_map(AnySeed {
                    ctx,
                    number,
                    out,
                    depth: self.depth + 1,
                });
            }
            // `Struct`, `Value`, `ListValue`, `FieldMask`: their own JSON
            // forms, with nothing refused or filtered inside them.
            Form::Dynamic(descriptor) => {
                let message = DynamicMessage::deserialize_with_options(
                    descriptor.clone(),
                    deserializer,
                    &ctx.options.deserialize,
                )?;
                key(number, LEN, out);
                length_delimited(out, |out| encode::encode(&message, out));
            }
            Form::Unsupported => return Err(unsupported()),
        }
        parsed
    }
}

// === impl AnySeed ===

impl<'de> Visitor<'de> for AnySeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    /// `{}` is the empty `Any`; otherwise `type_url` (1) from `@type`, and
    /// `value` (2) from the other keys, or from `value` for a well-known type.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (ctx, out) = (self.ctx, self.out);
        key(self.number, LEN, out);
        let mut parsed = Ok(());
        length_delimited(out, |out| {
            parsed = any_fields(ctx, &mut map, out, self.depth)
        });
        parsed
    }
}

fn any_fields<'de, A: MapAccess<'de>>(
    ctx: &Ctx<'_>,
    map: &mut A,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), A::Error> {
    match map.next_key::<&str>()? {
        None => return Ok(()),
        Some("@type") => {}
        Some(_) => return Err(unsupported()),
    }
    let type_url: &str = map.next_value()?;
    let plan = type_url
        .rsplit_once('/')
        .and_then(|(_, name)| ctx.plans.by_name.get(name))
        .copied()
        .filter(|_| depth < MAX_DEPTH)
        .ok_or_else(unsupported)?;
    key(1, LEN, out);
    bytes(type_url.as_bytes(), out);
    match &ctx.plans.messages.get(plan).ok_or_else(unsupported)?.form {
        Form::Fields | Form::Empty => {
            key(2, LEN, out);
            let mut parsed = Ok(());
            length_delimited(out, |out| parsed = fields(ctx, plan, map, out, depth));
            parsed
        }
        _ => {
            if map.next_key::<&str>()? != Some("value") {
                return Err(unsupported());
            }
            map.next_value_seed(ValueSeed {
                ctx,
                kind: &ValueKind::Message(plan),
                number: 2,
                out,
                depth,
            })?;
            match map.next_key::<&str>()? {
                None => Ok(()),
                Some(_) => Err(unsupported()),
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
                        ctx: self.ctx,
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
            // Keys are decimal, as prost-reflect's `from_str` reads them.
            _ => write_integer(
                key.scalar,
                key.number,
                decimal(text).ok_or_else(unsupported)?,
                key.out,
            )
            .ok_or_else(unsupported),
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

// === impl FloatSeed ===

impl FloatSeed<'_> {
    /// `value` (the nearest double to what the client wrote) into the field:
    /// a float takes the nearest `f32`, unless that overflows.
    fn write<E: de::Error>(self, value: f64) -> Result<(), E> {
        match self.scalar {
            Scalar::Double => {
                key(self.number, FIXED64, self.out);
                self.out.extend_from_slice(&value.to_le_bytes());
            }
            _ => {
                #[allow(clippy::cast_possible_truncation)]
                let narrow = value as f32;
                if narrow.is_infinite() && value.is_finite() {
                    return Err(self
                        .ctx
                        .refuse(format_args!("{value:e} is out of range for a 32-bit float")));
                }
                key(self.number, FIXED32, self.out);
                self.out.extend_from_slice(&narrow.to_le_bytes());
            }
        }
        Ok(())
    }
}

impl Visitor<'_> for FloatSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }

    // serde_json reads numbers with `float_roundtrip`: the nearest double,
    // as `str::parse::<f64>` gives.
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        self.write(value)
    }

    // An integer converts to the nearest double (as its text would parse).
    #[allow(clippy::cast_precision_loss)]
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.write(value as f64)
    }

    #[allow(clippy::cast_precision_loss)]
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.write(value as f64)
    }

    /// The proto3 JSON names of the non-finite values, or a number's text;
    /// other spellings (`inf`, `nan`) are prost-reflect's to read.
    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        let value = match text {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ if !text.is_empty() && text.bytes().all(|b| b"0123456789+-.eE".contains(&b)) => {
                let value: f64 = text.parse().map_err(|_| unsupported())?;
                if value.is_infinite() {
                    return Err(self
                        .ctx
                        .refuse(format_args!("`{text}` is out of range for a number")));
                }
                value
            }
            _ => return Err(unsupported()),
        };
        self.write(value)
    }
}

// === integers ===

impl Scalar {
    fn is_integer(self) -> bool {
        !matches!(
            self,
            Self::Double | Self::Float | Self::Bool | Self::String | Self::Bytes
        )
    }

    fn range_name(self) -> &'static str {
        match self {
            Self::Int32 | Self::Sint32 | Self::Sfixed32 => "a 32-bit integer",
            Self::Uint32 | Self::Fixed32 => "an unsigned 32-bit integer",
            Self::Int64 | Self::Sint64 | Self::Sfixed64 => "a 64-bit integer",
            _ => "an unsigned 64-bit integer",
        }
    }
}

/// An integer field's value. Plain integers and strings are read as they
/// come; a number in exponent or fractional notation (`1e2`, `100.0`) is
/// read from its text, so that it is exact: the parse starts again in
/// [`Ctx::raw_integers`] mode, as such numbers are rare and reading every
/// integer's text costs.
struct IntegerSeed<'a> {
    ctx: &'a Ctx<'a>,
    scalar: Scalar,
    number: u32,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for IntegerSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if !self.ctx.raw_integers {
            return deserializer.deserialize_any(self);
        }
        let raw = <&RawValue>::deserialize(deserializer)?.get();
        match raw.as_bytes().first() {
            Some(b'"') => {
                let text: std::borrow::Cow<'_, str> =
                    serde_json::from_str(raw).map_err(|_| unsupported())?;
                self.text(&text)
            }
            Some(b'-' | b'0'..=b'9') => self.text(raw),
            _ => Err(unsupported()),
        }
    }
}

impl IntegerSeed<'_> {
    /// `text`, a number's text, exactly: `1e2`, `100.0` and `"1e2"` are 100,
    /// as proto3 JSON allows; a value that is not integral or out of range
    /// is refused. Other strings are prost-reflect's to read (or refuse).
    fn text<E: de::Error>(self, text: &str) -> Result<(), E> {
        let value = match exact_integer(text) {
            Ok(value) => value,
            Err(IntegerText::Malformed) => return Err(unsupported()),
            Err(IntegerText::Fractional) => {
                return Err(self.ctx.refuse(format_args!("`{text}` is not an integer")));
            }
            Err(IntegerText::Large) => None,
        };
        let (ctx, scalar) = (self.ctx, self.scalar);
        value
            .and_then(|value| write_integer(scalar, self.number, value, self.out))
            .ok_or_else(|| {
                ctx.refuse(format_args!(
                    "`{text}` is out of range for {}",
                    scalar.range_name()
                ))
            })
    }

    fn exact<E: de::Error>(self, value: i128, text: impl fmt::Display) -> Result<(), E> {
        let (ctx, scalar) = (self.ctx, self.scalar);
        write_integer(scalar, self.number, value, self.out).ok_or_else(|| {
            ctx.refuse(format_args!(
                "`{text}` is out of range for {}",
                scalar.range_name()
            ))
        })
    }
}

impl Visitor<'_> for IntegerSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.exact(i128::from(value), value)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.exact(i128::from(value), value)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        self.text(text)
    }

    /// Its text is needed: parse again reading integers as text.
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.ctx.needs_raw_integers.set(true);
        Err(unsupported())
    }
}

/// Why a text is no integer.
#[derive(Debug, PartialEq, Eq)]
enum IntegerText {
    /// Not a number in JSON's syntax.
    Malformed,
    /// A number with a fractional part.
    Fractional,
    /// Integral, beyond 64 bits.
    Large,
}

/// The integer a JSON number's text stands for, exactly (no rounding
/// through a double): `-12`, `1.5e1`, `100.00`, `1e2`; `None` beyond 64 bits.
fn exact_integer(text: &str) -> Result<Option<i128>, IntegerText> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    // Plain digits, as nearly every integer comes, are read at once (up to
    // 18 of them fit an `i64`).
    let plain = (1..=18).contains(&rest.len())
        && rest.bytes().all(|b| b.is_ascii_digit())
        && !(rest.len() > 1 && rest.starts_with('0'));
    if plain {
        let value = rest
            .bytes()
            .fold(0i64, |value, digit| value * 10 + i64::from(digit - b'0'));
        return Ok(Some(i128::from(if negative { -value } else { value })));
    }
    notation_integer(negative, rest)
}

/// [`exact_integer`] of a number's text in any notation, its sign apart.
fn notation_integer(negative: bool, rest: &str) -> Result<Option<i128>, IntegerText> {
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = whole.len() > 1 && whole.starts_with('0');
    if !digits(whole) || leading_zero || fraction.is_some_and(|f| !digits(f)) {
        return Err(IntegerText::Malformed);
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if !digits(unsigned) {
                return Err(IntegerText::Malformed);
            }
            // Far beyond any 64-bit value either way: clamp.
            let magnitude = unsigned.parse::<i64>().unwrap_or(i64::MAX).min(1_000);
            if e.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    // The significant digits, and where the decimal point falls among them.
    let fraction = fraction.unwrap_or("");
    let digits = || whole.bytes().chain(fraction.bytes());
    let count = (whole.len() + fraction.len()) as i64;
    let point = whole.len() as i64 + exponent;
    let Some(first) = digits().position(|d| d != b'0') else {
        return Ok(Some(0));
    };
    let trailing_zeros = digits().rev().position(|d| d != b'0').unwrap_or(0) as i64;
    if count - trailing_zeros > point {
        return Err(IntegerText::Fractional);
    }
    // Integral: the digits up to the point, then zeros.
    let first = first as i64;
    if point - first > 20 {
        return Err(IntegerText::Large);
    }
    let mut significant = digits().skip(first as usize);
    let mut value: i128 = 0;
    for _ in first..point {
        let digit = significant.next().map_or(0, |d| d - b'0');
        value = value * 10 + i128::from(digit);
    }
    Ok(Some(if negative { -value } else { value }))
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

/// `value` as field `number` of integer kind `scalar`; `None` when it is
/// out of that kind's range.
fn write_integer(scalar: Scalar, number: u32, value: i128, out: &mut Vec<u8>) -> Option<()> {
    match scalar {
        Scalar::Int32 => {
            let value = i32::try_from(value).ok()?;
            key(number, VARINT, out);
            varint(i64::from(value) as u64, out);
        }
        Scalar::Sint32 => {
            let value = i32::try_from(value).ok()?;
            key(number, VARINT, out);
            varint(u64::from(((value << 1) ^ (value >> 31)) as u32), out);
        }
        Scalar::Sfixed32 => {
            let value = i32::try_from(value).ok()?;
            key(number, FIXED32, out);
            out.extend_from_slice(&value.to_le_bytes());
        }
        Scalar::Uint32 => {
            let value = u32::try_from(value).ok()?;
            key(number, VARINT, out);
            varint(u64::from(value), out);
        }
        Scalar::Fixed32 => {
            let value = u32::try_from(value).ok()?;
            key(number, FIXED32, out);
            out.extend_from_slice(&value.to_le_bytes());
        }
        Scalar::Int64 => {
            let value = i64::try_from(value).ok()?;
            key(number, VARINT, out);
            varint(value as u64, out);
        }
        Scalar::Sint64 => {
            let value = i64::try_from(value).ok()?;
            key(number, VARINT, out);
            varint(((value << 1) ^ (value >> 63)) as u64, out);
        }
        Scalar::Sfixed64 => {
            let value = i64::try_from(value).ok()?;
            key(number, FIXED64, out);
            out.extend_from_slice(&value.to_le_bytes());
        }
        Scalar::Uint64 => {
            let value = u64::try_from(value).ok()?;
            key(number, VARINT, out);
            varint(value, out);
        }
        Scalar::Fixed64 => {
            let value = u64::try_from(value).ok()?;
            key(number, FIXED64, out);
            out.extend_from_slice(&value.to_le_bytes());
        }
        Scalar::Double | Scalar::Float | Scalar::Bool | Scalar::String | Scalar::Bytes => {
            return None;
        }
    }
    Some(())
}

// === impl ScalarSeed ===

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

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        match self.scalar {
            Scalar::String => {
                key(self.number, LEN, self.out);
                bytes(text.as_bytes(), self.out);
            }
            Scalar::Bytes => {
                let decoded = match STANDARD.decode(text) {
                    Err(DecodeError::InvalidByte(_, b'-' | b'_')) => URL_SAFE.decode(text),
                    decoded => decoded,
                }
                .map_err(|_| unsupported())?;
                key(self.number, LEN, self.out);
                bytes(&decoded, self.out);
            }
            _ => return Err(unsupported()),
        }
        Ok(())
    }
}

// === impl EnumSeed ===

impl EnumSeed<'_> {
    fn write(self, number: i32) {
        key(self.number, VARINT, self.out);
        varint(i64::from(number) as u64, self.out);
    }
}

impl Visitor<'_> for EnumSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an enum value name or number")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<(), E> {
        let number = self
            .plan
            .number(name)
            .filter(|_| !self.plan.null_value)
            .ok_or_else(unsupported)?;
        self.write(number);
        Ok(())
    }

    /// Numbers, known to the enum or not (open enums keep unknown values).
    fn visit_i64<E: de::Error>(self, number: i64) -> Result<(), E> {
        let number = i32::try_from(number)
            .ok()
            .filter(|_| !self.plan.null_value)
            .ok_or_else(unsupported)?;
        self.write(number);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<(), E> {
        self.visit_i64(i64::try_from(number).map_err(|_| unsupported())?)
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor};

    use super::*;
    use crate::{
        testing,
        transcode::{encode::encode, FieldRules},
    };

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
            .encode_json(
                fixture.root,
                None,
                json.as_bytes(),
                &TranscodeOptions::default(),
                &mut wire,
            )
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
                STANDARD.encode(long.as_bytes())
            ),
        ];
        for json in &covered {
            let planned = planned(&fixture, json);
            assert!(planned.is_some(), "the plans left {json}");
            assert_eq!(planned, general(&fixture, json), "{json}");
        }
    }

    /// What the plans make of `json`: written (as its meaning), refused
    /// (naming a field), or left.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Written(serde_json::Value),
        Refused(String),
        Left,
    }

    fn outcome(fixture: &Fixture, json: &str) -> Outcome {
        let mut wire = Vec::new();
        let options = TranscodeOptions::default();
        match fixture
            .plans
            .encode_json(fixture.root, None, json.as_bytes(), &options, &mut wire)
        {
            Ok(()) => Outcome::Written(testing::meaning(&fixture.echo, &wire)),
            Err(Declined::Invalid(Error::InvalidField { field, .. })) => {
                Outcome::Refused(field.into())
            }
            Err(Declined::Invalid(other)) => panic!("{json}: refused without a field: {other}"),
            Err(Declined::Unsupported) => Outcome::Left,
        }
    }

    #[test]
    fn more_forms_the_plans_write_as_prost_reflect_parses_them() {
        let fixture = fixture();
        let covered = [
            r#"{"stringValue":null,"int32Wrapper":null,"value":null,"nested":null}"#,
            r#"{"fieldMask":"a,b.cD","structValue":{"a":[1,-0.0,"x",null]},"value":1}"#,
            r#"{"listValue":[{},[]],"any":{"@type":"type.googleapis.com/protogate.testing.v1.Nested","name":"n"}}"#,
            r#"{"any":{"@type":"type.googleapis.com/google.protobuf.Duration","value":"1.5s"}}"#,
            r#"{"any":{"@type":"type.googleapis.com/google.protobuf.Int32Value","value":"7"}}"#,
            r#"{"int32Value":1.0,"uint64Value":1.8e19,"sint32Value":"-0"}"#,
            r#"{"floatValue":"1.5","doubleValue":"NaN","floatWrapper":"-Infinity"}"#,
            r#"{"floatValue":3.4028234663852886e38,"doubleValue":-0.0,"repeatedInt32":[-0,1e0]}"#,
            r#"{"color":1,"repeatedColor":[7,"RED"]}"#,
            r#"{"bytesValue":"aGVsbG8","bytesWrapper":"-_8="}"#,
        ];
        for json in covered {
            assert_eq!(
                outcome(&fixture, json),
                Outcome::Written(general(&fixture, json).unwrap()),
                "{json}"
            );
        }
    }

    /// Refused for good, naming the field: each refused the general way too.
    #[test]
    fn what_the_plans_refuse_names_the_field() {
        let fixture = fixture();
        let refused = [
            (r#"{"choiceString":"a","choiceInt":1}"#, "choiceInt"),
            (r#"{"int32Value":2147483648}"#, "int32Value"),
            (r#"{"uint32Value":-1}"#, "uint32Value"),
            (r#"{"uint64Value":"-1"}"#, "uint64Value"),
            (r#"{"floatValue":1e39}"#, "floatValue"),
            (
                r#"{"repeatedNested":[{},{"value":1.5}]}"#,
                "repeatedNested[1].value",
            ),
            (
                r#"{"nestedById":{"2":{"value":1e10}}}"#,
                "nestedById.2.value",
            ),
        ];
        for (json, field) in refused {
            assert_eq!(
                outcome(&fixture, json),
                Outcome::Refused(field.into()),
                "{json}"
            );
            assert_eq!(general(&fixture, json), None, "{json}");
        }
    }

    #[test]
    fn what_the_plans_leave_goes_the_general_way() {
        let fixture = fixture();
        let left = [
            r#"{"unknown":1}"#,
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
            r#"{"int32Wrapper":{"value":1}}"#,
            r#"{"empty":{"a":1}}"#,
            r#"{"any":{"name":"n","@type":"type.googleapis.com/protogate.testing.v1.Nested"}}"#,
            r#"{"int64Value":"+5"}"#,
            r#"{"int64Value":" 5"}"#,
            r#"{"doubleValue":"inf"}"#,
            r#"{"boolValue":"true"}"#,
            r#"{"stringValue":5}"#,
            r#"{"color":"PURPLE"}"#,
            r#"{"repeatedString":["a",null]}"#,
            r#"{"repeatedString":"a"}"#,
            r#"{"nested":[]}"#,
            r#"[]"#,
            r#""text""#,
            r#"{"stringValue":"x"} trailing"#,
            r#"{"stringValue":"x""#,
        ];
        for json in left {
            assert_eq!(outcome(&fixture, json), Outcome::Left, "{json}");
        }
    }

    #[test]
    fn a_body_field_is_written_inside_that_field() {
        let fixture = fixture();
        let json = br#"{"name":"n","tags":["t"]}"#;
        let mut wire = Vec::new();
        fixture
            .plans
            .encode_json(
                fixture.root,
                Some(17),
                json,
                &TranscodeOptions::default(),
                &mut wire,
            )
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
            let planned = fixture.plans.encode_json(
                fixture.root,
                Some(number),
                b"{}",
                &TranscodeOptions::default(),
                &mut Vec::new(),
            );
            assert!(
                matches!(planned, Err(Declined::Unsupported)),
                "field {number}"
            );
        }
    }

    #[test]
    fn plain_digits_are_read_as_the_notation_reader_reads_them() {
        let mut texts = vec![
            "0".to_owned(),
            "-0".to_owned(),
            "00".to_owned(),
            "-".to_owned(),
        ];
        for len in 1..=21 {
            for digits in ["9", "1", "0", "7"] {
                let text: String = (0..len)
                    .map(|i| if i == 0 { "1" } else { digits })
                    .collect();
                texts.push(format!("0{text}"));
                texts.push(format!("-{text}"));
                texts.push(text);
            }
        }
        for text in texts {
            let (negative, rest) = match text.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, text.as_str()),
            };
            assert_eq!(
                exact_integer(&text),
                notation_integer(negative, rest),
                "{text}"
            );
        }
        assert_eq!(
            exact_integer("-999999999999999999"),
            Ok(Some(-999_999_999_999_999_999))
        );
    }
}
