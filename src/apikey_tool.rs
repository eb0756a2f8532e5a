//! `hopwarden apikey new | list | check`: issue API keys, list and identify them,
//! offline (nothing here serves).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::apikey::file::{self, entry_yaml, format_time};
use crate::apikey::{KeyEntry, KeySet, NewKey};
use crate::principal::PrincipalKind;

/// The `apikey` subcommands.
#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Make a key: prints it once (it is stored nowhere) and the entry for the key file.
    New(NewArgs),
    /// List the keys of key files: ids, principals, expiry.
    List(FilesArgs),
    /// Say which entry a key is and whether it is valid now, without serving.
    Check(CheckArgs),
}

/// `apikey new` arguments.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The principal the key stands for (what rules name in `from.principals`).
    #[arg(long)]
    pub principal: String,
    /// The principal's kind.
    #[arg(long, default_value = "service", value_parser = parse_kind)]
    pub kind: PrincipalKind,
    /// A scope the key grants; repeat for several.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Lifetime from now, e.g. 90d; without it the key never expires (review flags it).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub expires: Option<Duration>,
    /// Who the key is for and why (a ticket, a contact).
    #[arg(long)]
    pub description: Option<String>,
    /// The key id (a-z, 0-9, -); default: 10 random characters.
    #[arg(long)]
    pub id: Option<String>,
    /// Append the entry to this key file (created if missing) instead of printing it.
    #[arg(long)]
    pub append: Option<PathBuf>,
}

/// Which key files: `--file`, else the config's `api_keys`.
#[derive(Debug, Args)]
pub struct FilesArgs {
    /// A key file; repeat for several. Default: every file the config names.
    #[arg(long = "file")]
    pub files: Vec<PathBuf>,
    /// The server config file (read only without --file).
    #[arg(
        long,
        short,
        env = "HOPWARDEN_CONFIG",
        default_value = "hopwarden.yaml"
    )]
    pub config: PathBuf,
}

/// `apikey check` arguments.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The key, or `-` to read it from stdin (keeps it out of shell history).
    pub key: String,
    /// The key files to look in.
    #[command(flatten)]
    pub files: FilesArgs,
}

fn parse_kind(s: &str) -> Result<PrincipalKind, String> {
    match s {
        "service" => Ok(PrincipalKind::Service),
        "user" => Ok(PrincipalKind::User),
        _ => Err(format!("unknown kind {s:?} (service or user)")),
    }
}

/// Runs an `apikey` subcommand.
pub fn run(command: &ApikeyCommand) -> ExitCode {
    let result = match command {
        ApikeyCommand::New(args) => new(args),
        ApikeyCommand::List(args) => list(args),
        ApikeyCommand::Check(args) => check(args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn new(args: &NewArgs) -> Result<ExitCode, String> {
    if args.principal.trim().is_empty() {
        return Err("--principal must not be empty".into());
    }
    let key = match &args.id {
        Some(id) => NewKey::with_id(id.clone()),
        None => NewKey::generate(),
    }
    .map_err(|e| e.to_string())?;
    let now = file::now();
    let entry = KeyEntry {
        id: key.id.clone(),
        digest: key.digest(),
        principal: args.principal.clone(),
        kind: args.kind,
        scopes: args.scopes.clone(),
        not_before: None,
        // Whole seconds: what the file can say.
        expires: args
            .expires
            .map(|d| Duration::from_secs((now + d).as_secs())),
        description: args.description.clone(),
    };
    let yaml = entry_yaml(&entry);
    if let Some(path) = &args.append {
        append(path, &yaml)?;
    }
    // The key alone on the first line of stdout, for scripts; it is shown only now.
    println!("{}", key.reveal());
    match &args.append {
        Some(path) => eprintln!("added key {:?} to {}", key.id, path.display()),
        None => println!("\n# Add under `keys:` in the key file:\n{yaml}"),
    }
    eprintln!("This key is shown once and stored nowhere: hand it to its holder now.");
    if args.expires.is_none() {
        eprintln!("warning: the key never expires (--expires 90d gives it a lifetime)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Appends `entry` under `keys:` in `path`, checking that the result loads; written
/// by rename, so a server reloading the file never reads half of it.
fn append(path: &Path, entry: &str) -> Result<(), String> {
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut text = if old.trim().is_empty() || old.trim() == "keys: []" {
        "keys:\n".to_string()
    } else {
        old
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(entry);
    file::parse(&text, path).map_err(|e| {
        format!("the key file would not load with the new entry (add it by hand):\n{e}")
    })?;
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, &text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The key files named by `--file` or the config, each loaded.
fn load(args: &FilesArgs) -> Result<Vec<(PathBuf, KeySet)>, String> {
    let files = if args.files.is_empty() {
        let config = crate::config::Config::load(&args.config).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            lines.join("\n")
        })?;
        if config.spec.api_keys.is_empty() {
            return Err(format!(
                "{}: no api_keys in the config (name a key file with --file)",
                args.config.display()
            ));
        }
        config.spec.api_keys.into_iter().map(|k| k.file).collect()
    } else {
        args.files.clone()
    };
    files
        .into_iter()
        .map(|f| {
            file::load(&f)
                .map(|set| (f, set))
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// `valid`, `expired` or `not yet valid` at `now`.
fn status(entry: &KeyEntry, now: Duration) -> &'static str {
    match crate::apikey::store::check_window(entry, now) {
        Ok(()) => "valid",
        Err(crate::apikey::KeyError::NotYetValid) => "not yet valid",
        Err(_) => "expired",
    }
}

fn list(args: &FilesArgs) -> Result<ExitCode, String> {
    let now = file::now();
    for (path, set) in load(args)? {
        println!("{}: {} key(s)", path.display(), set.len());
        for e in set.entries() {
            let expires = e.expires.map_or("never".to_string(), format_time);
            println!(
                "  {:<12} {:<40} {:<7} expires {:<20} {:<13} {}",
                e.id,
                e.principal,
                e.kind.as_str(),
                expires,
                status(e, now),
                e.description.as_deref().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check(args: &CheckArgs) -> Result<ExitCode, String> {
    let mut key = args.key.clone();
    if key == "-" {
        key.clear();
        std::io::stdin()
            .read_to_string(&mut key)
            .map_err(|e| format!("cannot read the key from stdin: {e}"))?;
    }
    let key = key.trim();
    let sets = load(&args.files)?;
    let now = file::now();
    let presented = crate::apikey::PresentedKey::parse(key).map_err(|e| e.to_string())?;
    for (path, set) in &sets {
        if set.get(presented.id).is_none() {
            continue;
        }
        return match set.verify_presented(&presented, now) {
            Ok(e) => {
                let expires = e.expires.map_or("never".to_string(), format_time);
                println!(
                    "key {:?} in {}: principal {:?} ({}), scopes [{}], expires {expires}: valid",
                    e.id,
                    path.display(),
                    e.principal,
                    e.kind,
                    e.scopes.join(" ")
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(why) => {
                println!("key {:?} in {}: {why}", presented.id, path.display());
                Ok(ExitCode::FAILURE)
            }
        };
    }
    println!(
        "key {:?}: no entry has this id (unknown or revoked)",
        presented.id
    );
    Ok(ExitCode::FAILURE)
}
