//! What the decision logs show each caller doing, per service: the allowed requests,
//! folded into path templates as they are read, so memory grows with the number of
//! distinct templates (bounded), not with the number of requests.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::template;
use crate::decision::scopes::CUT;
use crate::review::usage::field;

/// Distinct (method, template) pairs kept per caller; more are counted, not kept.
pub(super) const MAX_TEMPLATES_PER_CALLER: usize = 1_000;
/// Distinct callers kept across all services; more are counted, not kept.
pub(super) const MAX_CALLERS: usize = 10_000;

/// One caller's observed traffic to one service.
#[derive(Debug, Default)]
pub(super) struct Traffic {
    /// `service` or `user`, as logged.
    pub kinds: BTreeSet<String>,
    /// The mTLS peer of each request (`None`: a request without one).
    pub peers: BTreeSet<Option<String>>,
    /// `gateway` or `mesh`.
    pub hops: BTreeSet<String>,
    /// Allowed requests seen.
    pub requests: u64,
    /// (method, template) -> requests and the first concrete path seen.
    pub actions: BTreeMap<(String, String), Action>,
    /// Requests whose (method, template) was not kept: over the per-caller bound.
    pub over_bound: u64,
    /// The scopes every kept request carried (the intersection); `None` before the
    /// first. A request logged with no scopes (an mTLS peer alone, a log from before
    /// scopes were logged) empties it: the rule can then require none.
    pub scopes: Option<BTreeSet<String>>,
    /// Kept requests whose logged scopes were cut or dropped (`scopes_truncated`):
    /// what was cut is unknown, so the intersection may lack a scope they carried.
    pub scopes_truncated: u64,
}

/// One method on one path template.
#[derive(Debug)]
pub(super) struct Action {
    /// Requests seen.
    pub requests: u64,
    /// The first path seen, for the suite.
    pub example: String,
}

/// Everything read.
#[derive(Debug, Default)]
pub(super) struct Observed {
    /// service -> principal -> traffic.
    pub services: BTreeMap<String, BTreeMap<String, Traffic>>,
    /// Lines read that were decisions.
    pub decisions: u64,
    /// Lines that were not decision lines.
    pub skipped: u64,
    /// Denied decisions (not drafted: a denial is not a need).
    pub denied: u64,
    /// Allowed requests with no principal (never drafted: no anonymous rule).
    pub anonymous: u64,
    /// Allowed requests whose path is not canonical or makes no pattern.
    pub unusable_paths: BTreeSet<String>,
    /// How many requests those were.
    pub unusable: u64,
    /// Allowed requests from callers over [`MAX_CALLERS`].
    pub over_callers: u64,
    /// Allowed requests to services other than `--service`.
    pub other_services: u64,
    /// The earliest and latest timestamps of the decisions used.
    pub first: Option<String>,
    /// See `first`.
    pub last: Option<String>,
}

impl Observed {
    /// Counts one log line; `only` limits it to one service.
    pub fn add(&mut self, line: &str, only: Option<&str>) {
        let Ok(Value::Object(entry)) = serde_json::from_str::<Value>(line) else {
            self.skipped += 1;
            return;
        };
        let text = |name: &str| field(&entry, name).and_then(Value::as_str);
        let (Some(timestamp), Some(service), Some(decision)) =
            (text("timestamp"), text("service"), text("decision"))
        else {
            self.skipped += 1;
            return;
        };
        self.decisions += 1;
        if decision != "allow" {
            self.denied += 1;
            return;
        }
        if only.is_some_and(|s| s != service) {
            self.other_services += 1;
            return;
        }
        self.allowed(&entry, timestamp, service);
    }

    fn allowed(&mut self, entry: &Map<String, Value>, timestamp: &str, service: &str) {
        let text = |name: &str| field(entry, name).and_then(Value::as_str);
        let (Some(principal), Some(kind)) = (text("principal"), text("kind")) else {
            self.anonymous += 1;
            return;
        };
        if principal.is_empty() || kind == "anonymous" {
            self.anonymous += 1;
            return;
        }
        let (method, path) = (text("method").unwrap_or_default(), text("path"));
        let method = method.to_ascii_uppercase();
        // The methods a rule may name (RFC 9110 and PATCH); others are reported.
        const KNOWN: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ];
        let template = path
            .and_then(template::template)
            .filter(|_| KNOWN.contains(&method.as_str()));
        let Some(template) = template else {
            self.unusable += 1;
            // Bounded like the templates: a log full of odd paths must not grow this.
            if self.unusable_paths.len() < 20 {
                let path = path.unwrap_or("<no path>");
                let shown = format!("{method} {path}").chars().take(200).collect();
                self.unusable_paths.insert(shown);
            }
            return;
        };
        let callers: usize = self.services.values().map(BTreeMap::len).sum();
        let known = self
            .services
            .get(service)
            .is_some_and(|c| c.contains_key(principal));
        if !known && callers >= MAX_CALLERS {
            self.over_callers += 1;
            return;
        }
        if self.first.as_deref().is_none_or(|f| timestamp < f) {
            self.first = Some(timestamp.to_string());
        }
        if self.last.as_deref().is_none_or(|l| timestamp > l) {
            self.last = Some(timestamp.to_string());
        }
        let traffic = self
            .services
            .entry(service.to_string())
            .or_default()
            .entry(principal.to_string())
            .or_default();
        traffic.requests += 1;
        traffic.kinds.insert(kind.to_string());
        traffic.peers.insert(text("peer").map(str::to_string));
        if let Some(hop) = text("hop") {
            traffic.hops.insert(hop.to_string());
        }
        let key = (method, template);
        let full = traffic.actions.len() >= MAX_TEMPLATES_PER_CALLER;
        if traffic.actions.contains_key(&key) || !full {
            traffic.carried(entry);
        }
        match traffic.actions.get_mut(&key) {
            Some(action) => action.requests += 1,
            None if full => traffic.over_bound += 1,
            None => {
                let example = path.unwrap_or_default().to_string();
                traffic.actions.insert(
                    key,
                    Action {
                        requests: 1,
                        example,
                    },
                );
            }
        }
    }
}

impl Traffic {
    /// Narrows the scopes every request carried to those this one's line lists.
    fn carried(&mut self, entry: &Map<String, Value>) {
        let truncated = field(entry, "scopes_truncated").and_then(Value::as_bool) == Some(true);
        if truncated {
            self.scopes_truncated += 1;
        }
        let listed = field(entry, "scopes").and_then(Value::as_array);
        let this = listed.into_iter().flatten().filter_map(Value::as_str);
        // A scope the log cut is not the scope the token carried: never required.
        let this = this.filter(|s| !(truncated && s.ends_with(CUT)));
        match &mut self.scopes {
            None => self.scopes = Some(this.map(str::to_string).collect()),
            Some(all) => {
                let this: BTreeSet<&str> = this.collect();
                all.retain(|s| this.contains(s.as_str()));
            }
        }
    }
}
