//! Observed traffic into draft rules (one per caller, the narrowest that allow what was
//! seen), written as a policy file and a suite file per service.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::observed::{Observed, Traffic};

/// One drafted rule: one caller's observed needs.
#[derive(Debug)]
pub(super) struct DraftRule {
    /// Unique across the drafted set.
    pub id: String,
    /// The caller's principal id, as logged.
    pub principal: String,
    /// The one kind every request had, if one.
    pub kind: Option<String>,
    /// The one mTLS peer every request had, if one.
    pub peer: Option<String>,
    /// The one hop every request came through, if one.
    pub hop: Option<String>,
    /// (methods, path templates) clauses, methods sorted.
    pub clauses: Vec<(Vec<String>, Vec<String>)>,
    /// (method, template, example path, requests), sorted.
    pub actions: Vec<(String, String, String, u64)>,
    /// Allowed requests it covers.
    pub requests: u64,
    /// Requests not covered: over the per-caller bound on templates.
    pub over_bound: u64,
    /// Paths that vary in a segment that is not an id, listed as observed.
    pub not_generalised: Vec<String>,
    /// The scopes every covered request carried, sorted: what the rule requires.
    pub scopes: Vec<String>,
    /// Covered requests whose logged scopes were cut or dropped.
    pub scopes_truncated: u64,
}

/// One service's drafted rules.
#[derive(Debug)]
pub(super) struct DraftPolicy {
    /// The service.
    pub service: String,
    /// Its rules, by caller.
    pub rules: Vec<DraftRule>,
}

/// The drafts for every service observed.
pub(super) fn drafts(observed: &Observed) -> Vec<DraftPolicy> {
    let mut used = BTreeSet::new();
    observed
        .services
        .iter()
        .map(|(service, callers)| DraftPolicy {
            service: service.clone(),
            rules: callers
                .iter()
                .map(|(principal, traffic)| rule(service, principal, traffic, &mut used))
                .collect(),
        })
        .collect()
}

fn only<T: Clone + Ord>(set: &BTreeSet<T>) -> Option<T> {
    (set.len() == 1)
        .then(|| set.iter().next().cloned())
        .flatten()
}

fn rule(service: &str, principal: &str, t: &Traffic, used: &mut BTreeSet<String>) -> DraftRule {
    let base = format!("{service}-{}", slug(principal));
    let mut id = base.clone();
    let mut n = 1;
    while used.contains(&id) {
        n += 1;
        id = format!("{base}-{n}");
    }
    used.insert(id.clone());
    // Templates by the set of methods seen on them: one `to` clause per set.
    let mut methods: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (method, template) in t.actions.keys() {
        methods.entry(template).or_default().insert(method);
    }
    let mut clauses: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    for (template, set) in methods {
        let set = set.into_iter().map(str::to_string).collect();
        clauses.entry(set).or_default().push(template.to_string());
    }
    DraftRule {
        id,
        principal: principal.to_string(),
        kind: only(&t.kinds),
        peer: only(&t.peers).flatten(),
        hop: only(&t.hops),
        clauses: clauses.into_iter().collect(),
        actions: t
            .actions
            .iter()
            .map(|((m, p), a)| (m.clone(), p.clone(), a.example.clone(), a.requests))
            .collect(),
        requests: t.requests - t.over_bound,
        over_bound: t.over_bound,
        not_generalised: not_generalised(t),
        scopes: t.scopes.iter().flatten().cloned().collect(),
        scopes_truncated: t.scopes_truncated,
    }
}

/// `spiffe://td/ns/payments/sa/payments` -> `payments`; `partner:acme` -> `acme`.
fn slug(principal: &str) -> String {
    let last = principal
        .rsplit(['/', ':'])
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    let mut out = String::new();
    for c in last.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(40);
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "caller".to_string()
    } else {
        out
    }
}

/// Paths of one method that differ in one literal segment only (`/users/alice`,
/// `/users/bob`): left as listed, since a name is not an id, and reported.
fn not_generalised(t: &Traffic) -> Vec<String> {
    let mut groups: BTreeMap<(String, Vec<&str>, usize), BTreeSet<&str>> = BTreeMap::new();
    for (method, template) in t.actions.keys() {
        let segments: Vec<&str> = template.split('/').collect();
        for (i, segment) in segments.iter().enumerate().skip(1) {
            if segment.starts_with('{') {
                continue;
            }
            let mut key = segments.clone();
            key[i] = "";
            groups
                .entry((method.clone(), key, i))
                .or_default()
                .insert(segment);
        }
    }
    let mut out = Vec::new();
    for ((method, key, i), values) in groups.into_iter().filter(|(_, v)| v.len() > 1) {
        let shown: Vec<&str> = values.iter().take(5).copied().collect();
        let more = if values.len() > 5 { ", …" } else { "" };
        let mut at = key.clone();
        at[i] = "*";
        out.push(format!(
            "{method} {}: segment {i} varies ({}{more}) but is not an id: {} paths listed as observed",
            at.join("/"),
            shown.join(", "),
            values.len()
        ));
    }
    out
}

/// A YAML double-quoted string (JSON's string syntax is YAML's).
fn q(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The policy file.
pub(super) fn policy_yaml(p: &DraftPolicy, issuer: Option<&str>, period: &str) -> String {
    let total: u64 = p.rules.iter().map(|r| r.requests).sum();
    let mut out = format!(
        "# Drafted by `hopwarden suggest` from {total} allowed request(s) in decision logs,\n\
         # {period}.\n\
         # It allows what was observed and nothing else, and each rule requires the scopes\n\
         # every request it covers carried: review it before enforcing.\n\
         service: {}\nrules:\n",
        q(&p.service)
    );
    for r in &p.rules {
        let _ = writeln!(out, "  # {} request(s) observed.", r.requests);
        let _ = writeln!(out, "  - id: {}", r.id);
        let _ = writeln!(
            out,
            "    description: {}",
            q(&format!("What {} was observed doing.", r.principal))
        );
        let _ = writeln!(out, "    from:");
        let _ = writeln!(
            out,
            "      principals: {}",
            list(std::slice::from_ref(&r.principal))
        );
        if let Some(kind) = &r.kind {
            let _ = writeln!(out, "      kinds: [{kind}]");
        }
        if let Some(peer) = &r.peer {
            let _ = writeln!(out, "      peers: {}", list(std::slice::from_ref(peer)));
        }
        if let (Some(issuer), false) = (issuer, r.mtls_only()) {
            let _ = writeln!(out, "      issuers: {}", list(&[issuer.to_string()]));
        }
        let _ = writeln!(out, "    to:");
        for (methods, paths) in &r.clauses {
            let _ = writeln!(out, "      - methods: [{}]", methods.join(", "));
            let _ = writeln!(out, "        paths: {}", list(paths));
        }
        if r.scopes.is_empty() {
            let _ = writeln!(
                out,
                "    # No scope was carried by every request: add the ones this rule should require."
            );
        } else {
            let _ = writeln!(out, "    scopes: {}", list(&r.scopes));
        }
        if let Some(hop) = &r.hop {
            let _ = writeln!(out, "    when: {{hop: {hop}}}");
        }
        out.push('\n');
    }
    out
}

impl DraftRule {
    /// Whether the caller was identified by its mTLS certificate alone (the log's
    /// principal is then the peer's SPIFFE ID, and no scopes were carried: a token
    /// whose subject is its peer's SPIFFE ID carries them).
    fn mtls_only(&self) -> bool {
        self.peer.as_deref() == Some(self.principal.as_str()) && self.scopes.is_empty()
    }

    /// The suite's caller mapping.
    fn caller(&self, issuer: Option<&str>) -> String {
        self.caller_with(issuer, &self.scopes)
    }

    /// The suite's caller mapping, carrying `scopes`.
    fn caller_with(&self, issuer: Option<&str>, scopes: &[String]) -> String {
        if self.mtls_only() {
            return format!("{{peer: {}}}", q(&self.principal));
        }
        // The log does not record the issuer: the rule requires none unless --issuer.
        let issuer = issuer.unwrap_or("https://issuer.not-recorded.invalid");
        let mut out = format!("{{id: {}, issuer: {}", q(&self.principal), q(issuer));
        if let Some(kind) = &self.kind {
            let _ = write!(out, ", kind: {kind}");
        }
        if let Some(peer) = &self.peer {
            let _ = write!(out, ", peer: {}", q(peer));
        }
        if !scopes.is_empty() {
            let _ = write!(out, ", scopes: {}", list(scopes));
        }
        out.push('}');
        out
    }
}

/// The suite file: every observed (method, template) allowed by its rule, and for
/// each rule a method it was not seen using, and the other hop, denied.
pub(super) fn suite_yaml(p: &DraftPolicy, issuer: Option<&str>) -> String {
    let mut out = format!(
        "# Cases drafted by `hopwarden suggest` from the same observed requests.\nservice: {}\ncases:\n",
        q(&p.service)
    );
    let mut case = |name: String,
                    caller: &str,
                    hop: Option<&str>,
                    method: &str,
                    path: &str,
                    expect: String| {
        let hop = hop.map(|h| format!("hop: {h}, ")).unwrap_or_default();
        let _ = writeln!(out, "  - name: {}", q(&name));
        let _ = writeln!(out, "    caller: {caller}");
        let _ = writeln!(
            out,
            "    request: {{{hop}method: {method}, path: {}}}",
            q(path)
        );
        let _ = writeln!(out, "    expect: {expect}\n");
    };
    for r in &p.rules {
        let caller = r.caller(issuer);
        let hop = r.hop.as_deref();
        for (method, _, example, _) in &r.actions {
            let expect = format!("{{decision: allow, rule: {}, status: 200}}", r.id);
            case(
                format!("{}: {method} {example}", r.id),
                &caller,
                hop,
                method,
                example,
                expect,
            );
        }
        let Some((first_method, template, example, _)) = r.actions.first() else {
            continue;
        };
        let seen: BTreeSet<&str> = r
            .actions
            .iter()
            .filter(|(_, t, _, _)| t == template)
            .map(|(m, _, _, _)| m.as_str())
            .collect();
        let deny = "{decision: deny, status: 403, reason: no_matching_rule}".to_string();
        if let Some(other) = ["DELETE", "PATCH", "PUT", "POST", "GET"]
            .into_iter()
            .find(|m| !seen.contains(m))
        {
            let name = format!("{}: {other} {example} was not observed", r.id);
            case(name, &caller, hop, other, example, deny.clone());
        }
        if !r.scopes.is_empty() {
            // The same caller carrying none of the scopes the rule requires.
            let name = format!(
                "{}: {first_method} {example} without scopes {} is denied",
                r.id,
                r.scopes.join(" ")
            );
            let expect = format!(
                "{{decision: deny, rule: {}, status: 403, reason: insufficient_scope}}",
                r.id
            );
            let without = r.caller_with(issuer, &[]);
            case(name, &without, hop, first_method, example, expect);
        }
        if let Some(hop) = hop {
            let other = if hop == "mesh" { "gateway" } else { "mesh" };
            let name = format!(
                "{}: {first_method} {example} through the {other} was not observed",
                r.id
            );
            case(
                name,
                &caller,
                Some(other),
                first_method,
                example,
                deny.clone(),
            );
        }
    }
    out
}
