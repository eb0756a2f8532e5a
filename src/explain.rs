//! `hopwarden explain`: the decision for one request, and why.
//!
//! Every step is the server's own code: the [`crate::resolve::ServiceResolver`], the
//! [`Authenticator`] (real JWT verification against the config's issuers), the
//! audience check, [`ServicePolicy::explain`] (which observes the evaluation itself)
//! and [`to_decision`]. Only the printing is new.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;

use crate::authn::jwt::{unix_now, JwtVerifier, TokenError};
use crate::authn::{Authenticator, Credential};
use crate::cache::TokenCache;
use crate::config::Config;
use crate::decision::{Decision, DenyReason};
use crate::engine::to_decision;
use crate::policy::{EvalInput, Mode, PolicySet, RuleOutcome, RuleTrace};
use crate::principal::{Principal, PrincipalKind};
use crate::request::{AuthzRequest, Hop};
use crate::resolve::Source;
use crate::suite::describe_decision;

/// `text` or `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For tools.
    Json,
}

/// `hopwarden explain` arguments.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The server config file (issuers, services, policies).
    #[arg(
        long,
        short,
        env = "HOPWARDEN_CONFIG",
        default_value = "hopwarden.yaml"
    )]
    pub config: PathBuf,
    /// The destination service (what Envoy sends as context_extensions["service"]).
    #[arg(long)]
    pub service: Option<String>,
    /// The `:authority`, to resolve the service through `services.by_host`.
    #[arg(long)]
    pub host: Option<String>,
    /// The destination SPIFFE ID, to resolve the service through `services.by_spiffe`.
    #[arg(long)]
    pub destination: Option<String>,
    /// `gateway` or `mesh` (as context_extensions["hop"]); default: `gateway` when
    /// --destination is one of `services.gateways`, else `mesh`.
    #[arg(long)]
    pub hop: Option<String>,
    /// HTTP method.
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// The `:path` as Envoy would send it.
    #[arg(long)]
    pub path: String,
    /// A request header, NAME=VALUE; repeat for several.
    #[arg(long = "header", short = 'H', value_parser = crate::cli::parse_pair)]
    pub headers: Vec<(String, String)>,
    /// A bearer token, verified with the config's issuers.
    #[arg(long, conflicts_with_all = ["kind", "id", "issuer", "scopes", "claims", "actors"])]
    pub token: Option<String>,
    /// Asserted caller (not verified): `service` or `user`.
    #[arg(long, requires = "id")]
    pub kind: Option<String>,
    /// Asserted caller id (a token subject; an mTLS-only caller is `--peer` alone).
    #[arg(long)]
    pub id: Option<String>,
    /// Asserted token issuer (default: the config's issuer, when it has only one).
    #[arg(long, requires = "id")]
    pub issuer: Option<String>,
    /// Asserted scope; repeat for several.
    #[arg(long = "scope", requires = "id")]
    pub scopes: Vec<String>,
    /// Asserted claim, NAME=VALUE (VALUE as JSON if it parses, else a string).
    #[arg(long = "claim", value_parser = crate::cli::parse_pair, requires = "id")]
    pub claims: Vec<(String, String)>,
    /// Asserted actor calling for --id (RFC 8693 `act.sub`); repeat for a chain,
    /// outermost (the caller) first.
    #[arg(long = "actor", requires = "id")]
    pub actors: Vec<String>,
    /// The mTLS peer's SPIFFE ID (Envoy's source principal).
    #[arg(long)]
    pub peer: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// What `explain` found, in the order the server finds it.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The resolved service, if any.
    pub service: Option<String>,
    /// How it was resolved (`--service`, `destination`, `host`) or why not.
    pub service_source: String,
    /// The policy-level mode, when the service has a policy.
    pub policy_mode: Option<Mode>,
    /// The hop, if valid.
    pub hop: Option<Hop>,
    /// The canonical action, e.g. `GET /transactions/42`.
    pub action: Option<String>,
    /// What the credentials proved, or why they were rejected.
    pub credentials: String,
    /// The audience check, for token callers.
    pub audience: Option<String>,
    /// The caller the rules saw, if they were evaluated.
    pub caller: Option<String>,
    /// Every rule in evaluation order; empty when evaluation did not happen.
    pub rules: Vec<RuleTrace>,
    /// Why the rules were not evaluated, if they were not.
    pub rules_skipped: Option<String>,
    /// A dry-run deny rule that matched.
    pub would_deny: Option<String>,
    /// The decision, e.g. `allow (rule r, status 200)`.
    pub decision: String,
    /// `allow` or `deny`.
    pub allowed: bool,
    /// The HTTP status.
    pub status: u16,
    /// The deciding rule.
    pub rule: Option<String>,
    /// The deny reason as decision logs name it.
    pub reason: Option<String>,
    /// The rate limits the request counts against if allowed, e.g.
    /// `payments-reads: 200/s, burst 400 (own budget of spiffe://…)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<String>,
}

/// `hopwarden explain`: prints the report; exit 0 whatever the decision, 1 on errors.
pub fn run(args: &ExplainArgs) -> ExitCode {
    let config = match crate::cli::load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let policies = match crate::cli::load_policies(&config.spec.policies) {
        Ok(set) => set,
        Err(code) => return code,
    };
    let runtime = match crate::cli::offline_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(explain(args, &config, &policies)) {
        Ok(report) => {
            match args.format {
                Format::Text => print!("{}", render_text(&report)),
                Format::Json => match serde_json::to_string_pretty(&report) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn request(args: &ExplainArgs) -> AuthzRequest {
    let mut headers: std::collections::HashMap<String, String> = args
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    if let Some(token) = &args.token {
        headers.insert("authorization".into(), format!("Bearer {token}"));
    }
    AuthzRequest {
        service: args.service.clone(),
        hop: args.hop.clone(),
        method: args.method.clone(),
        path: args.path.clone(),
        host: args.host.clone().unwrap_or_default(),
        headers,
        source_principal: args.peer.clone(),
        destination_principal: args.destination.clone(),
    }
}

/// A caller given field by field on the command line.
///
/// `--id` is a token caller (an mTLS-only caller is `--peer` alone), and a token
/// always has an issuer: without `--issuer`, the config's only issuer is taken, so
/// the caller is never mistaken for one without a token (no scopes, no claims).
fn asserted(args: &ExplainArgs, config: &Config) -> Result<Option<Principal>, String> {
    let Some(id) = &args.id else {
        return Ok(None);
    };
    let issuer = match (&args.issuer, config.issuers.as_slice()) {
        (Some(issuer), _) => issuer.clone(),
        (None, [only]) => only.spec.issuer.clone(),
        (None, issuers) => {
            let names: Vec<&str> = issuers.iter().map(|i| i.spec.issuer.as_str()).collect();
            return Err(format!(
                "--id is a token caller and needs --issuer: the config has {} issuers ({}); for an mTLS-only caller give --peer alone",
                names.len(),
                names.join(", ")
            ));
        }
    };
    let kind = match args.kind.as_deref() {
        None | Some("service") => PrincipalKind::Service,
        Some("user") => PrincipalKind::User,
        Some(other) => return Err(format!("--kind {other:?}: expected service or user")),
    };
    let peer = match &args.peer {
        None => None,
        Some(p) => Some(p.parse().map_err(|e| format!("--peer: {e}"))?),
    };
    let claims = args
        .claims
        .iter()
        .map(|(k, v)| {
            let value = serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.clone()));
            (k.clone(), value)
        })
        .collect();
    Ok(Some(Principal {
        kind,
        id: id.clone(),
        issuer: Some(issuer),
        scopes: args.scopes.clone(),
        claims: Arc::new(claims),
        peer,
        delegation: asserted_actors(&args.actors)?,
        api_key: None,
    }))
}

/// `--actor` values as a delegation chain; an empty one is refused as a token's
/// `act.sub` would be.
fn asserted_actors(
    actors: &[String],
) -> Result<Option<Arc<crate::principal::actor::Delegation>>, String> {
    let mut chain = Vec::with_capacity(actors.len());
    for sub in actors {
        if sub.is_empty() || sub.chars().any(char::is_control) {
            return Err(format!(
                "--actor {sub:?}: an actor id must be non-empty, without control characters"
            ));
        }
        chain.push(crate::principal::actor::Actor {
            sub: sub.clone(),
            iss: None,
        });
    }
    Ok(crate::principal::actor::Delegation::new(chain).map(Arc::new))
}

fn describe_principal(p: &Principal) -> String {
    let mut out = format!("{} \"{}\"", p.kind, p.id);
    match &p.issuer {
        Some(i) => out.push_str(&format!(", issuer {i}")),
        None => out.push_str(", no token"),
    }
    if p.issuer.is_some() {
        out.push_str(&format!(", scopes [{}]", p.scopes.join(" ")));
    }
    if let Some(peer) = &p.peer {
        out.push_str(&format!(", mTLS peer \"{peer}\""));
    }
    if let Some(d) = &p.delegation {
        let actors: Vec<String> = d
            .actors()
            .iter()
            .map(|a| format!("\"{}\"", a.sub))
            .collect();
        out.push_str(&format!(
            ", delegated: called for by {} (outermost first; rules match the first as the caller)",
            actors.join(" < ")
        ));
    }
    out
}

async fn explain(
    args: &ExplainArgs,
    config: &Config,
    policies: &PolicySet,
) -> Result<Report, String> {
    let req = request(args);
    let asserted = asserted(args, config)?;
    let mut report = Report {
        service: None,
        service_source: String::new(),
        policy_mode: None,
        hop: None,
        action: None,
        credentials: String::new(),
        audience: None,
        caller: None,
        rules: Vec::new(),
        rules_skipped: None,
        would_deny: None,
        decision: String::new(),
        allowed: false,
        status: 0,
        rule: None,
        reason: None,
        limits: Vec::new(),
    };
    let finish = |mut report: Report, decision: Decision| {
        let text = describe_decision(&decision);
        report.status = decision.http_status();
        if let Decision::Deny(d) = &decision {
            report.reason = Some(d.reason.as_str().to_string());
        }
        report.allowed = matches!(decision, Decision::Allow(_));
        report.rule = decision.rule().map(str::to_string);
        report.decision = text;
        report
    };
    // The engine's order: hop, service, policy, action, credentials, rules.
    let resolver = &config.services;
    let Ok(hop) = resolver.hop(&req) else {
        report.rules_skipped = Some(format!(
            "unknown hop {:?}",
            args.hop.as_deref().unwrap_or_default()
        ));
        return Ok(finish(report, Decision::deny(DenyReason::BadRequest)));
    };
    report.hop = Some(hop);
    let service = match resolver.resolve(&req, hop) {
        Ok((service, source)) => {
            report.service_source = match source {
                Source::ContextExtensions => "given with --service".into(),
                Source::BySpiffe | Source::Pattern => format!(
                    "destination {:?} via {}",
                    req.destination_principal.as_deref().unwrap_or_default(),
                    source.as_str()
                ),
                Source::Host => format!("host {:?} via services.by_host", req.host),
            };
            service
        }
        Err(why) => {
            report.service_source = why.detail().into();
            report.rules_skipped = Some("no service".into());
            let reason = DenyReason::UnknownService(why.detail());
            return Ok(finish(report, Decision::deny(reason)));
        }
    };
    let service = service.as_ref();
    report.service = Some(service.to_string());
    let Some(policy) = policies.get(service) else {
        report.rules_skipped = Some(format!("no policy for service {service:?}"));
        return Ok(finish(report, Decision::deny(DenyReason::NoPolicy)));
    };
    report.policy_mode = Some(policy.mode());
    let Ok(action) = req.action() else {
        report.action = Some(format!(
            "{} <non-canonical path {:?}>",
            req.method, req.path
        ));
        report.rules_skipped = Some("the path is not canonical".into());
        return Ok(finish(report, Decision::deny(DenyReason::BadRequest)));
    };
    report.action = Some(crate::policy::describe_action(&action));

    let principal = match asserted {
        Some(p) => {
            report.credentials = if args.issuer.is_some() {
                "asserted on the command line (not verified)".into()
            } else {
                "asserted on the command line (not verified); issuer: the config's only issuer"
                    .into()
            };
            Some(p)
        }
        None => {
            let authn = authenticator(config, args.token.is_some()).await;
            match authn.authenticate(&req, unix_now()).await {
                Ok(Credential::Token(token, peer)) => {
                    report.credentials = format!(
                        "bearer token verified: issuer {}, subject \"{}\"",
                        token.issuer, token.subject
                    );
                    let principal = token.principal(peer);
                    report.caller = Some(describe_principal(&principal));
                    let auds = format!("[{}]", token.audiences.join(", "));
                    let wanted = format!("[{}]", policy.audiences().join(", "));
                    if !token.is_for(policy.audiences()) {
                        report.audience =
                            Some(format!("token aud {auds} does not name the service (accepts {wanted})"));
                        report.rules_skipped = Some("the token is not for this service".into());
                        let denied = crate::engine::wrong_audience(&token);
                        return Ok(finish(report, Decision::Deny(denied)));
                    }
                    report.audience = Some(format!("token aud {auds} names the service (accepts {wanted})"));
                    Some(principal)
                }
                Ok(Credential::Peer(peer)) => {
                    report.credentials = format!("no bearer token; mTLS peer \"{peer}\"");
                    Some(Principal::from_peer(peer))
                }
                Ok(Credential::ApiKey(entry, peer)) => {
                    report.credentials = format!("API key {:?}", entry.id);
                    Some(Principal::from_api_key(&entry, peer))
                }
                Ok(Credential::Anonymous) => {
                    report.credentials = match &args.peer {
                        Some(p) => format!("none (peer {p:?} is not a SPIFFE ID, so no mTLS identity)"),
                        None => "none: no bearer token, no mTLS peer".into(),
                    };
                    None
                }
                Err(TokenError::KeysUnavailable) => {
                    return Err("keys for the token's issuer could not be loaded (the server would answer UNAVAILABLE)".into())
                }
                Err(e) => {
                    report.credentials = format!("bearer token rejected: {e} ({})", e.as_str());
                    report.rules_skipped = Some("the credential was rejected".into());
                    return Ok(finish(report, Decision::deny(DenyReason::InvalidToken(e.as_str()))));
                }
            }
        }
    };
    report.caller = Some(match &principal {
        Some(p) => describe_principal(p),
        None => "anonymous".into(),
    });
    let input = EvalInput {
        principal: principal.as_ref(),
        hop,
        action: &action,
        headers: &req.headers,
    };
    let explained = policy.explain(&input);
    report.rules = explained.rules;
    report.would_deny = explained.verdict.would_deny.as_deref().map(str::to_string);
    let decision = to_decision(explained.verdict.evaluation, principal.as_ref());
    if let Decision::Allow(allowed) = &decision {
        report.limits = policy
            .limits_for(&allowed.rule, &input)
            .iter()
            .map(crate::limits::LimitHit::describe)
            .collect();
    }
    Ok(finish(report, decision))
}

/// The authenticator the server would build; keys are loaded only when a token
/// needs them (file keys are read, URL keys fetched).
async fn authenticator(config: &Config, load_keys: bool) -> Authenticator {
    let http = crate::authn::jwks::http_client().unwrap_or_default();
    // A registry of our own: nothing scrapes it, the constructor just needs one.
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let issuers = crate::authn::jwks::key_stores(&config.issuers, &http, &metrics);
    if load_keys {
        for (issuer, keys) in &issuers {
            if let Err(e) = keys.refresh().await {
                eprintln!(
                    "warning: issuer {:?}: keys not loaded: {e}",
                    issuer.spec.issuer
                );
            }
        }
    }
    Authenticator::new(
        JwtVerifier::new(issuers),
        TokenCache::new(0, Default::default()),
        metrics,
    )
}

/// The report for people: one labelled line per step, then the rules.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: &str| out.push_str(&format!("{label:<12} {value}\n"));
    let service = match &r.service {
        Some(s) => format!("{s} ({})", r.service_source),
        None => format!("none ({})", r.service_source),
    };
    line("service:", &service);
    if r.policy_mode == Some(Mode::DryRun) {
        line(
            "mode:",
            "dry-run policy: the server lets a denied request through, marked x-hopwarden-dry-run",
        );
    }
    line("hop:", r.hop.map_or("invalid", Hop::as_str));
    if let Some(a) = &r.action {
        line("action:", a);
    }
    if !r.credentials.is_empty() {
        line("credentials:", &r.credentials);
    }
    if let Some(a) = &r.audience {
        line("audience:", a);
    }
    if let Some(c) = &r.caller {
        line("caller:", c);
    }
    if let Some(why) = &r.rules_skipped {
        line("rules:", &format!("not evaluated ({why})"));
    } else {
        out.push_str("rules:       deny rules first, then allow rules, each in file order\n");
        for rule in &r.rules {
            let effect = rule.effect.as_str();
            let dry = if rule.mode == Mode::DryRun {
                " [dry-run]"
            } else {
                ""
            };
            let outcome = match rule.outcome {
                RuleOutcome::Matched => "MATCHED",
                RuleOutcome::WouldDeny => "matched, but dry-run: would deny; evaluation goes on",
                RuleOutcome::MissingScopes => "matched except scopes; evaluation goes on",
                RuleOutcome::NotMatched => "no match",
                RuleOutcome::NotEvaluated => "not evaluated (an earlier rule decided)",
            };
            out.push_str(&format!("  {effect:<5} {}{dry}: {outcome}\n", rule.rule));
            for c in &rule.conditions {
                let mark = if c.ok { "ok  " } else { "FAIL" };
                out.push_str(&format!("          {mark} {}: {}\n", c.part, c.detail));
            }
        }
    }
    if let Some(w) = &r.would_deny {
        out.push_str(&format!("{:<12} {w} (dry-run deny rule)\n", "would deny:"));
    }
    out.push_str(&format!("{:<12} {}\n", "decision:", r.decision));
    if !r.limits.is_empty() {
        let what = "counts against these (a 429 when one is spent):";
        out.push_str(&format!("{:<12} {what}\n", "limits:"));
        for l in &r.limits {
            out.push_str(&format!("  {l}\n"));
        }
    }
    out
}
