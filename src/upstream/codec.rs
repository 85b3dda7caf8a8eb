//! `DynamicCodec`: a tonic [`Codec`] over prost-reflect messages, so that any
//! method in the catalog can be called without generated code.

use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    Status,
};

/// Encodes request messages and decodes replies of one output type.
#[derive(Debug, Clone)]
pub struct DynamicCodec {
    output: MessageDescriptor,
}

#[derive(Debug)]
pub struct DynamicEncoder;

#[derive(Debug)]
pub struct DynamicDecoder {
    output: MessageDescriptor,
}

/// An element of a request stream.
#[derive(Debug)]
pub enum Outgoing {
    Message(DynamicMessage),
    /// Fail the call: its HTTP/2 stream is reset with an error, which an
    /// upstream cannot take for the clean end of a stream (tonic servers read
    /// a plain cancellation as one, and would act on a partial stream).
    Abort,
}

/// [`DynamicCodec`] for request streams of [`Outgoing`] elements.
#[derive(Debug, Clone)]
pub struct StreamCodec(DynamicCodec);

#[derive(Debug)]
pub struct StreamEncoder;

// === impl DynamicCodec ===

impl DynamicCodec {
    pub fn new(output: MessageDescriptor) -> Self {
        Self { output }
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder {
            output: self.output.clone(),
        }
    }
}

// === impl StreamCodec ===

impl StreamCodec {
    pub fn new(output: MessageDescriptor) -> Self {
        Self(DynamicCodec::new(output))
    }
}

impl Codec for StreamCodec {
    type Encode = Outgoing;
    type Decode = DynamicMessage;
    type Encoder = StreamEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        StreamEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.0.decoder()
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
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|err| Status::internal(format!("cannot encode request: {err}")))
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let mut message = DynamicMessage::new(self.output.clone());
        message.merge(src).map_err(|err| {
            Status::internal(format!("cannot decode {}: {err}", self.output.full_name()))
        })?;
        Ok(Some(message))
    }
}
