//! API keys in the review: what each key may reach, and which keys need a look
//! (no expiry, expired, never used in the decision logs, principal named by no rule).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{Flag, Usage};
use crate::apikey::file::format_time;
use crate::apikey::{KeyEntry, KeySet};
use crate::policy::{Effect, FromClause, PolicySet};
use crate::principal::Principal;

/// One key, reviewed.
#[derive(Debug, Serialize)]
pub struct KeyAccess {
    /// The key file.
    pub file: String,
    /// The key id.
    pub id: String,
    /// The principal it stands for.
    pub principal: String,
    /// `service` or `user`.
    pub kind: &'static str,
    /// Scopes it grants.
    pub scopes: Vec<String>,
    /// When it expires (RFC 3339), if it does.
    pub expires: Option<String>,
    /// `service/rule` of each allow rule whose `from` and scopes the key satisfies
    /// (its `to` and `when` still apply).
    pub reaches: Vec<String>,
    /// Allowed requests the decision logs credit it with, when logs were given.
    pub used: Option<u64>,
    /// What a reviewer should look at.
    pub flags: Vec<Flag>,
}

/// Reviews every key of `sets` against `policies` at `now` (since the epoch).
pub fn review(
    policies: &PolicySet,
    sets: &[(PathBuf, KeySet)],
    usage: Option<&Usage>,
    now: Duration,
) -> Vec<KeyAccess> {
    let mut out = Vec::new();
    for (file, set) in sets {
        for entry in set.entries() {
            out.push(one(policies, file, entry, usage, now));
        }
    }
    out
}

fn one(
    policies: &PolicySet,
    file: &std::path::Path,
    entry: &KeyEntry,
    usage: Option<&Usage>,
    now: Duration,
) -> KeyAccess {
    let caller = Principal::from_api_key(entry, None);
    let mut reaches = Vec::new();
    let mut named = false;
    for policy in policies.services() {
        for rule in policy.rules() {
            if let FromClause::Authenticated(c) = rule.from() {
                let names = c
                    .principals()
                    .is_some_and(|list| list.iter().any(|p| p.matches(&caller.id)));
                named |= names;
            }
            if rule.effect() == Effect::Allow
                && rule.from().matches(Effect::Allow, Some(&caller))
                && caller.has_scopes(rule.scopes())
            {
                reaches.push(format!("{}/{}", policy.service(), rule.id()));
            }
        }
    }
    let mut flags = Vec::new();
    match entry.expires {
        None => flags.push(Flag {
            kind: "no_expiry",
            message: "never expires: give it an `expires` and rotate it".into(),
        }),
        Some(exp) if exp <= now => flags.push(Flag {
            kind: "expired",
            message: format!("expired at {}: remove the entry", format_time(exp)),
        }),
        Some(_) => {}
    }
    if !named {
        flags.push(Flag {
            kind: "unnamed_principal",
            message: format!(
                "no rule names principal {:?}: it reaches only what any caller may",
                entry.principal
            ),
        });
    }
    let used = usage.map(|u| u.key_uses(&entry.id));
    if used == Some(0) {
        flags.push(Flag {
            kind: "unused",
            message: "never used in the decision logs: a revocation candidate".into(),
        });
    }
    KeyAccess {
        file: file.display().to_string(),
        id: entry.id.clone(),
        principal: entry.principal.clone(),
        kind: entry.kind.as_str(),
        scopes: entry.scopes.clone(),
        expires: entry.expires.map(format_time),
        reaches,
        used,
        flags,
    }
}

/// The keys as text (also Markdown-safe: a plain list).
pub fn render(keys: &[KeyAccess], out: &mut String) {
    if keys.is_empty() {
        return;
    }
    out.push_str("api keys:\n");
    for k in keys {
        let expires = k.expires.as_deref().unwrap_or("never");
        let _ = writeln!(
            out,
            "  {} ({}): principal {} ({}), scopes [{}], expires {expires}",
            k.id,
            k.file,
            k.principal,
            k.kind,
            k.scopes.join(" ")
        );
        let reaches = if k.reaches.is_empty() {
            "nothing".to_string()
        } else {
            k.reaches.join(", ")
        };
        let _ = writeln!(out, "    reaches: {reaches}");
        if let Some(n) = k.used {
            let _ = writeln!(out, "    used: {n} allowed request(s)");
        }
        for f in &k.flags {
            let _ = writeln!(out, "    flag {}: {}", f.kind, f.message);
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn keys_are_reviewed_against_the_rules() {
        let policy = "service: media
rules:
  - {id: keyed, from: {principals: [partner], credentials: [api_key]}, to: [{paths: [/t]}], scopes: [t.write]}
  - {id: jwt-only, from: {principals: [partner], credentials: [jwt]}, to: [{paths: [/j]}]}
  - {id: anyone, to: [{paths: [/public]}]}
";
        let policies = PolicySet::from_sources(&[("m.yaml".into(), policy.into())]).unwrap();
        let key = |id: &str, principal: &str, extra: &str| {
            let k = crate::apikey::NewKey::with_id(id.into()).unwrap();
            format!(
                "  - {{id: {id}, digest: '{}', principal: {principal}{extra}}}\n",
                k.digest()
            )
        };
        let text = format!(
            "keys:\n{}{}{}",
            key(
                "a",
                "partner",
                ", scopes: [t.write], expires: 2030-01-01T00:00:00Z"
            ),
            key("b", "partner", ", expires: 2020-01-01T00:00:00Z"),
            key("c", "stranger", "")
        );
        let set = crate::apikey::file::parse(&text, Path::new("k.yaml")).unwrap();
        let mut usage = Usage::default();
        usage.add(r#"{"timestamp":"t","service":"media","decision":"allow","rule":"keyed","api_key":"a"}"#);
        let now = Duration::from_secs(1_800_000_000);
        let keys = review(&policies, &[("k.yaml".into(), set)], Some(&usage), now);
        type Row<'a> = (&'a str, Vec<&'a str>, Vec<&'a str>, Option<u64>);
        let got: Vec<Row> = keys
            .iter()
            .map(|k| {
                let reaches = k.reaches.iter().map(String::as_str).collect();
                let flags = k.flags.iter().map(|f| f.kind).collect();
                (k.id.as_str(), reaches, flags, k.used)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", vec!["media/keyed", "media/anyone"], vec![], Some(1)),
                (
                    "b",
                    vec!["media/anyone"],
                    vec!["expired", "unused"],
                    Some(0)
                ),
                (
                    "c",
                    vec!["media/anyone"],
                    vec!["no_expiry", "unnamed_principal", "unused"],
                    Some(0)
                ),
            ]
        );
        let mut out = String::new();
        render(&keys, &mut out);
        assert!(out.contains("  a (k.yaml): principal partner (service), scopes [t.write], expires 2030-01-01T00:00:00Z\n    reaches: media/keyed, media/anyone\n    used: 1"), "{out}");
    }
}
