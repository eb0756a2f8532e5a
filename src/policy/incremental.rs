//! Loading a policy directory again, recompiling only the files that changed.
//!
//! An estate has hundreds of services, one file each, and a reload is usually one
//! edited file. Compiling every file again took time proportional to the estate and
//! gave every service a new compiled policy, which made every cached decision
//! unreachable. Here a file whose contents are byte for byte what the last good set
//! compiled keeps that set's [`ServicePolicy`] (the same `Arc`, and so the same
//! [`ServicePolicy::revision`], which the decision cache keys on); only the other
//! files are compiled. What spans files (a service or rule id defined twice) is
//! checked again over the whole set. Any error at all makes the whole directory be
//! compiled from scratch, so the errors reported are exactly a full load's.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{compile, PolicyErrors, PolicySet, ServicePolicy};

/// What the set remembers of each file it was compiled from.
#[derive(Debug, Clone)]
pub(super) struct SourceFile {
    /// SHA-256 of the contents: equal contents compile to an equal policy.
    digest: [u8; 32],
    /// The service the file defines.
    service: String,
}

/// Revisions are unique across every policy compiled by this process, so a cache
/// key holding one can never be produced by a different policy.
static NEXT_REVISION: AtomicU64 = AtomicU64::new(1);

/// A fresh revision for a newly compiled policy.
pub(super) fn next_revision() -> u64 {
    NEXT_REVISION.fetch_add(1, Ordering::Relaxed)
}

impl PolicySet {
    /// Compiles `sources` (`(file, contents)` in load order), reusing `previous`'s
    /// compiled policy for every file whose contents it compiled unchanged.
    pub(super) fn compile_reusing(
        sources: &[(PathBuf, String)],
        previous: &PolicySet,
    ) -> Result<PolicySet, PolicyErrors> {
        let full = || PolicySet::from_sources(sources);
        let mut services = BTreeMap::new();
        let mut files = HashMap::with_capacity(sources.len());
        let mut service_files: HashMap<String, &Path> = HashMap::new();
        let mut rule_ids: HashMap<Arc<str>, &Path> = HashMap::new();
        for source in sources {
            let (file, text) = source;
            let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
            let known = previous.files.get(file).filter(|f| f.digest == digest);
            let policy = match known.and_then(|f| previous.services.get(&f.service)) {
                Some(policy) => policy.clone(),
                None => {
                    let one = std::slice::from_ref(source);
                    let Ok(compiled) = compile::compile_sources(one) else {
                        return full();
                    };
                    let Some((_, policy)) = compiled.into_iter().next() else {
                        return full();
                    };
                    policy
                }
            };
            // Across files: each service and each rule id once (a file alone was
            // checked when compiled, and 100,000 ids are not free to check again).
            if sources.len() > 1 {
                if service_files
                    .insert(policy.service().to_string(), file)
                    .is_some()
                {
                    return full();
                }
                for rule in policy.rules() {
                    if rule_ids.insert(rule.id.clone(), file).is_some() {
                        return full();
                    }
                }
            }
            let service = policy.service().to_string();
            files.insert(file.clone(), SourceFile { digest, service });
            services.insert(policy.service().to_string(), policy);
        }
        Ok(PolicySet { services, files })
    }

    /// Whether `service` has the very compiled policy it has in `other` (nothing
    /// about it was recompiled between the two sets).
    pub fn shares_policy(&self, other: &PolicySet, service: &str) -> bool {
        match (self.get(service), other.get(service)) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl ServicePolicy {
    /// Identifies this compiled policy: unique in the process, and kept by a reload
    /// that did not change the service's file, so decisions cached under it stay
    /// valid exactly as long as the policy does.
    pub fn revision(&self) -> u64 {
        self.revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str, text: &str) -> (PathBuf, String) {
        (PathBuf::from(name), text.to_string())
    }

    #[test]
    fn unchanged_files_keep_their_policy_and_revision() {
        let a = source("a.yaml", "service: a\nrules:\n  - {id: a1}\n");
        let b = source("b.yaml", "service: b\nrules:\n  - {id: b1}\n");
        let first = PolicySet::compile_reusing(&[a.clone(), b.clone()], &PolicySet::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        let b2 = source("b.yaml", "service: b\nrules:\n  - {id: b2}\n");
        let second = PolicySet::compile_reusing(&[a.clone(), b2.clone()], &first)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(second.shares_policy(&first, "a"));
        assert!(!second.shares_policy(&first, "b"));
        let revision = |s: &PolicySet, name: &str| s.get(name).unwrap().revision();
        assert_eq!(revision(&second, "a"), revision(&first, "a"));
        assert_ne!(revision(&second, "b"), revision(&first, "b"));
        let ids: Vec<&str> = second.get("b").unwrap().rules().map(|r| r.id()).collect();
        assert_eq!(ids, ["b2"]);

        // A file that now clashes with an unchanged one: the full load's errors.
        let clash = source("c.yaml", "service: c\nrules:\n  - {id: a1}\n");
        let err = PolicySet::compile_reusing(&[a.clone(), b2.clone(), clash.clone()], &second)
            .unwrap_err();
        let full = PolicySet::from_sources(&[a.clone(), b2.clone(), clash]).unwrap_err();
        assert_eq!(err, full);
        assert!(
            err.to_string().contains("duplicate rule id \"a1\""),
            "{err}"
        );
        let same_service = source("d.yaml", "service: a\n");
        let err = PolicySet::compile_reusing(&[a.clone(), same_service], &second).unwrap_err();
        assert!(err.to_string().contains("duplicate service \"a\""), "{err}");
        // A bad file: the full load's errors too.
        let bad = source("b.yaml", "service: b\nrules:\n  - {id: b1, bogus: 1}\n");
        let err = PolicySet::compile_reusing(&[a.clone(), bad.clone()], &second).unwrap_err();
        assert_eq!(err, PolicySet::from_sources(&[a.clone(), bad]).unwrap_err());
        // A removed file's service is gone; a renamed file with the same contents is
        // compiled again (its path is part of its error messages).
        let third = PolicySet::compile_reusing(std::slice::from_ref(&b2), &second).unwrap();
        assert!(third.get("a").is_none());
        let moved = source("z.yaml", &a.1);
        let fourth = PolicySet::compile_reusing(&[moved], &second).unwrap();
        assert!(!fourth.shares_policy(&second, "a"));
    }
}
