//! `hopwarden suggest`: least-privilege draft policies from decision logs.
//!
//! The allowed requests in the logs (a dry-run rollout's, say) are folded per service
//! and caller into path templates ([`template`]: ids become `{id}`, nothing becomes a
//! wildcard), and each caller gets one rule allowing exactly the methods and templates
//! it was seen using ([`draft`]) and requiring the scopes all those requests carried
//! (the decision log's `scopes`), with a suite of the same requests. The drafts are
//! compiled and their suites run before the command says they are good.

mod draft;
mod observed;
mod template;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::policy::PolicySet;

/// `hopwarden suggest` arguments.
#[derive(Debug, clap::Args)]
pub struct SuggestArgs {
    /// A decision log (JSON lines, `decision_log.to`); repeat for several.
    #[arg(long, required = true, num_args = 1..)]
    pub usage: Vec<PathBuf>,
    /// Only this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Where to write `SERVICE.yaml` and `SERVICE_test.yaml`: a new or empty directory.
    #[arg(long, default_value = "suggested")]
    pub out: PathBuf,
    /// The issuer token callers' rules require (the decision log does not record it).
    #[arg(long)]
    pub issuer: Option<String>,
}

/// `hopwarden suggest`: writes the drafts and says what they cover; exit 1 when the
/// logs cannot be read, hold nothing to draft from, or the output cannot be written.
pub fn run(args: &SuggestArgs) -> ExitCode {
    match suggest(args) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn suggest(args: &SuggestArgs) -> Result<String, String> {
    let mut seen = observed::Observed::default();
    let only = args.service.as_deref();
    let files = crate::review::usage::each_line(&args.usage, |line| seen.add(line, only))?;
    if seen.services.is_empty() {
        return Err(format!(
            "{}: no allowed request with a caller{} ({} decision line(s), {} other line(s)); suggest reads hopwarden's JSON decision log (decision_log.to)",
            files.join(", "),
            only.map(|s| format!(" to service {s:?}")).unwrap_or_default(),
            seen.decisions,
            seen.skipped
        ));
    }
    let drafts = draft::drafts(&seen);
    let period = match (&seen.first, &seen.last) {
        (Some(f), Some(l)) => format!("{f} .. {l}"),
        _ => "no timestamps".to_string(),
    };
    let issuer = args.issuer.as_deref();
    let files: Vec<(PathBuf, String)> = drafts
        .iter()
        .flat_map(|p| {
            [
                (
                    args.out.join(format!("{}.yaml", p.service)),
                    draft::policy_yaml(p, issuer, &period),
                ),
                (
                    args.out.join(format!("{}_test.yaml", p.service)),
                    draft::suite_yaml(p, issuer),
                ),
            ]
        })
        .collect();
    check(&files)?;
    write(&args.out, &files)?;
    Ok(report(&seen, &drafts, &args.out))
}

/// The drafts must compile and pass their own suites: a draft that does not is a bug
/// here, and is never written.
fn check(files: &[(PathBuf, String)]) -> Result<(), String> {
    let policies: Vec<(PathBuf, String)> = files
        .iter()
        .filter(|(p, _)| !p.to_string_lossy().ends_with("_test.yaml"))
        .cloned()
        .collect();
    let set = PolicySet::from_sources(&policies)
        .map_err(|e| format!("the draft does not compile (a bug in suggest):\n{e}"))?;
    for (path, text) in files
        .iter()
        .filter(|(p, _)| !policies.iter().any(|(q, _)| q == p))
    {
        let suite = crate::suite::Suite::from_str(text, path, &set).map_err(|errors| {
            let first = errors.first().map(ToString::to_string).unwrap_or_default();
            format!("the draft's suite does not load (a bug in suggest): {first}")
        })?;
        for case in &suite.cases {
            let got = crate::suite::decide(&set, case);
            if let Some(why) = crate::suite::mismatch(&case.expect, &got) {
                return Err(format!(
                    "the draft fails its own case {:?} (a bug in suggest): {why}",
                    case.name
                ));
            }
        }
    }
    Ok(())
}

/// Writes into a new or empty `out`: never over a policy someone wrote.
fn write(out: &Path, files: &[(PathBuf, String)]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", out.display());
    if out.exists() {
        let mut entries = std::fs::read_dir(out).map_err(fail)?;
        if entries.next().is_some() {
            return Err(format!(
                "{}: exists and is not empty; give --out a new or empty directory",
                out.display()
            ));
        }
    }
    std::fs::create_dir_all(out).map_err(fail)?;
    for (path, text) in files {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn report(seen: &observed::Observed, drafts: &[draft::DraftPolicy], out: &Path) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for p in drafts {
        let total: u64 = p.rules.iter().map(|r| r.requests).sum();
        let _ = writeln!(
            s,
            "{}: {} rule(s) covering {total} request(s) -> {}, {}",
            p.service,
            p.rules.len(),
            out.join(format!("{}.yaml", p.service)).display(),
            out.join(format!("{}_test.yaml", p.service)).display()
        );
        for r in &p.rules {
            let templates: std::collections::BTreeSet<&str> =
                r.actions.iter().map(|(_, t, _, _)| t.as_str()).collect();
            let _ = writeln!(
                s,
                "  {}: {} request(s), {} path template(s), caller {}",
                r.id,
                r.requests,
                templates.len(),
                r.principal
            );
            if r.scopes.is_empty() {
                let _ = writeln!(
                    s,
                    "    scopes: none carried by every request: the rule requires none; add the ones it should"
                );
            } else {
                let _ = writeln!(s, "    scopes required: {}", r.scopes.join(" "));
            }
            if r.scopes_truncated > 0 {
                let _ = writeln!(
                    s,
                    "    scopes cut in the log for {} request(s) (scopes_truncated): the rule may lack scopes they carried",
                    r.scopes_truncated
                );
            }
            for note in &r.not_generalised {
                let _ = writeln!(s, "    not generalised: {note}");
            }
            if r.over_bound > 0 {
                let _ = writeln!(
                    s,
                    "    not covered: {} request(s) beyond {} distinct paths (not allowed by the draft)",
                    r.over_bound,
                    observed::MAX_TEMPLATES_PER_CALLER
                );
            }
        }
    }
    let mut left = Vec::new();
    for (n, what) in [
        (seen.denied, "denied request(s) (a denial is not a need)"),
        (
            seen.anonymous,
            "anonymous request(s) (suggest drafts no anonymous rule)",
        ),
        (
            seen.unusable,
            "request(s) with a path or method no rule can name",
        ),
        (
            seen.over_callers,
            "request(s) from callers beyond the first 10000",
        ),
        (seen.other_services, "request(s) to other services"),
        (seen.skipped, "line(s) that are not decisions"),
    ] {
        if n > 0 {
            left.push(format!("{n} {what}"));
        }
    }
    if !left.is_empty() {
        let _ = writeln!(s, "not drafted: {}", left.join(", "));
    }
    for path in &seen.unusable_paths {
        let _ = writeln!(s, "  not drafted: {path}");
    }
    let _ = writeln!(
        s,
        "checked: the drafts compile and pass their suites (hopwarden validate; hopwarden test {})",
        out.display()
    );
    s
}

#[cfg(test)]
mod tests;
