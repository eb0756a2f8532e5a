//! `scripts/local-stack.sh`'s launcher (examples/local_stack.rs) as a user runs it:
//! every way it ends stops every process it started, and a second launcher refuses
//! to start over a running stack. Real processes (hopwarden, Envoy, the demo
//! services) on free ports; the children's pids are read from /proc and checked gone.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::stack::{envoy_binary, Ports};

/// The launcher binary, which scripts/test.sh builds with the other examples.
fn launcher() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/local-stack");
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh, or cargo build --examples first",
        path.display()
    );
    path
}

/// A launcher in its own process group (as a shell runs a foreground job), up.
struct Launched {
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn launch(dir: &Path) -> Launched {
    use std::os::unix::process::CommandExt;
    let envoy = envoy_binary(&common::repo()).unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(launcher())
        .args(["--free-ports", "--dir"])
        .arg(dir)
        .env("HOPWARDEN_ENVOY", envoy)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut launched = Launched { child, lines };
    let seen = launched.read_until("local stack is up", Duration::from_secs(120));
    assert!(seen.contains("local stack is up"), "not up:\n{seen}");
    launched
}

impl Launched {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Output lines until one contains `needle` (or the time is up): all of them.
    fn read_until(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(needle);
                    seen.push(line);
                    if done {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        seen.join("\n")
    }

    /// Waits for the launcher to exit: its exit code and the rest of its output.
    fn wait(&mut self, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let rest = self.read_until("\u{0}", Duration::from_millis(500));
                return (status.code().unwrap_or(-1), rest);
            }
            assert!(
                Instant::now() < deadline,
                "the launcher did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        // A failed assertion must not leave a stack behind: end the whole group.
        let _ = kill("-KILL", &format!("-{}", self.pid()));
        let _ = self.child.wait();
    }
}

fn kill(signal: &str, target: &str) -> bool {
    Command::new("kill")
        .args([signal, "--", target])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `(pid, comm, start time)` of every process whose parent is `parent`.
fn children(parent: u32) -> Vec<(u32, String, u64)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((ppid, comm, start)) = stat(pid) {
            if ppid == parent {
                found.push((pid, comm, start));
            }
        }
    }
    found
}

/// `(ppid, comm, start time)` from /proc/PID/stat, if the process exists.
fn stat(pid: u32) -> Option<(u32, String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may hold spaces: the fields follow the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After comm: state (0), ppid (1), ... starttime is field 22 of the line (19 here).
    Some((
        fields.get(1)?.parse().ok()?,
        comm,
        fields.get(19)?.parse().ok()?,
    ))
}

/// Whether the process that was `(pid, _, start)` is still there (a reused pid has
/// another start time).
fn alive(&(pid, _, start): &(u32, String, u64)) -> bool {
    stat(pid).is_some_and(|(_, _, now)| now == start)
}

/// How the launcher is ended, and the exit code it must then have.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// hopwarden stops (the user stopped it, or it crashed): the launcher fails.
    HopwardenExits,
    /// `kill PID` (SIGTERM) to the launcher alone.
    Sigterm,
    /// `kill -INT PID` to the launcher alone.
    SigintToPid,
    /// A terminal's Ctrl-C: SIGINT to the whole foreground process group.
    CtrlC,
}

#[test]
fn the_launcher_stops_every_child_on_every_exit_path_and_refuses_a_second_stack() {
    for ending in [
        Ending::HopwardenExits,
        Ending::Sigterm,
        Ending::SigintToPid,
        Ending::CtrlC,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut stack = launch(dir.path());
        let kids = children(stack.pid());
        let names: Vec<&str> = kids.iter().map(|(_, comm, _)| comm.as_str()).collect();
        // hopwarden, four demo services, five Envoys (comm is cut at 15 bytes).
        assert_eq!(kids.len(), 10, "{ending:?}: {names:?}");
        assert_eq!(names.iter().filter(|n| **n == "hopwarden").count(), 1);
        assert_eq!(
            names.iter().filter(|n| **n == "envoy").count(),
            5,
            "{names:?}"
        );
        let pid_file = dir.path().join("local-stack.pid");
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap().trim(),
            stack.pid().to_string()
        );
        if let Ending::Sigterm = ending {
            // A second launcher on the same directory refuses, and leaves the first be.
            let out = Command::new(launcher())
                .args(["--free-ports", "--dir"])
                .arg(dir.path())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(
                err.starts_with(&format!(
                    "error: a local stack is already running (pid {}",
                    stack.pid()
                )),
                "{err}"
            );
            assert!(!err.contains("stopped"), "it stopped nothing: {err}");
            assert!(kids.iter().all(alive), "the running stack was disturbed");
        }
        let pid = stack.pid().to_string();
        let hopwarden = kids.iter().find(|k| k.1 == "hopwarden").unwrap().0;
        let sent = match ending {
            Ending::HopwardenExits => kill("-TERM", &hopwarden.to_string()),
            Ending::Sigterm => kill("-TERM", &pid),
            Ending::SigintToPid => kill("-INT", &pid),
            Ending::CtrlC => kill("-INT", &format!("-{pid}")),
        };
        assert!(sent, "{ending:?}: kill failed");
        let (code, rest) = stack.wait(Duration::from_secs(30));
        let want = if let Ending::HopwardenExits = ending {
            1
        } else {
            0
        };
        assert_eq!(code, want, "{ending:?}: {rest}");
        assert!(
            rest.contains("every process of the stack is stopped"),
            "{ending:?}: {rest}"
        );
        if let Ending::HopwardenExits = ending {
            assert!(rest.contains("error: hopwarden exited"), "{rest}");
        }
        let left: Vec<_> = kids.iter().filter(|k| alive(k)).collect();
        assert!(left.is_empty(), "{ending:?}: still running: {left:?}");
        assert!(!pid_file.exists(), "{ending:?}: the pid file stays");
    }
}

/// With the documented ports, anything already listening on one of them (a stale
/// Envoy from an old run, docker compose) stops the launcher before it starts
/// anything; the check is the one `Stack::start` runs first.
#[test]
fn a_port_in_use_is_named_before_anything_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let ports = Ports {
        hopwarden: common::stack::free_port(),
        gateway: port,
        ..Ports::default()
    };
    let err = ports.check_free().unwrap_err();
    assert!(
        err.starts_with(&format!("port {port} (gateway) is not free (")),
        "{err}"
    );
    assert!(err.ends_with("is a local stack or docker compose already running?"));
    drop(taken);
    assert_eq!(ports.check_free(), Ok(()));
}
