//! The proto comments of a pool (`source_code_info`), by file and element
//! path: the summaries and descriptions of a document.

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, FileDescriptor};

/// Each commented element's text, per file.
#[derive(Debug, Default)]
pub(super) struct Comments {
    by_file: HashMap<String, HashMap<Vec<i32>, String>>,
}

impl Comments {
    pub(super) fn new(pool: &DescriptorPool) -> Self {
        let by_file = pool
            .files()
            .map(|file| {
                let texts = file
                    .file_descriptor_proto()
                    .source_code_info
                    .iter()
                    .flat_map(|info| &info.location)
                    .filter_map(|location| {
                        let text = location
                            .leading_comments
                            .as_deref()
                            .or(location.trailing_comments.as_deref())?;
                        let text = clean(text);
                        (!text.is_empty()).then(|| (location.path.clone(), text))
                    })
                    .collect();
                (file.name().to_owned(), texts)
            })
            .collect();
        Self { by_file }
    }

    /// The comment of the element at `path` of `file`.
    pub(super) fn of(&self, file: &FileDescriptor, path: &[i32]) -> Option<&str> {
        self.by_file.get(file.name())?.get(path).map(String::as_str)
    }
}

/// Whether any file of an encoded descriptor set carries a comment: a set
/// built without source info (`protoc` without `--include_source_info`)
/// documents nothing.
pub fn set_has_comments(set: &prost_types::FileDescriptorSet) -> bool {
    set.file.iter().any(|file| {
        file.source_code_info.iter().any(|info| {
            info.location.iter().any(|location| {
                location.leading_comments.is_some() || location.trailing_comments.is_some()
            })
        })
    })
}

/// The comment's lines, each trimmed, without empty lines at either end.
fn clean(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines.join("\n").trim().to_owned()
}
