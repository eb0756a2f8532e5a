//! The command line: `serve`, `validate`, `token`, and the offline tools `test`,
//! `explain` and `review`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, KeySource};
use crate::policy::PolicySet;

/// Envoy external authorization for service-to-service traffic.
#[derive(Debug, Parser)]
#[command(name = "hopwarden", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve ext_authz (envoy.service.auth.v3) and grpc.health.v1 on one port.
    Serve {
        /// The server config file.
        #[arg(
            long,
            short,
            env = "HOPWARDEN_CONFIG",
            default_value = "hopwarden.yaml"
        )]
        config: PathBuf,
    },
    /// Check the config, key files and policies exactly as `serve` loads them.
    Validate {
        /// The server config file.
        #[arg(
            long,
            short,
            env = "HOPWARDEN_CONFIG",
            default_value = "hopwarden.yaml"
        )]
        config: PathBuf,
    },
    /// Mint a development token signed with the built-in dev key (local testing only).
    Token(TokenArgs),
    /// Run the policy test suites (`*_test.yaml`) beside the policies.
    Test {
        /// The directory holding policies and suites; default: the config's `policies`.
        dir: Option<PathBuf>,
        /// The server config file (read only when DIR is not given).
        #[arg(
            long,
            short,
            env = "HOPWARDEN_CONFIG",
            default_value = "hopwarden.yaml"
        )]
        config: PathBuf,
    },
    /// Explain the decision for one request: credentials, each rule, the answer.
    Explain(crate::explain::ExplainArgs),
    /// The access matrix: who may do what on each service, with over-broad grants flagged.
    Review(crate::review::ReviewArgs),
    /// What a policy change grants or takes away, per service and caller.
    Diff(crate::diff::DiffArgs),
    /// Draft least-privilege policies (and their suites) from decision logs.
    Suggest(crate::suggest::SuggestArgs),
    /// API keys for third parties: `new` (printed once, stored as a digest), `list`, `check`.
    #[command(subcommand)]
    Apikey(crate::apikey_tool::ApikeyCommand),
    /// Print the JSON Schema of a policy file, a suite file or the server config.
    Schema {
        /// Which file: policy, suite or config.
        kind: crate::schema::SchemaKind,
    },
    /// Development helpers (`dev certs DIR`: the local stack's CA and SPIFFE certificates).
    #[command(subcommand)]
    Dev(crate::dev::DevCommand),
}

/// Loads the config, printing every error with its location.
pub fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        for e in errors {
            eprintln!("error: {e}");
        }
        ExitCode::FAILURE
    })
}

/// Loads a policy directory, printing every error with its location.
pub fn load_policies(dir: &Path) -> Result<PolicySet, ExitCode> {
    PolicySet::load_dir(dir).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("error: {e}");
        }
        ExitCode::FAILURE
    })
}

/// The policy directory: `dir` if given, else the config's.
pub fn policy_dir(dir: Option<&Path>, config: &Path) -> Result<PathBuf, ExitCode> {
    match dir {
        Some(d) => Ok(d.to_path_buf()),
        None => load_config(config).map(|c| c.spec.policies),
    }
}

/// A small runtime for offline commands that load keys (validate, explain).
pub fn offline_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        })
}

/// `hopwarden validate`: exit 0 when everything loads, 1 otherwise.
pub fn validate(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut failed = false;
    let policies = match PolicySet::load_dir(&config.spec.policies) {
        Ok(set) => Some(set),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            failed = true;
            None
        }
    };
    let runtime = match offline_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let metrics = std::sync::Arc::new(crate::telemetry::Metrics::new());
    let stores = crate::authn::jwks::key_stores(&config.issuers, &reqwest::Client::new(), &metrics);
    for (issuer, keys) in &stores {
        // URLs are not fetched: validation must work offline, in CI.
        if matches!(issuer.keys, KeySource::Url(_) | KeySource::Discovery(_)) {
            continue;
        }
        if let Err(e) = runtime.block_on(keys.refresh()) {
            eprintln!(
                "error: {}: issuer {:?}: {e}",
                path.display(),
                issuer.spec.issuer
            );
            failed = true;
        }
    }
    if let Err(errors) = crate::authn::apikey::ApiKeys::load(&config.spec.api_keys) {
        for e in &errors.0 {
            eprintln!("error: {e}");
        }
        failed = true;
    }
    // Policies that failed to load set `failed` too.
    let (false, Some(policies)) = (failed, policies) else {
        return ExitCode::FAILURE;
    };
    for warning in warnings(&config, &policies) {
        eprintln!("warning: {warning}");
    }
    let rules: usize = policies.services().map(|p| p.rules().count()).sum();
    println!(
        "ok: {} issuer(s), {} service policy(ies), {} rule(s)",
        config.issuers.len(),
        policies.len(),
        rules
    );
    println!("{}", allowed_headers(&policies, &config));
    if let Some(name) = &config.spec.http_peer_header {
        println!(
            "ext_authz http_service, for the mTLS peer (docs/envoy.md): disallowed_headers: {{ patterns: [{{ exact: {name} }}] }} and authorization_request: {{ headers_to_add: [{{ key: {name}, value: \"%DOWNSTREAM_PEER_URI_SAN%\" }}] }}"
        );
    }
    if config.spec.rate_limits.headers_on_allow {
        println!("{}", crate::limits::ENVOY_HTTP_SERVICE_BUDGET_HEADERS);
    }
    // The process exits now: the OS takes the set back at once, where dropping it
    // frees 100,000 rules one allocation at a time (a tenth of a large load).
    std::mem::forget(policies);
    ExitCode::SUCCESS
}

/// What loads but cannot be what was meant: every request it touches is denied.
fn warnings(config: &Config, policies: &PolicySet) -> Vec<String> {
    let mut out = Vec::new();
    if policies.is_empty() {
        out.push(format!(
            "{}: no policy files (*.yaml): every request will be denied",
            config.spec.policies.display()
        ));
    }
    if let Some(name) = &config.spec.http_peer_header {
        if policies.read_headers().iter().any(|h| h == name) {
            out.push(format!(
                "a policy's when.headers reads {name:?}, the http_peer_header: over gRPC that is the client's own header, and over the HTTP service it is never a header; use from.peers"
            ));
        }
    }
    let text = std::fs::read_to_string(&config.path).unwrap_or_default();
    for (map, what) in [
        (&config.spec.services.by_spiffe, "services.by_spiffe"),
        (&config.spec.services.by_host, "services.by_host"),
    ] {
        for (key, service) in map {
            if policies.get(service).is_none() {
                let at = crate::yaml::locate(&text, key, 0).unwrap_or((0, 0));
                let location = crate::yaml::Location::new(&config.path, at);
                out.push(format!(
                    "{location}: {what}: {key:?} names service {service:?}, which has no policy (its requests will be denied)"
                ));
            }
        }
    }
    out
}

/// The ext_authz filter setting that sends hopwarden only the headers it reads (the
/// rest of a check's size, and Envoy's and hopwarden's work on it, is spent on nothing).
/// With tracing on, the trace context headers are read too.
fn allowed_headers(policies: &PolicySet, config: &Config) -> String {
    let mut read = policies.read_headers();
    // The headers API keys arrive in are read too.
    read.extend(
        config
            .spec
            .api_keys
            .iter()
            .filter_map(|k| k.header.as_deref()),
    );
    if config.spec.tracing.otlp.is_some() {
        read.extend(crate::telemetry::trace_context::HEADERS);
    }
    let mut patterns: Vec<String> = read
        .into_iter()
        .map(|h| format!("{{ exact: {h} }}"))
        .collect();
    patterns.push(format!(
        "{{ prefix: {} }}",
        crate::request::OWN_HEADER_PREFIX
    ));
    format!(
        "ext_authz, to send only what these policies read: allowed_headers: {{ patterns: [{}] }}",
        patterns.join(", ")
    )
}

/// `hopwarden test [DIR]`: exit 0 when every case passes and every suite loads.
pub fn test(dir: Option<&Path>, config: &Path) -> ExitCode {
    let dir = match policy_dir(dir, config) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let policies = match load_policies(&dir) {
        Ok(set) => set,
        Err(code) => return code,
    };
    let report = match crate::suite::Report::run_dir(&dir, &policies) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: cannot read directory: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    if report.files.is_empty() {
        eprintln!(
            "error: {}: no policy test suites (*_test.yaml)",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    // Said only where it changes something: a policy or rule in dry-run.
    let dry_run = policies
        .services()
        .any(|p| p.is_dry_run() || p.rules().any(|r| r.mode() == crate::policy::Mode::DryRun));
    let banner = if dry_run {
        " (dry-run modes ignored: every rule is checked as enforced)"
    } else {
        ""
    };
    let mut failures = Vec::new();
    let mut not_loaded = 0;
    for (path, result) in &report.files {
        match result {
            Ok(cases) => {
                println!(
                    "running {} case{} from {}{banner}",
                    cases.len(),
                    if cases.len() == 1 { "" } else { "s" },
                    path.display()
                );
                for case in cases {
                    let status = if case.failure.is_some() {
                        "FAILED"
                    } else {
                        "ok"
                    };
                    println!("case {} ... {status}", case.name);
                    if let Some(why) = &case.failure {
                        failures.push((path, &case.name, why));
                    }
                }
            }
            Err(errors) => {
                not_loaded += 1;
                println!("error loading {}", path.display());
                for e in errors {
                    eprintln!("error: {e}");
                }
            }
        }
        println!();
    }
    if !failures.is_empty() {
        println!("failures:");
        for (path, name, why) in &failures {
            println!("---- {}: {name} ----", path.display());
            println!("{why}");
            println!();
        }
    }
    let unexercised = report.unexercised(&policies);
    if !unexercised.is_empty() {
        println!(
            "warning: {} rule(s) not exercised by any case:",
            unexercised.len()
        );
        for (service, rule) in &unexercised {
            println!("  {service}: {rule}");
        }
        println!();
    }
    let (passed, failed) = report.counts();
    if not_loaded > 0 {
        // A suite that did not load checked nothing: the summary must not read as a pass.
        println!(
            "{passed} passed, {failed} failed, {not_loaded} suite{} did not load: FAILED",
            if not_loaded == 1 { "" } else { "s" }
        );
    } else {
        println!("{passed} passed, {failed} failed");
    }
    if failed > 0 || report.has_load_errors() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `hopwarden token` arguments.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The subject (`sub`): for services, their SPIFFE ID.
    #[arg(long, required_unless_present = "jwks")]
    pub sub: Option<String>,
    /// An audience (`aud`); repeat for several.
    #[arg(long = "aud", required_unless_present = "jwks")]
    pub audiences: Vec<String>,
    /// Space-separated scopes (`scope`).
    #[arg(long, default_value = "")]
    pub scope: String,
    /// Lifetime, e.g. 5m or 1h.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
    /// The issuer (`iss`).
    #[arg(long, default_value = crate::token::DEV_ISSUER)]
    pub iss: String,
    /// An extra claim, NAME=VALUE (VALUE as JSON if it parses, else a string).
    #[arg(long = "claim", value_parser = parse_pair)]
    pub claims: Vec<(String, String)>,
    /// Sign with this PEM key instead of the dev key (needs --allow-non-dev-key).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The `kid` to put in the header.
    #[arg(long, default_value = crate::token::DEV_KID)]
    pub kid: String,
    /// Allow a key other than the dev key. Tokens are for testing, never production.
    #[arg(long)]
    pub allow_non_dev_key: bool,
    /// Print the JWKS that verifies the key's tokens, instead of a token.
    #[arg(long)]
    pub jwks: bool,
    /// A server config to check the token against (a warning if its issuer would
    /// refuse it); default: ./hopwarden.yaml when there is one.
    #[arg(long, short, env = "HOPWARDEN_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `NAME=VALUE` command-line pairs (claims, headers).
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    Ok((k.to_string(), v.to_string()))
}

/// `hopwarden token`: prints a token (or the JWKS) on stdout.
pub fn token(args: &TokenArgs) -> ExitCode {
    use crate::token::{SigningKey, TokenRequest};
    let key = match &args.key {
        None => SigningKey::dev(),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(pem) => SigningKey::from_pem(&pem, &args.kid, args.allow_non_dev_key),
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
    };
    let result = key.and_then(|key| {
        if args.jwks {
            return key.jwks().map(|j| j.to_string());
        }
        let req = TokenRequest {
            issuer: args.iss.clone(),
            subject: args.sub.clone().unwrap_or_default(),
            audiences: args.audiences.clone(),
            scopes: args.scope.split_whitespace().map(str::to_string).collect(),
            lifetime: args.ttl,
            claims: args.claims.clone(),
        };
        key.mint(&req, crate::authn::jwt::now_secs())
    });
    match result {
        Ok(out) => {
            if !args.jwks {
                for warning in token_warnings(args) {
                    eprintln!("warning: {warning}");
                }
            }
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why the server with `--config` (or ./hopwarden.yaml) would refuse a token minted
/// with `args`: an issuer it does not know, or a lifetime over its `max_lifetime`.
fn token_warnings(args: &TokenArgs) -> Vec<String> {
    let (path, given) = match &args.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from("hopwarden.yaml"), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(_) if !given => return Vec::new(),
        Err(e) => {
            return vec![format!(
                "{}: cannot check the token against it: {e}",
                path.display()
            )]
        }
    };
    let config = match Config::from_str(&text, &path) {
        Ok(config) => config,
        Err(errors) => {
            let first = errors.first().map(ToString::to_string).unwrap_or_default();
            return vec![format!(
                "cannot check the token against the config: {first}"
            )];
        }
    };
    let Some(issuer) = config.issuers.iter().find(|i| i.spec.issuer == args.iss) else {
        return vec![format!(
            "{}: no issuer {:?}: hopwarden with this config will refuse the token",
            path.display(),
            args.iss
        )];
    };
    match issuer.spec.max_lifetime {
        Some(max) if args.ttl > max => vec![format!(
            "--ttl {} is longer than max_lifetime {} of issuer {:?} in {}: hopwarden will refuse the token (invalid_token)",
            humantime::format_duration(args.ttl),
            humantime::format_duration(max),
            args.iss,
            path.display()
        )],
        _ => Vec::new(),
    }
}
