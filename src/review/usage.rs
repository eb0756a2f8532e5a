//! Decision logs read back: which rules were actually used, and over what period.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Map, Value};

/// What the decision logs show.
#[derive(Debug, Default, Serialize)]
pub struct Usage {
    /// The files read.
    pub files: Vec<String>,
    /// Decision lines counted.
    pub decisions: u64,
    /// Lines that were not JSON or lacked `timestamp`, `service` or `decision`.
    pub skipped: u64,
    /// The earliest timestamp seen.
    pub first: Option<String>,
    /// The latest timestamp seen.
    pub last: Option<String>,
    /// `service/rule/decision` -> how many such decisions (an allow rule's count is
    /// the requests it let through; a deny rule's, the requests it refused).
    pub by_rule: BTreeMap<String, u64>,
    /// API key id -> allowed requests it made.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_key: BTreeMap<String, u64>,
}

impl Usage {
    /// Reads JSON-lines decision logs (the server's `log.format: json` output).
    pub fn read(paths: &[PathBuf]) -> Result<Usage, String> {
        let mut usage = Usage::default();
        let files = each_line(paths, |line| usage.add(line))?;
        usage.files = files;
        Ok(usage)
    }

    /// Counts one log line.
    pub fn add(&mut self, line: &str) {
        let Ok(Value::Object(entry)) = serde_json::from_str::<Value>(line) else {
            self.skipped += 1;
            return;
        };
        let field = |name: &str| field(&entry, name).and_then(Value::as_str);
        let (Some(timestamp), Some(service), Some(decision)) =
            (field("timestamp"), field("service"), field("decision"))
        else {
            self.skipped += 1;
            return;
        };
        self.decisions += 1;
        if self.first.as_deref().is_none_or(|f| timestamp < f) {
            self.first = Some(timestamp.to_string());
        }
        if self.last.as_deref().is_none_or(|l| timestamp > l) {
            self.last = Some(timestamp.to_string());
        }
        if let (Some(key), "allow") = (field("api_key"), decision) {
            *self.by_key.entry(key.to_string()).or_default() += 1;
        }
        if let Some(rule) = field("rule") {
            *self
                .by_rule
                .entry(format!("{service}/{rule}/{decision}"))
                .or_default() += 1;
        }
    }

    /// How many `decision`s (`allow`, `deny`) `rule` of `service` made.
    pub fn count(&self, service: &str, rule: &str, decision: &str) -> u64 {
        self.by_rule
            .get(&format!("{service}/{rule}/{decision}"))
            .copied()
            .unwrap_or(0)
    }

    /// How many requests the API key `id` was allowed.
    pub fn key_uses(&self, id: &str) -> u64 {
        self.by_key.get(id).copied().unwrap_or(0)
    }

    /// `2024-06-01T00:00:00Z .. 2024-06-30T23:59:59Z`, or `no decisions`.
    pub fn period(&self) -> String {
        match (&self.first, &self.last) {
            (Some(f), Some(l)) => format!("{f} .. {l}"),
            _ => "no decisions".into(),
        }
    }
}

/// Calls `f` with each non-blank line of the decision logs at `paths`, in order;
/// returns the files' names. `hopwarden review --usage` and `hopwarden suggest` read
/// logs through it.
pub fn each_line(paths: &[PathBuf], mut f: impl FnMut(&str)) -> Result<Vec<String>, String> {
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("{}: cannot read decision log: {e}", path.display()))?;
        files.push(path.display().to_string());
        for line in std::io::BufReader::new(file).lines() {
            let line =
                line.map_err(|e| format!("{}: cannot read decision log: {e}", path.display()))?;
            if !line.trim().is_empty() {
                f(&line);
            }
        }
    }
    Ok(files)
}

/// A field of one decision line: flattened JSON events (the server's format) or
/// tracing's nested `fields`.
pub fn field<'a>(entry: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    entry
        .get(name)
        .or_else(|| entry.get("fields").and_then(|f| f.get(name)))
}
