//! Field rules read from the protos: `(protogate.v1.field).internal` and
//! `google.api.field_behavior` (`OUTPUT_ONLY`, `REQUIRED`); fields the
//! config names internal (`filters.fields`) are internal like marked ones.
//!
//! Each rule becomes a [`FieldGraph`] over the pool's message types, built
//! once per catalog: a node per type that has marked fields or leads to one,
//! so a message type with no marked field anywhere below it is not in the
//! graph and costs nothing at request time.

use std::{collections::HashMap, fmt::Write as _};

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    MethodDescriptor, ReflectMessage as _, Value,
};

use serde_json::Value as Json;

use crate::{
    error::{Error, Redact},
    pb::google::api::FieldBehavior,
};

/// The rules of every message type in a catalog's pool.
#[derive(Debug, Default)]
pub struct FieldRules {
    internal: FieldGraph,
    output_only: FieldGraph,
    required: FieldGraph,
}

/// Where a method's messages enter the graphs; `None` means nothing to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct MethodRules {
    /// The reply type in the internal graph.
    pub(crate) reply: Option<usize>,
    request_internal: Option<usize>,
    request_output_only: Option<usize>,
    request_required: Option<usize>,
}

/// A graph of the message types that have fields marked by one rule, or
/// fields leading to such types (singular, repeated or map values).
#[derive(Debug, Default)]
pub struct FieldGraph {
    nodes: Vec<Node>,
    by_name: HashMap<Box<str>, usize>,
}

/// Called on each present message of a graph with its marked fields and its path.
type Check<'c> = dyn FnMut(&mut DynamicMessage, &[FieldDescriptor], &str) -> Result<(), Error> + 'c;

#[derive(Debug)]
struct Node {
    marked: Box<[FieldDescriptor]>,
    /// Message fields whose type is in the graph, with that type's node.
    children: Box<[(FieldDescriptor, usize)]>,
}

// === impl FieldRules ===

impl Redact for FieldRules {
    fn redact(&self, message: &mut DynamicMessage) {
        FieldRules::redact(self, message);
    }
}

impl FieldRules {
    /// The rules of `pool`'s types; `internal` fields count as marked
    /// `(protogate.v1.field).internal`.
    pub fn new(pool: &DescriptorPool, internal: &[FieldDescriptor]) -> Self {
        let internal_ext = pool.get_extension_by_name("protogate.v1.field");
        let behavior_ext = pool.get_extension_by_name("google.api.field_behavior");
        let behaviors = |field: &FieldDescriptor| -> Vec<i32> {
            let Some(ext) = &behavior_ext else {
                return Vec::new();
            };
            let options = field.options();
            if !options.has_extension(ext) {
                return Vec::new();
            }
            match options.get_extension(ext).as_ref() {
                Value::List(items) => items.iter().filter_map(Value::as_enum_number).collect(),
                _ => Vec::new(),
            }
        };
        Self {
            internal: FieldGraph::build(pool, |field| {
                if internal.contains(field) {
                    return true;
                }
                let Some(ext) = &internal_ext else {
                    return false;
                };
                let options = field.options();
                options.has_extension(ext)
                    && options
                        .get_extension(ext)
                        .as_message()
                        .and_then(|rules| rules.get_field_by_name("internal"))
                        .is_some_and(|value| value.as_bool() == Some(true))
            }),
            output_only: FieldGraph::build(pool, |field| {
                behaviors(field).contains(&(FieldBehavior::OutputOnly as i32))
            }),
            required: FieldGraph::build(pool, |field| {
                behaviors(field).contains(&(FieldBehavior::Required as i32))
            }),
        }
    }

    pub fn for_method(&self, method: &MethodDescriptor) -> MethodRules {
        let input = method.input();
        MethodRules {
            reply: self.internal.root(&method.output()),
            request_internal: self.internal.root(&input),
            request_output_only: self.output_only.root(&input),
            request_required: self.required.root(&input),
        }
    }

    /// Removes internal fields from a reply of the method.
    pub fn redact_reply(&self, message: &mut DynamicMessage, rules: &MethodRules) {
        if let Some(root) = rules.reply {
            self.internal.redact(message, root);
        }
    }

    /// Removes internal fields from any message, found by its type (error details).
    pub fn redact(&self, message: &mut DynamicMessage) {
        if let Some(root) = self.internal.root(&message.descriptor()) {
            self.internal.redact(message, root);
        }
    }

    /// Drops internal fields' keys from a reply's JSON: with `emit_unpopulated`
    /// a cleared field would still print as its default.
    pub(crate) fn prune_reply_json(
        &self,
        json: &mut Json,
        rules: &MethodRules,
        key: &dyn Fn(&FieldDescriptor) -> &str,
    ) {
        if let Some(root) = rules.reply {
            self.internal.prune_json(json, root, key);
        }
    }

    /// [`FieldRules::prune_reply_json`] for a message of any type.
    pub(crate) fn prune_json(
        &self,
        json: &mut Json,
        message: &MessageDescriptor,
        key: &dyn Fn(&FieldDescriptor) -> &str,
    ) {
        if let Some(root) = self.internal.root(message) {
            self.internal.prune_json(json, root, key);
        }
    }

    /// Whether `field` of `message` is internal.
    pub fn is_internal(&self, message: &MessageDescriptor, field: &FieldDescriptor) -> bool {
        self.internal.is_marked(message, field)
    }

    /// Whether `field` of `message` is output-only.
    pub fn is_output_only(&self, message: &MessageDescriptor, field: &FieldDescriptor) -> bool {
        self.output_only.is_marked(message, field)
    }

    /// Whether `field` of `message` is required.
    pub fn is_required(&self, message: &MessageDescriptor, field: &FieldDescriptor) -> bool {
        self.required.is_marked(message, field)
    }

    /// What the client may not set: internal fields are refused naming them
    /// (or cleared when `clear_internal`), output-only fields are cleared.
    pub fn sanitize_request(
        &self,
        message: &mut DynamicMessage,
        rules: &MethodRules,
        clear_internal: bool,
    ) -> Result<(), Error> {
        if let Some(root) = rules.request_internal {
            self.internal
                .visit(message, root, &mut |message, marked, path| {
                    for field in marked {
                        if message.has_field(field) {
                            if !clear_internal {
                                return Err(Error::invalid_field(
                                    join(path, field),
                                    "unknown field",
                                ));
                            }
                            message.clear_field(field);
                        }
                    }
                    Ok(())
                })?;
        }
        if let Some(root) = rules.request_output_only {
            self.output_only.redact(message, root);
        }
        Ok(())
    }

    /// Refuses a request that lacks a `REQUIRED` field, naming it.
    pub fn check_required(
        &self,
        message: &mut DynamicMessage,
        rules: &MethodRules,
    ) -> Result<(), Error> {
        let Some(root) = rules.request_required else {
            return Ok(());
        };
        self.required
            .visit(message, root, &mut |message, marked, path| match marked
                .iter()
                .find(|field| !message.has_field(field))
            {
                Some(field) => Err(Error::invalid_field(
                    join(path, field),
                    "required field is missing",
                )),
                None => Ok(()),
            })
    }
}

fn join(path: &str, field: &FieldDescriptor) -> String {
    if path.is_empty() {
        field.name().to_owned()
    } else {
        format!("{path}.{}", field.name())
    }
}

/// The message type a field leads to: its own, or its map value's.
pub(crate) fn child_type(field: &FieldDescriptor) -> Option<MessageDescriptor> {
    match field.kind() {
        Kind::Message(entry) if field.is_map() => match entry.map_entry_value_field().kind() {
            Kind::Message(value) => Some(value),
            _ => None,
        },
        Kind::Message(message) => Some(message),
        _ => None,
    }
}

// === impl MethodRules ===

impl MethodRules {
    /// Whether the request type has `REQUIRED` fields to check.
    pub(crate) fn checks_required(&self) -> bool {
        self.request_required.is_some()
    }
}

// === impl FieldGraph ===

impl FieldGraph {
    /// Builds the graph of the fields for which `is_marked` holds.
    pub fn build(pool: &DescriptorPool, is_marked: impl Fn(&FieldDescriptor) -> bool) -> Self {
        let messages: Vec<MessageDescriptor> =
            pool.all_messages().filter(|m| !m.is_map_entry()).collect();
        let marked: Vec<Box<[FieldDescriptor]>> = messages
            .iter()
            .map(|m| m.fields().filter(|f| is_marked(f)).collect())
            .collect();
        let index: HashMap<&str, usize> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| (m.full_name(), i))
            .collect();
        // A type is in the graph when it marks a field or leads to a type
        // that is: found from the marked types back along the fields that
        // lead to them, each type and field visited once, however long the
        // chains of types or however they recurse.
        let mut leading_to: Vec<Vec<usize>> = vec![Vec::new(); messages.len()];
        for (i, message) in messages.iter().enumerate() {
            for field in message.fields() {
                let child = child_type(&field).and_then(|child| index.get(child.full_name()));
                if let Some(&child) = child {
                    leading_to[child].push(i);
                }
            }
        }
        let mut included: Vec<bool> = marked.iter().map(|fields| !fields.is_empty()).collect();
        let mut pending: Vec<usize> = (0..messages.len()).filter(|&i| included[i]).collect();
        while let Some(child) = pending.pop() {
            for &parent in &leading_to[child] {
                if !included[parent] {
                    included[parent] = true;
                    pending.push(parent);
                }
            }
        }
        let mut node_of = vec![usize::MAX; messages.len()];
        let mut by_name = HashMap::new();
        for (i, message) in messages.iter().enumerate().filter(|(i, _)| included[*i]) {
            node_of[i] = by_name.len();
            by_name.insert(Box::from(message.full_name()), node_of[i]);
        }
        let nodes = messages
            .iter()
            .zip(marked)
            .enumerate()
            .filter(|(i, _)| included[*i])
            .map(|(_, (message, marked))| Node {
                marked,
                children: message
                    .fields()
                    .filter_map(|field| {
                        let child = index.get(child_type(&field)?.full_name()).copied()?;
                        included[child].then(|| (field, node_of[child]))
                    })
                    .collect(),
            })
            .collect();
        Self { nodes, by_name }
    }

    pub fn root(&self, message: &MessageDescriptor) -> Option<usize> {
        self.by_name.get(message.full_name()).copied()
    }

    fn is_marked(&self, message: &MessageDescriptor, field: &FieldDescriptor) -> bool {
        self.root(message)
            .is_some_and(|node| self.nodes[node].marked.contains(field))
    }

    /// Clears every marked field, at every depth.
    fn redact(&self, message: &mut DynamicMessage, node: usize) {
        let node = &self.nodes[node];
        for field in &node.marked {
            message.clear_field(field);
        }
        for (field, child) in &node.children {
            if message.has_field(field) {
                for_each_message(message.get_field_mut(field), |inner| {
                    self.redact(inner, *child)
                });
            }
        }
    }

    fn prune_json(&self, json: &mut Json, node: usize, key: &dyn Fn(&FieldDescriptor) -> &str) {
        let Json::Object(object) = json else { return };
        let node = &self.nodes[node];
        for field in &node.marked {
            object.remove(key(field));
        }
        for (field, child) in &node.children {
            if let Some(value) = object.get_mut(key(field)) {
                for_each_json(value, field, |inner| self.prune_json(inner, *child, key));
            }
        }
    }

    /// Calls `check` on every present message of the graph with its marked
    /// fields and its path (`resource.owner`, `items[2]`).
    fn visit(
        &self,
        message: &mut DynamicMessage,
        node: usize,
        check: &mut Check<'_>,
    ) -> Result<(), Error> {
        let mut path = String::new();
        self.visit_at(message, node, &mut path, check)
    }

    fn visit_at(
        &self,
        message: &mut DynamicMessage,
        node: usize,
        path: &mut String,
        check: &mut Check<'_>,
    ) -> Result<(), Error> {
        let node = &self.nodes[node];
        check(message, &node.marked, path)?;
        for (field, child) in &node.children {
            if !message.has_field(field) {
                continue;
            }
            let len = path.len();
            if len > 0 {
                path.push('.');
            }
            path.push_str(field.name());
            let result = match message.get_field_mut(field) {
                Value::Message(inner) => self.visit_at(inner, *child, path, check),
                Value::List(items) => items.iter_mut().enumerate().try_for_each(|(i, item)| {
                    let Value::Message(inner) = item else {
                        return Ok(());
                    };
                    let len = path.len();
                    let _ = write!(path, "[{i}]");
                    let result = self.visit_at(inner, *child, path, check);
                    path.truncate(len);
                    result
                }),
                Value::Map(entries) => entries.iter_mut().try_for_each(|(key, value)| {
                    let Value::Message(inner) = value else {
                        return Ok(());
                    };
                    let len = path.len();
                    push_map_key(path, key);
                    let result = self.visit_at(inner, *child, path, check);
                    path.truncate(len);
                    result
                }),
                _ => Ok(()),
            };
            path.truncate(len);
            result?;
        }
        Ok(())
    }
}

/// Applies `f` to the JSON of a message field: the object itself, or every
/// element of a repeated field, or every value of a map.
pub(crate) fn for_each_json(
    value: &mut Json,
    field: &FieldDescriptor,
    mut f: impl FnMut(&mut Json),
) {
    match value {
        Json::Array(items) if field.is_list() => items.iter_mut().for_each(f),
        Json::Object(entries) if field.is_map() => entries.values_mut().for_each(f),
        other => f(other),
    }
}

/// Applies `f` to the message, or to every message of a list or map value.
pub(crate) fn for_each_message(value: &mut Value, mut f: impl FnMut(&mut DynamicMessage)) {
    match value {
        Value::Message(inner) => f(inner),
        Value::List(items) => items
            .iter_mut()
            .filter_map(Value::as_message_mut)
            .for_each(f),
        Value::Map(entries) => entries
            .values_mut()
            .filter_map(Value::as_message_mut)
            .for_each(f),
        _ => {}
    }
}

/// `[key]` in a path: the key as written in JSON.
fn push_map_key(path: &mut String, key: &MapKey) {
    let _ = match key {
        MapKey::Bool(v) => write!(path, "[{v}]"),
        MapKey::I32(v) => write!(path, "[{v}]"),
        MapKey::I64(v) => write!(path, "[{v}]"),
        MapKey::U32(v) => write!(path, "[{v}]"),
        MapKey::U64(v) => write!(path, "[{v}]"),
        MapKey::String(v) => write!(path, "[{v}]"),
    };
}

#[cfg(test)]
mod tests {
    use prost_types::{
        field_descriptor_proto::{Label, Type},
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
    };

    use super::*;

    /// `M0 { M1 next; }` … `Mn { string secret; }`, declared from the end:
    /// every type leads to the marked field, the first through all the others.
    fn chain(length: usize) -> DescriptorPool {
        let field = |name: &str, kind: Type, type_name: Option<String>| FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(1),
            label: Some(Label::Optional as i32),
            r#type: Some(kind as i32),
            type_name,
            ..Default::default()
        };
        let message_type = (0..=length)
            .rev()
            .map(|i| DescriptorProto {
                name: Some(format!("M{i}")),
                field: vec![if i == length {
                    field("secret", Type::String, None)
                } else {
                    field("next", Type::Message, Some(format!(".chain.M{}", i + 1)))
                }],
                ..Default::default()
            })
            .collect();
        let file = FileDescriptorProto {
            name: Some("chain.proto".into()),
            package: Some("chain".into()),
            message_type,
            syntax: Some("proto3".into()),
            ..Default::default()
        };
        DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: vec![file] }).unwrap()
    }

    #[test]
    fn every_type_of_a_long_chain_leads_to_its_marked_field() {
        let length = 10_000;
        let pool = chain(length);
        let graph = FieldGraph::build(&pool, |field| field.name() == "secret");
        for i in [0, length / 2, length] {
            let message = pool.get_message_by_name(&format!("chain.M{i}")).unwrap();
            assert!(graph.root(&message).is_some(), "M{i}");
        }
    }

    #[test]
    fn recursive_types_are_in_the_graph_once() {
        let pool = crate::testing::pool();
        let graph = FieldGraph::build(&pool, |field| field.name() == "x");
        let deep = pool
            .get_message_by_name("protogate.testing.v1.Deep")
            .unwrap();
        let node = &graph.nodes[graph.root(&deep).unwrap()];
        assert_eq!(node.marked.len(), 1);
        assert_eq!(node.children.len(), 1, "`d` leads back to Deep");
    }
}
