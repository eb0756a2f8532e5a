//! Compiling a long file's rules on every core, as each part of the list is parsed.
//!
//! A shared platform API's file can hold 100,000 rules; one after another they
//! took half of a load. Each batch of the list is compiled on the thread that
//! parsed it, as soon as it is parsed ([`crate::yaml::from_str_listed`]: so the
//! specs of only a few rules are held at a time), without the rules' places in the
//! file: finding those costs a search per rule and serves only error messages. So
//! this is a fast path, never a second meaning: any error at all (in a rule, a
//! limit, the header, an id used twice) and the file is compiled again one rule
//! after another by [`FileContext::policy`], which reports every error where it
//! is, exactly as if this path did not exist.

use std::collections::hash_map::{Entry, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::{CompiledRules, FileContext, ServicePolicy};
use crate::policy::spec::{PolicySpec, RuleSpec};

/// Compiles rules `first..` of `file`; `None` at the first error.
pub(super) fn compile(
    file: &Path,
    text: &str,
    first: usize,
    specs: Vec<RuleSpec>,
) -> Option<CompiledRules> {
    let mut cx = FileContext::quick(file, text);
    let compiled = cx.rules(first, specs, None);
    cx.errors.is_empty().then_some(compiled)
}

/// The file's policy from its compiled parts, with its rule ids added to
/// `rule_ids`; `None` (and `rule_ids` as it was) when anything is wrong.
pub(super) fn assemble<'a>(
    file: &'a Path,
    text: &'a str,
    spec: PolicySpec,
    parts: Vec<Option<CompiledRules>>,
    rule_ids: &mut HashMap<Arc<str>, Arc<Path>>,
) -> Option<(FileContext<'a>, ServicePolicy)> {
    let mut compiled = CompiledRules::default();
    for part in parts {
        let mut part = part?;
        compiled.rules.append(&mut part.rules);
        compiled.named_limits.append(&mut part.named_limits);
    }
    let mut cx = FileContext::quick(file, text);
    let audiences = cx.header(&spec);
    if !cx.errors.is_empty() || !claim_ids(&compiled, file, rule_ids) {
        return None;
    }
    let policy = cx.assemble(spec, audiences, compiled);
    if !cx.errors.is_empty() {
        for rule in policy.rules() {
            rule_ids.remove(&rule.id);
        }
        return None;
    }
    Some((cx, policy))
}

/// Adds every rule's id to `rule_ids`; `false` (and nothing added) when one is
/// there already.
fn claim_ids(
    compiled: &CompiledRules,
    file: &Path,
    rule_ids: &mut HashMap<Arc<str>, Arc<Path>>,
) -> bool {
    let file: Arc<Path> = Arc::from(file);
    rule_ids.reserve(compiled.rules.len());
    for (n, rule) in compiled.rules.iter().enumerate() {
        match rule_ids.entry(rule.id.clone()) {
            Entry::Vacant(free) => {
                free.insert(file.clone());
            }
            Entry::Occupied(_) => {
                // Taken by another file or by an earlier rule of this one.
                for earlier in &compiled.rules[..n] {
                    rule_ids.remove(&earlier.id);
                }
                return false;
            }
        }
    }
    true
}
