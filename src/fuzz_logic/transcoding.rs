//! Requests and replies, each written two ways: straight between JSON and
//! wire bytes by the catalog's plans, and the general way through
//! prost-reflect's `DynamicMessage`. The two must mean the same, or the
//! fast way must decline.

use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::Value as Json;

use super::fixture;
use crate::{
    http_rule::BodyPlan,
    registry::RouteMatch,
    testing::meaning,
    transcode::encode_message,
    transcode::{self, ReplyFilter, RequestParts, TranscodeOptions},
};

/// A query string bound to the request of the route `route` picks.
pub(super) fn query(route: u8, options: u8, query: &str) {
    let Some(matched) = fixture::route(route, |r| !r.binding.raw_request) else {
        return;
    };
    let parts = RequestParts {
        captures: &[],
        query: Some(query),
        body: b"",
    };
    request_both_ways(&matched, parts, &fixture::options(options));
}

/// A JSON body bound to the request of the route `route` picks.
pub(super) fn json_request(route: u8, options: u8, body: &[u8]) {
    let Some(matched) = fixture::route(route, |r| {
        !r.binding.raw_request && r.binding.body != BodyPlan::None
    }) else {
        return;
    };
    let parts = RequestParts {
        captures: &[],
        query: None,
        body,
    };
    let options = fixture::options(options);
    scanned_as_read(&matched, body, &options);
    request_both_ways(&matched, parts, &options);
}

/// The scanner writes what the serde reading writes, byte for byte, or
/// leaves the body to it (both read the body as the method's input).
fn scanned_as_read(matched: &RouteMatch, body: &[u8], options: &TranscodeOptions) {
    let (plans, Some(root)) = (matched.catalog.json_plans(), matched.method().request_plan) else {
        return;
    };
    let mut scanned = Vec::new();
    if plans.scan_json(root, body, options, &mut scanned).is_err() {
        return;
    }
    let mut read = Vec::new();
    let outcome = plans.read_json(root, body, options, &mut read);
    assert!(
        outcome.is_ok() && read == scanned,
        "{}: the scanner wrote {scanned:?}, the serde reading {outcome:?} {read:?}",
        matched.route().label
    );
}

/// The wire bytes written straight (when the plans write them) mean the
/// message built the general way, which must not refuse what they wrote;
/// and the codec's encoder writes that message as prost does.
fn request_both_ways(matched: &RouteMatch, parts: RequestParts<'_>, options: &TranscodeOptions) {
    let method = matched.method();
    let binding = &matched.route().binding;
    let input = method.descriptor.input();
    let straight = transcode::request_wire(
        matched.catalog.json_plans(),
        method.request_plan,
        binding,
        &method.rules,
        parts,
        options,
    );
    let general = transcode::request_message(
        matched.catalog.json_plans(),
        &input,
        binding,
        matched.request_rules(),
        parts,
        options,
    );
    if let Ok(message) = &general {
        let mut ours = Vec::new();
        encode_message(message, &mut ours);
        assert_eq!(
            meaning(&input, &ours),
            meaning(&input, &message.encode_to_vec()),
            "the codec's encoding of {}",
            input.full_name()
        );
    }
    let Some(wire) = straight else {
        return;
    };
    match general {
        Ok(message) => assert_eq!(
            meaning_or_panic(&input, &wire),
            meaning(&input, &message.encode_to_vec()),
            "{}: written straight vs the general way",
            matched.route().label
        ),
        Err(err) => panic!(
            "{}: the plans wrote a request the general way refuses: {err}",
            matched.route().label
        ),
    }
}

fn meaning_or_panic(input: &MessageDescriptor, wire: &[u8]) -> Json {
    match DynamicMessage::decode(input.clone(), wire) {
        Ok(message) => serde_json::to_value(&message).expect("a decoded message prints"),
        Err(err) => panic!("the plans wrote bytes that do not decode: {err}"),
    }
}

/// A reply printed by the plans (with the client's `fields`, the route's
/// `response_body` and configured omissions) is the JSON prost-reflect
/// prints for it, and is refused when prost-reflect cannot decode it.
pub(super) fn reply(route: u8, options: u8, fields: &str, wire: &[u8]) {
    let Some(matched) = fixture::route(route, |r| !r.binding.raw_response) else {
        return;
    };
    let options = fixture::options(options);
    let shape = matched.reply_shape();
    let output = matched.method().descriptor.output();
    let filter = ReplyFilter::new(shape, &output, Some(fields)).unwrap_or_default();
    let printed = filter.print(wire, shape, &options);
    let Ok(mut decoded) = transcode::decode_reply(&matched.method().descriptor, wire) else {
        assert!(
            printed.is_err(),
            "{}: printed a reply prost-reflect cannot decode",
            matched.route().label
        );
        return;
    };
    let expected = filter.encode(&mut decoded, shape, &options);
    match (printed, expected) {
        (Ok(printed), Ok(expected)) => {
            let printed: Json = serde_json::from_slice(&printed).unwrap_or_else(|err| {
                panic!(
                    "printed invalid JSON ({err}): {}",
                    String::from_utf8_lossy(&printed)
                )
            });
            let expected: Json =
                serde_json::from_slice(&expected).expect("prost-reflect prints JSON");
            assert!(
                same(&printed, &expected),
                "{} with {options:?}\nprinted:  {printed}\nexpected: {expected}",
                matched.route().label
            );
        }
        // The documented difference: an empty `Any` prints as `{}` where
        // prost-reflect refuses its empty type URL.
        (Ok(_), Err(err)) if err.to_string().contains("type url ''") => {}
        (printed, expected) => assert_eq!(
            printed.is_ok(),
            expected.is_ok(),
            "{}: printed {printed:?}, prost-reflect {expected:?}",
            matched.route().label
        ),
    }
}

/// JSON equality but for the printer's documented differences: a `float`
/// in its own shortest form (prost-reflect widens it to a double in a JSON
/// tree), a non-finite float wrapper as `"NaN"`/`"Infinity"` where
/// prost-reflect prints `null`, and a `-0.0` printed where prost-reflect
/// leaves the field out.
fn same(printed: &Json, expected: &Json) -> bool {
    match (printed, expected) {
        (Json::Number(x), Json::Number(y)) => {
            x == y
                || x.as_f64()
                    .zip(y.as_f64())
                    .is_some_and(|(x, y)| x as f32 == y as f32)
        }
        (Json::String(text), Json::Null) => {
            matches!(text.as_str(), "NaN" | "Infinity" | "-Infinity")
        }
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Json::Object(x), Json::Object(y)) => {
            y.keys().all(|k| x.contains_key(k))
                && x.iter().all(|(k, v)| match y.get(k) {
                    Some(w) => same(v, w),
                    None => v
                        .as_f64()
                        .is_some_and(|v| v.to_bits() == (-0.0f64).to_bits()),
                })
        }
        _ => printed == expected,
    }
}
