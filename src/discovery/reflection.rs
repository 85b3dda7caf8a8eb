//! The client side of gRPC server reflection: `list_services`, then
//! `file_containing_symbol` for each selected service, then
//! `file_by_filename` for each dependency not read yet, from a work list (no
//! recursion, however deep the imports go), within a bound on the files and
//! on their bytes. `grpc.reflection.v1` is asked first, `v1alpha` (the same
//! messages on another path) when the server does not know v1.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use http::uri::PathAndQuery;
use prost::Message as _;
use tonic::{client::Grpc, transport::Channel, Code, Status};
use tonic_prost::ProstCodec;
use tonic_reflection::pb::v1::{
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    ServerReflectionRequest, ServerReflectionResponse,
};

use super::{
    schema::{File, Selection},
    ReadError,
};

const V1: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// Most files one server's schema may take (its services' files and every
/// file they import).
pub(super) const MAX_FILES: usize = 1024;

/// What a server described: its services, and the files the selected ones
/// need by name, each as the server sent it (options and all).
#[derive(Debug, Default)]
pub(super) struct Reflected {
    pub services: Vec<String>,
    pub files: BTreeMap<String, File>,
}

/// One reflection stream per question, on one channel.
struct Client {
    grpc: Grpc<Channel>,
    path: &'static str,
}

/// Reads the files of the services `selection` serves, at most `max_bytes`
/// of them in all.
pub(super) async fn read(
    channel: Channel,
    selection: &Selection,
    max_bytes: usize,
) -> Result<Reflected, ReadError> {
    let mut client = Client {
        // A reply larger than the whole allowance is refused as it arrives.
        grpc: Grpc::new(channel).max_decoding_message_size(max_bytes.saturating_add(1024)),
        path: V1,
    };
    let list = match client
        .ask(MessageRequest::ListServices(String::new()))
        .await
    {
        Err(status) if status.code() == Code::Unimplemented => {
            client.path = V1ALPHA;
            client
                .ask(MessageRequest::ListServices(String::new()))
                .await
                .map_err(|status| match status.code() {
                    Code::Unimplemented => ReadError::NoReflection,
                    _ => ReadError::from_status(&status, max_bytes),
                })?
        }
        other => other.map_err(|status| ReadError::from_status(&status, max_bytes))?,
    };
    let MessageResponse::ListServicesResponse(list) = list else {
        return Err(ReadError::Garbage(
            "it answered list_services with something else".into(),
        ));
    };
    let mut reflected = Reflected {
        services: list.service.into_iter().map(|s| s.name).collect(),
        files: BTreeMap::new(),
    };
    let selected: Vec<String> = (reflected.services.iter())
        .filter(|name| selection.serves(name))
        .cloned()
        .collect();
    if selected.is_empty() {
        return Err(ReadError::NoServices(reflected.services));
    }
    let mut wanted = VecDeque::new();
    let mut bytes = 0;
    for service in selected {
        let answer = client.ask(MessageRequest::FileContainingSymbol(service));
        let answer = answer
            .await
            .map_err(|s| ReadError::from_status(&s, max_bytes))?;
        reflected.take(answer, &mut wanted, &mut bytes, max_bytes)?;
    }
    while let Some(name) = wanted.pop_front() {
        if reflected.files.contains_key(&name) {
            continue;
        }
        let answer = client.ask(MessageRequest::FileByFilename(name.clone()));
        let answer = answer
            .await
            .map_err(|s| ReadError::from_status(&s, max_bytes))?;
        reflected.take(answer, &mut wanted, &mut bytes, max_bytes)?;
        if !reflected.files.contains_key(&name) {
            return Err(ReadError::Garbage(format!(
                "it answered file_by_filename(`{name}`) without that file"
            )));
        }
    }
    Ok(reflected)
}

impl Client {
    async fn ask(&mut self, request: MessageRequest) -> Result<MessageResponse, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|err| Status::unavailable(err.to_string()))?;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let codec = ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>::default();
        let path = PathAndQuery::from_static(self.path);
        let request = tonic::Request::new(tokio_stream::once(request));
        let mut replies = self
            .grpc
            .streaming(request, path, codec)
            .await?
            .into_inner();
        let reply = replies
            .message()
            .await?
            .ok_or_else(|| Status::internal("the reflection stream ended without an answer"))?;
        match reply.message_response {
            Some(MessageResponse::ErrorResponse(error)) => Err(Status::new(
                Code::from_i32(error.error_code),
                error.error_message,
            )),
            Some(response) => Ok(response),
            None => Err(Status::internal("a reflection answer without a response")),
        }
    }
}

impl Reflected {
    /// Keeps the files of `answer` not read yet and lists their imports as
    /// wanted; `bytes` counts what was received against `max_bytes`.
    fn take(
        &mut self,
        answer: MessageResponse,
        wanted: &mut VecDeque<String>,
        bytes: &mut usize,
        max_bytes: usize,
    ) -> Result<(), ReadError> {
        let MessageResponse::FileDescriptorResponse(answer) = answer else {
            return Err(ReadError::Garbage(
                "it answered a file request with something else".into(),
            ));
        };
        for raw in answer.file_descriptor_proto {
            *bytes = bytes.saturating_add(raw.len());
            if *bytes > max_bytes {
                return Err(ReadError::TooLarge(format!(
                    "its files take more than the limit of {max_bytes} bytes (admin.max_upload_bytes)"
                )));
            }
            let proto = prost_types::FileDescriptorProto::decode(raw.as_slice())
                .map_err(|err| ReadError::Garbage(format!("a file does not decode: {err}")))?;
            if self.files.contains_key(proto.name()) {
                continue;
            }
            if self.files.len() == MAX_FILES {
                return Err(ReadError::TooLarge(format!(
                    "its schema takes more than {MAX_FILES} files"
                )));
            }
            wanted.extend(proto.dependency.iter().cloned());
            let name = proto.name().to_owned();
            let file = File {
                bytes: Bytes::from(raw),
                proto,
            };
            self.files.insert(name, file);
        }
        Ok(())
    }
}
