//! Policy YAML compile (src/policy/compile.rs, src/yaml.rs): what `hopwarden validate`
//! and every reload run on files an operator (or a git-sync) writes.
//!
//! Input: the text of one policy file.
//!
//! Properties: no panic, no hang (libFuzzer's timeout), bounded memory (its RSS limit).
//! A file that compiles names one service with at least one audience and rules with
//! unique, non-empty ids; compiling the same text again gives the same rules. A file
//! that does not compile reports at least one error, each with a message.
#![no_main]

use std::path::PathBuf;

use hopwarden::policy::PolicySet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sources = [(PathBuf::from("policies/fuzz.yaml"), text.to_string())];
    match PolicySet::from_sources(&sources) {
        Ok(set) => {
            let again = PolicySet::from_sources(&sources).expect("compiles twice");
            assert_eq!(set.len(), again.len());
            for (policy, same) in set.services().zip(again.services()) {
                assert!(!policy.service().is_empty());
                assert!(!policy.audiences().is_empty(), "{}", policy.service());
                let ids: Vec<&str> = policy.rules().map(|r| r.id()).collect();
                let again: Vec<&str> = same.rules().map(|r| r.id()).collect();
                assert_eq!(ids, again);
                let mut unique = ids.clone();
                unique.sort_unstable();
                unique.dedup();
                assert_eq!(unique.len(), ids.len(), "duplicate rule ids {ids:?}");
                assert!(ids.iter().all(|id| !id.is_empty()));
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error with no errors");
            for e in &errors.0 {
                assert!(!e.message.is_empty());
            }
        }
    }
});
