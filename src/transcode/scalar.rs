//! One string (a path variable or a query value) → a typed field value, per
//! field kind and per well-known type in its string form.

use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Whether a message type can be written as one string: the well-known types
/// whose JSON form is a string or a scalar.
pub fn has_string_form(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// Parses `text` as one element of `field` (for a repeated field, one item).
/// The error says which form was expected.
pub fn parse(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    parse_kind(&field.kind(), text)
}

fn parse_kind(kind: &Kind, text: &str) -> Result<Value, String> {
    let expected = |what: &str| format!("`{text}` is not {what}");
    Ok(match kind {
        Kind::String => Value::String(text.to_owned()),
        Kind::Bool => Value::Bool(match text {
            "true" | "True" | "TRUE" | "1" => true,
            "false" | "False" | "FALSE" | "0" => false,
            _ => return Err(expected("a boolean (true or false)")),
        }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(text.parse().map_err(|_| expected("a 32-bit integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(text.parse().map_err(|_| expected("a 64-bit integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(
            text.parse()
                .map_err(|_| expected("an unsigned 32-bit integer"))?,
        ),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(
            text.parse()
                .map_err(|_| expected("an unsigned 64-bit integer"))?,
        ),
        Kind::Double => Value::F64(parse_float(text).ok_or_else(|| expected("a number"))?),
        Kind::Float => {
            // The nearest float of the nearest double, refused only when
            // that overflows (`3.4028235e38`, as `f32::MAX` prints, is in).
            let value = parse_float(text).ok_or_else(|| expected("a number"))?;
            #[allow(clippy::cast_possible_truncation)]
            let narrow = value as f32;
            if value.is_finite() && narrow.is_infinite() {
                return Err(expected("a 32-bit float (out of range)"));
            }
            Value::F32(narrow)
        }
        Kind::Bytes => Value::Bytes(
            STANDARD
                .decode(text)
                .or_else(|_| URL_SAFE.decode(text))
                .map_err(|_| expected("base64 (standard or URL-safe)"))?
                .into(),
        ),
        Kind::Enum(desc) => match desc.get_value_by_name(text) {
            Some(value) => Value::EnumNumber(value.number()),
            None => Value::EnumNumber(text.parse().map_err(|_| {
                let names: Vec<String> = desc.values().map(|v| v.name().to_owned()).collect();
                format!("`{text}` is not one of {} (or a number)", names.join(", "))
            })?),
        },
        Kind::Message(message) => Value::Message(parse_message(message, text)?),
    })
}

/// JSON's special float names, then Rust's float syntax (which also takes `inf`).
fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ if text
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            None
        }
        _ => text.parse().ok(),
    }
}

fn parse_message(message: &MessageDescriptor, text: &str) -> Result<DynamicMessage, String> {
    match message.full_name() {
        "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask" => {
            // These parse from their JSON string form; prost-reflect knows it.
            DynamicMessage::deserialize(message.clone(), serde_json::Value::String(text.to_owned()))
                .map_err(|err| match message.name() {
                    "Timestamp" => format!("`{text}` is not an RFC 3339 timestamp ({err})"),
                    "Duration" => format!("`{text}` is not a duration such as `1.5s` ({err})"),
                    _ => format!("`{text}` is not a field mask such as `a,b.c` ({err})"),
                })
        }
        _ if has_string_form(message) => {
            let field = message
                .get_field_by_name("value")
                .ok_or_else(|| format!("{} has no `value` field", message.full_name()))?;
            let value = parse_kind(&field.kind(), text)?;
            let mut wrapper = DynamicMessage::new(message.clone());
            wrapper.set_field(&field, value);
            Ok(wrapper)
        }
        name => Err(format!(
            "{name} cannot be set from a single value; set its fields instead"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str) -> Kind {
        Kind::Message(crate::testing::message(name))
    }

    #[test]
    fn scalars_parse_in_their_forms() {
        assert_eq!(parse_kind(&Kind::Bool, "true"), Ok(Value::Bool(true)));
        assert_eq!(
            parse_kind(&Kind::Int64, "-9007199254740993"),
            Ok(Value::I64(-9_007_199_254_740_993))
        );
        assert_eq!(
            parse_kind(&Kind::Uint64, "18446744073709551615"),
            Ok(Value::U64(u64::MAX))
        );
        assert_eq!(parse_kind(&Kind::Double, "1.5e3"), Ok(Value::F64(1500.0)));
        assert_eq!(
            parse_kind(&Kind::Double, "-Infinity"),
            Ok(Value::F64(f64::NEG_INFINITY))
        );
        assert_eq!(
            parse_kind(&Kind::Bytes, "aGk-_w"),
            Ok(Value::Bytes(vec![b'h', b'i', 0x3e, 0xff].into()))
        );
        assert_eq!(
            parse_kind(&Kind::Bytes, "aGk+/w=="),
            Ok(Value::Bytes(vec![b'h', b'i', 0x3e, 0xff].into()))
        );
    }

    #[test]
    fn bad_scalars_say_what_was_expected() {
        assert_eq!(
            parse_kind(&Kind::Int32, "x").unwrap_err(),
            "`x` is not a 32-bit integer"
        );
        assert!(parse_kind(&Kind::Int32, "4294967296").is_err());
        assert!(parse_kind(&Kind::Uint32, "-1").is_err());
        assert!(parse_kind(&Kind::Double, "nan").is_err());
        assert!(parse_kind(&Kind::Float, "1e300").is_err());
        assert!(parse_kind(&Kind::Float, "3.4028236e38").is_err());
        assert_eq!(
            parse_kind(&Kind::Float, "3.4028235e38"),
            Ok(Value::F32(f32::MAX))
        );
        assert!(parse_kind(&Kind::Bool, "yes").is_err());
    }

    #[test]
    fn well_known_types_parse_from_strings() {
        let ts = parse_kind(&kind("google.protobuf.Timestamp"), "2024-05-01T10:00:00.5Z").unwrap();
        let ts = ts.as_message().unwrap();
        assert_eq!(
            ts.get_field_by_name("seconds").unwrap().as_i64(),
            Some(1_714_557_600)
        );
        assert_eq!(
            ts.get_field_by_name("nanos").unwrap().as_i32(),
            Some(500_000_000)
        );
        let wrapper = parse_kind(&kind("google.protobuf.Int64Value"), "42").unwrap();
        assert_eq!(
            wrapper
                .as_message()
                .unwrap()
                .get_field_by_name("value")
                .unwrap()
                .as_i64(),
            Some(42)
        );
        assert!(parse_kind(&kind("google.protobuf.Duration"), "soon")
            .unwrap_err()
            .contains("duration"));
        assert!(parse_kind(&kind("google.protobuf.Struct"), "{}").is_err());
    }
}
