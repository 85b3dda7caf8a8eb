//! JSON, path variables and query parameters ⇄ protobuf messages, following
//! the proto3 JSON mapping and the `google.api.http` binding rules; the
//! framing of streamed replies and the splitting of streamed requests.

pub(crate) mod encode;
mod field_mask;
mod field_rules;
mod http_body;
mod query;
mod reply_framing;
mod request;
mod response;
pub mod scalar;
mod split;
mod update_mask;
mod wire_json;

pub use encode::encode as encode_message;
pub use field_mask::{client_fields, MaskTree};
pub use field_rules::{FieldRules, MethodRules};
pub use http_body::{raw_reply, raw_request_message};
use prost_reflect::{DeserializeOptions, SerializeOptions};
pub use reply_framing::{Framer, StreamFormat};
pub use request::{request_message, request_wire, RequestParts};
pub use response::{decode_reply, ReplyFilter, ReplyShape};
pub use split::JsonSplitter;
pub(crate) use wire_json::Masks;
pub(crate) use wire_json::{write_json_str, write_rfc3339};
pub use wire_json::{Declined, JsonPlans};

use crate::config::{FiltersConfig, InternalInput, JsonConfig, QueryConfig};

/// The query parameter (and, as `x-fields`, the header) that asks for a partial response.
pub const FIELDS_PARAM: &str = "fields";

/// The print/parse options, resolved once from the config.
#[derive(Debug, Clone)]
pub struct TranscodeOptions {
    deserialize: DeserializeOptions,
    serialize: SerializeOptions,
    ignored_query: Box<[Box<str>]>,
    ignore_unknown_query: bool,
    ignore_unknown_fields: bool,
    clear_internal_input: bool,
    emit_unpopulated: bool,
    use_proto_field_names: bool,
    enums_as_numbers: bool,
}

impl TranscodeOptions {
    pub fn new(json: &JsonConfig, query: &QueryConfig, filters: &FiltersConfig) -> Self {
        Self {
            deserialize: DeserializeOptions::new().deny_unknown_fields(!json.ignore_unknown_fields),
            serialize: SerializeOptions::new()
                .stringify_64_bit_integers(true)
                .use_enum_numbers(json.enums_as_numbers)
                .use_proto_field_name(json.use_proto_field_names)
                .skip_default_fields(!json.emit_unpopulated),
            ignored_query: query.ignored.iter().map(|p| p.as_str().into()).collect(),
            ignore_unknown_query: query.ignore_unknown,
            ignore_unknown_fields: json.ignore_unknown_fields,
            clear_internal_input: filters.internal_input == InternalInput::Clear,
            emit_unpopulated: json.emit_unpopulated,
            use_proto_field_names: json.use_proto_field_names,
            enums_as_numbers: json.enums_as_numbers,
        }
    }
}

impl Default for TranscodeOptions {
    fn default() -> Self {
        Self::new(
            &JsonConfig::default(),
            &QueryConfig::default(),
            &FiltersConfig::default(),
        )
    }
}
