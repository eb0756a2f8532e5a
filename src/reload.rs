//! Policy hot reload: a directory watch and SIGHUP both trigger a full reload.
//!
//! The *directory* is watched, not the files: editors replace files by rename and
//! Kubernetes ConfigMaps swap a `..data` symlink, both invisible to a per-file watch.
//! A reload compiles the whole set; if any file is invalid the last good set keeps
//! serving and the errors are logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::policy::PolicySet;

/// Coalesces bursts of file events (an editor's save is several) into one reload.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Asks for a reload; cloneable, cheap, never blocks.
#[derive(Clone)]
pub struct ReloadTrigger(mpsc::Sender<()>);

impl ReloadTrigger {
    /// Requests a reload. A request while one is pending is merged into it.
    pub fn reload(&self) {
        let _ = self.0.try_send(());
    }
}

/// Starts watching `dir`; returns the trigger and the watcher, which must be kept alive.
pub fn spawn(
    engine: Arc<Engine>,
    dir: PathBuf,
) -> Result<(ReloadTrigger, notify::RecommendedWatcher), notify::Error> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let trigger = ReloadTrigger(tx.clone());
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if !event.kind.is_access() => {
                let _ = tx.try_send(());
            }
            Ok(_) => {}
            // E.g. the directory itself was removed: say so, since reloads stop.
            Err(e) => {
                tracing::error!(error = %e, "policy directory watch failed; SIGHUP still reloads")
            }
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            reload_now(&engine, dir.clone()).await;
        }
    });
    Ok((trigger, watcher))
}

/// Reloads every policy file now; publishes the set only if all of it is valid.
pub async fn reload_now(engine: &Engine, dir: PathBuf) -> bool {
    let shown = dir.display().to_string();
    match tokio::task::spawn_blocking(move || PolicySet::load_dir(&dir)).await {
        Ok(Ok(set)) => {
            let services = set.len();
            let generation = engine.publish(set);
            tracing::info!(dir = %shown, generation, services, "policies reloaded");
            true
        }
        Ok(Err(errors)) => {
            engine.metrics().reload(None);
            tracing::error!(dir = %shown, errors = %errors, "policy reload rejected; keeping the last good policies");
            false
        }
        Err(e) => {
            engine.metrics().reload(None);
            tracing::error!(error = %e, "policy reload task failed; keeping the last good policies");
            false
        }
    }
}
