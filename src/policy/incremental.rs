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
        // Files compile apart (an estate's first load is thousands of them); what
        // spans files is checked below, in load order.
        let compiled = map_on_cores(sources, |source| compile_one(source, previous));
        for (source, (digest, policy)) in sources.iter().zip(compiled) {
            let file = &source.0;
            let Some(policy) = policy else {
                return full();
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

/// One source's digest and compiled policy (`previous`'s when its contents are
/// unchanged); `None`: the file has errors (a full compile reports them).
fn compile_one(
    source: &(PathBuf, String),
    previous: &PolicySet,
) -> ([u8; 32], Option<Arc<ServicePolicy>>) {
    let (file, text) = source;
    let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    let known = previous.files.get(file).filter(|f| f.digest == digest);
    if let Some(policy) = known.and_then(|f| previous.services.get(&f.service)) {
        return (digest, Some(policy.clone()));
    }
    let compiled = compile::compile_sources(std::slice::from_ref(source)).ok();
    (digest, compiled.and_then(|c| c.into_values().next()))
}

/// Files per thread below which [`map_on_cores`] stays on the calling thread.
const FILES_PER_THREAD: usize = 32;

/// `f` of each item, in order: on every core when there are many items, each
/// thread taking a contiguous share.
fn map_on_cores<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let shares = crate::cores::map_shares(items, FILES_PER_THREAD, |_, share| {
        share.iter().map(&f).collect::<Vec<R>>()
    });
    let mut out = Vec::with_capacity(items.len());
    for share in shares {
        // A panic is the caller's, as it would be on one thread.
        match share {
            Ok(results) => out.extend(results),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    out
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

    #[test]
    fn many_files_compile_on_every_core_with_the_same_result() {
        // Enough files to be compiled on several threads (when there are several
        // cores), in load order for what spans files.
        let estate = |changed: usize, text: &dyn Fn(usize) -> String| -> Vec<(PathBuf, String)> {
            (0..200)
                .map(|i| {
                    let body = if i == changed {
                        text(i)
                    } else {
                        format!("service: s{i}\nrules:\n  - {{id: r{i}}}\n")
                    };
                    source(&format!("s{i:03}.yaml"), &body)
                })
                .collect()
        };
        let plain = estate(usize::MAX, &|_| String::new());
        let first = PolicySet::compile_reusing(&plain, &PolicySet::empty()).unwrap();
        assert_eq!(first.len(), 200);
        let edited = estate(150, &|i| {
            format!("service: s{i}\nrules:\n  - {{id: r{i}-new}}\n")
        });
        let second = PolicySet::compile_reusing(&edited, &first).unwrap();
        for i in 0..200 {
            assert_eq!(
                second.shares_policy(&first, &format!("s{i}")),
                i != 150,
                "s{i}"
            );
        }
        // Errors late in the estate, in files compiled on another thread than the
        // files they clash with: exactly the full load's.
        let clashes = [
            estate(190, &|_| {
                "service: s190\nrules:\n  - {id: r3}\n".to_string()
            }),
            estate(190, &|_| "service: s4\n".to_string()),
            estate(190, &|_| {
                "service: s190\nrules:\n  - {id: r190, bogus: 1}\n".to_string()
            }),
        ];
        for sources in clashes {
            let err = PolicySet::compile_reusing(&sources, &second).unwrap_err();
            assert_eq!(err, PolicySet::from_sources(&sources).unwrap_err());
            assert!(err.to_string().contains("s190.yaml"), "{err}");
        }
    }
}
