//! protogate: a REST-to-gRPC transcoding API gateway driven by protobuf descriptor sets.

/// Generated protobuf types: google.api, google.rpc and the example services.
#[allow(missing_docs, missing_debug_implementations, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/pb.rs"));
}
