//! Reply wire bytes → proto3 JSON, printed straight from the bytes; and
//! request JSON → wire bytes, written straight from the JSON by the same
//! plans (`parse.rs`).
//!
//! Decoding a reply into a `DynamicMessage` and serializing that was the
//! largest user-space cost of a request in profiles: a tree of maps and
//! `Value`s per reply and a descriptor lookup per field. Here every message
//! type of a catalog gets a [`MessagePlan`] when the catalog is built (fields
//! in print order, keys already quoted, kinds resolved, internal fields
//! marked), and a reply is printed in one pass over its bytes per message,
//! with the reply filters (internal fields, configured omissions, the
//! client's `fields`) applied on the way.
//!
//! The output is the one `prost-reflect` prints for the decoded message, and
//! a parsed body means what prost-reflect parses, but for the differences
//! below (`tests/codec_properties.rs` compares both ways over generated
//! descriptor shapes). What the printer does not cover (extensions, groups,
//! repeated copies of a singular message, conflicting oneof members,
//! malformed bytes) reports [`Unsupported`], and the caller decodes the reply
//! the general way.
//!
//! What is read but not printed (the fields the filters hide, the siblings
//! of a `response_body`, a value a later occurrence replaces, an `Empty`'s
//! bytes) is still checked as decoding checks it: wire structure, UTF-8 of
//! strings, nested messages by their plans. A reply prost-reflect cannot
//! decode is then never printed; the general way refuses it.
//!
//! # Where protogate differs from prost-reflect, by design
//!
//! Each has a test of its name in this module's tests (`response.rs` for
//! the non-finite wrappers).
//!
//! * `map_entries_print_sorted_by_key`: not in hash order, so that one reply
//!   always prints the same.
//! * `floats_print_in_their_own_shortest_form`: a `float` prints as the
//!   shortest literal of its `f32` (`0.1`); prost-reflect widens it to a
//!   double when it builds a JSON tree for a filtered reply
//!   (`0.10000000149011612`).
//! * `non_finite_wrappers_print_as_strings`: a `FloatValue` or `DoubleValue`
//!   holding NaN or an infinity prints as `"NaN"`, `"Infinity"`, as the
//!   proto3 JSON mapping says; prost-reflect prints `null`.
//! * `negative_zero_is_kept_both_ways`: a `-0.0` in a field without
//!   presence is printed, and written to the upstream (by the parser and by
//!   `upstream/encode.rs`). prost-reflect compares with `0.0` and leaves it
//!   out; the protobuf runtimes test the bits, so a client's `-0.0` would
//!   otherwise reach the backend altered.
//! * `the_empty_any_is_braces_both_ways`: `{}` parses as the empty `Any`, as
//!   proto3 JSON reads it, and prints back as `{}`; prost-reflect refuses
//!   both ways.
//! * `integers_in_any_notation_are_exact`: an integer field takes a number in
//!   exponent or fractional notation, or a string of one, when its value is
//!   integral (`1e2`, `100.0`, `"1e2"`), read exactly from its text.
//!   prost-reflect refuses such strings and reads numbers through a double:
//!   `1.0000000000000000001` became 1, `9223372036854775808.0` became
//!   `i64::MAX`. Here those are refused (not integral, out of range).
//! * `floats_are_the_nearest_f32_of_the_nearest_double`: every number is
//!   the nearest double of its text (`str::parse::<f64>`), narrowed to `f32`
//!   for a `float`, which is refused only when that overflows.
//!   prost-reflect refuses `3.4028235e38` (`f32::MAX` as printed) and reads
//!   a float's string as an `f32` directly, making `"1e39"` an infinity;
//!   here it is refused, as is a double's `"1e400"`.
//! * `a_key_given_twice_is_refused`: prost-reflect keeps the last value of a
//!   key given twice; the first would be lost, so it is refused.
//! * `a_null_list_of_values_is_refused`: `null` for a list of `Value`s or
//!   `NullValue`s is a list of one null to prost-reflect, an empty list to
//!   Java's runtime and refused by Go's; it is refused here, so that neither
//!   reaches the backend in place of the other.
//!
//! Bodies the plans leave go to prost-reflect (see `parse.rs`), whose
//! numbers are then its own: an `Any` whose `@type` is not its first key,
//! a timestamp not in UTC, a message with extensions or groups.

use std::{
    cell::Cell,
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use base64::{prelude::BASE64_STANDARD, Engine as _};
use prost_reflect::{
    Cardinality, DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor,
};
use serde::Serializer as _;

use super::encode;
use super::{field_mask::MaskTree, field_rules::FieldRules, TranscodeOptions};
use crate::nesting::MAX_DEPTH;

mod parse;
mod scan;
mod values;

pub(crate) use parse::body_error;
pub use parse::Declined;

const MAX_FIELD_NUMBER: u32 = (1 << 29) - 1;

/// Field numbers up to this are looked up in a table, larger ones by search.
const DENSE_NUMBERS: u32 = 256;

/// `Timestamp` seconds of years 1 to 9999, the range prost-reflect prints
/// and parses.
pub(super) const MIN_TIMESTAMP: i64 = -62_135_596_800;
pub(super) const MAX_TIMESTAMP: i64 = 253_402_300_799;
/// `Duration` seconds within ±10,000 years, as prost-reflect checks.
const MAX_DURATION_SECONDS: u64 = 315_576_000_000;

/// The largest printer stacks kept for a thread's next reply (entries).
const KEPT_STACK: usize = 1024;

thread_local! {
    /// The printer's stacks, kept between the replies a thread prints: a
    /// map or a message out of order then allocates nothing (callgrind:
    /// ~0.25k instructions of a GET whose order has labels).
    static STACKS: Cell<(Vec<Entry>, Vec<MapEntry>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// The plans fall short for this message: take the general way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported;

/// The print (and parse) plans of every message type in a catalog's pool.
#[derive(Debug, Default)]
pub struct JsonPlans {
    messages: Box<[MessagePlan]>,
    by_name: HashMap<Box<str>, usize>,
}

/// The filters applied while printing, relative to the printed message.
#[derive(Debug, Clone, Copy, Default)]
pub struct Masks<'a> {
    /// Paths cleared (configured omissions).
    pub omit: Option<&'a MaskTree>,
    /// Paths kept, everything else cleared (the client's `fields`).
    pub keep: Option<&'a MaskTree>,
}

impl Masks<'_> {
    fn is_empty(&self) -> bool {
        self.omit.is_none() && self.keep.is_none()
    }
}

#[derive(Debug)]
struct MessagePlan {
    form: Form,
    fields: Box<[FieldPlan]>,
    lookup: Lookup,
    /// Fields declared in field-number order, the order encoders write them
    /// in: such messages print in one pass over their bytes.
    in_number_order: bool,
    /// Field names, sorted by length and then bytes (most probes of a
    /// search then compare lengths, not text), with the index of the field
    /// that has it as its JSON name and of the one that has it as its proto
    /// name (`u16::MAX` for none): JSON bodies look JSON names up first, as
    /// prost-reflect does, query parameters proto names first.
    keys: Box<[(Box<str>, u16, u16)]>,
}

/// How a message type prints.
#[derive(Debug)]
enum Form {
    Fields,
    Timestamp,
    Duration,
    /// `google.protobuf.*Value` wrappers: the bare value of field 1.
    Wrapper(Scalar),
    Empty,
    /// Printed by prost-reflect from a decoded message: `Any`, `Struct`,
    /// `Value`, `ListValue`, `FieldMask`. Filters do not reach inside them.
    Dynamic(MessageDescriptor),
    /// Extended messages and groups: the whole reply goes the general way.
    Unsupported,
}

#[derive(Debug)]
enum Lookup {
    /// `table[number]` is the field's index, or `u16::MAX`.
    Dense(Box<[u16]>),
    /// Sorted by number.
    Sparse(Box<[(u32, u16)]>),
}

#[derive(Debug)]
struct FieldPlan {
    descriptor: FieldDescriptor,
    number: u32,
    /// `"jsonName":`
    json_key: Box<str>,
    /// `,"jsonName":` and `,"proto_name":`: a key and the comma before it
    /// (dropped before a message's first) are then one copy.
    print_keys: [Box<[u8]>; 2],
    /// What [`Printer::fields_in_order`] does with it when no masks are in
    /// force, decided here rather than per occurrence.
    one_pass: OnePass,
    /// Its key as encoders write it, when that is one byte (fields 1 to
    /// 15), else 0: [`Printer::next_entry`] knows it by that byte.
    one_byte_tag: u8,
    /// Whether its JSON name, as a body's key, names this field (not an
    /// earlier one of the same name) and is `json_key` unescaped: a guess
    /// of it is then answered by one comparison ([`MessagePlan::key_index`]).
    guessable: bool,
    shape: Shape,
    value: ValueKind,
    /// The wire types its values may come in, one bit each.
    wires: u8,
    /// Printed only when set (messages, `optional`, oneof members).
    presence: bool,
    internal: bool,
    output_only: bool,
    /// The real oneof it belongs to (bit index), if any.
    oneof: Option<u8>,
}

/// How the one-pass printer takes a field's occurrence (no masks in force).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnePass {
    /// Singular and in no oneof: printed unless it holds its default.
    Single,
    /// Singular, in no oneof, internal: only checked.
    Hidden,
    /// A list that is not internal: printed as its run is read.
    List,
    /// The rest (maps, oneof members, internal lists): through the entry stack.
    Indexed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Single,
    List,
    /// A map with keys of this kind; the value kind is the field's.
    Map(Scalar),
}

#[derive(Debug, Clone)]
enum ValueKind {
    Scalar(Scalar),
    Enum(Arc<EnumPlan>),
    Message(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
}

#[derive(Debug)]
struct EnumPlan {
    /// Quoted value names, sorted by number.
    names: Box<[(i32, Box<str>)]>,
    default: i32,
    /// `google.protobuf.NullValue` prints as `null`.
    null_value: bool,
    /// Every value name (aliases too) → number, sorted by name.
    numbers: Box<[(Box<str>, i32)]>,
}

/// Protobuf wire types, as the printer reads them from a key's low bits.
const VARINT: u8 = encode::VARINT as u8;
const FIXED64: u8 = encode::FIXED64 as u8;
const LEN: u8 = encode::LEN as u8;
const FIXED32: u8 = encode::FIXED32 as u8;

/// One field occurrence in a message's bytes: its value's byte range.
#[derive(Debug, Clone, Copy)]
struct Entry {
    field: u16,
    wire: u8,
    start: usize,
    end: usize,
}

/// A map entry's key and value ranges (`None`: absent, the default).
#[derive(Debug, Clone, Copy)]
struct MapEntry {
    key: Option<(u8, usize, usize)>,
    /// An integer or bool key's value: keys are equal by value, whatever
    /// bytes encode them (absent, `0`, or a longer varint of the same number).
    rank: i128,
    value: Option<(u8, usize, usize)>,
}

/// An integer scalar's value, kept in the sign its type prints with.
#[derive(Debug, Clone, Copy)]
enum Integer {
    Signed(i64),
    Unsigned(u64),
}

// === impl JsonPlans ===

impl JsonPlans {
    pub fn new(pool: &DescriptorPool, rules: &FieldRules) -> Self {
        let messages: Vec<MessageDescriptor> = pool.all_messages().collect();
        let by_name: HashMap<Box<str>, usize> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| (Box::from(m.full_name()), i))
            .collect();
        let mut enums: HashMap<String, Arc<EnumPlan>> = HashMap::new();
        let messages = messages
            .iter()
            .map(|message| MessagePlan::new(message, &by_name, &mut enums, rules))
            .collect();
        Self { messages, by_name }
    }

    /// Whether plan `plan` is `google.protobuf.Value`, which holds `null`.
    fn is_value(&self, plan: usize) -> bool {
        matches!(
            self.messages.get(plan).map(|p| &p.form),
            Some(Form::Dynamic(d)) if d.full_name() == "google.protobuf.Value"
        )
    }

    /// The plan of a message type, resolved once per method.
    pub fn index_of(&self, message: &MessageDescriptor) -> Option<usize> {
        self.by_name.get(message.full_name()).copied()
    }

    /// Prints the reply of type `root`, or its `body` field (`response_body`).
    pub fn print(
        &self,
        root: usize,
        reply: &[u8],
        body: Option<&FieldDescriptor>,
        masks: Masks<'_>,
        options: &TranscodeOptions,
    ) -> Result<Vec<u8>, Unsupported> {
        let mut printer = Printer {
            plans: self,
            options,
            names: usize::from(options.use_proto_field_names),
            buf: reply,
            // JSON of messages with short fields (keys, quoted numbers,
            // timestamps, enum names) runs to three times their wire size
            // or a little more (a page of 100 example orders: 3.2 times),
            // and a buffer that grows copies everything once more; pages
            // reserved and not written cost no memory.
            out: Vec::with_capacity(reply.len() * 4 + 64),
            entries: Vec::new(),
            map_entries: Vec::new(),
            depth: 0,
        };
        (printer.entries, printer.map_entries) = STACKS.take();
        let printed = match body {
            None => printer.message(root, 0, reply.len(), masks),
            Some(body) => printer.body_field(root, body, masks),
        };
        let (mut entries, mut map_entries) = (printer.entries, printer.map_entries);
        if entries.capacity() <= KEPT_STACK && map_entries.capacity() <= KEPT_STACK {
            entries.clear();
            map_entries.clear();
            STACKS.with(|stacks| stacks.replace((entries, map_entries)));
        }
        printed.map(|()| printer.out)
    }
}

// === impl MessagePlan ===

impl MessagePlan {
    fn new(
        message: &MessageDescriptor,
        by_name: &HashMap<Box<str>, usize>,
        enums: &mut HashMap<String, Arc<EnumPlan>>,
        rules: &FieldRules,
    ) -> Self {
        let form = match message.full_name() {
            "google.protobuf.Timestamp" => Form::Timestamp,
            "google.protobuf.Duration" => Form::Duration,
            "google.protobuf.Empty" => Form::Empty,
            "google.protobuf.DoubleValue" => Form::Wrapper(Scalar::Double),
            "google.protobuf.FloatValue" => Form::Wrapper(Scalar::Float),
            "google.protobuf.Int64Value" => Form::Wrapper(Scalar::Int64),
            "google.protobuf.UInt64Value" => Form::Wrapper(Scalar::Uint64),
            "google.protobuf.Int32Value" => Form::Wrapper(Scalar::Int32),
            "google.protobuf.UInt32Value" => Form::Wrapper(Scalar::Uint32),
            "google.protobuf.BoolValue" => Form::Wrapper(Scalar::Bool),
            "google.protobuf.StringValue" => Form::Wrapper(Scalar::String),
            "google.protobuf.BytesValue" => Form::Wrapper(Scalar::Bytes),
            "google.protobuf.Any"
            | "google.protobuf.Struct"
            | "google.protobuf.Value"
            | "google.protobuf.ListValue"
            | "google.protobuf.FieldMask" => Form::Dynamic(message.clone()),
            _ if message.extensions().next().is_some() => Form::Unsupported,
            _ => Form::Fields,
        };
        let mut fields = Vec::new();
        let mut oneofs: Vec<String> = Vec::new();
        let mut unsupported = false;
        for field in message.fields() {
            let Some((shape, value)) = field_kind(&field, by_name, enums) else {
                unsupported = true;
                continue;
            };
            let oneof = field
                .containing_oneof()
                .filter(|oneof| !oneof.is_synthetic())
                .and_then(|oneof| {
                    let name = oneof.full_name().to_owned();
                    let bit = match oneofs.iter().position(|o| *o == name) {
                        Some(bit) => bit,
                        None => {
                            oneofs.push(name);
                            oneofs.len() - 1
                        }
                    };
                    u8::try_from(bit).ok().filter(|bit| *bit < 64)
                });
            if field.containing_oneof().is_some_and(|o| !o.is_synthetic()) && oneof.is_none() {
                unsupported = true;
            }
            let json_key = quoted_key(field.json_name());
            let internal = rules.is_internal(message, &field);
            let usual_wire = match shape {
                Shape::Map(_) => LEN,
                Shape::List if field.is_packed() => LEN,
                _ => value.wire(),
            };
            let one_byte_tag = u8::try_from(field.number())
                .ok()
                .filter(|number| *number < 16)
                .map_or(0, |number| number << 3 | usual_wire);
            fields.push(FieldPlan {
                print_keys: [&json_key, &quoted_key(field.name())]
                    .map(|key| [b",", key.as_bytes()].concat().into()),
                one_pass: OnePass::new(shape, oneof.is_some(), internal),
                one_byte_tag,
                json_key,
                guessable: false,
                wires: accepted_wires(shape, &value),
                shape,
                value,
                presence: field.supports_presence(),
                internal,
                output_only: rules.is_output_only(message, &field),
                oneof,
                number: field.number(),
                descriptor: field,
            });
        }
        let form = match form {
            Form::Fields if unsupported || fields.len() >= usize::from(u16::MAX) => {
                Form::Unsupported
            }
            form => form,
        };
        let lookup = Lookup::new(&fields);
        let mut plan = Self {
            form,
            in_number_order: fields.windows(2).all(|w| w[0].number < w[1].number),
            keys: keys(&fields),
            fields: fields.into(),
            lookup,
        };
        for i in 0..plan.fields.len() {
            let field = &plan.fields[i];
            let name = field.descriptor.json_name().as_bytes();
            let guessable = field.json_name() == name && plan.named_json(name) == Some(i);
            plan.fields[i].guessable = guessable;
        }
        plan
    }

    /// The index of the field a JSON key names. The field at `guess` is
    /// tried first, by one comparison: bodies mostly give fields in their
    /// declared order, so the next key often names the field after the
    /// previous key's (callgrind: a key looked up in the sorted keys costs
    /// ~150 instructions, a right guess ~20).
    #[inline]
    fn key_index(&self, key: &[u8], guess: usize) -> Option<usize> {
        if let Some(field) = self.fields.get(guess) {
            if field.guessable && field.json_name() == key {
                return Some(guess);
            }
        }
        self.named_json(key)
    }

    /// The index of the field a JSON key names, from the sorted keys.
    fn named_json(&self, key: &[u8]) -> Option<usize> {
        self.named(
            key,
            |json, proto| if json != u16::MAX { json } else { proto },
        )
    }

    /// The index of the field a query parameter's path segment names.
    fn query_index(&self, key: &str) -> Option<usize> {
        self.named(
            key.as_bytes(),
            |json, proto| if proto != u16::MAX { proto } else { json },
        )
    }

    fn named(&self, key: &[u8], pick: impl Fn(u16, u16) -> u16) -> Option<usize> {
        let at = self
            .keys
            .binary_search_by(|(name, ..)| key_order(name.as_bytes(), key))
            .ok()?;
        let (_, json, proto) = self.keys[at];
        Some(usize::from(pick(json, proto))).filter(|i| *i < self.fields.len())
    }

    fn field_index(&self, number: u32) -> Option<usize> {
        match &self.lookup {
            Lookup::Dense(table) => table
                .get(number as usize)
                .filter(|i| **i != u16::MAX)
                .map(|i| usize::from(*i)),
            Lookup::Sparse(sorted) => sorted
                .binary_search_by_key(&number, |(n, _)| *n)
                .ok()
                .map(|at| usize::from(sorted[at].1)),
        }
    }
}

impl OnePass {
    fn new(shape: Shape, in_oneof: bool, internal: bool) -> Self {
        match shape {
            Shape::Single if in_oneof => Self::Indexed,
            Shape::Single if internal => Self::Hidden,
            Shape::Single => Self::Single,
            Shape::List if !internal => Self::List,
            _ => Self::Indexed,
        }
    }
}

impl Lookup {
    fn new(fields: &[FieldPlan]) -> Self {
        let max = fields.iter().map(|f| f.number).max().unwrap_or(0);
        let index = |i: usize| u16::try_from(i).unwrap_or(u16::MAX);
        if max <= DENSE_NUMBERS {
            let mut table = vec![u16::MAX; max as usize + 1];
            for (i, field) in fields.iter().enumerate() {
                table[field.number as usize] = index(i);
            }
            Self::Dense(table.into())
        } else {
            let mut sorted: Vec<(u32, u16)> = fields
                .iter()
                .enumerate()
                .map(|(i, f)| (f.number, index(i)))
                .collect();
            sorted.sort_unstable();
            Self::Sparse(sorted.into())
        }
    }
}

/// The shape and value kind of a field; `None` for groups.
fn field_kind(
    field: &FieldDescriptor,
    by_name: &HashMap<Box<str>, usize>,
    enums: &mut HashMap<String, Arc<EnumPlan>>,
) -> Option<(Shape, ValueKind)> {
    if field.is_group() {
        return None;
    }
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return None;
        };
        let ValueKind::Scalar(key) =
            value_kind(&entry.map_entry_key_field().kind(), by_name, enums)?
        else {
            return None;
        };
        let value = value_kind(&entry.map_entry_value_field().kind(), by_name, enums)?;
        return Some((Shape::Map(key), value));
    }
    let shape = match field.cardinality() {
        Cardinality::Repeated => Shape::List,
        _ => Shape::Single,
    };
    Some((shape, value_kind(&field.kind(), by_name, enums)?))
}

fn value_kind(
    kind: &Kind,
    by_name: &HashMap<Box<str>, usize>,
    enums: &mut HashMap<String, Arc<EnumPlan>>,
) -> Option<ValueKind> {
    Some(ValueKind::Scalar(match kind {
        Kind::Double => Scalar::Double,
        Kind::Float => Scalar::Float,
        Kind::Int32 => Scalar::Int32,
        Kind::Int64 => Scalar::Int64,
        Kind::Uint32 => Scalar::Uint32,
        Kind::Uint64 => Scalar::Uint64,
        Kind::Sint32 => Scalar::Sint32,
        Kind::Sint64 => Scalar::Sint64,
        Kind::Fixed32 => Scalar::Fixed32,
        Kind::Fixed64 => Scalar::Fixed64,
        Kind::Sfixed32 => Scalar::Sfixed32,
        Kind::Sfixed64 => Scalar::Sfixed64,
        Kind::Bool => Scalar::Bool,
        Kind::String => Scalar::String,
        Kind::Bytes => Scalar::Bytes,
        Kind::Enum(e) => {
            let plan = enums
                .entry(e.full_name().to_owned())
                .or_insert_with(|| Arc::new(EnumPlan::new(e)));
            return Some(ValueKind::Enum(plan.clone()));
        }
        Kind::Message(m) => return by_name.get(m.full_name()).map(|i| ValueKind::Message(*i)),
    }))
}

/// The [`MessagePlan::keys`] of these fields.
fn keys(fields: &[FieldPlan]) -> Box<[(Box<str>, u16, u16)]> {
    let mut keys: BTreeMap<&str, (u16, u16)> = BTreeMap::new();
    for (i, field) in fields.iter().enumerate() {
        let i = u16::try_from(i).unwrap_or(u16::MAX);
        let json = keys
            .entry(field.descriptor.json_name())
            .or_insert((u16::MAX, u16::MAX));
        json.0 = json.0.min(i);
        let proto = keys
            .entry(field.descriptor.name())
            .or_insert((u16::MAX, u16::MAX));
        proto.1 = proto.1.min(i);
    }
    let mut keys: Box<[(Box<str>, u16, u16)]> = keys
        .into_iter()
        .map(|(name, (json, proto))| (Box::from(name), json, proto))
        .collect();
    keys.sort_by(|(a, ..), (b, ..)| key_order(a.as_bytes(), b.as_bytes()));
    keys
}

/// The order of [`MessagePlan::keys`]: by length, then by bytes.
fn key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn quoted_key(name: &str) -> Box<str> {
    let mut key = serde_json::to_string(name).unwrap_or_else(|_| format!("\"{name}\""));
    key.push(':');
    key.into()
}

impl EnumPlan {
    fn new(descriptor: &EnumDescriptor) -> Self {
        let mut names: Vec<(i32, Box<str>)> = descriptor
            .values()
            .map(|v| {
                let quoted =
                    serde_json::to_string(v.name()).unwrap_or_else(|_| format!("\"{}\"", v.name()));
                (v.number(), quoted.into())
            })
            .collect();
        // The first name of a number wins, as in prost-reflect's lookup.
        names.sort_by_key(|(number, _)| *number);
        names.dedup_by_key(|(number, _)| *number);
        let mut numbers: Vec<(Box<str>, i32)> = descriptor
            .values()
            .map(|v| (v.name().into(), v.number()))
            .collect();
        numbers.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            names: names.into(),
            default: descriptor.default_value().number(),
            null_value: descriptor.full_name() == "google.protobuf.NullValue",
            numbers: numbers.into(),
        }
    }

    /// The number of the value a JSON string names.
    fn number(&self, name: &[u8]) -> Option<i32> {
        self.numbers
            .binary_search_by(|(n, _)| n.as_bytes().cmp(name))
            .ok()
            .map(|at| self.numbers[at].1)
    }

    fn name(&self, number: i32) -> Option<&str> {
        self.names
            .binary_search_by_key(&number, |(n, _)| *n)
            .ok()
            .map(|at| &*self.names[at].1)
    }
}

impl Scalar {
    /// The wire type of one value.
    fn wire(self) -> u8 {
        match self {
            Self::Double | Self::Fixed64 | Self::Sfixed64 => FIXED64,
            Self::Float | Self::Fixed32 | Self::Sfixed32 => FIXED32,
            Self::String | Self::Bytes => LEN,
            _ => VARINT,
        }
    }
}

impl ValueKind {
    fn wire(&self) -> u8 {
        match self {
            Self::Scalar(scalar) => scalar.wire(),
            Self::Enum(_) => VARINT,
            Self::Message(_) => LEN,
        }
    }
}

/// [`FieldPlan::wires`].
fn accepted_wires(shape: Shape, value: &ValueKind) -> u8 {
    let one = value.wire();
    match shape {
        Shape::Map(_) => 1 << LEN,
        // Repeated numbers may come packed.
        Shape::List => (1 << one) | (1 << LEN),
        Shape::Single => 1 << one,
    }
}

impl FieldPlan {
    #[inline]
    fn accepts(&self, wire: u8) -> bool {
        wire < 8 && self.wires & (1 << wire) != 0
    }

    /// Its JSON name as `json_key` holds it, without the quotes and colon.
    fn json_name(&self) -> &[u8] {
        let key = self.json_key.as_bytes();
        key.get(1..key.len().saturating_sub(2)).unwrap_or_default()
    }
}

// === Printer ===

struct Printer<'a> {
    plans: &'a JsonPlans,
    options: &'a TranscodeOptions,
    /// Which of [`FieldPlan::print_keys`] names fields: 1 for proto names.
    names: usize,
    buf: &'a [u8],
    out: Vec<u8>,
    /// Stack of the indexed fields of the messages being printed.
    entries: Vec<Entry>,
    /// Stack of the entries of the maps being printed.
    map_entries: Vec<MapEntry>,
    /// Deeper replies are left to the general decoder (which refuses them).
    depth: usize,
}

type Printed = Result<(), Unsupported>;

impl Printer<'_> {
    fn message(&mut self, plan: usize, start: usize, end: usize, masks: Masks<'_>) -> Printed {
        let plans = self.plans;
        let plan = plans.messages.get(plan).ok_or(Unsupported)?;
        match &plan.form {
            Form::Fields => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(Unsupported);
                }
                let printed = self.fields(plan, start, end, masks);
                self.depth -= 1;
                printed
            }
            Form::Timestamp => self.timestamp(start, end),
            Form::Duration => self.duration(start, end),
            Form::Wrapper(scalar) => {
                let value = self.wrapped(*scalar, start, end)?;
                match value {
                    Some((start, end)) => self.scalar(*scalar, start, end),
                    None => self.default_scalar(*scalar),
                }
            }
            Form::Empty => {
                self.check_message(plan, start, end, self.depth + 1)?;
                self.out.extend_from_slice(b"{}");
                Ok(())
            }
            // The empty `Any` (no type) is `{}`, as it parses.
            Form::Dynamic(descriptor)
                if start == end && descriptor.full_name() == "google.protobuf.Any" =>
            {
                self.out.extend_from_slice(b"{}");
                Ok(())
            }
            Form::Dynamic(descriptor) => {
                let message = prost_reflect::DynamicMessage::decode(
                    descriptor.clone(),
                    &self.buf[start..end],
                )
                .map_err(|_| Unsupported)?;
                let mut serializer = serde_json::Serializer::new(&mut self.out);
                message
                    .serialize_with_options(&mut serializer, &self.options.serialize)
                    .map_err(|_| Unsupported)
            }
            Form::Unsupported => Err(Unsupported),
        }
    }

    /// Indexes a message's fields (grouped by field, in print order) onto
    /// the entry stack; returns where they start.
    fn index(
        &mut self,
        plan: &MessagePlan,
        start: usize,
        end: usize,
    ) -> Result<usize, Unsupported> {
        let base = self.entries.len();
        let mut pos = start;
        let mut sorted = true;
        let mut last_field = 0u16;
        while pos < end {
            let Some(entry) = self.entry_at(plan, &mut pos, end)? else {
                continue;
            };
            sorted &= entry.field >= last_field;
            last_field = entry.field;
            self.entries.push(entry);
        }
        if !sorted {
            // Stable: repeated values keep their order.
            self.entries[base..].sort_by_key(|e| e.field);
        }
        Ok(base)
    }

    /// The field occurrence at `pos`, moving past it; `None` for a field the
    /// plan does not know (skipped, as decoding keeps it as unknown).
    #[inline(always)]
    fn entry_at(
        &self,
        plan: &MessagePlan,
        pos: &mut usize,
        end: usize,
    ) -> Result<Option<Entry>, Unsupported> {
        let (number, wire) = read_tag(self.buf, pos, end)?;
        let (start, end) = self.value_range(wire, pos, end)?;
        let Some(field) = plan.field_index(number) else {
            return Ok(None);
        };
        if !plan.fields[field].accepts(wire) {
            return Err(Unsupported);
        }
        let field = u16::try_from(field).map_err(|_| Unsupported)?;
        Ok(Some(Entry {
            field,
            wire,
            start,
            end,
        }))
    }

    /// [`Self::entry_at`], knowing the field at `guess` by its one-byte tag
    /// without reading the tag and looking its number up: the field after
    /// the previous one, or a list's own field again, most often comes next.
    #[inline(always)]
    fn next_entry(
        &self,
        plan: &MessagePlan,
        pos: &mut usize,
        end: usize,
        guess: usize,
    ) -> Result<Option<Entry>, Unsupported> {
        if let Some(field) = plan.fields.get(guess) {
            if field.one_byte_tag != 0
                && *pos < end
                && self.buf.get(*pos) == Some(&field.one_byte_tag)
            {
                *pos += 1;
                let wire = field.one_byte_tag & 7;
                let (start, end) = self.value_range(wire, pos, end)?;
                let field = u16::try_from(guess).map_err(|_| Unsupported)?;
                return Ok(Some(Entry {
                    field,
                    wire,
                    start,
                    end,
                }));
            }
        }
        self.entry_at(plan, pos, end)
    }

    /// The byte range of a value of wire type `wire` at `pos`, moving past it.
    #[inline]
    fn value_range(
        &self,
        wire: u8,
        pos: &mut usize,
        end: usize,
    ) -> Result<(usize, usize), Unsupported> {
        let start = *pos;
        let value_end = match wire {
            VARINT => {
                read_varint(self.buf, pos, end)?;
                return Ok((start, *pos));
            }
            FIXED64 => start + 8,
            FIXED32 => start + 4,
            LEN => {
                let len =
                    usize::try_from(read_varint(self.buf, pos, end)?).map_err(|_| Unsupported)?;
                let value_start = *pos;
                let value_end = value_start.checked_add(len).ok_or(Unsupported)?;
                if value_end > end {
                    return Err(Unsupported);
                }
                *pos = value_end;
                return Ok((value_start, value_end));
            }
            _ => return Err(Unsupported),
        };
        if value_end > end {
            return Err(Unsupported);
        }
        *pos = value_end;
        Ok((start, value_end))
    }

    fn fields(
        &mut self,
        plan: &MessagePlan,
        start: usize,
        end: usize,
        masks: Masks<'_>,
    ) -> Printed {
        if plan.in_number_order
            && !self.options.emit_unpopulated
            && self.fields_in_order(plan, start, end, masks)?
        {
            return Ok(());
        }
        let base = self.index(plan, start, end)?;
        let top = self.entries.len();
        self.out.push(b'{');
        let mut first = true;
        let mut oneofs = 0u64;
        let mut next = base;
        for (index, field) in plan.fields.iter().enumerate() {
            let run = next;
            while next < top && usize::from(self.entries[next].field) == index {
                next += 1;
            }
            self.field(field, run, next, masks, &mut first, &mut oneofs)?;
        }
        self.out.push(b'}');
        self.entries.truncate(base);
        Ok(())
    }

    /// One pass over a message's bytes, printing each field (with the run of
    /// values right behind it, for lists and maps) as it comes. Returns
    /// `false`, having printed nothing, when a field comes out of order or
    /// twice apart: the indexed way sorts those out.
    fn fields_in_order(
        &mut self,
        plan: &MessagePlan,
        start: usize,
        end: usize,
        masks: Masks<'_>,
    ) -> Result<bool, Unsupported> {
        let mark = self.out.len();
        let base = self.entries.len();
        self.out.push(b'{');
        let mut first = true;
        let mut oneofs = 0u64;
        let mut last: Option<u16> = None;
        let mut pending: Option<Entry> = None;
        let unmasked = masks.is_empty();
        let mut pos = start;
        loop {
            let entry = match pending.take() {
                Some(entry) => entry,
                None if pos < end => {
                    let guess = last.map_or(0, |last| usize::from(last) + 1);
                    match self.next_entry(plan, &mut pos, end, guess)? {
                        Some(entry) => entry,
                        None => continue,
                    }
                }
                None => break,
            };
            if last.is_some_and(|last| entry.field <= last) {
                self.out.truncate(mark);
                return Ok(false);
            }
            last = Some(entry.field);
            let field = &plan.fields[usize::from(entry.field)];
            // What `field` decides for most fields, without the entry stack.
            match field.one_pass {
                OnePass::Single if unmasked => {
                    self.single(field, entry, masks, &mut first)?;
                    continue;
                }
                OnePass::Hidden if unmasked => {
                    self.check_entry(field, entry, self.depth + 1)?;
                    continue;
                }
                OnePass::List if unmasked => {
                    pending = self.list_in_order(plan, entry, &mut pos, end, &mut first)?;
                    continue;
                }
                _ => {}
            }
            self.entries.push(entry);
            if field.shape != Shape::Single {
                while pos < end {
                    let guess = usize::from(entry.field);
                    match self.next_entry(plan, &mut pos, end, guess)? {
                        Some(next) if next.field == entry.field => self.entries.push(next),
                        other => {
                            pending = other;
                            break;
                        }
                    }
                }
            }
            let top = self.entries.len();
            self.field(field, base, top, masks, &mut first, &mut oneofs)?;
            self.entries.truncate(base);
        }
        self.out.push(b'}');
        Ok(true)
    }

    /// Prints the list whose first occurrence is `entry` (with no masks in
    /// force) as its run is read from `pos`, and returns the entry that
    /// ended the run. A list that held only empty packed runs is dropped
    /// again, as the indexed way leaves it out.
    fn list_in_order(
        &mut self,
        plan: &MessagePlan,
        entry: Entry,
        pos: &mut usize,
        end: usize,
        first: &mut bool,
    ) -> Result<Option<Entry>, Unsupported> {
        let field = &plan.fields[usize::from(entry.field)];
        let (mark, was_first) = (self.out.len(), *first);
        self.key(field, first);
        self.out.push(b'[');
        let mut first_value = true;
        let mut value = entry;
        let ended_by = loop {
            self.list_entry(field, value, &mut first_value, Masks::default())?;
            if *pos >= end {
                break None;
            }
            match self.next_entry(plan, pos, end, usize::from(entry.field))? {
                Some(next) if next.field == entry.field => value = next,
                other => break other,
            }
        };
        if first_value {
            self.out.truncate(mark);
            *first = was_first;
        } else {
            self.out.push(b']');
        }
        Ok(ended_by)
    }

    /// Prints a field whose values are the entries `run..next` (none: the
    /// field is absent), unless it is internal, masked or a default.
    fn field(
        &mut self,
        field: &FieldPlan,
        run: usize,
        next: usize,
        masks: Masks<'_>,
        first: &mut bool,
        oneofs: &mut u64,
    ) -> Printed {
        if let Some(bit) = field.oneof.filter(|_| run < next) {
            if *oneofs & (1 << bit) != 0 {
                // Two members of one oneof: only the last counts, hidden or not.
                return Err(Unsupported);
            }
            *oneofs |= 1 << bit;
        }
        let Some(inner) = field_masks(field, masks).filter(|_| !field.internal) else {
            return self.check_run(field, run, next);
        };
        if run == next {
            if self.options.emit_unpopulated && !field.presence {
                self.key(field, first);
                self.default_value(field)?;
            }
            return Ok(());
        }
        match field.shape {
            Shape::Single => {
                let last = self.entries[next - 1];
                if matches!(field.value, ValueKind::Message(_)) && next - run > 1 {
                    // Repeated copies of a message merge.
                    return Err(Unsupported);
                }
                self.check_run(field, run, next - 1)?;
                self.single(field, last, inner, first)
            }
            Shape::List => {
                let empty = self.entries[run..next]
                    .iter()
                    .all(|e| e.wire == LEN && e.start == e.end && field.value.wire() != LEN);
                if empty && !self.options.emit_unpopulated {
                    return Ok(());
                }
                self.key(field, first);
                self.list(field, run, next, inner)
            }
            Shape::Map(key) => {
                self.key(field, first);
                self.map(key, &field.value, run, next, inner)
            }
        }
    }

    /// A singular field's value, left out when it holds its default and
    /// the field has no presence (unless defaults are printed). Inlined,
    /// with the strings and integers it prints: a call per layer cost a
    /// field ~40 instructions of saved registers and moved arguments.
    #[inline(always)]
    fn single(
        &mut self,
        field: &FieldPlan,
        entry: Entry,
        masks: Masks<'_>,
        first: &mut bool,
    ) -> Printed {
        let skip_default = !field.presence && !self.options.emit_unpopulated;
        // The commonest kinds read their value once, for the default test
        // and the printing both.
        match &field.value {
            ValueKind::Scalar(Scalar::String) => {
                if skip_default && entry.start == entry.end {
                    return Ok(());
                }
                self.key(field, first);
                self.string(entry.start, entry.end)
            }
            ValueKind::Scalar(scalar) if scalar.wire() == VARINT => {
                let raw = self.varint(entry.start, entry.end)?;
                if skip_default && is_zero(*scalar, raw) {
                    return Ok(());
                }
                self.key(field, first);
                self.varint_scalar(*scalar, raw)
            }
            ValueKind::Enum(plan) => {
                let number = self.varint(entry.start, entry.end)? as i32;
                if skip_default && number == plan.default {
                    return Ok(());
                }
                self.key(field, first);
                self.enum_value(plan, number);
                Ok(())
            }
            value => {
                if skip_default && self.is_default(value, entry)? {
                    return Ok(());
                }
                self.key(field, first);
                self.value(value, entry.wire, entry.start, entry.end, masks)
            }
        }
    }

    /// The `response_body` field of the reply, printed even when unset.
    fn body_field(&mut self, root: usize, body: &FieldDescriptor, masks: Masks<'_>) -> Printed {
        let plans = self.plans;
        let plan = plans.messages.get(root).ok_or(Unsupported)?;
        if !matches!(plan.form, Form::Fields) {
            return Err(Unsupported);
        }
        let index = plan.field_index(body.number()).ok_or(Unsupported)?;
        let field = &plan.fields[index];
        if field.internal {
            return Err(Unsupported);
        }
        let base = self.index(plan, 0, self.buf.len())?;
        let top = self.entries.len();
        let run = self.entries[base..top]
            .iter()
            .position(|e| usize::from(e.field) == index)
            .map_or(top, |at| base + at);
        let mut next = run;
        while next < top && usize::from(self.entries[next].field) == index {
            next += 1;
        }
        // The fields beside the body are not printed, but decoding reads
        // them (their messages are on level 2, below the reply).
        for i in (base..run).chain(next..top) {
            let entry = self.entries[i];
            self.check_entry(&plan.fields[usize::from(entry.field)], entry, 2)?;
        }
        match field.shape {
            Shape::List => self.list(field, run, next, masks)?,
            Shape::Map(key) => self.map(key, &field.value, run, next, masks)?,
            Shape::Single if run == next => match &field.value {
                ValueKind::Message(plan) => self.message(*plan, 0, 0, masks)?,
                value => self.default_single(value)?,
            },
            Shape::Single => {
                if matches!(field.value, ValueKind::Message(_)) && next - run > 1 {
                    return Err(Unsupported);
                }
                self.check_run(field, run, next - 1)?;
                let last = self.entries[next - 1];
                self.value(&field.value, last.wire, last.start, last.end, masks)?;
            }
        }
        self.entries.truncate(base);
        Ok(())
    }

    #[inline(always)]
    fn key(&mut self, field: &FieldPlan, first: &mut bool) {
        let key = &field.print_keys[self.names];
        self.out
            .extend_from_slice(key.get(usize::from(*first)..).unwrap_or_default());
        *first = false;
    }

    fn list(&mut self, field: &FieldPlan, run: usize, next: usize, masks: Masks<'_>) -> Printed {
        self.out.push(b'[');
        let mut first = true;
        for i in run..next {
            self.list_entry(field, self.entries[i], &mut first, masks)?;
        }
        self.out.push(b']');
        Ok(())
    }

    /// The values of one occurrence of a list field: one, or a packed run.
    fn list_entry(
        &mut self,
        field: &FieldPlan,
        entry: Entry,
        first: &mut bool,
        masks: Masks<'_>,
    ) -> Printed {
        let one = field.value.wire();
        if entry.wire == LEN && one != LEN {
            // Packed numbers.
            let mut pos = entry.start;
            while pos < entry.end {
                let (start, end) = self.value_range(one, &mut pos, entry.end)?;
                self.comma(first);
                self.value(&field.value, one, start, end, masks)?;
            }
        } else {
            self.comma(first);
            self.value(&field.value, entry.wire, entry.start, entry.end, masks)?;
        }
        Ok(())
    }

    fn map(
        &mut self,
        key: Scalar,
        value: &ValueKind,
        run: usize,
        next: usize,
        masks: Masks<'_>,
    ) -> Printed {
        let base = self.map_entries.len();
        for i in run..next {
            let entry = self.entries[i];
            let mut parsed = self.map_entry(entry.start, entry.end, key, value, self.depth + 1)?;
            if let (Some((_, start, end)), false) = (parsed.key, key == Scalar::String) {
                parsed.rank = match self.integer_at(key, start, end)? {
                    Integer::Signed(value) => i128::from(value),
                    Integer::Unsigned(value) => i128::from(value),
                };
            }
            self.map_entries.push(parsed);
        }
        // Sorted by key, the last of equal keys kept (as decoding would).
        let buf = self.buf;
        let text = |e: &MapEntry| e.key.map_or(&[][..], |(_, s, end)| &buf[s..end]);
        let strings = key == Scalar::String;
        let same = |a: &MapEntry, b: &MapEntry| match strings {
            true => text(a) == text(b),
            false => a.rank == b.rank,
        };
        self.map_entries[base..].sort_by(|a, b| match strings {
            true => text(a).cmp(text(b)),
            false => a.rank.cmp(&b.rank),
        });
        self.out.push(b'{');
        let mut first = true;
        let top = self.map_entries.len();
        for i in base..top {
            let entry = self.map_entries[i];
            if i + 1 < top && same(&self.map_entries[i + 1], &entry) {
                // Replaced by the later entry of the same key, but decoded.
                if let Some((_, start, end)) = entry.value {
                    self.check_value(value, start, end, self.depth + 1)?;
                }
                continue;
            }
            self.comma(&mut first);
            self.map_key(key, entry.key)?;
            self.out.push(b':');
            match entry.value {
                Some((wire, start, end)) => self.value(value, wire, start, end, masks)?,
                None => match value {
                    ValueKind::Message(plan) => self.message(*plan, 0, 0, masks)?,
                    value => self.default_single(value)?,
                },
            }
        }
        self.out.push(b'}');
        self.map_entries.truncate(base);
        Ok(())
    }

    /// A map entry's key and value; a key or value it holds twice is
    /// checked before the later one replaces it.
    fn map_entry(
        &self,
        start: usize,
        end: usize,
        key: Scalar,
        value: &ValueKind,
        depth: usize,
    ) -> Result<MapEntry, Unsupported> {
        let key_wire = key.wire();
        let value_wire = value.wire();
        let value_is_message = matches!(value, ValueKind::Message(_));
        let mut entry = MapEntry {
            key: None,
            rank: 0,
            value: None,
        };
        let mut pos = start;
        while pos < end {
            let (number, wire) = read_tag(self.buf, &mut pos, end)?;
            let (value_start, value_end) = self.value_range(wire, &mut pos, end)?;
            let (slot, kind) = match number {
                1 if wire == key_wire => (&mut entry.key, &ValueKind::Scalar(key)),
                // Repeated copies of a message value merge: left to the decoder.
                2 if value_is_message && entry.value.is_some() => return Err(Unsupported),
                2 if wire == value_wire => (&mut entry.value, value),
                1 | 2 => return Err(Unsupported),
                _ => continue,
            };
            if let Some((_, start, end)) = slot.replace((wire, value_start, value_end)) {
                self.check_value(kind, start, end, depth)?;
            }
        }
        Ok(entry)
    }

    fn map_key(&mut self, key: Scalar, range: Option<(u8, usize, usize)>) -> Printed {
        match (key, range) {
            (Scalar::String, Some((_, start, end))) => self.string(start, end),
            (Scalar::String, None) => {
                self.out.extend_from_slice(b"\"\"");
                Ok(())
            }
            (Scalar::Bool, _) => {
                let value = match range {
                    Some((_, start, end)) => self.varint(start, end)? != 0,
                    None => false,
                };
                self.out.push(b'"');
                self.out
                    .extend_from_slice(if value { b"true" } else { b"false" });
                self.out.push(b'"');
                Ok(())
            }
            (number, range) => {
                self.out.push(b'"');
                match range {
                    Some((_, start, end)) => self.number(number, start, end)?,
                    None => self.out.push(b'0'),
                }
                self.out.push(b'"');
                Ok(())
            }
        }
    }

    fn comma(&mut self, first: &mut bool) {
        if !*first {
            self.out.push(b',');
        }
        *first = false;
    }

    fn value(
        &mut self,
        value: &ValueKind,
        wire: u8,
        start: usize,
        end: usize,
        masks: Masks<'_>,
    ) -> Printed {
        match value {
            ValueKind::Scalar(scalar) => self.scalar(*scalar, start, end),
            ValueKind::Enum(plan) => {
                let number = self.varint(start, end)? as i32;
                self.enum_value(plan, number);
                Ok(())
            }
            ValueKind::Message(plan) if wire == LEN => self.message(*plan, start, end, masks),
            ValueKind::Message(_) => Err(Unsupported),
        }
    }

    fn enum_value(&mut self, plan: &EnumPlan, number: i32) {
        if plan.null_value {
            self.out.extend_from_slice(b"null");
            return;
        }
        match plan.name(number).filter(|_| !self.options.enums_as_numbers) {
            Some(name) => self.out.extend_from_slice(name.as_bytes()),
            None => self.integer(i64::from(number)),
        }
    }

    /// Whether a singular value without presence holds its default.
    fn is_default(&self, value: &ValueKind, entry: Entry) -> Result<bool, Unsupported> {
        let bytes = &self.buf[entry.start..entry.end];
        Ok(match value {
            // By bits, as the protobuf runtimes test it: `-0.0` is set.
            ValueKind::Scalar(Scalar::Float) => self.f32_at(entry.start, entry.end)?.to_bits() == 0,
            ValueKind::Scalar(Scalar::Double) => {
                self.f64_at(entry.start, entry.end)?.to_bits() == 0
            }
            ValueKind::Scalar(Scalar::String | Scalar::Bytes) => bytes.is_empty(),
            ValueKind::Scalar(scalar) if scalar.wire() == VARINT => {
                is_zero(*scalar, self.varint(entry.start, entry.end)?)
            }
            ValueKind::Scalar(_) => bytes.iter().all(|b| *b == 0),
            ValueKind::Enum(plan) => self.varint(entry.start, entry.end)? as i32 == plan.default,
            ValueKind::Message(_) => false,
        })
    }

    /// The default of a field that is absent: printed with `emit_unpopulated`.
    fn default_value(&mut self, field: &FieldPlan) -> Printed {
        match field.shape {
            Shape::List => self.out.extend_from_slice(b"[]"),
            Shape::Map(_) => self.out.extend_from_slice(b"{}"),
            Shape::Single => return self.default_single(&field.value),
        }
        Ok(())
    }

    fn default_single(&mut self, value: &ValueKind) -> Printed {
        match value {
            ValueKind::Scalar(scalar) => self.default_scalar(*scalar),
            ValueKind::Enum(plan) => {
                self.enum_value(plan, plan.default);
                Ok(())
            }
            ValueKind::Message(plan) => self.message(*plan, 0, 0, Masks::default()),
        }
    }

    fn default_scalar(&mut self, scalar: Scalar) -> Printed {
        let text: &[u8] = match scalar {
            Scalar::Double | Scalar::Float => b"0.0",
            Scalar::Int64
            | Scalar::Uint64
            | Scalar::Sint64
            | Scalar::Fixed64
            | Scalar::Sfixed64 => b"\"0\"",
            Scalar::Bool => b"false",
            Scalar::String | Scalar::Bytes => b"\"\"",
            _ => b"0",
        };
        self.out.extend_from_slice(text);
        Ok(())
    }

    fn scalar(&mut self, scalar: Scalar, start: usize, end: usize) -> Printed {
        match scalar {
            Scalar::String => self.string(start, end),
            Scalar::Bytes => {
                let bytes = &self.buf[start..end];
                self.out.push(b'"');
                let at = self.out.len();
                self.out.resize(at + bytes.len().div_ceil(3) * 4, 0);
                let written = BASE64_STANDARD
                    .encode_slice(bytes, &mut self.out[at..])
                    .map_err(|_| Unsupported)?;
                self.out.truncate(at + written);
                self.out.push(b'"');
                Ok(())
            }
            Scalar::Float => {
                let value = self.f32_at(start, end)?;
                self.float(f64::from(value), |s| s.serialize_f32(value))
            }
            Scalar::Double => {
                let value = self.f64_at(start, end)?;
                self.float(value, |s| s.serialize_f64(value))
            }
            _ if scalar.wire() == VARINT => {
                let raw = self.varint(start, end)?;
                self.varint_scalar(scalar, raw)
            }
            Scalar::Fixed64 | Scalar::Sfixed64 => {
                self.out.push(b'"');
                self.number(scalar, start, end)?;
                self.out.push(b'"');
                Ok(())
            }
            _ => self.number(scalar, start, end),
        }
    }

    /// A value of a varint kind, read as `raw`: 64-bit integers quoted.
    #[inline(always)]
    fn varint_scalar(&mut self, scalar: Scalar, raw: u64) -> Printed {
        let mut digits = itoa::Buffer::new();
        let text = match scalar {
            Scalar::Bool => {
                self.out
                    .extend_from_slice(if raw != 0 { b"true" } else { b"false" });
                return Ok(());
            }
            Scalar::Int32 => digits.format(raw as i32),
            Scalar::Uint32 => digits.format(raw as u32),
            Scalar::Sint32 => digits.format(zigzag32(raw)),
            Scalar::Int64 => return self.quoted(digits.format(raw as i64)),
            Scalar::Uint64 => return self.quoted(digits.format(raw)),
            Scalar::Sint64 => return self.quoted(digits.format(zigzag64(raw))),
            _ => return Err(Unsupported),
        };
        self.out.extend_from_slice(text.as_bytes());
        Ok(())
    }

    /// A 64-bit integer's digits, as a string (proto3 JSON's form).
    fn quoted(&mut self, digits: &str) -> Printed {
        push_quoted(digits.as_bytes(), &mut self.out);
        Ok(())
    }

    /// A number without quotes.
    fn number(&mut self, scalar: Scalar, start: usize, end: usize) -> Printed {
        match self.integer_at(scalar, start, end)? {
            Integer::Signed(value) => self.integer(value),
            Integer::Unsigned(value) => self.unsigned(value),
        }
        Ok(())
    }

    /// An integer scalar's value, read as its type reads it.
    #[inline]
    fn integer_at(&self, scalar: Scalar, start: usize, end: usize) -> Result<Integer, Unsupported> {
        Ok(match scalar {
            Scalar::Int32 => Integer::Signed(i64::from(self.varint(start, end)? as i32)),
            Scalar::Int64 => Integer::Signed(self.varint(start, end)? as i64),
            Scalar::Uint32 => Integer::Unsigned(u64::from(self.varint(start, end)? as u32)),
            Scalar::Uint64 => Integer::Unsigned(self.varint(start, end)?),
            Scalar::Sint32 => Integer::Signed(i64::from(zigzag32(self.varint(start, end)?))),
            Scalar::Sint64 => Integer::Signed(zigzag64(self.varint(start, end)?)),
            Scalar::Fixed32 => {
                Integer::Unsigned(u64::from(u32::from_le_bytes(self.fixed(start, end)?)))
            }
            Scalar::Sfixed32 => {
                Integer::Signed(i64::from(i32::from_le_bytes(self.fixed(start, end)?)))
            }
            Scalar::Fixed64 => Integer::Unsigned(u64::from_le_bytes(self.fixed(start, end)?)),
            Scalar::Sfixed64 => Integer::Signed(i64::from_le_bytes(self.fixed(start, end)?)),
            Scalar::Bool => Integer::Unsigned(u64::from(self.varint(start, end)? != 0)),
            _ => return Err(Unsupported),
        })
    }

    fn integer(&mut self, value: i64) {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn unsigned(&mut self, value: u64) {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Finite floats as serde_json prints them; the others as strings.
    fn float(
        &mut self,
        value: f64,
        finite: impl FnOnce(&mut serde_json::Serializer<&mut Vec<u8>>) -> serde_json::Result<()>,
    ) -> Printed {
        if value.is_finite() {
            finite(&mut serde_json::Serializer::new(&mut self.out)).map_err(|_| Unsupported)
        } else {
            let text: &[u8] = if value.is_nan() {
                b"\"NaN\""
            } else if value > 0.0 {
                b"\"Infinity\""
            } else {
                b"\"-Infinity\""
            };
            self.out.extend_from_slice(text);
            Ok(())
        }
    }

    #[inline(always)]
    fn string(&mut self, start: usize, end: usize) -> Printed {
        let bytes = &self.buf[start..end];
        // Most strings are ASCII with nothing to escape (ids, names, codes):
        // one pass shows they are UTF-8 and print as they are.
        if is_plain_ascii(bytes) {
            push_quoted(bytes, &mut self.out);
        } else {
            let text = std::str::from_utf8(bytes).map_err(|_| Unsupported)?;
            write_json_str(text, &mut self.out);
        }
        Ok(())
    }

    fn timestamp(&mut self, start: usize, end: usize) -> Printed {
        let (seconds, nanos) = self.seconds_nanos(start, end)?;
        if !(MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&seconds) {
            return Err(Unsupported);
        }
        if (0..1_000_000_000).contains(&nanos) {
            self.out.push(b'"');
            write_rfc3339(seconds, nanos, &mut self.out);
            self.out.push(b'"');
        } else {
            // Unnormalized nanos: let prost-types fold them into the seconds.
            self.display(&prost_types::Timestamp { seconds, nanos });
        }
        Ok(())
    }

    fn duration(&mut self, start: usize, end: usize) -> Printed {
        let (seconds, nanos) = self.seconds_nanos(start, end)?;
        if !duration_in_range(seconds, nanos) {
            return Err(Unsupported);
        }
        let duration = prost_types::Duration { seconds, nanos };
        self.display(&duration);
        Ok(())
    }

    fn display(&mut self, value: &dyn std::fmt::Display) {
        use std::io::Write as _;
        self.out.push(b'"');
        // Writing to a Vec cannot fail.
        let _ = write!(self.out, "{value}");
        self.out.push(b'"');
    }

    /// Fields 1 (int64) and 2 (int32) of a Timestamp or Duration, the last
    /// of each, in one pass (two timestamps per order in a list).
    fn seconds_nanos(&self, start: usize, end: usize) -> Result<(i64, i32), Unsupported> {
        let (mut seconds, mut nanos) = (0, 0);
        let mut pos = start;
        while pos < end {
            let (number, wire) = read_tag(self.buf, &mut pos, end)?;
            match number {
                1 | 2 if wire != VARINT => return Err(Unsupported),
                1 => seconds = read_varint(self.buf, &mut pos, end)? as i64,
                2 => nanos = read_varint(self.buf, &mut pos, end)? as i32,
                _ => {
                    self.value_range(wire, &mut pos, end)?;
                }
            }
        }
        Ok((seconds, nanos))
    }

    /// The last occurrence of a wrapper's field 1 in its bytes; those it
    /// replaces are checked.
    fn wrapped(
        &self,
        scalar: Scalar,
        start: usize,
        end: usize,
    ) -> Result<Option<(usize, usize)>, Unsupported> {
        let mut found = None;
        let mut pos = start;
        while pos < end {
            let (number, wire) = read_tag(self.buf, &mut pos, end)?;
            let range = self.value_range(wire, &mut pos, end)?;
            if number == 1 {
                if wire != scalar.wire() {
                    return Err(Unsupported);
                }
                if let Some((start, end)) = found.replace(range) {
                    self.check_value(&ValueKind::Scalar(scalar), start, end, 0)?;
                }
            }
        }
        Ok(found)
    }

    fn varint(&self, start: usize, end: usize) -> Result<u64, Unsupported> {
        let mut pos = start;
        read_varint(self.buf, &mut pos, end)
    }

    fn fixed<const N: usize>(&self, start: usize, end: usize) -> Result<[u8; N], Unsupported> {
        self.buf[start..end].try_into().map_err(|_| Unsupported)
    }

    fn f32_at(&self, start: usize, end: usize) -> Result<f32, Unsupported> {
        Ok(f32::from_le_bytes(self.fixed(start, end)?))
    }

    fn f64_at(&self, start: usize, end: usize) -> Result<f64, Unsupported> {
        Ok(f64::from_le_bytes(self.fixed(start, end)?))
    }
}

// === Checking what is not printed ===

impl Printer<'_> {
    /// The entries `run..next` of a field that is not printed.
    fn check_run(&self, field: &FieldPlan, run: usize, next: usize) -> Printed {
        for i in run..next {
            self.check_entry(field, self.entries[i], self.depth + 1)?;
        }
        Ok(())
    }

    /// One occurrence of `field`, read as decoding reads it; `depth` is the
    /// nesting of a message it holds.
    fn check_entry(&self, field: &FieldPlan, entry: Entry, depth: usize) -> Printed {
        let one = field.value.wire();
        match field.shape {
            Shape::Map(key) => {
                let parsed = self.map_entry(entry.start, entry.end, key, &field.value, depth)?;
                if let Some((_, start, end)) = parsed.key {
                    self.check_value(&ValueKind::Scalar(key), start, end, depth)?;
                }
                if let Some((_, start, end)) = parsed.value {
                    self.check_value(&field.value, start, end, depth)?;
                }
                Ok(())
            }
            Shape::List if entry.wire == LEN && one != LEN => {
                let mut pos = entry.start;
                while pos < entry.end {
                    self.value_range(one, &mut pos, entry.end)?;
                }
                Ok(())
            }
            _ => self.check_value(&field.value, entry.start, entry.end, depth),
        }
    }

    /// A value whose bytes [`Self::value_range`] delimited: numbers need
    /// nothing more; strings must be UTF-8, messages decode.
    fn check_value(&self, value: &ValueKind, start: usize, end: usize, depth: usize) -> Printed {
        match value {
            ValueKind::Scalar(Scalar::String) => std::str::from_utf8(&self.buf[start..end])
                .map(drop)
                .map_err(|_| Unsupported),
            ValueKind::Message(plan) => {
                let plan = self.plans.messages.get(*plan).ok_or(Unsupported)?;
                self.check_message(plan, start, end, depth)
            }
            ValueKind::Scalar(_) | ValueKind::Enum(_) => Ok(()),
        }
    }

    /// A message's bytes, by its fields whatever its form, down to the
    /// shared nesting limit (decoding stops there too).
    fn check_message(&self, plan: &MessagePlan, start: usize, end: usize, depth: usize) -> Printed {
        if depth > MAX_DEPTH || matches!(plan.form, Form::Unsupported) {
            return Err(Unsupported);
        }
        let mut pos = start;
        while pos < end {
            if let Some(entry) = self.entry_at(plan, &mut pos, end)? {
                let field = &plan.fields[usize::from(entry.field)];
                self.check_entry(field, entry, depth + 1)?;
            }
        }
        Ok(())
    }
}

/// `seconds` (years 1 to 9999) and `nanos` (0 to 999,999,999) as RFC 3339
/// in UTC, with 0, 3, 6 or 9 fractional digits: what prost-types prints,
/// without its formatting machinery (it showed in profiles of list replies).
pub(crate) fn write_rfc3339(seconds: i64, nanos: i32, out: &mut Vec<u8>) {
    // Callers keep `seconds` in range, so every count below is unsigned:
    // seconds and days since 0001-01-01, then days since 0000-03-01.
    let since_year_one = u64::try_from(seconds.saturating_sub(MIN_TIMESTAMP)).unwrap_or(0);
    let (days, second_of_day) = (since_year_one / 86_400, (since_year_one % 86_400) as u32);
    let z = u32::try_from(days + 306).unwrap_or(0);
    // Days → civil date (Howard Hinnant's algorithm).
    let (era, day_of_era) = (z / 146_097, z % 146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u32::from(month <= 2);
    // Into a fixed buffer, two digits at a time; one copy out.
    let mut text = *b"0000-00-00T00:00:00.000000000Z";
    put_two(&mut text[0..2], year / 100);
    put_two(&mut text[2..4], year % 100);
    put_two(&mut text[5..7], month);
    put_two(&mut text[8..10], day);
    put_two(&mut text[11..13], second_of_day / 3_600);
    put_two(&mut text[14..16], second_of_day / 60 % 60);
    put_two(&mut text[17..19], second_of_day % 60);
    let nanos = nanos.unsigned_abs() % 1_000_000_000;
    let digits = match nanos {
        0 => 0,
        _ if nanos.is_multiple_of(1_000_000) => 3,
        _ if nanos.is_multiple_of(1_000) => 6,
        _ => 9,
    };
    if digits == 0 {
        text[19] = b'Z';
        out.extend_from_slice(&text[..20]);
    } else {
        put_two(&mut text[20..22], nanos / 10_000_000);
        put_two(&mut text[22..24], nanos / 100_000 % 100);
        put_two(&mut text[24..26], nanos / 1_000 % 100);
        put_two(&mut text[26..28], nanos / 10 % 100);
        text[28] = b'0' + (nanos % 10) as u8;
        text[20 + digits] = b'Z';
        out.extend_from_slice(&text[..21 + digits]);
    }
}

/// `text` as a JSON string. Most strings hold nothing to escape: those are
/// copied whole; the rest go through serde_json's escaping (same output).
pub(crate) fn write_json_str(text: &str, out: &mut Vec<u8>) {
    let plain = is_plain_ascii(text.as_bytes())
        || !text.bytes().fold(false, |escape, b| {
            escape | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
    if plain {
        push_quoted(text.as_bytes(), out);
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

/// `bytes` between quotes, as they are.
fn push_quoted(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    out.extend_from_slice(bytes);
    out.push(b'"');
}

/// Whether a varint of kind `scalar` read as `raw` is its default: only the
/// low 32 bits of a 32-bit kind count, as in decoding.
fn is_zero(scalar: Scalar, raw: u64) -> bool {
    match scalar {
        Scalar::Int32 | Scalar::Uint32 | Scalar::Sint32 => raw as u32 == 0,
        _ => raw == 0,
    }
}

/// A `sint32` from its zigzag varint (the low 32 bits, as in decoding).
fn zigzag32(raw: u64) -> i32 {
    let raw = raw as u32;
    (raw >> 1) as i32 ^ -((raw & 1) as i32)
}

/// A `sint64` from its zigzag varint.
fn zigzag64(raw: u64) -> i64 {
    (raw >> 1) as i64 ^ -((raw & 1) as i64)
}

/// Whether `bytes` go into a JSON string as they are: ASCII without a
/// control character, quote or backslash (what serde_json escapes), so
/// also UTF-8. A machine word at a time rather than a byte: about a dozen
/// operations for eight bytes instead of four comparisons for each.
fn is_plain_ascii(bytes: &[u8]) -> bool {
    let mut special = bytes.chunks_exact(8).fold(0, |special, word| {
        // Eight bytes each: the conversion cannot fail.
        special
            | word
                .try_into()
                .map_or(u64::MAX, |w| scan::marked(u64::from_le_bytes(w)))
    });
    // The last 1 to 7 bytes, in a word that overlaps those already seen.
    if let Some(last) = bytes.last_chunk::<8>() {
        special |= scan::marked(u64::from_le_bytes(*last));
    } else if let (Some(head), Some(tail)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        let word =
            u64::from(u32::from_le_bytes(*head)) | u64::from(u32::from_le_bytes(*tail)) << 32;
        special |= scan::marked(word);
    } else {
        // Under four bytes, padded with spaces.
        let word = bytes
            .iter()
            .rev()
            .fold(SPACES, |word, b| word << 8 | u64::from(*b));
        special |= scan::marked(word);
    }
    special == 0
}

/// Eight spaces: nothing to escape.
const SPACES: u64 = 0x2020_2020_2020_2020;

/// A `Duration` prost-reflect accepts: within ±10,000 years, its nanos
/// within a second.
pub(super) fn duration_in_range(seconds: i64, nanos: i32) -> bool {
    seconds.unsigned_abs() <= MAX_DURATION_SECONDS && nanos.unsigned_abs() <= 999_999_999
}

/// `value` (below 100) as two ASCII digits.
fn put_two(out: &mut [u8], value: u32) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let at = (value % 100) as usize * 2;
    // Byte by byte: a two-byte `copy_from_slice` is a call to memcpy.
    out[0] = PAIRS[at];
    out[1] = PAIRS[at + 1];
}

/// The masks below `field`, or `None` when the masks hide it.
fn field_masks<'m>(field: &FieldPlan, masks: Masks<'m>) -> Option<Masks<'m>> {
    let omit = match masks.omit.and_then(|omit| omit.child(&field.descriptor)) {
        Some(child) if child.is_empty() => return None,
        child => child,
    };
    let keep = match masks.keep {
        None => None,
        Some(keep) => match keep.child(&field.descriptor) {
            None => return None,
            Some(child) if child.is_empty() => None,
            Some(child) => Some(child),
        },
    };
    Some(Masks { omit, keep })
}

/// A field's key at `pos`: its number (1 to 2^29 - 1, as decoding requires)
/// and wire type.
fn read_tag(buf: &[u8], pos: &mut usize, end: usize) -> Result<(u32, u8), Unsupported> {
    let key = read_varint(buf, pos, end)?;
    let number = u32::try_from(key >> 3).map_err(|_| Unsupported)?;
    if number == 0 || number > MAX_FIELD_NUMBER {
        return Err(Unsupported);
    }
    Ok((number, (key & 7) as u8))
}

/// A base-128 varint at `pos` (at most ten bytes, before `end`).
#[inline]
fn read_varint(buf: &[u8], pos: &mut usize, end: usize) -> Result<u64, Unsupported> {
    // One byte: the tags of fields 1 to 15, short lengths, small numbers.
    match buf.get(*pos) {
        Some(&byte) if byte < 0x80 && *pos < end => {
            *pos += 1;
            Ok(u64::from(byte))
        }
        _ => read_long_varint(buf, pos, end),
    }
}

fn read_long_varint(buf: &[u8], pos: &mut usize, end: usize) -> Result<u64, Unsupported> {
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *buf.get(*pos).filter(|_| *pos < end).ok_or(Unsupported)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        // A tenth byte holds only the 64th bit: more overflows, and prost
        // refuses the varint.
        if byte < 0x80 && (i < 9 || byte < 2) {
            return Ok(value);
        }
    }
    Err(Unsupported)
}

/// The test protos' `EchoMessage` and its plans: what the tests of the
/// printer and of both readers run on.
#[cfg(test)]
struct Echo {
    desc: prost_reflect::MessageDescriptor,
    plans: JsonPlans,
    root: usize,
}

#[cfg(test)]
fn echo() -> Echo {
    let pool = crate::testing::pool();
    let plans = JsonPlans::new(&pool, &crate::transcode::FieldRules::new(&pool, &[]));
    let desc = pool
        .get_message_by_name("protogate.testing.v1.EchoMessage")
        .unwrap();
    let root = plans.index_of(&desc).unwrap();
    Echo { desc, plans, root }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_reflect::DynamicMessage;

    use super::*;
    use crate::{pb::protogate::testing::v1::EchoMessage, transcode::Declined};

    #[test]
    fn a_guessed_key_names_the_field_the_sorted_keys_name() {
        let pool = crate::testing::pool();
        let plans = JsonPlans::new(&pool, &FieldRules::new(&pool, &[]));
        for plan in plans.messages.iter() {
            let mut keys: Vec<Vec<u8>> = vec![Vec::new(), b"x".to_vec()];
            for field in plan.fields.iter() {
                let json = field.descriptor.json_name().as_bytes();
                keys.extend([json.to_vec(), field.descriptor.name().as_bytes().to_vec()]);
                let mut longer = json.to_vec();
                longer.push(b'_');
                keys.push(longer);
                keys.push(json[..json.len() - 1].to_vec());
            }
            for key in &keys {
                for guess in 0..plan.fields.len() + 2 {
                    assert_eq!(
                        plan.key_index(key, guess),
                        plan.named_json(key),
                        "{} with the guess {guess}",
                        String::from_utf8_lossy(key)
                    );
                }
            }
        }
        let guessable = plans.messages.iter().flat_map(|p| p.fields.iter());
        assert!(guessable.filter(|field| field.guessable).count() > 100);
    }

    impl Echo {
        fn print(&self, reply: &EchoMessage) -> String {
            self.print_wire(&reply.encode_to_vec())
        }

        fn print_wire(&self, wire: &[u8]) -> String {
            let options = TranscodeOptions::default();
            let printed = self
                .plans
                .print(self.root, wire, None, Masks::default(), &options);
            String::from_utf8(printed.unwrap()).unwrap()
        }

        /// prost-reflect's JSON of the same reply, as a JSON tree.
        fn reference(&self, wire: &[u8]) -> serde_json::Value {
            let decoded = DynamicMessage::decode(self.desc.clone(), wire);
            serde_json::to_value(decoded.unwrap()).unwrap()
        }

        fn parse(&self, json: &str) -> Result<EchoMessage, Declined> {
            let mut wire = Vec::new();
            let options = TranscodeOptions::default();
            self.plans
                .encode_json(self.root, None, json.as_bytes(), &options, &mut wire)?;
            Ok(EchoMessage::decode(&wire[..]).unwrap())
        }

        /// What prost-reflect parses, written by prost.
        fn reference_parse(&self, json: &str) -> Result<EchoMessage, serde_json::Error> {
            let mut deserializer = serde_json::Deserializer::from_str(json);
            let message = DynamicMessage::deserialize(self.desc.clone(), &mut deserializer)?;
            Ok(EchoMessage::decode(&message.encode_to_vec()[..]).unwrap())
        }
    }

    fn refused(parsed: &Result<EchoMessage, Declined>) -> bool {
        matches!(parsed, Err(Declined::Invalid(_)))
    }

    #[test]
    fn map_entries_print_sorted_by_key() {
        let echo = echo();
        let labels = [("b", "2"), ("c", "3"), ("a", "1")];
        let reply = EchoMessage {
            labels: labels.map(|(k, v)| (k.into(), v.into())).into(),
            ..EchoMessage::default()
        };
        assert_eq!(
            echo.print(&reply),
            r#"{"labels":{"a":"1","b":"2","c":"3"}}"#
        );
    }

    #[test]
    fn map_keys_are_equal_by_value_whatever_bytes_encode_them() {
        let echo = echo();
        // `nested_by_id` (23) entries of `map<int32, Nested>`, each with
        // `Nested.value` (2) set to tell which one was kept.
        let entry = |key: &[u8], value: u8| {
            let mut entry = key.to_vec();
            entry.extend([0x12, 2, 0x10, value]);
            let mut field = vec![0xba, 0x01, entry.len() as u8];
            field.extend(entry);
            field
        };
        let cases: [(&[u8], &[u8], &str); 4] = [
            // An absent key and an explicit 0.
            (&[], &[0x08, 0], "0"),
            // A longer varint of 0.
            (&[0x08, 0], &[0x08, 0x80, 0x00], "0"),
            // Bits past the 32nd that an int32 drops: 2^32 + 5 is 5.
            (&[0x08, 5], &[0x08, 0x85, 0x80, 0x80, 0x80, 0x10], "5"),
            // -1 as its ten bytes and as 2^32 - 1, which an int32 reads as -1.
            (
                &[
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                &[0x08, 0xff, 0xff, 0xff, 0xff, 0x0f],
                "-1",
            ),
        ];
        for (first, second, key) in cases {
            let mut wire = entry(first, 1);
            wire.extend(entry(second, 2));
            let printed = echo.print_wire(&wire);
            assert_eq!(
                printed,
                format!(r#"{{"nestedById":{{"{key}":{{"value":2}}}}}}"#)
            );
            let printed: serde_json::Value = serde_json::from_str(&printed).unwrap();
            assert_eq!(printed, echo.reference(&wire), "{wire:?}");
        }
    }

    #[test]
    fn floats_print_in_their_own_shortest_form() {
        let echo = echo();
        let reply = EchoMessage {
            float_value: 0.1,
            ..EchoMessage::default()
        };
        assert_eq!(echo.print(&reply), r#"{"floatValue":0.1}"#);
        // A JSON tree holds a double: how prost-reflect prints a filtered reply.
        let reference = echo.reference(&reply.encode_to_vec());
        assert_eq!(reference["floatValue"], 0.10000000149011612);
    }

    #[test]
    fn negative_zero_is_kept_both_ways() {
        let echo = echo();
        // Fields 12 (float) and 13 (double) as a runtime writes them; prost,
        // like prost-reflect, would leave them out.
        let mut wire = Vec::new();
        encode::key(12, encode::FIXED32, &mut wire);
        wire.extend_from_slice(&(-0.0f32).to_le_bytes());
        encode::key(13, encode::FIXED64, &mut wire);
        wire.extend_from_slice(&(-0.0f64).to_le_bytes());
        assert_eq!(
            echo.print_wire(&wire),
            r#"{"floatValue":-0.0,"doubleValue":-0.0}"#
        );
        assert_eq!(echo.reference(&wire), serde_json::json!({}));

        let json = r#"{"doubleValue":-0.0,"floatWrapper":-0.0,"doubleByKey":{"k":-0.0}}"#;
        let negative = |m: &EchoMessage| {
            [
                m.double_value,
                f64::from(m.float_wrapper.unwrap_or(1.0)),
                m.double_by_key["k"],
            ]
            .map(|v| v.to_bits() == (-0.0f64).to_bits())
        };
        assert_eq!(negative(&echo.parse(json).unwrap()), [true; 3]);
        assert_eq!(negative(&echo.reference_parse(json).unwrap()), [false; 3]);
        // The encoder of the general way writes it too.
        let decoded = DynamicMessage::decode(echo.desc, &wire[..]);
        let mut wire = Vec::new();
        encode::encode(&decoded.unwrap(), &mut wire);
        let written = EchoMessage::decode(&wire[..]).unwrap();
        assert_eq!(written.double_value.to_bits(), (-0.0f64).to_bits());
    }

    #[test]
    fn the_empty_any_is_braces_both_ways() {
        let echo = echo();
        let parsed = echo.parse(r#"{"any":{}}"#).unwrap();
        assert_eq!(parsed.any, Some(prost_types::Any::default()));
        assert!(echo.reference_parse(r#"{"any":{}}"#).is_err());
        assert_eq!(echo.print(&parsed), r#"{"any":{}}"#);
    }

    #[test]
    fn integers_in_any_notation_are_exact() {
        let echo = echo();
        let json =
            r#"{"int64Value":"1e3","int32Value":100.0,"uint64Value":1.8446744073709551615e19}"#;
        let parsed = echo.parse(json).unwrap();
        assert_eq!(
            (parsed.int64_value, parsed.int32_value, parsed.uint64_value),
            (1_000, 100, u64::MAX)
        );
        assert!(
            echo.reference_parse(json).is_err(),
            "a string in exponent form"
        );
        let rounded = r#"{"int32Value":1.0000000000000000001}"#;
        assert!(refused(&echo.parse(rounded)));
        assert_eq!(echo.reference_parse(rounded).unwrap().int32_value, 1);
        let saturated = r#"{"int64Value":9223372036854775808.0}"#;
        assert!(refused(&echo.parse(saturated)));
        assert_eq!(
            echo.reference_parse(saturated).unwrap().int64_value,
            i64::MAX
        );
    }

    #[test]
    fn floats_are_the_nearest_f32_of_the_nearest_double() {
        let echo = echo();
        let max = r#"{"floatValue":3.4028235e38}"#;
        assert_eq!(echo.parse(max).unwrap().float_value, f32::MAX);
        assert!(echo.reference_parse(max).is_err());
        for beyond in [r#"{"floatValue":"1e39"}"#, r#"{"doubleValue":"1e400"}"#] {
            assert!(refused(&echo.parse(beyond)), "{beyond}");
            let reference = echo.reference_parse(beyond).unwrap();
            assert!(reference.float_value.is_infinite() || reference.double_value.is_infinite());
        }
        // Just above the midpoint of two floats, whose nearest double is
        // that midpoint: the double's nearest float (ties to even) is 1.0.
        let literal = "1.000000059604644776";
        let narrowed = literal.parse::<f64>().unwrap() as f32;
        assert_eq!(narrowed, 1.0);
        assert_ne!(literal.parse::<f32>().unwrap(), narrowed);
        for json in [
            format!(r#"{{"floatValue":{literal}}}"#),
            format!(r#"{{"floatValue":"{literal}"}}"#),
        ] {
            assert_eq!(echo.parse(&json).unwrap().float_value, narrowed, "{json}");
        }
        let string = format!(r#"{{"floatValue":"{literal}"}}"#);
        assert_ne!(echo.reference_parse(&string).unwrap().float_value, narrowed);
    }

    /// What the printer reads but does not print is checked as decoding
    /// checks it (the fuzz findings `fuzz/corpus/reply/*-not-*`): each reply
    /// below prints when its payload is sound, and is refused, as
    /// prost-reflect refuses to decode it, when the payload is not UTF-8
    /// (or, for `Empty`, not a field).
    #[test]
    fn what_is_not_printed_is_still_checked() {
        let echo = echo();
        let field = |number: u32, value: &[u8]| {
            let mut out = Vec::new();
            encode::key(number, encode::LEN, &mut out);
            encode::bytes(value, &mut out);
            out
        };
        let text = |sound: bool| if sound { &b"ok"[..] } else { &[b'o', 0xff][..] };
        let nested_name = |sound| field(17, &field(1, text(sound)));
        let keep = MaskTree::parse(&echo.desc, ["stringValue"], |_, _| false).unwrap();
        let omit = MaskTree::parse(&echo.desc, ["nested"], |_, _| false).unwrap();
        let kept = Masks {
            omit: None,
            keep: Some(&keep),
        };
        let omitted = Masks {
            omit: Some(&omit),
            keep: None,
        };
        let body = echo.desc.get_field_by_name("nested").unwrap();
        type Reply<'a> = Box<dyn Fn(bool) -> Vec<u8> + 'a>;
        let cases: [(&str, Reply<'_>, Masks<'_>, Option<&FieldDescriptor>); 11] = [
            (
                "an Empty's bytes",
                Box::new(|sound| field(40, if sound { &[0x08, 0x01] } else { &[0x08] })),
                Masks::default(),
                None,
            ),
            (
                "an internal field",
                Box::new(|sound| field(47, text(sound))),
                Masks::default(),
                None,
            ),
            (
                "an internal field after a printed one",
                Box::new(|sound| [field(1, b"a"), field(47, text(sound))].concat()),
                Masks::default(),
                None,
            ),
            (
                "an internal field of a nested message",
                Box::new(|sound| field(17, &field(5, text(sound)))),
                Masks::default(),
                None,
            ),
            (
                "a field the client's fields leave out",
                Box::new(|sound| [field(1, b"a"), nested_name(sound)].concat()),
                kept,
                None,
            ),
            (
                "a configured omission",
                Box::new(nested_name),
                omitted,
                None,
            ),
            (
                "a field beside the response_body",
                Box::new(|sound| [field(1, text(sound)), field(17, &[])].concat()),
                Masks::default(),
                Some(&body),
            ),
            (
                "a singular value a later one replaces, out of order",
                Box::new(|sound| {
                    [vec![0x10, 0x01], field(1, text(sound)), field(1, b"b")].concat()
                }),
                Masks::default(),
                None,
            ),
            (
                "a map value a later entry of its key replaces",
                Box::new(|sound| {
                    let entry =
                        |value: &[u8]| field(22, &[field(1, b"k"), field(2, value)].concat());
                    [entry(text(sound)), entry(b"b")].concat()
                }),
                Masks::default(),
                None,
            ),
            (
                "a map entry's value given twice",
                Box::new(|sound| {
                    field(
                        22,
                        &[field(1, b"k"), field(2, text(sound)), field(2, b"b")].concat(),
                    )
                }),
                Masks::default(),
                None,
            ),
            (
                "a wrapper's value given twice",
                Box::new(|sound| field(34, &[field(1, text(sound)), field(1, b"b")].concat())),
                Masks::default(),
                None,
            ),
        ];
        let options = TranscodeOptions::default();
        for (what, reply, masks, body) in cases {
            for sound in [true, false] {
                let wire = reply(sound);
                let printed = echo.plans.print(echo.root, &wire, body, masks, &options);
                let decoded = DynamicMessage::decode(echo.desc.clone(), &wire[..]);
                assert_eq!(
                    (printed.is_ok(), decoded.is_ok()),
                    (sound, sound),
                    "{what}, sound {sound}: {wire:?}"
                );
            }
        }
    }

    /// A hidden message is checked by its plan down to the nesting limit,
    /// not further: deeper bytes are declined, and decoding refuses them.
    #[test]
    fn hidden_messages_are_checked_without_unbounded_recursion() {
        let echo = echo();
        // `nested.child.child...` far past the limit, hidden from the client.
        let mut nested = Vec::new();
        for _ in 0..10 * MAX_DEPTH {
            let mut outer = Vec::new();
            encode::key(4, encode::LEN, &mut outer);
            encode::bytes(&nested, &mut outer);
            nested = outer;
        }
        let mut wire = Vec::new();
        encode::key(17, encode::LEN, &mut wire);
        encode::bytes(&nested, &mut wire);
        let keep = MaskTree::parse(&echo.desc, ["stringValue"], |_, _| false).unwrap();
        let masks = Masks {
            omit: None,
            keep: Some(&keep),
        };
        let options = TranscodeOptions::default();
        let printed = echo.plans.print(echo.root, &wire, None, masks, &options);
        assert_eq!(printed, Err(Unsupported));
        assert!(DynamicMessage::decode(echo.desc, &wire[..]).is_err());
    }

    /// Found by `wire_variations_print_as_prost_reflect_decodes_them`: a
    /// tenth varint byte past the 64th bit, and field number 0 where the
    /// printer skipped other fields (map entries, wrappers, timestamps).
    #[test]
    fn bad_varints_and_keys_are_refused_as_prost_refuses_them() {
        let echo = echo();
        let options = TranscodeOptions::default();
        let varint = |last: u8| [&[0x18][..], &[0xff; 9], &[last]].concat();
        let cases = [
            (varint(0x01), true),
            (varint(0x02), false),
            (varint(0x7f), false),
            (vec![0xb2, 0x01, 0x05, 0x0a, 0x01, b'k', 0x00, 0x00], false),
            (vec![0xda, 0x01, 0x02, 0x00, 0x00], false),
            (vec![0xc2, 0x01, 0x02, 0x00, 0x00], false),
        ];
        for (wire, valid) in cases {
            let printed = echo
                .plans
                .print(echo.root, &wire, None, Masks::default(), &options);
            let decoded = DynamicMessage::decode(echo.desc.clone(), &wire[..]);
            assert_eq!(
                (printed.is_ok(), decoded.is_ok()),
                (valid, valid),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn a_key_given_twice_is_refused() {
        let echo = echo();
        let twice = r#"{"stringValue":"a","string_value":"b"}"#;
        assert!(refused(&echo.parse(twice)));
        assert_eq!(echo.reference_parse(twice).unwrap().string_value, "b");
    }

    #[test]
    fn a_null_list_of_values_is_refused() {
        let echo = echo();
        for body in [r#"{"repeatedValue":null}"#, r#"{"repeated_null":null}"#] {
            assert!(refused(&echo.parse(body)), "{body}");
            let theirs = echo.reference_parse(body).unwrap();
            assert_eq!(theirs.repeated_value.len() + theirs.repeated_null.len(), 1);
        }
        let empty = echo
            .parse(r#"{"repeatedValue":[],"repeatedNull":[]}"#)
            .unwrap();
        assert_eq!(empty, EchoMessage::default());
        // Other lists' `null` is their default.
        let other = echo
            .parse(r#"{"repeatedString":null,"repeatedNested":null}"#)
            .unwrap();
        assert_eq!(other, EchoMessage::default());
    }

    /// Every character of every escape class (and of none: ASCII, DEL,
    /// two-, three- and four-byte UTF-8), at every place of strings from
    /// empty to three words long, in text and as a reply's string field.
    #[test]
    fn json_strings_match_serde_json() {
        let echo = echo();
        let mut chars: Vec<char> = (0..0x80u8).map(char::from).collect();
        chars.extend(['é', '✓', '\u{2028}', '😀']);
        for len in 0..=24 {
            for at in 0..len.max(1) {
                for c in &chars {
                    let text: String = (0..len)
                        .map(|i| {
                            if i == at {
                                *c
                            } else {
                                char::from(b'a' + (i % 26) as u8)
                            }
                        })
                        .collect();
                    let expected = serde_json::to_vec(&text).unwrap();
                    let mut ours = Vec::new();
                    write_json_str(&text, &mut ours);
                    assert_eq!(ours, expected, "{text:?}");
                    let reply = EchoMessage {
                        string_value: text.clone(),
                        ..EchoMessage::default()
                    };
                    let printed = echo.print(&reply);
                    let field = printed
                        .strip_prefix(r#"{"stringValue":"#)
                        .and_then(|p| p.strip_suffix('}'))
                        .unwrap_or(r#""""#);
                    assert_eq!(field.as_bytes(), expected, "{text:?}");
                }
            }
        }
    }

    /// The word-at-a-time test against the byte-at-a-time definition, for
    /// every byte value at every place of short and longer strings.
    #[test]
    fn plain_ascii_is_what_needs_no_escape_nor_utf8_check() {
        let plain = |b: u8| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\';
        for len in 0..=24 {
            let base: Vec<u8> = (0..len).map(|i| b' ' + (i * 7 % 95) as u8).collect();
            let base: Vec<u8> = base
                .into_iter()
                .map(|b| if plain(b) { b } else { b'a' })
                .collect();
            assert!(is_plain_ascii(&base), "{base:?}");
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = base.clone();
                    bytes[at] = b;
                    assert_eq!(is_plain_ascii(&bytes), plain(b), "{bytes:?}");
                }
            }
        }
    }

    /// Every day of the range and a spread of times print as prost-types prints them.
    #[test]
    fn rfc3339_matches_prost_types() {
        let (min, max) = (MIN_TIMESTAMP, MAX_TIMESTAMP);
        let mut seconds: Vec<i64> = (min / 86_400..=max / 86_400)
            .step_by(13)
            .map(|day| day * 86_400 + (day.rem_euclid(86_400) * 7_919) % 86_400)
            .collect();
        seconds.extend([min, max, 0, -1, 1, 951_782_400, 951_868_799, 4_107_542_400]);
        for (i, seconds) in seconds
            .into_iter()
            .filter(|s| (min..=max).contains(s))
            .enumerate()
        {
            let nanos = [0, 5_000_000, 120_000, 7, 999_999_999][i % 5];
            let mut out = Vec::new();
            write_rfc3339(seconds, nanos, &mut out);
            let expected = prost_types::Timestamp { seconds, nanos }.to_string();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                expected,
                "{seconds} {nanos}"
            );
        }
    }
}
