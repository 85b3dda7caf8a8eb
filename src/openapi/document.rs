//! The OpenAPI 3.1 document of a catalog: one operation per route, saying
//! exactly what the gateway does with it (bindings, JSON mapping, streams,
//! masks, policies), nothing more.

use std::collections::{BTreeMap, HashMap};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{json, Map, Value as Json};

use super::{
    comments::Comments,
    schema::{is_deprecated, reference, JsonNames, Schemas},
};
use crate::{
    config::ServerConfig,
    http_rule::{template::Segment, BodyPlan},
    nesting::MAX_DEPTH,
    registry::{CallKind, Catalog, MethodPlan, Route},
    transcode::{scalar::has_string_form, FIELDS_PARAM},
};

const BEARER: &str = "bearerAuth";

/// Most query parameters listed per operation: a wide tree of nested
/// messages (an upload's) could otherwise list exponentially many paths.
const MAX_QUERY_PARAMETERS: usize = 1000;
const STATUS: &str = "google.rpc.Status";

/// What a document says beyond the catalog, from the config.
#[derive(Debug, Clone, Default)]
pub struct DocumentOptions {
    /// `info.title`.
    pub title: String,
    /// `info.version`; `None`: the catalog generation.
    pub version: Option<String>,
    pub servers: Vec<ServerConfig>,
    pub names: JsonNames,
    /// Whether `auth` is configured: the bearer scheme, 401 and 403.
    pub auth: bool,
}

/// The packages a document can be limited to: those of the served routes.
pub fn packages(catalog: &Catalog) -> Vec<String> {
    let mut packages: Vec<String> = catalog
        .routes()
        .iter()
        .map(|route| {
            let method = &catalog.method(route).descriptor;
            method.parent_service().package_name().to_owned()
        })
        .collect();
    packages.sort();
    packages.dedup();
    packages
}

/// The document of `catalog`'s routes, or of those of one `package`.
pub fn document(catalog: &Catalog, options: &DocumentOptions, package: Option<&str>) -> Json {
    let comments = Comments::new(catalog.pool());
    let mut schemas = Schemas::new(options.names, catalog.field_rules(), &comments);
    let ids = OperationIds::new(catalog);
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    let mut tags: BTreeMap<String, Json> = BTreeMap::new();
    for (index, route) in catalog.routes().iter().enumerate() {
        let method = catalog.method(route);
        let service = method.descriptor.parent_service();
        if package.is_some_and(|package| service.package_name() != package) {
            continue;
        }
        tags.entry(service.full_name().to_owned())
            .or_insert_with(|| {
                let mut tag = json!({ "name": service.full_name() });
                if let Some(text) = comments.of(&service.parent_file(), service.path()) {
                    tag["description"] = text.into();
                }
                tag
            });
        let operation = Operation {
            route,
            method,
            options,
            comments: &comments,
        };
        let (path, path_parameters) = operation.path(&mut schemas);
        let mut built = operation.build(&mut schemas, path_parameters);
        built["operationId"] = ids.of(index).into();
        paths
            .entry(path)
            .or_default()
            .insert(method_key(&route.http_method), built);
    }
    // Every error body: referred to by every operation.
    if let Some(status) = catalog.pool().get_message_by_name(STATUS) {
        schemas.message(&status);
    }
    let mut components = json!({ "schemas": schemas.finish() });
    if options.auth {
        components["securitySchemes"] = json!({
            BEARER: { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" }
        });
    }
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": options.title,
            "version": options.version.clone().unwrap_or_else(|| catalog.generation().to_string()),
        },
        "tags": tags.into_values().collect::<Vec<_>>(),
        "paths": paths,
        "components": components,
    });
    if !options.servers.is_empty() {
        document["servers"] = options
            .servers
            .iter()
            .map(|server| match server {
                ServerConfig::Url(url) => json!({ "url": url }),
                ServerConfig::Described { url, description } => {
                    let mut entry = json!({ "url": url });
                    if let Some(description) = description {
                        entry["description"] = description.as_str().into();
                    }
                    entry
                }
            })
            .collect();
    }
    document
}

/// `Service_Method` per route, with `_1`, `_2`… for a method's extra
/// bindings; `package_Service_Method` when two packages have a service of
/// that name (API versions), so that the ids are unique in every document
/// of the catalog, filtered or not.
struct OperationIds(Vec<String>);

impl OperationIds {
    fn new(catalog: &Catalog) -> Self {
        let mut services: HashMap<String, Vec<String>> = HashMap::new();
        for service in catalog.pool().services() {
            let packages = services.entry(service.name().to_owned()).or_default();
            if !packages.iter().any(|p| p == service.package_name()) {
                packages.push(service.package_name().to_owned());
            }
        }
        let mut seen: HashMap<usize, usize> = HashMap::new();
        let ids = catalog
            .routes()
            .iter()
            .map(|route| {
                let method = &catalog.method(route).descriptor;
                let service = method.parent_service();
                let mut id = String::new();
                if services.get(service.name()).is_some_and(|p| p.len() > 1) {
                    id.push_str(&service.package_name().replace('.', "_"));
                    id.push('_');
                }
                id.push_str(service.name());
                id.push('_');
                id.push_str(method.name());
                let count = seen.entry(route.method).or_insert(0);
                if *count > 0 {
                    id.push_str(&format!("_{count}"));
                }
                *count += 1;
                id
            })
            .collect();
        Self(ids)
    }

    fn of(&self, route: usize) -> &str {
        &self.0[route]
    }
}

/// One route as an operation.
struct Operation<'a> {
    route: &'a Route,
    method: &'a MethodPlan,
    options: &'a DocumentOptions,
    comments: &'a Comments,
}

impl Operation<'_> {
    /// The OpenAPI path (`/v1/orders/{id}:cancel`) and its parameters. A
    /// wildcard outside any variable is a parameter the gateway ignores.
    fn path(&self, schemas: &mut Schemas<'_>) -> (String, Vec<Json>) {
        let template = &self.route.template;
        let mut path = String::new();
        let mut parameters = Vec::new();
        let mut segment = 0;
        let mut unbound = 0;
        while segment < template.segments.len() {
            path.push('/');
            let variable = template
                .variables
                .iter()
                .zip(self.route.binding.vars.iter())
                .find(|(variable, _)| variable.start == segment);
            if let Some((variable, field_path)) = variable {
                let name = variable.field_path_string();
                let schema = schemas.kind(&field_path.leaf().kind());
                let bound = &template.segments[variable.start..variable.end];
                let description = if variable.is_multi_segment() || bound != [Segment::Wildcard] {
                    let pattern: Vec<String> = bound.iter().map(segment_text).collect();
                    format!(
                        "the path segments matching `{}`, `/` included (`%2F` is kept as is)",
                        pattern.join("/")
                    )
                } else {
                    "one path segment, percent-decoded".to_owned()
                };
                path.push_str(&format!("{{{name}}}"));
                parameters.push(json!({
                    "name": name,
                    "in": "path",
                    "required": true,
                    "description": description,
                    "schema": schema,
                }));
                segment = variable.end;
                continue;
            }
            match &template.segments[segment] {
                Segment::Literal(text) => path.push_str(text),
                wildcard => {
                    unbound += 1;
                    let name = format!("unbound{unbound}");
                    path.push_str(&format!("{{{name}}}"));
                    parameters.push(json!({
                        "name": name,
                        "in": "path",
                        "required": true,
                        "description": format!("any path segments matching `{}`, bound to no field", segment_text(wildcard)),
                        "schema": { "type": "string" },
                    }));
                }
            }
            segment += 1;
        }
        if path.is_empty() {
            path.push('/');
        }
        if let Some(verb) = &template.verb {
            path.push(':');
            path.push_str(verb);
        }
        (path, parameters)
    }

    fn build(&self, schemas: &mut Schemas<'_>, mut parameters: Vec<Json>) -> Json {
        let descriptor = &self.method.descriptor;
        let service = descriptor.parent_service();
        let mut operation = json!({ "tags": [service.full_name()] });
        if let Some(text) = self
            .comments
            .of(&descriptor.parent_file(), descriptor.path())
        {
            let summary = text.split("\n\n").next().unwrap_or(text).replace('\n', " ");
            operation["summary"] = summary.into();
            operation["description"] = text.into();
        }
        parameters.extend(self.query_parameters(schemas));
        if self.route.binding.fields_param {
            parameters.push(json!({
                "name": FIELDS_PARAM,
                "in": "query",
                "description": "only these paths of the reply, comma-separated (`id,items.sku`)",
                "schema": { "type": "string" },
            }));
        }
        parameters.push(json!({
            "name": "X-Fields",
            "in": "header",
            "description": "only these paths of the reply, comma-separated (as `fields`)",
            "schema": { "type": "string" },
        }));
        operation["parameters"] = parameters.into();
        if let Some(body) = self.request_body(schemas) {
            operation["requestBody"] = body;
        }
        operation["responses"] = self.responses(schemas);
        if let Some(deprecation) = &self.method.deprecation {
            operation["deprecated"] = true.into();
            if let Some(sunset) = deprecation.sunset() {
                operation["x-sunset"] = sunset.into();
            }
        }
        if self.options.auth {
            let policy = &self.method.policy;
            let scopes: Vec<&str> = policy.scopes.iter().map(|s| &**s).collect();
            let mut security: Vec<Json> = if policy.roles.is_empty() {
                vec![json!({ BEARER: scopes })]
            } else {
                policy
                    .roles
                    .iter()
                    .map(|role| {
                        let mut needs = vec![&**role];
                        needs.extend(&scopes);
                        json!({ BEARER: needs })
                    })
                    .collect()
            };
            if policy.allow_anonymous {
                security.insert(0, json!({}));
            }
            operation["security"] = security.into();
        }
        operation
    }

    /// Every field the gateway binds from the query: fields not bound by the
    /// path or the body, by dotted path into singular messages; none with
    /// `body: "*"`. Walked from a stack, at most [`MAX_DEPTH`] deep, not
    /// into a type already on the path (recursive types), at most
    /// [`MAX_QUERY_PARAMETERS`].
    fn query_parameters(&self, schemas: &mut Schemas<'_>) -> Vec<Json> {
        let binding = &self.route.binding;
        if binding.body == BodyPlan::Whole {
            return Vec::new();
        }
        let rules = schemas.rules();
        let mut parameters = Vec::new();
        let mut stack: Vec<(Vec<FieldDescriptor>, MessageDescriptor)> =
            vec![(Vec::new(), self.method.descriptor.input())];
        while let Some((prefix, message)) = stack.pop() {
            if parameters.len() >= MAX_QUERY_PARAMETERS {
                break;
            }
            // A message's own fields first, in order; then those below it.
            let mut below = Vec::new();
            for field in message.fields() {
                if rules.is_internal(&message, &field)
                    || rules.is_output_only(&message, &field)
                    || field.is_map()
                {
                    continue;
                }
                if prefix.is_empty()
                    && matches!(&binding.body, BodyPlan::Field(body) if *body == field)
                {
                    continue;
                }
                let mut path = prefix.clone();
                path.push(field.clone());
                let nested = match field.kind() {
                    Kind::Message(inner) if !has_string_form(&inner) => Some(inner),
                    _ => None,
                };
                if let Some(inner) = nested {
                    let cycle = prefix
                        .iter()
                        .any(|f| matches!(f.kind(), Kind::Message(m) if m == inner))
                        || inner == self.method.descriptor.input();
                    if !field.is_list() && !cycle && path.len() < MAX_DEPTH {
                        below.push((path, inner));
                    }
                    continue;
                }
                if binding.vars.iter().any(|var| var.overlaps(&path)) {
                    continue;
                }
                parameters.push(self.query_parameter(schemas, &path));
            }
            stack.extend(below.into_iter().rev());
        }
        parameters
    }

    fn query_parameter(&self, schemas: &mut Schemas<'_>, path: &[FieldDescriptor]) -> Json {
        let name: Vec<&str> = path.iter().map(|field| schemas.key(field)).collect();
        let name = name.join(".");
        let Some(leaf) = path.last() else {
            return json!({});
        };
        let mut parameter = json!({
            "name": name,
            "in": "query",
            "schema": schemas.field(leaf),
        });
        if leaf.is_list() {
            parameter["style"] = "form".into();
            parameter["explode"] = true.into();
        }
        let time = match leaf.kind() {
            Kind::Message(message) => matches!(
                message.full_name(),
                "google.protobuf.Timestamp" | "google.protobuf.Duration"
            ),
            _ => false,
        };
        let mut description = self
            .comments
            .of(&leaf.parent_file(), leaf.path())
            .map(str::to_owned)
            .unwrap_or_default();
        if time {
            if !description.is_empty() {
                description.push_str("\n\n");
            }
            description.push_str(&format!(
                "or by its fields: `{name}.seconds` and `{name}.nanos` (not both ways)"
            ));
        }
        if !description.is_empty() {
            parameter["description"] = description.into();
        }
        if is_deprecated(leaf) {
            parameter["deprecated"] = true.into();
        }
        parameter
    }

    /// What one message of the request body is, per the body binding.
    fn body_schema(&self, schemas: &mut Schemas<'_>) -> Option<Json> {
        let binding = &self.route.binding;
        match &binding.body {
            BodyPlan::None => None,
            BodyPlan::Whole => {
                // The message less the fields the path binds whole.
                let bound: Vec<FieldDescriptor> = binding
                    .vars
                    .iter()
                    .filter(|var| var.fields().len() == 1)
                    .map(|var| var.leaf().clone())
                    .collect();
                let input = self.method.descriptor.input();
                Some(if bound.is_empty() {
                    schemas.message(&input)
                } else {
                    schemas.variant(&input, &bound, None)
                })
            }
            BodyPlan::Field(field) => Some(schemas.field(field)),
        }
    }

    fn request_body(&self, schemas: &mut Schemas<'_>) -> Option<Json> {
        let element = self.body_schema(schemas)?;
        let streamed = matches!(
            self.method.kind,
            CallKind::ClientStreaming | CallKind::Streaming
        );
        let content = if self.route.binding.raw_request {
            json!({ "*/*": { "schema": { "type": "string", "format": "binary" } } })
        } else if streamed {
            json!({
                "application/x-ndjson": { "schema": element },
                "application/json": { "schema": { "type": "array", "items": element } },
            })
        } else {
            json!({ "application/json": { "schema": element } })
        };
        let mut body = json!({ "content": content });
        if streamed {
            body["description"] = "a stream of messages: NDJSON (one per line, or concatenated JSON values) or one JSON array; each is sent upstream as soon as it is read, and a bad element aborts the call".into();
        } else if self.route.binding.raw_request {
            body["description"] =
                "the raw body, with its content type (google.api.HttpBody)".into();
        }
        Some(body)
    }

    /// The reply of one message, `response_body` and response masks applied.
    fn reply_schema(&self, schemas: &mut Schemas<'_>) -> Json {
        let output = self.method.descriptor.output();
        let omit = self.method.omit.as_ref();
        match &self.route.binding.response_body {
            Some(field) => match (field.kind(), omit.and_then(|omit| omit.child(field))) {
                (_, Some(child)) if child.is_empty() => json!({}),
                (Kind::Message(inner), Some(child)) if !field.is_map() => {
                    let one = schemas.variant(&inner, &[], Some(child));
                    if field.is_list() {
                        json!({ "type": "array", "items": one })
                    } else {
                        one
                    }
                }
                _ => schemas.field(field),
            },
            None if omit.is_some() => schemas.variant(&output, &[], omit),
            None => schemas.message(&output),
        }
    }

    fn responses(&self, schemas: &mut Schemas<'_>) -> Json {
        let reply = self.reply_schema(schemas);
        let streamed = matches!(
            self.method.kind,
            CallKind::ServerStreaming | CallKind::Streaming
        );
        let status = reference(STATUS);
        let content = if self.route.binding.raw_response {
            json!({ "*/*": { "schema": { "type": "string", "format": "binary" } } })
        } else if streamed {
            let envelope = json!({
                "type": "object",
                "properties": { "result": reply, "error": status },
                "minProperties": 1,
                "maxProperties": 1,
                "additionalProperties": false,
            });
            json!({
                "application/x-ndjson": { "schema": envelope },
                "text/event-stream": { "schema": { "type": "string" } },
                "application/json": { "schema": { "type": "array", "items": envelope } },
            })
        } else {
            json!({ "application/json": { "schema": reply } })
        };
        let mut headers = Map::new();
        let limited = {
            let limits = &self.method.policy.rate_limit;
            limits.per_user.is_some() || limits.per_ip.is_some()
        };
        if limited {
            headers.extend(rate_limit_headers());
        }
        if let Some(deprecation) = &self.method.deprecation {
            headers.insert(
                "Deprecation".into(),
                header("when the API was deprecated (RFC 9745)"),
            );
            if deprecation.sunset().is_some() {
                headers.insert(
                    "Sunset".into(),
                    header("when it stops being served (RFC 8594)"),
                );
            }
            if deprecation.has_link() {
                headers.insert("Link".into(), header("the successor version"));
            }
        }
        let description = if streamed {
            "a stream of replies, each written as the upstream sends it, in the format `Accept` asks for: NDJSON lines `{\"result\": message}` (the default), SSE `data:` events, or one JSON array of those envelopes; a failure after the first reply ends the stream with `{\"error\": google.rpc.Status}` (SSE: `event: error`)"
        } else {
            "the reply"
        };
        let mut ok = json!({ "description": description, "content": content });
        if !headers.is_empty() {
            ok["headers"] = headers.into();
        }
        let error = |description: &str| {
            json!({
                "description": description,
                "content": { "application/json": { "schema": reference(STATUS) } },
            })
        };
        let mut responses = json!({
            "200": ok,
            "default": error("an error: a google.rpc.Status with the canonical HTTP status"),
        });
        if self.options.auth {
            let mut unauthenticated = error("no token, or a token that is not valid");
            unauthenticated["headers"] =
                json!({ "WWW-Authenticate": header("Bearer, and why the token was refused") });
            responses["401"] = unauthenticated;
            let policy = &self.method.policy;
            if !policy.roles.is_empty() || !policy.scopes.is_empty() {
                responses["403"] = error("the token lacks a required role or scope");
            }
        }
        if limited {
            let mut limited = error("over the rate limit");
            let mut headers = rate_limit_headers();
            headers.insert(
                "Retry-After".into(),
                header("seconds until a call is allowed"),
            );
            limited["headers"] = headers.into();
            responses["429"] = limited;
        }
        responses
    }
}

fn header(description: &str) -> Json {
    json!({ "description": description, "schema": { "type": "string" } })
}

fn rate_limit_headers() -> Map<String, Json> {
    let mut headers = Map::new();
    for (name, description) in [
        ("RateLimit-Limit", "the quota"),
        ("RateLimit-Remaining", "calls left in the window"),
        ("RateLimit-Reset", "seconds until the quota is full again"),
        ("RateLimit-Policy", "the quota and its window"),
    ] {
        headers.insert(name.into(), header(description));
    }
    headers
}

/// The path item key of an HTTP method. OpenAPI 3.1 has keys for the
/// standard methods only: a custom one (`custom: {kind: "SEARCH"}`) is an
/// extension, `x-custom-search`.
fn method_key(method: &http::Method) -> String {
    let name = method.as_str().to_ascii_lowercase();
    match name.as_str() {
        "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace" => name,
        _ => format!("x-custom-{name}"),
    }
}

fn segment_text(segment: &Segment) -> String {
    match segment {
        Segment::Literal(text) => text.clone(),
        Segment::Wildcard => "*".to_owned(),
        Segment::DoubleWildcard => "**".to_owned(),
    }
}
