//! Policy hot reload: a directory watch, a poll behind it, and SIGHUP all trigger a
//! full reload.
//!
//! Directories are watched, not files: editors replace files by rename and Kubernetes
//! ConfigMaps swap a `..data` symlink, both invisible to a per-file watch. The policy
//! path may itself be a symlink that is atomically re-pointed (git-sync:
//! `policies -> rev-A`, then `ln -s rev-B tmp && mv -T tmp policies`, then `rm -rf
//! rev-A`). A watch on the target would see only its deletion, and then nothing ever
//! again. So, like Limitador, the *parent* directory is watched too, with events
//! filtered to the policy path; and the target is resolved again on every event, its
//! watch moved when it changed.
//!
//! If a watch cannot be set or reports an error, that is a WARN and
//! `hopwarden_policy_watch_errors_total`, never a stop: the directory is also polled
//! every `policy_poll_interval` (a cheap listing: names, sizes, modification times),
//! which reloads whatever the watch missed and re-arms it. Serving and readiness are
//! not affected. A reload compiles the files that changed and checks the whole set
//! again (a service or rule id defined twice); if any file is invalid the last good
//! set keeps serving and the errors are logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

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

/// The paths whose events matter: the policy path as configured and what it resolves
/// to now. Shared with the watcher's callback, which runs on notify's thread.
#[derive(Debug, Clone, PartialEq)]
struct Watched {
    link: PathBuf,
    target: Option<PathBuf>,
}

impl Watched {
    fn is_relevant(&self, path: &Path) -> bool {
        path == self.link || self.target.as_deref().is_some_and(|t| path.starts_with(t))
    }
}

/// Starts watching the policy directory `dir` and polling it every `poll` (zero: no
/// poll); returns the trigger and the task, which owns the watch.
pub fn spawn(engine: Arc<Engine>, dir: PathBuf, poll: Duration) -> (ReloadTrigger, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<()>(1);
    let trigger = ReloadTrigger(tx.clone());
    let link = std::path::absolute(&dir).unwrap_or(dir);
    let watched = Arc::new(Mutex::new(Watched {
        link: link.clone(),
        target: None,
    }));
    let watcher = {
        let watched = watched.clone();
        let metrics = engine.metrics().clone();
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if !event.kind.is_access() => {
                if event.paths.iter().any(|p| lock(&watched).is_relevant(p)) {
                    let _ = tx.try_send(());
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.policy_watch_error();
                tracing::warn!(error = %e, "policy directory watch failed; polling keeps reloading");
                // Re-arm (and reload, in case an event was lost) on the task.
                let _ = tx.try_send(());
            }
        })
    };
    let mut state = WatchState {
        engine,
        link,
        watched,
        watcher: None,
        parent_watched: false,
        last_seen: None,
    };
    match watcher {
        Ok(w) => state.watcher = Some(w),
        Err(e) => state.watch_failed("cannot start the policy directory watch", &e),
    }
    state.arm();
    state.last_seen = fingerprint(&state.link);
    let task = tokio::spawn(state.run(rx, poll));
    (trigger, task)
}

/// The watch and what it was last armed on; owned by the reload task.
struct WatchState {
    engine: Arc<Engine>,
    link: PathBuf,
    watched: Arc<Mutex<Watched>>,
    watcher: Option<RecommendedWatcher>,
    parent_watched: bool,
    /// The directory as of the last reload, to tell whether a poll found a change.
    last_seen: Option<Fingerprint>,
}

impl WatchState {
    async fn run(mut self, mut rx: mpsc::Receiver<()>, poll: Duration) {
        let mut ticks = (!poll.is_zero()).then(|| {
            let mut t = tokio::time::interval(poll);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let polled = tokio::select! {
                got = rx.recv() => match got {
                    Some(()) => false,
                    None => return,
                },
                _ = async {
                    match ticks.as_mut() {
                        Some(t) => {
                            t.tick().await;
                        }
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if !polled {
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
            }
            self.arm();
            let seen = fingerprint(&self.link);
            // A poll reloads only what changed; an event or SIGHUP always reloads.
            if polled && seen == self.last_seen {
                continue;
            }
            if polled {
                tracing::info!(dir = %self.link.display(), "policy directory changed (seen by polling)");
            }
            self.last_seen = seen;
            reload_now(&self.engine, self.link.clone()).await;
        }
    }

    /// Watches the parent directory (once) and the policy path's current target,
    /// moving the target watch when the path resolves elsewhere now.
    fn arm(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        if !self.parent_watched {
            if let Some(parent) = self.link.parent().filter(|p| !p.as_os_str().is_empty()) {
                match watcher.watch(parent, RecursiveMode::NonRecursive) {
                    Ok(()) => self.parent_watched = true,
                    Err(e) => {
                        self.engine.metrics().policy_watch_error();
                        tracing::warn!(dir = %parent.display(), error = %e, "cannot watch the policy directory's parent; polling keeps reloading");
                    }
                }
            }
        }
        let target = std::fs::canonicalize(&self.link).ok();
        // The lock is never held across a watcher call: notify runs the callback,
        // which takes it, on the thread that `watch` waits for.
        let old = lock(&self.watched).target.clone();
        if old == target {
            return;
        }
        if let Some(old) = &old {
            // Fails when the old target is gone, which is the usual case.
            let _ = watcher.unwatch(old);
        }
        lock(&self.watched).target = None;
        match &target {
            Some(t) => match watcher.watch(t, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::info!(dir = %self.link.display(), target = %t.display(), "watching the policy directory");
                    lock(&self.watched).target = target;
                }
                Err(e) => {
                    self.engine.metrics().policy_watch_error();
                    tracing::warn!(dir = %t.display(), error = %e, "cannot watch the policy directory; polling keeps reloading");
                }
            },
            None => {
                tracing::warn!(dir = %self.link.display(), "the policy directory does not resolve; keeping the last good policies");
            }
        }
    }

    fn watch_failed(&self, what: &str, e: &notify::Error) {
        self.engine.metrics().policy_watch_error();
        tracing::warn!(error = %e, "{what}; polling keeps reloading");
    }
}

fn lock(watched: &Mutex<Watched>) -> std::sync::MutexGuard<'_, Watched> {
    watched.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a poll compares: where the path resolves, and each entry's name, size and
/// modification time (symlinks followed, as the loader reads them).
#[derive(Debug, PartialEq)]
struct Fingerprint {
    target: PathBuf,
    entries: Vec<(std::ffi::OsString, u64, Option<SystemTime>)>,
}

fn fingerprint(dir: &Path) -> Option<Fingerprint> {
    let target = std::fs::canonicalize(dir).ok()?;
    let mut entries: Vec<_> = std::fs::read_dir(&target)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| {
            let meta = std::fs::metadata(e.path()).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (e.file_name(), len, modified)
        })
        .collect();
    entries.sort();
    Some(Fingerprint { target, entries })
}

/// Reloads every policy file now; publishes the set only if all of it is valid.
pub async fn reload_now(engine: &Engine, dir: PathBuf) -> bool {
    let shown = dir.display().to_string();
    let started = std::time::Instant::now();
    // Only changed files are compiled; unchanged services keep their compiled
    // policies and so their cached decisions (see policy/incremental.rs).
    let previous = engine.policies();
    let load = move || PolicySet::reload_dir(&dir, &previous.set);
    match tokio::task::spawn_blocking(load).await {
        Ok(Ok(set)) => {
            let services = set.len();
            let generation = engine.publish(set);
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            tracing::info!(dir = %shown, generation, services, elapsed_ms, "policies reloaded");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_count_for_the_link_and_its_target_only() {
        let w = Watched {
            link: "/git/policies".into(),
            target: Some("/git/rev-b".into()),
        };
        assert!(w.is_relevant(Path::new("/git/policies")));
        assert!(w.is_relevant(Path::new("/git/rev-b")));
        assert!(w.is_relevant(Path::new("/git/rev-b/ledger.yaml")));
        // Siblings in the parent: the old target going away, a decision log.
        assert!(!w.is_relevant(Path::new("/git/rev-a")));
        assert!(!w.is_relevant(Path::new("/git/decisions.log")));
        assert!(!w.is_relevant(Path::new("/git/policies.tmp")));
        assert!(!w.is_relevant(Path::new("/git/rev-bb/x.yaml")));
    }

    #[test]
    fn fingerprints_follow_the_link_and_see_edits() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("rev-a"), dir.path().join("rev-b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("x.yaml"), "one").unwrap();
        std::fs::write(b.join("x.yaml"), "one").unwrap();
        let link = dir.path().join("policies");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let first = fingerprint(&link).unwrap();
        assert_eq!(first.target, a.canonicalize().unwrap());
        assert_eq!(fingerprint(&link), Some(first));
        let tmp = dir.path().join("tmp");
        std::os::unix::fs::symlink(&b, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        let second = fingerprint(&link).unwrap();
        assert_eq!(second.target, b.canonicalize().unwrap());
        std::fs::write(b.join("x.yaml"), "three").unwrap();
        assert_ne!(fingerprint(&link), Some(second));
        std::fs::remove_dir_all(&b).unwrap();
        assert_eq!(fingerprint(&link), None);
    }
}
