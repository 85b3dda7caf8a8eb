//! Generated protobuf types: google.api, google.rpc, protogate's options and
//! the example services (build.rs).

#![allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]

include!(concat!(env!("OUT_DIR"), "/pb.rs"));
