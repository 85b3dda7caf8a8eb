//! Resolves a binding's `{field.path}` variables, `body` and `response_body`
//! against the method's types once, at catalog build, so that a request only
//! follows pre-resolved `FieldDescriptor`s.

use std::fmt;

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};

use super::template::PathTemplate;

/// Bodies of this type pass through raw: bytes and `Content-Type`, no JSON.
const HTTP_BODY: &str = "google.api.HttpBody";

/// A resolved dotted field path (`order.id`): every step is a singular message
/// field except the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Box<[FieldDescriptor]>);

/// Where the HTTP body goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyPlan {
    /// No body binding: the body is ignored, query parameters may set any free field.
    None,
    /// `body: "*"`: the whole request message; no query parameters.
    Whole,
    /// `body: "field"`: that top-level field; query parameters set fields outside it.
    Field(FieldDescriptor),
}

/// Everything a request needs to build its message from path, query and body.
#[derive(Debug, Clone)]
pub struct BindingPlan {
    /// One per template variable, in the template's variable order.
    pub vars: Box<[FieldPath]>,
    pub body: BodyPlan,
    /// The reply field sent instead of the whole reply.
    pub response_body: Option<FieldDescriptor>,
    /// A `google.protobuf.FieldMask update_mask` to fill from the body's keys
    /// when the client sends none (body bound to a message field).
    pub update_mask: Option<FieldDescriptor>,
    /// Whether the `fields` query parameter asks for a partial response
    /// (it does unless the request has a field named `fields`).
    pub fields_param: bool,
    /// The body binding targets a `google.api.HttpBody`: the HTTP body is its raw `data`.
    pub raw_request: bool,
    /// The reply (or its `response_body`) is a `google.api.HttpBody`, written raw.
    pub raw_response: bool,
}

// === impl FieldPath ===

impl FieldPath {
    /// Resolves `names` (proto field names) from `message`; every step but the
    /// last must be a singular message field.
    pub fn resolve(message: &MessageDescriptor, names: &[String]) -> Result<Self, String> {
        let mut fields = Vec::with_capacity(names.len());
        let mut current = message.clone();
        for (i, name) in names.iter().enumerate() {
            let field = current
                .get_field_by_name(name)
                .ok_or_else(|| format!("no field `{name}` in {}", current.full_name()))?;
            if i + 1 < names.len() {
                match field.kind() {
                    Kind::Message(next) if !field.is_list() && !field.is_map() => current = next,
                    _ => {
                        return Err(format!(
                            "`{name}` in {} is not a singular message",
                            current.full_name()
                        ))
                    }
                }
            }
            fields.push(field);
        }
        if fields.is_empty() {
            return Err("empty field path".into());
        }
        Ok(Self(fields.into_boxed_slice()))
    }

    pub fn fields(&self) -> &[FieldDescriptor] {
        &self.0
    }

    pub fn leaf(&self) -> &FieldDescriptor {
        // Never empty: `resolve` refuses empty paths.
        &self.0[self.0.len() - 1]
    }

    /// Whether `other` is this path, lies inside it or contains it.
    pub fn overlaps(&self, other: &[FieldDescriptor]) -> bool {
        self.0.iter().zip(other).all(|(a, b)| a == b)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, field) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(field.name())?;
        }
        Ok(())
    }
}

// === impl BindingPlan ===

impl BindingPlan {
    /// Validates the binding against the method's types, naming what is wrong.
    pub fn new(
        template: &PathTemplate,
        body: &str,
        response_body: &str,
        method: &MethodDescriptor,
    ) -> Result<Self, String> {
        let input = method.input();
        let mut vars: Vec<FieldPath> = Vec::with_capacity(template.variables.len());
        for variable in &template.variables {
            let path = FieldPath::resolve(&input, &variable.field_path)
                .map_err(|err| format!("variable `{}`: {err}", variable.field_path_string()))?;
            let leaf = path.leaf();
            if leaf.cardinality() == Cardinality::Repeated {
                return Err(format!("variable `{path}` names a repeated field"));
            }
            if matches!(leaf.kind(), Kind::Message(_)) {
                return Err(format!(
                    "variable `{path}` names a message field; bind a scalar field"
                ));
            }
            if vars.iter().any(|other| other == &path) {
                return Err(format!("variable `{path}` is bound twice"));
            }
            vars.push(path);
        }
        let body = match body {
            "" => BodyPlan::None,
            "*" => BodyPlan::Whole,
            name => BodyPlan::Field(input.get_field_by_name(name).ok_or_else(|| {
                format!("body field `{name}` not found in {}", input.full_name())
            })?),
        };
        let response_body = match response_body {
            "" => None,
            name => {
                let output = method.output();
                Some(output.get_field_by_name(name).ok_or_else(|| {
                    format!(
                        "response_body field `{name}` not found in {}",
                        output.full_name()
                    )
                })?)
            }
        };
        let update_mask = match &body {
            BodyPlan::Field(field)
                if matches!(field.kind(), Kind::Message(_)) && !field.is_list() && !field.is_map() =>
            {
                input.get_field_by_name("update_mask").filter(|mask| {
                    matches!(mask.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask")
                })
            }
            _ => None,
        };
        let raw_request = match &body {
            BodyPlan::None => false,
            BodyPlan::Whole => input.full_name() == HTTP_BODY,
            BodyPlan::Field(field) => is_http_body(field),
        };
        let raw_response = match &response_body {
            None => method.output().full_name() == HTTP_BODY,
            Some(field) => is_http_body(field),
        };
        Ok(Self {
            vars: vars.into_boxed_slice(),
            body,
            response_body,
            update_mask,
            fields_param: input.get_field_by_name("fields").is_none(),
            raw_request,
            raw_response,
        })
    }
}

fn is_http_body(field: &FieldDescriptor) -> bool {
    !field.is_list() && matches!(field.kind(), Kind::Message(m) if m.full_name() == HTTP_BODY)
}
