//! The docs cannot drift from the program: every command in a fenced `sh` block of
//! README.md and docs/*.md that can run here runs, and what cannot is checked as far
//! as it can be.
//!
//! Each file's commands run in order, as one bash script (so a variable set in one
//! block is there in the next), in a fresh copy of the repository, with `hopwarden`
//! (or `cargo run … --`) meaning the binary under test. A command fails the test if
//! it exits non-zero or the file's script takes over two minutes.
//!
//! A command runs only if every program in it (the first word, and the first word
//! after each `|`, `;`, `&&`, `||` and `$(`) is `hopwarden` or a plain shell tool
//! ([`RUNNABLE`]), and it is not `hopwarden serve` (which runs until stopped). The
//! rest (curl against a running stack, docker, kubectl, scripts such as
//! scripts/test.sh) is checked instead: each `hopwarden SUBCOMMAND` in it must exist
//! and accept every `--flag` written after it (`--help` says so), and each
//! `scripts/*.sh` or `bench/*.sh` it names must exist and be executable. A block with
//! a `# needs: WHAT` comment line (`# needs: stack`, `# needs: docker`) is checked
//! the same way without running, and tells the reader what it needs.
//!
//! Blocks preceded by `<!-- excerpt: PATH -->` quote a file: each of their lines
//! that is not a `#` comment must be a line of PATH, in the same order. Blocks
//! preceded by `<!-- check: config -->` or `<!-- check: policy -->` must load as one.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::repo;

const BIN: &str = env!("CARGO_BIN_EXE_hopwarden");

/// Programs a documented command may run here besides `hopwarden`. Not `cd`: a
/// directory made by a command that does not run here (`git clone`) is not there.
const RUNNABLE: [&str; 20] = [
    "alias", "cat", "cp", "diff", "echo", "export", "grep", "head", "ls", "mkdir", "mv", "printf",
    "rm", "sed", "sort", "tail", "test", "true", "wc", "[",
];

/// The documents: README.md and every docs/*.md, whoever wrote them.
fn documents() -> Vec<PathBuf> {
    let mut docs = vec![repo().join("README.md")];
    if let Ok(entries) = std::fs::read_dir(repo().join("docs")) {
        let mut more: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        more.sort();
        docs.extend(more);
    }
    docs
}

/// One command as written, with where it is.
#[derive(Debug, Clone)]
struct DocCommand {
    line: usize,
    text: String,
    /// A `# needs:` block: never run.
    needs: bool,
}

/// The commands of every fenced `sh`/`bash` block of `text`.
fn commands(text: &str) -> Vec<DocCommand> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_start();
        let lang = fence.strip_prefix("```").map(str::trim);
        i += 1;
        if !matches!(lang, Some("sh" | "bash" | "shell" | "console")) {
            if lang.is_some() {
                // Skip any other fenced block whole, so its lines are not misread.
                while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                    i += 1;
                }
                i += 1;
            }
            continue;
        }
        let start = i;
        while i < lines.len() && !lines[i].trim_start().starts_with("```") {
            i += 1;
        }
        let block = &lines[start..i];
        i += 1;
        let needs = block.iter().any(|l| l.trim_start().starts_with("# needs:"));
        let mut j = 0;
        while j < block.len() {
            let first = j;
            let line = block[j].trim_start();
            j += 1;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut text = line.strip_prefix("$ ").unwrap_or(line).to_string();
            while text.ends_with('\\') && j < block.len() {
                text.pop();
                text.push(' ');
                text.push_str(block[j].trim_start());
                j += 1;
            }
            if let Some(end) = heredoc_end(&text) {
                while j < block.len() {
                    text.push('\n');
                    text.push_str(block[j]);
                    j += 1;
                    if block[j - 1].trim() == end {
                        break;
                    }
                }
            }
            out.push(DocCommand {
                line: start + first + 1,
                text,
                needs,
            });
        }
    }
    out
}

/// The terminator of a here-document the command starts (`<<'EOF'`, `<<EOF`).
fn heredoc_end(text: &str) -> Option<String> {
    let at = text.find("<<")?;
    let rest = text[at + 2..].trim_start_matches('-').trim_start();
    let word: String = rest
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

/// The simple commands in a command line: each one's words, program first
/// (assignments before it dropped; `=` for a line of assignments only).
fn segments(text: &str) -> Vec<Vec<String>> {
    // Only the first line of a here-document command is shell syntax.
    let text = text.lines().next().unwrap_or_default();
    let mut done: Vec<Vec<String>> = Vec::new();
    let mut open: Vec<Vec<String>> = vec![Vec::new()];
    let mut quotes: Vec<char> = Vec::new();
    let mut word = String::new();
    let mut redirect = false;
    let mut chars = text.chars().peekable();
    let flush = |word: &mut String, open: &mut Vec<Vec<String>>, redirect: &mut bool| {
        if !word.is_empty() {
            if !*redirect {
                open.last_mut().unwrap().push(std::mem::take(word));
            }
            word.clear();
            *redirect = false;
        }
    };
    while let Some(c) = chars.next() {
        let quote = quotes.last().copied();
        if quote == Some('\'') {
            if c == '\'' {
                quotes.pop();
            } else {
                word.push(c);
            }
            continue;
        }
        if c == '$' && chars.peek() == Some(&'(') {
            chars.next();
            flush(&mut word, &mut open, &mut redirect);
            open.push(Vec::new());
            quotes.push('(');
            continue;
        }
        if quote == Some('"') {
            match c {
                '"' => {
                    quotes.pop();
                }
                '\\' => word.extend(chars.next()),
                _ => word.push(c),
            }
            continue;
        }
        match c {
            ' ' | '\t' => flush(&mut word, &mut open, &mut redirect),
            '\'' | '"' => quotes.push(c),
            '\\' => word.extend(chars.next()),
            '#' if word.is_empty() => break,
            ')' if quote == Some('(') => {
                flush(&mut word, &mut open, &mut redirect);
                quotes.pop();
                done.push(open.pop().unwrap());
            }
            '|' | ';' | '&' => {
                flush(&mut word, &mut open, &mut redirect);
                let finished = std::mem::take(open.last_mut().unwrap());
                done.push(finished);
            }
            '<' | '>' => {
                flush(&mut word, &mut open, &mut redirect);
                redirect = true;
            }
            _ => word.push(c),
        }
    }
    flush(&mut word, &mut open, &mut redirect);
    done.extend(open);
    done.into_iter()
        .filter(|s| !s.is_empty())
        .map(|words| {
            let assignment = |w: &String| {
                w.split_once('=').is_some_and(|(name, _)| {
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
            };
            let rest: Vec<String> = words
                .iter()
                .skip_while(|w| assignment(w))
                .cloned()
                .collect();
            if rest.is_empty() {
                vec!["=".to_string()]
            } else {
                rest
            }
        })
        .collect()
}

/// `hopwarden ARGS…` for a `hopwarden` or `cargo run [-q] [--release] -- ARGS`
/// segment: the arguments.
fn hopwarden_args(words: &[String]) -> Option<&[String]> {
    match words.first().map(String::as_str) {
        Some("hopwarden") | Some("./target/release/hopwarden") => Some(&words[1..]),
        Some("cargo") if words.get(1).is_some_and(|w| w == "run") => {
            let dashes = words.iter().position(|w| w == "--")?;
            words[2..dashes]
                .iter()
                .all(|w| w.starts_with('-'))
                .then(|| &words[dashes + 1..])
        }
        _ => None,
    }
}

/// Whether the command can run here: every program in it is allowed, and it does
/// not serve (which never ends).
fn runnable(command: &DocCommand) -> bool {
    !command.needs
        && segments(&command.text).iter().all(|words| {
            if let Some(args) = hopwarden_args(words) {
                return args.first().is_none_or(|sub| sub != "serve");
            }
            let program = words[0].as_str();
            program == "=" || RUNNABLE.contains(&program)
        })
}

/// The command with `cargo run … --` replaced by `hopwarden` (the binary under test).
fn as_run(text: &str) -> String {
    let Some(at) = text.find("cargo run") else {
        return text.to_string();
    };
    let Some(dashes) = text[at..].find(" -- ") else {
        return text.to_string();
    };
    format!("{}hopwarden {}", &text[..at], &text[at + dashes + 4..])
}

/// `hopwarden SUB --help` output, cached; `Err` if SUB does not exist.
fn help(cache: &mut HashMap<String, Result<String, String>>, sub: &str) -> Result<String, String> {
    cache
        .entry(sub.to_string())
        .or_insert_with(|| {
            let mut cmd = Command::new(BIN);
            cmd.args(sub.split_whitespace());
            let out = cmd.arg("--help").output().map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() {
                Ok(text)
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        })
        .clone()
}

/// What can be checked of a command that does not run here.
fn check_without_running(
    command: &DocCommand,
    cache: &mut HashMap<String, Result<String, String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for words in segments(&command.text) {
        if let Some(args) = hopwarden_args(&words) {
            // The subcommand path: `dev certs` is checked against `hopwarden dev certs --help`.
            let mut sub = args
                .first()
                .filter(|a| !a.starts_with('-'))
                .cloned()
                .unwrap_or_default();
            for next in args.iter().skip(1).take_while(|a| !a.starts_with('-')) {
                let nested = help(cache, &sub).is_ok_and(|text| {
                    text.contains("Commands:")
                        && text
                            .lines()
                            .any(|l| l.trim_start().starts_with(&format!("{next} ")))
                });
                if !nested {
                    break;
                }
                sub = format!("{sub} {next}");
            }
            let sub = sub.as_str();
            match help(cache, sub) {
                Err(e) => problems.push(format!("`hopwarden {sub}` does not exist: {e}")),
                Ok(text) => {
                    for flag in args.iter().filter(|a| a.starts_with("--") && a.len() > 2) {
                        let flag = flag.split('=').next().unwrap_or(flag);
                        if !text.contains(flag) {
                            problems.push(format!("`hopwarden {sub}` has no {flag}"));
                        }
                    }
                }
            }
        }
        for word in &words {
            let path = word.strip_prefix("./").unwrap_or(word);
            if (path.starts_with("scripts/") || path.starts_with("bench/")) && path.ends_with(".sh")
            {
                use std::os::unix::fs::PermissionsExt;
                match std::fs::metadata(repo().join(path)) {
                    Ok(m) if m.permissions().mode() & 0o111 != 0 => {}
                    Ok(_) => problems.push(format!("{path} is not executable")),
                    Err(_) => problems.push(format!("{path} does not exist")),
                }
            }
        }
    }
    problems
}

/// Copies the repository (no build output, no git, no virtualenv) to `to`.
fn copy_repo(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let name = entry.file_name();
        let skip = [".git", "target", ".venv", ".stack", "work", "certs"];
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy_repo(&src, &dst);
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Runs `commands` of `doc` as one script in a copy of the repository.
fn run_document(doc: &str, commands: &[&DocCommand]) -> Result<(), String> {
    let work = tempfile::tempdir().unwrap();
    copy_repo(&repo(), work.path());
    let mut script = String::from("set +e\nhopwarden() { \"$HOPWARDEN_BIN\" \"$@\"; }\n");
    for c in commands {
        script.push_str(&format!(
            "echo '>>> {doc}:{}' >&2\n{}\n",
            c.line,
            as_run(&c.text)
        ));
        script.push_str(&format!(
            "__rc=$?; if [ $__rc -ne 0 ]; then echo \"{doc}:{}: exit $__rc\" >&2; exit 1; fi\n",
            c.line
        ));
    }
    let script_path = work.path().join(".doc-commands.sh");
    std::fs::write(&script_path, &script).unwrap();
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("bash")
        .arg(&script_path)
        .current_dir(work.path())
        .env("HOPWARDEN_BIN", BIN)
        .env_remove("HOPWARDEN_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { err }, &mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = reader.join().unwrap();
    let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    match status {
        Some(s) if s.success() => Ok(()),
        Some(_) => Err(tail.join("\n")),
        None => Err(format!("timed out after 120 s:\n{}", tail.join("\n"))),
    }
}

#[test]
fn every_documented_command_runs_or_names_what_exists() {
    let mut failures = Vec::new();
    let mut cache = HashMap::new();
    let mut ran = 0;
    for path in documents() {
        let text = std::fs::read_to_string(&path).unwrap();
        let doc = path
            .strip_prefix(repo())
            .unwrap_or(&path)
            .display()
            .to_string();
        let all = commands(&text);
        let (run, check): (Vec<&DocCommand>, Vec<&DocCommand>) =
            all.iter().partition(|c| runnable(c));
        for c in &check {
            for problem in check_without_running(c, &mut cache) {
                failures.push(format!("{doc}:{}: {problem}\n    {}", c.line, c.text));
            }
        }
        // What runs is also checked: a wrong flag is then named, not just an exit code.
        for c in &run {
            for problem in check_without_running(c, &mut cache) {
                failures.push(format!("{doc}:{}: {problem}\n    {}", c.line, c.text));
            }
        }
        if !run.is_empty() {
            ran += run.len();
            if let Err(e) = run_document(&doc, &run) {
                failures.push(format!("{doc}: a command failed:\n{e}"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
    // The README's own quick start and walkthrough alone hold more than this.
    assert!(ran >= 10, "only {ran} documented commands ran");
}

/// A block that says it quotes a file does.
#[test]
fn excerpts_match_the_files_they_quote() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in documents() {
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(file) = line
                .trim()
                .strip_prefix("<!-- excerpt:")
                .and_then(|r| r.strip_suffix("-->"))
                .map(str::trim)
            else {
                continue;
            };
            let quoted = std::fs::read_to_string(repo().join(file))
                .unwrap_or_else(|e| panic!("{}:{}: {file}: {e}", path.display(), i + 1));
            let source: Vec<&str> = quoted.lines().map(str::trim).collect();
            let body = lines[i + 1..]
                .iter()
                .skip(1) // the opening fence
                .take_while(|l| !l.trim_start().starts_with("```"));
            let mut at = 0;
            for (n, l) in body.enumerate() {
                let l = l.trim();
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                match source[at..].iter().position(|s| *s == l) {
                    Some(found) => at += found + 1,
                    None => failures.push(format!(
                        "{}:{}: not in {file} (after the lines before it): {l}",
                        path.display(),
                        i + 3 + n
                    )),
                }
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(checked >= 2, "the Envoy snippets are excerpts: {checked}");
}

/// The fenced block after the marker line `<!-- NAME: ARG -->`, for each marker in
/// `text`: `(line of the marker, ARG, block body)`.
fn marked_blocks<'a>(text: &'a str, name: &str) -> Vec<(usize, &'a str, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let prefix = format!("<!-- {name}:");
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(arg) = line
            .trim()
            .strip_prefix(prefix.as_str())
            .and_then(|r| r.strip_suffix("-->"))
            .map(str::trim)
        else {
            continue;
        };
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .skip_while(|l| !l.trim_start().starts_with("```"))
            .skip(1)
            .take_while(|l| !l.trim_start().starts_with("```"))
            .copied()
            .collect();
        out.push((i + 1, arg, body.join("\n") + "\n"));
    }
    out
}

/// Blocks marked `<!-- check: config -->` are configs `hopwarden validate` accepts
/// (in a copy of the repository, so their relative paths find its files), and blocks
/// marked `<!-- check: policy -->` are policies it accepts.
#[test]
fn documented_configs_and_policies_load() {
    let work = tempfile::tempdir().unwrap();
    copy_repo(&repo(), work.path());
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in documents() {
        let text = std::fs::read_to_string(&path).unwrap();
        for (line, kind, body) in marked_blocks(&text, "check") {
            let place = format!("{}:{line}", path.display());
            let config = match kind {
                "config" => {
                    let file = work.path().join("doc-config.yaml");
                    std::fs::write(&file, &body).unwrap();
                    file
                }
                "policy" => {
                    let dir = work.path().join(format!("doc-policy-{checked}"));
                    std::fs::create_dir_all(dir.join("policies")).unwrap();
                    std::fs::write(dir.join("policies/policy.yaml"), &body).unwrap();
                    let file = dir.join("hopwarden.yaml");
                    std::fs::write(&file, "policies: policies\n").unwrap();
                    file
                }
                other => {
                    failures.push(format!("{place}: unknown check {other:?}"));
                    continue;
                }
            };
            let out = Command::new(BIN)
                .arg("validate")
                .arg("--config")
                .arg(&config)
                .current_dir(work.path())
                .env_remove("HOPWARDEN_CONFIG")
                .output()
                .unwrap();
            if !out.status.success() {
                failures.push(format!(
                    "{place}: the {kind} does not load:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(
        checked >= 3,
        "only {checked} documented configs and policies checked"
    );
}

/// docker-compose.yml runs hopwarden with dev/hopwarden.compose.yaml, which must be
/// the example config but for the bind addresses (0.0.0.0 inside its container).
#[test]
fn the_compose_config_is_the_example_but_for_bind_addresses() {
    let settings = |file: &str| -> Vec<String> {
        std::fs::read_to_string(repo().join(file))
            .unwrap()
            .lines()
            .map(|l| l.split(" #").next().unwrap_or(l).trim_end())
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .map(|l| l.replace("0.0.0.0:", "127.0.0.1:"))
            .collect()
    };
    assert_eq!(
        settings("dev/hopwarden.compose.yaml"),
        settings("hopwarden.yaml")
    );
    let compose = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    assert!(compose.contains("./dev/hopwarden.compose.yaml:/etc/hopwarden/hopwarden.yaml:ro"));
}

#[test]
fn commands_are_read_as_a_shell_would() {
    let seg = |t: &str| segments(t);
    assert_eq!(
        seg("READ=$(hopwarden token --sub $P --aud ledger)"),
        [
            vec!["hopwarden", "token", "--sub", "$P", "--aud", "ledger"],
            vec!["="]
        ]
    );
    assert_eq!(
        seg(r#"curl -H "authorization: Bearer $(hopwarden token --aud email)" http://x # 401"#),
        [
            vec!["hopwarden", "token", "--aud", "email"],
            vec!["curl", "-H", "authorization: Bearer ", "http://x"]
        ]
    );
    assert_eq!(
        seg("hopwarden review --format dot | dot -Tsvg > a.svg"),
        [
            vec!["hopwarden", "review", "--format", "dot"],
            vec!["dot", "-Tsvg"]
        ]
    );
    let c = |text: &str| DocCommand {
        line: 1,
        text: text.into(),
        needs: false,
    };
    assert!(runnable(&c(
        "cargo run -q --release -- validate --config hopwarden.yaml"
    )));
    assert!(!runnable(&c("cargo run --release -- serve")));
    assert!(!runnable(&c("scripts/test.sh")));
    assert!(!runnable(&c("export E=$(scripts/install-envoy.sh)")));
    assert!(!runnable(&c("curl -H \"x: $(hopwarden token)\" http://x")));
    assert!(runnable(&c("P=spiffe://td/a")));
    assert_eq!(
        as_run("cargo run -q --release -- test policies"),
        "hopwarden test policies"
    );
    let doc = "```sh\nX=1 \\\n  hopwarden validate\n# needs: stack\n```\n```yaml\nnot: a command\n```\n```sh\ncat > a <<'EOF'\nx\nEOF\n```\n";
    let found = commands(doc);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!((found[0].line, found[0].needs), (2, true));
    assert_eq!(found[0].text, "X=1  hopwarden validate");
    assert_eq!(found[1].text, "cat > a <<'EOF'\nx\nEOF");
}
