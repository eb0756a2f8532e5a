//! Hot reload of key files: removing an entry revokes its key at the next reload.
//!
//! As for policies (`src/reload.rs`), each key file's *directory* is watched, not the
//! file: editors save by rename and Kubernetes swaps a `..data` symlink, which a
//! watch on the file itself would miss. A poll every `policy_poll_interval` backs the
//! watch up, and SIGHUP reloads too. An invalid file keeps its last good keys and the
//! errors are logged with `file:line:column`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::ApiKeys;
use crate::telemetry::Metrics;

/// Coalesces an editor's several events for one save into one reload.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Asks the key file task to reload now.
#[derive(Clone)]
pub struct KeyReloadTrigger(mpsc::Sender<()>);

impl KeyReloadTrigger {
    /// Requests a reload; merged with one already pending.
    pub fn reload(&self) {
        let _ = self.0.try_send(());
    }
}

/// Watches every key file's directory and polls every `poll` (zero: no poll).
pub fn spawn(
    keys: Arc<ApiKeys>,
    metrics: Arc<Metrics>,
    poll: Duration,
) -> (KeyReloadTrigger, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let trigger = KeyReloadTrigger(tx.clone());
    let dirs: Vec<PathBuf> = {
        let mut dirs: Vec<PathBuf> = keys
            .files()
            .filter_map(|f| std::path::absolute(f).ok()?.parent().map(PathBuf::from))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    };
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| e.kind.is_access()) {
            return;
        }
        // An error may have lost an event: reload anyway, it is cheap.
        let _ = tx.try_send(());
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the key files; polling keeps reloading");
            None
        }
    };
    for dir in &dirs {
        if let Some(w) = watcher.as_mut() {
            if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a key file directory; polling keeps reloading");
            }
        }
    }
    let task = tokio::spawn(async move {
        // Owned by the task: dropping the watcher would stop the events.
        let _watcher = watcher;
        let mut ticks = (!poll.is_zero()).then(|| {
            let mut t = tokio::time::interval(poll);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            tokio::select! {
                got = rx.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = async {
                    match ticks.as_mut() {
                        Some(t) => {
                            t.tick().await;
                        }
                        None => std::future::pending().await,
                    }
                } => {}
            }
            reload_now(&keys, &metrics).await;
        }
    });
    (trigger, task)
}

/// Re-reads every key file now; logs what changed and what was refused.
pub async fn reload_now(keys: &Arc<ApiKeys>, metrics: &Metrics) {
    let before = keys.generation();
    let reloading = keys.clone();
    let Ok(results) = tokio::task::spawn_blocking(move || reloading.reload()).await else {
        metrics.api_key_reload(false);
        tracing::error!("key file reload task failed; keeping the last good keys");
        return;
    };
    let changed = keys.generation() != before;
    for (file, result) in results {
        match result {
            Ok(n) => {
                metrics.api_key_reload(true);
                if changed {
                    tracing::info!(file = %file.display(), keys = n, "api keys reloaded");
                }
            }
            Err(errors) => {
                metrics.api_key_reload(false);
                tracing::error!(file = %file.display(), errors = %errors, "key file reload rejected; keeping the last good keys");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apikey::NewKey;
    use crate::authn::apikey::ApiKeySourceSpec;

    /// Keys loaded from a file holding one key, and the file, which then holds none:
    /// a change that only a reload can show (the watch starts after it was made).
    fn keys_behind_their_file(dir: &std::path::Path) -> Arc<ApiKeys> {
        let key = NewKey::generate().unwrap();
        let file = dir.join("keys.yaml");
        let entry = format!(
            "keys:\n  - id: {}\n    digest: {}\n    principal: partner\n",
            key.id,
            key.digest()
        );
        std::fs::write(&file, entry).unwrap();
        let keys = ApiKeys::load(&[ApiKeySourceSpec {
            file: file.clone(),
            header: None,
        }])
        .unwrap();
        std::fs::write(&file, "keys: []\n").unwrap();
        Arc::new(keys)
    }

    /// Waits up to 10 s for the keys' generation to move past `before`.
    async fn changed(keys: &ApiKeys, before: u64) -> bool {
        for _ in 0..200 {
            if keys.generation() != before {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_trigger_reloads_the_files_without_a_poll() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_behind_their_file(dir.path());
        let before = keys.generation();
        let (trigger, task) = spawn(keys.clone(), Arc::new(Metrics::new()), Duration::ZERO);
        trigger.reload();
        assert!(changed(&keys, before).await, "the trigger reloaded nothing");
        assert!(!task.is_finished(), "the reload task ended");
        task.abort();
    }

    #[tokio::test]
    async fn the_poll_reloads_the_files_without_a_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_behind_their_file(dir.path());
        let before = keys.generation();
        let poll = Duration::from_millis(50);
        let (_trigger, task) = spawn(keys.clone(), Arc::new(Metrics::new()), poll);
        assert!(changed(&keys, before).await, "the poll reloaded nothing");
        task.abort();
    }

    /// What `reload_now` logs, at info and above.
    async fn reload_logs(keys: &Arc<ApiKeys>) -> String {
        use tracing::instrument::WithSubscriber;
        #[derive(Clone, Default)]
        struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        reload_now(keys, &Metrics::new())
            .with_subscriber(subscriber)
            .await;
        let logged = buffer.0.lock().unwrap().clone();
        String::from_utf8(logged).unwrap()
    }

    #[tokio::test]
    async fn a_reload_logs_the_keys_only_when_they_changed() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_behind_their_file(dir.path());
        let changed = reload_logs(&keys).await;
        assert!(changed.contains("api keys reloaded"), "{changed}");
        let unchanged = reload_logs(&keys).await;
        assert!(!unchanged.contains("api keys reloaded"), "{unchanged}");
    }
}
