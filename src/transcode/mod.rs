//! JSON, path variables and query parameters ⇄ protobuf messages, following
//! the proto3 JSON mapping and the `google.api.http` binding rules; the
//! framing of streamed replies and the splitting of streamed requests.

mod http_body;
mod query;
mod request;
mod response;
pub mod scalar;
mod split;
mod stream;

pub use http_body::{raw_reply, raw_request_message};
use prost_reflect::{DeserializeOptions, SerializeOptions};
pub use request::request_message;
pub use response::response_json;
pub use split::JsonSplitter;
pub use stream::{Framer, StreamFormat};

use crate::config::{JsonConfig, QueryConfig};

/// The print/parse options, resolved once from the config.
#[derive(Debug, Clone)]
pub struct TranscodeOptions {
    deserialize: DeserializeOptions,
    serialize: SerializeOptions,
    ignored_query: Box<[Box<str>]>,
    ignore_unknown_query: bool,
}

impl TranscodeOptions {
    pub fn new(json: &JsonConfig, query: &QueryConfig) -> Self {
        Self {
            deserialize: DeserializeOptions::new().deny_unknown_fields(!json.ignore_unknown_fields),
            serialize: SerializeOptions::new()
                .stringify_64_bit_integers(true)
                .use_enum_numbers(json.enums_as_numbers)
                .use_proto_field_name(json.use_proto_field_names)
                .skip_default_fields(!json.emit_unpopulated),
            ignored_query: query.ignored.iter().map(|p| p.as_str().into()).collect(),
            ignore_unknown_query: query.ignore_unknown,
        }
    }
}

impl Default for TranscodeOptions {
    fn default() -> Self {
        Self::new(&JsonConfig::default(), &QueryConfig::default())
    }
}
