//! The command line: `serve` and `validate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, KeySource};
use crate::policy::PolicySet;

/// Envoy external authorization for service-to-service traffic.
#[derive(Debug, Parser)]
#[command(name = "hopwarden", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve ext_authz (envoy.service.auth.v3) and grpc.health.v1 on one port.
    Serve {
        /// The server config file.
        #[arg(
            long,
            short,
            env = "HOPWARDEN_CONFIG",
            default_value = "hopwarden.yaml"
        )]
        config: PathBuf,
    },
    /// Check the config, key files and policies exactly as `serve` loads them.
    Validate {
        /// The server config file.
        #[arg(
            long,
            short,
            env = "HOPWARDEN_CONFIG",
            default_value = "hopwarden.yaml"
        )]
        config: PathBuf,
    },
}

/// Loads the config, printing every error with its location.
pub fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        for e in errors {
            eprintln!("error: {e}");
        }
        ExitCode::FAILURE
    })
}

/// `hopwarden validate`: exit 0 when everything loads, 1 otherwise.
pub fn validate(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut failed = false;
    let policies = match PolicySet::load_dir(&config.spec.policies) {
        Ok(set) => Some(set),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            failed = true;
            None
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for issuer in &config.issuers {
        // URLs are not fetched: validation must work offline, in CI.
        if matches!(issuer.keys, KeySource::Url(_)) {
            continue;
        }
        let keys = crate::authn::jwks::IssuerKeys::new(
            issuer.keys.clone(),
            issuer.spec.refetch_min_interval,
            reqwest::Client::new(),
        );
        if let Err(e) = runtime.block_on(keys.refresh()) {
            eprintln!(
                "error: {}: issuer {:?}: {e}",
                path.display(),
                issuer.spec.issuer
            );
            failed = true;
        }
    }
    if failed {
        return ExitCode::FAILURE;
    }
    let rules: usize = policies
        .iter()
        .flat_map(|s| s.services())
        .map(|p| p.rules().count())
        .sum();
    println!(
        "ok: {} issuer(s), {} service policy(ies), {} rule(s)",
        config.issuers.len(),
        policies.map_or(0, |s| s.len()),
        rules
    );
    ExitCode::SUCCESS
}
