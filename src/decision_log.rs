//! The decision log: one JSON line per decision, to stdout or a file.
//!
//! Records are appended to a bounded in-memory batch that a writer thread takes every
//! few milliseconds, so a slow disk never slows a check and no check pays for waking a
//! thread (a channel wake-up per record cost more than the rest of a cached check).
//! If the batch is full the record is dropped and counted
//! (`hopwarden_decision_log_dropped_total`) rather than blocking the request path.
//! A record holds no token and no header value except Envoy's `x-request-id`.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::telemetry::Metrics;

/// Records held for the writer before new ones are dropped.
const QUEUE: usize = 64 * 1024;
/// How often the writer takes the batch.
const INTERVAL: Duration = Duration::from_millis(20);

/// One decision, as logged.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct DecisionRecord {
    /// RFC 3339, UTC, milliseconds.
    pub timestamp: String,
    /// Envoy's `x-request-id`, to join with access logs.
    pub request_id: Option<String>,
    /// The resolved service.
    pub service: Option<String>,
    /// `gateway` or `mesh`.
    pub hop: Option<String>,
    /// The caller's principal id (token subject or SPIFFE ID).
    pub principal: Option<String>,
    /// `service`, `user` or `anonymous`.
    pub kind: Option<String>,
    /// The mTLS peer's SPIFFE ID, as Envoy reported it.
    pub peer: Option<String>,
    /// HTTP method.
    pub method: String,
    /// The canonical path, or `<non-canonical>`.
    pub path: String,
    /// `allow`, `deny` or `error`.
    pub decision: String,
    /// The HTTP status Envoy answers with (200 when forwarded; 0 on error).
    pub status: u16,
    /// The rule that decided.
    pub rule: Option<String>,
    /// Why a request was denied (`deny_rule`, `invalid_token`, …).
    pub reason: Option<String>,
    /// Detail behind the reason (`expired`, `bad_signature`, …).
    pub detail: Option<String>,
    /// Set when dry-run turned a denial into an allow: what enforcement would have done.
    pub dry_run: Option<DryRunRecord>,
    /// Whether the decision came from the cache.
    pub cached: bool,
    /// Time to answer, in microseconds.
    pub latency_us: u64,
}

/// What a dry-run policy or rule would have denied.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct DryRunRecord {
    /// The rule that would have denied (`default` for a default deny).
    pub rule: String,
    /// The deny reason enforcement would have given.
    pub reason: String,
}

/// Where decision lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output, interleaved with the other logs line by line.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Not written.
    Off,
}

/// The decision log writer.
pub struct DecisionLog {
    shared: Option<Arc<Shared>>,
    writer: Option<JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

/// What the request path and the writer thread share.
#[derive(Default)]
struct Shared {
    pending: Mutex<Vec<DecisionRecord>>,
    closed: AtomicBool,
}

impl DecisionLog {
    /// Starts the writer thread for `target`.
    pub fn start(target: &LogTarget, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            LogTarget::Off => {
                return Ok(DecisionLog {
                    shared: None,
                    writer: None,
                    metrics,
                })
            }
            // Through `Stdout`'s own lock, one whole line per write: the tracing
            // subscriber writes there too, and lines must never interleave.
            LogTarget::Stdout => Box::new(std::io::stdout()),
            LogTarget::File(path) => Box::new(BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
        };
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let writer = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_batches(&theirs, out))?;
        Ok(DecisionLog {
            shared: Some(shared),
            writer: Some(writer),
            metrics,
        })
    }

    /// Adds a record to the batch; never waits for I/O.
    pub fn write(&self, record: DecisionRecord) {
        let Some(shared) = &self.shared else { return };
        let Ok(mut pending) = shared.pending.lock() else {
            return;
        };
        if pending.len() >= QUEUE {
            drop(pending);
            self.metrics.decision_log_dropped();
        } else {
            pending.push(record);
        }
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        // The writer writes what is left, then stops; waiting for it (at most one
        // interval) keeps the last decisions of a clean shutdown.
        if let Some(shared) = &self.shared {
            shared.closed.store(true, Ordering::SeqCst);
        }
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark();
            let _ = writer.join();
        }
    }
}

/// Every `INTERVAL`, takes the batch and writes it; after the log is closed, writes
/// what is left and stops.
fn write_batches(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut taken = Vec::with_capacity(1024);
    let mut line = Vec::with_capacity(512);
    loop {
        let closed = shared.closed.load(Ordering::SeqCst);
        if !closed {
            std::thread::park_timeout(INTERVAL);
        }
        if let Ok(mut pending) = shared.pending.lock() {
            std::mem::swap(&mut *pending, &mut taken);
        }
        for record in taken.drain(..) {
            line.clear();
            if serde_json::to_writer(&mut line, &record).is_ok() {
                line.push(b'\n');
                // One whole line per write: on stdout, lines never interleave with
                // the tracing subscriber's.
                if out.write_all(&line).is_err() {
                    return;
                }
            }
        }
        let _ = out.flush();
        if closed {
            return;
        }
    }
}

/// Now, as the log's timestamp.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u16) -> DecisionRecord {
        DecisionRecord {
            timestamp: timestamp(),
            request_id: Some(format!("r{n}")),
            service: Some("ledger".into()),
            hop: Some("mesh".into()),
            principal: None,
            kind: None,
            peer: None,
            method: "GET".into(),
            path: "/x".into(),
            decision: "deny".into(),
            status: 401,
            rule: None,
            reason: Some("missing_credential".into()),
            detail: None,
            dry_run: None,
            cached: false,
            latency_us: 5,
        }
    }

    #[test]
    fn writes_one_json_line_per_record_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        let log =
            DecisionLog::start(&LogTarget::File(path.clone()), Arc::new(Metrics::new())).unwrap();
        for n in 0..3 {
            log.write(record(n));
        }
        drop(log);
        let mut text = String::new();
        for _ in 0..50 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let lines: Vec<DecisionRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        for (n, line) in lines.into_iter().enumerate() {
            assert!(line.timestamp.ends_with('Z'), "{}", line.timestamp);
            let mut want = record(n as u16);
            want.timestamp = line.timestamp.clone();
            assert_eq!(line, want);
        }
    }
}
