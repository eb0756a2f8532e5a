//! `hopwarden dev …`: helpers for local development stacks (never for production).

pub mod certs;

use std::process::ExitCode;

/// The `dev` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DevCommand {
    /// Write a development CA and SPIFFE certificates for the Envoy sidecars' mTLS.
    Certs(certs::CertsArgs),
}

/// Runs one `dev` subcommand.
pub fn run(command: &DevCommand) -> ExitCode {
    match command {
        DevCommand::Certs(args) => certs::run(args),
    }
}
