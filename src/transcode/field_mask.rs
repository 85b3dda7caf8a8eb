//! Field-mask paths (`id`, `items.sku`) resolved against a message type into
//! a tree, then applied to messages: [`MaskTree::omit`] clears the paths
//! (configured response filters), [`MaskTree::keep`] clears everything else
//! (a client's `?fields=` partial response).

use prost_reflect::{DynamicMessage, FieldDescriptor, MessageDescriptor, ReflectMessage as _};

use serde_json::Value as Json;

use super::field_rules::{child_type, for_each_json, for_each_message, FieldRules};
use crate::nesting::{self, MAX_DEPTH};

/// Resolved paths as a tree; a node without children stands for the whole field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskTree {
    children: Vec<(FieldDescriptor, MaskTree)>,
}

impl MaskTree {
    /// Resolves `paths` (proto or lowerCamelCase names, dot-separated; a path
    /// through a repeated or map field applies to each element) against
    /// `message`. `hidden` says which fields must read as unknown. A path of
    /// more than [`MAX_DEPTH`] fields is refused: the tree's walks recurse.
    pub fn parse<'p>(
        message: &MessageDescriptor,
        paths: impl IntoIterator<Item = &'p str>,
        hidden: impl Fn(&MessageDescriptor, &FieldDescriptor) -> bool,
    ) -> Result<Self, String> {
        let mut tree = Self::default();
        for path in paths.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            let shown = || nesting::shortened(path);
            if path.split('.').nth(MAX_DEPTH).is_some() {
                return Err(nesting::too_deep(&format!("field path `{}`", shown())));
            }
            let mut node = &mut tree;
            let mut current = Some(message.clone());
            for part in path.split('.') {
                let unknown = || format!("unknown field path `{}`", shown());
                let parent = current.take().ok_or_else(unknown)?;
                let field = parent
                    .get_field_by_name(part)
                    .or_else(|| parent.get_field_by_json_name(part))
                    .filter(|field| !hidden(&parent, field))
                    .ok_or_else(unknown)?;
                current = child_type(&field)
                    .filter(|child| !super::scalar::has_string_form(child) && !is_struct(child));
                let index = match node.children.iter().position(|(f, _)| *f == field) {
                    Some(index) => index,
                    None => {
                        node.children.push((field, Self::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[index].1;
            }
            // A whole field covers any deeper path given for it.
            node.children.clear();
        }
        Ok(tree)
    }

    /// The subtree below `field`, if the tree goes through it.
    pub fn child(&self, field: &FieldDescriptor) -> Option<&Self> {
        self.children
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, child)| child)
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Whether `path` (resolved fields) is inside, or is, one of the tree's paths.
    pub fn covers(&self, path: &[FieldDescriptor]) -> bool {
        let mut node = self;
        for field in path {
            match node.children.iter().find(|(f, _)| f == field) {
                Some((_, child)) if child.is_empty() => return true,
                Some((_, child)) => node = child,
                None => return false,
            }
        }
        false
    }

    /// The resolved field paths of the tree, for overlap checks.
    fn paths(&self) -> Vec<Vec<FieldDescriptor>> {
        let mut out = Vec::new();
        for (field, child) in &self.children {
            if child.is_empty() {
                out.push(vec![field.clone()]);
            } else {
                for mut rest in child.paths() {
                    rest.insert(0, field.clone());
                    out.push(rest);
                }
            }
        }
        out
    }

    /// Whether any path of `self` reaches into something `omitted` removes.
    pub fn touches(&self, omitted: &Self) -> Option<String> {
        self.paths()
            .into_iter()
            .find(|path| omitted.covers(path))
            .map(|path| {
                path.iter()
                    .map(FieldDescriptor::name)
                    .collect::<Vec<_>>()
                    .join(".")
            })
    }

    /// Clears the tree's paths.
    pub fn omit(&self, message: &mut DynamicMessage) {
        for (field, child) in &self.children {
            if child.is_empty() {
                message.clear_field(field);
            } else if message.has_field(field) {
                for_each_message(message.get_field_mut(field), |inner| child.omit(inner));
            }
        }
    }

    /// Clears every field outside the tree's paths.
    pub fn keep(&self, message: &mut DynamicMessage) {
        for field in message.descriptor().fields() {
            match self.children.iter().find(|(f, _)| *f == field) {
                None => message.clear_field(&field),
                Some((_, child)) if !child.is_empty() && message.has_field(&field) => {
                    for_each_message(message.get_field_mut(&field), |inner| child.keep(inner));
                }
                Some(_) => {}
            }
        }
    }
}

impl MaskTree {
    /// [`MaskTree::omit`] on a message's JSON.
    pub(crate) fn omit_json(&self, json: &mut Json, key: &dyn Fn(&FieldDescriptor) -> &str) {
        let Json::Object(object) = json else { return };
        for (field, child) in &self.children {
            if child.is_empty() {
                object.remove(key(field));
            } else if let Some(value) = object.get_mut(key(field)) {
                for_each_json(value, field, |inner| child.omit_json(inner, key));
            }
        }
    }

    /// [`MaskTree::keep`] on a message's JSON.
    pub(crate) fn keep_json(&self, json: &mut Json, key: &dyn Fn(&FieldDescriptor) -> &str) {
        let Json::Object(object) = json else { return };
        object.retain(|name, _| self.children.iter().any(|(field, _)| key(field) == name));
        for (field, child) in self.children.iter().filter(|(_, child)| !child.is_empty()) {
            if let Some(value) = object.get_mut(key(field)) {
                for_each_json(value, field, |inner| child.keep_json(inner, key));
            }
        }
    }
}

/// `Struct` is a map on the wire: paths stop at it.
fn is_struct(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue"
    )
}

/// Resolves a client's `fields` paths against what it sees: unknown, internal
/// and configured-omitted paths all read as unknown, so their existence is
/// not revealed.
pub fn client_fields(
    visible: &MessageDescriptor,
    fields: &str,
    rules: &FieldRules,
    omitted: Option<&MaskTree>,
) -> Result<MaskTree, String> {
    let tree = MaskTree::parse(visible, fields.split(','), |message, field| {
        rules.is_internal(message, field)
    })?;
    if let Some(path) = omitted.and_then(|omitted| tree.touches(omitted)) {
        return Err(format!("unknown field path `{path}`"));
    }
    Ok(tree)
}
