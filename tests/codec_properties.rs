//! Generated differential tests of the hand-written JSON codecs against
//! prost-reflect: descriptor *shapes* are generated (every scalar kind,
//! packed and unpacked lists, maps with every key kind, oneofs, recursion,
//! open enums with unknown numbers, proto3 `optional`, proto2 defaults and
//! `required`, every well-known type), built into a `DescriptorPool`, and
//! messages of those shapes are printed, parsed and encoded both ways.
//! Where the two differ by design the difference is one of those listed in
//! the module doc of `transcode/wire_json`.
//!
//! Cases per property: `PROPTEST_CASES` (a long soak: `PROPTEST_CASES=20000
//! cargo test --release --test codec_properties`). Failures are kept in
//! `proptest-regressions/` and replayed first.

mod common;

use std::collections::HashMap;

use proptest::{
    prelude::*,
    test_runner::{FileFailurePersistence, RngAlgorithm, TestRng, TestRunner},
};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MapKey,
    MessageDescriptor, ReflectMessage as _, SerializeOptions, Value,
};
use prost_types::{
    field_descriptor_proto::{Label as ProtoLabel, Type},
    DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
    FieldOptions, FileDescriptorProto, MessageOptions, MethodDescriptorProto, OneofDescriptorProto,
    ServiceDescriptorProto,
};
use protogate::{
    codec_entry::{parse_request, print_reply, read_request, scan_request},
    config::Config,
    http_rule::{BindingPlan, BodyPlan},
    pb::protogate::testing::v1::{
        test_service_server::{TestService, TestServiceServer},
        Deep, EchoMessage, FailRequest, Headers, SleepRequest, UpdateResourceRequest,
    },
    transcode::{
        encode_message, request_message, Declined, FieldRules, JsonPlans, MaskTree, ReplyFilter,
        ReplyShape, RequestParts, TranscodeOptions,
    },
};
use serde_json::{value::RawValue, Value as Json};
use tonic::{Request, Response, Status};

use common::Testing;

// === configuration ===

/// `cases` per property, or `PROPTEST_CASES` when set.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        max_shrink_iters: 2_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/codec_properties.txt",
        ))),
        ..ProptestConfig::default()
    }
}

fn testing_pool() -> DescriptorPool {
    let set = include_bytes!(concat!(env!("OUT_DIR"), "/protogate.testing.v1.binpb"));
    DescriptorPool::decode(&set[..]).unwrap()
}

// === descriptor shapes ===

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    Scalar(Type),
    Enum,
    Message(usize),
    Wkt(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Label {
    Single,
    /// proto3 `optional`; proto2 `optional` with a default.
    Optional,
    Required,
    Repeated {
        packed: Option<bool>,
    },
    Map(Type),
    Oneof(usize),
}

#[derive(Debug, Clone)]
struct FieldShape {
    ty: Ty,
    label: Label,
    /// Field numbers far apart (a sparse lookup) rather than 1, 2, 3.
    sparse: bool,
}

#[derive(Debug, Clone)]
struct Schema {
    proto2: bool,
    /// Fields declared in reverse number order.
    reversed: bool,
    messages: Vec<Vec<FieldShape>>,
}

const SCALARS: [Type; 15] = [
    Type::Double,
    Type::Float,
    Type::Int64,
    Type::Uint64,
    Type::Int32,
    Type::Fixed64,
    Type::Fixed32,
    Type::Bool,
    Type::String,
    Type::Bytes,
    Type::Uint32,
    Type::Sfixed32,
    Type::Sfixed64,
    Type::Sint32,
    Type::Sint64,
];

const MAP_KEYS: [Type; 12] = [
    Type::Int64,
    Type::Uint64,
    Type::Int32,
    Type::Fixed64,
    Type::Fixed32,
    Type::Bool,
    Type::String,
    Type::Uint32,
    Type::Sfixed32,
    Type::Sfixed64,
    Type::Sint32,
    Type::Sint64,
];

const WKTS: [&str; 17] = [
    "Timestamp",
    "Duration",
    "Struct",
    "Value",
    "ListValue",
    "Any",
    "FieldMask",
    "Empty",
    "DoubleValue",
    "FloatValue",
    "Int64Value",
    "UInt64Value",
    "Int32Value",
    "UInt32Value",
    "BoolValue",
    "StringValue",
    "BytesValue",
];

fn schema() -> impl Strategy<Value = Schema> {
    (any::<bool>(), any::<bool>(), 1usize..4)
        .prop_flat_map(|(proto2, reversed, count)| {
            let ty = prop_oneof![
                6 => prop::sample::select(SCALARS.to_vec()).prop_map(Ty::Scalar),
                1 => Just(Ty::Enum),
                2 => (0..count).prop_map(Ty::Message),
                2 => prop::sample::select(WKTS.to_vec()).prop_map(Ty::Wkt),
            ];
            let label = prop_oneof![
                4 => Just(Label::Single),
                1 => Just(Label::Optional),
                1 => Just(Label::Required),
                2 => any::<Option<bool>>().prop_map(|packed| Label::Repeated { packed }),
                1 => prop::sample::select(MAP_KEYS.to_vec()).prop_map(Label::Map),
                1 => (0usize..2).prop_map(Label::Oneof),
            ];
            let field = (ty, label, prop::bool::weighted(0.2))
                .prop_map(|(ty, label, sparse)| FieldShape { ty, label, sparse });
            let messages = prop::collection::vec(prop::collection::vec(field, 0..9), count);
            (Just(proto2), Just(reversed), messages)
        })
        .prop_map(|(proto2, reversed, messages)| Schema {
            proto2,
            reversed,
            messages,
        })
}

/// The schema as `gen.proto` (package `gen`: messages `M0`…, enum `E`,
/// service `S` with `Call(M0) returns (M0)`), built over the test protos'
/// pool, which holds the well-known types.
fn build(schema: &Schema) -> DescriptorPool {
    let mut messages = Vec::new();
    for (i, fields) in schema.messages.iter().enumerate() {
        let mut message = DescriptorProto {
            name: Some(format!("M{i}")),
            ..DescriptorProto::default()
        };
        let mut real_oneofs = Vec::new();
        let mut synthetic = Vec::new();
        for (j, shape) in fields.iter().enumerate() {
            let number = if shape.sparse {
                1000 + j as i32 * 37
            } else {
                j as i32 + 1
            };
            let name = format!("f{j}_v{i}");
            let (type_, type_name) = match shape.ty {
                Ty::Scalar(t) => (t, None),
                Ty::Enum => (Type::Enum, Some(".gen.E".to_owned())),
                Ty::Message(m) => (Type::Message, Some(format!(".gen.M{m}"))),
                Ty::Wkt(w) => (Type::Message, Some(format!(".google.protobuf.{w}"))),
            };
            let mut field = FieldDescriptorProto {
                name: Some(name.clone()),
                number: Some(number),
                r#type: Some(type_ as i32),
                type_name: type_name.clone(),
                label: Some(ProtoLabel::Optional as i32),
                ..FieldDescriptorProto::default()
            };
            let scalar = matches!(shape.ty, Ty::Scalar(_) | Ty::Enum);
            match shape.label {
                Label::Single => {}
                Label::Optional if schema.proto2 => {
                    field.default_value = default_value(shape.ty).map(str::to_owned);
                }
                Label::Optional if scalar => {
                    field.proto3_optional = Some(true);
                    field.oneof_index = Some(synthetic.len() as i32);
                    synthetic.push(format!("_{name}"));
                }
                Label::Optional => {}
                Label::Required if schema.proto2 => {
                    field.label = Some(ProtoLabel::Required as i32);
                    field.default_value = default_value(shape.ty).map(str::to_owned);
                }
                Label::Required => {}
                Label::Repeated { packed } => {
                    field.label = Some(ProtoLabel::Repeated as i32);
                    let packable = scalar && !matches!(type_, Type::String | Type::Bytes);
                    if let (Some(packed), true) = (packed, packable) {
                        field.options = Some(FieldOptions {
                            packed: Some(packed),
                            ..FieldOptions::default()
                        });
                    }
                }
                Label::Map(key) => {
                    let entry = format!("F{j}V{i}Entry");
                    message.nested_type.push(DescriptorProto {
                        name: Some(entry.clone()),
                        field: vec![
                            FieldDescriptorProto {
                                name: Some("key".into()),
                                number: Some(1),
                                r#type: Some(key as i32),
                                label: Some(ProtoLabel::Optional as i32),
                                ..FieldDescriptorProto::default()
                            },
                            FieldDescriptorProto {
                                name: Some("value".into()),
                                number: Some(2),
                                r#type: Some(type_ as i32),
                                type_name,
                                label: Some(ProtoLabel::Optional as i32),
                                ..FieldDescriptorProto::default()
                            },
                        ],
                        options: Some(MessageOptions {
                            map_entry: Some(true),
                            ..MessageOptions::default()
                        }),
                        ..DescriptorProto::default()
                    });
                    field.label = Some(ProtoLabel::Repeated as i32);
                    field.r#type = Some(Type::Message as i32);
                    field.type_name = Some(format!(".gen.M{i}.{entry}"));
                }
                Label::Oneof(k) => {
                    let at = match real_oneofs.iter().position(|o| *o == k) {
                        Some(at) => at,
                        None => {
                            real_oneofs.push(k);
                            real_oneofs.len() - 1
                        }
                    };
                    field.oneof_index = Some(at as i32);
                }
            }
            message.field.push(field);
        }
        // Synthetic oneofs come after the real ones.
        let real = real_oneofs.len() as i32;
        for field in &mut message.field {
            if field.proto3_optional == Some(true) {
                field.oneof_index = field.oneof_index.map(|i| i + real);
            }
        }
        message.oneof_decl = real_oneofs
            .iter()
            .map(|k| format!("o{k}"))
            .chain(synthetic)
            .map(|name| OneofDescriptorProto {
                name: Some(name),
                ..OneofDescriptorProto::default()
            })
            .collect();
        if schema.reversed {
            message.field.reverse();
        }
        messages.push(message);
    }
    let value = |name: &str, number: i32| EnumValueDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        ..EnumValueDescriptorProto::default()
    };
    let file = FileDescriptorProto {
        name: Some("gen.proto".into()),
        package: Some("gen".into()),
        syntax: Some(if schema.proto2 { "proto2" } else { "proto3" }.into()),
        dependency: [
            "any",
            "duration",
            "empty",
            "field_mask",
            "struct",
            "timestamp",
            "wrappers",
        ]
        .iter()
        .map(|f| format!("google/protobuf/{f}.proto"))
        .collect(),
        message_type: messages,
        enum_type: vec![EnumDescriptorProto {
            name: Some("E".into()),
            value: vec![value("E_ZERO", 0), value("E_ONE", 1), value("E_NEG", -2)],
            ..EnumDescriptorProto::default()
        }],
        service: vec![ServiceDescriptorProto {
            name: Some("S".into()),
            method: vec![MethodDescriptorProto {
                name: Some("Call".into()),
                input_type: Some(".gen.M0".into()),
                output_type: Some(".gen.M0".into()),
                ..MethodDescriptorProto::default()
            }],
            ..ServiceDescriptorProto::default()
        }],
        ..FileDescriptorProto::default()
    };
    let mut pool = testing_pool();
    pool.add_file_descriptor_proto(file)
        .unwrap_or_else(|err| panic!("generated file does not build: {err}"));
    pool
}

fn default_value(ty: Ty) -> Option<&'static str> {
    Some(match ty {
        Ty::Scalar(Type::Double | Type::Float) => "-1.5",
        Ty::Scalar(Type::Bool) => "true",
        Ty::Scalar(Type::String) => "dflt",
        Ty::Scalar(Type::Bytes) => "x",
        Ty::Scalar(Type::Uint32 | Type::Uint64 | Type::Fixed32 | Type::Fixed64) => "7",
        Ty::Scalar(_) => "-7",
        Ty::Enum => "E_ONE",
        _ => return None,
    })
}

// === values ===

/// Random values from a seed (`TestRng`, so a failing case replays).
struct Values {
    rng: TestRng,
}

impl Values {
    fn new(seed: u64) -> Self {
        let mut bytes = [0; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Self {
            rng: TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
        }
    }

    fn below(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn double(&mut self) -> f64 {
        match self.below(6) {
            0 => [
                0.0,
                -0.0,
                1.0,
                -1.5,
                0.1,
                f64::MAX,
                f64::MIN,
                f64::MIN_POSITIVE,
                5e-324,
                -2.2250738585072e-308,
                1e21,
                9_007_199_254_740_993.0,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
            ][self.below(15)],
            1 => self.rng.next_u64() as i64 as f64,
            2 => f64::from(self.rng.next_u32() as i32) / 10f64.powi(self.below(8) as i32),
            _ => f64::from_bits(self.rng.next_u64()),
        }
    }

    fn float(&mut self) -> f32 {
        match self.below(4) {
            0 => [
                0.0,
                -0.0,
                f32::MAX,
                f32::MIN,
                f32::MIN_POSITIVE,
                1e-45,
                0.1,
                f32::NAN,
            ][self.below(8)],
            1 => self.double() as f32,
            _ => f32::from_bits(self.rng.next_u32()),
        }
    }

    fn integer(&mut self) -> i64 {
        match self.below(3) {
            0 => [
                0,
                1,
                -1,
                i64::MAX,
                i64::MIN,
                i32::MAX.into(),
                i32::MIN.into(),
            ][self.below(7)],
            1 => self.below(300) as i64 - 100,
            _ => self.rng.next_u64() as i64,
        }
    }

    /// Text with every class of character JSON escapes (the short escapes,
    /// other controls, quote, backslash) among plain ASCII and multi-byte
    /// UTF-8; or, as most replies hold, plain ASCII of any length (runs
    /// longer than a machine word, and not a multiple of one).
    fn string(&mut self) -> String {
        const PIECES: [&str; 16] = [
            "a",
            "Zz",
            " ",
            "\"",
            "\\",
            "\n\t",
            "\u{1}",
            "\u{7f}",
            "é",
            "😀",
            "\u{2028}",
            "/",
            "\u{0}",
            "\u{8}\u{c}\r",
            "\u{1f}",
            "plain ascii, longer than a word ~",
        ];
        if self.chance(30) {
            let len = self.below(40);
            return (0..len)
                .map(|_| char::from(b' ' + self.below(95) as u8))
                .filter(|c| !matches!(c, '"' | '\\'))
                .collect();
        }
        let len = if self.chance(2) { 3_000 } else { self.below(6) };
        (0..len).map(|_| PIECES[self.below(PIECES.len())]).collect()
    }

    fn scalar(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => Value::F64(self.double()),
            Kind::Float => Value::F32(self.float()),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(self.integer() as i32),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(self.integer()),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(self.integer() as u32),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(self.integer() as u64),
            Kind::Bool => Value::Bool(self.chance(50)),
            Kind::String => Value::String(self.string()),
            Kind::Bytes => {
                let len = self.below(7);
                Value::Bytes((0..len).map(|_| self.rng.next_u32() as u8).collect())
            }
            Kind::Enum(_) => Value::EnumNumber(if self.chance(70) {
                [0, 1, -2][self.below(3)]
            } else {
                self.integer() as i32
            }),
            Kind::Message(m) => Value::Message(self.message(m, 3)),
        }
    }

    fn map_key(&mut self, kind: &Kind) -> MapKey {
        match self.scalar(kind) {
            Value::I32(v) => MapKey::I32(v),
            Value::I64(v) => MapKey::I64(v),
            Value::U32(v) => MapKey::U32(v),
            Value::U64(v) => MapKey::U64(v),
            Value::Bool(v) => MapKey::Bool(v),
            Value::String(v) => MapKey::String(v),
            other => panic!("not a map key: {other:?}"),
        }
    }

    fn value(&mut self, kind: &Kind, depth: u32) -> Value {
        match kind {
            Kind::Message(m) => Value::Message(self.message(m, depth)),
            kind => self.scalar(kind),
        }
    }

    /// A message of type `desc`, `depth` levels of messages deep at most.
    fn message(&mut self, desc: &MessageDescriptor, depth: u32) -> DynamicMessage {
        if let Some(message) = self.well_known(desc, depth) {
            return message;
        }
        let mut message = DynamicMessage::new(desc.clone());
        for field in desc.fields() {
            let nested = matches!(field.kind(), Kind::Message(_));
            if !self.chance(60) || (nested && depth == 0) {
                continue;
            }
            let value = self.field(&field, depth.saturating_sub(1));
            message.set_field(&field, value);
        }
        message
    }

    fn field(&mut self, field: &FieldDescriptor, depth: u32) -> Value {
        let kind = field.kind();
        if field.is_map() {
            let Kind::Message(entry) = &kind else {
                unreachable!()
            };
            let (key, value) = (entry.map_entry_key_field(), entry.map_entry_value_field());
            let len = self.below(4);
            return Value::Map(
                (0..len)
                    .map(|_| (self.map_key(&key.kind()), self.value(&value.kind(), depth)))
                    .collect(),
            );
        }
        if field.is_list() {
            let len = self.below(4);
            return Value::List((0..len).map(|_| self.value(&kind, depth)).collect());
        }
        self.value(&kind, depth)
    }

    fn well_known(&mut self, desc: &MessageDescriptor, depth: u32) -> Option<DynamicMessage> {
        let json = match desc.full_name() {
            "google.protobuf.Timestamp" => {
                let seconds = -62_135_596_800 + (self.rng.next_u64() % 315_537_897_600) as i64;
                let nanos =
                    [0, 1, 500_000_000, 999_999_999, self.below(1_000_000_000)][self.below(5)];
                return Some(fields(
                    desc,
                    &[
                        ("seconds", Value::I64(seconds)),
                        ("nanos", Value::I32(nanos as i32)),
                    ],
                ));
            }
            "google.protobuf.Duration" => {
                let seconds = (self.rng.next_u64() % 315_576_000_001) as i64;
                let nanos = self.below(1_000_000_000) as i32;
                let sign = if self.chance(50) { -1 } else { 1 };
                return Some(fields(
                    desc,
                    &[
                        ("seconds", Value::I64(sign * seconds)),
                        ("nanos", Value::I32(sign as i32 * nanos)),
                    ],
                ));
            }
            "google.protobuf.Any" => {
                let pool = desc.parent_pool();
                let inner = pool.get_message_by_name("gen.M0")?;
                let payload = self
                    .message(&inner, depth.saturating_sub(1))
                    .encode_to_vec();
                return Some(fields(
                    desc,
                    &[
                        (
                            "type_url",
                            Value::String("type.googleapis.com/gen.M0".into()),
                        ),
                        ("value", Value::Bytes(payload.into())),
                    ],
                ));
            }
            "google.protobuf.FieldMask" => {
                let paths = (0..self.below(3))
                    .map(|_| Value::String(["a", "b_c", "d.e_f", "g1"][self.below(4)].into()))
                    .collect();
                return Some(fields(desc, &[("paths", Value::List(paths))]));
            }
            "google.protobuf.Struct" => Json::Object(self.json_object(depth)),
            "google.protobuf.ListValue" => Json::Array(vec![self.json(depth), self.json(depth)]),
            "google.protobuf.Value" => self.json(depth),
            _ => return None,
        };
        Some(DynamicMessage::deserialize(desc.clone(), json).unwrap())
    }

    fn json_object(&mut self, depth: u32) -> serde_json::Map<String, Json> {
        (0..self.below(3))
            .map(|_| (self.string(), self.json(depth.saturating_sub(1))))
            .collect()
    }

    fn json(&mut self, depth: u32) -> Json {
        match self.below(if depth == 0 { 4 } else { 6 }) {
            0 => Json::Null,
            1 => Json::Bool(self.chance(50)),
            2 => serde_json::Number::from_f64(self.double()).map_or(Json::Null, Json::Number),
            3 => Json::String(self.string()),
            4 => Json::Array(vec![self.json(depth - 1)]),
            _ => Json::Object(self.json_object(depth)),
        }
    }
}

fn fields(desc: &MessageDescriptor, values: &[(&str, Value)]) -> DynamicMessage {
    let mut message = DynamicMessage::new(desc.clone());
    for (name, value) in values {
        message.set_field_by_name(name, value.clone());
    }
    message
}

// === the two ways ===

/// A generated pool with the gateway's parts for it.
struct Generated {
    root: MessageDescriptor,
    method: prost_reflect::MethodDescriptor,
    rules: FieldRules,
    plans: JsonPlans,
    index: usize,
}

impl Generated {
    fn new(schema: &Schema) -> Self {
        let pool = build(schema);
        let root = pool.get_message_by_name("gen.M0").unwrap();
        let method = pool
            .get_service_by_name("gen.S")
            .unwrap()
            .methods()
            .next()
            .unwrap();
        let rules = FieldRules::new(&pool, &[]);
        let plans = JsonPlans::new(&pool, &rules);
        let index = plans.index_of(&root).unwrap();
        Self {
            root,
            method,
            rules,
            plans,
            index,
        }
    }
}

fn options() -> Vec<TranscodeOptions> {
    (0..16)
        .map(|bits| {
            let mut config = Config::default();
            config.json.emit_unpopulated = bits & 1 != 0;
            config.json.use_proto_field_names = bits & 2 != 0;
            config.json.enums_as_numbers = bits & 4 != 0;
            config.json.ignore_unknown_fields = bits & 8 != 0;
            TranscodeOptions::new(&config.json, &config.query, &config.filters)
        })
        .collect()
}

fn whole_reply() -> BindingPlan {
    BindingPlan {
        vars: Box::new([]),
        body: BodyPlan::Whole,
        response_body: None,
        update_mask: None,
        fields_param: true,
        raw_request: false,
        raw_response: false,
    }
}

/// JSON equal but for the differences by design: a `-0.0` that
/// prost-reflect leaves out, a non-finite wrapper it prints as `null`, and
/// a float printed in its own shortest form.
fn agrees(ours: &Json, theirs: &Json) -> bool {
    match (ours, theirs) {
        (Json::Number(x), Json::Number(y)) => {
            x == y
                || x.as_f64()
                    .zip(y.as_f64())
                    .is_some_and(|(x, y)| x as f32 == y as f32 || x == y)
        }
        (Json::String(s), Json::Null) => matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity"),
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| agrees(x, y))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.iter().all(|(k, v)| match y.get(k) {
                Some(w) => agrees(v, w),
                None => v
                    .as_f64()
                    .is_some_and(|v| v.to_bits() == (-0.0f64).to_bits()),
            }) && y.keys().all(|k| x.contains_key(k))
        }
        _ => ours == theirs,
    }
}

/// What `wire` means to prost-reflect, as JSON with every field shown.
fn meaning(desc: &MessageDescriptor, wire: &[u8]) -> Json {
    let message = DynamicMessage::decode(desc.clone(), wire).unwrap();
    let options = SerializeOptions::new().skip_default_fields(true);
    // prost-reflect cannot print an `Any` without a type (`{}`).
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or_else(|err| Json::String(format!("unprintable: {err}")))
}

// === (a) replies ===

/// Paths of `root`'s fields (and one level below), picked by `values`.
fn some_paths(root: &MessageDescriptor, values: &mut Values) -> Vec<String> {
    let mut paths = Vec::new();
    for field in root.fields() {
        if values.chance(30) {
            paths.push(field.json_name().to_owned());
        } else if let (Kind::Message(child), false) = (field.kind(), field.is_map()) {
            let plain = !child.full_name().starts_with("google.protobuf.");
            if let Some(inner) = child.fields().next().filter(|_| plain && values.chance(30)) {
                paths.push(format!("{}.{}", field.name(), inner.name()));
            }
        }
    }
    paths
}

/// Checks the printer on `wire` under every option set and mask; when the
/// bytes are `canonical` (an encoder's), it must print them.
fn check_reply(
    generated: &Generated,
    wire: &[u8],
    canonical: bool,
    values: &mut Values,
) -> Result<(), TestCaseError> {
    let method_rules = generated.rules.for_method(&generated.method);
    let binding = whole_reply();
    let shape = |plan| ReplyShape {
        rules: &generated.rules,
        method: &method_rules,
        omit: None,
        plan: &binding,
        method_descriptor: &generated.method,
        plans: &generated.plans,
        reply_plan: plan,
    };
    let omit_paths = some_paths(&generated.root, values);
    let keep_paths = some_paths(&generated.root, values);
    let omit = MaskTree::parse(
        &generated.root,
        omit_paths.iter().map(String::as_str),
        |_, _| false,
    )
    .unwrap();
    let keep_fields = keep_paths.join(",");
    let exact = byte_comparable(generated, wire);
    for options in options() {
        for (with_omit, with_keep) in [(false, false), (true, false), (false, true), (true, true)] {
            let omit = with_omit.then_some(&omit);
            let shape_of = |plan| ReplyShape {
                omit,
                ..shape(plan)
            };
            let filter = match with_keep {
                false => ReplyFilter::default(),
                true => match ReplyFilter::new(shape_of(None), &generated.root, Some(&keep_fields))
                {
                    Ok(filter) => filter,
                    Err(_) => continue,
                },
            };
            let keep = with_keep
                .then(|| MaskTree::parse(&generated.root, keep_fields.split(','), |_, _| false))
                .transpose()
                .unwrap()
                .filter(|_| !keep_fields.is_empty());
            let reference = filter.print(wire, shape_of(None), &options);
            let printed = print_reply(
                &generated.plans,
                generated.index,
                wire,
                (omit, keep.as_ref()),
                &options,
            );
            let gateway = filter.print(wire, shape_of(Some(generated.index)), &options);
            match reference {
                Err(_) => {
                    // Also where the masks hide the malformed bytes.
                    prop_assert!(
                        printed.is_none(),
                        "printed what prost-reflect cannot decode: {wire:?}"
                    );
                    prop_assert!(gateway.is_err());
                }
                Ok(reference) => {
                    if exact && !with_omit && !with_keep {
                        // Byte for byte: prost-reflect's serializer wrote it.
                        let text = |json: &[u8]| String::from_utf8_lossy(json).into_owned();
                        if let Some(printed) = &printed {
                            prop_assert_eq!(text(printed), text(&reference), "{:?}", options);
                        }
                        prop_assert_eq!(
                            text(gateway.as_deref().unwrap_or_default()),
                            text(&reference),
                            "{:?}",
                            options
                        );
                    }
                    let reference: Json = serde_json::from_slice(&reference).unwrap();
                    let context = format!("{options:?} omit {with_omit} keep {keep_fields:?}");
                    prop_assert!(printed.is_some() || !canonical, "{context}: declined");
                    if let Some(printed) = printed {
                        let printed: Json = serde_json::from_slice(&printed).unwrap();
                        prop_assert!(
                            agrees(&printed, &reference),
                            "{context}\nprinted:   {printed}\nreference: {reference}"
                        );
                    }
                    let gateway: Json = serde_json::from_slice(&gateway.unwrap()).unwrap();
                    prop_assert!(
                        agrees(&gateway, &reference),
                        "{context}\ngateway:   {gateway}\nreference: {reference}"
                    );
                }
            }
        }
    }
    Ok(())
}

/// Whether the printer's bytes must be prost-reflect's serializer's for
/// `wire`: both print fields in number order (prost-reflect's order) when
/// every message declares them so, and nothing in it differs by design
/// (map entries in hash order, see [`agrees`]).
fn byte_comparable(generated: &Generated, wire: &[u8]) -> bool {
    let Ok(message) = DynamicMessage::decode(generated.root.clone(), wire) else {
        return false;
    };
    let pool = generated.root.parent_pool();
    let in_number_order = pool
        .all_messages()
        .filter(|m| m.package_name() == "gen")
        .all(|m| {
            let numbers: Vec<u32> = m.fields().map(|f| f.number()).collect();
            numbers.windows(2).all(|w| w[0] < w[1])
        });
    in_number_order && !has_negative_zero(&message) && !differs_by_design(&message)
}

/// A map of two entries or more (printed sorted here, in hash order by
/// prost-reflect), or a non-finite `FloatValue`/`DoubleValue`.
fn differs_by_design(message: &DynamicMessage) -> bool {
    let value_differs = |value: &Value| match value {
        Value::Message(inner) => differs_by_design(inner),
        _ => false,
    };
    if message.descriptor().full_name() == "google.protobuf.Any" {
        // Its message is bytes here: decode it to look inside.
        let descriptor = message.descriptor();
        let pool = descriptor.parent_pool();
        let (url, bytes) = (
            message.get_field_by_number(1),
            message.get_field_by_number(2),
        );
        let inner = match (url.as_deref(), bytes.as_deref()) {
            (Some(Value::String(url)), Some(Value::Bytes(bytes))) => url
                .rsplit_once('/')
                .and_then(|(_, name)| pool.get_message_by_name(name))
                .and_then(|desc| DynamicMessage::decode(desc, bytes.clone()).ok()),
            _ => None,
        };
        return inner.is_none_or(|inner| differs_by_design(&inner));
    }
    if matches!(
        message.descriptor().full_name(),
        "google.protobuf.FloatValue" | "google.protobuf.DoubleValue"
    ) {
        return match message.get_field_by_number(1).as_deref() {
            Some(Value::F32(v)) => !v.is_finite(),
            Some(Value::F64(v)) => !v.is_finite(),
            _ => false,
        };
    }
    message.fields().any(|(_, value)| match value {
        Value::List(items) => items.iter().any(value_differs),
        Value::Map(entries) => entries.len() > 1 || entries.values().any(value_differs),
        value => value_differs(value),
    })
}

proptest! {
    #![proptest_config(config(48))]

    /// (a) The printer's JSON is prost-reflect's for every shape, option
    /// set and mask, or it declines.
    #[test]
    fn replies_print_as_prost_reflect_prints_them(schema in schema(), seed in any::<u64>()) {
        let generated = Generated::new(&schema);
        let mut values = Values::new(seed);
        let wire = values.message(&generated.root, 3).encode_to_vec();
        check_reply(&generated, &wire, true, &mut values)?;
    }

    /// (b) Wire forms an encoder of ours would not write: fields out of
    /// order, a singular field twice, packed and unpacked runs, unknown
    /// fields, truncated and corrupted bytes.
    #[test]
    fn wire_variations_print_as_prost_reflect_decodes_them(schema in schema(), seed in any::<u64>()) {
        let generated = Generated::new(&schema);
        let mut values = Values::new(seed);
        let wire = values.message(&generated.root, 2).encode_to_vec();
        let variant = vary(&generated.root, &wire, &mut values);
        check_reply(&generated, &variant, false, &mut values)?;
    }

    /// (c) The parser's bytes mean what prost-reflect parses from the same
    /// JSON, written by prost-reflect in each of its forms.
    #[test]
    fn requests_parse_as_prost_reflect_parses_them(schema in schema(), seed in any::<u64>()) {
        let generated = Generated::new(&schema);
        let mut values = Values::new(seed);
        let message = values.message(&generated.root, 3);
        for bits in 0..8 {
            let options = SerializeOptions::new()
                .use_proto_field_name(bits & 1 != 0)
                .use_enum_numbers(bits & 2 != 0)
                .skip_default_fields(bits & 4 == 0)
                .stringify_64_bit_integers(bits & 2 == 0);
            let mut json = Vec::new();
            message
                .serialize_with_options(&mut serde_json::Serializer::new(&mut json), &options)
                .unwrap();
            check_request(&generated, &json, Intended::default())?;
            // What prost-reflect reads back (not its `null` for a non-finite
            // wrapper), the plans write.
            let parsed = parse_request(&generated.plans, generated.index, &json, &TranscodeOptions::default());
            let mut deserializer = serde_json::Deserializer::from_slice(&json);
            let readable = DynamicMessage::deserialize(generated.root.clone(), &mut deserializer).is_ok();
            prop_assert!(
                !readable || !matches!(parsed, Err(Declined::Unsupported)),
                "left to the general way: {}", String::from_utf8_lossy(&json)
            );
        }
    }

    /// (d) The encoder writes what prost writes, but a `-0.0` without presence.
    #[test]
    fn the_encoder_writes_what_prost_writes(schema in schema(), seed in any::<u64>()) {
        let generated = Generated::new(&schema);
        let message = Values::new(seed).message(&generated.root, 3);
        let mut ours = Vec::new();
        encode_message(&message, &mut ours);
        let theirs = message.encode_to_vec();
        // Byte for byte (both walk the same maps in the same order), but for
        // a `-0.0` without presence, which only ours writes.
        if has_negative_zero(&message) {
            prop_assert_eq!(meaning(&generated.root, &ours), meaning(&generated.root, &theirs));
        } else {
            prop_assert_eq!(ours, theirs);
        }
    }

    /// (e) Adversarial JSON: every notation of numbers, escapes and lone
    /// surrogates, duplicate keys, `null` everywhere, deep nesting, long
    /// strings. Both ways agree, or the difference is one by design.
    #[test]
    fn adversarial_json_is_parsed_or_refused_as_prost_reflect_does(schema in schema(), seed in any::<u64>()) {
        let generated = Generated::new(&schema);
        let mut values = Values::new(seed);
        let mut intended = Intended::default();
        let mut json = String::new();
        adversarial_message(&generated.root, &mut values, 6, &mut intended, &mut json);
        check_request(&generated, json.as_bytes(), intended)?;
    }
}

/// (f) The scanner against the serde reading it leaves bodies to: valid
/// bodies (prost-reflect's JSON of generated messages, then written again
/// with escapes, whitespace and number notations JSON allows) and broken
/// ones (truncated, trailing content, bytes that are no UTF-8 or no JSON).
/// Both write the same bytes or the scanner leaves the body; and most of
/// the valid bodies the serde reading writes, the scanner writes.
#[test]
fn bodies_are_scanned_as_the_serde_reading_reads_them() {
    let mut runner = TestRunner::new(config(64));
    let counts = std::cell::Cell::new((0u32, 0u32));
    let result = runner.run(&(schema(), any::<u64>()), |(schema, seed)| {
        let generated = Generated::new(&schema);
        let mut values = Values::new(seed);
        let message = values.message(&generated.root, 3);
        let bits = values.below(8);
        let options = SerializeOptions::new()
            .use_proto_field_name(bits & 1 != 0)
            .use_enum_numbers(bits & 2 != 0)
            .skip_default_fields(bits & 4 == 0);
        let mut json = Vec::new();
        message
            .serialize_with_options(&mut serde_json::Serializer::new(&mut json), &options)
            .unwrap();
        let tree: Json = serde_json::from_slice(&json).unwrap();
        let mut intended = Intended::default();
        let mut varied = String::new();
        write_varied(&tree, &mut values, &mut intended, &mut varied);
        for body in [&json[..], varied.as_bytes()] {
            let written = check_request(&generated, body, intended)?;
            let (read, scanned) = counts.get();
            counts.set((
                read + u32::from(written.read),
                scanned + u32::from(written.scanned),
            ));
        }
        let broken = break_document(varied.into_bytes(), &mut values);
        check_request(&generated, &broken, intended)?;
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
    // What the scanner leaves among these is mostly the values of other
    // readers (`Any`, `Struct`, `Value`, `ListValue`, `FieldMask`).
    let (read, scanned) = counts.get();
    assert!(
        scanned * 10 >= read * 7,
        "the scanner wrote {scanned} of the {read} bodies the serde reading wrote"
    );
}

/// `tree` as JSON text written another way that means the same: escapes
/// for characters that need none (`\u00e9`, a surrogate pair, `\/`),
/// whitespace between tokens, numbers in exponent or fractional notation
/// (`1` as `1.0`, `1e0`, `1E+00`).
fn write_varied(tree: &Json, values: &mut Values, intended: &mut Intended, out: &mut String) {
    const SPACE: [&str; 5] = [" ", "\t", "\n", "\r", " \r\n\t "];
    let space = |values: &mut Values, out: &mut String| {
        if values.chance(15) {
            out.push_str(SPACE[values.below(SPACE.len())]);
        }
    };
    match tree {
        Json::Object(members) => {
            out.push('{');
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(values, out);
                write_varied_string(key, values, out);
                space(values, out);
                out.push(':');
                space(values, out);
                write_varied(value, values, intended, out);
                space(values, out);
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(values, out);
                write_varied(item, values, intended, out);
                space(values, out);
            }
            out.push(']');
        }
        Json::String(text) => write_varied_string(text, values, out),
        Json::Number(number) => {
            let text = number.to_string();
            let exponent = text.contains(['e', 'E']);
            let plain = !exponent && !text.contains('.');
            let notation = match values.below(8) {
                0 if plain => ".0",
                1 if !exponent => "e0",
                2 if !exponent => "E+00",
                3 if plain => ".000e-0",
                _ => "",
            };
            if !notation.is_empty() {
                // Exact here; read through a double by prost-reflect.
                intended.integer_notation = true;
            }
            out.push_str(&text);
            out.push_str(notation);
        }
        other => out.push_str(&other.to_string()),
    }
}

fn write_varied_string(text: &str, values: &mut Values, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        let needed = matches!(c, '"' | '\\') || u32::from(c) < 0x20;
        if !needed && !values.chance(15) {
            out.push(c);
            continue;
        }
        match c {
            '/' if values.chance(50) => out.push_str("\\/"),
            '\u{8}' if values.chance(50) => out.push_str("\\b"),
            '\u{c}' if values.chance(50) => out.push_str("\\f"),
            '\n' if values.chance(50) => out.push_str("\\n"),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    if values.chance(50) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    } else {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
            }
        }
    }
    out.push('"');
}

/// `json` broken in one of the ways a client's body may be.
fn break_document(mut json: Vec<u8>, values: &mut Values) -> Vec<u8> {
    let at = values.below(json.len() + 1);
    match values.below(6) {
        0 => json.truncate(at),
        1 => {
            const TRAILING: [&[u8]; 8] = [b" x", b"}", b"]", b",", b"{}", b"\0", b" \n", b"\x0c"];
            json.extend_from_slice(TRAILING[values.below(TRAILING.len())]);
        }
        // Bytes that are no UTF-8.
        2 => {
            let byte = [0xff, 0xc3, 0x80, 0xed][values.below(4)];
            json.insert(at, byte);
        }
        // Whitespace JSON does not allow: form feed, vertical tab, a
        // no-break space, a byte order mark.
        3 => {
            const SPACE: [&[u8]; 4] =
                [b"\x0c", b"\x0b", "\u{a0}".as_bytes(), "\u{feff}".as_bytes()];
            let space = SPACE[values.below(SPACE.len())];
            json.splice(at..at, space.iter().copied());
        }
        4 => json.insert(at, 0x01),
        _ => {
            const TOKENS: &[u8] = b"{}[]:,\"\\0123456789eE.+-tfnu ";
            if let Some(byte) = json.get_mut(at) {
                *byte = TOKENS[values.below(TOKENS.len())];
            }
        }
    }
    json
}

fn has_negative_zero(message: &DynamicMessage) -> bool {
    message.descriptor().fields().any(|field| {
        let nested = matches!(field.kind(), Kind::Message(_));
        if nested && !message.has_field(&field) {
            return false;
        }
        match message.get_field(&field).as_ref() {
            Value::F64(v) => !field.supports_presence() && v.to_bits() == (-0.0f64).to_bits(),
            Value::F32(v) => !field.supports_presence() && v.to_bits() == (-0.0f32).to_bits(),
            Value::Message(inner) => has_negative_zero(inner),
            Value::List(items) => items
                .iter()
                .any(|v| v.as_message().is_some_and(has_negative_zero)),
            Value::Map(entries) => entries.values().any(|v| match v {
                Value::F64(v) => v.to_bits() == (-0.0f64).to_bits(),
                Value::F32(v) => v.to_bits() == (-0.0f32).to_bits(),
                Value::Message(inner) => has_negative_zero(inner),
                _ => false,
            }),
            _ => false,
        }
    })
}

// === (b) wire variations ===

/// One top-level field record of `wire`: its number, wire type and bytes.
fn records(wire: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < wire.len() {
        let start = pos;
        let tag = varint(wire, &mut pos);
        let len = match tag & 7 {
            0 => {
                varint(wire, &mut pos);
                0
            }
            1 => 8,
            5 => 4,
            _ => varint(wire, &mut pos) as usize,
        };
        pos += len;
        out.push((tag >> 3, tag & 7, wire[start..pos].to_vec()));
    }
    out
}

fn varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut value = 0;
    for shift in (0..64).step_by(7) {
        let byte = buf[*pos];
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            break;
        }
    }
    value
}

fn put_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `wire` changed in one or more of the ways an upstream's encoder may differ.
fn vary(root: &MessageDescriptor, wire: &[u8], values: &mut Values) -> Vec<u8> {
    let mut records = records(wire);
    // A list packed or unpacked the other way.
    if let Some(at) = (0..records.len()).find(|i| {
        let (number, wire_type, _) = &records[*i];
        *wire_type == 2
            && root.get_field(*number as u32).is_some_and(|f| {
                f.is_list() && !matches!(f.kind(), Kind::String | Kind::Bytes | Kind::Message(_))
            })
    }) {
        let (number, _, bytes) = records.remove(at);
        let field = root.get_field(number as u32).unwrap();
        let element = match field.kind() {
            Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => 1,
            Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => 5,
            _ => 0,
        };
        let mut pos = 0;
        varint(&bytes, &mut pos);
        let len = varint(&bytes, &mut pos) as usize;
        let payload = &bytes[pos..pos + len];
        let mut p = 0;
        let mut unpacked = Vec::new();
        while p < payload.len() {
            let start = p;
            match element {
                1 => p += 8,
                5 => p += 4,
                _ => {
                    varint(payload, &mut p);
                }
            }
            let mut record = Vec::new();
            put_varint(number << 3 | element, &mut record);
            record.extend_from_slice(&payload[start..p]);
            unpacked.push((number, element, record));
        }
        records.splice(at..at, unpacked);
    }
    // Unknown fields, of each wire type.
    if values.chance(50) {
        let mut unknown = Vec::new();
        put_varint(4_000 << 3, &mut unknown);
        put_varint(values.rng.next_u64(), &mut unknown);
        put_varint(4_001 << 3 | 2, &mut unknown);
        unknown.extend_from_slice(&[3, 1, 2, 3]);
        put_varint(4_002 << 3 | 5, &mut unknown);
        unknown.extend_from_slice(&[1, 2, 3, 4]);
        let at = values.below(records.len() + 1);
        records.insert(at, (4_000, 0, unknown));
    }
    // A field again (the last of a singular scalar wins, messages merge).
    if !records.is_empty() && values.chance(50) {
        let copy = records[values.below(records.len())].clone();
        records.push(copy);
    }
    // A string that is not UTF-8 where it may go unprinted: before a later
    // value of its field (which replaces it when the field is singular).
    if let Some(at) = (0..records.len())
        .filter(|i| {
            let (number, wire_type, _) = &records[*i];
            *wire_type == 2
                && root
                    .get_field(*number as u32)
                    .is_some_and(|f| f.kind() == Kind::String && !f.is_map())
        })
        .find(|_| values.chance(50))
    {
        let number = records[at].0;
        let mut invalid = Vec::new();
        put_varint(number << 3 | 2, &mut invalid);
        invalid.extend_from_slice(&[1, 0xff]);
        records.insert(at, (number, 2, invalid));
    }
    // Out of order.
    if values.chance(50) {
        for i in (1..records.len()).rev() {
            let j = values.below(i + 1);
            records.swap(i, j);
        }
    }
    let mut out: Vec<u8> = records
        .into_iter()
        .flat_map(|(_, _, bytes)| bytes)
        .collect();
    match values.below(6) {
        0 if !out.is_empty() => out.truncate(values.below(out.len())),
        1 if !out.is_empty() => {
            let at = values.below(out.len());
            out[at] ^= 1 << values.below(8);
        }
        _ => {}
    }
    out
}

// === (c), (e) requests ===

/// Forms in a document where the parser differs from prost-reflect by
/// design (see the module doc of `transcode/wire_json`).
#[derive(Debug, Default, Clone, Copy)]
struct Intended {
    /// An integer in exponent or fractional notation, or as such a string:
    /// exact here; prost-reflect refuses strings and rounds numbers.
    integer_notation: bool,
    /// `{}` for an `Any`: here the empty `Any`; refused by prost-reflect.
    empty_any: bool,
    /// A float beyond `f32::MAX` that rounds to it; refused by prost-reflect.
    float_max: bool,
    /// A float string beyond the range (`"1e39"`): refused here; an
    /// infinity to prost-reflect.
    float_overflow: bool,
    /// A key given twice: refused here; the last one to prost-reflect.
    duplicate: bool,
    /// `null` for a list of `Value`s or `NullValue`s: refused here; a list
    /// of one null to prost-reflect.
    null_list: bool,
}

impl Intended {
    fn any(self) -> bool {
        self.integer_notation
            || self.empty_any
            || self.float_max
            || self.float_overflow
            || self.duplicate
            || self.null_list
    }
}

/// Which way a body was written, with the default options.
#[derive(Debug, Default, Clone, Copy)]
struct Written {
    /// By the serde reading.
    read: bool,
    /// By the scanner, which then wrote the same bytes.
    scanned: bool,
}

fn check_request(
    generated: &Generated,
    json: &[u8],
    intended: Intended,
) -> Result<Written, TestCaseError> {
    let text = String::from_utf8_lossy(json);
    let mut written = Written::default();
    for ignore_unknown in [false, true] {
        let mut config = Config::default();
        config.json.ignore_unknown_fields = ignore_unknown;
        let options = TranscodeOptions::new(&config.json, &config.query, &config.filters);
        // The scanner writes byte for byte what the serde reading writes,
        // or leaves the body to it.
        let scanned = scan_request(&generated.plans, generated.index, json, &options);
        let read = read_request(&generated.plans, generated.index, json, &options);
        if let Some(scanned) = &scanned {
            prop_assert!(
                read.as_ref().is_ok_and(|read| read == scanned),
                "{text}\nscanned: {scanned:?}\nthe serde reading: {read:?}"
            );
        }
        if !ignore_unknown {
            written = Written {
                read: read.is_ok(),
                scanned: scanned.is_some(),
            };
        }
        let reference = {
            let mut deserializer = serde_json::Deserializer::from_slice(json);
            let options = DeserializeOptions::new().deny_unknown_fields(!ignore_unknown);
            DynamicMessage::deserialize_with_options(
                generated.root.clone(),
                &mut deserializer,
                &options,
            )
            .and_then(|m| deserializer.end().map(|()| m))
            .map(|m| m.encode_to_vec())
        };
        let parsed = parse_request(&generated.plans, generated.index, json, &options);
        match (&parsed, &reference) {
            (Ok(ours), Ok(theirs)) => {
                let (ours, theirs) = (
                    meaning(&generated.root, ours),
                    meaning(&generated.root, theirs),
                );
                prop_assert!(
                    agrees(&ours, &theirs) || intended.integer_notation,
                    "{text}\nours:   {ours}\ntheirs: {theirs}"
                );
            }
            // prost-reflect refuses `f32::MAX` as its own serializer writes it.
            (Ok(_), Err(err)) => prop_assert!(
                intended.any() || err.to_string().starts_with("float value out of range"),
                "{text}\naccepted; prost-reflect: {err}"
            ),
            (Err(Declined::Invalid(err)), Ok(_)) => {
                prop_assert!(
                    intended.any(),
                    "{text}\nrefused ({err}); prost-reflect accepts it"
                );
            }
            (Err(Declined::Invalid(_)), Err(_)) | (Err(Declined::Unsupported), _) => {}
        }
        // The general way agrees with the parser whenever the parser writes.
        let general = request_message(
            &generated.plans,
            &generated.root,
            &whole_reply(),
            (
                &generated.rules,
                &generated.rules.for_method(&generated.method),
            ),
            RequestParts {
                captures: &[],
                query: None,
                body: json,
            },
            &options,
        );
        match (&parsed, general) {
            (Ok(ours), Ok(message)) => {
                let mut wire = Vec::new();
                encode_message(&message, &mut wire);
                prop_assert_eq!(
                    meaning(&generated.root, ours),
                    meaning(&generated.root, &wire)
                );
            }
            (Ok(_), Err(err)) => prop_assert!(false, "{text}\nthe general way refuses: {err}"),
            (Err(Declined::Invalid(_)), general) => prop_assert!(general.is_err(), "{text}"),
            (Err(Declined::Unsupported), _) => {}
        }
    }
    Ok(written)
}

/// Appends an adversarial JSON object for `desc` to `out`.
fn adversarial_message(
    desc: &MessageDescriptor,
    values: &mut Values,
    depth: u32,
    intended: &mut Intended,
    out: &mut String,
) {
    if depth == 0 {
        out.push_str("{}");
        return;
    }
    out.push('{');
    let mut first = true;
    let mut comma = |out: &mut String| {
        if !std::mem::take(&mut first) {
            out.push(',');
        }
    };
    let fields: Vec<FieldDescriptor> = desc.fields().collect();
    for field in &fields {
        if !values.chance(50) {
            continue;
        }
        let times = if values.chance(5) {
            intended.duplicate = true;
            2
        } else {
            1
        };
        for _ in 0..times {
            comma(out);
            let name = if values.chance(50) {
                field.json_name()
            } else {
                field.name()
            };
            adversarial_key(name, values, out);
            out.push(':');
            adversarial_field(field, values, depth, intended, out);
        }
    }
    if values.chance(5) {
        comma(out);
        let unknown = [
            r#""noSuchField""#,
            r#""[acme.ext]""#,
            r#""\ud800""#,
            r#""\u0001""#,
            "\"\u{1}\"",
            r#""\u00e9t\u00e9""#,
            r#""\ud83d\ude00""#,
        ];
        out.push_str(unknown[values.below(unknown.len())]);
        out.push_str(r#":[1,{"a":null}]"#);
    }
    out.push('}');
}

/// A field's name as a JSON key: plain, or with one of its letters escaped
/// (`\u0061`), or with a byte that makes it another key or no text.
fn adversarial_key(name: &str, values: &mut Values, out: &mut String) {
    if !values.chance(10) {
        out.push_str(&serde_json::to_string(name).unwrap());
        return;
    }
    let at = values.below(name.len());
    let (before, after) = name.split_at(at);
    let mut rest = after.chars();
    let escaped = rest.next().map_or(0, u32::from);
    let tail = match values.below(4) {
        0 => String::new(),
        1 => "\\u0000".to_owned(),
        2 => "\\udc00".to_owned(),
        _ => "\u{7f}".to_owned(),
    };
    out.push_str(&format!(
        "\"{before}\\u{escaped:04x}{}{tail}\"",
        rest.as_str()
    ));
}

fn adversarial_field(
    field: &FieldDescriptor,
    values: &mut Values,
    depth: u32,
    intended: &mut Intended,
    out: &mut String,
) {
    if values.chance(5) {
        out.push_str("null");
        let holds_null = match field.kind() {
            Kind::Message(m) => m.full_name() == "google.protobuf.Value",
            Kind::Enum(e) => e.full_name() == "google.protobuf.NullValue",
            _ => false,
        };
        intended.null_list |= field.is_list() && holds_null;
        return;
    }
    let kind = field.kind();
    if field.is_map() {
        let Kind::Message(entry) = &kind else {
            unreachable!()
        };
        let (key, value) = (
            entry.map_entry_key_field().kind(),
            entry.map_entry_value_field().kind(),
        );
        out.push('{');
        for i in 0..values.below(3) {
            if i > 0 {
                out.push(',');
            }
            let key = match values.map_key(&key) {
                MapKey::String(s) => s,
                other if values.chance(5) => format!("+{other:?}"),
                MapKey::Bool(b) => b.to_string(),
                MapKey::I32(v) => v.to_string(),
                MapKey::I64(v) => v.to_string(),
                MapKey::U32(v) => v.to_string(),
                MapKey::U64(v) => v.to_string(),
            };
            out.push_str(&serde_json::to_string(&key).unwrap());
            out.push(':');
            adversarial_value(&value, values, depth, intended, out);
        }
        out.push('}');
    } else if field.is_list() {
        out.push('[');
        for i in 0..values.below(4) {
            if i > 0 {
                out.push(',');
            }
            adversarial_value(&kind, values, depth, intended, out);
        }
        out.push(']');
    } else {
        adversarial_value(&kind, values, depth, intended, out);
    }
}

fn adversarial_value(
    kind: &Kind,
    values: &mut Values,
    depth: u32,
    intended: &mut Intended,
    out: &mut String,
) {
    if values.chance(3) {
        out.push_str(["null", "true", "[]", "{}", "\"\"", "0"][values.below(6)]);
        return;
    }
    match kind {
        Kind::Double | Kind::Float => {
            let value = if matches!(kind, Kind::Float) {
                f64::from(values.float())
            } else {
                values.double()
            };
            let (literal, quoted) = float_literal(value, values);
            if let Ok(parsed) = literal.parse::<f64>() {
                let narrow = parsed as f32;
                if matches!(kind, Kind::Float) && parsed.is_finite() {
                    intended.float_max |= narrow.is_finite() && parsed.abs() > f64::from(f32::MAX);
                    intended.float_overflow |= quoted && narrow.is_infinite();
                }
                intended.float_overflow |=
                    quoted && parsed.is_infinite() && !literal.contains("nfinity");
            }
            if quoted {
                out.push('"');
                out.push_str(&literal);
                out.push('"');
            } else {
                out.push_str(&literal);
            }
        }
        Kind::Bool => out.push_str(["true", "false", "\"true\"", "1"][values.below(4)]),
        Kind::String => out.push_str(
            [
                r#""plain""#,
                r#""\u00e9\ud83d\ude00\n\"\\\/""#,
                r#""\ud800""#,
                r#""\udc00x""#,
                r#""\u0000""#,
            ][values.below(5)],
        ),
        Kind::Bytes => out.push_str(
            [
                r#""aGk=""#,
                r#""aGk""#,
                r#""-_8=""#,
                r#""a b""#,
                r#""////""#,
            ][values.below(5)],
        ),
        Kind::Enum(_) => out.push_str(
            [
                r#""E_ONE""#,
                r#""E_NEG""#,
                "7",
                "-2",
                r#""E_NONE""#,
                "1.0",
                r#""1""#,
            ][values.below(7)],
        ),
        Kind::Message(m) => adversarial_nested(m, values, depth, intended, out),
        _ => {
            let value = values.integer();
            let literal = match values.below(8) {
                0 => format!("\"{value}\""),
                1 if value.unsigned_abs() < 1 << 53 => {
                    intended.integer_notation = true;
                    format!("{:?}", value as f64)
                }
                2 if value.unsigned_abs() < 1 << 53 => {
                    intended.integer_notation = true;
                    format!("{value}.000")
                }
                3 => {
                    intended.integer_notation = true;
                    format!("\"{value}e0\"")
                }
                4 => {
                    intended.integer_notation = true;
                    format!("{value}.5")
                }
                5 => {
                    intended.integer_notation = true;
                    format!("{:e}", value as f64)
                }
                _ => value.to_string(),
            };
            out.push_str(&literal);
        }
    }
}

fn adversarial_nested(
    desc: &MessageDescriptor,
    values: &mut Values,
    depth: u32,
    intended: &mut Intended,
    out: &mut String,
) {
    match desc.full_name() {
        "google.protobuf.Timestamp" => out.push_str(
            [
                r#""2024-02-29T12:00:00Z""#,
                r#""2024-02-29T12:00:00.5+01:00""#,
                r#""0001-01-01T00:00:00Z""#,
                r#""10000-01-01T00:00:00Z""#,
                "0",
            ][values.below(5)],
        ),
        "google.protobuf.Duration" => out.push_str(
            [
                r#""1.5s""#,
                r#""-0.000000001s""#,
                r#""1s ""#,
                r#""315576000001s""#,
            ][values.below(4)],
        ),
        "google.protobuf.FieldMask" => {
            out.push_str([r#""a,bC.d""#, r#""""#, r#""a_b""#][values.below(3)])
        }
        "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue" => {
            out.push_str(
                [
                    r#"{"a":[1,-0.0,"x",null,{}]}"#,
                    "[1e400]",
                    r#"[1,"2"]"#,
                    "1.5",
                ][values.below(4)],
            );
        }
        "google.protobuf.Empty" => out.push_str(["{}", r#"{"a":1}"#][values.below(2)]),
        "google.protobuf.Any" => match values.below(3) {
            0 => {
                intended.empty_any = true;
                out.push_str("{}");
            }
            1 => {
                out.push_str(r#"{"@type":"type.googleapis.com/gen.M0""#);
                let mut inner = String::new();
                adversarial_message(
                    &desc.parent_pool().get_message_by_name("gen.M0").unwrap(),
                    values,
                    depth.saturating_sub(1),
                    intended,
                    &mut inner,
                );
                if inner.len() > 2 {
                    out.push(',');
                    out.push_str(&inner[1..]);
                } else {
                    out.push('}');
                }
            }
            _ => {
                intended.integer_notation = true;
                out.push_str(
                    r#"{"@type":"type.googleapis.com/google.protobuf.Int32Value","value":"1e1"}"#,
                );
            }
        },
        name if name.starts_with("google.protobuf.") => {
            let value = desc.get_field_by_name("value").unwrap().kind();
            adversarial_value(&value, values, depth, intended, out);
        }
        _ if values.chance(2) => {
            // Deeper than the parser goes (100) and serde_json (128).
            let deep = 90 + values.below(50);
            let name = desc
                .fields()
                .find(|f| f.kind() == Kind::Message(desc.clone()) && !f.is_list() && !f.is_map());
            match name {
                Some(field) => {
                    let key = serde_json::to_string(field.json_name()).unwrap();
                    for _ in 0..deep {
                        out.push('{');
                        out.push_str(&key);
                        out.push(':');
                    }
                    out.push_str("{}");
                    for _ in 0..deep {
                        out.push('}');
                    }
                }
                None => out.push_str("{}"),
            }
        }
        _ => adversarial_message(desc, values, depth - 1, intended, out),
    }
}

/// `value` in one of the notations a client may use, and whether quoted.
fn float_literal(value: f64, values: &mut Values) -> (String, bool) {
    let quoted = values.chance(25);
    if !value.is_finite() {
        let name = if value.is_nan() {
            "NaN"
        } else if value > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        };
        return (name.into(), true);
    }
    let literal = match values.below(7) {
        0 => format!("{value:?}"),
        1 => format!("{value:.16e}"),
        2 => format!("{value:e}"),
        3 if value.abs() < 1e30 && value.abs() > 1e-30 => format!("{value:.40}"),
        4 if value.fract() == 0.0 && value.abs() < 1e30 => format!("{value:.0}"),
        5 => {
            // A decimal of up to 25 digits, not from a double.
            let digits: String = (0..1 + values.below(25))
                .map(|_| char::from(b'0' + values.below(10) as u8))
                .collect();
            let digits = digits.trim_start_matches('0');
            let digits = if digits.is_empty() { "0" } else { digits };
            format!(
                "{}{digits}e{}",
                if values.chance(50) { "-" } else { "" },
                values.below(80) as i32 - 40
            )
        }
        _ => [
            "3.4028235e38",
            "3.4028235677973366e38",
            "3.4028236e38",
            "1e39",
            "1e400",
            "-0",
            "-0.0",
            "4.9e-324",
            "1e-400",
        ][values.below(9)]
        .to_owned(),
    };
    (literal, quoted)
}

// === #28: floats reach the backend exact ===

/// Where a float literal goes in an `EchoMessage`.
#[derive(Debug, Clone, Copy)]
enum Place {
    Single,
    Repeated,
    MapValue,
    Wrapper,
}

/// An `EchoMessage` document holding `literal` as a double or a float
/// (`float`) in `place`.
fn echo_document(literal: &str, float: bool, place: Place) -> String {
    let (single, repeated, map, wrapper) = if float {
        ("floatValue", "repeatedFloat", "floatByKey", "floatWrapper")
    } else {
        (
            "doubleValue",
            "repeatedDouble",
            "doubleByKey",
            "doubleWrapper",
        )
    };
    match place {
        Place::Single => format!(r#"{{"{single}":{literal}}}"#),
        Place::Repeated => format!(r#"{{"{repeated}":[1,{literal}]}}"#),
        Place::MapValue => format!(r#"{{"{map}":{{"k":{literal}}}}}"#),
        Place::Wrapper => format!(r#"{{"{wrapper}":{literal}}}"#),
    }
}

/// The bits `place` holds in a decoded `EchoMessage`.
fn received(message: &EchoMessage, float: bool, place: Place) -> Option<u64> {
    let bits = |f: f32| u64::from(f.to_bits());
    match (float, place) {
        (false, Place::Single) => Some(message.double_value.to_bits()),
        (false, Place::Repeated) => message.repeated_double.get(1).map(|v| v.to_bits()),
        (false, Place::MapValue) => message.double_by_key.get("k").map(|v| v.to_bits()),
        (false, Place::Wrapper) => message.double_wrapper.map(|v| v.to_bits()),
        (true, Place::Single) => Some(bits(message.float_value)),
        (true, Place::Repeated) => message.repeated_float.get(1).map(|v| bits(*v)),
        (true, Place::MapValue) => message.float_by_key.get("k").map(|v| bits(*v)),
        (true, Place::Wrapper) => message.float_wrapper.map(bits),
    }
}

/// What a literal must become: `str::parse::<f64>` of its text, narrowed
/// to `f32` for a float; `None` when it must be refused (out of range).
fn expected_bits(literal: &str, float: bool) -> Option<u64> {
    let text = literal.trim_matches('"');
    let value = match text {
        "NaN" => f64::NAN,
        "Infinity" => f64::INFINITY,
        "-Infinity" => f64::NEG_INFINITY,
        _ => text.parse::<f64>().ok().filter(|v| v.is_finite())?,
    };
    if float {
        let narrow = value as f32;
        (narrow.is_finite() || !value.is_finite()).then(|| u64::from(narrow.to_bits()))
    } else {
        Some(value.to_bits())
    }
}

fn same_bits(got: Option<u64>, want: u64, float: bool) -> bool {
    let nan = |bits: u64| {
        if float {
            f32::from_bits(bits as u32).is_nan()
        } else {
            f64::from_bits(bits).is_nan()
        }
    };
    got.is_some_and(|got| got == want || (nan(got) && nan(want)))
}

fn float_case() -> impl Strategy<Value = (String, bool, Place)> {
    let place = prop_oneof![
        Just(Place::Single),
        Just(Place::Repeated),
        Just(Place::MapValue),
        Just(Place::Wrapper)
    ];
    (any::<u64>(), any::<bool>(), place).prop_map(|(seed, float, place)| {
        let mut values = Values::new(seed);
        let value = if float {
            f64::from(values.float())
        } else {
            values.double()
        };
        let (literal, quoted) = float_literal(value, &mut values);
        let literal = if quoted {
            format!("\"{literal}\"")
        } else {
            literal
        };
        (literal, float, place)
    })
}

struct Echo {
    desc: MessageDescriptor,
    rules: FieldRules,
    plans: JsonPlans,
    index: usize,
}

impl Echo {
    fn new() -> Self {
        let pool = testing_pool();
        let desc = pool
            .get_message_by_name("protogate.testing.v1.EchoMessage")
            .unwrap();
        let rules = FieldRules::new(&pool, &[]);
        let plans = JsonPlans::new(&pool, &rules);
        let index = plans.index_of(&desc).unwrap();
        Self {
            desc,
            rules,
            plans,
            index,
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// The bits that reach the backend are `str::parse::<f64>` of what the
    /// client wrote (narrowed for a float), written straight by the plans
    /// and built the general way; out of range is refused both ways.
    #[test]
    fn float_literals_become_the_nearest_value((literal, float, place) in float_case()) {
        let echo = Echo::new();
        let json = echo_document(&literal, float, place);
        let options = TranscodeOptions::default();
        let fast = parse_request(&echo.plans, echo.index, json.as_bytes(), &options);
        let general = request_message(
            &echo.plans,
            &echo.desc,
            &whole_reply(),
            (&echo.rules, &Default::default()),
            RequestParts { captures: &[], query: None, body: json.as_bytes() },
            &options,
        )
        .map(|message| {
            let mut wire = Vec::new();
            encode_message(&message, &mut wire);
            wire
        });
        match expected_bits(&literal, float) {
            Some(want) => {
                let fast = EchoMessage::decode(&fast.unwrap()[..]).unwrap();
                prop_assert!(same_bits(received(&fast, float, place), want, float), "{json}: {fast:?}");
                let general = EchoMessage::decode(&general.unwrap()[..]).unwrap();
                prop_assert!(same_bits(received(&general, float, place), want, float), "{json}: {general:?}");
            }
            // A string out of range is the plans' to refuse; a number
            // (`1e400`) is beyond serde_json already.
            None => {
                prop_assert!(fast.is_err(), "{json}: {fast:?}");
                prop_assert!(general.is_err(), "{json}");
            }
        }
    }

    /// Random bit patterns from the backend print as the shortest literal
    /// that parses back to the same bits (`-0.0` too); the non-finite ones
    /// as the proto3 JSON strings.
    #[test]
    fn replies_print_floats_as_the_shortest_literal_of_their_bits(
        double in any::<u64>(),
        float in any::<u32>(),
        place in 0usize..4,
    ) {
        let echo = Echo::new();
        let (d, f) = (f64::from_bits(double), f32::from_bits(float));
        let mut message = EchoMessage::default();
        let keys = match place {
            0 => { message.double_value = d; message.float_value = f; ("doubleValue", "floatValue") }
            1 => { message.repeated_double = vec![d]; message.repeated_float = vec![f]; ("repeatedDouble", "repeatedFloat") }
            2 => {
                message.double_by_key.insert("k".into(), d);
                message.float_by_key.insert("k".into(), f);
                ("doubleByKey", "floatByKey")
            }
            _ => { message.double_wrapper = Some(d); message.float_wrapper = Some(f); ("doubleWrapper", "floatWrapper") }
        };
        let wire = message.encode_to_vec();
        let printed = print_reply(&echo.plans, echo.index, &wire, (None, None), &TranscodeOptions::default()).unwrap();
        let printed: HashMap<String, Box<RawValue>> = serde_json::from_slice(&printed).unwrap();
        let literal = |key: &str| -> String {
            let raw = printed.get(key).map(|r| r.get().to_owned()).unwrap_or_else(|| "0.0".into());
            let inner: Json = serde_json::from_str(&raw).unwrap();
            match inner {
                Json::Array(mut items) => items.remove(0).to_string(),
                Json::Object(map) => map["k"].to_string(),
                _ => raw,
            }
        };
        let (double_literal, float_literal) = (literal(keys.0), literal(keys.1));
        check_shortest(&double_literal, d.is_nan(), || d.to_bits() == parse_bits(&double_literal).unwrap(), &format!("{d:e}"))?;
        let back = parse_bits(&float_literal).map(|b| f64::from_bits(b) as f32);
        let back32 = float_literal.trim_matches('"').parse::<f32>().ok();
        check_shortest(
            &float_literal,
            f.is_nan(),
            || back.map(f32::to_bits) == Some(f.to_bits()) && back32.map(f32::to_bits) == Some(f.to_bits()),
            &format!("{f:e}"),
        )?;
    }
}

fn parse_bits(literal: &str) -> Option<u64> {
    match literal.trim_matches('"') {
        "NaN" => Some(f64::NAN.to_bits()),
        "Infinity" => Some(f64::INFINITY.to_bits()),
        "-Infinity" => Some(f64::NEG_INFINITY.to_bits()),
        text => text.parse::<f64>().ok().map(f64::to_bits),
    }
}

/// `literal` parses back (`round_trips`), names a NaN `"NaN"`, and has no
/// more significant digits than std's shortest form `shortest` (`{:e}`).
fn check_shortest(
    literal: &str,
    nan: bool,
    round_trips: impl Fn() -> bool,
    shortest: &str,
) -> Result<(), TestCaseError> {
    if nan {
        prop_assert_eq!(literal, "\"NaN\"");
        return Ok(());
    }
    prop_assert!(round_trips(), "{literal} does not parse back ({shortest})");
    if !literal.starts_with('"') {
        let digits = |s: &str| {
            let mantissa = s.split(['e', 'E']).next().unwrap_or(s);
            let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
            digits
                .trim_start_matches('0')
                .trim_end_matches('0')
                .len()
                .max(1)
        };
        prop_assert_eq!(
            digits(literal),
            digits(shortest),
            "{} is not shortest ({})",
            literal,
            shortest
        );
    }
    Ok(())
}

/// The test service, but every `Echo` request is also handed to the test:
/// the bits a backend received, before its own encoder (prost leaves a
/// `-0.0` out of a reply) touches them.
struct Recorder(tokio::sync::mpsc::UnboundedSender<EchoMessage>);

#[tonic::async_trait]
impl TestService for Recorder {
    async fn echo(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        let _ = self.0.send(request.get_ref().clone());
        Testing.echo(request).await
    }
    async fn leak(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        Testing.leak(request).await
    }
    async fn echo_deep(&self, request: Request<Deep>) -> Result<Response<Deep>, Status> {
        Testing.echo_deep(request).await
    }
    async fn fail(&self, request: Request<FailRequest>) -> Result<Response<()>, Status> {
        Testing.fail(request).await
    }
    async fn sleep(&self, request: Request<SleepRequest>) -> Result<Response<()>, Status> {
        Testing.sleep(request).await
    }
    async fn update_resource(
        &self,
        request: Request<UpdateResourceRequest>,
    ) -> Result<Response<UpdateResourceRequest>, Status> {
        Testing.update_resource(request).await
    }
    async fn echo_headers(&self, request: Request<()>) -> Result<Response<Headers>, Status> {
        Testing.echo_headers(request).await
    }
    async fn hidden(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        Testing.hidden(request).await
    }
    async fn public_headers(&self, request: Request<()>) -> Result<Response<Headers>, Status> {
        Testing.public_headers(request).await
    }
    async fn admin_headers(&self, request: Request<()>) -> Result<Response<Headers>, Status> {
        Testing.admin_headers(request).await
    }
}

/// End to end through a real backend: the bits it receives are
/// `str::parse::<f64>` of the literal (narrowed for a float), and what is
/// out of range is a 400.
#[test]
fn float_literals_reach_a_real_backend_exact() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let rx = std::cell::RefCell::new(rx);
    let gateway = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TestServiceServer::new(Recorder(tx)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let config = Config {
            upstreams: vec![common::upstream("protogate.testing", &url)],
            ..Config::default()
        };
        common::Gateway::serve(&config, vec![common::testing_set()]).await
    });
    let mut runner = TestRunner::new(config(64));
    let result = runner.run(&float_case(), |(literal, float, place)| {
        let json = echo_document(&literal, float, place);
        let request = gateway
            .client
            .post(gateway.url("/v1/echo"))
            .header("content-type", "application/json")
            .body(json.clone());
        let (status, reply) = runtime.block_on(gateway.send(request));
        match expected_bits(&literal, float) {
            Some(want) => {
                prop_assert_eq!(status, 200, "{}: {}", json, reply);
                let received_message = rx.borrow_mut().try_recv().unwrap();
                let got = received(&received_message, float, place);
                prop_assert!(
                    same_bits(got, want, float),
                    "{}: {:?}",
                    json,
                    received_message
                );
            }
            None => prop_assert_eq!(status, 400, "{}: {}", json, reply),
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}
