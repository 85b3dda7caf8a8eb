//! Fuzz entry points, one per target (linkerd2-proxy's `fuzz_logic`). Each
//! takes the fuzzer's bytes, drives one hand-written parser or codec over a
//! fixed catalog, and panics on a crash *or* on a difference from a
//! reference: prost-reflect, serde_json, or the same code run another way.
//! The afl harness in `fuzz/` wraps them; the tests below replay the
//! committed corpora (`fuzz/corpus/<target>/`), since CI cannot fuzz.
//!
//! A target that needs a choice (a route, a set of options, a method) takes
//! it from the first bytes of the input; the rest is the input proper.

mod fixture;
mod jwt;
mod routing;
mod streams;
mod transcoding;
mod upload;

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use upload::Upload;

/// Builds what the targets share (the fixed catalog, the token issuer), for
/// a harness to call once before it forks: afl then starts each child with
/// them built, also after a crash.
pub fn prepare() {
    fixture::catalog();
    fixture::authenticator();
}

/// A path template: `parse(display(t)) == t`.
pub fn template(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        routing::template(text);
    }
}

/// `[method] path`: a router lookup, checked against the path rebuilt from
/// what it captured.
pub fn router(data: &[u8]) {
    if let Some((&method, path)) = data.split_first() {
        if let Ok(path) = std::str::from_utf8(path) {
            routing::lookup(method, path);
        }
    }
}

/// `[route] [options] query`: query parameters bound both ways.
pub fn query(data: &[u8]) {
    if let [route, options, query @ ..] = data {
        if let Ok(query) = std::str::from_utf8(query) {
            transcoding::query(*route, *options, query);
        }
    }
}

/// `[route] [options] body`: a JSON request body bound both ways.
pub fn json_request(data: &[u8]) {
    if let [route, options, body @ ..] = data {
        transcoding::json_request(*route, *options, body);
    }
}

/// `[route] [options] [n] fields(n bytes) wire`: a reply printed from its
/// wire bytes, against prost-reflect.
pub fn reply(data: &[u8]) {
    if let [route, options, length, rest @ ..] = data {
        let (fields, wire) = rest.split_at(usize::from(*length).min(rest.len()));
        let fields = std::str::from_utf8(fields).unwrap_or_default();
        transcoding::reply(*route, *options, fields, wire);
    }
}

/// `[chunk size] body`: a streamed request body split into JSON values.
pub fn split(data: &[u8]) {
    if let Some((&chunk, body)) = data.split_first() {
        streams::split(chunk, body);
    }
}

/// `[flags] accept \0 message \0 message ...`: a reply stream framed in
/// the format `accept` asks for and read back; with flag 1 the last message
/// is the error that ends it.
pub fn stream(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut pieces = rest.split(|&b| b == 0);
    let accept = pieces.next().unwrap_or_default();
    let mut messages: Vec<&[u8]> = pieces.collect();
    let error = if flags & 1 == 1 { messages.pop() } else { None };
    streams::stream(accept, &messages, error);
}

/// `[kind] payload`: an upload (descriptor set, `.proto`, tar, zip or
/// multipart) built into a catalog.
pub fn upload(data: &[u8]) {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    let kind = match kind % 5 {
        0 => Upload::DescriptorSet,
        1 => Upload::Proto,
        2 => Upload::Tar,
        3 => Upload::Zip,
        _ => Upload::Multipart,
    };
    upload::upload(kind, payload);
}

/// `[mode] ...`: with an even mode the rest is an `Authorization` header;
/// with an odd one it is a token's header JSON, `\0`, and its claims JSON,
/// which the target signs.
pub fn jwt(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        jwt::header(rest);
    } else {
        let (header, claims) = match rest.iter().position(|&b| b == 0) {
            Some(zero) => (&rest[..zero], &rest[zero + 1..]),
            None => (rest, &[][..]),
        };
        jwt::signed(header, claims);
    }
}

/// `[calls] [chunk] bytes`: unary calls on an upstream HTTP/2 connection
/// whose peer sends `bytes` (`upstream::http2::scripted` reads the layout).
pub fn upstream_reply(data: &[u8]) {
    crate::upstream::calls_against(data);
}

/// The output of a future over input that is all in memory: it never waits.
fn ready<T>(future: impl Future<Output = T>) -> T {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a future over in-memory input waited"),
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    /// Runs every file of `fuzz/corpus/<target>/` through `run`.
    fn replay(target: &str, run: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut files: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .map(|entry| entry.expect("a readable corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus in {}", dir.display());
        for file in files {
            let data = fs::read(&file).expect("a readable corpus file");
            eprintln!("replaying {}", file.display());
            run(&data);
        }
    }

    #[test]
    fn template_corpus() {
        replay("template", super::template);
    }

    #[test]
    fn router_corpus() {
        replay("router", super::router);
    }

    #[test]
    fn query_corpus() {
        replay("query", super::query);
    }

    #[test]
    fn json_request_corpus() {
        replay("json_request", super::json_request);
    }

    #[test]
    fn reply_corpus() {
        replay("reply", super::reply);
    }

    #[test]
    fn split_corpus() {
        replay("split", super::split);
    }

    #[test]
    fn stream_corpus() {
        replay("stream", super::stream);
    }

    #[test]
    fn upload_corpus() {
        replay("upload", super::upload);
    }

    #[test]
    fn upstream_reply_corpus() {
        replay("upstream_reply", super::upstream_reply);
    }

    #[test]
    fn jwt_corpus() {
        replay("jwt", super::jwt);
    }
}
