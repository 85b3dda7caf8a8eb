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
//! (and words the error when there is one): unknown keys (unless ignored;
//! an ignored value nested past the limit too, which the general way
//! refuses), internal fields (unless cleared: the field rules refuse them),
//! `null` inside lists and maps, an `Any` whose `@type` is not its first key,
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
//!
//! Two readers share this: the scanner (`scan.rs`), one pass over the
//! bytes, reads the bodies clients send; whatever it does not read exactly
//! as the serde reading here would (invalid JSON, refusals, the forms
//! above that go to prost-reflect) it leaves to that reading, which decides
//! and words it. What a value means is decided once, in `values.rs`.

use std::{cell::Cell, fmt};

use prost_reflect::{DynamicMessage, FieldDescriptor};
use serde::{
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
    Deserialize as _,
};
use serde_json::value::RawValue;

use super::{
    scan,
    values::{self, Conflict, NamedFields, NotWritten, NullList},
    EnumPlan, FieldPlan, Form, JsonPlans, MessagePlan, Scalar, Shape, Unsupported, ValueKind,
    MAX_DEPTH,
};
use crate::{
    error::Error,
    transcode::encode::{self, bytes, key, length_delimited, LEN},
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

impl JsonPlans {
    /// Appends the wire bytes of the JSON document `json` as a message of
    /// type `root`, or, with `field`, as that (singular message) field of it.
    /// The scanner writes the bodies it covers; the serde reading decides
    /// the rest. On failure `out` is as it was.
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
        if scan::body(self, (plan, number), json, options, out).is_ok() {
            return Ok(());
        }
        out.truncate(at);
        self.read_body((plan, number), json, options, out)
    }

    /// [`Self::encode_json`] by the scanner alone (`Unsupported`: left to
    /// the serde reading), for the tests and the fuzz target that hold the
    /// two equal.
    pub(crate) fn scan_json(
        &self,
        root: usize,
        json: &[u8],
        options: &TranscodeOptions,
        out: &mut Vec<u8>,
    ) -> Result<(), Unsupported> {
        let at = out.len();
        let body = self.body_plan(root, None)?;
        scan::body(self, body, json, options, out).map_err(|_| {
            out.truncate(at);
            Unsupported
        })
    }

    /// [`Self::encode_json`] by the serde reading alone, for those.
    pub(crate) fn read_json(
        &self,
        root: usize,
        json: &[u8],
        options: &TranscodeOptions,
        out: &mut Vec<u8>,
    ) -> Result<(), Declined> {
        let body = self.body_plan(root, None)?;
        self.read_body(body, json, options, out)
    }

    /// The serde reading of a body: serde_json drives the seeds below. It
    /// words what is refused, naming the field by its JSON path.
    fn read_body(
        &self,
        (plan, number): (usize, Option<u32>),
        json: &[u8],
        options: &TranscodeOptions,
        out: &mut Vec<u8>,
    ) -> Result<(), Declined> {
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

    /// A value the shared readers did not write: left to the general way,
    /// or refused for good with the reason the client reads.
    fn not_written<E: de::Error>(&self, why: NotWritten) -> E {
        match why {
            NotWritten::Unsupported => unsupported(),
            NotWritten::Refused(reason) => self.refuse(reason),
        }
    }

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
    /// Set when the field may not be set here.
    conflict: Option<Conflict>,
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
    let mut named = NamedFields::default();
    while let Some(index) = map.next_key_seed(keys)? {
        let Some(index) = index else {
            // The value's JSON level is `depth + 2`.
            map.next_value_seed(Skipped(MAX_DEPTH - depth - 1))?;
            continue;
        };
        keys.guess = index + 1;
        let field = plan.fields.get(index).ok_or_else(unsupported)?;
        let conflict = named
            .admit(index, field, ctx.options)
            .map_err(|_| unsupported())?;
        let mut dropped = Vec::new();
        let out = if field.dropped_from_body() {
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
            named.set(field);
        }
    }
    Ok(())
}

/// An unknown key's value, skipped as the options say, holding at most
/// this many more levels of objects and arrays: the general way refuses a
/// document nested past the limit, skipped values too. (serde's
/// `IgnoredAny` skips any depth.) Its recursion is bounded by the limit.
struct Skipped(usize);

impl<'de> DeserializeSeed<'de> for Skipped {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skipped {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let levels = self.0.checked_sub(1).ok_or_else(unsupported)?;
        while items.next_element_seed(Skipped(levels))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let levels = self.0.checked_sub(1).ok_or_else(unsupported)?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Skipped(levels))?;
        }
        Ok(())
    }
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
        if self.conflict == Some(Conflict::Twice) {
            return Err(self.ctx.refuse(Conflict::Twice.reason()));
        }
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field value")
    }

    /// `null` leaves a member of a set oneof unset, as prost-reflect reads
    /// it, unless it is a value (of a `Value` or a `NullValue`).
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        let at = self.out.len();
        let set = values::null(self.ctx.plans, self.field, self.out)
            .map_err(|_| self.ctx.refuse(NullList::REASON))?;
        match self.conflict {
            Some(conflict) if set => {
                self.out.truncate(at);
                Err(self.ctx.refuse(conflict.reason()))
            }
            _ => Ok(set),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        self.visit_none()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        if let Some(conflict) = self.conflict {
            return Err(self.ctx.refuse(conflict.reason()));
        }
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
        values::map_key(self.key, text, self.out).map_err(|_| unsupported())
    }
}

// === impl TimeSeed ===

impl Visitor<'_> for TimeSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a timestamp or duration string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        values::time(self.form, self.number, text, self.out).map_err(|_| unsupported())
    }
}

// === impl FloatSeed ===

impl FloatSeed<'_> {
    fn write<E: de::Error>(self, value: f64) -> Result<(), E> {
        let written = values::float(self.scalar, self.number, value, self.out);
        written.map_err(|why| self.ctx.not_written(why))
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

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        match values::float_text(text) {
            Ok(value) => self.write(value),
            Err(why) => Err(self.ctx.not_written(why)),
        }
    }
}

// === integers ===

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
    fn text<E: de::Error>(self, text: &str) -> Result<(), E> {
        let written = values::integer_text(self.scalar, self.number, text, self.out);
        written.map_err(|why| self.ctx.not_written(why))
    }

    fn exact<E: de::Error>(self, value: i128) -> Result<(), E> {
        let written = values::integer(self.scalar, self.number, value, self.out);
        written.map_err(|why| self.ctx.not_written(why))
    }
}

impl Visitor<'_> for IntegerSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.exact(i128::from(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.exact(i128::from(value))
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
        values::boolean(self.number, value, self.out);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        match self.scalar {
            Scalar::String => values::string(self.number, text.as_bytes(), self.out),
            Scalar::Bytes => {
                values::base64(self.number, text, self.out).map_err(|_| unsupported())?;
            }
            _ => return Err(unsupported()),
        }
        Ok(())
    }
}

// === impl EnumSeed ===

impl Visitor<'_> for EnumSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an enum value name or number")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<(), E> {
        let (plan, name) = (self.plan, name.as_bytes());
        values::enum_name(plan, self.number, name, self.out).map_err(|_| unsupported())
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<(), E> {
        values::enum_number(self.plan, self.number, number, self.out).map_err(|_| unsupported())
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<(), E> {
        self.visit_i64(i64::try_from(number).map_err(|_| unsupported())?)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use prost_reflect::{DeserializeOptions, DynamicMessage};

    use super::*;
    use crate::{testing, transcode::encode::encode};

    use super::super::{echo as fixture, Echo as Fixture};

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
        Some(testing::meaning(&fixture.desc, &wire))
    }

    /// What prost-reflect parses, as the gateway's general way does.
    fn general(fixture: &Fixture, json: &str) -> Option<serde_json::Value> {
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let message = DynamicMessage::deserialize_with_options(
            fixture.desc.clone(),
            &mut deserializer,
            &DeserializeOptions::new(),
        )
        .ok()?;
        deserializer.end().ok()?;
        let mut wire = Vec::new();
        encode(&message, &mut wire);
        Some(testing::meaning(&fixture.desc, &wire))
    }

    /// Bodies the plans write, each meaning what prost-reflect parses.
    fn covered() -> Vec<String> {
        let long = "x".repeat(300);
        vec![
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
                base64::prelude::BASE64_STANDARD.encode(long.as_bytes())
            ),
        ]
    }

    /// More bodies the plans write, some where protogate differs by design.
    const MORE_FORMS: [&str; 10] = [
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

    #[test]
    fn what_the_plans_write_is_the_message_prost_reflect_parses() {
        let fixture = fixture();
        for json in &covered() {
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
            Ok(()) => Outcome::Written(testing::meaning(&fixture.desc, &wire)),
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
        for json in MORE_FORMS {
            assert_eq!(
                outcome(&fixture, json),
                Outcome::Written(general(&fixture, json).unwrap()),
                "{json}"
            );
        }
    }

    /// The scanner writes every body it covers byte for byte as the serde
    /// reading does; it leaves only the forms that reading hands to
    /// prost-reflect (`Any`, `Struct`, `Value`, `ListValue`, `FieldMask`).
    #[test]
    fn the_scanner_writes_what_the_serde_reading_writes() {
        let fixture = fixture();
        let options = TranscodeOptions::default();
        let dynamic = [
            "fieldMask",
            "structValue",
            "\"value\":1",
            "listValue",
            "any",
        ];
        for json in covered().iter().map(String::as_str).chain(MORE_FORMS) {
            let (mut scanned, mut read) = (Vec::new(), Vec::new());
            let scan =
                fixture
                    .plans
                    .scan_json(fixture.root, json.as_bytes(), &options, &mut scanned);
            fixture
                .plans
                .read_json(fixture.root, json.as_bytes(), &options, &mut read)
                .unwrap();
            if dynamic.iter().any(|form| json.contains(form)) {
                assert_eq!(scan, Err(Unsupported), "{json}");
            } else {
                assert_eq!(scan, Ok(()), "{json}");
                assert_eq!(scanned, read, "{json}");
            }
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

    /// A `null` for another member of a set oneof leaves it unset, as
    /// prost-reflect reads it; a key given twice is refused whatever its
    /// value (the first value would be lost).
    #[test]
    fn a_null_for_another_member_of_a_set_oneof_leaves_it_set() {
        let fixture = fixture();
        for json in [
            r#"{"choiceString":"a","choiceInt":null}"#,
            r#"{"choiceInt":null,"choiceString":"a","choiceNested":null}"#,
        ] {
            assert_eq!(
                outcome(&fixture, json),
                Outcome::Written(general(&fixture, json).unwrap()),
                "{json}"
            );
        }
        for (json, field) in [
            (
                r#"{"choiceString":"a","choiceString":null}"#,
                "choiceString",
            ),
            (r#"{"choiceString":"a","choiceInt":1}"#, "choiceInt"),
        ] {
            assert_eq!(outcome(&fixture, json), Outcome::Refused(field.into()));
        }
    }

    /// An unknown key's value, when the options ignore it, nests no deeper
    /// than the limit: past it the general way refuses the document.
    #[test]
    fn a_skipped_value_nests_no_deeper_than_the_limit() {
        let fixture = fixture();
        let options = TranscodeOptions {
            ignore_unknown_fields: true,
            ..TranscodeOptions::default()
        };
        // `levels` arrays inside the root object, then the same inside a
        // message one level down.
        let document = |levels: usize, nested: bool| {
            let value = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
            if nested {
                format!(r#"{{"nested":{{"unknown":{value}}}}}"#)
            } else {
                format!(r#"{{"unknown":{value},"stringValue":"s"}}"#)
            }
        };
        let encode = |json: &str| {
            let mut wire = Vec::new();
            let options = &options;
            fixture
                .plans
                .encode_json(fixture.root, None, json.as_bytes(), options, &mut wire)
                .map(|()| testing::meaning(&fixture.desc, &wire))
        };
        let written = encode(&document(MAX_DEPTH - 1, false)).unwrap();
        assert_eq!(written, serde_json::json!({"stringValue": "s"}));
        assert!(encode(&document(MAX_DEPTH - 2, true)).is_ok());
        for json in [document(MAX_DEPTH, false), document(MAX_DEPTH - 1, true)] {
            assert!(matches!(encode(&json), Err(Declined::Unsupported)));
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
        let message = DynamicMessage::decode(fixture.desc.clone(), &wire[..]).unwrap();
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
}
