//! The diff report as lines for a terminal or CI log, and as a pull-request comment.

use std::fmt::Write as _;

use super::{Change, Direction, Kind, Report};

/// What the change is, in a few words.
fn what(c: &Change) -> &'static str {
    match c.kind {
        Kind::PolicyAdded => "new policy (before, every request to the service was denied)",
        Kind::PolicyRemoved => "policy removed",
        Kind::DryRun => "switched to dry-run",
        Kind::Enforce => "switched to enforce",
        Kind::AudienceAdded => "audience added",
        Kind::AudienceRemoved => "audience removed",
        Kind::Gained => "may now",
        Kind::Widened => "grant widened",
        Kind::Lost => "may no longer",
        Kind::Narrowed => "grant narrowed",
        Kind::DenyRemoved => "no longer denied: deny rule removed",
        Kind::DenyNarrowed => "no longer all denied: deny rule narrowed",
        Kind::DenyDryRun => "no longer denied: deny rule switched to dry-run",
        Kind::DenyAdded => "now denied: deny rule added",
        Kind::DenyWidened => "more denied: deny rule widened",
        Kind::DenyEnforced => "now denied: dry-run deny rule enforced",
        Kind::LimitRemoved => "rate limit removed",
        Kind::LimitRaised => "rate limit raised",
        Kind::LimitNarrowed => "rate limit counts fewer requests",
        Kind::LimitPer if c.direction == Direction::Widens => {
            "rate limit budget per caller instead of shared"
        }
        Kind::LimitPer => "rate limit budget shared instead of per caller",
        Kind::LimitDetached => "requests no longer count against a rate limit",
        Kind::LimitAdded => "rate limit added",
        Kind::LimitLowered => "rate limit lowered",
        Kind::LimitWidened => "rate limit counts more requests",
        Kind::LimitAttached => "requests now count against a rate limit",
    }
}

pub(super) fn direction_word(d: Direction) -> &'static str {
    match d {
        Direction::Widens => "widens",
        Direction::Narrows => "narrows",
        Direction::Neutral => "note",
    }
}

/// `principal X may now GET /a, GET /b` or `principal X: GET /a: grant widened`.
fn sentence(c: &Change) -> String {
    let caller = c.caller.as_deref().unwrap_or_default();
    let actions = c.actions.join(", ");
    match c.kind {
        Kind::Gained | Kind::Lost => format!("{caller} {} {actions}", what(c)),
        _ if c.caller.is_some() => format!("{caller}: {actions}: {}", what(c)),
        _ => what(c).to_string(),
    }
}

/// The closing summary: how many changes, which way, or that nothing changed.
fn summary(report: &Report) -> String {
    let total: usize = report.services.iter().map(|s| s.changes.len()).sum();
    if total == 0 {
        return format!(
            "no change in access ({} service(s) compared)",
            report.services_compared
        );
    }
    let mut out = format!(
        "{total} change(s) in {} of {} service(s): ",
        report.services.len(),
        report.services_compared
    );
    if report.widens == 0 {
        out.push_str("nothing is granted that was not before");
    } else {
        let _ = write!(out, "{} widening", report.widens);
        if report.wildcard_grants > 0 {
            let _ = write!(out, " ({} to a wildcard)", report.wildcard_grants);
        }
    }
    let _ = write!(out, ", {} narrowing", report.narrows);
    out
}

/// Lines for a terminal or a CI log.
pub(super) fn text(report: &Report) -> String {
    let mut out = format!("access changes from {} to {}\n", report.old, report.new);
    for service in &report.services {
        let _ = writeln!(out, "\n{}", service.service);
        for c in &service.changes {
            let wildcard = if c.wildcard { " [wildcard]" } else { "" };
            let _ = writeln!(
                out,
                "  {:<8} {}{wildcard}",
                direction_word(c.direction),
                sentence(c)
            );
            if !c.requires.is_empty() {
                let _ = writeln!(out, "           requires {}", c.requires.join(", "));
            }
            for d in &c.detail {
                let _ = writeln!(out, "           {d}");
            }
            if let Some(rule) = &c.rule {
                let _ = writeln!(out, "           rule {rule}");
            }
            if let Some(limit) = &c.limit {
                let _ = writeln!(out, "           limit {limit}");
            }
        }
    }
    let _ = writeln!(out, "\n{}", summary(report));
    out
}

/// Text for a Markdown table cell: no line breaks, no unescaped `|`.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// A code span in a table cell.
fn code(s: &str) -> String {
    format!("`{}`", cell(&s.replace('`', "'")))
}

/// A pull-request comment: a summary line, then a table per service.
pub(super) fn markdown(report: &Report) -> String {
    let mut out = String::from("### hopwarden: access changes\n\n");
    let _ = writeln!(
        out,
        "{} → {}: {}.",
        code(&report.old),
        code(&report.new),
        summary(report)
    );
    if report.widens > 0 {
        let _ = writeln!(
            out,
            "\n> [!WARNING]\n> This change widens access: {} change(s) below allow what was denied before.",
            report.widens
        );
    }
    for service in &report.services {
        let _ = writeln!(out, "\n#### {}\n", code(&service.service));
        out.push_str("| | change | who | actions | requires | rule |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for c in &service.changes {
            let mark = match c.direction {
                Direction::Widens => "⚠️ **widens**",
                Direction::Narrows => "narrows",
                Direction::Neutral => "note",
            };
            let mut change = cell(what(c));
            if c.wildcard {
                change.push_str(" (**wildcard**)");
            }
            for d in &c.detail {
                let _ = write!(change, "<br>{}", cell(d));
            }
            let who = c.caller.as_deref().map(code).unwrap_or_default();
            let actions: Vec<String> = c.actions.iter().map(|a| code(a)).collect();
            let requires: Vec<String> = c.requires.iter().map(|r| cell(r)).collect();
            let mut rule = c.rule.as_deref().map(code).unwrap_or_default();
            if let Some(limit) = &c.limit {
                let sep = if rule.is_empty() { "" } else { "<br>" };
                let _ = write!(rule, "{sep}limit {}", code(limit));
            }
            let _ = writeln!(
                out,
                "| {mark} | {change} | {who} | {} | {} | {rule} |",
                actions.join("<br>"),
                requires.join("<br>")
            );
        }
    }
    out
}
