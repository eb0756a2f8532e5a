//! `hopwarden diff`: what a policy change grants or takes away.
//!
//! Both sides are compiled exactly as `serve` compiles them and broken into atoms
//! (one caller, one method, one target, with the scopes and conditions they need:
//! [`atoms`]). What one side's atoms cover is compared with the other's ([`compare`]),
//! so renaming a rule, reordering a file or editing a comment changes nothing, and
//! the report speaks of callers and actions, never of YAML lines.

mod atoms;
mod compare;
mod git;
mod limits;
mod render;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use crate::policy::PolicySet;

/// `text`, `markdown` or `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Lines for a terminal or a CI log.
    Text,
    /// A pull-request comment.
    Markdown,
    /// Everything, for tools.
    Json,
}

/// When `--fail-on` makes the command exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// Any change that widens access.
    Broaden,
}

/// `hopwarden diff` arguments.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The policy directory before the change (with --git: the working tree's policy
    /// directory, default the config's `policies`).
    pub old: Option<PathBuf>,
    /// The policy directory after the change (not with --git).
    pub new: Option<PathBuf>,
    /// Compare the policy directory as committed at this revision (before) with the
    /// working tree (after).
    #[arg(long, value_name = "REV")]
    pub git: Option<String>,
    /// The server config file (read only with --git and no directory).
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
    /// Exit 1 when the change does this (a CI gate).
    #[arg(long, value_enum)]
    pub fail_on: Option<FailOn>,
}

/// What a change does to access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Something is allowed that was not.
    Widens,
    /// Something is denied that was allowed.
    Narrows,
    /// Neither by itself (a new policy: its grants are listed as their own changes).
    Neutral,
}

/// The kind of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A policy for a service that had none (before, every request was denied).
    PolicyAdded,
    /// The service's policy is gone: every request to it is denied.
    PolicyRemoved,
    /// The policy switched from enforce to dry-run.
    DryRun,
    /// The policy switched from dry-run to enforce.
    Enforce,
    /// Tokens for one more audience are accepted.
    AudienceAdded,
    /// Tokens for an audience are no longer accepted.
    AudienceRemoved,
    /// A caller may perform an action no rule allowed it before.
    Gained,
    /// An allowed action now admits more: a wider `from`, method or path, fewer
    /// scopes or conditions.
    Widened,
    /// A caller may no longer perform an action.
    Lost,
    /// An allowed action now admits less.
    Narrowed,
    /// An enforced denial is gone.
    DenyRemoved,
    /// An enforced denial now covers less.
    DenyNarrowed,
    /// An enforced deny rule switched to dry-run: it no longer denies.
    DenyDryRun,
    /// A new enforced denial.
    DenyAdded,
    /// An enforced denial now covers more.
    DenyWidened,
    /// A dry-run deny rule is now enforced.
    DenyEnforced,
    /// A rate limit was removed: its requests are no longer limited.
    LimitRemoved,
    /// A rate limit's rate or burst was raised.
    LimitRaised,
    /// A rate limit now counts fewer requests (a narrower `from`, `to` or `when`).
    LimitNarrowed,
    /// A rate limit's budget changed hands (`per`): widens from `service` to
    /// `principal`, narrows the other way.
    LimitPer,
    /// An allow rule's requests no longer count against a rate limit.
    LimitDetached,
    /// A new rate limit.
    LimitAdded,
    /// A rate limit's rate or burst was lowered.
    LimitLowered,
    /// A rate limit now counts more requests.
    LimitWidened,
    /// An allow rule's requests now count against a rate limit.
    LimitAttached,
}

/// One change in access to one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// What happened.
    pub kind: Kind,
    /// Whether it widens or narrows access.
    pub direction: Direction,
    /// The rule (after the change; before it, for what was removed).
    pub rule: Option<String>,
    /// Who: `principal …`, `peer …`, `any authenticated caller`, with conditions.
    pub caller: Option<String>,
    /// What: `GET /transactions/{id}`, `* grpc:pkg.S/M`, `any action`.
    pub actions: Vec<String>,
    /// Scopes and `when` conditions the grant (or denial) needs.
    pub requires: Vec<String>,
    /// What changed (`from: … -> …`), or what the change means.
    pub detail: Vec<String>,
    /// A grant to a wildcard caller, path or method pattern, or to any action.
    pub wildcard: bool,
    /// The rate limit the change is about (after the change; before it, if removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

impl Change {
    fn new(kind: Kind, direction: Direction) -> Change {
        Change {
            kind,
            direction,
            rule: None,
            caller: None,
            actions: Vec::new(),
            requires: Vec::new(),
            detail: Vec::new(),
            wildcard: false,
            limit: None,
        }
    }
}

/// One service's changes.
#[derive(Debug, Serialize)]
pub struct ServiceDiff {
    /// The service.
    pub service: String,
    /// Its changes, widening ones first.
    pub changes: Vec<Change>,
}

/// The whole comparison.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The policies before (a directory, or `REV:dir`).
    pub old: String,
    /// The policies after.
    pub new: String,
    /// Services with a policy on either side.
    pub services_compared: usize,
    /// Changes that widen access.
    pub widens: usize,
    /// Changes that narrow access.
    pub narrows: usize,
    /// Of the widening changes, grants to a wildcard.
    pub wildcard_grants: usize,
    /// Services whose access changed, by name.
    pub services: Vec<ServiceDiff>,
}

/// Compares two compiled policy sets.
pub fn diff(old: &PolicySet, new: &PolicySet, old_label: &str, new_label: &str) -> Report {
    let names: BTreeSet<&str> = old
        .services()
        .chain(new.services())
        .map(|p| p.service())
        .collect();
    let mut services = Vec::new();
    for name in &names {
        let found = compare::service(
            old.get(name).map(|p| p.as_ref()),
            new.get(name).map(|p| p.as_ref()),
        );
        let changes = merge(found);
        if !changes.is_empty() {
            services.push(ServiceDiff {
                service: name.to_string(),
                changes,
            });
        }
    }
    let all = || services.iter().flat_map(|s| &s.changes);
    let count = |d: Direction| all().filter(|c| c.direction == d).count();
    Report {
        old: old_label.to_string(),
        new: new_label.to_string(),
        services_compared: names.len(),
        widens: count(Direction::Widens),
        narrows: count(Direction::Narrows),
        wildcard_grants: all()
            .filter(|c| c.wildcard && c.direction == Direction::Widens)
            .count(),
        services,
    }
}

/// One change per rule, caller, requirement and detail, listing its actions; in a
/// stable order (widening first), whatever the order of the files.
fn merge(found: Vec<Change>) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    for change in found {
        let same = out.iter_mut().find(|c| {
            (
                c.kind,
                c.direction,
                &c.rule,
                &c.limit,
                &c.caller,
                &c.requires,
                &c.detail,
                c.wildcard,
            ) == (
                change.kind,
                change.direction,
                &change.rule,
                &change.limit,
                &change.caller,
                &change.requires,
                &change.detail,
                change.wildcard,
            )
        });
        match same {
            Some(c) => {
                for a in change.actions {
                    if !c.actions.contains(&a) {
                        c.actions.push(a);
                    }
                }
            }
            None => out.push(change),
        }
    }
    for c in &mut out {
        c.actions.sort();
    }
    // "New policy" heads its service's list; then widening changes, then narrowing.
    out.sort_by(|a, b| {
        let key = |c: &Change| (c.kind != Kind::PolicyAdded, c.direction, c.kind);
        key(a)
            .cmp(&key(b))
            .then_with(|| (&a.caller, &a.actions, &a.rule).cmp(&(&b.caller, &b.actions, &b.rule)))
    });
    out
}

/// `hopwarden diff`: prints the report; exit 1 with `--fail-on broaden` when access
/// widens, 2 when a side cannot be read or compiled.
pub fn run(args: &DiffArgs) -> ExitCode {
    let error = ExitCode::from(2);
    let sides = match (&args.git, &args.old, &args.new) {
        (Some(rev), dir, None) => {
            let dir = match crate::cli::policy_dir(dir.as_deref(), &args.config) {
                Ok(d) => d,
                Err(_) => return error,
            };
            git::at_revision(&dir, rev).map(|(old, label)| {
                let new = PolicySet::load_dir(&dir).map_err(|e| e.to_string());
                (old, label, new, dir.display().to_string())
            })
        }
        (Some(_), _, Some(_)) => Err("with --git, give at most one directory".to_string()),
        (None, Some(old), Some(new)) => {
            let load = |d: &PathBuf| PolicySet::load_dir(d).map_err(|e| e.to_string());
            Ok((
                load(old),
                old.display().to_string(),
                load(new),
                new.display().to_string(),
            ))
        }
        (None, _, _) => Err("give two policy directories (OLD NEW), or --git REV".to_string()),
    };
    let (old, old_label, new, new_label) = match sides {
        Ok(sides) => sides,
        Err(e) => {
            eprintln!("error: {e}");
            return error;
        }
    };
    let (old, new) = match (old, new) {
        (Ok(old), Ok(new)) => (old, new),
        (old, new) => {
            for (label, side) in [(&old_label, old.err()), (&new_label, new.err())] {
                if let Some(e) = side {
                    eprintln!("error: {label}: policies do not compile:\n{e}");
                }
            }
            return error;
        }
    };
    let report = diff(&old, &new, &old_label, &new_label);
    let out = match args.format {
        Format::Text => render::text(&report),
        Format::Markdown => render::markdown(&report),
        Format::Json => match serde_json::to_string_pretty(&report) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("error: {e}");
                return error;
            }
        },
    };
    print!("{out}");
    match args.fail_on {
        Some(FailOn::Broaden) if report.widens > 0 => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

#[cfg(test)]
mod tests;
