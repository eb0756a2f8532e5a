//! `hopwarden review`: the access matrix the policies grant, with over-broad grants
//! flagged, test coverage from the suites and, given decision logs, unused grants.
//!
//! Shadowing is judged on the compiled patterns ([`PathPattern::covers`] and
//! friends), conservatively: "shadowed" only when every request the allow rule
//! matches is certainly matched by the deny rule, "possibly shadowed" when the two
//! can match one request.

mod keys;
mod render;
mod shadow;
pub mod usage;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::policy::{
    Delegated, Effect, FromClause, IdPattern, Mode, PolicySet, Rule, ServicePolicy, When,
};
use crate::suite;
pub use usage::Usage;

/// `text`, `markdown`, `json` or `dot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table for a terminal.
    Text,
    /// A table for a pull request or wiki.
    Markdown,
    /// Everything, for tools.
    Json,
    /// A Graphviz graph: caller -> service edges labelled with rules and scopes.
    Dot,
}

/// `hopwarden review` arguments.
#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    /// The directory holding policies and suites; default: the config's `policies`.
    pub dir: Option<PathBuf>,
    /// The server config file (read only when DIR is not given).
    #[arg(
        long,
        short,
        env = "HOPWARDEN_CONFIG",
        default_value = "hopwarden.yaml"
    )]
    pub config: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Also render the graph to this SVG file (needs Graphviz `dot`).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// A decision log (JSON lines); repeat for several. Lists allow rules never used.
    #[arg(long)]
    pub usage: Vec<PathBuf>,
    /// An API key file to review; repeat for several. Default: the config's
    /// `api_keys` when DIR is not given.
    #[arg(long = "keys")]
    pub keys: Vec<PathBuf>,
}

/// The whole review.
#[derive(Debug, Serialize)]
pub struct Review {
    /// Each service, by name.
    pub services: Vec<ServiceAccess>,
    /// What the test suites covered.
    pub tests: TestSummary,
    /// What the decision logs showed, when given.
    pub usage: Option<Usage>,
    /// The API keys, when key files were given or configured.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<keys::KeyAccess>,
}

/// One service's rules.
#[derive(Debug, Serialize)]
pub struct ServiceAccess {
    /// The service.
    pub service: String,
    /// Accepted token audiences.
    pub audiences: Vec<String>,
    /// The policy-level mode.
    pub mode: Mode,
    /// Deny rules, then allow rules.
    pub rules: Vec<RuleAccess>,
    /// Rate limits, in file order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitAccess>,
}

/// One rate limit, described: who it applies to and at what rate.
#[derive(Debug, Serialize)]
pub struct LimitAccess {
    /// Its id.
    pub id: String,
    /// `N/s`, `N/m` or `N/h`.
    pub rate: String,
    /// Requests that may arrive at once.
    pub burst: u64,
    /// `principal` or `service`.
    pub per: &'static str,
    /// Who counts, as for rules (a limit with no `from` counts anonymous callers too).
    pub callers: Vec<String>,
    /// What every one of those callers must also be.
    pub caller_conditions: Vec<String>,
    /// Which actions count.
    pub actions: Vec<String>,
    /// `when` conditions.
    pub conditions: Vec<String>,
    /// The allow rules naming it; empty: every allow it matches counts.
    pub rules: Vec<String>,
}

/// One rule, described.
#[derive(Debug, Serialize)]
pub struct RuleAccess {
    /// Its id.
    pub id: String,
    /// Allow or deny.
    pub effect: Effect,
    /// Enforce or dry-run.
    pub mode: Mode,
    /// Who, any one of: `principal …`, `peer …`, `any authenticated caller`, `anonymous`, …
    pub callers: Vec<String>,
    /// What every one of those callers must also be: `and kind service`, `and issuer …`.
    pub caller_conditions: Vec<String>,
    /// What: one entry per `to` clause, or `any action`.
    pub actions: Vec<String>,
    /// Required scopes.
    pub scopes: Vec<String>,
    /// `when` conditions.
    pub conditions: Vec<String>,
    /// Whether some test case's decision came from it.
    pub exercised: bool,
    /// How many decisions of its effect the logs credit it with, when logs were given.
    pub used: Option<u64>,
    /// What a reviewer should look at.
    pub flags: Vec<Flag>,
    /// An allow rule's rate limits: `id rate` of each limit that may count its
    /// allows (named by the rule, or naming no rule, and matching some of its
    /// requests as far as patterns tell).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<String>,
}

/// A finding about one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flag {
    /// A stable name: `wildcard_principal`, `no_scopes`, `possibly_shadowed`, …
    pub kind: &'static str,
    /// What it means here.
    pub message: String,
}

/// What the suites covered.
#[derive(Debug, Default, Serialize)]
pub struct TestSummary {
    /// Suite files found.
    pub suites: usize,
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Suite files that did not load.
    pub load_errors: usize,
}

/// Builds the review of `policies` with the suites in `dir` and the decision logs.
pub fn review(policies: &PolicySet, dir: &Path, usage: Option<Usage>) -> Review {
    let report = suite::Report::run_dir(dir, policies).unwrap_or_default();
    let (passed, failed) = report.counts();
    let tests = TestSummary {
        suites: report.files.len(),
        passed,
        failed,
        load_errors: report.files.iter().filter(|(_, r)| r.is_err()).count(),
    };
    let services = policies
        .services()
        .map(|policy| {
            let rules = policy
                .rules()
                .map(|rule| {
                    let key = (policy.service().to_string(), rule.id().to_string());
                    let exercised = report.exercised.contains(&key);
                    let used = usage
                        .as_ref()
                        .map(|u| u.count(policy.service(), rule.id(), rule.effect().as_str()));
                    let mut flags = flags(policy, rule);
                    if !exercised {
                        flags.push(Flag {
                            kind: "not_exercised",
                            message: "no test case's decision comes from this rule".into(),
                        });
                    }
                    if used == Some(0) && rule.effect() == Effect::Allow {
                        flags.push(Flag {
                            kind: "unused",
                            message: "never used in the decision logs: a revocation candidate"
                                .into(),
                        });
                    }
                    let (callers, caller_conditions) = callers(rule);
                    RuleAccess {
                        id: rule.id().to_string(),
                        effect: rule.effect(),
                        mode: rule.mode(),
                        callers,
                        caller_conditions,
                        actions: actions(rule),
                        scopes: rule.scopes().to_vec(),
                        conditions: conditions(rule.when()),
                        exercised,
                        used,
                        flags,
                        limits: rule_limits(policy, rule),
                    }
                })
                .collect();
            let limits = policy
                .limits()
                .iter()
                .enumerate()
                .map(|(i, limit)| {
                    let (callers, caller_conditions) = callers(limit.selector());
                    LimitAccess {
                        id: limit.id().to_string(),
                        rate: limit.rate().to_string(),
                        burst: limit.burst(),
                        per: limit.per().as_str(),
                        callers,
                        caller_conditions,
                        actions: actions(limit.selector()),
                        conditions: conditions(limit.selector().when()),
                        rules: policy
                            .rules_naming(i)
                            .into_iter()
                            .map(str::to_string)
                            .collect(),
                    }
                })
                .collect();
            ServiceAccess {
                service: policy.service().to_string(),
                audiences: policy.audiences().to_vec(),
                mode: policy.mode(),
                rules,
                limits,
            }
        })
        .collect();
    Review {
        services,
        tests,
        usage,
        keys: Vec::new(),
    }
}

/// The limits that may count an allow rule's allows: those it names, and those no
/// rule names, whose `from` / `to` / `when` could match some request it allows.
fn rule_limits(policy: &ServicePolicy, rule: &Rule) -> Vec<String> {
    if rule.effect() != Effect::Allow {
        return Vec::new();
    }
    policy
        .limits()
        .iter()
        .enumerate()
        .filter(|(i, limit)| {
            (!limit.attached() || policy.rules_naming(*i).contains(&rule.id()))
                && limit.selector().may_overlap(rule)
        })
        .map(|(_, limit)| format!("{} {}", limit.id(), limit.rate()))
        .collect()
}

/// The key files to review: `--keys`, else the config's when DIR is not given.
fn key_sets(args: &ReviewArgs) -> Result<Vec<(PathBuf, crate::apikey::KeySet)>, String> {
    let files = if !args.keys.is_empty() {
        args.keys.clone()
    } else if args.dir.is_none() {
        let config = crate::config::Config::load(&args.config).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            lines.join("\n")
        })?;
        config.spec.api_keys.into_iter().map(|k| k.file).collect()
    } else {
        Vec::new()
    };
    files
        .into_iter()
        .map(|f| {
            crate::apikey::file::load(&f)
                .map(|s| (f, s))
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// `hopwarden review`: prints the review; exit 1 only when something cannot be read.
pub fn run(args: &ReviewArgs) -> ExitCode {
    let dir = match crate::cli::policy_dir(args.dir.as_deref(), &args.config) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let policies = match crate::cli::load_policies(&dir) {
        Ok(set) => set,
        Err(code) => return code,
    };
    let usage = if args.usage.is_empty() {
        None
    } else {
        match Usage::read(&args.usage) {
            // Nothing read means nothing is known about use: calling every grant
            // unused would be a wrong answer, not an empty one.
            Ok(u) if u.decisions == 0 => {
                eprintln!(
                    "error: {}: no decision lines ({} line(s) read, none with timestamp, service and decision); --usage reads hopwarden's JSON decision log (decision_log.to)",
                    u.files.join(", "),
                    u.skipped
                );
                return ExitCode::FAILURE;
            }
            Ok(u) => {
                // Text and markdown say it in their summary; JSON and dot go to tools.
                if matches!(args.format, Format::Json | Format::Dot) {
                    eprintln!(
                        "usage: {} decision(s) from {}, period {} ({} line(s) skipped)",
                        u.decisions,
                        u.files.join(", "),
                        u.period(),
                        u.skipped
                    );
                }
                Some(u)
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let sets = match key_sets(args) {
        Ok(sets) => sets,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut review = review(&policies, &dir, usage);
    let now = crate::apikey::file::now();
    review.keys = keys::review(&policies, &sets, review.usage.as_ref(), now);
    let out = match args.format {
        Format::Text => render::text(&review),
        Format::Markdown => render::markdown(&review),
        Format::Json => match serde_json::to_string_pretty(&review) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        Format::Dot => render::dot(&review),
    };
    print!("{out}");
    if let Some(svg) = &args.svg {
        if let Err(e) = render::svg(&render::dot(&review), svg) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn quoted(items: &[String]) -> String {
    items.join(", ")
}

/// Who a rule is about: the identities it names (any one of them), then the
/// conditions every one of them must also meet (`and …`).
fn callers(rule: &Rule) -> (Vec<String>, Vec<String>) {
    let show = |what: &str, pats: &[IdPattern]| -> Vec<String> {
        pats.iter().map(|p| format!("{what} {p}")).collect()
    };
    let c = match rule.from() {
        FromClause::Unrestricted if rule.effect() == Effect::Deny => {
            return (vec!["any caller, anonymous included".into()], Vec::new())
        }
        FromClause::Unrestricted => return (vec!["any authenticated caller".into()], Vec::new()),
        FromClause::Anonymous => return (vec!["anonymous".into()], Vec::new()),
        FromClause::Authenticated(c) => c,
    };
    let mut and = Vec::new();
    let who = match (c.principals(), c.peers()) {
        (Some(p), peers) => {
            if let Some(peers) = peers {
                let list: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
                and.push(format!("and peer in [{}]", list.join(", ")));
            }
            show("principal", p)
        }
        (None, Some(peers)) => show("peer", peers),
        (None, None) => vec!["any authenticated caller".into()],
    };
    if let Some(k) = c.kinds() {
        let kinds: Vec<&str> = k.iter().map(|k| k.as_str()).collect();
        and.push(format!("and kind {}", kinds.join("|")));
    }
    if let Some(i) = c.issuers() {
        and.push(format!("and issuer {}", i.join("|")));
    }
    if let Some(d) = delegation_condition(c.delegated()) {
        and.push(d);
    }
    if let Some(creds) = c.credentials() {
        let names: Vec<&str> = creds.iter().map(|c| c.as_str()).collect();
        and.push(format!("and credential {}", names.join("|")));
    }
    (who, and)
}

/// How the rule treats delegated tokens, when it is not the default of its effect.
fn delegation_condition(d: &Delegated) -> Option<String> {
    let a = match d {
        Delegated::Direct | Delegated::AnyParty => return None,
        Delegated::ActingFor(a) => a,
    };
    let mut subject = Vec::new();
    if let Some(p) = a.principals() {
        let list: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        subject.push(format!("principal in [{}]", list.join(", ")));
    }
    if let Some(k) = a.kinds() {
        let kinds: Vec<&str> = k.iter().map(|k| k.as_str()).collect();
        subject.push(format!("kind {}", kinds.join("|")));
    }
    if let Some(max) = a.max_depth() {
        subject.push(format!("at most {max} actor(s)"));
    }
    Some(match subject.is_empty() {
        true => "and acting (as the token's actor) for anyone".into(),
        false => format!(
            "and acting (as the token's actor) for {}",
            subject.join(", ")
        ),
    })
}

fn actions(rule: &Rule) -> Vec<String> {
    match rule.to() {
        None => vec!["any action".into()],
        Some(clauses) => clauses.iter().map(crate::policy::describe_clause).collect(),
    }
}

fn conditions(when: &When) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(hop) = when.hop() {
        out.push(format!("hop {hop}"));
    }
    for (name, values) in when.headers() {
        out.push(format!("header {name} in [{}]", quoted(values)));
    }
    for (name, values) in when.claims() {
        out.push(format!("claim {name} in [{}]", quoted(values)));
    }
    out
}

fn flag(kind: &'static str, message: String) -> Flag {
    Flag { kind, message }
}

/// Over-broad grants in an allow rule, and deny rules that may shadow it.
fn flags(policy: &ServicePolicy, rule: &Rule) -> Vec<Flag> {
    let mut out = Vec::new();
    if rule.effect() == Effect::Deny {
        return out;
    }
    match rule.from() {
        FromClause::Unrestricted => out.push(flag(
            "any_caller",
            "no `from`: any authenticated caller".into(),
        )),
        FromClause::Anonymous => out.push(flag(
            "anonymous",
            "allows callers with no credential at all".into(),
        )),
        FromClause::Authenticated(c) => {
            for p in c
                .principals()
                .unwrap_or_default()
                .iter()
                .filter(|p| p.has_wildcard())
            {
                out.push(flag("wildcard_principal", format!("principal pattern {p}")));
            }
            for p in c
                .peers()
                .unwrap_or_default()
                .iter()
                .filter(|p| p.has_wildcard())
            {
                out.push(flag("wildcard_peer", format!("peer pattern {p}")));
            }
            if c.principals().is_none() && c.peers().is_none() {
                out.push(flag(
                    "any_caller",
                    "`from` names no principals or peers: any caller of that kind or issuer".into(),
                ));
            }
        }
    }
    match rule.to() {
        None => out.push(flag("any_action", "no `to`: every method and path".into())),
        Some(clauses) => {
            for c in clauses {
                for p in c.paths().iter().filter(|p| p.has_wildcard()) {
                    out.push(flag("wildcard_path", format!("path pattern {p}")));
                }
                for g in c.grpc().iter().filter(|g| g.has_wildcard()) {
                    out.push(flag("wildcard_grpc", format!("grpc pattern {g}")));
                }
                if c.paths().is_empty() && c.grpc().is_empty() {
                    out.push(flag(
                        "wildcard_path",
                        "a `to` clause names no paths: any path".into(),
                    ));
                }
            }
        }
    }
    if rule.scopes().is_empty() {
        out.push(flag(
            "no_scopes",
            "requires no scopes: the caller's identity alone grants access".into(),
        ));
    }
    for deny in policy.rules().filter(|r| r.effect() == Effect::Deny) {
        let dry = if deny.mode() == Mode::DryRun {
            " (dry-run: once enforced)"
        } else {
            ""
        };
        match shadow::relation(deny, rule) {
            shadow::Relation::Covers => out.push(flag(
                "shadowed",
                format!(
                    "shadowed by deny rule {}{dry}: every request it allows is denied",
                    deny.id()
                ),
            )),
            shadow::Relation::Overlaps => out.push(flag(
                "possibly_shadowed",
                format!(
                    "possibly shadowed by deny rule {}{dry}: both can match one request",
                    deny.id()
                ),
            )),
            shadow::Relation::Disjoint => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
