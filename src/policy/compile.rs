//! Policy specs -> compiled, validated [`ServicePolicy`]s.
//!
//! All validation lives here, and every problem in every file is collected so
//! that `hopwarden validate` can list them in one run. Semantic errors are
//! pointed at the offending value in the file with [`crate::yaml`]'s locators.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::matcher::{GrpcPattern, IdPattern, PathPattern, PatternError};
use super::spec::{ClauseSpec, Effect, FromSpec, LimitSpec, Mode, PolicySpec, RuleSpec, WhenSpec};
use super::PolicyError;
use crate::principal::{CredentialType, PrincipalKind};
use crate::request::Hop;
use crate::yaml::{self, Location};
use delegated::Delegated;

/// The compiled rules protecting one service.
#[derive(Debug)]
pub struct ServicePolicy {
    pub(super) service: String,
    pub(super) audiences: Vec<String>,
    /// The policy-level `mode`.
    pub(super) mode: Mode,
    /// Deny rules in file order: any match denies.
    pub(super) deny: Vec<Rule>,
    /// Allow rules in file order: the first full match allows.
    pub(super) allow: Vec<Rule>,
    pub(super) header_inputs: Vec<String>,
    /// Rate limits, in file order.
    pub(super) limits: Vec<limits::Limit>,
    /// Principal and peer ids the rules and limits name literally: the callers with
    /// buckets of their own.
    pub(super) named_callers: HashSet<Arc<str>>,
    /// The allow rules that name limits, by id (index in `allow`): an allowed
    /// request finds its rule's limits without a scan of every rule.
    pub(super) naming_limits: HashMap<Arc<str>, usize>,
    /// The rules by caller, to evaluate without scanning them all (`None`: scan).
    pub(super) index: Option<super::index::PolicyIndex>,
    /// Unique per compiled policy; see [`ServicePolicy::revision`].
    pub(super) revision: u64,
}

impl ServicePolicy {
    /// The protected service's name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Token audiences the service accepts (default: its own name).
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Lowercase header names read by any rule's `when.headers`, sorted; the
    /// decision cache key must include their values.
    pub fn header_inputs(&self) -> &[String] {
        &self.header_inputs
    }

    /// Deny rules, then allow rules, each in file order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.deny.iter().chain(self.allow.iter())
    }

    /// Whether the whole policy is in `mode: dry-run`: the engine then turns a final
    /// denial into an allow marked with `x-hopwarden-dry-run`.
    pub fn is_dry_run(&self) -> bool {
        self.mode == Mode::DryRun
    }

    /// The policy-level mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub(super) id: Arc<str>,
    pub(super) description: Option<Box<str>>,
    pub(super) effect: Effect,
    /// `DryRun` only on deny rules (checked at compile time).
    pub(super) mode: Mode,
    pub(super) from: FromClause,
    /// `None`: any action; otherwise any clause must match.
    /// Shared by every rule of the file with the same `to` (see `compile/shared.rs`).
    pub(super) to: Option<Arc<[ActionClause]>>,
    /// Shared by every rule of the file with the same scopes.
    pub(super) scopes: Arc<[String]>,
    pub(super) when: When,
    /// Indices into the policy's limits that this allow rule names.
    pub(super) limits: Box<[usize]>,
}

impl Rule {
    /// The rule's id, unique across the policy set.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Allow or deny.
    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// Enforced, or (deny rules only) dry-run.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Who the rule is about.
    pub fn from(&self) -> &FromClause {
        &self.from
    }

    /// The actions it covers; `None` means every action.
    pub fn to(&self) -> Option<&[ActionClause]> {
        self.to.as_deref()
    }

    /// Its `when` conditions.
    pub fn when(&self) -> &When {
        &self.when
    }

    /// Scopes an allow rule requires (all of them).
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Why the rule exists, if the author said.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
}

/// Who a rule is about.
#[derive(Debug)]
pub enum FromClause {
    /// No `from`: any authenticated caller; a deny rule also matches anonymous callers.
    Unrestricted,
    /// `anonymous: true`: only callers with no credential at all.
    Anonymous,
    /// An authenticated caller that satisfies every named condition.
    Authenticated(Callers),
}

/// The conditions of a `from` block; `None` means "not named".
#[derive(Debug, Default)]
pub struct Callers {
    // Boxed slices, not lists: a compiled rule never grows, and 100,000 of them
    // each save a word a field.
    pub(super) principals: Option<Box<[IdPattern]>>,
    pub(super) peers: Option<Box<[IdPattern]>>,
    pub(super) kinds: Option<Box<[PrincipalKind]>>,
    pub(super) issuers: Option<Box<[String]>>,
    /// Delegated tokens: direct callers only, any party, or actors acting for someone.
    pub(super) delegated: Delegated,
    pub(super) credentials: Option<Box<[CredentialType]>>,
}

/// One `to` clause: methods (if named) AND (a path OR a gRPC pattern, if named).
#[derive(Debug)]
pub struct ActionClause {
    /// Uppercase methods; `None` means any method.
    pub(super) methods: Option<Box<[String]>>,
    pub(super) paths: Box<[PathPattern]>,
    pub(super) grpc: Box<[GrpcPattern]>,
}

/// The `when` conditions; each present one must hold.
#[derive(Debug, Default)]
pub struct When {
    pub(super) hop: Option<Hop>,
    /// Lowercase header name -> accepted values.
    pub(super) headers: Box<[(String, Vec<String>)]>,
    /// Claim name -> accepted values.
    pub(super) claims: Box<[(String, Vec<String>)]>,
}

/// Methods from RFC 9110 section 9 and PATCH (RFC 5789). A misspelt method in a
/// deny rule would never match, so unknown tokens are refused rather than kept.
const KNOWN_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Headers a rule may not read: credentials must not become cache-key inputs or
/// rule conditions, and `x-hopwarden-*` are headers we set ourselves.
fn forbidden_header(name: &str) -> bool {
    matches!(name, "authorization" | "cookie" | "proxy-authorization")
        || name.starts_with(crate::request::OWN_HEADER_PREFIX)
}

/// Compiles every source, collecting all errors across all files.
pub(super) fn compile_sources(
    sources: &[(PathBuf, String)],
) -> Result<BTreeMap<String, Arc<ServicePolicy>>, Vec<PolicyError>> {
    let mut errors = Vec::new();
    let mut services: BTreeMap<String, Arc<ServicePolicy>> = BTreeMap::new();
    // Every file's service name, even from files with errors, so a clash is
    // reported in the same run as the other problems.
    let mut service_files: HashMap<String, PathBuf> = HashMap::new();
    let mut rule_ids: HashMap<Arc<str>, Arc<Path>> = HashMap::new();
    for (file, text) in sources {
        let Some((mut cx, policy)) = compile_file(file, text, &mut rule_ids, &mut errors) else {
            continue;
        };
        if let Some(first) = service_files.get(&policy.service) {
            let at = yaml::find_value(text, "service", &policy.service, 0);
            let message = format!(
                "duplicate service {:?} (also defined in {})",
                policy.service,
                first.display()
            );
            cx.error(at, message);
        } else {
            service_files.insert(policy.service.clone(), file.clone());
        }
        if cx.errors.is_empty() {
            services.insert(policy.service.clone(), Arc::new(policy));
        } else {
            errors.append(&mut cx.errors);
        }
    }
    if errors.is_empty() {
        Ok(services)
    } else {
        Err(errors)
    }
}

/// Compiles one file: its rules on every core when nothing in it is wrong (see
/// `compile/parts.rs`), else one after another, to say where each error is.
/// `None`: the file is not a policy (its error is in `errors`).
fn compile_file<'a>(
    file: &'a Path,
    text: &'a str,
    rule_ids: &mut HashMap<Arc<str>, Arc<Path>>,
    errors: &mut Vec<PolicyError>,
) -> Option<(FileContext<'a>, ServicePolicy)> {
    let read =
        yaml::from_str_listed::<PolicySpec, RuleSpec, _>(text, file, "rules", |first, specs| {
            parts::compile(file, text, first, specs)
        });
    let spec = match read {
        Ok((spec, None)) => spec,
        Ok((spec, Some(parts))) => {
            if let Some(done) = parts::assemble(file, text, spec, parts, rule_ids) {
                return Some(done);
            }
            // Something is wrong: read again, for the rules one after another.
            let again = yaml::from_str_listed::<PolicySpec, RuleSpec, _>(
                text,
                file,
                "rules",
                |_, specs| specs,
            );
            match again {
                Ok((mut spec, parts)) => {
                    if let Some(parts) = parts {
                        spec.rules = parts.into_iter().flatten().collect();
                    }
                    spec
                }
                Err(err) => {
                    errors.push(err.into());
                    return None;
                }
            }
        }
        Err(err) => {
            errors.push(err.into());
            return None;
        }
    };
    let mut cx = FileContext::new(file, text, &spec.rules, &spec.limits);
    let policy = cx.policy(spec, rule_ids);
    Some((cx, policy))
}

/// Rules compiled in file order, and the limits each names.
#[derive(Default)]
struct CompiledRules {
    rules: Vec<Rule>,
    /// `(rule index, id, effect, limit ids)` of each rule with `limits:`.
    named_limits: Vec<(usize, String, Effect, Vec<String>)>,
}

/// One file being compiled: its text, for locating values, and its errors.
struct FileContext<'a> {
    file: &'a Path,
    text: &'a str,
    /// Byte range of each rule, from its `id:` to the next rule's, where found.
    regions: Vec<(usize, usize)>,
    errors: Vec<PolicyError>,
    shared: shared::Shared,
    /// Only whether there is an error matters (see [`FileContext::quick`]).
    quick: bool,
}

impl<'a> FileContext<'a> {
    fn new(file: &'a Path, text: &'a str, rules: &[RuleSpec], limits: &[LimitSpec]) -> Self {
        // Rules' regions, then limits': each from its `id:` to the next item's.
        let mut starts = Vec::with_capacity(rules.len() + limits.len());
        let ids = [
            (
                "rules",
                rules.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ),
            ("limits", limits.iter().map(|l| l.id.as_str()).collect()),
        ];
        for (key, ids) in ids {
            let mut cursor = top_level_key(text, key).unwrap_or(0);
            for id in ids {
                let start = yaml::find_value(text, "id", id, cursor);
                if let Some(s) = start {
                    cursor = s + id.len();
                }
                starts.push(start.unwrap_or(cursor));
            }
        }
        let mut sorted = starts.clone();
        sorted.sort_unstable();
        // A binary search, not a scan: a scan per rule was quadratic, minutes of
        // load at 100,000 rules.
        let regions = starts
            .iter()
            .map(|&s| {
                let end = sorted.get(sorted.partition_point(|&n| n <= s)).copied();
                (s, end.unwrap_or(text.len()))
            })
            .collect();
        FileContext {
            file,
            text,
            regions,
            errors: Vec::new(),
            shared: shared::Shared::default(),
            quick: false,
        }
    }

    /// A context that only tells whether there is an error: no rule's place is
    /// known (so locating an error searches the whole file), and compiling stops
    /// at the first error (see `compile/parts.rs`).
    fn quick(file: &'a Path, text: &'a str) -> Self {
        FileContext {
            file,
            text,
            regions: Vec::new(),
            errors: Vec::new(),
            shared: shared::Shared::default(),
            quick: true,
        }
    }

    fn error(&mut self, at: Option<usize>, message: String) {
        let location = match at {
            Some(offset) => Location::new(self.file, yaml::position(self.text, offset)),
            None => Location::file_only(self.file),
        };
        self.errors.push(PolicyError {
            location: Some(location),
            message,
        });
    }

    fn region(&self, rule: usize) -> (usize, usize) {
        self.regions
            .get(rule)
            .copied()
            .unwrap_or((0, self.text.len()))
    }

    /// Where `value` is written in rule `rule` (or anywhere in the file).
    fn value_in(&self, rule: usize, value: &str) -> Option<usize> {
        let (from, to) = self.region(rule);
        yaml::find_token(self.text, value, from, to)
            .next()
            .or_else(|| yaml::find_token(self.text, value, 0, self.text.len()).next())
    }

    /// Where `key:` is written in rule `rule`, else the rule's id.
    fn key_in(&self, rule: usize, key: &str) -> Option<usize> {
        let (from, to) = self.region(rule);
        yaml::find_key(self.text, key, from, to).or(Some(from))
    }

    fn pattern_error(&mut self, rule: usize, err: PatternError) {
        let at = self.value_in(rule, &err.pattern);
        self.error(at, err.to_string());
    }

    /// Compiles `spec`, one rule after another, each error in its place.
    fn policy(
        &mut self,
        mut spec: PolicySpec,
        rule_ids: &mut HashMap<Arc<str>, Arc<Path>>,
    ) -> ServicePolicy {
        let audiences = self.header(&spec);
        let specs = std::mem::take(&mut spec.rules);
        let rules = self.rules(0, specs, Some(rule_ids));
        self.assemble(spec, audiences, rules)
    }

    /// Checks the service name and audiences; answers the audiences.
    fn header(&mut self, spec: &PolicySpec) -> Vec<String> {
        if !is_name(&spec.service, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit()
        }) {
            let at = yaml::find_value(self.text, "service", &spec.service, 0);
            let message = format!(
                "invalid service name {:?}: use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit",
                spec.service
            );
            self.error(at, message);
        }
        match &spec.audiences {
            None => vec![spec.service.clone()],
            Some(list) => {
                if list.is_empty() {
                    let at = yaml::find_key(self.text, "audiences", 0, self.text.len());
                    self.error(
                        at,
                        "audiences is empty; omit it to accept the service name".into(),
                    );
                }
                for aud in list.iter().filter(|a| a.trim().is_empty()) {
                    let at = yaml::find_key(self.text, "audiences", 0, self.text.len());
                    self.error(at, format!("empty audience {aud:?}"));
                }
                list.clone()
            }
        }
    }

    /// Compiles `specs`, rules `first..` of the file. With `rule_ids`, each id is
    /// checked against (and added to) the set's; without, the caller checks them.
    fn rules(
        &mut self,
        first: usize,
        specs: Vec<RuleSpec>,
        mut rule_ids: Option<&mut HashMap<Arc<str>, Arc<Path>>>,
    ) -> CompiledRules {
        let file: Arc<Path> = Arc::from(self.file);
        let mut out = CompiledRules {
            rules: Vec::with_capacity(specs.len()),
            named_limits: Vec::new(),
        };
        for (n, mut rule) in specs.into_iter().enumerate() {
            let index = first + n;
            if let Some(names) = rule.limits.take() {
                out.named_limits
                    .push((index, rule.id.clone(), rule.effect, names));
            }
            let rule = self.rule(index, rule, rule_ids.as_deref_mut(), &file);
            out.rules.push(rule);
            if self.quick && !self.errors.is_empty() {
                break;
            }
        }
        out
    }

    /// The service's policy from its compiled rules: its limits, which of them
    /// each rule counts against, and the index.
    fn assemble(
        &mut self,
        spec: PolicySpec,
        audiences: Vec<String>,
        compiled: CompiledRules,
    ) -> ServicePolicy {
        let mut limits = self.limits(&spec.service, compiled.rules.len(), spec.limits);
        let mut attached = self.attach(compiled.named_limits, &mut limits);
        // Exact sizes: a doubling list of 100,000 rules leaves a quarter unused.
        let rules = compiled.rules;
        let denies = rules.iter().filter(|r| r.effect == Effect::Deny).count();
        let mut deny = Vec::with_capacity(denies);
        let mut allow = Vec::with_capacity(rules.len() - denies);
        for (index, mut rule) in rules.into_iter().enumerate() {
            match rule.effect {
                Effect::Deny => deny.push(rule),
                Effect::Allow => {
                    if let Some(named) = attached.remove(&index) {
                        rule.limits = named.into();
                    }
                    allow.push(rule);
                }
            }
        }
        let naming_limits = allow
            .iter()
            .enumerate()
            .filter(|(_, rule)| !rule.limits.is_empty())
            .map(|(i, rule)| (rule.id.clone(), i))
            .collect();
        let selectors = limits.iter().map(|l| &l.selector);
        let named_callers = limits::named_callers(deny.iter().chain(allow.iter()).chain(selectors));
        let mut header_inputs: Vec<String> = deny
            .iter()
            .chain(allow.iter())
            .chain(limits.iter().map(|l| &l.selector))
            .flat_map(|r| r.when.headers.iter().map(|(name, _)| name.clone()))
            .collect();
        header_inputs.sort();
        header_inputs.dedup();
        let index = super::index::PolicyIndex::build(&deny, &allow);
        ServicePolicy {
            service: spec.service,
            audiences,
            mode: spec.mode,
            deny,
            allow,
            header_inputs,
            index,
            revision: super::incremental::next_revision(),
            limits,
            named_callers,
            naming_limits,
        }
    }

    fn rule(
        &mut self,
        index: usize,
        spec: RuleSpec,
        rule_ids: Option<&mut HashMap<Arc<str>, Arc<Path>>>,
        file: &Arc<Path>,
    ) -> Rule {
        let at_id = Some(self.region(index).0);
        // One string for the rule, the set's id check and the index's answers.
        let id: Arc<str> = spec.id.into();
        if !is_name(&id, |b| b.is_ascii_alphanumeric()) {
            let message = format!(
                "invalid rule id {id:?}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
            );
            self.error(at_id, message);
        }
        if let Some(rule_ids) = rule_ids {
            if let Some(first) = rule_ids.get(&id) {
                let message = format!(
                    "duplicate rule id {id:?} (first defined in {})",
                    first.display()
                );
                self.error(at_id, message);
            } else {
                rule_ids.insert(id.clone(), file.clone());
            }
        }
        let deny = spec.effect == Effect::Deny;
        let from = self.from(index, &id, spec.from, deny);
        let anonymous = matches!(from, FromClause::Anonymous);
        let to = spec
            .to
            .map(|clauses| self.shared_to(index, &id, clauses, deny));
        if spec.mode == Mode::DryRun && spec.effect == Effect::Allow {
            let at = self.key_in(index, "mode");
            let message = format!(
                "rule {id:?}: `mode: dry-run` is only for deny rules; to trial allow rules, put the whole policy in dry-run (`mode: dry-run` at the top of the file)"
            );
            self.error(at, message);
        }
        let scopes = spec.scopes.unwrap_or_default();
        if !scopes.is_empty() && spec.effect == Effect::Deny {
            let at = self.key_in(index, "scopes");
            let message = format!(
                "rule {id:?}: a deny rule cannot require scopes (it would stop applying to callers that lack them, which is almost always a mistake)"
            );
            self.error(at, message);
        }
        if !scopes.is_empty() && anonymous {
            let at = self.key_in(index, "scopes");
            self.error(at, format!("rule {id:?}: an anonymous rule cannot require scopes (an anonymous caller has none)"));
        }
        for scope in &scopes {
            // RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
            let ok = !scope.is_empty()
                && scope
                    .bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
            if !ok {
                let at = self.value_in(index, scope).or(self.key_in(index, "scopes"));
                self.error(at, format!("rule {id:?}: invalid scope {scope:?}"));
            }
        }
        let when = match spec.when {
            Some(when) => self.when(index, &id, when, anonymous),
            None => When::default(),
        };
        Rule {
            id,
            description: spec.description.map(Into::into),
            effect: spec.effect,
            mode: spec.mode,
            from,
            to,
            scopes: self.shared_scopes(scopes),
            when,
            limits: Box::default(),
        }
    }

    /// Reports `field: []`, which would match nothing: for a deny rule a silent hole.
    fn non_empty<T>(&mut self, index: usize, id: &str, field: &str, list: &Option<Vec<T>>) {
        if list.as_ref().is_some_and(Vec::is_empty) {
            let key = field.rsplit('.').next().unwrap_or(field);
            let at = self.key_in(index, key);
            self.error(
                at,
                format!("rule {id:?}: {field} is empty (it would match nothing); omit it instead"),
            );
        }
    }

    /// `deny_like`: a deny rule or a limit (see [`delegated::Delegated`]).
    fn from(
        &mut self,
        index: usize,
        id: &str,
        spec: Option<FromSpec>,
        deny_like: bool,
    ) -> FromClause {
        let Some(spec) = spec else {
            return FromClause::Unrestricted;
        };
        if spec.anonymous == Some(true) {
            if spec.principals.is_some()
                || spec.peers.is_some()
                || spec.kinds.is_some()
                || spec.issuers.is_some()
                || spec.acting_for.is_some()
                || spec.delegated.is_some()
                || spec.credentials.is_some()
            {
                let at = self.key_in(index, "anonymous");
                let message = format!(
                    "rule {id:?}: `anonymous: true` cannot be combined with other `from` fields (an anonymous caller has no principal, peer, kind or issuer)"
                );
                self.error(at, message);
            }
            return FromClause::Anonymous;
        }
        self.non_empty(index, id, "from.principals", &spec.principals);
        self.non_empty(index, id, "from.peers", &spec.peers);
        self.non_empty(index, id, "from.kinds", &spec.kinds);
        self.non_empty(index, id, "from.issuers", &spec.issuers);
        self.non_empty(index, id, "from.credentials", &spec.credentials);
        let principals = spec
            .principals
            .map(|list| self.patterns(index, &list, IdPattern::principal));
        let peers = spec
            .peers
            .map(|list| self.patterns(index, &list, IdPattern::peer));
        for issuer in spec
            .issuers
            .iter()
            .flatten()
            .filter(|i| i.trim().is_empty())
        {
            let at = self.key_in(index, "issuers");
            self.error(at, format!("rule {id:?}: empty issuer {issuer:?}"));
        }
        let delegated = self.delegated(index, id, spec.acting_for, spec.delegated, deny_like);
        FromClause::Authenticated(Callers {
            principals: principals.map(Into::into),
            peers: peers.map(Into::into),
            kinds: spec.kinds.map(Into::into),
            issuers: spec.issuers.map(Into::into),
            delegated,
            credentials: spec.credentials.map(Into::into),
        })
    }

    fn patterns<T>(
        &mut self,
        index: usize,
        raw: &[String],
        parse: impl Fn(&str) -> Result<T, PatternError>,
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            match parse(r) {
                Ok(p) => out.push(p),
                Err(err) => self.pattern_error(index, err),
            }
        }
        out
    }

    fn to(
        &mut self,
        index: usize,
        id: &str,
        clauses: Vec<ClauseSpec>,
        deny: bool,
    ) -> Vec<ActionClause> {
        if clauses.is_empty() {
            let at = self.key_in(index, "to");
            self.error(at, format!("rule {id:?}: to is empty (it would match nothing); omit it to match every action"));
        }
        let mut out = Vec::with_capacity(clauses.len());
        for (n, clause) in clauses.into_iter().enumerate() {
            if clause.methods.is_none() && clause.paths.is_none() && clause.grpc.is_none() {
                let at = self.key_in(index, "to");
                self.error(
                    at,
                    format!("rule {id:?}: to[{n}] names none of methods, paths or grpc"),
                );
            }
            self.non_empty(index, id, "to.methods", &clause.methods);
            self.non_empty(index, id, "to.paths", &clause.paths);
            self.non_empty(index, id, "to.grpc", &clause.grpc);
            let methods = clause.methods.map(|list| {
                let mut methods = Vec::with_capacity(list.len());
                for raw in list {
                    let upper = raw.to_ascii_uppercase();
                    if KNOWN_METHODS.contains(&upper.as_str()) {
                        methods.push(upper);
                    } else {
                        let at = self.value_in(index, &raw);
                        self.error(at, format!("rule {id:?}: unknown method {raw:?}"));
                    }
                }
                // RFC 9110 9.3.2: HEAD is GET without the body; a deny on GET that
                // let HEAD through would still leak existence and headers.
                if deny && methods.iter().any(|m| m == "GET") {
                    methods.push("HEAD".to_string());
                }
                methods.sort();
                methods.dedup();
                methods
            });
            let paths = self.patterns(index, clause.paths.as_deref().unwrap_or_default(), |raw| {
                let pattern = PathPattern::parse(raw)?;
                Ok(if deny {
                    pattern.ignoring_case()
                } else {
                    pattern
                })
            });
            let grpc = self.patterns(
                index,
                clause.grpc.as_deref().unwrap_or_default(),
                GrpcPattern::parse,
            );
            out.push(ActionClause {
                methods: methods.map(Into::into),
                paths: paths.into(),
                grpc: grpc.into(),
            });
        }
        out
    }

    fn when(&mut self, index: usize, id: &str, spec: WhenSpec, anonymous: bool) -> When {
        let mut headers: Vec<(String, Vec<String>)> = Vec::new();
        for (raw, values) in spec.headers.unwrap_or_default() {
            let name = raw.to_ascii_lowercase();
            let at = self.value_in(index, &raw);
            let token = !name.is_empty()
                && name
                    .trim_start_matches(':')
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                self.error(at, format!("rule {id:?}: invalid header name {raw:?}"));
            } else if forbidden_header(&name) {
                let message = format!(
                    "rule {id:?}: when.headers may not read {raw:?} (credentials and x-hopwarden-* headers are off limits)"
                );
                self.error(at, message);
            } else if headers.iter().any(|(n, _)| *n == name) {
                self.error(at, format!("rule {id:?}: header {raw:?} is named twice"));
            } else if values.is_empty() {
                self.error(
                    at,
                    format!("rule {id:?}: header {raw:?} has no values (it would match nothing)"),
                );
            }
            headers.push((name, values));
        }
        let claims: Vec<(String, Vec<String>)> =
            spec.claims.unwrap_or_default().into_iter().collect();
        for (name, values) in &claims {
            let at = self.value_in(index, name);
            if name.is_empty() {
                self.error(at, format!("rule {id:?}: empty claim name"));
            } else if values.is_empty() {
                self.error(
                    at,
                    format!("rule {id:?}: claim {name:?} has no values (it would match nothing)"),
                );
            }
        }
        if anonymous && !claims.is_empty() {
            let at = self.key_in(index, "claims");
            self.error(at, format!("rule {id:?}: an anonymous rule cannot require claims (an anonymous caller has none)"));
        }
        When {
            hop: spec.hop,
            headers: headers.into(),
            claims: claims.into(),
        }
    }
}

/// `[first][first | . _ -]*`, with `first` deciding which letters are allowed.
fn is_name(s: &str, first: impl Fn(u8) -> bool) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(&first) && bytes.all(|b| first(b) || matches!(b, b'.' | b'_' | b'-'))
}

/// Where top-level `key:` starts (column 1), if written.
fn top_level_key(text: &str, key: &str) -> Option<usize> {
    yaml::find_token(text, key, 0, text.len()).find(|&at| {
        (at == 0 || text.as_bytes()[at - 1] == b'\n') && text[at + key.len()..].starts_with(':')
    })
}

pub mod delegated;
mod limits;
mod overlap;
mod parts;
mod shared;

pub use limits::Limit;

#[cfg(test)]
mod tests;
