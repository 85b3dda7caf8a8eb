//! Reload triggers outside the admin API: changes to the descriptor
//! directory (watched with `notify`) and SIGHUP. Both apply
//! [`Change::Reload`], the same build-validate-swap path as an upload; a
//! refused reload is logged and the current catalog keeps serving.

use std::{sync::Arc, time::Duration};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::{Change, Registry};

/// Events closer together than this make one reload (a copy is many writes).
const SETTLE: Duration = Duration::from_millis(200);

/// Reloads whenever the descriptor directory changes, until dropped.
pub async fn watch_dir(registry: Arc<Registry>) {
    let Some(dir) = registry.store().map(|store| store.dir().to_owned()) else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .and_then(|mut watcher| {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    let _watcher = match watcher {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::error!(dir = %dir.display(), error = %err, "cannot watch the descriptor directory; reload with SIGHUP");
            return;
        }
    };
    while rx.recv().await.is_some() {
        // Wait until the directory is quiet, then reload once.
        while let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await {}
        reload(&registry, "file change").await;
    }
}

/// Reloads the descriptor directory on every SIGHUP, until dropped.
#[cfg(unix)]
pub async fn reload_on_sighup(registry: Arc<Registry>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGHUP");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        reload(&registry, "SIGHUP").await;
    }
}

#[cfg(not(unix))]
pub async fn reload_on_sighup(_registry: Arc<Registry>) {}

async fn reload(registry: &Registry, trigger: &str) {
    match registry.apply(Change::Reload).await {
        Ok(applied) if applied.changed => tracing::info!(
            trigger,
            generation = applied.catalog.generation(),
            routes = applied.catalog.routes().len(),
            "descriptors reloaded"
        ),
        Ok(_) => tracing::debug!(trigger, "descriptors unchanged"),
        Err(err) => {
            tracing::error!(trigger, error = %err, "reload refused; the current catalog keeps serving")
        }
    }
}
