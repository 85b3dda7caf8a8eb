//! Descriptor sets + options → a validated [`Catalog`], or a [`LoadError`]
//! that lists every problem found (not just the first), each naming the set,
//! the method and the route at fault.

use std::{
    collections::BTreeMap,
    fmt,
    path::Path,
    sync::{Arc, LazyLock},
};

use bytes::Bytes;
use globset::{Glob, GlobMatcher};
use http::uri::PathAndQuery;
use prost::Message as _;
use prost_reflect::{DescriptorPool, FieldDescriptor, MethodDescriptor, ServiceDescriptor};
use sha2::{Digest as _, Sha256};

use super::{
    catalog::{CallKind, Catalog, LoadedSet, MethodPlan, Route},
    definitions::Definitions,
};
use crate::{
    config::{DeprecationConfig, DescriptorsConfig, FiltersConfig},
    deprecation::DeprecationRules,
    error::{Error, Violation},
    http_rule::{self, ResolvedBinding},
    nesting,
    policy::{PolicyRules, RoutePolicy},
    router::{RouteId, RouterBuilder},
    transcode::{FieldRules, JsonPlans, MaskTree},
    upstream::{Upstream, Upstreams},
};

/// google.api, google.rpc and the well-known types: known to every catalog,
/// whatever the sets import, so that error details and `Any` payloads always
/// resolve. A set's own copies of these files are not used.
static BASE_POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/base.binpb"))[..])
        .expect("the base descriptor set is compiled by build.rs and always decodes")
});

/// A named, serialized `FileDescriptorSet`, as read from a file or uploaded.
#[derive(Debug, Clone)]
pub struct DescriptorSet {
    pub name: String,
    pub bytes: Bytes,
}

/// The hex SHA-256 of a set's bytes: the digest the admin API lists and
/// the shared registry checks.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Options that change what a build accepts.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Expose methods without `google.api.http` at `POST /{package.Service}/{Method}`.
    pub expose_unannotated: bool,
    /// Refuse services without an upstream (off only for `protogate check`).
    pub require_upstreams: bool,
    /// Response paths to omit, per method glob (`filters.responses`).
    pub omit: Vec<OmitRule>,
    /// Fields internal wherever their message appears (`filters.fields`):
    /// `package.Message.field`.
    pub internal_fields: Vec<String>,
    /// Configured deprecations (`deprecations`), over the proto's `deprecated`.
    pub deprecations: DeprecationRules,
}

/// Configured response paths to omit from the methods a glob matches.
#[derive(Debug, Clone)]
pub struct OmitRule {
    methods: GlobMatcher,
    paths: Vec<String>,
}

impl BuildOptions {
    /// The options a serving gateway builds with.
    pub fn new(
        descriptors: &DescriptorsConfig,
        filters: &FiltersConfig,
        deprecations: &[DeprecationConfig],
    ) -> Self {
        Self {
            expose_unannotated: descriptors.expose_unannotated,
            require_upstreams: true,
            omit: filters
                .responses
                .iter()
                .filter_map(|filter| {
                    let glob = Glob::new(&filter.methods).ok()?;
                    Some(OmitRule {
                        methods: glob.compile_matcher(),
                        paths: filter.omit.clone(),
                    })
                })
                .collect(),
            internal_fields: filters.fields.clone(),
            deprecations: DeprecationRules::new(deprecations),
        }
    }

    /// The configured paths to omit from the method's replies: those that
    /// exist in its output type.
    fn omit_tree(&self, method: &MethodDescriptor, usage: &mut OmitUsage) -> Option<MaskTree> {
        let output = method.output();
        let mut paths = Vec::new();
        for (rule, index, path) in self.omitted_paths(method) {
            let resolves = MaskTree::parse(&output, [path], |_, _| false).is_ok();
            let entry = usage.seen.entry((rule, index)).or_default();
            let name = method.full_name().to_owned();
            if resolves {
                entry.applies.push(name);
                paths.push(path);
            } else {
                entry.misses.push((name, output.full_name().to_owned()));
            }
        }
        MaskTree::parse(&output, paths, |_, _| false)
            .ok()
            .filter(|tree| !tree.is_empty())
    }

    /// A problem for every omit path that no selected method's reply has.
    /// The omitted paths configured for `method` as (rule, path index, path):
    /// a rule's glob may name the method, its service or its package.
    fn omitted_paths<'s>(
        &'s self,
        method: &MethodDescriptor,
    ) -> impl Iterator<Item = (usize, usize, &'s str)> + 's {
        let service = method.parent_service();
        let names = [
            method.full_name().to_owned(),
            service.full_name().to_owned(),
            service.package_name().to_owned(),
        ];
        self.omit
            .iter()
            .enumerate()
            .filter(move |(_, rule)| {
                names
                    .iter()
                    .any(|name| rule.methods.is_match(name.as_str()))
            })
            .flat_map(|(r, rule)| {
                rule.paths
                    .iter()
                    .enumerate()
                    .map(move |(p, path)| (r, p, path.as_str()))
            })
    }
}

/// Where each configured omit path resolved, per method its rule selects:
/// a path that no selected reply has is a typo (refused), one that only
/// some have still leaves through the others (warned).
#[derive(Debug, Default)]
struct OmitUsage {
    /// (rule, path) → where it applies and where it does not.
    seen: BTreeMap<(usize, usize), PathUsage>,
}

#[derive(Debug, Default)]
struct PathUsage {
    /// Methods whose replies have the path.
    applies: Vec<String>,
    /// Methods whose replies do not, with their reply type.
    misses: Vec<(String, String)>,
}

/// Builds one catalog; pure and synchronous.
#[derive(Debug)]
pub struct CatalogBuilder<'a> {
    options: BuildOptions,
    upstreams: &'a Upstreams,
    policies: Option<&'a PolicyRules>,
    sets: Vec<DescriptorSet>,
    /// Sets being added or replaced (see [`CatalogBuilder::checked_last`]).
    checked_last: Vec<String>,
}

/// Why a catalog was refused: every problem found.
#[derive(Debug, thiserror::Error)]
pub struct LoadError {
    problems: Box<[LoadProblem]>,
}

/// One problem, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProblem {
    pub set: Option<String>,
    pub method: Option<String>,
    pub reason: String,
    /// This set collides with another set (a route, or a file or name
    /// defined differently, or it adds nothing to what that set serves): the
    /// admin API answers 409 for it, 400 for every other problem.
    pub conflicts_with_set: Option<String>,
}

// === impl DescriptorSet ===

impl DescriptorSet {
    /// Reads a set file; its name is the file name without extension.
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            name,
            bytes: Bytes::from(bytes),
        })
    }

    /// Reads every `*.binpb`, `*.pb` and `*.desc` file of `dir`, in name order.
    pub fn read_dir(dir: &Path) -> std::io::Result<Vec<Self>> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                // Dot-files are temp files of unfinished writes (see `Store`).
                let hidden = path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with('.'));
                !hidden
                    && path.is_file()
                    && path
                        .extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "binpb" | "pb" | "desc"))
            })
            .collect();
        paths.sort();
        paths.iter().map(|path| Self::from_file(path)).collect()
    }
}

// === impl CatalogBuilder ===

impl<'a> CatalogBuilder<'a> {
    pub fn new(options: BuildOptions, upstreams: &'a Upstreams) -> Self {
        Self {
            options,
            upstreams,
            policies: None,
            sets: Vec::new(),
            checked_last: Vec::new(),
        }
    }

    /// Sets being added or replaced: checked after the others, so that where
    /// one of them and a served set define a file or a name differently, it
    /// is the one refused.
    #[must_use]
    pub fn checked_last(mut self, names: Vec<String>) -> Self {
        self.checked_last = names;
        self
    }

    /// Resolves each method's policy with the config's rules over its proto option.
    #[must_use]
    pub fn policies(mut self, rules: &'a PolicyRules) -> Self {
        self.policies = Some(rules);
        self
    }

    #[must_use]
    pub fn add_sets(mut self, sets: impl IntoIterator<Item = DescriptorSet>) -> Self {
        self.sets.extend(sets);
        self
    }

    /// Validates everything and freezes the result: the sets decoded into
    /// one pool, then each service's methods planned and routed, then what
    /// the config names and nothing used.
    pub fn build(self, generation: u64) -> Result<Catalog, LoadError> {
        let (definitions, mut problems) = check_definitions(&self.sets, &self.checked_last);
        let DecodedSets {
            pool,
            loaded,
            services,
        } = self.decode_sets(&definitions, &mut problems);

        let internal_fields = self.internal_fields(&pool, &mut problems);
        let field_rules = FieldRules::new(&pool, &internal_fields);
        let json_plans = JsonPlans::new(&pool, &field_rules);
        let no_rules = PolicyRules::default();
        let mut planner = MethodPlanner {
            options: &self.options,
            field_rules: &field_rules,
            json_plans: &json_plans,
            policies: PolicyUse::new(self.policies.unwrap_or(&no_rules)),
            omit_usage: OmitUsage::default(),
            methods: Vec::new(),
            routes: RouteTable::default(),
        };
        for (set, service) in &services {
            let upstream = self.upstreams.resolve(service.full_name());
            if upstream.is_none() && self.options.require_upstreams {
                problems.push(LoadProblem {
                    set: Some(set.clone()),
                    method: None,
                    reason: format!("service `{}` has no upstream", service.full_name()),
                    conflicts_with_set: None,
                });
            }
            for method in service.methods() {
                let bindings = match self.method_bindings(&method) {
                    Ok(bindings) => bindings,
                    Err(reasons) => {
                        let method = Some(method.full_name().to_owned());
                        problems.extend(reasons.into_iter().map(|reason| LoadProblem {
                            set: Some(set.clone()),
                            method: method.clone(),
                            reason,
                            conflicts_with_set: None,
                        }));
                        continue;
                    }
                };
                if !bindings.is_empty() {
                    planner.add(set, method, bindings, upstream.as_ref(), &mut problems);
                }
            }
        }
        let MethodPlanner {
            policies,
            omit_usage,
            methods,
            routes,
            ..
        } = planner;
        problems.extend(policies.unused());
        problems.extend(self.unused_omit_paths(&omit_usage));
        let warnings = self.partial_omit_paths(&omit_usage);
        if !problems.is_empty() {
            return Err(LoadError {
                problems: problems.into_boxed_slice(),
            });
        }
        Ok(Catalog {
            generation,
            pool,
            sets: loaded.into_boxed_slice(),
            methods: methods.into_boxed_slice(),
            routes: routes.routes.into_boxed_slice(),
            router: routes.router.build(),
            field_rules,
            json_plans,
            warnings: warnings.into_boxed_slice(),
        })
    }

    /// Decodes every set not refused already into one pool, each set's
    /// services listed under it (a file shared by several sets under the
    /// first to serve it).
    fn decode_sets(
        &self,
        definitions: &Definitions,
        problems: &mut Vec<LoadProblem>,
    ) -> DecodedSets {
        let mut pool = BASE_POOL.clone();
        let mut loaded = Vec::with_capacity(self.sets.len());
        let refused: Vec<String> = problems.iter().filter_map(|p| p.set.clone()).collect();
        for set in self.sets.iter().filter(|set| !refused.contains(&set.name)) {
            match decode_set(set, definitions, &mut pool) {
                Ok(set) => loaded.push(set),
                Err(reason) => problems.push(LoadProblem {
                    set: Some(set.name.clone()),
                    method: None,
                    reason,
                    conflicts_with_set: None,
                }),
            }
        }
        let services = loaded
            .iter()
            .flat_map(|set| {
                set.services
                    .iter()
                    .filter_map(|name| Some((set.name.clone(), pool.get_service_by_name(name)?)))
            })
            .collect();
        DecodedSets {
            pool,
            loaded,
            services,
        }
    }

    fn unused_omit_paths(&self, usage: &OmitUsage) -> impl Iterator<Item = LoadProblem> + '_ {
        let unresolved: Vec<_> = usage
            .seen
            .iter()
            .filter(|(_, used)| used.applies.is_empty())
            .collect();
        unresolved.into_iter().map(|((rule, index), used)| LoadProblem {
            set: None,
            method: None,
            reason: format!(
                "filters.responses[{rule}]: unknown field path `{}` in the replies of the methods `{}` selects (e.g. {})",
                self.options.omit[*rule].paths[*index],
                self.options.omit[*rule].methods.glob(),
                used.misses.first().map_or("", |(_, reply)| reply.as_str()),
            ),
            conflicts_with_set: None,
        }).collect::<Vec<_>>().into_iter()
    }

    /// A warning for every omit path that some selected methods' replies
    /// have and others do not: the field still leaves through the others.
    fn partial_omit_paths(&self, usage: &OmitUsage) -> Vec<String> {
        usage
            .seen
            .iter()
            .filter(|(_, used)| !used.applies.is_empty() && !used.misses.is_empty())
            .map(|((rule, index), used)| {
                let missed: Vec<&str> = used.misses.iter().map(|(m, _)| m.as_str()).collect();
                format!(
                    "filters.responses[{rule}]: `{}` is omitted from the replies of {} but not from those of {}, which have no such path; \
                     to remove a field wherever its message appears, list it in filters.fields",
                    self.options.omit[*rule].paths[*index],
                    used.applies.join(", "),
                    missed.join(", "),
                )
            })
            .collect()
    }

    /// The fields `filters.fields` names (`package.Message.field`), each
    /// resolved in `pool`; a problem for each that names no such field.
    fn internal_fields(
        &self,
        pool: &DescriptorPool,
        problems: &mut Vec<LoadProblem>,
    ) -> Vec<FieldDescriptor> {
        let mut fields = Vec::with_capacity(self.options.internal_fields.len());
        for (i, name) in self.options.internal_fields.iter().enumerate() {
            let (message, field) = name.rsplit_once('.').unwrap_or(("", name));
            let found = match pool.get_message_by_name(message) {
                None => Err(format!("unknown message type `{message}`")),
                Some(message) => message
                    .get_field_by_name(field)
                    .or_else(|| message.get_field_by_json_name(field))
                    .ok_or_else(|| format!("`{}` has no field `{field}`", message.full_name())),
            };
            match found {
                Ok(field) => fields.push(field),
                Err(reason) => problems.push(LoadProblem {
                    set: None,
                    method: None,
                    reason: format!("filters.fields[{i}]: `{name}`: {reason}"),
                    conflicts_with_set: None,
                }),
            }
        }
        fields
    }

    /// The method's resolved bindings; every problem with them, if any.
    fn method_bindings(
        &self,
        method: &MethodDescriptor,
    ) -> Result<Vec<ResolvedBinding>, Vec<String>> {
        let bindings = match http_rule::http_rule(method).map_err(|err| vec![err])? {
            Some(rule) => http_rule::bindings(&rule).map_err(|err| vec![err])?,
            None if self.options.expose_unannotated => vec![http_rule::default_binding(method)],
            None => return Ok(Vec::new()),
        };
        let mut resolved = Vec::with_capacity(bindings.len());
        let mut errors = Vec::new();
        for binding in bindings {
            match http_rule::resolve(binding, method) {
                Ok(binding) => resolved.push(binding),
                Err(err) => errors.push(err),
            }
        }
        if errors.is_empty() {
            Ok(resolved)
        } else {
            Err(errors)
        }
    }
}

/// What the sets define, checked set by set in order (those named in `last`
/// after the others): which set each file belongs to, and the sets refused
/// whole, each with the problem that says why (a set that defines a file or
/// a fully-qualified name differently from a set before it, or adds nothing).
pub(super) fn check_definitions(
    sets: &[DescriptorSet],
    last: &[String],
) -> (Definitions, Vec<LoadProblem>) {
    let (incoming, served): (Vec<&DescriptorSet>, Vec<&DescriptorSet>) =
        sets.iter().partition(|set| last.contains(&set.name));
    let shipped = |file: &str| BASE_POOL.get_file_by_name(file).is_some();
    let mut definitions = Definitions::default();
    let refused = served
        .into_iter()
        .chain(incoming)
        .filter_map(|set| {
            let refusal = definitions.add(&set.name, &set.bytes, shipped).err()?;
            Some(LoadProblem {
                set: Some(set.name.clone()),
                method: None,
                conflicts_with_set: refusal.other_set().map(str::to_owned),
                reason: refusal.to_string(),
            })
        })
        .collect();
    (definitions, refused)
}

/// Why a set does not decode. One nested deeper than protobuf's recursion
/// limit (which is the gateway's) says so, instead of naming the field at
/// each of its hundred levels.
fn undecodable(err: &prost::DecodeError) -> String {
    let text = err.to_string();
    if text.ends_with("recursion limit reached") {
        nesting::too_deep("the set")
    } else {
        format!("not a FileDescriptorSet: {text}")
    }
}

/// The full name of the method at `index`, which may be the one being added.
fn methods_name(methods: &[MethodPlan], index: usize, current: &MethodDescriptor) -> String {
    methods
        .get(index)
        .map_or_else(|| current.full_name(), |m| m.descriptor.full_name())
        .to_owned()
}

fn call_kind(method: &MethodDescriptor) -> CallKind {
    match (method.is_client_streaming(), method.is_server_streaming()) {
        (false, false) => CallKind::Unary,
        (false, true) => CallKind::ServerStreaming,
        (true, false) => CallKind::ClientStreaming,
        (true, true) => CallKind::Streaming,
    }
}

/// The sets of a build, decoded into one pool.
struct DecodedSets {
    pool: DescriptorPool,
    loaded: Vec<LoadedSet>,
    /// Every served service, with the set that serves it.
    services: Vec<(String, ServiceDescriptor)>,
}

/// Decodes one set into `pool`: its own services by name (descriptors
/// taken now would pin this intermediate pool, and compare unequal to those
/// of the final one), or why it cannot be served.
fn decode_set(
    set: &DescriptorSet,
    definitions: &Definitions,
    pool: &mut DescriptorPool,
) -> Result<LoadedSet, String> {
    let files = prost_types::FileDescriptorSet::decode(set.bytes.as_ref())
        .map_err(|err| undecodable(&err))?;
    // prost-reflect panics on a syntax it does not know (0.16.5): refuse
    // one before it decodes the set.
    if let Some(file) = files
        .file
        .iter()
        .find(|f| !matches!(f.syntax(), "" | "proto2" | "proto3"))
    {
        return Err(format!(
            "{}: unknown syntax `{}`",
            file.name(),
            file.syntax()
        ));
    }
    // prost-reflect takes a map entry without its key or value field and
    // panics when asked for it (0.16.5).
    if let Some((file, entry)) = incomplete_map_entry(&files) {
        return Err(format!(
            "{file}: map entry `{entry}` lacks its key (1) or value (2) field"
        ));
    }
    // A file shared by several sets is listed under the first to serve it.
    let own_files: Vec<&str> = files
        .file
        .iter()
        .map(|f| f.name())
        .filter(|name| definitions.owner(name) == Some(set.name.as_str()))
        .collect();
    // Decode again through prost-reflect: prost_types drops the unknown
    // fields that hold custom options such as google.api.http.
    pool.decode_file_descriptor_set(set.bytes.as_ref())
        .map_err(|err| format!("invalid descriptors: {err}"))?;
    let services = own_files
        .iter()
        .filter_map(|name| pool.get_file_by_name(name))
        .flat_map(|file| {
            file.services()
                .map(|s| s.full_name().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(LoadedSet {
        name: set.name.clone(),
        digest: digest(&set.bytes),
        size: set.bytes.len(),
        services,
        bytes: set.bytes.clone(),
        loaded_at: std::time::SystemTime::now(),
        upstream: None,
        managed: false,
    })
}

/// Plans each served method and routes its bindings, keeping the policy
/// and omit-path bookkeeping of the whole build.
struct MethodPlanner<'b> {
    options: &'b BuildOptions,
    field_rules: &'b FieldRules,
    json_plans: &'b JsonPlans,
    policies: PolicyUse<'b>,
    omit_usage: OmitUsage,
    methods: Vec<MethodPlan>,
    routes: RouteTable,
}

impl MethodPlanner<'_> {
    /// Plans `method` of `set` and routes its bindings; a problem refuses
    /// the method, a route conflict only that route.
    fn add(
        &mut self,
        set: &str,
        method: MethodDescriptor,
        bindings: Vec<ResolvedBinding>,
        upstream: Option<&Arc<Upstream>>,
        problems: &mut Vec<LoadProblem>,
    ) {
        let problem = |reason: String| LoadProblem {
            set: Some(set.to_owned()),
            method: Some(method.full_name().to_owned()),
            reason,
            conflicts_with_set: None,
        };
        let grpc_path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let Ok(grpc_path) = PathAndQuery::try_from(grpc_path) else {
            problems.push(problem(
                "the method name does not form a valid gRPC path".into(),
            ));
            return;
        };
        let policy = match self.policies.resolve(&method) {
            Ok(policy) => policy,
            Err(reason) => {
                problems.push(problem(reason));
                return;
            }
        };
        let method_index = self.methods.len();
        for binding in bindings {
            if let Err(reason) = self
                .routes
                .add(set, method_index, binding, &self.methods, &method)
            {
                let mut conflict = problem(reason.reason);
                conflict.conflicts_with_set = reason.other_set;
                problems.push(conflict);
            }
        }
        let omit = self.options.omit_tree(&method, &mut self.omit_usage);
        self.methods.push(MethodPlan {
            kind: call_kind(&method),
            grpc_path,
            upstream: upstream.cloned(),
            rules: self.field_rules.for_method(&method),
            omit,
            request_plan: self.json_plans.index_of(&method.input()),
            reply_plan: self.json_plans.index_of(&method.output()),
            policy,
            deprecation: self.options.deprecations.resolve(&method),
            descriptor: method,
        });
    }
}

/// The routes of a build and the router over them; a route that clashes
/// with one before it is refused, naming both (and the other set, when the
/// clash is between sets).
#[derive(Default)]
struct RouteTable {
    routes: Vec<Route>,
    /// The set each route came from, to tell a clash between sets.
    route_sets: Vec<String>,
    router: RouterBuilder,
}

/// A route that clashes with an earlier one.
struct RouteConflict {
    reason: String,
    other_set: Option<String>,
}

impl RouteTable {
    fn add(
        &mut self,
        set: &str,
        method_index: usize,
        ResolvedBinding {
            binding,
            template,
            plan,
        }: ResolvedBinding,
        methods: &[MethodPlan],
        method: &MethodDescriptor,
    ) -> Result<(), RouteConflict> {
        let label: Box<str> = format!("{} {}", binding.method, binding.path).into();
        let id = RouteId::try_from(self.routes.len()).unwrap_or(RouteId::MAX);
        if let Err(existing) = self.router.insert(binding.method.clone(), &template, id) {
            let other = &self.routes[existing as usize];
            let other_set = &self.route_sets[existing as usize];
            let other_set = (other_set != set).then(|| other_set.clone());
            return Err(RouteConflict {
                reason: format!(
                    "route `{label}` conflicts with `{}` of {}{}",
                    other.label,
                    methods_name(methods, other.method, method),
                    other_set
                        .as_ref()
                        .map(|s| format!(" in set `{s}`"))
                        .unwrap_or_default(),
                ),
                other_set,
            });
        }
        self.route_sets.push(set.to_owned());
        self.routes.push(Route {
            method: method_index,
            http_method: binding.method,
            template,
            label,
            binding: plan,
        });
        Ok(())
    }
}

/// The config's policy rules and which of them matched a served method: a
/// rule that matches none is a typo.
struct PolicyUse<'r> {
    rules: &'r PolicyRules,
    used: Vec<bool>,
}

impl<'r> PolicyUse<'r> {
    fn new(rules: &'r PolicyRules) -> Self {
        Self {
            rules,
            used: vec![false; rules.len()],
        }
    }

    fn resolve(&mut self, method: &MethodDescriptor) -> Result<RoutePolicy, String> {
        self.rules.resolve(method, &mut self.used)
    }

    /// A problem for each rule that matched no served method.
    fn unused(self) -> impl Iterator<Item = LoadProblem> + 'r {
        let rules = self.rules;
        self.used
            .into_iter()
            .enumerate()
            .filter(|(_, used)| !used)
            .map(move |(i, _)| LoadProblem {
                set: None,
                method: None,
                reason: format!(
                    "policies[{i}]: `{}` matches no served method",
                    rules.pattern(i)
                ),
                conflicts_with_set: None,
            })
    }
}

// === impl LoadError ===

impl LoadError {
    pub fn problems(&self) -> &[LoadProblem] {
        &self.problems
    }

    /// A single problem outside any method (e.g. a set that cannot be read).
    pub fn single(set: &str, reason: String) -> Self {
        Self {
            problems: Box::new([LoadProblem {
                set: Some(set.to_owned()),
                method: None,
                reason,
                conflicts_with_set: None,
            }]),
        }
    }

    /// A single problem that belongs to no set (e.g. an upstream setting).
    pub fn general(reason: String) -> Self {
        Self {
            problems: Box::new([LoadProblem {
                set: None,
                method: None,
                reason,
                conflicts_with_set: None,
            }]),
        }
    }

    /// Whether the change collides with another set (see
    /// [`LoadProblem::conflicts_with_set`]).
    pub fn is_conflict(&self) -> bool {
        self.problems.iter().any(|p| p.conflicts_with_set.is_some())
    }
}

/// A refused change as the request-path error: each problem a violation
/// naming its method, else its set.
impl From<LoadError> for Error {
    fn from(err: LoadError) -> Self {
        let conflict = err.is_conflict();
        let problems = err
            .problems
            .iter()
            .map(|problem| Violation {
                field: problem
                    .method
                    .as_deref()
                    .or(problem.set.as_deref())
                    .unwrap_or_default()
                    .into(),
                description: problem.to_string().into(),
            })
            .collect();
        Self::Rejected { conflict, problems }
    }
}

/// Problems that name no set (a policy rule, a response filter, an upstream
/// setting) are the configuration's, and listed as such.
impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (in_sets, in_config): (Vec<_>, Vec<_>) =
            self.problems.iter().partition(|p| p.set.is_some());
        let groups = [
            (in_config, "the configuration"),
            (in_sets, "the descriptor sets"),
        ];
        let groups = groups.iter().filter(|(problems, _)| !problems.is_empty());
        for (i, (problems, place)) in groups.enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{} problem(s) in {place}:", problems.len())?;
            for problem in problems {
                write!(f, "\n  - {problem}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(set) = &self.set {
            write!(f, "set `{set}`: ")?;
        }
        if let Some(method) = &self.method {
            write!(f, "{method}: ")?;
        }
        f.write_str(&self.reason)
    }
}

/// The file and name of a message marked as a map entry without field 1 or
/// 2, walked with a stack: an upload decides how deep messages nest.
fn incomplete_map_entry(files: &prost_types::FileDescriptorSet) -> Option<(&str, &str)> {
    for file in &files.file {
        let mut messages: Vec<&prost_types::DescriptorProto> = file.message_type.iter().collect();
        while let Some(message) = messages.pop() {
            let is_entry = message.options.as_ref().is_some_and(|o| o.map_entry());
            let has = |number| message.field.iter().any(|f| f.number() == number);
            if is_entry && !(has(1) && has(2)) {
                return Some((file.name(), message.name()));
            }
            messages.extend(&message.nested_type);
        }
    }
    None
}
