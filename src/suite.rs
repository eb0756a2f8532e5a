//! Policy test suites: `*_test.yaml` files beside the policies, run by `hopwarden test`.
//!
//! ```yaml
//! service: ledger                       # default service for the cases
//! cases:
//!   - name: payments reads a transaction
//!     caller: {id: "spiffe://…/payments", issuer: "https://sts…", scopes: [ledger.read]}
//!     request: {hop: mesh, method: GET, path: /transactions/42}
//!     expect: {decision: allow, rule: payments-read-transactions, status: 200}
//! ```
//! A case is answered exactly as the server would answer it once the caller is
//! authenticated: the path through [`AuthzRequest::action`], the rules through the
//! compiled policy, the status through [`crate::engine::to_decision`]. `mode: dry-run`
//! is ignored: a suite checks what the policy enforces with every rule switched on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod spec;

pub use spec::{CallerSpec, CaseSpec, ExpectSpec, Expected, PrincipalSpec, RequestSpec, SuiteSpec};

use crate::decision::{Decision, DenyReason};
use crate::engine::to_decision;
use crate::policy::{EvalInput, PolicySet};
use crate::principal::actor::{Actor, Delegation};
use crate::principal::{Principal, PrincipalKind, SpiffeId};
use crate::request::{AuthzRequest, Hop};
use crate::yaml::{self, Location};

/// Deny reasons a case can expect (those a policy evaluation can produce).
const REASONS: [&str; 5] = [
    "bad_request",
    "missing_credential",
    "insufficient_scope",
    "deny_rule",
    "no_matching_rule",
];

/// A problem in a suite file, with its place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct SuiteError {
    /// Where.
    pub location: Location,
    /// What is wrong, naming the value.
    pub message: String,
}

/// One validated case.
#[derive(Debug)]
pub struct Case {
    /// The case's name.
    pub name: String,
    /// The destination service (it has a policy).
    pub service: String,
    /// The caller; `None` is anonymous.
    pub principal: Option<Principal>,
    /// The hop.
    pub hop: Hop,
    /// The request, as the engine would see it.
    pub request: AuthzRequest,
    /// The expected answer.
    pub expect: ExpectSpec,
}

/// A loaded suite file.
#[derive(Debug)]
pub struct Suite {
    /// The file.
    pub path: PathBuf,
    /// Its cases, in file order.
    pub cases: Vec<Case>,
}

/// `*_test.yaml` / `*_test.yml` files directly in `dir`, sorted (dotfiles skipped).
pub fn find_suites(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if crate::policy::is_suite_file(&name) {
            found.push(dir.join(name));
        }
    }
    found.sort();
    Ok(found)
}

impl Suite {
    /// Reads and validates `path` against the policies it tests.
    pub fn load(path: &Path, policies: &PolicySet) -> Result<Suite, Vec<SuiteError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![SuiteError {
                location: Location::file_only(path),
                message: format!("cannot read suite: {e}"),
            }]
        })?;
        Suite::from_str(&text, path, policies)
    }

    /// Validates a suite's text (the contents of `path`).
    pub fn from_str(
        text: &str,
        path: &Path,
        policies: &PolicySet,
    ) -> Result<Suite, Vec<SuiteError>> {
        let spec: SuiteSpec = yaml::from_str(text, path).map_err(|e| {
            vec![SuiteError {
                location: e.location,
                message: e.message,
            }]
        })?;
        let mut cx = Checker {
            path,
            text,
            policies,
            errors: Vec::new(),
            cursor: 0,
        };
        if let Some(service) = &spec.service {
            if policies.get(service).is_none() {
                let at = yaml::find_value(text, "service", service, 0);
                cx.error(
                    at,
                    format!("unknown service {service:?} (no policy file defines it)"),
                );
            }
        }
        if spec.cases.is_empty() {
            let at = yaml::find_key(text, "cases", 0, text.len());
            cx.error(at, "cases is empty".into());
        }
        let mut names = BTreeSet::new();
        let mut cases = Vec::with_capacity(spec.cases.len());
        for case in spec.cases {
            let start = yaml::find_value(text, "name", &case.name, cx.cursor);
            if let Some(s) = start {
                cx.cursor = s + case.name.len();
            }
            if !names.insert(case.name.clone()) {
                cx.error(start, format!("case {:?} is named twice", case.name));
            }
            if let Some(case) = cx.case(case, spec.service.as_deref(), start) {
                cases.push(case);
            }
        }
        if cx.errors.is_empty() {
            Ok(Suite {
                path: path.to_path_buf(),
                cases,
            })
        } else {
            Err(cx.errors)
        }
    }
}

struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    policies: &'a PolicySet,
    errors: Vec<SuiteError>,
    /// Where the current case starts; values are searched from here.
    cursor: usize,
}

impl Checker<'_> {
    fn error(&mut self, at: Option<usize>, message: String) {
        let location = match at {
            Some(offset) => Location::new(self.path, yaml::position(self.text, offset)),
            None => Location::file_only(self.path),
        };
        self.errors.push(SuiteError { location, message });
    }

    /// Where `key: value` is written in the current case, else where the case starts.
    fn at_value(&self, key: &str, value: &str, case_start: Option<usize>) -> Option<usize> {
        yaml::find_value(
            self.text,
            key,
            value,
            self.cursor.min(case_start.unwrap_or(0)),
        )
        .or(case_start)
    }

    fn at_key(&self, key: &str, case_start: Option<usize>) -> Option<usize> {
        let from = case_start.unwrap_or(0);
        yaml::find_key(self.text, key, from, self.text.len()).or(case_start)
    }

    fn case(
        &mut self,
        spec: CaseSpec,
        default: Option<&str>,
        start: Option<usize>,
    ) -> Option<Case> {
        let name = spec.name;
        let errors_before = self.errors.len();
        let service = match spec.request.service.as_deref().or(default) {
            Some(s) => s.to_string(),
            None => {
                let message = format!(
                    "case {name:?}: no service (set `service:` at the top or in the request)"
                );
                self.error(start, message);
                return None;
            }
        };
        let Some(policy) = self.policies.get(&service) else {
            if spec.request.service.is_some() {
                let at = self.at_value("service", &service, start);
                self.error(
                    at,
                    format!(
                        "case {name:?}: unknown service {service:?} (no policy file defines it)"
                    ),
                );
            }
            return None;
        };
        let principal = match spec.caller {
            CallerSpec::Anonymous => None,
            CallerSpec::Principal(p) => self.principal(&name, p, start),
        };
        let expect = spec.expect;
        if let Some(rule) = &expect.rule {
            if !policy.rules().any(|r| r.id() == rule) {
                let at = self.at_value("rule", rule, start);
                self.error(
                    at,
                    format!("case {name:?}: service {service:?} has no rule {rule:?}"),
                );
            }
        }
        for limit in expect.limits.iter().flatten() {
            if !policy.limits().iter().any(|l| l.id() == limit) {
                let at = self
                    .at_value("limits", limit, start)
                    .or(self.at_key("limits", start));
                self.error(
                    at,
                    format!("case {name:?}: service {service:?} has no limit {limit:?}"),
                );
            }
        }
        let status_ok = match (expect.decision, expect.status) {
            (_, None) => true,
            (Expected::Allow, Some(s)) => s == 200,
            (Expected::Deny, Some(s)) => matches!(s, 400 | 401 | 403),
        };
        if !status_ok {
            let at = self.at_key("status", start);
            let message = format!(
                "case {name:?}: status {} cannot go with {} (allow is 200; deny is 400, 401 or 403)",
                expect.status.unwrap_or_default(),
                expected_str(expect.decision)
            );
            self.error(at, message);
        }
        if let Some(reason) = &expect.reason {
            if expect.decision == Expected::Allow || !REASONS.contains(&reason.as_str()) {
                let at = self.at_value("reason", reason, start);
                let message = format!(
                    "case {name:?}: reason {reason:?} is not a deny reason a policy can give (one of {})",
                    REASONS.join(", ")
                );
                self.error(at, message);
            }
        }
        let request = AuthzRequest {
            service: Some(service.clone()),
            method: spec.request.method.unwrap_or_else(|| "GET".into()),
            path: spec.request.path,
            headers: spec
                .request
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            source_principal: principal
                .as_ref()
                .and_then(|p: &Principal| p.peer.as_ref().map(|s| s.to_string())),
            ..Default::default()
        };
        (self.errors.len() == errors_before).then(|| Case {
            name,
            service,
            principal,
            hop: spec.request.hop.unwrap_or(Hop::Mesh),
            request,
            expect,
        })
    }

    fn principal(
        &mut self,
        name: &str,
        spec: PrincipalSpec,
        start: Option<usize>,
    ) -> Option<Principal> {
        let peer = match &spec.peer {
            None => None,
            Some(raw) => match raw.parse::<SpiffeId>() {
                Ok(id) => Some(id),
                Err(e) => {
                    let at = self.at_value("peer", raw, start);
                    self.error(at, format!("case {name:?}: peer: {e}"));
                    return None;
                }
            },
        };
        let mut actors = Vec::with_capacity(spec.actors.len());
        for sub in &spec.actors {
            if sub.is_empty() || sub.chars().any(char::is_control) {
                let at = self.at_key("actors", start);
                self.error(
                    at,
                    format!("case {name:?}: actor {sub:?} is empty or has a control character"),
                );
                return None;
            }
            actors.push(Actor {
                sub: sub.clone(),
                iss: None,
            });
        }
        let delegation = Delegation::new(actors).map(Arc::new);
        match (spec.id, spec.issuer, peer) {
            (Some(id), None, peer)
                if spec.api_key.is_some() && spec.claims.is_empty() && delegation.is_none() =>
            {
                Some(Principal {
                    kind: spec.kind.unwrap_or(PrincipalKind::Service),
                    id,
                    issuer: None,
                    scopes: spec.scopes,
                    claims: Default::default(),
                    peer,
                    delegation: None,
                    api_key: spec.api_key.map(|k| k.as_str().into()),
                })
            }
            (Some(id), Some(issuer), peer) if spec.api_key.is_none() => Some(Principal {
                kind: spec.kind.unwrap_or(PrincipalKind::Service),
                id,
                issuer: Some(issuer),
                scopes: spec.scopes,
                claims: spec.claims.into(),
                peer,
                delegation,
                api_key: None,
            }),
            // DESIGN, Identities: with no token the caller is the peer, kind service,
            // and has no scopes or claims.
            (None, None, Some(peer))
                if spec.scopes.is_empty()
                    && spec.claims.is_empty()
                    && delegation.is_none()
                    && spec.kind.is_none_or(|k| k == PrincipalKind::Service) =>
            {
                Some(Principal::from_peer(peer))
            }
            _ => {
                let at = self.at_key("caller", start);
                let message = format!(
                    "case {name:?}: a caller is `anonymous`, a token caller (`id` and `issuer`, with optional kind, scopes, claims, peer, actors), an mTLS-only caller (`peer` alone) or an API key caller (`id` and `api_key`, with optional kind, scopes, peer)"
                );
                self.error(at, message);
                None
            }
        }
    }
}

fn expected_str(e: Expected) -> &'static str {
    match e {
        Expected::Allow => "allow",
        Expected::Deny => "deny",
    }
}

/// The decision the server would give for a case once the caller is authenticated.
pub fn decide(policies: &PolicySet, case: &Case) -> Decision {
    let Some(policy) = policies.get(&case.service) else {
        return Decision::deny(DenyReason::NoPolicy);
    };
    // The same canonicalisation the engine applies: a non-canonical path is a
    // `bad_request` denial before any rule is read.
    let Ok(action) = case.request.action() else {
        return Decision::deny(DenyReason::BadRequest);
    };
    let input = EvalInput {
        principal: case.principal.as_ref(),
        hop: case.hop,
        action: &action,
        headers: &case.request.headers,
    };
    let mut decision = to_decision(policy.evaluate_enforced(&input), case.principal.as_ref());
    if let Decision::Allow(allowed) = &mut decision {
        allowed.limits = policy.limits_for(&allowed.rule, &input);
    }
    decision
}

/// The ids of the limits a decision counts against, sorted (none for a denial).
fn limit_ids(d: &Decision) -> Vec<&str> {
    let mut ids: Vec<&str> = match d {
        Decision::Allow(a) => a.limits.iter().map(|h| &*h.limit).collect(),
        Decision::Deny(_) => Vec::new(),
    };
    ids.sort_unstable();
    ids
}

/// `allow (rule r, status 200)` / `deny (rule r, status 403, reason deny_rule)`.
pub fn describe_decision(d: &Decision) -> String {
    match d {
        Decision::Allow(a) => format!("allow (rule {}, status 200)", a.rule),
        Decision::Deny(d) => {
            let rule = d
                .rule
                .as_deref()
                .map(|r| format!("rule {r}, "))
                .unwrap_or_default();
            let detail = d
                .reason
                .detail()
                .map(|x| format!(": {x}"))
                .unwrap_or_default();
            format!(
                "deny ({rule}status {}, reason {}{detail})",
                d.reason.status().code(),
                d.reason.as_str()
            )
        }
    }
}

fn describe_expect(e: &ExpectSpec) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &e.rule {
        parts.push(format!("rule {r}"));
    }
    if let Some(s) = e.status {
        parts.push(format!("status {s}"));
    }
    if let Some(r) = &e.reason {
        parts.push(format!("reason {r}"));
    }
    if let Some(l) = &e.limits {
        parts.push(format!("limits [{}]", l.join(", ")));
    }
    let d = expected_str(e.decision);
    if parts.is_empty() {
        d.to_string()
    } else {
        format!("{d} ({})", parts.join(", "))
    }
}

/// Why a decision does not meet the expectation, if it does not.
pub fn mismatch(expect: &ExpectSpec, got: &Decision) -> Option<String> {
    let status = got.http_status();
    let (allowed, reason) = match got {
        Decision::Allow(_) => (true, None),
        Decision::Deny(d) => (false, Some(d.reason.as_str())),
    };
    let ok = (expect.decision == Expected::Allow) == allowed
        && expect.rule.as_deref().is_none_or(|r| got.rule() == Some(r))
        && expect.status.is_none_or(|s| s == status)
        && expect.reason.as_deref().is_none_or(|r| reason == Some(r));
    let limits_ok = expect.limits.as_ref().is_none_or(|want| {
        let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
        want.sort_unstable();
        want == limit_ids(got)
    });
    (!(ok && limits_ok)).then(|| {
        let limits = match &expect.limits {
            Some(_) => format!(", limits [{}]", limit_ids(got).join(", ")),
            None => String::new(),
        };
        format!(
            "expected {}, got {}{limits}",
            describe_expect(expect),
            describe_decision(got)
        )
    })
}

/// One case's result.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Why it failed; `None` when it passed.
    pub failure: Option<String>,
}

/// A suite file's case results, or why it did not load.
pub type SuiteResult = Result<Vec<CaseResult>, Vec<SuiteError>>;

/// The results of every suite in a directory.
#[derive(Debug, Default)]
pub struct Report {
    /// Each suite file with its results, or its load errors.
    pub files: Vec<(PathBuf, SuiteResult)>,
    /// `(service, rule)` pairs that decided at least one case.
    pub exercised: BTreeSet<(String, String)>,
}

impl Report {
    /// Loads and runs every suite in `dir` against `policies`.
    pub fn run_dir(dir: &Path, policies: &PolicySet) -> std::io::Result<Report> {
        let mut report = Report::default();
        for path in find_suites(dir)? {
            let result = Suite::load(&path, policies).map(|suite| report.run(policies, &suite));
            report.files.push((path, result));
        }
        Ok(report)
    }

    fn run(&mut self, policies: &PolicySet, suite: &Suite) -> Vec<CaseResult> {
        suite
            .cases
            .iter()
            .map(|case| {
                let got = decide(policies, case);
                if let Some(rule) = got.rule() {
                    self.exercised
                        .insert((case.service.clone(), rule.to_string()));
                }
                CaseResult {
                    name: case.name.clone(),
                    failure: mismatch(&case.expect, &got),
                }
            })
            .collect()
    }

    /// Cases that passed and failed.
    pub fn counts(&self) -> (usize, usize) {
        let results = self
            .files
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flatten();
        results.fold((0, 0), |(p, f), r| match r.failure {
            None => (p + 1, f),
            Some(_) => (p, f + 1),
        })
    }

    /// Whether any suite failed to load.
    pub fn has_load_errors(&self) -> bool {
        self.files.iter().any(|(_, r)| r.is_err())
    }

    /// Rules no case's decision came from, as `(service, rule)`, in policy order.
    pub fn unexercised(&self, policies: &PolicySet) -> Vec<(String, String)> {
        policies
            .services()
            .flat_map(|p| {
                p.rules()
                    .map(move |r| (p.service().to_string(), r.id().to_string()))
            })
            .filter(|key| !self.exercised.contains(key))
            .collect()
    }
}
