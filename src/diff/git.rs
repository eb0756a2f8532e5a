//! `--git REV`: the policy directory as committed at a revision, read with `git`
//! itself (`ls-tree`, `show`) and compiled from memory, so nothing is written to disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::policy::PolicySet;

/// Runs `git -C dir args…`, returning its standard output.
fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// The policies in `dir` as committed at `rev` (compile errors kept apart from the
/// errors of reading them), and a label: `REV:path/in/repo`.
pub(super) fn at_revision(
    dir: &Path,
    rev: &str,
) -> Result<(Result<PolicySet, String>, String), String> {
    if rev.starts_with('-') {
        return Err(format!("invalid revision {rev:?}"));
    }
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).trim().to_string();
    let root = PathBuf::from(text(git(dir, &["rev-parse", "--show-toplevel"])?));
    let prefix = text(git(dir, &["rev-parse", "--show-prefix"])?);
    let commit = text(git(
        &root,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )?);
    let tree = format!("{commit}:{prefix}");
    let label = if prefix.is_empty() {
        format!("{rev}:.")
    } else {
        format!("{rev}:{}", prefix.trim_end_matches('/'))
    };
    // A policy directory added after REV: before it, no policies (all denied).
    if git(&root, &["cat-file", "-e", &tree]).is_err() {
        return Ok((Ok(PolicySet::empty()), label));
    }
    // `ls-tree -z TREE`: `mode type object\tname`, NUL-terminated; names are relative to
    // the tree, so they are the file names in the policy directory.
    let listing = git(&root, &["ls-tree", "-z", &tree])?;
    let mut names: Vec<String> = listing
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = std::str::from_utf8(entry).ok()?;
            let (meta, name) = entry.split_once('\t')?;
            let mut meta = meta.split(' ');
            let (mode, kind) = (meta.next()?, meta.next()?);
            // Regular files only: a symlink's blob is its target's name, not a policy.
            let regular = kind == "blob" && (mode == "100644" || mode == "100755");
            (regular && crate::policy::is_policy_file(name)).then(|| name.to_string())
        })
        .collect();
    names.sort();
    let mut sources = Vec::with_capacity(names.len());
    for name in names {
        let blob = git(&root, &["show", &format!("{tree}{name}")])?;
        let body = String::from_utf8(blob)
            .map_err(|_| format!("{label}/{name}: policy file is not UTF-8"))?;
        sources.push((PathBuf::from(format!("{label}/{name}")), body));
    }
    let set = PolicySet::from_sources(&sources).map_err(|e| e.to_string());
    Ok((set, label))
}
