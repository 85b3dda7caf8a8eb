//! `DynamicCodec`: a tonic [`Codec`] over prost-reflect messages, so that any
//! method in the catalog can be called without generated code.

use bytes::{Buf as _, BufMut as _, Bytes};
use prost_reflect::DynamicMessage;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    Status,
};

use crate::transcode::encode;

/// Encodes request messages; replies stay encoded ([`Bytes`]), to be printed
/// as JSON straight from the wire by the reply plans.
#[derive(Debug, Clone, Default)]
pub struct DynamicCodec;

#[derive(Debug)]
pub struct DynamicEncoder;

/// Hands over a reply's bytes without copying them.
#[derive(Debug)]
pub struct BytesDecoder;

/// The one request of a unary or server-streaming call.
#[derive(Debug)]
pub enum Payload {
    Message(DynamicMessage),
    /// Its wire bytes, when the gateway transcoded the JSON straight to them.
    Wire(Vec<u8>),
}

/// An element of a request stream.
#[derive(Debug)]
pub enum Outgoing {
    Message(Payload),
    /// Fail the call: its HTTP/2 stream is reset with an error, which an
    /// upstream cannot take for the clean end of a stream (tonic servers read
    /// a plain cancellation as one, and would act on a partial stream).
    Abort,
}

/// [`DynamicCodec`] for request streams of [`Outgoing`] elements.
#[derive(Debug, Clone, Default)]
pub struct StreamCodec;

#[derive(Debug)]
pub struct StreamEncoder;

// === impl DynamicCodec ===

impl Codec for DynamicCodec {
    type Encode = Payload;
    type Decode = Bytes;
    type Encoder = DynamicEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

// === impl StreamCodec ===

impl Codec for StreamCodec {
    type Encode = Outgoing;
    type Decode = Bytes;
    type Encoder = StreamEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        StreamEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

impl Encoder for StreamEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outgoing::Message(message) => DynamicEncoder.encode(message, dst),
            Outgoing::Abort => Err(Status::aborted("the gateway abandoned the request stream")),
        }
    }
}

impl Encoder for DynamicEncoder {
    type Item = Payload;
    type Error = Status;

    fn encode(&mut self, item: Payload, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Payload::Message(message) => {
                let mut encoded = Vec::with_capacity(128);
                encode::encode(&message, &mut encoded);
                dst.put_slice(&encoded);
            }
            Payload::Wire(encoded) => dst.put_slice(&encoded),
        }
        Ok(())
    }
}

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
