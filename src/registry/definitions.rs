//! What each descriptor set defines -- its files, and the fully-qualified
//! names in them -- so that sets share what they define alike and a set
//! that defines a file or a name differently from another set is refused
//! whole. Without this the pool keeps whichever copy of a file comes first
//! and silently drops the other set's (prost-reflect skips a file whose name
//! it already has).
//!
//! Two copies of a file are alike when their encodings are equal but for
//! `source_code_info` (comments and positions). The files the gateway ships
//! (google/api, google/rpc, the well-known types, protogate's options) are
//! its own: a set's copies of them are not compared.

use std::{collections::HashMap, fmt};

use bytes::{Buf as _, Bytes};
use prost::{
    encoding::{decode_key, skip_field, DecodeContext},
    Message as _,
};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto};
use sha2::{Digest as _, Sha256};

/// `FileDescriptorProto.source_code_info`.
const SOURCE_CODE_INFO: u32 = 9;

/// A `FileDescriptorSet` with each file left encoded: a file is compared by
/// its own bytes, custom options included (prost_types drops those).
#[derive(Clone, PartialEq, prost::Message)]
struct EncodedFiles {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    file: Vec<Bytes>,
}

/// The files and names of the sets accepted so far.
#[derive(Debug, Default)]
pub(super) struct Definitions {
    /// File name → the set that brought it and its digest.
    files: HashMap<String, (String, [u8; 32])>,
    /// Fully-qualified name → the set and the file that define it.
    names: HashMap<String, (String, String)>,
}

/// Why a set is refused whole.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `other` has a file of this name with other content.
    File { file: String, other: String },
    /// `other` defines `name` in another file.
    Name {
        name: String,
        file: String,
        other: String,
        other_file: String,
    },
    /// Every file of the set is already served: by these sets, or by the
    /// gateway itself when there are none.
    NothingNew { served_by: Vec<String> },
}

/// One file of a set being added.
struct File {
    name: String,
    digest: [u8; 32],
    /// The fully-qualified names it defines.
    defines: Vec<String>,
}

// === impl Definitions ===

impl Definitions {
    /// Adds the set's files and names if it agrees with every set added
    /// before; otherwise nothing is added and the refusal says why. Bytes
    /// that are not a descriptor set are added as nothing: the build
    /// reports them.
    pub(super) fn add(
        &mut self,
        set: &str,
        bytes: &Bytes,
        shipped: impl Fn(&str) -> bool,
    ) -> Result<(), Refusal> {
        let Some(files) = files_of(bytes) else {
            return Ok(());
        };
        let mut new = Vec::new();
        let mut served_by: Vec<String> = Vec::new();
        for file in files.into_iter().filter(|file| !shipped(&file.name)) {
            match self.files.get(&file.name) {
                Some((other, digest)) if *digest == file.digest => {
                    if !served_by.contains(other) {
                        served_by.push(other.clone());
                    }
                }
                Some((other, _)) => {
                    return Err(Refusal::File {
                        file: file.name,
                        other: other.clone(),
                    })
                }
                None => new.push(file),
            }
        }
        if new.is_empty() {
            return Err(Refusal::NothingNew { served_by });
        }
        for file in &new {
            for name in &file.defines {
                if let Some((other, other_file)) = self.names.get(name) {
                    return Err(Refusal::Name {
                        name: name.clone(),
                        file: file.name.clone(),
                        other: other.clone(),
                        other_file: other_file.clone(),
                    });
                }
            }
        }
        for file in new {
            for name in file.defines {
                self.names.insert(name, (set.to_owned(), file.name.clone()));
            }
            self.files.insert(file.name, (set.to_owned(), file.digest));
        }
        Ok(())
    }

    /// The set a file was first added with.
    pub(super) fn owner(&self, file: &str) -> Option<&str> {
        self.files.get(file).map(|(set, _)| set.as_str())
    }
}

/// Each file of a serialized set, or `None` if it does not decode.
fn files_of(bytes: &Bytes) -> Option<Vec<File>> {
    EncodedFiles::decode(bytes.clone())
        .ok()?
        .file
        .into_iter()
        .map(|encoded| {
            let digest = digest(&encoded)?;
            let file = FileDescriptorProto::decode(encoded).ok()?;
            Some(File {
                name: file.name().to_owned(),
                digest,
                defines: defined_names(&file),
            })
        })
        .collect()
}

/// SHA-256 of an encoded file without its `source_code_info`.
fn digest(mut file: &[u8]) -> Option<[u8; 32]> {
    let mut hasher = Sha256::new();
    while file.has_remaining() {
        let field = file;
        let (tag, wire_type) = decode_key(&mut file).ok()?;
        skip_field(wire_type, tag, &mut file, DecodeContext::default()).ok()?;
        if tag != SOURCE_CODE_INFO {
            hasher.update(&field[..field.len() - file.len()]);
        }
    }
    Some(hasher.finalize().into())
}

/// Every fully-qualified name the file defines: messages (nested ones too),
/// enums and their values, services and extensions. Nested messages are
/// walked with a stack: an upload decides how deep they go.
fn defined_names(file: &FileDescriptorProto) -> Vec<String> {
    fn scoped(scope: &str, name: &str) -> String {
        if scope.is_empty() {
            name.to_owned()
        } else {
            format!("{scope}.{name}")
        }
    }
    fn enums(scope: &str, enums: &[EnumDescriptorProto], names: &mut Vec<String>) {
        for item in enums {
            names.push(scoped(scope, item.name()));
            // Enum values are scoped beside their enum, as in C++.
            names.extend(item.value.iter().map(|v| scoped(scope, v.name())));
        }
    }
    let package = file.package();
    let mut names = Vec::new();
    enums(package, &file.enum_type, &mut names);
    names.extend(file.service.iter().map(|s| scoped(package, s.name())));
    names.extend(file.extension.iter().map(|x| scoped(package, x.name())));
    let mut messages: Vec<(String, &DescriptorProto)> = file
        .message_type
        .iter()
        .map(|m| (scoped(package, m.name()), m))
        .collect();
    while let Some((name, message)) = messages.pop() {
        enums(&name, &message.enum_type, &mut names);
        names.extend(message.extension.iter().map(|x| scoped(&name, x.name())));
        messages.extend(
            message
                .nested_type
                .iter()
                .map(|nested| (scoped(&name, nested.name()), nested)),
        );
        names.push(name);
    }
    names
}

// === impl Refusal ===

impl Refusal {
    /// The other set the refused one disagrees with, if one.
    pub(super) fn other_set(&self) -> Option<&str> {
        match self {
            Self::File { other, .. } | Self::Name { other, .. } => Some(other),
            Self::NothingNew { served_by } => served_by.first().map(String::as_str),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { file, other } => write!(
                f,
                "file `{file}` differs from the file of that name in set `{other}`"
            ),
            Self::Name {
                name,
                file,
                other,
                other_file,
            } => write!(
                f,
                "`{name}` (file `{file}`) is already defined by set `{other}` (file `{other_file}`)"
            ),
            Self::NothingNew { served_by } if served_by.is_empty() => {
                f.write_str("adds nothing: it holds no file the gateway does not ship")
            }
            Self::NothingNew { served_by } => write!(
                f,
                "adds nothing: every file it holds is already served by set `{}`",
                served_by.join("`, `")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_types::{
        DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FileDescriptorSet,
        SourceCodeInfo,
    };

    use super::*;

    fn file(name: &str, package: &str, messages: &[&str]) -> FileDescriptorProto {
        FileDescriptorProto {
            name: Some(name.into()),
            package: Some(package.into()),
            message_type: messages
                .iter()
                .map(|m| DescriptorProto {
                    name: Some((*m).into()),
                    ..Default::default()
                })
                .collect(),
            syntax: Some("proto3".into()),
            ..Default::default()
        }
    }

    fn set(files: Vec<FileDescriptorProto>) -> Bytes {
        Bytes::from(FileDescriptorSet { file: files }.encode_to_vec())
    }

    fn nothing_shipped(_: &str) -> bool {
        false
    }

    #[test]
    fn identical_files_are_shared_and_a_set_of_only_shared_files_adds_nothing() {
        let mut defined = Definitions::default();
        let common = file("common.proto", "c", &["Money"]);
        let a = set(vec![common.clone(), file("a.proto", "a", &["A"])]);
        let b = set(vec![common.clone(), file("b.proto", "b", &["B"])]);
        assert_eq!(defined.add("a", &a, nothing_shipped), Ok(()));
        assert_eq!(defined.add("b", &b, nothing_shipped), Ok(()));
        assert_eq!(
            defined.add("c", &set(vec![common]), nothing_shipped),
            Err(Refusal::NothingNew {
                served_by: vec!["a".into()]
            })
        );
    }

    #[test]
    fn comments_do_not_make_two_copies_differ_but_content_does() {
        let mut defined = Definitions::default();
        let plain = file("common.proto", "c", &["Money"]);
        let mut commented = plain.clone();
        commented.source_code_info = Some(SourceCodeInfo::default());
        commented.message_type.push(DescriptorProto {
            name: Some("Extra".into()),
            ..Default::default()
        });
        defined
            .add("a", &set(vec![plain.clone()]), nothing_shipped)
            .unwrap();
        let refused = defined.add(
            "b",
            &set(vec![commented, file("b.proto", "b", &[])]),
            nothing_shipped,
        );
        assert_eq!(
            refused,
            Err(Refusal::File {
                file: "common.proto".into(),
                other: "a".into()
            })
        );
        let mut comments_only = plain;
        comments_only.source_code_info = Some(SourceCodeInfo::default());
        assert!(defined
            .add(
                "c",
                &set(vec![comments_only, file("c.proto", "c2", &[])]),
                nothing_shipped
            )
            .is_ok());
    }

    #[test]
    fn a_name_defined_in_another_file_refuses_the_set_and_adds_none_of_it() {
        let mut defined = Definitions::default();
        let mut enums = file("e.proto", "p", &[]);
        enums.enum_type.push(EnumDescriptorProto {
            name: Some("Color".into()),
            value: vec![EnumValueDescriptorProto {
                name: Some("RED".into()),
                number: Some(0),
                ..Default::default()
            }],
            ..Default::default()
        });
        defined
            .add("a", &set(vec![enums]), nothing_shipped)
            .unwrap();
        let nested_clash = {
            let mut outer = file("x.proto", "p", &[]);
            outer.message_type.push(DescriptorProto {
                name: Some("RED".into()),
                ..Default::default()
            });
            outer
        };
        assert_eq!(
            defined.add("b", &set(vec![nested_clash]), nothing_shipped),
            Err(Refusal::Name {
                name: "p.RED".into(),
                file: "x.proto".into(),
                other: "a".into(),
                other_file: "e.proto".into()
            })
        );
        assert!(defined.owner("x.proto").is_none(), "nothing was added");
    }

    #[test]
    fn nested_messages_enums_and_values_are_scoped_by_their_parents() {
        let mut message = DescriptorProto {
            name: Some("Inner".into()),
            ..Default::default()
        };
        message.enum_type.push(EnumDescriptorProto {
            name: Some("Kind".into()),
            value: vec![EnumValueDescriptorProto {
                name: Some("KIND_A".into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        let outer = DescriptorProto {
            name: Some("Outer".into()),
            nested_type: vec![message],
            ..Default::default()
        };
        let mut nested = file("n.proto", "p.v1", &[]);
        nested.message_type.push(outer);
        let mut names = defined_names(&nested);
        names.sort();
        assert_eq!(
            names,
            [
                "p.v1.Outer",
                "p.v1.Outer.Inner",
                "p.v1.Outer.Inner.KIND_A",
                "p.v1.Outer.Inner.Kind"
            ]
        );
    }

    #[test]
    fn shipped_files_are_not_compared() {
        let mut defined = Definitions::default();
        let shipped = |name: &str| name.starts_with("google/");
        let mine = file("google/api/http.proto", "google.api", &["HttpRule"]);
        let mut theirs = mine.clone();
        theirs.message_type.clear();
        defined
            .add("a", &set(vec![mine, file("a.proto", "a", &[])]), shipped)
            .unwrap();
        assert!(defined
            .add("b", &set(vec![theirs, file("b.proto", "b", &[])]), shipped)
            .is_ok());
        assert_eq!(
            defined.add("c", &set(vec![file("google/x.proto", "g", &[])]), shipped),
            Err(Refusal::NothingNew { served_by: vec![] })
        );
    }
}
