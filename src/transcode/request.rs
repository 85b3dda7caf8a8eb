//! JSON body + path captures + query string → the request message.
//! Order: body first, then query (only fields outside the body and the path),
//! then path variables, so the URL — what policies looked at — always wins.

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _, Value,
};

use super::{
    encode,
    query::{self, parent_mut},
    scalar, update_mask,
    wire_json::body_error,
    Declined, FieldRules, JsonPlans, MethodRules, TranscodeOptions,
};
use crate::{
    error::Error,
    http_rule::{BindingPlan, BodyPlan},
    nesting::{self, MAX_DEPTH},
    router::Capture,
};

/// What a request brings besides its route.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub captures: &'a [Capture],
    pub query: Option<&'a str>,
    pub body: &'a [u8],
}

/// Builds the request message for one call. The field rules apply to what
/// the client sent in the body and query (internal fields refused,
/// output-only fields cleared) before the path is bound, and `REQUIRED`
/// fields are checked last.
pub fn request_message(
    plans: &JsonPlans,
    input: &MessageDescriptor,
    plan: &BindingPlan,
    (field_rules, method_rules): (&FieldRules, &MethodRules),
    parts: RequestParts<'_>,
    options: &TranscodeOptions,
) -> Result<DynamicMessage, Error> {
    let body = parts.body;
    if plan.body != BodyPlan::None && nests_too_deep(body) {
        return Err(Error::InvalidJson(nesting::too_deep("the document").into()));
    }
    let mut message = match &plan.body {
        BodyPlan::Whole => parse_json(plans, input, body, options)?,
        BodyPlan::None => DynamicMessage::new(input.clone()),
        BodyPlan::Field(field) => {
            let mut message = DynamicMessage::new(input.clone());
            if !is_blank(body) {
                set_body_field(plans, &mut message, field, body, options)?;
            }
            message
        }
    };
    if let Some(query) = parts.query.filter(|q| !q.is_empty()) {
        query::apply(&mut message, plan, query, options)?;
    }
    field_rules.sanitize_request(&mut message, method_rules, options.clear_internal_input)?;
    if let (Some(mask), BodyPlan::Field(body_field)) = (&plan.update_mask, &plan.body) {
        if !message.has_field(mask) && !is_blank(body) {
            if let Kind::Message(body_type) = body_field.kind() {
                update_mask::fill(&mut message, mask, &body_type, body, field_rules)?;
            }
        }
    }
    for capture in parts.captures {
        let Some(path) = plan.vars.get(capture.var) else {
            return Err(Error::Internal("capture without a variable".into()));
        };
        let value = scalar::parse(path.leaf(), &capture.value)
            .map_err(|reason| Error::invalid_field(path.to_string(), reason))?;
        let (leaf, parents) = path
            .fields()
            .split_last()
            .ok_or_else(|| Error::Internal("empty path".into()))?;
        parent_mut(&mut message, parents)?.set_field(leaf, value);
    }
    field_rules.check_required(&mut message, method_rules)?;
    Ok(message)
}

/// The request message of a unary call as wire bytes, written straight from
/// the JSON body by the catalog's plans, then the query parameters, then the
/// path variables (on the wire the last value of a field wins, and repeated
/// values add up, as [`request_message`] sets and pushes them). `None` when
/// it needs the general way: `REQUIRED` fields or an `update_mask` to check
/// or fill, a body field that is not a message, or a body, query or path
/// value the plans leave to [`request_message`] (which also words any error).
pub fn request_wire(
    plans: &JsonPlans,
    input: Option<usize>,
    plan: &BindingPlan,
    rules: &MethodRules,
    parts: RequestParts<'_>,
    options: &TranscodeOptions,
) -> Option<Vec<u8>> {
    if rules.checks_required() || plan.update_mask.is_some() {
        return None;
    }
    let input = input?;
    let mut out = Vec::with_capacity(parts.body.len() + 32);
    if !is_blank(parts.body) {
        let json = parts.body;
        match &plan.body {
            BodyPlan::None => {}
            BodyPlan::Whole => plans
                .encode_json(input, None, json, options, &mut out)
                .ok()?,
            BodyPlan::Field(field) => {
                let number = Some(field.number());
                plans
                    .encode_json(input, number, json, options, &mut out)
                    .ok()?;
            }
        }
    }
    if let Some(query) = parts.query.filter(|q| !q.is_empty()) {
        query::write(plans, input, plan, query, options, &mut out)?;
    }
    for capture in parts.captures {
        let path = plan.vars.get(capture.var)?;
        let leaf = path.leaf();
        if leaf.is_list() || leaf.is_map() {
            return None;
        }
        if leaf.kind() == Kind::String {
            encode::path_text(path.fields(), &capture.value, &mut out);
            continue;
        }
        let value = scalar::parse(leaf, &capture.value).ok()?;
        encode::path_value(path.fields(), &value, &mut out);
    }
    Some(out)
}

/// Whether JSON `text` holds more than [`MAX_DEPTH`] objects and arrays
/// inside one another: measured in one pass, before a parser recurses into
/// it (serde_json's own limit is 128, and is not the one shared limit).
fn nests_too_deep(text: &[u8]) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

/// Parses a JSON document into a message; a blank body is the empty message.
/// The catalog's plans write it (their numbers are exact) and the bytes are
/// decoded; prost-reflect parses what they leave. Either way an error in a
/// value names the field by its JSON path.
fn parse_json(
    plans: &JsonPlans,
    desc: &MessageDescriptor,
    body: &[u8],
    options: &TranscodeOptions,
) -> Result<DynamicMessage, Error> {
    if is_blank(body) {
        return Ok(DynamicMessage::new(desc.clone()));
    }
    if let Some(plan) = plans.index_of(desc) {
        let mut wire = Vec::with_capacity(body.len());
        match plans.encode_json(plan, None, body, options, &mut wire) {
            Ok(()) => {
                return DynamicMessage::decode(desc.clone(), &wire[..])
                    .map_err(|err| Error::Internal(format!("planned bytes: {err}").into()));
            }
            Err(Declined::Invalid(err)) => return Err(err),
            Err(Declined::Unsupported) => {}
        }
    }
    let mut track = serde_path_to_error::Track::new();
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let tracked = serde_path_to_error::Deserializer::new(&mut deserializer, &mut track);
    let message =
        DynamicMessage::deserialize_with_options(desc.clone(), tracked, &options.deserialize)
            .map_err(|err| body_error(&track.path(), &err))?;
    deserializer
        .end()
        .map_err(|err| Error::InvalidJson(err.to_string().into()))?;
    Ok(message)
}

/// `body: "field"`: a singular message field parses directly; any other field
/// (repeated, map, scalar) parses through its parent keyed by its JSON name.
fn set_body_field(
    plans: &JsonPlans,
    message: &mut DynamicMessage,
    field: &FieldDescriptor,
    body: &[u8],
    options: &TranscodeOptions,
) -> Result<(), Error> {
    let value = match field.kind() {
        Kind::Message(desc) if !field.is_list() && !field.is_map() => {
            Value::Message(parse_json(plans, &desc, body, options)?)
        }
        _ => {
            let mut wrapped = Vec::with_capacity(body.len() + field.json_name().len() + 5);
            wrapped.extend_from_slice(b"{\"");
            wrapped.extend_from_slice(field.json_name().as_bytes());
            wrapped.extend_from_slice(b"\":");
            wrapped.extend_from_slice(body);
            wrapped.push(b'}');
            parse_json(plans, &message.descriptor(), &wrapped, options)?
                .get_field(field)
                .into_owned()
        }
    };
    message.set_field(field, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{http_rule::FieldPath, testing, transcode::encode_message};

    /// `EchoMessage` of the test protos, with the catalog parts both ways need.
    struct Fixture {
        echo: MessageDescriptor,
        rules: FieldRules,
        plans: JsonPlans,
        options: TranscodeOptions,
    }

    impl Fixture {
        fn new() -> Self {
            let pool = testing::pool();
            let echo = pool
                .get_message_by_name("protogate.testing.v1.EchoMessage")
                .unwrap();
            let rules = FieldRules::new(&pool, &[]);
            let plans = JsonPlans::new(&pool, &rules);
            let options = TranscodeOptions::default();
            Self {
                echo,
                rules,
                plans,
                options,
            }
        }

        /// A binding with `body` and the path variables `vars`.
        fn binding(&self, body: BodyPlan, vars: &[&[&str]]) -> BindingPlan {
            let vars = vars
                .iter()
                .map(|names| {
                    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
                    FieldPath::resolve(&self.echo, &names).unwrap()
                })
                .collect();
            BindingPlan {
                vars,
                body,
                response_body: None,
                update_mask: None,
                fields_param: true,
                raw_request: false,
                raw_response: false,
            }
        }

        fn nested(&self) -> BodyPlan {
            BodyPlan::Field(self.echo.get_field_by_name("nested").unwrap())
        }

        fn straight(&self, plan: &BindingPlan, parts: RequestParts<'_>) -> Option<Vec<u8>> {
            let root = self.plans.index_of(&self.echo);
            let rules = MethodRules::default();
            request_wire(&self.plans, root, plan, &rules, parts, &self.options)
        }

        /// Asserts that the wire bytes written straight mean the message
        /// built the general way (both written again by the message encoder,
        /// which leaves out defaults and packs lists).
        fn assert_both_ways(&self, plan: &BindingPlan, parts: RequestParts<'_>, case: &str) {
            let wire = self
                .straight(plan, parts)
                .unwrap_or_else(|| panic!("went the general way: {case}"));
            let rules = (&self.rules, &MethodRules::default());
            let general =
                request_message(&self.plans, &self.echo, plan, rules, parts, &self.options)
                    .unwrap();
            let mut expected = Vec::new();
            encode_message(&general, &mut expected);
            let expected = testing::meaning(&self.echo, &expected);
            assert_eq!(testing::meaning(&self.echo, &wire), expected, "{case}");
        }
    }

    fn captures(values: &[&str]) -> Vec<Capture> {
        values
            .iter()
            .enumerate()
            .map(|(var, value)| Capture {
                var,
                value: (*value).to_owned(),
            })
            .collect()
    }

    /// Bodies and path values: the path wins, even with a default value.
    #[test]
    fn bodies_and_paths_mean_the_same_both_ways() {
        let fixture = Fixture::new();
        let cases = [
            (
                BodyPlan::Whole,
                r#"{"stringValue":"body","nested":{"name":"body","value":3},"int32Value":7}"#,
                ["path", "", "0"],
            ),
            (BodyPlan::Whole, "  ", ["p", "n", "-4"]),
            (
                fixture.nested(),
                r#"{"name":"body","tags":["t"]}"#,
                ["path", "", "12"],
            ),
            (BodyPlan::None, r#"{"ignored":true}"#, ["only", "path", "1"]),
        ];
        for (body, json, values) in cases {
            let vars: [&[&str]; 3] = [&["string_value"], &["nested", "name"], &["int32_value"]];
            let plan = fixture.binding(body, &vars);
            let captures = captures(&values);
            let parts = RequestParts {
                captures: &captures,
                query: None,
                body: json.as_bytes(),
            };
            fixture.assert_both_ways(&plan, parts, json);
        }
    }

    /// Query strings after a body field and before a path variable.
    #[test]
    fn query_parameters_mean_the_same_both_ways() {
        let fixture = Fixture::new();
        let field_body = fixture.binding(fixture.nested(), &[&["int32_value"]]);
        let no_body = fixture.binding(BodyPlan::None, &[&["int32_value"]]);
        let capture = captures(&["9"]);
        let covered = [
            (&field_body, "uint64Value=18446744073709551615&repeated_string=a&repeatedString=b+c&color=GREEN&boolValue=true&fields=stringValue"),
            (&no_body, "nested.name=x%20y&nested.tags=a&nested.tags=b&nested.child.value=4&doubleValue=1.5&bytesValue=aGk%3D&repeatedInt32=1&repeatedInt32=-2"),
            (&no_body, "string_value=first&stringValue=second&sint64Value=-5"),
        ];
        for (plan, query) in covered {
            let parts = RequestParts {
                captures: &capture,
                query: Some(query),
                body: br#"{"name":"body"}"#,
            };
            fixture.assert_both_ways(plan, parts, query);
        }
    }

    #[test]
    fn what_the_plans_leave_goes_the_general_way() {
        let fixture = Fixture::new();
        let whole = fixture.binding(BodyPlan::Whole, &[&["int32_value"]]);
        let field_body = fixture.binding(fixture.nested(), &[&["int32_value"]]);
        let no_body = fixture.binding(BodyPlan::None, &[&["int32_value"]]);
        let (one, bad) = (captures(&["1"]), captures(&["x"]));
        let cases = [
            (&whole, None, "{}", &one, true),
            (&whole, Some(""), "{}", &one, true),
            (&whole, Some("fields=a"), "{}", &one, true),
            (&whole, Some("a=1"), "{}", &one, false),
            (&whole, None, r#"{"unknown":1}"#, &one, false),
            (&whole, None, "{}", &bad, false),
            (
                &field_body,
                Some("nested.name=bound-by-the-body"),
                "",
                &one,
                false,
            ),
            (&no_body, Some("int32Value=3"), "", &one, false),
            (
                &no_body,
                Some("timestamp=2024-01-01T00:00:00Z"),
                "",
                &one,
                false,
            ),
            (&no_body, Some("labels=a"), "", &one, false),
            (&no_body, Some("nested=a"), "", &one, false),
            (&no_body, Some("unknown=1"), "", &one, false),
            (&no_body, Some("internalValue=x"), "", &one, false),
            (&no_body, Some("nested.secret=x"), "", &one, false),
            (&no_body, Some("int32Value.x=1"), "", &one, false),
            (&no_body, Some("uint32Value=-1"), "", &one, false),
            (&no_body, Some("stringValue..x=1"), "", &one, false),
        ];
        for (plan, query, body, captures, straight) in cases {
            let parts = RequestParts {
                captures,
                query,
                body: body.as_bytes(),
            };
            let written = fixture.straight(plan, parts).is_some();
            assert_eq!(written, straight, "{query:?} {body}");
        }
    }

    /// Objects and arrays count alike both ways: the limit's JSON is
    /// written straight, one more level is refused the general way.
    #[test]
    fn json_at_the_limit_is_read_both_ways_and_one_more_level_refused() {
        let fixture = Fixture::new();
        let whole = fixture.binding(BodyPlan::Whole, &[]);
        // The root, a list, then objects: `containers` in all.
        let json = |containers: usize| {
            let objects = containers - 3;
            format!(
                r#"{{"repeatedNested":[{}{{}}{}]}}"#,
                r#"{"child":"#.repeat(objects),
                "}".repeat(objects)
            )
        };
        let (at_limit, deeper) = (json(MAX_DEPTH), json(MAX_DEPTH + 1));
        fixture.assert_both_ways(&whole, body_only(&at_limit), "at the limit");
        assert_eq!(fixture.straight(&whole, body_only(&deeper)), None);
        let rules = (&fixture.rules, &MethodRules::default());
        let err = request_message(
            &fixture.plans,
            &fixture.echo,
            &whole,
            rules,
            body_only(&deeper),
            &fixture.options,
        )
        .unwrap_err();
        assert!(err.to_string().contains("the limit of 100 levels"), "{err}");
    }

    fn body_only(body: &str) -> RequestParts<'_> {
        RequestParts {
            captures: &[],
            query: None,
            body: body.as_bytes(),
        }
    }

    /// A query path or JSON body 100,000 levels deep: left by the plans and
    /// refused the general way naming the limit, neither recursing per level.
    #[test]
    fn input_nested_deeper_than_the_limit_is_refused_both_ways() {
        let fixture = Fixture::new();
        let no_body = fixture.binding(BodyPlan::None, &[]);
        let whole = fixture.binding(BodyPlan::Whole, &[]);
        let levels = 100_000;
        let query = format!("nested{}.name=x", ".child".repeat(levels));
        let json = format!(
            r#"{{"nested":{}{{}}{}}}"#,
            r#"{"child":"#.repeat(levels),
            "}".repeat(levels)
        );
        let cases = [
            (&no_body, Some(query.as_str()), ""),
            (&whole, None, json.as_str()),
        ];
        for (plan, query, body) in cases {
            let parts = RequestParts {
                captures: &[],
                query,
                body: body.as_bytes(),
            };
            assert_eq!(fixture.straight(plan, parts), None);
            let rules = (&fixture.rules, &MethodRules::default());
            let err = request_message(
                &fixture.plans,
                &fixture.echo,
                plan,
                rules,
                parts,
                &fixture.options,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("the limit of 100 levels"), "{err}");
        }
    }
}
