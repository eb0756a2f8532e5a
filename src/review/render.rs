//! The review as an aligned text table, Markdown, Graphviz DOT, and SVG via `dot`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{Review, RuleAccess};
use crate::policy::{Effect, Mode};

const HEADINGS: [&str; 8] = [
    "SERVICE",
    "EFFECT",
    "RULE",
    "CALLERS",
    "ACTIONS",
    "SCOPES",
    "CONDITIONS",
    "TESTED",
];

fn effect(rule: &RuleAccess) -> String {
    match rule.mode {
        Mode::DryRun => format!("{} (dry-run)", rule.effect.as_str()),
        Mode::Enforce => rule.effect.as_str().to_string(),
    }
}

fn or_dash(items: &[String], sep: &str) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(sep)
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn with_used(review: &Review) -> bool {
    review.usage.is_some()
}

/// The LIMITS column only when some policy has limits.
fn with_limits(review: &Review) -> bool {
    review.services.iter().any(|s| !s.limits.is_empty())
}

/// Each row of the matrix; a rule spans as many lines as it has callers or actions.
fn rows(review: &Review) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for service in &review.services {
        for rule in &service.rules {
            let who: Vec<&String> = rule.callers.iter().chain(&rule.caller_conditions).collect();
            let height = who.len().max(rule.actions.len()).max(1);
            for i in 0..height {
                let first = i == 0;
                let cell = |s: String| if first { s } else { String::new() };
                let mut row = vec![
                    cell(service.service.clone()),
                    cell(effect(rule)),
                    cell(rule.id.clone()),
                    who.get(i).map(|s| s.to_string()).unwrap_or_default(),
                    rule.actions.get(i).cloned().unwrap_or_default(),
                    cell(or_dash(&rule.scopes, " ")),
                    cell(or_dash(&rule.conditions, ", ")),
                    cell(yes_no(rule.exercised)),
                ];
                if with_limits(review) {
                    row.push(cell(or_dash(&rule.limits, ", ")));
                }
                if with_used(review) {
                    row.push(cell(rule.used.unwrap_or(0).to_string()));
                }
                rows.push(row);
            }
        }
    }
    rows
}

fn headings(review: &Review) -> Vec<String> {
    let mut h: Vec<String> = HEADINGS.iter().map(|s| s.to_string()).collect();
    if with_limits(review) {
        h.push("LIMITS".into());
    }
    if with_used(review) {
        h.push("USED".into());
    }
    h
}

fn summary(review: &Review, out: &mut String) {
    let t = &review.tests;
    let rules: usize = review.services.iter().map(|s| s.rules.len()).sum();
    let unexercised = review
        .services
        .iter()
        .flat_map(|s| &s.rules)
        .filter(|r| !r.exercised)
        .count();
    let _ = writeln!(
        out,
        "tests: {} suite(s), {} passed, {} failed, {} did not load; {unexercised} of {rules} rule(s) not exercised",
        t.suites, t.passed, t.failed, t.load_errors
    );
    if let Some(u) = &review.usage {
        let unused: Vec<String> = review
            .services
            .iter()
            .flat_map(|s| {
                s.rules
                    .iter()
                    .filter(|r| r.effect == Effect::Allow && r.used == Some(0))
                    .map(move |r| format!("{}/{}", s.service, r.id))
            })
            .collect();
        let _ = writeln!(
            out,
            "usage: {} decision(s) from {}, period {} ({} line(s) skipped)",
            u.decisions,
            u.files.join(", "),
            u.period(),
            u.skipped
        );
        let _ = writeln!(
            out,
            "allow rules never used in that period (revocation candidates): {}",
            if unused.is_empty() {
                "none".to_string()
            } else {
                unused.join(", ")
            }
        );
    }
}

fn flags(review: &Review) -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    for s in &review.services {
        for r in &s.rules {
            for f in &r.flags {
                out.push((format!("{}/{}", s.service, r.id), f.kind, f.message.clone()));
            }
        }
    }
    out
}

/// The rate limits, one paragraph each: which callers, which actions, what rate.
/// Nothing when no policy has limits.
fn limits(review: &Review, out: &mut String) {
    let all: Vec<_> = review
        .services
        .iter()
        .flat_map(|s| s.limits.iter().map(move |l| (&s.service, l)))
        .collect();
    if all.is_empty() {
        return;
    }
    out.push_str("limits:\n");
    for (service, l) in all {
        let _ = writeln!(
            out,
            "  {service} {}: {}, burst {}, per {}",
            l.id, l.rate, l.burst, l.per
        );
        let mut who = l.callers.join(" | ");
        for c in &l.caller_conditions {
            let _ = write!(who, " {c}");
        }
        let _ = writeln!(out, "    callers: {who}");
        let _ = writeln!(out, "    actions: {}", l.actions.join(" | "));
        if !l.conditions.is_empty() {
            let _ = writeln!(out, "    when:    {}", l.conditions.join(", "));
        }
        let counts = if l.rules.is_empty() {
            "every allow it matches".to_string()
        } else {
            format!("allows by {}", l.rules.join(", "))
        };
        let _ = writeln!(out, "    counts:  {counts}");
    }
    out.push('\n');
}

/// An aligned table, then the limits, flags, tests and usage.
pub fn text(review: &Review) -> String {
    let mut all = vec![headings(review)];
    all.extend(rows(review));
    let widths: Vec<usize> = (0..all[0].len())
        .map(|c| all.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &all {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out.push('\n');
    limits(review, &mut out);
    let flags = flags(review);
    if flags.is_empty() {
        out.push_str("flags: none\n");
    } else {
        out.push_str("flags:\n");
        let w = flags.iter().map(|(r, _, _)| r.len()).max().unwrap_or(0);
        let k = flags.iter().map(|(_, k, _)| k.len()).max().unwrap_or(0);
        for (rule, kind, message) in &flags {
            let _ = writeln!(out, "  {rule:<w$}  {kind:<k$}  {message}");
        }
    }
    out.push('\n');
    super::keys::render(&review.keys, &mut out);
    summary(review, &mut out);
    out
}

fn md_cell(items: &[String]) -> String {
    if items.is_empty() {
        return "-".into();
    }
    items
        .iter()
        .map(|i| format!("`{}`", i.replace('|', "\\|").replace('`', "'")))
        .collect::<Vec<_>>()
        .join("<br>")
}

/// A Markdown table per review, then the flags as a list.
pub fn markdown(review: &Review) -> String {
    let mut out = String::from("# Access review\n\n");
    let heads = headings(review);
    let titled: Vec<String> = heads
        .iter()
        .map(|h| {
            let lower = h.to_lowercase();
            let mut c = lower.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let _ = writeln!(out, "| {} |", titled.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(titled.len()));
    for s in &review.services {
        for r in &s.rules {
            let mut cells = vec![
                s.service.clone(),
                effect(r),
                format!("`{}`", r.id),
                md_cell(&[r.callers.clone(), r.caller_conditions.clone()].concat()),
                md_cell(&r.actions),
                md_cell(&r.scopes),
                md_cell(&r.conditions),
                yes_no(r.exercised),
            ];
            if with_limits(review) {
                cells.push(md_cell(&r.limits));
            }
            if let Some(n) = r.used {
                cells.push(n.to_string());
            }
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
    }
    out.push_str("\n## Flags\n\n");
    let flags = flags(review);
    if flags.is_empty() {
        out.push_str("None.\n");
    }
    for (rule, kind, message) in flags {
        let _ = writeln!(out, "- `{rule}` **{kind}**: {message}");
    }
    if !review.keys.is_empty() {
        out.push_str("\n## API keys\n\n```\n");
        super::keys::render(&review.keys, &mut out);
        out.push_str("```\n");
    }
    out.push_str("\n## Coverage\n\n");
    summary(review, &mut out);
    out
}

fn dot_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Caller -> service edges, one per caller entry of each rule; deny edges dashed red.
pub fn dot(review: &Review) -> String {
    let mut out = String::from("digraph access {\n  rankdir=LR;\n  node [fontname=\"Helvetica\", fontsize=10];\n  edge [fontname=\"Helvetica\", fontsize=9];\n");
    let mut callers: Vec<&String> = review
        .services
        .iter()
        .flat_map(|s| s.rules.iter().flat_map(|r| &r.callers))
        .collect();
    callers.sort();
    callers.dedup();
    for s in &review.services {
        let _ = writeln!(
            out,
            "  {} [label={}, shape=box, style=filled, fillcolor=\"#dde8f8\"];",
            dot_str(&format!("service:{}", s.service)),
            dot_str(&s.service)
        );
    }
    for c in callers {
        let _ = writeln!(
            out,
            "  {} [label={}, shape=ellipse];",
            dot_str(&format!("caller:{c}")),
            dot_str(c)
        );
    }
    for s in &review.services {
        for r in &s.rules {
            let mut label = match r.effect {
                Effect::Deny => format!("deny: {}", r.id),
                Effect::Allow => r.id.clone(),
            };
            for c in &r.caller_conditions {
                label = format!("{label}\n{c}");
            }
            if !r.scopes.is_empty() {
                label = format!("{label}\n[{}]", r.scopes.join(" "));
            }
            let style = match (r.effect, r.mode) {
                (Effect::Deny, Mode::DryRun) => ", color=red, fontcolor=red, style=dotted",
                (Effect::Deny, Mode::Enforce) => ", color=red, fontcolor=red, style=dashed",
                (Effect::Allow, _) if !r.flags.iter().all(|f| f.kind == "not_exercised") => {
                    ", color=darkorange"
                }
                _ => "",
            };
            for c in &r.callers {
                let _ = writeln!(
                    out,
                    "  {} -> {} [label={}{style}];",
                    dot_str(&format!("caller:{c}")),
                    dot_str(&format!("service:{}", s.service)),
                    dot_str(&label).replace('\n', "\\n")
                );
            }
        }
    }
    out.push_str("}\n");
    out
}

/// Renders DOT to an SVG file with Graphviz's `dot`.
pub fn svg(dot_text: &str, file: &Path) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .arg("-o")
        .arg(file)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "--svg needs Graphviz's `dot` on PATH (apt-get install graphviz, brew install graphviz); or use --format dot and render it elsewhere".to_string()
            }
            _ => format!("cannot run dot: {e}"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(dot_text.as_bytes())
            .map_err(|e| format!("cannot write to dot: {e}"))?;
    }
    let status = child.wait().map_err(|e| format!("dot: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("dot failed ({status}) writing {}", file.display()))
    }
}
