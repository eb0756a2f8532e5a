//! Policies: one YAML file per protected service, compiled once at load time.
//!
//! `spec` is what serde reads, `compile` validates it into [`ServicePolicy`]s,
//! `matcher` holds the precompiled patterns and `eval` answers one request.
//! A set either loads completely or not at all: the caller keeps the last good set.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod compile;
mod eval;
mod explain;
mod explain_delegated;
mod incremental;
mod index;
mod inspect;
mod matcher;
mod spec;

pub use compile::delegated::{ActingFor, Delegated, ACTOR_KIND};
pub use compile::{ActionClause, Callers, FromClause, Limit, Rule, ServicePolicy, When};
pub use eval::{EvalInput, Evaluation, RuleOutcome, Verdict};
pub use explain::{describe_action, describe_clause, ConditionTrace, Explanation, RuleTrace};
pub use matcher::{GrpcPattern, IdPattern, PathPattern, PatternError};
pub use spec::{
    ActingForSpec, ClauseSpec, Effect, FromSpec, LimitSpec, Mode, PolicySpec, RuleSpec, WhenSpec,
};

use crate::yaml::{Location, YamlError};

/// Every service's compiled policy, by service name.
#[derive(Debug, Default)]
pub struct PolicySet {
    services: BTreeMap<String, Arc<ServicePolicy>>,
    /// The files the set was loaded from, so a reload recompiles only what changed.
    files: std::collections::HashMap<PathBuf, incremental::SourceFile>,
}

impl PolicySet {
    /// Loads `*.yaml` / `*.yml` directly in `dir`, in file-name order.
    ///
    /// Skips names starting with `.` (Kubernetes ConfigMap mounts hold `..data`
    /// and `..<timestamp>` entries beside the real files) and `*_test.yaml` /
    /// `*_test.yml` (policy test suites live beside the policies).
    pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyErrors> {
        Self::reload_dir(dir, &PolicySet::empty())
    }

    /// Loads `dir` as [`PolicySet::load_dir`] does, compiling only the files whose
    /// contents differ from those `previous` was loaded from; every other service
    /// keeps `previous`'s compiled policy (and so its cached decisions).
    pub fn reload_dir(dir: &Path, previous: &PolicySet) -> Result<PolicySet, PolicyErrors> {
        let fail = |message: String| {
            PolicyErrors(vec![PolicyError {
                location: Some(Location::file_only(dir)),
                message,
            }])
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| fail(format!("cannot read policy directory: {e}")))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| fail(format!("cannot read policy directory: {e}")))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_policy_file(&name) {
                names.push(name);
            }
        }
        names.sort();
        let mut errors = Vec::new();
        let mut sources = Vec::with_capacity(names.len());
        for name in names {
            let path = dir.join(&name);
            // `metadata` follows symlinks: ConfigMap files are links into `..data/`.
            match std::fs::metadata(&path) {
                Ok(meta) if !meta.is_file() => continue,
                _ => {}
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => sources.push((path, text)),
                Err(e) => errors.push(PolicyError {
                    location: Some(Location::file_only(&path)),
                    message: format!("cannot read policy file: {e}"),
                }),
            }
        }
        match (Self::compile_reusing(&sources, previous), errors.is_empty()) {
            (Ok(set), true) => Ok(set),
            (Ok(_), false) => Err(PolicyErrors(errors)),
            (Err(PolicyErrors(more)), _) => {
                errors.extend(more);
                add_suite_name_hints(&mut errors);
                Err(PolicyErrors(errors))
            }
        }
    }

    /// Compiles policies from `(file, contents)` pairs, in the given order.
    pub fn from_sources(sources: &[(PathBuf, String)]) -> Result<PolicySet, PolicyErrors> {
        compile::compile_sources(sources)
            .map(|services| PolicySet {
                services,
                files: Default::default(),
            })
            .map_err(PolicyErrors)
    }

    /// A set with no services: every request is denied.
    pub fn empty() -> PolicySet {
        PolicySet::default()
    }

    /// The policy protecting `service`.
    pub fn get(&self, service: &str) -> Option<&Arc<ServicePolicy>> {
        self.services.get(service)
    }

    /// Every principal or peer id a rule names literally (no wildcard): the callers
    /// that keep their own metric label.
    pub fn named_principals(&self) -> std::collections::HashSet<String> {
        let mut names = std::collections::HashSet::new();
        for policy in self.services() {
            for rule in policy.rules() {
                if let compile::FromClause::Authenticated(callers) = &rule.from {
                    let ids = [&callers.principals, &callers.peers];
                    for pattern in ids.into_iter().flatten().flatten() {
                        if let Some(id) = pattern.exact() {
                            names.insert(id.to_string());
                        }
                    }
                }
            }
        }
        names
    }

    /// Every header hopwarden reads under these policies, sorted: its own inputs
    /// ([`OWN_INPUT_HEADERS`]) and every rule's `when.headers`. Envoy's ext_authz
    /// `allowed_headers` must keep all of them and the [`OWN_HEADER_PREFIX`] ones: a
    /// header Envoy leaves out cannot trigger a deny rule that reads it.
    ///
    /// [`OWN_INPUT_HEADERS`]: crate::request::OWN_INPUT_HEADERS
    /// [`OWN_HEADER_PREFIX`]: crate::request::OWN_HEADER_PREFIX
    pub fn read_headers(&self) -> std::collections::BTreeSet<&str> {
        let own = crate::request::OWN_INPUT_HEADERS.into_iter();
        let rules = self
            .services()
            .flat_map(|p| p.header_inputs().iter().map(String::as_str));
        own.chain(rules).collect()
    }

    /// All service policies, sorted by name.
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServicePolicy>> {
        self.services.values()
    }

    /// The number of services.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether there are no services.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

pub(crate) fn is_policy_file(name: &str) -> bool {
    !name.starts_with('.')
        && (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !is_suite_file(name)
}

/// `ledger.test.yaml` looks like a suite to a person but is read as a policy (and
/// fails as one): say what the name should be, once per such file with errors.
fn add_suite_name_hints(errors: &mut Vec<PolicyError>) {
    let mut hinted = Vec::new();
    for err in errors.iter() {
        let Some(file) = err.location.as_ref().map(|l| &l.file) else {
            continue;
        };
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(name) = name else { continue };
        let stem = name
            .strip_suffix(".test.yaml")
            .or_else(|| name.strip_suffix(".test.yml"));
        if let Some(stem) = stem {
            if !hinted.iter().any(|(f, _)| f == file) {
                hinted.push((file.clone(), format!("{stem}_test.yaml")));
            }
        }
    }
    for (file, want) in hinted {
        errors.push(PolicyError {
            location: Some(Location::file_only(&file)),
            message: format!(
                "read as a policy: policy test suites are named *_test.yaml (rename it to {want})"
            ),
        });
    }
}

/// A policy test suite (`hopwarden test`), which lives beside the policies.
pub(crate) fn is_suite_file(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with("_test.yaml") || name.ends_with("_test.yml"))
}

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Where: `file:line:column`, or the file alone when no position is known.
    pub location: Option<Location>,
    /// What is wrong, lowercase, naming the bad value.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(location) => write!(f, "{location}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

impl From<YamlError> for PolicyError {
    fn from(err: YamlError) -> Self {
        PolicyError {
            location: Some(err.location),
            message: err.message,
        }
    }
}

/// Every problem found while loading a policy set, across all files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{err}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

#[cfg(test)]
mod credentials_tests;
#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::{Principal, PrincipalKind};
    use crate::request::{Action, Hop};
    use std::collections::HashMap;

    pub(crate) const STS: &str = "https://sts.hopwarden.local";

    /// A caller with a verified token from our STS.
    pub(crate) fn token(id: &str, scopes: &[&str]) -> Principal {
        Principal {
            kind: PrincipalKind::Service,
            id: id.into(),
            issuer: Some(STS.into()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            claims: Default::default(),
            peer: None,
            delegation: None,
            api_key: None,
        }
    }

    /// A caller known only by its mTLS certificate.
    pub(crate) fn peer(id: &str) -> Principal {
        Principal::from_peer(id.parse().unwrap())
    }

    pub(crate) fn http(method: &str, path: &str) -> Action {
        Action {
            method: method.into(),
            path: path.into(),
            grpc: None,
        }
    }

    pub(crate) fn grpc(method: &str) -> Action {
        Action {
            method: "POST".into(),
            path: format!("/{method}"),
            grpc: Some(method.into()),
        }
    }

    pub(crate) fn eval(
        policy: &ServicePolicy,
        p: Option<&Principal>,
        hop: Hop,
        action: &Action,
    ) -> Evaluation {
        let headers = HashMap::new();
        policy.evaluate(&EvalInput {
            principal: p,
            hop,
            action,
            headers: &headers,
        })
    }

    pub(crate) fn allow(rule: &str) -> Evaluation {
        Evaluation::Allow { rule: rule.into() }
    }

    pub(crate) fn deny(rule: &str) -> Evaluation {
        Evaluation::Deny { rule: rule.into() }
    }

    pub(crate) fn short(rule: &str, required: &[&str]) -> Evaluation {
        let required = required.iter().map(|s| s.to_string()).collect();
        Evaluation::InsufficientScope {
            rule: rule.into(),
            required,
        }
    }

    const NO: Evaluation = Evaluation::NoMatch;
    const TD: &str = "spiffe://hopwarden.local/ns";

    fn examples() -> PolicySet {
        PolicySet::load_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies")))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn example_policies_load() {
        let set = examples();
        let names: Vec<&str> = set.services().map(|s| s.service()).collect();
        assert_eq!(names, ["catalog", "deploy", "email", "ledger", "media"]);
        assert_eq!(set.len(), 5);
        for service in set.services() {
            assert_eq!(service.audiences(), [service.service().to_string()]);
            assert!(service.header_inputs().is_empty());
            for rule in service.rules() {
                assert!(
                    rule.description().is_some_and(|d| !d.is_empty()),
                    "{}",
                    rule.id()
                );
            }
        }
        let ledger = set.get("ledger").unwrap();
        let ids: Vec<&str> = ledger.rules().map(Rule::id).collect();
        assert_eq!(
            ids,
            [
                "payments-never-refund",
                "payments-read-transactions",
                "reconciler-read-transactions",
                "customer-bff-reads-for-customers"
            ]
        );
        assert!(set.get("nope").is_none());
    }

    #[test]
    fn example_decisions() {
        let set = examples();
        let payments = token(&format!("{TD}/payments/sa/payments"), &["ledger.read"]);
        let payments_no_scope = token(&format!("{TD}/payments/sa/payments"), &[]);
        let reconciler = peer(&format!("{TD}/ledger/sa/reconciler"));
        let other_peer = peer(&format!("{TD}/ledger/sa/other"));
        let worker = token(
            &format!("{TD}/notifications/sa/notifications-worker"),
            &["email.send", "email.send.billing"],
        );
        let billing = token(&format!("{TD}/billing/sa/billing"), &["email.send.billing"]);
        let ci = token(&format!("{TD}/ci/sa/ci-deployer"), &["deploy.staging"]);
        let inventory = token(
            &format!("{TD}/inventory/sa/inventory-api"),
            &["catalog.read"],
        );
        let partner = token("partner:transcribe-co", &["media.transcribe"]);
        let mut partner_user = partner.clone();
        partner_user.kind = PrincipalKind::User;
        let mut partner_other_issuer = partner.clone();
        partner_other_issuer.issuer = Some("https://evil.example".into());
        let (gw, mesh) = (Hop::Gateway, Hop::Mesh);
        #[rustfmt::skip]
        let cases: &[(&str, Option<&Principal>, Hop, Action, Evaluation)] = &[
            ("ledger", Some(&payments), mesh, http("GET", "/transactions/42"), allow("payments-read-transactions")),
            ("ledger", Some(&payments), mesh, http("HEAD", "/transactions/42/status"), allow("payments-read-transactions")),
            ("ledger", Some(&payments), mesh, http("POST", "/transactions/42"), NO),
            ("ledger", Some(&payments), mesh, http("GET", "/transactions"), NO),
            ("ledger", Some(&payments_no_scope), mesh, http("GET", "/transactions/42"), short("payments-read-transactions", &["ledger.read"])),
            ("ledger", Some(&payments), mesh, http("POST", "/refunds"), deny("payments-never-refund")),
            ("ledger", Some(&payments), mesh, http("GET", "/refunds/7/items"), deny("payments-never-refund")),
            ("ledger", Some(&reconciler), mesh, http("GET", "/transactions/2024/06"), allow("reconciler-read-transactions")),
            ("ledger", Some(&reconciler), mesh, http("GET", "/transactions"), allow("reconciler-read-transactions")),
            ("ledger", Some(&reconciler), gw, http("GET", "/transactions/1"), NO),
            ("ledger", Some(&reconciler), mesh, http("DELETE", "/transactions/1"), NO),
            ("ledger", Some(&other_peer), mesh, http("GET", "/transactions/1"), NO),
            ("ledger", None, mesh, http("GET", "/transactions/1"), NO),
            ("email", Some(&worker), mesh, http("POST", "/send/generic"), allow("notifications-send-generic")),
            ("email", Some(&worker), mesh, http("POST", "/send/billing"), deny("notifications-no-billing-mail")),
            ("email", Some(&worker), mesh, http("POST", "/send/billing/receipt"), deny("notifications-no-billing-mail")),
            ("email", Some(&worker), mesh, http("GET", "/send/generic"), NO),
            ("email", Some(&billing), mesh, http("POST", "/send/billing"), allow("billing-send-billing")),
            ("email", Some(&billing), mesh, http("POST", "/send/generic"), NO),
            ("deploy", Some(&ci), mesh, http("POST", "/environments/staging/deployments"), allow("ci-deploy-staging")),
            ("deploy", Some(&ci), mesh, http("GET", "/environments/staging/deployments/17"), allow("ci-deploy-staging")),
            ("deploy", Some(&ci), mesh, http("GET", "/environments/staging/deployments"), NO),
            ("deploy", Some(&ci), mesh, http("POST", "/environments/production/deployments"), deny("ci-never-production")),
            ("deploy", Some(&ci), mesh, http("GET", "/environments/production"), deny("ci-never-production")),
            ("catalog", Some(&inventory), mesh, http("GET", "/products"), allow("inventory-read-products")),
            ("catalog", Some(&inventory), gw, http("GET", "/products/sku-1"), allow("inventory-read-products")),
            ("catalog", Some(&inventory), mesh, grpc("catalog.v1.Catalog/Query"), allow("inventory-read-products")),
            ("catalog", Some(&inventory), mesh, grpc("catalog.v1.Catalog/Delete"), NO),
            ("catalog", Some(&inventory), mesh, http("GET", "/admin/users"), deny("inventory-no-admin")),
            ("catalog", Some(&billing), mesh, http("GET", "/admin/users"), NO),
            ("catalog", Some(&billing), gw, http("GET", "/admin"), deny("no-admin-from-gateway")),
            ("catalog", None, gw, http("GET", "/admin/users"), deny("no-admin-from-gateway")),
            ("catalog", None, mesh, http("GET", "/products"), NO),
            ("media", Some(&partner), gw, http("GET", "/partners/transcribe-co/jobs/9/audio"), allow("partner-transcribe-jobs")),
            ("media", Some(&partner), gw, http("POST", "/partners/transcribe-co/jobs/9/transcript"), allow("partner-submit-transcript")),
            ("media", Some(&partner), mesh, http("GET", "/partners/transcribe-co/jobs/9"), NO),
            ("media", Some(&partner), gw, http("GET", "/partners/other-co/jobs/9"), NO),
            ("media", Some(&partner), gw, http("POST", "/partners/transcribe-co/jobs/9/audio"), NO),
            ("media", Some(&partner), gw, http("GET", "/exports/all.wav"), deny("partner-no-raw-audio-export")),
            ("media", Some(&partner_user), gw, http("GET", "/partners/transcribe-co/jobs"), NO),
            ("media", Some(&partner_other_issuer), gw, http("GET", "/partners/transcribe-co/jobs"), NO),
        ];
        for (service, principal, hop, action, want) in cases {
            let policy = set.get(service).unwrap();
            let got = eval(policy, *principal, *hop, action);
            assert_eq!(
                got,
                *want,
                "{service} {:?} {hop} {} {}",
                principal.map(|p| &p.id),
                action.method,
                action.path
            );
        }
    }

    #[test]
    fn load_dir_skips_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("b.yml", "service: b\n");
        write("a.yaml", "service: a\n");
        write(".hidden.yaml", "not: [valid");
        write("a_test.yaml", "tests: []\n");
        write("a_test.yml", "tests: []\n");
        write("notes.txt", "ignored");
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
        let set = PolicySet::load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = set.services().map(|s| s.service()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(set.get("a").unwrap().rules().next().is_none());

        write("c.yaml", "service: a\n");
        write("d.yaml", "service: d\nbogus: 1\n");
        let err = PolicySet::load_dir(dir.path()).unwrap_err().to_string();
        let a = dir.path().join("a.yaml");
        let c = dir.path().join("c.yaml");
        let d = dir.path().join("d.yaml");
        let want = format!(
            "{}:1:10: duplicate service \"a\" (also defined in {})\n{}:2:1: unknown field `bogus`, expected one of `service`, `audiences`, `mode`, `rules`, `limits`",
            c.display(), a.display(), d.display()
        );
        assert_eq!(err, want);
    }

    #[test]
    fn load_dir_missing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = PolicySet::load_dir(&missing).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(
            err.to_string().starts_with(&format!(
                "{}: cannot read policy directory: ",
                missing.display()
            )),
            "{err}"
        );
        assert!(PolicySet::empty().is_empty());
        assert_eq!(PolicySet::from_sources(&[]).unwrap().len(), 0);
    }

    #[test]
    fn error_display() {
        let e = PolicyError {
            location: None,
            message: "m".into(),
        };
        assert_eq!(e.to_string(), "m");
        let e = PolicyError {
            location: Some(Location::file_only(Path::new("p/a.yaml"))),
            message: "m".into(),
        };
        assert_eq!(e.to_string(), "p/a.yaml: m");
    }
}
