//! `google.api.http`: reading the rule off a method, flattening
//! `additional_bindings`, parsing templates and resolving bindings against the
//! request and response types. Everything here runs at catalog build time.

mod binding;
pub mod template;

pub use binding::{BindingPlan, BodyPlan, FieldPath};
use http::Method;
use prost_reflect::MethodDescriptor;

use self::template::PathTemplate;
use crate::{
    nesting,
    pb::google::api::{http_rule::Pattern, HttpRule},
};

/// One REST binding of a gRPC method: the primary rule or one additional binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpBinding {
    pub method: Method,
    /// The template as written, for labels and messages.
    pub path: String,
    /// `""` (no body), `"*"` or a top-level field name.
    pub body: String,
    /// `""` (the whole reply) or a top-level field name.
    pub response_body: String,
}

/// A binding whose template parsed and whose fields resolved: what a route needs.
#[derive(Debug, Clone)]
pub struct ResolvedBinding {
    pub binding: HttpBinding,
    pub template: PathTemplate,
    pub plan: BindingPlan,
}

/// The method's `google.api.http` rule, if it has one.
pub fn http_rule(method: &MethodDescriptor) -> Result<Option<HttpRule>, String> {
    let Some(extension) = method
        .parent_pool()
        .get_extension_by_name("google.api.http")
    else {
        return Ok(None);
    };
    let options = method.options();
    if !options.has_extension(&extension) {
        return Ok(None);
    }
    let value = options.get_extension(&extension);
    let message = value
        .as_message()
        .ok_or_else(|| "google.api.http option is not a message".to_owned())?;
    message
        .transcode_to::<HttpRule>()
        .map(Some)
        .map_err(|err| format!("google.api.http option does not decode: {err}"))
}

/// The binding used for methods without an annotation when they are exposed:
/// `POST /{package.Service}/{Method}` with body `*`.
pub fn default_binding(method: &MethodDescriptor) -> HttpBinding {
    HttpBinding {
        method: Method::POST,
        path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
        body: "*".to_owned(),
        response_body: String::new(),
    }
}

/// The primary binding followed by the additional ones; nested
/// `additional_bindings` are refused, as the spec says.
pub fn bindings(rule: &HttpRule) -> Result<Vec<HttpBinding>, String> {
    let mut out = Vec::with_capacity(1 + rule.additional_bindings.len());
    out.push(binding(rule)?);
    for (i, extra) in rule.additional_bindings.iter().enumerate() {
        if !extra.additional_bindings.is_empty() {
            return Err(format!(
                "additional_bindings[{i}] has nested additional_bindings"
            ));
        }
        out.push(binding(extra).map_err(|err| format!("additional_bindings[{i}]: {err}"))?);
    }
    Ok(out)
}

fn binding(rule: &HttpRule) -> Result<HttpBinding, String> {
    let (method, path) = match &rule.pattern {
        Some(Pattern::Get(path)) => (Method::GET, path),
        Some(Pattern::Put(path)) => (Method::PUT, path),
        Some(Pattern::Post(path)) => (Method::POST, path),
        Some(Pattern::Delete(path)) => (Method::DELETE, path),
        Some(Pattern::Patch(path)) => (Method::PATCH, path),
        Some(Pattern::Custom(custom)) => {
            let method = Method::from_bytes(custom.kind.as_bytes())
                .map_err(|_| format!("custom kind `{}` is not an HTTP method", custom.kind))?;
            (method, &custom.path)
        }
        None => {
            return Err("no HTTP method and path (get, put, post, delete, patch or custom)".into())
        }
    };
    Ok(HttpBinding {
        method,
        path: path.clone(),
        body: rule.body.clone(),
        response_body: rule.response_body.clone(),
    })
}

/// Parses the binding's template and resolves its fields against `method`'s types.
pub fn resolve(binding: HttpBinding, method: &MethodDescriptor) -> Result<ResolvedBinding, String> {
    let shown = nesting::shortened(&binding.path);
    let template =
        PathTemplate::parse(&binding.path).map_err(|err| format!("template `{shown}` {err}"))?;
    let plan = BindingPlan::new(&template, &binding.body, &binding.response_body, method)
        .map_err(|err| format!("template `{shown}`: {err}"))?;
    Ok(ResolvedBinding {
        binding,
        template,
        plan,
    })
}
