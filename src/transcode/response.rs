//! Reply message → proto3 JSON bytes, selecting `response_body` when the
//! binding names one: printed from the wire by the catalog's [`JsonPlans`],
//! or (for what they do not cover) decoded and serialized by prost-reflect.

use prost_reflect::{
    DynamicMessage, FieldDescriptor, MessageDescriptor, MethodDescriptor, ReflectMessage as _,
    SerializeOptions, Value,
};

use super::encode_message;
use super::{
    field_mask::{client_fields, MaskTree},
    field_rules::{child_type, for_each_json, for_each_message, FieldRules, MethodRules},
    wire_json::{JsonPlans, Masks},
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
    pub method_descriptor: &'a MethodDescriptor,
    pub plans: &'a JsonPlans,
    /// The reply type's print plan.
    pub reply_plan: Option<usize>,
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

    /// Prints an encoded reply (or its `response_body` field) as filtered JSON.
    pub fn print(
        &self,
        reply: &[u8],
        shape: ReplyShape<'_>,
        options: &TranscodeOptions,
    ) -> Result<Vec<u8>, Error> {
        let body = shape.plan.response_body.as_ref();
        let omit = match body {
            None => shape.omit,
            Some(field) => shape.omit.and_then(|omit| omit.child(field)),
        };
        // An omitted `response_body` field prints as its default: the general way.
        let body_omitted = body.is_some() && omit.is_some_and(MaskTree::is_empty);
        let plan = shape.reply_plan.filter(|_| !body_omitted);
        let masks = Masks {
            omit,
            keep: self.keep.as_ref(),
        };
        if let Some(root) = plan {
            if let Ok(json) = shape.plans.print(root, reply, body, masks, options) {
                return Ok(json);
            }
        }
        let mut message = decode_reply(shape.method_descriptor, reply)?;
        if let Some(root) = plan {
            // Decoded and written again, a reply's pieces are merged and the
            // last member of a oneof kept: the plans print most of what they
            // left (prost-reflect would leave out a `-0.0`).
            let mut normal = Vec::with_capacity(reply.len());
            encode_message(&message, &mut normal);
            if let Ok(json) = shape.plans.print(root, &normal, body, masks, options) {
                return Ok(json);
            }
        }
        self.encode(&mut message, shape, options)
    }

    /// Filters a decoded reply and encodes it (or its `response_body` field):
    /// the general way, which [`Self::print`] must agree with.
    pub(crate) fn encode(
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

/// A reply decoded by its method's output type; bytes that do not decode are
/// the upstream's fault.
pub fn decode_reply(method: &MethodDescriptor, reply: &[u8]) -> Result<DynamicMessage, Error> {
    let output = method.output();
    DynamicMessage::decode(output.clone(), reply).map_err(|err| {
        Error::InvalidReply(format!("not a valid {}: {err}", output.full_name()).into())
    })
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

/// The plans' printing against prost-reflect's, over every field kind, each
/// JSON option, the filters and `response_body`.
#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_reflect::MethodDescriptor;
    use serde_json::{json, Value as Json};

    use super::*;
    use crate::{
        config::Config,
        http_rule::BodyPlan,
        transcode::{FieldRules, JsonPlans},
    };

    struct Fixture {
        echo: MethodDescriptor,
        rules: FieldRules,
        plans: JsonPlans,
    }

    fn fixture() -> Fixture {
        let pool = crate::testing::pool();
        let echo = pool
            .get_service_by_name("protogate.testing.v1.TestService")
            .unwrap()
            .methods()
            .find(|m| m.name() == "Echo")
            .unwrap();
        let rules = FieldRules::new(&pool, &[]);
        let plans = JsonPlans::new(&pool, &rules);
        Fixture { echo, rules, plans }
    }

    fn encode(fixture: &Fixture, doc: &Json) -> Vec<u8> {
        DynamicMessage::deserialize(fixture.echo.output(), doc)
            .unwrap()
            .encode_to_vec()
    }

    fn full_doc() -> Json {
        let mut doc = json!({
            "stringValue": "quote \" backslash \\ newline \n tab \t bell \u{7} é 😀",
            "int32Value": -1, "int64Value": i64::MIN.to_string(), "uint32Value": u32::MAX,
            "uint64Value": u64::MAX.to_string(), "sint32Value": -5, "sint64Value": "-6",
            "fixed32Value": 7, "fixed64Value": "8", "sfixed32Value": -9, "sfixed64Value": "-10",
            "floatValue": 0.1, "doubleValue": 1e300, "boolValue": true,
            "bytesValue": "AAEC/f7/", "color": "GREEN",
            "nested": {"name": "n", "value": 3, "tags": ["a", "b"], "secret": "s",
                       "child": {"name": "c", "secret": "deep"}},
            "repeatedString": ["x", "", "z"], "repeatedInt32": [1, -2, 0, 2147483647],
            "repeatedColor": ["RED", "GREEN", 7],
            "repeatedNested": [{"name": "r1", "secret": "s1"}, {}, {"value": 4, "tags": ["t"]}],
            "labels": {"b": "2", "a": "1", "": "empty"},
            "nestedById": {"3": {"name": "three", "secret": "x"}, "-1": {}},
        });
        let more = json!({
            "timestamp": "2024-02-29T12:34:56.789Z", "duration": "-1.500s",
            "fieldMask": "a.bC,d", "doubleWrapper": 2.5, "floatWrapper": -0.0,
            "int64Wrapper": "-12", "uint64Wrapper": "13", "int32Wrapper": 0,
            "uint32Wrapper": 15, "boolWrapper": false, "stringWrapper": "w",
            "bytesWrapper": "d3c=",
            "structValue": {"a": [1, "x", null, true, {"b": 2.5}]},
            "value": {"k": "v"}, "listValue": [1, [2]],
        });
        let rest = json!({
            "any": {"@type": "type.googleapis.com/protogate.testing.v1.Nested", "name": "in any"},
            "empty": {}, "repeatedTimestamp": ["1970-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z"],
            "optionalString": "", "choiceNested": {"name": "chosen", "secret": "hidden"},
            "internalValue": "never printed"
        });
        for part in [more, rest] {
            if let (Json::Object(doc), Json::Object(part)) = (&mut doc, part) {
                doc.extend(part);
            }
        }
        doc
    }

    fn varint(mut value: u64, out: &mut Vec<u8>) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    fn field(number: u64, wire: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(number << 3 | wire, &mut out);
        if wire == 2 {
            varint(payload.len() as u64, &mut out);
        }
        out.extend_from_slice(payload);
        out
    }

    fn varint_bytes(value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(value, &mut out);
        out
    }

    /// Wire forms an encoder of ours would not produce, but an upstream may
    /// send, with whether the plans print them.
    fn wire_cases(fixture: &Fixture) -> Vec<(&'static str, Vec<u8>, bool)> {
        let doc = |d: Json| encode(fixture, &d);
        let entry = |key: &str, value: &str| {
            [field(1, 2, key.as_bytes()), field(2, 2, value.as_bytes())].concat()
        };
        vec![
            ("full", doc(full_doc()), true),
            ("empty", Vec::new(), true),
            (
                "out of order, last scalar wins, lists append",
                [
                    doc(json!({"nested": {"name": "n"}, "repeatedString": ["a"]})),
                    doc(json!({"stringValue": "first", "int32Value": 1})),
                    doc(json!({"stringValue": "second", "repeatedString": ["b"]})),
                ]
                .concat(),
                true,
            ),
            (
                "a list broken by an unknown field, then by itself again",
                [
                    field(18, 2, b"a"),
                    field(999, 0, &[1]),
                    field(19, 0, &[5]),
                    field(1000, 2, b"junk"),
                    field(19, 0, &[6]),
                    field(18, 2, b"b"),
                ]
                .concat(),
                true,
            ),
            (
                "a nested message out of order inside one in order",
                [
                    doc(json!({"stringValue": "s"})),
                    field(
                        17,
                        2,
                        &[field(2, 0, &[3]), field(1, 2, b"n"), field(2, 0, &[4])].concat(),
                    ),
                    doc(json!({"repeatedNested": [{"name": "r"}], "labels": {"k": "v"}})),
                ]
                .concat(),
                true,
            ),
            (
                "explicit zeros and an unknown field",
                [
                    field(2, 0, &[0]),
                    field(1, 2, b""),
                    field(14, 0, &[0]),
                    field(1000, 0, &[5]),
                    field(999, 2, b"junk"),
                    field(12, 5, &0f32.to_le_bytes()),
                    field(13, 1, &(-0f64).to_le_bytes()),
                ]
                .concat(),
                true,
            ),
            (
                "unpacked and packed repeated numbers mixed",
                [
                    field(19, 0, &varint_bytes(5)),
                    field(19, 2, &[varint_bytes(6), varint_bytes(u64::MAX)].concat()),
                    field(19, 2, b""),
                    field(19, 0, &varint_bytes(7)),
                ]
                .concat(),
                true,
            ),
            ("only an empty packed run", field(19, 2, b""), true),
            (
                "an empty packed run, then the first field printed",
                [field(19, 2, b""), field(20, 0, &varint_bytes(1))].concat(),
                true,
            ),
            (
                "map keys repeated: the last value wins; entries missing parts",
                [
                    field(22, 2, &entry("k", "old")),
                    field(22, 2, &entry("a", "x")),
                    field(22, 2, &entry("k", "new")),
                    field(22, 2, &field(2, 2, b"no key")),
                    field(23, 2, &field(1, 0, &[4])),
                ]
                .concat(),
                true,
            ),
            (
                "int32 beyond 32 bits and a bool of 2",
                [
                    field(2, 0, &varint_bytes(1 << 32)),
                    field(14, 0, &[2]),
                    field(16, 0, &varint_bytes(99)),
                ]
                .concat(),
                true,
            ),
            (
                "float specials",
                [
                    field(12, 5, &f32::NAN.to_le_bytes()),
                    field(13, 1, &f64::NEG_INFINITY.to_le_bytes()),
                ]
                .concat(),
                true,
            ),
            (
                "a message sent twice merges",
                [
                    doc(json!({"nested": {"name": "a"}})),
                    doc(json!({"nested": {"value": 1}})),
                ]
                .concat(),
                false,
            ),
            (
                "two oneof members: the last wins, here the internal one",
                [
                    doc(json!({"choiceString": "visible"})),
                    doc(json!({"choiceSecret": "hidden"})),
                ]
                .concat(),
                false,
            ),
        ]
    }

    fn bindings(fixture: &Fixture) -> Vec<BindingPlan> {
        let output = fixture.echo.output();
        let mut plans = vec![None];
        for name in [
            "nested",
            "repeated_nested",
            "labels",
            "string_value",
            "timestamp",
        ] {
            plans.push(output.get_field_by_name(name));
        }
        plans
            .into_iter()
            .map(|response_body| BindingPlan {
                vars: Box::new([]),
                body: BodyPlan::None,
                response_body,
                update_mask: None,
                fields_param: true,
                raw_request: false,
                raw_response: false,
            })
            .collect()
    }

    fn options() -> Vec<TranscodeOptions> {
        let mut all = Vec::new();
        for bits in 0..8 {
            let mut config = Config::default();
            config.json.emit_unpopulated = bits & 1 != 0;
            config.json.use_proto_field_names = bits & 2 != 0;
            config.json.enums_as_numbers = bits & 4 != 0;
            all.push(TranscodeOptions::new(
                &config.json,
                &config.query,
                &config.filters,
            ));
        }
        all
    }

    /// JSON equality, but a `float` may print in its own shortest form
    /// (prost-reflect widens it to a double when it builds a JSON tree).
    fn same(a: &Json, b: &Json) -> bool {
        match (a, b) {
            (Json::Number(x), Json::Number(y)) => {
                x == y
                    || x.as_f64()
                        .zip(y.as_f64())
                        .is_some_and(|(x, y)| x as f32 == y as f32)
            }
            (Json::Array(x), Json::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
            }
            // The plans print a `-0.0` that prost-reflect leaves out.
            (Json::Object(x), Json::Object(y)) => {
                x.iter().all(|(k, v)| match y.get(k) {
                    Some(w) => same(v, w),
                    None => v
                        .as_f64()
                        .is_some_and(|v| v.to_bits() == (-0.0f64).to_bits()),
                }) && y.keys().all(|k| x.contains_key(k))
            }
            _ => a == b,
        }
    }

    #[test]
    fn plans_print_what_prost_reflect_prints() {
        let fixture = fixture();
        let output = fixture.echo.output();
        let method = fixture.rules.for_method(&fixture.echo);
        let omit = MaskTree::parse(
            &output,
            [
                "nested.value",
                "labels",
                "repeated_nested.tags",
                "bool_value",
            ],
            |_, _| false,
        )
        .unwrap();
        let mut compared = 0;
        for (case, bytes, printable) in wire_cases(&fixture) {
            for binding in bindings(&fixture) {
                let visible = binding
                    .response_body
                    .as_ref()
                    .map_or_else(|| Some(output.clone()), child_type);
                for options in options() {
                    for omit in [None, Some(&omit)] {
                        let shape = ReplyShape {
                            rules: &fixture.rules,
                            method: &method,
                            omit,
                            plan: &binding,
                            method_descriptor: &fixture.echo,
                            plans: &fixture.plans,
                            reply_plan: fixture.plans.index_of(&output),
                        };
                        let mut filters = vec![ReplyFilter::default()];
                        if visible.as_ref() == Some(&output) {
                            let fields = "stringValue,nested.name,repeatedNested.value,\
                                          nestedById.name,timestamp,choiceNested";
                            filters.push(ReplyFilter::new(shape, &output, Some(fields)).unwrap());
                        }
                        for filter in filters {
                            let context = format!(
                                "{case}; body {:?}; {options:?}; omit {}; keep {:?}",
                                binding.response_body.as_ref().map(FieldDescriptor::name),
                                omit.is_some(),
                                filter.keep.is_some()
                            );
                            let printed = filter.print(&bytes, shape, &options).unwrap();
                            let mut decoded =
                                DynamicMessage::decode(output.clone(), &bytes[..]).unwrap();
                            let expected = filter.encode(&mut decoded, shape, &options).unwrap();
                            let printed: Json = serde_json::from_slice(&printed).unwrap();
                            let expected: Json = serde_json::from_slice(&expected).unwrap();
                            assert!(
                                same(&printed, &expected),
                                "{context}\nprinted: {printed}\nexpected: {expected}"
                            );
                            let fast = fixture.plans.print(
                                shape.reply_plan.unwrap(),
                                &bytes,
                                binding.response_body.as_ref(),
                                Masks {
                                    omit: omit.and_then(|o| match &binding.response_body {
                                        None => Some(o),
                                        Some(field) => o.child(field),
                                    }),
                                    keep: filter.keep.as_ref(),
                                },
                                &options,
                            );
                            // With a `response_body`, the rest of the reply may not matter.
                            if binding.response_body.is_none() {
                                assert_eq!(fast.is_ok(), printable, "{context}");
                            }
                            compared += 1;
                        }
                    }
                }
            }
        }
        assert!(compared > 500, "{compared} comparisons");
    }

    /// prost-reflect prints a non-finite wrapper as `null`; the proto3 JSON
    /// mapping (and the plans) spell it as for a plain float.
    #[test]
    fn non_finite_wrappers_print_as_strings() {
        let fixture = fixture();
        let output = fixture.echo.output();
        let bytes = [
            field(27, 2, &field(1, 1, &f64::NAN.to_le_bytes())),
            field(28, 2, &field(1, 5, &f32::NEG_INFINITY.to_le_bytes())),
        ]
        .concat();
        let printed = fixture
            .plans
            .print(
                fixture.plans.index_of(&output).unwrap(),
                &bytes,
                None,
                Masks::default(),
                &TranscodeOptions::default(),
            )
            .unwrap();
        assert_eq!(
            String::from_utf8(printed).unwrap(),
            r#"{"doubleWrapper":"NaN","floatWrapper":"-Infinity"}"#
        );
    }

    #[test]
    fn bytes_that_do_not_decode_are_the_upstreams_fault() {
        let fixture = fixture();
        let output = fixture.echo.output();
        let method = fixture.rules.for_method(&fixture.echo);
        let binding = bindings(&fixture).remove(0);
        let shape = ReplyShape {
            rules: &fixture.rules,
            method: &method,
            omit: None,
            plan: &binding,
            method_descriptor: &fixture.echo,
            plans: &fixture.plans,
            reply_plan: fixture.plans.index_of(&output),
        };
        let options = TranscodeOptions::default();
        for bytes in [
            field(1, 2, &[0xff, 0xfe]),   // not UTF-8
            vec![0x0a, 0x05, b'a'],       // truncated
            field(1, 0, &[1]),            // wrong wire type
            vec![0x80, 0x80, 0x80, 0x80], // unterminated tag
            field(
                2,
                0,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            ), // past 64 bits
        ] {
            let err = ReplyFilter::default()
                .print(&bytes, shape, &options)
                .unwrap_err();
            assert!(
                matches!(&err, Error::InvalidReply(why) if why.contains("not a valid protogate.testing.v1.EchoMessage")),
                "{bytes:?}: {err:?}"
            );
            assert_eq!(err.http_status(), http::StatusCode::BAD_GATEWAY);
        }
    }

    /// A reply nested past the limit is refused by both ways, neither
    /// recursing once per level; one at the limit prints.
    #[test]
    fn a_reply_nested_deeper_than_the_limit_is_refused() {
        let pool = crate::testing::pool();
        let method = pool
            .get_service_by_name("protogate.testing.v1.TestService")
            .unwrap()
            .methods()
            .find(|m| m.name() == "EchoDeep")
            .unwrap();
        let rules = FieldRules::new(&pool, &[]);
        let plans = JsonPlans::new(&pool, &rules);
        let method_rules = rules.for_method(&method);
        let binding = BindingPlan {
            vars: Box::new([]),
            body: BodyPlan::None,
            response_body: None,
            update_mask: None,
            fields_param: true,
            raw_request: false,
            raw_response: false,
        };
        let shape = ReplyShape {
            rules: &rules,
            method: &method_rules,
            omit: None,
            plan: &binding,
            method_descriptor: &method,
            plans: &plans,
            reply_plan: plans.index_of(&method.output()),
        };
        let options = TranscodeOptions::default();
        let print = |levels| {
            ReplyFilter::default().print(&crate::testing::deep_wire(levels), shape, &options)
        };
        let printed: Json =
            serde_json::from_slice(&print(crate::nesting::MAX_DEPTH).unwrap()).unwrap();
        assert_eq!(
            printed
                .pointer(&"/d".repeat(crate::nesting::MAX_DEPTH))
                .unwrap(),
            &json!({"s": "bottom"})
        );
        let err = print(100_000).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidReply(cause) if cause.contains("recursion limit")),
            "{err:?}"
        );
    }
}
