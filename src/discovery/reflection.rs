//! The client side of gRPC server reflection: `list_services`, then
//! `file_containing_symbol` for each selected service, then
//! `file_by_filename` for each dependency not read yet, from a work list (no
//! recursion, however deep the imports go), within a bound on the files and
//! on their bytes. `grpc.reflection.v1` is asked first, `v1alpha` (the same
//! messages on another path) when the server does not know v1.
//!
//! Each question is one request and one reply on the bidi method
//! `ServerReflectionInfo`, which on the wire is a unary call: it goes the
//! way every upstream call goes ([`upstream::unary`]), so its framing, reply
//! limit, statuses and failures are the gateway's own.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Instant,
};

use bytes::Bytes;
use http::uri::PathAndQuery;
use prost::Message as _;
use tonic::{Code, Status};
use tonic_reflection::pb::v1::{
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    ServerReflectionRequest, ServerReflectionResponse,
};

use super::{
    schema::{File, Selection},
    ReadError,
};
use crate::{
    error::Error,
    upstream::{self, Deadline, Metadata, Payload, Upstream},
};

const V1: PathAndQuery =
    PathAndQuery::from_static("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
const V1ALPHA: PathAndQuery =
    PathAndQuery::from_static("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo");

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

/// One call per question, all within the upstream's timeout from `started`.
struct Client<'a> {
    upstream: &'a Upstream,
    path: PathAndQuery,
    started: Instant,
}

/// Reads the files of the services `selection` serves, at most `max_bytes`
/// of them in all, within `upstream`'s timeout. `upstream`'s reply limit
/// refuses an answer larger than the whole allowance by its length prefix.
pub(super) async fn read(
    upstream: &Upstream,
    selection: &Selection,
    max_bytes: usize,
) -> Result<Reflected, ReadError> {
    let mut client = Client {
        upstream,
        path: V1,
        started: Instant::now(),
    };
    let failed = |error| ReadError::from_call(error, upstream, max_bytes);
    let list = match client
        .ask(MessageRequest::ListServices(String::new()))
        .await
    {
        Err(error) if is_unimplemented(&error) => {
            client.path = V1ALPHA;
            client
                .ask(MessageRequest::ListServices(String::new()))
                .await
                .map_err(|error| {
                    if is_unimplemented(&error) {
                        ReadError::NoReflection
                    } else {
                        failed(error)
                    }
                })?
        }
        other => other.map_err(failed)?,
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
        let answer = answer.await.map_err(failed)?;
        reflected.take(answer, &mut wanted, &mut bytes, max_bytes)?;
    }
    while let Some(name) = wanted.pop_front() {
        if reflected.files.contains_key(&name) {
            continue;
        }
        let answer = client.ask(MessageRequest::FileByFilename(name.clone()));
        let answer = answer.await.map_err(failed)?;
        reflected.take(answer, &mut wanted, &mut bytes, max_bytes)?;
        if !reflected.files.contains_key(&name) {
            return Err(ReadError::Garbage(format!(
                "it answered file_by_filename(`{name}`) without that file"
            )));
        }
    }
    Ok(reflected)
}

/// Whether a call failed because the server does not serve the method.
fn is_unimplemented(error: &Error) -> bool {
    matches!(error, Error::Upstream(status) if status.code() == Code::Unimplemented)
}

impl Client<'_> {
    /// One question, answered within what is left of the upstream's timeout
    /// (also sent as `grpc-timeout`). The server's error answer becomes its
    /// status, as a failed call's would.
    async fn ask(&self, request: MessageRequest) -> Result<MessageResponse, Error> {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let message = Payload::Wire(request.encode_to_vec());
        let left = (self.upstream.timeout).saturating_sub(self.started.elapsed());
        let deadline = Deadline::start(self.upstream, Some(left));
        let path = self.path.clone();
        let reply = upstream::unary(self.upstream, path, &message, Metadata::default(), deadline);
        let reply = ServerReflectionResponse::decode(reply.await?.message).map_err(|err| {
            Error::InvalidReply(format!("an answer does not decode: {err}").into())
        })?;
        match reply.message_response {
            Some(MessageResponse::ErrorResponse(error)) => Err(Error::Upstream(Status::new(
                Code::from_i32(error.error_code),
                error.error_message,
            ))),
            Some(response) => Ok(response),
            None => Err(Error::InvalidReply(
                "a reflection answer without a response".into(),
            )),
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
