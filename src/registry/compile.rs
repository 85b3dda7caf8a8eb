//! `.proto` sources → a serialized `FileDescriptorSet`, compiled in-process
//! with protox: uploaded files first, then the vendored google/api,
//! google/rpc and protogate protos (embedded, so the binary needs no source
//! tree), then the well-known types. Archives (tar, zip, gzip) and multipart
//! bodies are read with their paths checked and their unpacked size
//! bounded; a compile error names the file, line and column. [`UploadFormat`]
//! tells an upload's kind by its first bytes when nothing else does.

use std::{
    collections::BTreeMap,
    io::{Cursor, Read},
    path::{Component, Path},
};

use bytes::Bytes;
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

use crate::nesting::{self, MAX_DEPTH};

/// The vendored protos every upload may import.
const VENDORED: &[(&str, &str)] = &[
    (
        "google/api/annotations.proto",
        include_str!("../../protos/google/api/annotations.proto"),
    ),
    (
        "google/api/field_behavior.proto",
        include_str!("../../protos/google/api/field_behavior.proto"),
    ),
    (
        "google/api/http.proto",
        include_str!("../../protos/google/api/http.proto"),
    ),
    (
        "google/api/httpbody.proto",
        include_str!("../../protos/google/api/httpbody.proto"),
    ),
    (
        "google/rpc/code.proto",
        include_str!("../../protos/google/rpc/code.proto"),
    ),
    (
        "google/rpc/error_details.proto",
        include_str!("../../protos/google/rpc/error_details.proto"),
    ),
    (
        "google/rpc/status.proto",
        include_str!("../../protos/google/rpc/status.proto"),
    ),
    (
        "protogate/options.proto",
        include_str!("../../protos/protogate/options.proto"),
    ),
];

/// What an upload holds: a descriptor set, or `.proto` files in an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadFormat {
    DescriptorSet,
    Tar,
    Zip,
    /// A gzip stream of a tar (`.tar.gz`) or of a descriptor set.
    Gzip,
}

/// Uploaded `.proto` files by their import path.
#[derive(Debug, Clone, Default)]
pub struct ProtoSources {
    files: BTreeMap<String, String>,
    /// Bytes unpacked so far, against `limit`.
    size: usize,
    limit: usize,
}

/// Why sources could not become a descriptor set; `Display` leads with
/// `file:line:column` when the compiler knows the position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", position(.file, .line, .column))]
pub struct CompileError {
    pub file: Option<String>,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based.
    pub column: Option<usize>,
    pub message: String,
}

fn position(file: &Option<String>, line: &Option<usize>, column: &Option<usize>) -> String {
    match (file, line, column) {
        (Some(file), Some(line), Some(column)) => format!("{file}:{line}:{column}: "),
        (Some(file), _, _) => format!("{file}: "),
        _ => String::new(),
    }
}

// === impl UploadFormat ===

impl UploadFormat {
    /// Tells the format by its magic bytes (gzip `1f 8b`, zip `PK\x03\x04`,
    /// `ustar` at offset 257 of a tar); anything else is taken for a
    /// descriptor set, which the build then checks.
    pub fn sniff(bytes: &[u8]) -> Self {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
            Self::Zip
        } else if bytes.get(257..262) == Some(b"ustar") {
            Self::Tar
        } else {
            Self::DescriptorSet
        }
    }

    /// The upload as a serialized `FileDescriptorSet`: a descriptor set as
    /// it is, an archive's `.proto` files compiled. A gzip stream is unpacked
    /// (at most `limit` bytes) and what it holds told by its bytes.
    pub fn descriptor_set(self, bytes: Bytes, limit: usize) -> Result<Bytes, CompileError> {
        let (format, bytes) = match self {
            Self::Gzip => {
                let unpacked = gunzip(&bytes, limit)?;
                (Self::sniff(&unpacked), Bytes::from(unpacked))
            }
            format => (format, bytes),
        };
        match format {
            Self::DescriptorSet => Ok(bytes),
            Self::Tar => ProtoSources::from_tar(&bytes, limit)?.compile(),
            Self::Zip => ProtoSources::from_zip(&bytes, limit)?.compile(),
            Self::Gzip => Err(general(
                "a gzip stream inside a gzip stream is not an upload".to_owned(),
            )),
        }
    }
}

fn gunzip(bytes: &[u8], limit: usize) -> Result<Vec<u8>, CompileError> {
    let unpacked = read_bounded(flate2::read::GzDecoder::new(bytes), limit)
        .map_err(|_| general("not a readable gzip stream".to_owned()))?;
    if unpacked.len() > limit {
        return Err(general(format!(
            "the upload exceeds the limit of {limit} bytes unpacked"
        )));
    }
    Ok(unpacked)
}

// === impl ProtoSources ===

impl ProtoSources {
    /// Sources whose unpacked size may not exceed `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// Adds one file; names are relative import paths ending in `.proto`.
    pub fn insert(&mut self, name: &str, source: Vec<u8>) -> Result<(), CompileError> {
        let name = import_path(name)?;
        self.size = self.size.saturating_add(source.len());
        if self.size > self.limit {
            return Err(general(format!(
                "the sources exceed the limit of {} bytes unpacked",
                self.limit
            )));
        }
        let source = String::from_utf8(source)
            .map_err(|_| in_file(&name, "is not valid UTF-8".to_owned()))?;
        self.files.insert(name, source);
        Ok(())
    }

    /// Every `.proto` file of a tar archive; other entries are skipped.
    pub fn from_tar(bytes: &[u8], limit: usize) -> Result<Self, CompileError> {
        let mut sources = Self::new(limit);
        let mut archive = tar::Archive::new(Cursor::new(bytes));
        let entries = archive.entries().map_err(|err| bad_archive("tar", &err))?;
        for entry in entries {
            let entry = entry.map_err(|err| bad_archive("tar", &err))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry
                .path()
                .map_err(|err| bad_archive("tar", &err))?
                .to_string_lossy()
                .into_owned();
            if name.ends_with(".proto") {
                let source = read_bounded(entry, sources.remaining())?;
                sources.insert(&name, source)?;
            }
        }
        Ok(sources)
    }

    /// Every `.proto` file of a zip archive; other entries are skipped.
    pub fn from_zip(bytes: &[u8], limit: usize) -> Result<Self, CompileError> {
        let mut sources = Self::new(limit);
        let mut archive =
            zip::ZipArchive::new(Cursor::new(bytes)).map_err(|err| bad_archive("zip", &err))?;
        for index in 0..archive.len() {
            let file = archive
                .by_index(index)
                .map_err(|err| bad_archive("zip", &err))?;
            if !file.is_file() || !file.name().ends_with(".proto") {
                continue;
            }
            let name = file.name().to_owned();
            let source = read_bounded(file, sources.remaining())?;
            sources.insert(&name, source)?;
        }
        Ok(sources)
    }

    /// Every part of a `multipart/form-data` body with a `.proto` file
    /// name; other parts are ignored.
    pub async fn from_multipart(
        content_type: &str,
        body: Bytes,
        limit: usize,
    ) -> Result<Self, CompileError> {
        let unreadable =
            |err: multer::Error| general(format!("not a readable multipart body: {err}"));
        let boundary = multer::parse_boundary(content_type).map_err(unreadable)?;
        let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
        let mut multipart = multer::Multipart::new(stream, boundary);
        let mut sources = Self::new(limit);
        while let Some(field) = multipart.next_field().await.map_err(unreadable)? {
            let Some(file_name) = field.file_name().map(str::to_owned) else {
                continue;
            };
            if file_name.ends_with(".proto") {
                let source = field.bytes().await.map_err(unreadable)?;
                sources.insert(&file_name, source.to_vec())?;
            }
        }
        Ok(sources)
    }

    fn remaining(&self) -> usize {
        self.limit.saturating_sub(self.size)
    }

    /// Compiles every uploaded file (imports included) into a serialized
    /// `FileDescriptorSet`. Custom options survive: protox encodes it.
    pub fn compile(&self) -> Result<Bytes, CompileError> {
        if self.files.is_empty() {
            return Err(general("no .proto files in the upload".to_owned()));
        }
        for (name, source) in &self.files {
            if let Some((offset, message)) = refused_at(source) {
                let (line, column) = line_column(source, offset);
                return Err(CompileError {
                    file: Some(name.clone()),
                    line: Some(line),
                    column: Some(column),
                    message,
                });
            }
        }
        let mut resolver = ChainFileResolver::new();
        resolver.add(Sources(self.files.clone()));
        resolver.add(Vendored);
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        // Comments kept: they are the OpenAPI document's descriptions.
        compiler.include_imports(true).include_source_info(true);
        compiler
            .open_files(self.files.keys())
            .map_err(|err| self.compile_error(&err))?;
        Ok(Bytes::from(compiler.encode_file_descriptor_set()))
    }

    /// The error with its position resolved against the file's source.
    fn compile_error(&self, err: &protox::Error) -> CompileError {
        let file = err.file().map(str::to_owned);
        let offset = miette::Diagnostic::labels(err)
            .and_then(|mut labels| labels.next())
            .map(|label| label.offset());
        let source = file.as_deref().and_then(|name| {
            self.files
                .get(name)
                .map(String::as_str)
                .or_else(|| vendored(name))
        });
        let (line, column) = match (source, offset) {
            (Some(source), Some(offset)) => {
                let (line, column) = line_column(source, offset);
                (Some(line), Some(column))
            }
            _ => (None, None),
        };
        CompileError {
            file,
            line,
            column,
            message: err.to_string(),
        }
    }
}

/// What `source` holds, outside comments and strings, that protox must
/// not see, and its byte offset:
/// - more than [`MAX_DEPTH`] braces, brackets or angle brackets inside one
///   another (messages in messages, option values), which protox parses
///   recursively;
/// - an integer with a leading zero, octal digits and then an 8 or 9 (`019`),
///   which no `.proto` file may hold: protox-parse 0.9's lexer hands it to
///   its octal parser, which asserts that it can only overflow, so a build
///   with debug assertions panics (release builds report "integer out of
///   range").
fn refused_at(source: &str) -> Option<(usize, String)> {
    enum State {
        Code,
        LineComment,
        /// Opened by the `/*` at this offset.
        BlockComment(usize),
        Text {
            quote: u8,
            escaped: bool,
        },
    }
    let bytes = source.as_bytes();
    let mut state = State::Code;
    let mut depth = 0usize;
    // Names and numbers are read whole; the bytes up to here belong to one.
    let mut token_end = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        if at < token_end {
            continue;
        }
        state = match state {
            State::Code => match byte {
                b'/' if bytes.get(at + 1) == Some(&b'/') => State::LineComment,
                b'/' if bytes.get(at + 1) == Some(&b'*') => State::BlockComment(at),
                b'"' | b'\'' => State::Text {
                    quote: byte,
                    escaped: false,
                },
                b'{' | b'[' | b'<' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Some((at, nesting::too_deep("the source")));
                    }
                    State::Code
                }
                b'}' | b']' | b'>' => {
                    depth = depth.saturating_sub(1);
                    State::Code
                }
                b'0'..=b'9' | b'.' => {
                    let number = number_literal(&source[at..]);
                    if let Some(problem) = not_octal(number) {
                        return Some((at, problem));
                    }
                    token_end = at + number.len();
                    State::Code
                }
                _ if byte.is_ascii_alphabetic() || byte == b'_' => {
                    let name = bytes[at..]
                        .iter()
                        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_');
                    token_end = at + name.count();
                    State::Code
                }
                _ => State::Code,
            },
            State::LineComment if byte == b'\n' => State::Code,
            State::BlockComment(opened)
                if byte == b'/' && at > opened + 2 && bytes[at - 1] == b'*' =>
            {
                State::Code
            }
            State::Text { quote, escaped } => match byte {
                _ if escaped => State::Text {
                    quote,
                    escaped: false,
                },
                b'\\' => State::Text {
                    quote,
                    escaped: true,
                },
                _ if byte == quote || byte == b'\n' => State::Code,
                _ => State::Text { quote, escaped },
            },
            other => other,
        };
    }
    None
}

/// The number literal `text` starts with, as protox-parse's lexer takes
/// it: a float when a fraction or an exponent completes it (or an `f`
/// suffix after `0` or a decimal), else the run of digits (or hex digits
/// after `0x`). Empty for a `.` that starts no number.
fn number_literal(text: &str) -> &str {
    let bytes = text.as_bytes();
    let digits = |from: usize| {
        from + bytes[from.min(bytes.len())..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    if matches!(bytes, [b'0', b'x' | b'X', hex, ..] if hex.is_ascii_hexdigit()) {
        let hex = bytes[2..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        return &text[..2 + hex];
    }
    let integer = digits(0);
    let mut end = integer;
    let mut float = false;
    if bytes.get(end) == Some(&b'.')
        && (integer > 0 || bytes.get(1).is_some_and(u8::is_ascii_digit))
    {
        end = digits(end + 1);
        float = true;
    }
    if integer == 0 && !float {
        return "";
    }
    // An exponent counts only with its digits.
    if let Some(b'e' | b'E') = bytes.get(end) {
        let sign = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
        let exponent = digits(end + 1 + sign);
        if exponent > end + 1 + sign {
            end = exponent;
            float = true;
        }
    }
    let suffixed = float || &text[..integer] == "0" || !text.starts_with('0');
    if suffixed && matches!(bytes.get(end), Some(b'f' | b'F')) {
        end += 1;
    }
    &text[..end]
}

/// Why the number literal `number` is refused: a leading zero and octal
/// digits make it octal, yet an 8 or a 9 follows (`019`; `09` lexes as `0`
/// and `9`, `019.5` and `019e1` as floats, which protox takes).
fn not_octal(number: &str) -> Option<String> {
    let bytes = number.as_bytes();
    let octal = bytes.len() >= 2
        && bytes[0] == b'0'
        && (b'0'..=b'7').contains(&bytes[1])
        && bytes.iter().all(u8::is_ascii_digit);
    (octal && bytes.iter().any(|b| matches!(b, b'8' | b'9'))).then(|| {
        format!(
            "invalid integer `{number}`: a leading zero makes it octal, whose digits are 0 to 7"
        )
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = source.get(..offset.min(source.len())).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |text| text.chars().count())
        + 1;
    (line, column)
}

/// A relative path of normal components ending in `.proto`.
fn import_path(name: &str) -> Result<String, CompileError> {
    let path = Path::new(name.trim_start_matches("./"));
    let normal = path.components().all(|c| matches!(c, Component::Normal(_)));
    if !normal || !name.ends_with(".proto") || name.contains('\\') {
        return Err(in_file(
            name,
            "is not a relative path of a .proto file (no `..`, no leading `/`)".to_owned(),
        ));
    }
    Ok(path.to_string_lossy().into_owned())
}

fn read_bounded(reader: impl Read, remaining: usize) -> Result<Vec<u8>, CompileError> {
    let mut source = Vec::new();
    let limit = u64::try_from(remaining)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    reader
        .take(limit)
        .read_to_end(&mut source)
        .map_err(|err| bad_archive("archive", &err))?;
    Ok(source)
}

fn vendored(name: &str) -> Option<&'static str> {
    VENDORED
        .iter()
        .find(|(path, _)| *path == name)
        .map(|(_, source)| *source)
}

fn bad_archive(kind: &str, err: &dyn std::fmt::Display) -> CompileError {
    general(format!("not a readable {kind} archive: {err}"))
}

fn general(message: String) -> CompileError {
    CompileError {
        file: None,
        line: None,
        column: None,
        message,
    }
}

fn in_file(name: &str, message: String) -> CompileError {
    CompileError {
        file: Some(name.to_owned()),
        line: None,
        column: None,
        message,
    }
}

/// Resolves the uploaded files.
struct Sources(BTreeMap<String, String>);

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            Some(source) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// Resolves the vendored protos.
struct Vendored;

impl FileResolver for Vendored {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match vendored(name) {
            Some(source) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(files: &[(&str, &str)]) -> ProtoSources {
        let mut sources = ProtoSources::new(1 << 20);
        for (name, source) in files {
            sources.insert(name, source.as_bytes().to_vec()).unwrap();
        }
        sources
    }

    #[test]
    fn compiles_against_the_vendored_protos() {
        let bytes = sources(&[(
            "x/v1/x.proto",
            "syntax = \"proto3\";\npackage x.v1;\nimport \"google/api/annotations.proto\";\n\
             import \"google/protobuf/empty.proto\";\n\
             service S { rpc A(google.protobuf.Empty) returns (google.protobuf.Empty) {\n\
             option (google.api.http) = { get: \"/v1/a\" }; } }\n",
        )])
        .compile()
        .unwrap();
        let pool = prost_reflect::DescriptorPool::decode(bytes).unwrap();
        assert!(pool.get_service_by_name("x.v1.S").is_some());
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = sources(&[(
            "bad.proto",
            "syntax = \"proto3\";\nmessage M {\n  strin x = 1;\n}\n",
        )])
        .compile()
        .unwrap_err();
        assert_eq!(err.file.as_deref(), Some("bad.proto"));
        assert_eq!((err.line, err.column), (Some(3), Some(3)), "{err}");
        assert_eq!(
            err.to_string(),
            "bad.proto:3:3: name 'strin' is not defined"
        );

        let err = sources(&[(
            "a.proto",
            "syntax = \"proto3\";\nimport \"missing.proto\";\n",
        )])
        .compile()
        .unwrap_err();
        assert_eq!((err.line, err.column), (Some(2), Some(1)), "{err}");
        assert!(err.message.contains("missing.proto"), "{err}");
    }

    #[test]
    fn paths_that_could_escape_are_refused() {
        let mut sources = ProtoSources::new(100);
        for bad in ["../x.proto", "/etc/x.proto", "a/../../x.proto", "x.txt"] {
            assert!(sources.insert(bad, Vec::new()).is_err(), "{bad}");
        }
        assert!(sources.insert("./ok/x.proto", vec![b' '; 100]).is_ok());
        assert!(sources.insert("more.proto", vec![b' '; 1]).is_err());
    }

    const SHOP: &str = "syntax = \"proto3\";\npackage s.v1;\nmessage M { string id = 1; }\n";

    fn tar_of(name: &str, source: &str) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(source.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, name, source.as_bytes())
            .unwrap();
        builder.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn zip_of(name: &str, source: &str) -> Vec<u8> {
        use std::io::Write as _;
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        writer
            .start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        writer.write_all(source.as_bytes()).unwrap();
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn uploads_are_told_by_their_magic_bytes() {
        let set = sources(&[("s.proto", SHOP)]).compile().unwrap();
        let tar = tar_of("s.proto", SHOP);
        let cases = [
            (set.to_vec(), UploadFormat::DescriptorSet),
            (tar.clone(), UploadFormat::Tar),
            (zip_of("s.proto", SHOP), UploadFormat::Zip),
            (gzip(&tar), UploadFormat::Gzip),
            (gzip(&set), UploadFormat::Gzip),
        ];
        for (bytes, format) in cases {
            assert_eq!(UploadFormat::sniff(&bytes), format);
            let compiled = format.descriptor_set(Bytes::from(bytes), 1 << 20).unwrap();
            assert_eq!(compiled, set, "{format:?}");
        }
        assert_eq!(UploadFormat::sniff(b""), UploadFormat::DescriptorSet);
    }

    #[test]
    fn a_gzip_stream_is_bounded_and_not_nested() {
        let bomb = gzip(&vec![0; 1 << 20]);
        let err = UploadFormat::Gzip
            .descriptor_set(Bytes::from(bomb), 1000)
            .unwrap_err();
        assert!(err.message.contains("limit of 1000 bytes"), "{err}");
        let nested = gzip(&gzip(b"x"));
        let err = UploadFormat::Gzip
            .descriptor_set(Bytes::from(nested), 1000)
            .unwrap_err();
        assert!(err.message.contains("inside a gzip stream"), "{err}");
        let err = UploadFormat::Gzip
            .descriptor_set(Bytes::from_static(&[0x1f, 0x8b, 1]), 1000)
            .unwrap_err();
        assert!(err.message.contains("not a readable gzip"), "{err}");
    }

    /// The fuzz finding `upload/protox-debug-assertion-octal` (`009`):
    /// protox-parse asserts on such a literal, so builds with debug
    /// assertions (the test suite's) panicked in the compiler.
    #[test]
    fn an_integer_with_a_leading_zero_and_an_8_or_9_is_refused_before_protox() {
        for (source, line, column) in [
            ("009", 1, 1),
            (
                "syntax = \"proto3\";\nmessage M {\n  int32 a = 019;\n}\n",
                3,
                13,
            ),
            (
                "syntax = \"proto3\";\nmessage M { int32 a = 1 [(x) = 0789f]; }",
                2,
                32,
            ),
            // Found by the upload campaign: after a float that ends in `f`
            // (`90F`, `0f`), and before an exponent without digits.
            ("90F009", 1, 4),
            ("0f00904", 1, 3),
            ("019essage M {}", 1, 1),
        ] {
            let err = sources(&[("a.proto", source)]).compile().unwrap_err();
            assert_eq!(
                (err.line, err.column),
                (Some(line), Some(column)),
                "{source}: {err}"
            );
            assert!(err.message.contains("leading zero"), "{err}");
        }
        // Not in comments, strings, names, hex, exponents or floats.
        let fine = "syntax = \"proto2\";\n// 019\n/* 0789 */\nmessage M019 {\n  \
            optional string s = 1 [default = \"019\"];\n  \
            optional double d = 2 [default = 1e-009];\n  \
            optional double e = 3 [default = 09.5];\n  \
            optional int32 h = 4 [default = 0x0089];\n  \
            optional int32 o = 5 [default = 017];\n}\n";
        assert_eq!(refused_at(fine), None);
        sources(&[("fine.proto", fine)]).compile().unwrap();
    }

    #[test]
    fn nesting_is_counted_outside_comments_and_strings() {
        let deep = |open: &str, close: &str| {
            format!(
                "{}{}",
                open.repeat(MAX_DEPTH + 1),
                close.repeat(MAX_DEPTH + 1)
            )
        };
        assert_eq!(
            refused_at(&deep("{", "}")).map(|(at, _)| at),
            Some(MAX_DEPTH)
        );
        assert_eq!(
            refused_at(&deep("[<", ">]")).map(|(at, _)| at),
            Some(MAX_DEPTH)
        );
        assert_eq!(refused_at(&"{}".repeat(1000)), None);
        let hidden = format!(
            "// {}\n/* {} */\n\"{}\" '{}\\'{}'",
            "{".repeat(200),
            "{".repeat(200),
            "{".repeat(200),
            "{".repeat(200),
            "{".repeat(200)
        );
        assert_eq!(refused_at(&hidden), None);
        let err = sources(&[(
            "deep.proto",
            &format!("syntax = \"proto3\";\n{}", deep("message M {\n", "}\n")),
        )])
        .compile()
        .unwrap_err();
        assert_eq!(
            (err.line, err.column),
            (Some(MAX_DEPTH + 2), Some(11)),
            "{err}"
        );
        assert!(err.message.contains("the limit of 100 levels"), "{err}");
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é\nx", 3), (2, 1));
    }
}
