//! Descriptor sets → [`Catalog`], and the one place a catalog is swapped.
//!
//! Start-up, admin uploads and deletes, upstream changes, the descriptor
//! directory watcher and SIGHUP all go through [`Registry::apply`]: the
//! change is laid over the current sources, a candidate catalog is built off
//! the runtime with the same [`BuildContext`] as at start, and only a valid
//! one is persisted and swapped in. Requests in flight keep the
//! `Arc<Catalog>` they started with.

mod builder;
mod catalog;
mod compile;
mod definitions;
mod reload;
mod shared;
mod store;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::SystemTime,
};

use arc_swap::ArcSwap;
pub use builder::{digest, BuildOptions, CatalogBuilder, DescriptorSet, LoadError, LoadProblem};
use bytes::Bytes;
pub use catalog::{
    CallKind, Catalog, LoadedSet, MethodPlan, Route, RouteMatch, RouteTable, DISCOVERED_PREFIX,
};
pub use compile::{CompileError, ProtoSources, UploadFormat};
use prost::Message as _;
pub use reload::{reload_on_sighup, watch_dir};
pub use shared::{keep_in_sync, SharedRegistry, SharedSet, Snapshot};
pub use store::{check_name, Store, StoredSet, UpstreamSetting};
use tokio::sync::{watch, Mutex};

use crate::{
    config::{self, DiscoverConfig, UpstreamConfig},
    observe::metrics::CatalogFigures,
    policy::PolicyRules,
    upstream::{Upstream, Upstreams},
};

/// Per-call deadline of upstreams given without one through the admin API.
pub const DEFAULT_UPSTREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Owns the current catalog and the sources it was built from.
#[derive(Debug)]
pub struct Registry {
    current: ArcSwap<Catalog>,
    changed: watch::Sender<u64>,
    context: Arc<BuildContext>,
    /// Serializes changes; held across a build, never on the request path.
    sources: Mutex<Sources>,
    reloads: ReloadCounts,
}

/// How applied changes ended, for `protogate_catalog_reloads_total{result}`.
#[derive(Debug, Default)]
pub struct ReloadCounts {
    pub applied: AtomicU64,
    pub unchanged: AtomicU64,
    pub refused: AtomicU64,
}

/// What every build uses besides the managed sets, fixed at start so that a
/// rebuild accepts and serves exactly what start-up did.
#[derive(Debug)]
pub struct BuildContext {
    pub options: BuildOptions,
    /// The config's policy rules: without them a rebuild would drop auth.
    pub policies: PolicyRules,
    /// The configured upstreams; admin-managed and per-set ones are laid over them.
    pub upstreams: Vec<UpstreamConfig>,
    pub max_response_bytes: usize,
    /// Sets from the config's `files` and the embedding program: served, not managed.
    pub fixed: Vec<DescriptorSet>,
    /// The descriptor directory; without one, admin changes last until restart.
    /// With `shared`, this instance's copy of it.
    pub store: Option<Store>,
    /// `registry.store: redis`: every change is stored there first.
    pub shared: Option<Arc<SharedRegistry>>,
    /// The servers read through reflection: a set served from one of their
    /// URLs is called with that entry's TLS keys.
    pub discover: Vec<DiscoverConfig>,
    pub started_at: SystemTime,
}

/// Where an upstream setting comes from. For one pattern, an upload's own
/// upstream replaces the configured one, and one set through the admin API
/// (`PUT /admin/v1/upstreams/PATTERN`) replaces both until it is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamSource {
    /// The config file or `--upstream`.
    Config,
    /// Uploaded with this set (`?upstream=`), for each package it brings.
    Set(String),
    /// Set through the admin API.
    Admin,
}

/// One change to what is served.
#[derive(Debug, Clone)]
pub enum Change {
    /// Re-read the descriptor directory (file watch, SIGHUP).
    Reload,
    /// Add or replace a managed set; `upstream` serves the packages it brings.
    PutSet {
        name: String,
        bytes: Bytes,
        upstream: Option<String>,
    },
    DeleteSet(String),
    PutUpstream {
        pattern: String,
        setting: UpstreamSetting,
    },
    DeleteUpstream(String),
    /// Take what the shared registry holds, at its generation.
    Sync(Snapshot),
}

/// The result of a change.
#[derive(Debug)]
pub struct Applied {
    /// The catalog now served (or, for a dry run, the one that would be).
    pub catalog: Arc<Catalog>,
    /// False when the change left the sources as they were: nothing was swapped.
    pub changed: bool,
}

/// Why a change was refused; the current catalog keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0}")]
    InvalidName(String),
    #[error("descriptor set `{0}` is empty: upload a FileDescriptorSet or .proto sources")]
    EmptySet(String),
    #[error("descriptor set `{0}` is not loaded")]
    UnknownSet(String),
    #[error("descriptor set `{0}` comes from the configuration and cannot be changed through the admin API")]
    FixedSet(String),
    #[error("upstream `{0}` is not managed through the admin API")]
    UnknownUpstream(String),
    #[error("cannot read or write the descriptor directory: {0}")]
    Store(#[from] std::io::Error),
    #[error("the catalog build was interrupted")]
    Interrupted,
    /// Another instance changed the shared registry first.
    #[error("the shared registry changed through another instance (now at generation {0}): nothing was changed; retry")]
    Conflict(u64),
    #[error("the shared registry (Redis) is unavailable: admin changes are refused until it is back; the gateway serves its current catalog")]
    SharedUnavailable,
}

/// The managed sources: the part of what is served that changes at run time.
#[derive(Debug, Clone, Default)]
struct Sources {
    sets: BTreeMap<String, ManagedSet>,
    upstreams: BTreeMap<String, UpstreamSetting>,
    live: Arc<Upstreams>,
}

#[derive(Debug, Clone)]
struct ManagedSet {
    bytes: Bytes,
    upstream: Option<String>,
    /// Packages with services, which `upstream` serves; decoded once.
    packages: Vec<String>,
    loaded_at: SystemTime,
}

// === impl Registry ===

impl Registry {
    /// Builds the first catalog (generation 1) from the fixed sets and what
    /// was read from the store. A set that defines a file or a name
    /// differently from a set before it (or adds nothing) is left out and
    /// logged; the others load. Must run inside a tokio runtime.
    pub fn start(
        mut context: BuildContext,
        upstreams: Upstreams,
        stored: Vec<StoredSet>,
        stored_upstreams: BTreeMap<String, UpstreamSetting>,
        generation: u64,
    ) -> Result<Self, LoadError> {
        let mut sources = Sources {
            sets: BTreeMap::new(),
            upstreams: stored_upstreams,
            live: Arc::new(upstreams),
        };
        for stored in stored {
            let set = ManagedSet::new(stored.set.bytes, stored.upstream, context.started_at);
            sources.sets.insert(stored.set.name, set);
        }
        for refused in context.leave_out_refused(&mut sources, &[]) {
            context
                .fixed
                .retain(|set| Some(&set.name) != refused.set.as_ref());
        }
        let context = Arc::new(context);
        let live = context.upstreams_for(&sources)?;
        sources.live = Arc::new(live);
        let catalog = context.build(&sources, generation.max(1), Vec::new())?;
        let (changed, _) = watch::channel(catalog.generation());
        Ok(Self {
            current: ArcSwap::from_pointee(catalog),
            changed,
            context,
            sources: Mutex::new(sources),
            reloads: ReloadCounts::default(),
        })
    }

    /// The current catalog; keep the `Arc` for the whole request.
    pub fn load(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Notifies on every swap with the new generation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The upstreams the current catalog calls.
    pub async fn upstreams(&self) -> Arc<Upstreams> {
        self.sources.lock().await.live.clone()
    }

    /// The upstreams the current catalog calls, each with the source of its
    /// setting: what is listed is what is served.
    pub async fn upstream_sources(&self) -> Vec<(Arc<Upstream>, UpstreamSource)> {
        let sources = self.sources.lock().await;
        let mut settings = self.context.upstream_settings(&sources);
        sources
            .live
            .iter()
            .filter_map(|upstream| {
                let (_, source) = settings.remove(&*upstream.name)?;
                Some((upstream.clone(), source))
            })
            .collect()
    }

    /// The config's policy rules every build resolves methods with (their
    /// quotas, for listings).
    pub fn policies(&self) -> &PolicyRules {
        &self.context.policies
    }

    /// The descriptor directory, if any.
    pub fn store(&self) -> Option<&Store> {
        self.context.store.as_ref()
    }

    /// The shared registry, with `registry.store: redis`.
    pub fn shared(&self) -> Option<&Arc<SharedRegistry>> {
        self.context.shared.as_ref()
    }

    /// The managed sets and upstreams, at the current catalog's generation.
    pub async fn snapshot(&self) -> Snapshot {
        let sources = self.sources.lock().await;
        sources.snapshot(self.load().generation())
    }

    /// Builds, validates, persists and swaps in `change`.
    pub async fn apply(&self, change: Change) -> Result<Applied, ApplyError> {
        let result = self.run(change, true).await;
        let counter = match &result {
            Ok(applied) if applied.changed => &self.reloads.applied,
            Ok(_) => &self.reloads.unchanged,
            Err(_) => &self.reloads.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// How the changes applied so far ended.
    pub fn reloads(&self) -> &ReloadCounts {
        &self.reloads
    }

    /// The current catalog's figures, for a metrics scrape.
    pub fn figures(&self) -> CatalogFigures {
        let catalog = self.load();
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CatalogFigures {
            generation: catalog.generation(),
            routes: catalog.routes().len(),
            reloads: [
                ("applied", count(&self.reloads.applied)),
                ("unchanged", count(&self.reloads.unchanged)),
                ("refused", count(&self.reloads.refused)),
            ],
        }
    }

    /// Builds and validates `change` without persisting or swapping it.
    pub async fn dry_run(&self, change: Change) -> Result<Applied, ApplyError> {
        self.run(change, false).await
    }

    async fn run(&self, change: Change, commit: bool) -> Result<Applied, ApplyError> {
        let mut sources = self.sources.lock().await;
        let current = self.load();
        let mut candidate = self.candidate(&sources, &change).await?;
        // The sets this change adds or replaces.
        let incoming: Vec<String> = candidate
            .sets
            .iter()
            .filter(|(name, set)| {
                sources
                    .sets
                    .get(*name)
                    .is_none_or(|old| old.bytes != set.bytes)
            })
            .map(|(name, _)| name.clone())
            .collect();
        if matches!(change, Change::Reload) {
            // As at start: a file in the directory cannot take another set's place.
            self.context.leave_out_refused(&mut candidate, &incoming);
        }
        let generation = match &change {
            Change::Sync(snapshot) => snapshot.generation,
            _ => current.generation() + 1,
        };
        if candidate.same_as(&sources) && !matches!(change, Change::Sync(_)) {
            return Ok(Applied {
                catalog: current,
                changed: false,
            });
        }
        if let Change::Sync(snapshot) = &change {
            // Raced by a write through this instance, which is newer.
            if snapshot.generation <= current.generation() {
                return Err(ApplyError::Conflict(current.generation()));
            }
        }
        let mut candidate = candidate;
        candidate.live = Arc::new(self.context.upstreams_for(&candidate)?);
        let context = self.context.clone();
        let (candidate, catalog) = tokio::task::spawn_blocking(move || {
            let catalog = context.build(&candidate, generation, incoming);
            (candidate, catalog)
        })
        .await
        .map_err(|_| ApplyError::Interrupted)?;
        let catalog = catalog?;
        if !commit {
            return Ok(Applied {
                catalog: Arc::new(catalog),
                changed: true,
            });
        }
        if let (Some(shared), false) = (&self.context.shared, matches!(change, Change::Sync(_))) {
            // Stored there first: a change Redis did not take is no change.
            let before = sources.snapshot(current.generation());
            shared
                .write_change(&before, &candidate.snapshot(generation))
                .await
                .map_err(|err| match err {
                    shared::WriteError::Conflict(found) => ApplyError::Conflict(found),
                    shared::WriteError::Unavailable(_) => ApplyError::SharedUnavailable,
                })?;
        }
        if let Some(store) = self.context.store.clone() {
            let persisted = candidate.clone();
            let before = sources.clone();
            let shared = self.context.shared.is_some();
            tokio::task::spawn_blocking(move || {
                persist(&store, &change, &before, &persisted)?;
                if shared {
                    store.write_generation(generation)?;
                }
                Ok::<_, std::io::Error>(())
            })
            .await
            .map_err(|_| ApplyError::Interrupted)??;
        }
        *sources = candidate;
        let catalog = Arc::new(catalog);
        self.current.store(catalog.clone());
        self.changed.send_replace(catalog.generation());
        Ok(Applied {
            catalog,
            changed: true,
        })
    }

    /// The sources with `change` laid over them.
    async fn candidate(&self, sources: &Sources, change: &Change) -> Result<Sources, ApplyError> {
        let mut candidate = sources.clone();
        match change {
            Change::Reload => {
                let Some(store) = self.context.store.clone() else {
                    return Ok(candidate);
                };
                let (stored, upstreams) = tokio::task::spawn_blocking(move || {
                    Ok::<_, std::io::Error>((store.read_sets()?, store.read_upstreams()?))
                })
                .await
                .map_err(|_| ApplyError::Interrupted)??;
                candidate.sets.clear();
                for stored in stored {
                    let set = match sources.sets.get(&stored.set.name) {
                        Some(old) if old.bytes == stored.set.bytes => old.loaded_at,
                        _ => SystemTime::now(),
                    };
                    let set = ManagedSet::new(stored.set.bytes, stored.upstream, set);
                    candidate.sets.insert(stored.set.name, set);
                }
                candidate.upstreams = upstreams;
            }
            Change::PutSet {
                name,
                bytes,
                upstream,
            } => {
                check_name(name).map_err(ApplyError::InvalidName)?;
                if bytes.is_empty() {
                    return Err(ApplyError::EmptySet(name.clone()));
                }
                if self.context.fixed.iter().any(|set| set.name == *name) {
                    return Err(ApplyError::FixedSet(name.clone()));
                }
                let loaded_at = match sources.sets.get(name) {
                    Some(old) if old.bytes == *bytes => old.loaded_at,
                    _ => SystemTime::now(),
                };
                let set = ManagedSet::new(bytes.clone(), upstream.clone(), loaded_at);
                candidate.sets.insert(name.clone(), set);
            }
            Change::DeleteSet(name) => {
                if candidate.sets.remove(name).is_none() {
                    if self.context.fixed.iter().any(|set| set.name == *name) {
                        return Err(ApplyError::FixedSet(name.clone()));
                    }
                    return Err(ApplyError::UnknownSet(name.clone()));
                }
            }
            Change::PutUpstream { pattern, setting } => {
                candidate.upstreams.insert(pattern.clone(), setting.clone());
            }
            Change::DeleteUpstream(pattern) => {
                if candidate.upstreams.remove(pattern).is_none() {
                    return Err(ApplyError::UnknownUpstream(pattern.clone()));
                }
            }
            Change::Sync(snapshot) => {
                candidate.sets = snapshot
                    .sets
                    .iter()
                    .map(|(name, set)| {
                        let loaded_at = match sources.sets.get(name) {
                            Some(old) if old.bytes == set.bytes => old.loaded_at,
                            _ => SystemTime::now(),
                        };
                        let managed =
                            ManagedSet::new(set.bytes.clone(), set.upstream.clone(), loaded_at);
                        (name.clone(), managed)
                    })
                    .collect();
                candidate.upstreams.clone_from(&snapshot.upstreams);
            }
        }
        Ok(candidate)
    }
}

/// Writes what `change` changed (from `before` to `sources`) into the store.
fn persist(
    store: &Store,
    change: &Change,
    before: &Sources,
    sources: &Sources,
) -> std::io::Result<()> {
    match change {
        Change::Reload => Ok(()),
        Change::Sync(_) => {
            for (name, set) in &sources.sets {
                let same = before
                    .sets
                    .get(name)
                    .is_some_and(|old| old.bytes == set.bytes && old.upstream == set.upstream);
                if !same {
                    store.write_set(name, &set.bytes, set.upstream.as_deref())?;
                }
            }
            for name in before.sets.keys() {
                if !sources.sets.contains_key(name) {
                    store.remove_set(name)?;
                }
            }
            if before.upstreams != sources.upstreams {
                store.write_upstreams(&sources.upstreams)?;
            }
            Ok(())
        }
        Change::PutSet {
            name,
            bytes,
            upstream,
        } => store.write_set(name, bytes, upstream.as_deref()),
        Change::DeleteSet(name) => store.remove_set(name),
        Change::PutUpstream { .. } | Change::DeleteUpstream(_) => {
            store.write_upstreams(&sources.upstreams)
        }
    }
}

// === impl BuildContext ===

impl BuildContext {
    /// The context a serving gateway builds with: `fixed` sets and the
    /// configured `upstreams`, the sets in `store` laid over them.
    pub fn new(
        options: BuildOptions,
        policies: PolicyRules,
        upstreams: Vec<UpstreamConfig>,
        max_response_bytes: usize,
        store: Option<Store>,
        fixed: Vec<DescriptorSet>,
    ) -> Self {
        Self {
            options,
            policies,
            upstreams,
            max_response_bytes,
            fixed,
            store,
            shared: None,
            discover: Vec::new(),
            started_at: SystemTime::now(),
        }
    }

    /// Every upstream setting by pattern, with its source: the configured
    /// ones, replaced by those uploaded with sets, replaced by those set
    /// through the admin API (see [`UpstreamSource`]).
    fn upstream_settings(
        &self,
        sources: &Sources,
    ) -> BTreeMap<String, (UpstreamConfig, UpstreamSource)> {
        let mut by_pattern: BTreeMap<String, (UpstreamConfig, UpstreamSource)> = self
            .upstreams
            .iter()
            .map(|u| (u.pattern.clone(), (u.clone(), UpstreamSource::Config)))
            .collect();
        let managed = |pattern: &str, url: &str, timeout: Option<std::time::Duration>| {
            let timeout = timeout.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT);
            match self.discover.iter().find(|source| source.url == url) {
                Some(source) => UpstreamConfig {
                    timeout,
                    ..source.upstream(pattern)
                },
                None => UpstreamConfig {
                    pattern: pattern.to_owned(),
                    url: url.to_owned(),
                    timeout,
                    ca_file: None,
                    client_cert_file: None,
                    client_key_file: None,
                    server_name: None,
                },
            }
        };
        for (name, set) in &sources.sets {
            let Some(url) = &set.upstream else { continue };
            for package in &set.packages {
                let upstream = managed(package, url, None);
                by_pattern.insert(
                    package.clone(),
                    (upstream, UpstreamSource::Set(name.clone())),
                );
            }
        }
        for (pattern, setting) in &sources.upstreams {
            let upstream = managed(pattern, &setting.url, setting.timeout);
            by_pattern.insert(pattern.clone(), (upstream, UpstreamSource::Admin));
        }
        by_pattern
    }

    /// The upstreams of [`BuildContext::upstream_settings`], keeping the
    /// channels of unchanged ones.
    fn upstreams_for(&self, sources: &Sources) -> Result<Upstreams, LoadError> {
        let settings = self.upstream_settings(sources);
        for (pattern, (upstream, source)) in &settings {
            let Err(reason) = config::validate_upstream(upstream) else {
                continue;
            };
            match source {
                // Validated with the config.
                UpstreamSource::Config => {}
                UpstreamSource::Set(name) => {
                    return Err(LoadError::single(name, format!("upstream: {reason}")))
                }
                UpstreamSource::Admin => {
                    return Err(LoadError::general(format!(
                        "upstream `{pattern}`: {reason}"
                    )))
                }
            }
        }
        let configs: Vec<UpstreamConfig> = settings.into_values().map(|(u, _)| u).collect();
        sources
            .live
            .reconfigure(&configs, self.max_response_bytes)
            .map_err(|err| LoadError::general(err.to_string()))
    }

    /// The fixed sets and the managed ones → a validated catalog; the
    /// `incoming` sets are the ones refused where they disagree with another.
    /// Pure and synchronous: the one build every trigger goes through.
    fn build(
        &self,
        sources: &Sources,
        generation: u64,
        incoming: Vec<String>,
    ) -> Result<Catalog, LoadError> {
        let mut catalog = CatalogBuilder::new(self.options.clone(), &sources.live)
            .policies(&self.policies)
            .add_sets(self.sets(sources))
            .checked_last(incoming)
            .build(generation)?;
        for warning in catalog.warnings() {
            tracing::warn!(generation, "{warning}");
        }
        for loaded in catalog.sets.iter_mut() {
            match sources.sets.get(&loaded.name) {
                Some(set) => {
                    loaded.loaded_at = set.loaded_at;
                    loaded.upstream.clone_from(&set.upstream);
                    loaded.managed = true;
                }
                None => loaded.loaded_at = self.started_at,
            }
        }
        Ok(catalog)
    }

    /// The fixed sets, then the managed ones.
    fn sets(&self, sources: &Sources) -> Vec<DescriptorSet> {
        let managed = sources.sets.iter().map(|(name, set)| DescriptorSet {
            name: name.clone(),
            bytes: set.bytes.clone(),
        });
        self.fixed.iter().cloned().chain(managed).collect()
    }

    /// Removes the managed sets refused whole (see
    /// [`CatalogBuilder::checked_last`] for `incoming`) and logs every
    /// refused set, fixed ones included; returns their problems.
    fn leave_out_refused(&self, sources: &mut Sources, incoming: &[String]) -> Vec<LoadProblem> {
        let (_, refused) = builder::check_definitions(&self.sets(sources), incoming);
        for problem in &refused {
            tracing::error!(%problem, "descriptor set refused; the others load");
            if let Some(name) = &problem.set {
                sources.sets.remove(name);
            }
        }
        refused
    }
}

// === impl Sources ===

impl Sources {
    fn snapshot(&self, generation: u64) -> Snapshot {
        Snapshot {
            generation,
            sets: self
                .sets
                .iter()
                .map(|(name, set)| {
                    let shared = SharedSet {
                        bytes: set.bytes.clone(),
                        upstream: set.upstream.clone(),
                    };
                    (name.clone(), shared)
                })
                .collect(),
            upstreams: self.upstreams.clone(),
        }
    }

    /// Same sets and upstream settings: nothing to rebuild.
    fn same_as(&self, other: &Self) -> bool {
        self.upstreams == other.upstreams
            && self.sets.len() == other.sets.len()
            && self
                .sets
                .iter()
                .zip(&other.sets)
                .all(|((a, x), (b, y))| a == b && x.bytes == y.bytes && x.upstream == y.upstream)
    }
}

impl ManagedSet {
    fn new(bytes: Bytes, upstream: Option<String>, loaded_at: SystemTime) -> Self {
        // An undecodable set has no packages; the build reports it.
        let packages = prost_types::FileDescriptorSet::decode(bytes.as_ref())
            .map(|files| {
                let mut packages: Vec<String> = files
                    .file
                    .iter()
                    .filter(|file| !file.service.is_empty())
                    .map(|file| file.package().to_owned())
                    .collect();
                packages.sort();
                packages.dedup();
                packages
            })
            .unwrap_or_default();
        Self {
            bytes,
            upstream,
            packages,
            loaded_at,
        }
    }
}
