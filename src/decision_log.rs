//! The decision log: one JSON line per decision, to stdout or a file.
//!
//! Each record is written as its JSON line into a bounded in-memory buffer that a
//! writer thread takes every few milliseconds, so a slow disk never slows a check and
//! no check pays for waking a thread (a channel wake-up per record cost more than the
//! rest of a cached check). The record borrows what it logs and the line is written
//! where the check ran: nothing is allocated for it, and nothing allocated on the
//! request path is freed by the writer thread (freeing across threads made every
//! allocation of a check dearer). If the buffer is full the line is dropped and
//! counted (`hopwarden_decision_log_dropped_total`) rather than blocking the request
//! path. A record holds no token and no header value except Envoy's `x-request-id`.

use std::borrow::Cow;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::telemetry::Metrics;

/// Bytes of lines waiting for the writer before new ones are dropped (about 50,000
/// lines: a second and a half at the fastest checks measured). While the writer writes
/// one batch the next fills, so up to twice this is held.
const QUEUE_BYTES: usize = 16 << 20;
/// How often the writer takes the batch.
const INTERVAL: Duration = Duration::from_millis(20);

/// One decision, as logged. It borrows from the check it describes; read back from a
/// log, it owns its strings. `write_json` writes the line with these names in this
/// order; `Serialize` is what the tests hold it to.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct DecisionRecord<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub timestamp: Cow<'a, str>,
    /// Envoy's `x-request-id`, to join with access logs.
    pub request_id: Option<Cow<'a, str>>,
    /// The resolved service.
    pub service: Option<Cow<'a, str>>,
    /// `gateway` or `mesh`.
    pub hop: Option<Cow<'a, str>>,
    /// The caller's principal id (token subject or SPIFFE ID).
    pub principal: Option<Cow<'a, str>>,
    /// `service`, `user` or `anonymous`.
    pub kind: Option<Cow<'a, str>>,
    /// The mTLS peer's SPIFFE ID, as Envoy reported it.
    pub peer: Option<Cow<'a, str>>,
    /// For a delegated token (RFC 8693 `act`): the actors calling for the principal,
    /// outermost (the caller rules matched) first.
    pub actors: Option<Vec<Cow<'a, str>>>,
    /// The id of the API key the request presented (never its secret), valid or not.
    #[serde(default)]
    pub api_key: Option<Cow<'a, str>>,
    /// The scopes the caller's token (`scope`/`scp`) or API key carried, in its order:
    /// at most [`crate::decision::MAX_SCOPES`], each at most
    /// [`crate::decision::MAX_SCOPE_BYTES`] bytes (a longer one
    /// is cut and ends with `…`). `null` when no token or key identified the caller.
    #[serde(default)]
    pub scopes: Option<Cow<'a, [String]>>,
    /// Present (and `true`) when scopes were dropped or cut to fit those bounds.
    #[serde(default, skip_serializing_if = "is_false")]
    pub scopes_truncated: bool,
    /// HTTP method.
    pub method: Cow<'a, str>,
    /// The canonical path, or `<non-canonical>`.
    pub path: Cow<'a, str>,
    /// `allow`, `deny` or `error`.
    pub decision: Cow<'a, str>,
    /// The HTTP status Envoy answers with (200 when forwarded; 0 on error).
    pub status: u16,
    /// The rule that decided.
    pub rule: Option<Cow<'a, str>>,
    /// Why a request was denied (`deny_rule`, `invalid_token`, …).
    pub reason: Option<Cow<'a, str>>,
    /// Detail behind the reason (`expired`, `bad_signature`, …).
    pub detail: Option<Cow<'a, str>>,
    /// Set when dry-run turned a denial into an allow: what enforcement would have done.
    pub dry_run: Option<DryRunRecord<'a>>,
    /// Whether the decision came from the cache.
    pub cached: bool,
    /// Time to answer, in microseconds.
    pub latency_us: u64,
}

/// What a dry-run policy or rule would have denied.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct DryRunRecord<'a> {
    /// The rule that would have denied (`default` for a default deny).
    pub rule: Cow<'a, str>,
    /// The deny reason enforcement would have given.
    pub reason: Cow<'a, str>,
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
    /// Whole JSON lines, oldest first.
    pending: Mutex<Vec<u8>>,
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
            // Through `Stdout`'s own lock, whole lines, one batch per write: the
            // tracing subscriber writes there too, and lines must never interleave.
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

    /// Adds the record's line to the batch; never waits for I/O.
    pub fn write(&self, record: &DecisionRecord<'_>) {
        let Some(shared) = &self.shared else { return };
        let Ok(mut pending) = shared.pending.lock() else {
            self.metrics.decision_log_dropped();
            return;
        };
        if pending.len() >= QUEUE_BYTES {
            drop(pending);
            self.metrics.decision_log_dropped();
            return;
        }
        // Straight into the batch: the lock is held for one line's writing.
        record.write_json(&mut pending);
        pending.push(b'\n');
    }
}

impl DecisionRecord<'_> {
    /// Appends the record as one JSON object: the same bytes `serde_json` writes for
    /// it (a test holds the two together), but with the field names written as they
    /// are rather than escaped one by one, which made serde_json's line the dearest
    /// part of a cached check.
    fn write_json(&self, out: &mut Vec<u8>) {
        // Each name with the separator before it, in the struct's order.
        let strings: [(&[u8], Option<&str>); 7] = [
            (b"{\"timestamp\":", Some(&self.timestamp)),
            (b",\"request_id\":", self.request_id.as_deref()),
            (b",\"service\":", self.service.as_deref()),
            (b",\"hop\":", self.hop.as_deref()),
            (b",\"principal\":", self.principal.as_deref()),
            (b",\"kind\":", self.kind.as_deref()),
            (b",\"peer\":", self.peer.as_deref()),
        ];
        write_strings(out, &strings);
        out.extend_from_slice(b",\"actors\":");
        match &self.actors {
            Some(actors) => {
                out.push(b'[');
                for (n, actor) in actors.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    json_string(out, actor);
                }
                out.push(b']');
            }
            None => out.extend_from_slice(b"null"),
        }
        write_strings(out, &[(b",\"api_key\":", self.api_key.as_deref())]);
        out.extend_from_slice(b",\"scopes\":");
        match &self.scopes {
            Some(scopes) => {
                out.push(b'[');
                for (n, scope) in scopes.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    json_string(out, scope);
                }
                out.push(b']');
            }
            None => out.extend_from_slice(b"null"),
        }
        if self.scopes_truncated {
            out.extend_from_slice(b",\"scopes_truncated\":true");
        }
        let request: [(&[u8], Option<&str>); 3] = [
            (b",\"method\":", Some(&self.method)),
            (b",\"path\":", Some(&self.path)),
            (b",\"decision\":", Some(&self.decision)),
        ];
        write_strings(out, &request);
        // Writing into a Vec cannot fail.
        let _ = write!(out, ",\"status\":{}", self.status);
        let outcome: [(&[u8], Option<&str>); 3] = [
            (b",\"rule\":", self.rule.as_deref()),
            (b",\"reason\":", self.reason.as_deref()),
            (b",\"detail\":", self.detail.as_deref()),
        ];
        write_strings(out, &outcome);
        out.extend_from_slice(b",\"dry_run\":");
        match &self.dry_run {
            Some(d) => {
                write_strings(
                    out,
                    &[
                        (b"{\"rule\":", Some(&d.rule)),
                        (b",\"reason\":", Some(&d.reason)),
                    ],
                );
                out.push(b'}');
            }
            None => out.extend_from_slice(b"null"),
        }
        let _ = write!(
            out,
            ",\"cached\":{},\"latency_us\":{}}}",
            self.cached, self.latency_us
        );
    }
}

/// For `skip_serializing_if`: the writer leaves a false flag out, as serde does.
fn is_false(b: &bool) -> bool {
    !*b
}

/// Appends each name (already JSON, with its separator) and its value (`null` for
/// `None`).
fn write_strings(out: &mut Vec<u8>, fields: &[(&[u8], Option<&str>)]) {
    for (name, value) in fields {
        out.extend_from_slice(name);
        match value {
            Some(v) => json_string(out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
}

/// Appends `s` as a JSON string. Most values need no escaping and are copied as they
/// are; the rest (a request id or subject with quotes or control characters, say:
/// they come from callers) go through serde_json's escaping.
fn json_string(out: &mut Vec<u8>, s: &str) {
    // No early exit (`fold` with `&`, not `all`), so the test vectorizes, as in
    // `authn::bearer_token`.
    let plain = |b: u8| (b >= 0x20) & (b != b'"') & (b != b'\\');
    if s.bytes().fold(true, |ok, b| ok & plain(b)) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
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
    let mut taken = Vec::with_capacity(64 * 1024);
    loop {
        let closed = shared.closed.load(Ordering::SeqCst);
        if !closed {
            std::thread::park_timeout(INTERVAL);
        }
        if let Ok(mut pending) = shared.pending.lock() {
            std::mem::swap(&mut *pending, &mut taken);
        }
        // Whole lines in one write: on stdout, `Stdout`'s lock is held for all of it,
        // so they never interleave with the tracing subscriber's lines.
        if out.write_all(&taken).is_err() {
            return;
        }
        taken.clear();
        let _ = out.flush();
        if closed {
            return;
        }
    }
}

/// 9999-12-31T23:59:59.999Z, the last time RFC 3339 can write, since the epoch.
const LAST: Duration = Duration::from_millis(253_402_300_799_999);

/// A log timestamp (RFC 3339, UTC, milliseconds: `2026-11-28T00:25:14.123Z`), formatted
/// on the stack.
#[derive(Debug, Clone)]
pub struct Timestamp {
    text: [u8; 32],
    len: usize,
}

impl Timestamp {
    /// Now.
    pub fn now() -> Timestamp {
        Timestamp::at(SystemTime::now())
    }

    /// `at`, as the log writes it.
    pub fn at(at: SystemTime) -> Timestamp {
        // humantime panics before 1970 and fails after 9999 (and an io writer
        // panics when a formatter fails): a clock that far off is logged at the
        // nearest end, never a panic on the request path.
        let at = at.clamp(SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH + LAST);
        let mut text = [0u8; 32];
        let mut rest = &mut text[..];
        // 24 bytes: the buffer never runs out.
        let _ = write!(rest, "{}", humantime::format_rfc3339_millis(at));
        let len = 32 - rest.len();
        Timestamp { text, len }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // humantime writes ASCII.
        std::str::from_utf8(&self.text[..self.len]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u16) -> DecisionRecord<'static> {
        DecisionRecord {
            timestamp: Timestamp::now().as_str().to_string().into(),
            request_id: Some(format!("r{n}").into()),
            service: Some("ledger".into()),
            hop: Some("mesh".into()),
            principal: None,
            kind: None,
            peer: None,
            actors: None,
            api_key: None,
            scopes: None,
            scopes_truncated: false,
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
            log.write(&record(n));
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

    #[test]
    fn lines_written_before_scopes_were_logged_still_read() {
        let old = record(1);
        let mut line = serde_json::to_value(&old).unwrap();
        line.as_object_mut().unwrap().remove("scopes");
        let read: DecisionRecord = serde_json::from_value(line).unwrap();
        assert_eq!(read, old);
        assert_eq!((read.scopes, read.scopes_truncated), (None, false));
        // The flag is written only when set.
        let mut cut = record(1);
        let text = serde_json::to_string(&cut).unwrap();
        assert!(text.contains("\"scopes\":null,\"method\""), "{text}");
        cut.scopes_truncated = true;
        let text = serde_json::to_string(&cut).unwrap();
        assert!(
            text.contains("\"scopes\":null,\"scopes_truncated\":true,"),
            "{text}"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_817_833_042);
        assert_eq!(Timestamp::at(at).as_str(), "2026-11-27T22:17:13.042Z");
        assert_eq!(
            Timestamp::at(SystemTime::UNIX_EPOCH).as_str(),
            "1970-01-01T00:00:00.000Z"
        );
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(Timestamp::at(far).as_str(), "9999-12-31T23:59:59.999Z");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(Timestamp::at(before).as_str(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_full_batch_drops_whole_lines_and_counts_them() {
        // No writer thread: nothing takes the batch, so it fills.
        let metrics = Arc::new(Metrics::new());
        let shared = Arc::new(Shared::default());
        let log = DecisionLog {
            shared: Some(shared.clone()),
            writer: None,
            metrics: metrics.clone(),
        };
        let line = serde_json::to_vec(&record(0)).unwrap().len() + 1;
        let fits = QUEUE_BYTES.div_ceil(line);
        for _ in 0..fits + 10 {
            log.write(&record(0));
        }
        let pending = shared.pending.lock().unwrap();
        assert_eq!(pending.len(), fits * line);
        assert!(pending.ends_with(b"}\n"));
        assert!(
            metrics
                .encode()
                .contains("hopwarden_decision_log_dropped_total 10\n"),
            "{}",
            metrics.encode()
        );
    }

    #[test]
    fn lines_are_the_bytes_serde_json_writes() {
        let odd = "q\"b\\s/\u{0}\u{1f}\u{7f}\n\té ü 🦀</script>";
        let mut records = vec![record(1)];
        let mut full = record(2);
        full.principal = Some("spiffe://td/ns/a/sa/b".into());
        full.kind = Some("service".into());
        full.peer = Some("spiffe://td/ns/c/sa/d".into());
        full.actors = Some(vec!["customer-bff".into(), "web".into()]);
        full.scopes = Some(vec!["ledger.read".to_string(), "ledger.write".to_string()].into());
        full.rule = Some("r-1".into());
        full.detail = Some("expired".into());
        full.dry_run = Some(DryRunRecord {
            rule: "default".into(),
            reason: "no_matching_rule".into(),
        });
        full.cached = true;
        full.status = 0;
        full.latency_us = u64::MAX;
        records.push(full.clone());
        let mut empty = full.clone();
        empty.request_id = Some("".into());
        empty.method = "".into();
        empty.scopes = Some(Vec::new().into());
        records.push(empty);
        let mut hostile = full;
        hostile.service = None;
        hostile.hop = None;
        hostile.request_id = Some(odd.into());
        hostile.principal = Some(odd.into());
        hostile.actors = Some(vec![odd.into()]);
        hostile.scopes = Some(vec![odd.to_string(), format!("{odd}…")].into());
        hostile.scopes_truncated = true;
        hostile.path = odd.into();
        hostile.dry_run = Some(DryRunRecord {
            rule: odd.into(),
            reason: odd.into(),
        });
        records.push(hostile);
        // One hazard at a time, so no other byte in the value sends it to serde_json.
        for one in [
            "a\"b",
            "a\\b",
            "a\u{0}b",
            "a\u{1f}b",
            "a\nb",
            "a\u{7f}b",
            "é</script>",
        ] {
            let mut r = record(3);
            r.principal = Some(one.into());
            r.actors = Some(vec![]);
            r.scopes = Some(vec![one.to_string()].into());
            records.push(r);
        }
        for r in &records {
            let mut ours = Vec::new();
            r.write_json(&mut ours);
            assert_eq!(
                String::from_utf8(ours.clone()).unwrap(),
                serde_json::to_string(r).unwrap()
            );
            assert_eq!(&serde_json::from_slice::<DecisionRecord>(&ours).unwrap(), r);
        }
    }
}
