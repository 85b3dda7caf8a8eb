//! The immutable snapshot of everything descriptor-derived: pool, loaded
//! sets, method plans, routes and the router. Built only by
//! [`CatalogBuilder`](super::CatalogBuilder), never mutated, shared by `Arc`.

use std::{fmt, sync::Arc, time::SystemTime};

use bytes::Bytes;
use http::{uri::PathAndQuery, Method};
use prost_reflect::{DescriptorPool, MethodDescriptor};

use crate::{
    deprecation::Deprecation,
    error::DetailTypes,
    http_rule::{template::PathTemplate, BindingPlan},
    observe::{LabelledRoutes, RouteLabels, SpanFacts},
    policy::RoutePolicy,
    router::{Capture, Lookup, RouteId, Router},
    transcode::{FieldRules, JsonPlans, MaskTree, MethodRules, ReplyShape},
    upstream::Upstream,
};

/// Everything a request needs from the loaded descriptors.
#[derive(Debug)]
pub struct Catalog {
    pub(super) generation: u64,
    pub(super) pool: DescriptorPool,
    pub(super) sets: Box<[LoadedSet]>,
    pub(super) methods: Box<[MethodPlan]>,
    pub(super) routes: Box<[Route]>,
    pub(super) router: Router,
    pub(super) field_rules: FieldRules,
    pub(super) json_plans: JsonPlans,
    /// What the build accepted but an operator should hear about.
    pub(super) warnings: Box<[String]>,
}

/// A descriptor set as loaded: what an operator lists and compares.
#[derive(Debug, Clone)]
pub struct LoadedSet {
    pub name: String,
    /// Hex SHA-256 of the set's bytes.
    pub digest: String,
    pub size: usize,
    /// Fully-qualified names of the services the set brought.
    pub services: Vec<String>,
    /// The set itself, as the admin API hands it back.
    pub bytes: Bytes,
    /// When these bytes were first loaded (kept across reloads).
    pub loaded_at: SystemTime,
    /// The upstream uploaded with the set, for the packages it brings.
    pub upstream: Option<String>,
    /// Whether the admin API manages it (it lives in the descriptor directory).
    pub managed: bool,
}

/// The names of the sets read from servers through reflection begin so
/// (`discovered-http-host-50051`); uploads cannot take such a name.
pub const DISCOVERED_PREFIX: &str = "discovered-";

impl LoadedSet {
    /// The server this set was read from through reflection, if it was.
    pub fn discovered_from(&self) -> Option<&str> {
        self.name
            .starts_with(DISCOVERED_PREFIX)
            .then_some(self.upstream.as_deref())
            .flatten()
    }
}

/// How a method exchanges messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Unary,
    ServerStreaming,
    ClientStreaming,
    Streaming,
}

/// One gRPC method as the gateway calls it.
#[derive(Debug)]
pub struct MethodPlan {
    pub descriptor: MethodDescriptor,
    /// `/package.Service/Method`, built once.
    pub grpc_path: PathAndQuery,
    /// `None` only in catalogs built for `protogate check`.
    pub upstream: Option<Arc<Upstream>>,
    pub kind: CallKind,
    /// Where the method's request and reply types enter the field rules.
    pub rules: MethodRules,
    /// Configured paths omitted from replies (`filters.responses`).
    pub omit: Option<MaskTree>,
    /// The request type's plan in the catalog's [`JsonPlans`].
    pub request_plan: Option<usize>,
    /// The reply type's plan in the catalog's [`JsonPlans`].
    pub reply_plan: Option<usize>,
    /// Who may call it and how often: the same for every binding.
    pub policy: RoutePolicy,
    /// The headers it answers with when deprecated.
    pub deprecation: Option<Deprecation>,
}

/// One REST binding of a method.
#[derive(Debug)]
pub struct Route {
    pub method: usize,
    pub http_method: Method,
    pub template: PathTemplate,
    /// `GET /v1/orders/{id}`: the bounded label for logs and metrics.
    pub label: Box<str>,
    pub binding: BindingPlan,
}

/// The matched route, stored in the request extensions by the route step;
/// it pins the request to one catalog generation.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub catalog: Arc<Catalog>,
    pub route: RouteId,
    pub captures: Vec<Capture>,
}

// === impl Catalog ===

impl Catalog {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// Internal, output-only and required fields of every type in the pool.
    pub fn field_rules(&self) -> &FieldRules {
        &self.field_rules
    }

    /// What resolves and redacts the `Any` details of an upstream's error.
    pub fn detail_types(&self) -> DetailTypes<'_> {
        (&self.pool, &self.field_rules)
    }

    pub fn json_plans(&self) -> &JsonPlans {
        &self.json_plans
    }

    /// What the build accepted but an operator should hear about (logged
    /// whenever the catalog is built).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn sets(&self) -> &[LoadedSet] {
        &self.sets
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn lookup(&self, method: &Method, path: &str) -> Lookup {
        self.router.lookup(method, path)
    }

    /// The route for an id the router returned.
    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id as usize]
    }

    pub fn method(&self, route: &Route) -> &MethodPlan {
        &self.methods[route.method]
    }

    /// Whether an upstream `pattern` names a service of this catalog (one
    /// that names none is probably a typo).
    pub fn has_service_matching(&self, pattern: &str) -> bool {
        self.pool
            .services()
            .any(|service| crate::upstream::matches(pattern, service.full_name()))
    }
}

/// A request keeps the catalog it was matched in for its labels.
impl LabelledRoutes for Catalog {
    fn labels(&self, id: RouteId) -> RouteLabels<'_> {
        let route = self.route(id);
        let method = self.method(route);
        RouteLabels {
            route: &route.label,
            upstream: method.upstream.as_ref().map_or("none", |u| &u.name),
            rpc: method.grpc_path.as_str(),
        }
    }

    fn span_facts(&self, id: RouteId) -> SpanFacts<'_> {
        let route = self.route(id);
        let plan = self.method(route);
        let method = plan.descriptor.name();
        // `/{service}/{method}`.
        let path = plan.grpc_path.as_str();
        SpanFacts {
            template: route.path_template(),
            service: path
                .get(1..path.len().saturating_sub(method.len() + 1))
                .unwrap_or_default(),
            method,
            upstream: plan.upstream.as_ref().map(|u| u.uri()),
        }
    }
}

// === impl Route ===

impl Route {
    /// The template as the rule wrote it: the label after its method.
    pub fn path_template(&self) -> &str {
        self.label
            .get(self.http_method.as_str().len() + 1..)
            .unwrap_or_default()
    }
}

// === impl RouteMatch ===

impl RouteMatch {
    pub fn route(&self) -> &Route {
        self.catalog.route(self.route)
    }

    pub fn method(&self) -> &MethodPlan {
        self.catalog.method(self.route())
    }

    /// What this route's replies are filtered by.
    pub fn reply_shape(&self) -> ReplyShape<'_> {
        let method = self.method();
        ReplyShape {
            rules: self.catalog.field_rules(),
            method: &method.rules,
            omit: method.omit.as_ref(),
            plan: &self.route().binding,
            method_descriptor: &method.descriptor,
            plans: &self.catalog.json_plans,
            reply_plan: method.reply_plan,
        }
    }

    /// The request-side field rules of this route's method.
    pub fn request_rules(&self) -> (&FieldRules, &MethodRules) {
        (self.catalog.field_rules(), &self.method().rules)
    }
}

/// The route listing printed by `protogate check`: one line per route.
#[derive(Debug)]
pub struct RouteTable<'a>(pub &'a Catalog);

impl fmt::Display for RouteTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .0
            .routes
            .iter()
            .map(|r| r.label.len())
            .max()
            .unwrap_or(0);
        for route in self.0.routes.iter() {
            let method = self.0.method(route);
            write!(f, "{:width$}  -> {}", route.label, method.grpc_path)?;
            if method.kind != CallKind::Unary {
                write!(f, "  ({:?})", method.kind)?;
            }
            if let Some(upstream) = &method.upstream {
                write!(f, "  @ {}", upstream.url)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
