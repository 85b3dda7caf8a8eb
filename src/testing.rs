//! What unit tests and the fuzz targets share: the test protos'
//! descriptors, how to compare two encodings of a message by what they
//! mean, and a `redis-server` of a test's own.

use prost_reflect::{DynamicMessage, MessageDescriptor};

/// The descriptor set of `protos/protogate/testing`, with its imports.
pub(crate) const SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/protogate.testing.v1.binpb"));

/// Every type of `protos/protogate/testing`, with its imports.
#[cfg(test)]
pub(crate) fn pool() -> prost_reflect::DescriptorPool {
    prost_reflect::DescriptorPool::decode(SET).expect("the test protos' descriptor set decodes")
}

/// A message type of [`pool`] by its full name.
#[cfg(test)]
pub(crate) fn message(name: &str) -> MessageDescriptor {
    pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("no message {name} in the test protos"))
}

/// The message `wire` means, as proto3 JSON: decoded, so that unpacked
/// lists, explicit defaults and map order do not count. (A failed assertion
/// on two `DynamicMessage`s would print their descriptor pools, recursively.)
pub(crate) fn meaning(message: &MessageDescriptor, wire: &[u8]) -> serde_json::Value {
    let decoded = DynamicMessage::decode(message.clone(), wire).expect("valid wire bytes");
    serde_json::to_value(&decoded).expect("a decoded message prints as JSON")
}

/// A `protogate.testing.v1.Deep` with `levels` messages nested below the
/// root (each in field 1), the innermost holding `s: "bottom"`. Written front
/// to back with its lengths computed inside out: no encoder recurses once
/// per level.
#[cfg(test)]
pub(crate) fn deep_wire(levels: usize) -> Vec<u8> {
    let innermost: &[u8] = b"\x12\x06bottom";
    let varint_len = |value: usize| {
        let mut buf = Vec::new();
        prost::encoding::encode_varint(value as u64, &mut buf);
        buf.len()
    };
    let mut lengths = vec![innermost.len(); levels + 1];
    for level in (0..levels).rev() {
        lengths[level] = 1 + varint_len(lengths[level + 1]) + lengths[level + 1];
    }
    let mut out = Vec::with_capacity(lengths[0]);
    for inner in &lengths[1..] {
        out.push(0x0a);
        prost::encoding::encode_varint(*inner as u64, &mut out);
    }
    out.extend_from_slice(innermost);
    out
}

/// A `redis-server` of a unit test's own on a free loopback port, without
/// persistence; stopped when dropped.
#[cfg(test)]
pub(crate) struct RedisServer {
    child: std::process::Child,
    port: u16,
}

#[cfg(test)]
impl RedisServer {
    /// Starts it and waits until it answers.
    pub(crate) fn start() -> Self {
        use std::{
            net::{TcpListener, TcpStream},
            process::{Command, Stdio},
            time::{Duration, Instant},
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian: apt-get install redis-server)");
        let server = Self { child, port };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Sends one inline command on a connection of its own; its raw reply.
    pub(crate) fn command(&self, command: &str) -> String {
        use std::io::{Read as _, Write as _};
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("redis-server listens");
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .expect("redis-server reads");
        let mut reply = vec![0; 4096];
        let read = stream.read(&mut reply).expect("redis-server answers");
        String::from_utf8_lossy(&reply[..read]).into_owned()
    }
}

#[cfg(test)]
impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
