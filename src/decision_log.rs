//! The decision log: one JSON line per decision, to stdout or a file.
//!
//! Lines are handed to a writer thread through a bounded queue, so a slow disk never
//! slows a check; if the queue is full the line is dropped and counted
//! (`hopwarden_decision_log_dropped_total`) rather than blocking the request path.
//! A record holds no token and no header value except Envoy's `x-request-id`.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::telemetry::Metrics;

/// Lines queued for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

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
    tx: Option<SyncSender<DecisionRecord>>,
    metrics: Arc<Metrics>,
}

impl DecisionLog {
    /// Starts the writer thread for `target`.
    pub fn start(target: &LogTarget, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            LogTarget::Off => return Ok(DecisionLog { tx: None, metrics }),
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
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(DecisionLog {
            tx: Some(tx),
            metrics,
        })
    }

    /// Queues a record; never blocks.
    pub fn write(&self, record: DecisionRecord) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.decision_log_dropped();
            }
        }
    }
}

fn write_lines(rx: Receiver<DecisionRecord>, mut out: Box<dyn Write + Send>) {
    let mut line = Vec::with_capacity(512);
    while let Ok(record) = rx.recv() {
        let mut next = Some(record);
        // Drain what is queued, then flush once: batches under load, prompt when idle.
        while let Some(record) = next.take() {
            line.clear();
            if serde_json::to_writer(&mut line, &record).is_ok() {
                line.push(b'\n');
                if out.write_all(&line).is_err() {
                    return;
                }
            }
            next = match rx.try_recv() {
                Ok(r) => Some(r),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => None,
            };
        }
        let _ = out.flush();
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
