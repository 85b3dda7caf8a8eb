//! Descriptor sets → [`Catalog`], and the one place a catalog is swapped.
//!
//! Start-up (and, later, admin uploads and reloads) build a candidate catalog
//! with [`CatalogBuilder`], which validates everything; only a valid catalog
//! is swapped in, and a request keeps the `Arc<Catalog>` it started with.

mod builder;
mod catalog;

use std::sync::Arc;

use arc_swap::ArcSwap;
pub use builder::{BuildOptions, CatalogBuilder, DescriptorSet, LoadError, LoadProblem};
pub use catalog::{CallKind, Catalog, LoadedSet, MethodPlan, Route, RouteMatch, RouteTable};
use tokio::sync::watch;

/// Owns the current catalog.
#[derive(Debug)]
pub struct Registry {
    current: ArcSwap<Catalog>,
    changed: watch::Sender<u64>,
}

impl Registry {
    pub fn new(catalog: Catalog) -> Self {
        let (changed, _) = watch::channel(catalog.generation());
        Self {
            current: ArcSwap::from_pointee(catalog),
            changed,
        }
    }

    /// The current catalog; keep the `Arc` for the whole request.
    pub fn load(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Swaps in a validated catalog; requests in flight keep the old one.
    pub fn replace(&self, catalog: Catalog) -> Arc<Catalog> {
        let catalog = Arc::new(catalog);
        self.current.store(catalog.clone());
        self.changed.send_replace(catalog.generation());
        catalog
    }

    /// Notifies on every swap with the new generation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
