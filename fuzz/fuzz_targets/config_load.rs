//! Server config YAML (src/config.rs, src/yaml.rs): parse and validate, as `serve`,
//! `validate` and every tool do first.
//!
//! Input: the text of a config file.
//!
//! Properties: no panic, no hang, bounded memory. A config that loads has an issuer
//! entry for each issuer spec, each with at least one algorithm and exactly one key
//! source; one that does not reports errors with messages.
#![no_main]

use std::path::Path;

use hopwarden::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_str(text, Path::new("/etc/hopwarden/config.yaml")) {
        Ok(config) => {
            assert_eq!(config.issuers.len(), config.spec.issuers.len());
            for issuer in &config.issuers {
                assert!(!issuer.algorithms.is_empty(), "{}", issuer.spec.issuer);
                let sources = [
                    issuer.spec.jwks_file.is_some(),
                    issuer.spec.jwks_uri.is_some(),
                    issuer.spec.secret_file.is_some(),
                ];
                assert_eq!(
                    sources.iter().filter(|s| **s).count(),
                    1,
                    "{}",
                    issuer.spec.issuer
                );
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                assert!(!e.to_string().is_empty());
            }
        }
    }
});
