//! README.md's "A checkout by hand", typed as written: the ```sh block under that heading is read
//! from README.md when the test runs (an edit to the README is what gets tested) and its commands
//! go, one at a time and in order, to one bash process, as a newcomer types them into a shell.
//!
//! What the test changes, and nothing else:
//! - the environment: the isolation the README itself names for "a second, isolated copy"
//!   (`KEEL__TOPICS__PREFIX`, `KEEL__STREAMS__APPLICATION_ID`, `KEEL__STREAMS__STATE_DIR`, the
//!   databases, the keyspace, the ports), from [`Run::new`]; `PATH` starts with the directory of
//!   the `keel` this test was built with;
//! - three texts: `$HOME/.cache/keel/target/debug` → that directory, `localhost:8088` → the run's
//!   API port (curl cannot take it from the environment) and `<orderId>` → the id the `202`
//!   answered;
//! - the working directory: a temporary one (the README's `psp.log`, `keel.log` land there).
//!
//! What it checks is what the README promises: every command exits 0; the readiness line waits
//! for `200`; the POST answers `202` with an order id and its `Location`; the `GET` line, repeated
//! (the README says "poll"), goes through `RECEIVED`/`PENDING` only forward to `CONFIRMED` with a
//! timeline of `PENDING` then `CONFIRMED`; `keel order <id>` prints that timeline with the Kafka
//! record behind each step; `keel lag --once` prints the run's consumer groups; `kill %1 %2`
//! stops both background processes. Background jobs are also stopped by pid (SIGTERM, then
//! SIGKILL) when the test fails anywhere.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use common::Run;
use keel_tests::Stack;
use serde_json::Value;

/// The heading of the section under test and the port its commands name.
const SECTION: &str = "## A checkout by hand";
const README_API: &str = "localhost:8088";
const README_BIN_DIR: &str = "$HOME/.cache/keel/target/debug";
const ORDER_ID: &str = "<orderId>";

/// The stack's address (the same servers as the README's run).
const STACK: &str = "KEEL__KAFKA__BOOTSTRAP_SERVERS";
/// The settings that make a run isolated, as README.md names them for "a second, isolated
/// copy" (`KEEL__STREAMS__STATE_DIR` is [`Run::state_dir`]).
const ISOLATION: [&str; 8] = [
    "KEEL__TOPICS__PREFIX",
    "KEEL__STREAMS__APPLICATION_ID",
    "KEEL__MYSQL__URL",
    "KEEL__POSTGRES__URL",
    "KEEL__CASSANDRA__KEYSPACE",
    "KEEL__API__LISTEN",
    "KEEL__PSP_MOCK__LISTEN",
    "KEEL__PAYMENT__PSP_URL",
];

/// What a command may take before the test gives up on it (the readiness wait included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the order may take to reach `CONFIRMED` ("about a second on this stack").
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The text under `## A checkout by hand`, up to the next heading.
fn by_hand_section(readme: &str) -> &str {
    let section = readme
        .split_once(&format!("\n{SECTION}\n"))
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("README.md has no {SECTION:?} section"));
    section.split("\n## ").next().unwrap_or(section)
}

/// The ```sh block of [`by_hand_section`], as text.
fn by_hand_block(section: &str) -> String {
    let (_, after_fence) = section
        .split_once("```sh\n")
        .unwrap_or_else(|| panic!("{SECTION:?} has no ```sh block"));
    let (block, _) = after_fence
        .split_once("\n```")
        .unwrap_or_else(|| panic!("{SECTION:?}'s ```sh block is not closed"));
    block.to_owned()
}

/// Whether bash reads `text` as complete commands (no open quote, no trailing `\`), once the
/// placeholder is filled in.
fn complete(text: &str) -> bool {
    if text.trim_end().ends_with('\\') {
        return false;
    }
    Command::new("bash")
        .args(["-n", "-c", &text.replace(ORDER_ID, "an-order-id")])
        .stderr(Stdio::null())
        .status()
        .expect("bash -n")
        .success()
}

/// The block's commands: lines joined while bash says the command goes on.
fn commands(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        if current.is_empty() && line.trim().is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if complete(&current) {
            out.push(std::mem::take(&mut current));
        }
    }
    assert!(
        current.is_empty(),
        "the block ends inside a command: {current}"
    );
    out
}

/// What one command printed (stdout and stderr, merged) and its exit code.
#[derive(Debug)]
struct Typed {
    output: String,
    rc: i32,
}

/// The background jobs of the shell, stopped by pid when dropped: SIGTERM (as the README stops
/// them), then SIGKILL after 30 s.
#[derive(Debug, Default)]
struct Jobs(Vec<u32>);

fn alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Jobs {
    /// Waits until every job has exited; false if one is still running after `within`.
    fn gone_within(&self, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            if !self.0.iter().any(|&pid| alive(pid)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        let running: Vec<u32> = self.0.iter().copied().filter(|&p| alive(p)).collect();
        if running.is_empty() {
            return;
        }
        for pid in &running {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if !self.gone_within(Duration::from_secs(30)) {
            for pid in &running {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        eprintln!("stopped the README's background jobs {running:?}");
    }
}

/// One bash process the README's commands are typed into. Each command is followed by a line
/// of the test's own that prints a marker with `$?` (and `$!` after a `&`), so the test knows
/// where one command's output ends.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    jobs: Jobs,
    /// Everything typed and printed, for the failure message.
    transcript: String,
}

const MARK: &str = "__keel_readme_test_rc__";
const MARK_PID: &str = "__keel_readme_test_pid__";

impl Shell {
    fn start(dir: &Path, env: &[(String, String)], path: &str) -> Shell {
        let mut cmd = Command::new("bash");
        cmd.args(["--norc", "--noprofile", "-s"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("KEEL__") || k == "KEEL_CONFIG" || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PATH", path);
        let mut child = cmd.spawn().expect("bash starts");
        let stdin = child.stdin.take().expect("stdin");
        let (tx, lines) = channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut shell = Shell {
            child,
            stdin,
            lines,
            jobs: Jobs::default(),
            transcript: String::new(),
        };
        // One stream, in the order things were printed (the test's own line, not the README's).
        shell.type_in("exec 2>&1\n", Duration::from_secs(10));
        shell.transcript.clear();
        shell
    }

    /// Types `command` and waits for it to finish; its output and exit code.
    fn type_in(&mut self, command: &str, within: Duration) -> Typed {
        let background = command
            .lines()
            .last()
            .map(|l| l.split(" #").next().unwrap_or(l).trim_end().ends_with('&'))
            .unwrap_or(false);
        self.transcript.push_str(&format!("$ {command}"));
        let mut typed = command.to_owned();
        if background {
            typed.push_str(&format!("echo {MARK_PID} $!\n"));
        }
        typed.push_str(&format!("echo {MARK} $?\n"));
        self.stdin
            .write_all(typed.as_bytes())
            .and_then(|()| self.stdin.flush())
            .expect("bash reads the command");
        let start = Instant::now();
        let mut output = String::new();
        loop {
            let left = within.saturating_sub(start.elapsed());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => self.fail(&format!(
                    "`{}` did not finish within {within:?}",
                    command.trim()
                )),
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("bash exited during `{}`", command.trim()))
                }
            };
            // A command's last line may have no newline (curl prints a body as it is): the
            // marker then follows it on the same line.
            if let Some((before, pid)) = line.split_once(&format!("{MARK_PID} ")) {
                output.push_str(before);
                self.jobs.0.push(pid.trim().parse().expect("a pid"));
            } else if let Some((before, rc)) = line.split_once(&format!("{MARK} ")) {
                output.push_str(before);
                let rc = rc.trim().parse().expect("an exit code");
                self.transcript
                    .push_str(&format!("{output}\n[exit {rc}]\n"));
                return Typed { output, rc };
            } else {
                output.push_str(&line);
                output.push('\n');
            }
        }
    }

    /// [`Shell::type_in`], asserting exit code 0.
    fn ok(&mut self, command: &str) -> Typed {
        let typed = self.type_in(command, COMMAND_TIMEOUT);
        if typed.rc != 0 {
            self.fail(&format!(
                "`{}` exited with {}: {}",
                command.trim(),
                typed.rc,
                typed.output
            ));
        }
        typed
    }

    fn fail(&self, why: &str) -> ! {
        panic!(
            "README.md {SECTION:?}: {why}\n--- the session ---\n{}",
            self.transcript
        )
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        // Jobs (a field) are stopped after this; bash itself goes now.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `202` of `curl -si -X POST ...`: the order id, after checking status and `Location`.
fn accepted(shell: &Shell, response: &str) -> String {
    let response = response.replace('\r', "");
    let (head, body) = response
        .split_once("\n\n")
        .unwrap_or_else(|| shell.fail(&format!("no HTTP response in {response:?}")));
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("202") {
        shell.fail(&format!(
            "the POST answered {status_line:?}, not 202: {body}"
        ));
    }
    let body: Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| shell.fail(&format!("the 202's body {body:?}: {e}")));
    let id = body["orderId"]
        .as_str()
        .unwrap_or_else(|| shell.fail(&format!("the 202 has no orderId: {body}")))
        .to_owned();
    let location = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("location")
            .then(|| value.trim().to_owned())
    });
    if location.as_deref() != Some(format!("/orders/{id}").as_str()) {
        shell.fail(&format!(
            "the 202's Location is {location:?}, not /orders/{id}"
        ));
    }
    id
}

/// Where a status comes in the README's "RECEIVED, then PENDING, then CONFIRMED".
fn rank(status: &str) -> Option<usize> {
    ["RECEIVED", "PENDING", "CONFIRMED"]
        .iter()
        .position(|s| *s == status)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn the_checkout_by_hand(run: &Run, name: &str, dir: &Path) {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    let section = by_hand_section(&readme);
    let commands = commands(&by_hand_block(section));
    assert!(
        commands.iter().any(|c| c.contains(ORDER_ID)),
        "the block names no {ORDER_ID}: {commands:?}"
    );

    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_keel"))
        .parent()
        .expect("the keel binary's directory")
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let api_port = run.api.rsplit(':').next().expect("the API's port");
    // Only what isolates the run (the README's list), not the other tests' tuning: the
    // defaults a newcomer gets.
    let mut env: Vec<(String, String)> = run
        .env
        .iter()
        .filter(|(k, _)| k == STACK || ISOLATION.contains(&k.as_str()))
        .cloned()
        .collect();
    env.push((
        "KEEL__STREAMS__STATE_DIR".to_owned(),
        run.state_dir.path().display().to_string(),
    ));
    for key in ISOLATION.iter().chain(["KEEL__STREAMS__STATE_DIR"].iter()) {
        assert!(
            section.contains(&format!("`{key}`")),
            "{SECTION:?}'s isolated copy does not name {key}, which the test needs"
        );
        assert!(env.iter().any(|(k, _)| k == key), "Run::new sets no {key}");
    }

    let mut shell = Shell::start(dir, &env, &path);
    let mut order_id: Option<String> = None;
    let (mut posted, mut confirmed, mut timeline_shown, mut lag_shown, mut ready_seen) =
        (false, false, false, false, false);
    for command in &commands {
        let mut typed = command
            .replace(README_BIN_DIR, &bin_dir.display().to_string())
            .replace(README_API, &format!("localhost:{api_port}"));
        if typed.contains(ORDER_ID) {
            let id = order_id
                .as_deref()
                .unwrap_or_else(|| shell.fail(&format!("{ORDER_ID} before the POST")));
            typed = typed.replace(ORDER_ID, id);
        }
        let words: Vec<&str> = typed.split_whitespace().collect();

        if typed.contains("-X POST") && typed.contains("/orders") {
            let out = shell.ok(&typed);
            order_id = Some(accepted(&shell, &out.output));
            posted = true;
        } else if command.contains(&format!("/orders/{ORDER_ID}")) {
            // "poll": the line again until the order is decided.
            let id = order_id.clone().unwrap_or_default();
            let start = Instant::now();
            let mut seen: Vec<String> = Vec::new();
            let last = loop {
                let out = shell.ok(&typed);
                let body: Value = serde_json::from_str(out.output.trim()).unwrap_or_else(|e| {
                    shell.fail(&format!("GET /orders/{id} printed {:?}: {e}", out.output))
                });
                let status = body["status"].as_str().unwrap_or_default().to_owned();
                if rank(&status).is_none() {
                    shell.fail(&format!("order {id} went to {status}: {body}"));
                }
                if seen.last() != Some(&status) {
                    seen.push(status.clone());
                }
                if status == "CONFIRMED" {
                    break body;
                }
                if start.elapsed() > SETTLE_TIMEOUT {
                    shell.fail(&format!(
                        "order {id} not CONFIRMED within {SETTLE_TIMEOUT:?}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(300));
            };
            let ranks: Vec<usize> = seen.iter().filter_map(|s| rank(s)).collect();
            if !ranks.windows(2).all(|w| w[0] < w[1]) {
                shell.fail(&format!("the statuses went {seen:?}, not forward"));
            }
            let decisions: Vec<&str> = last["timeline"]
                .as_array()
                .map(|t| t.iter().filter_map(|e| e["status"].as_str()).collect())
                .unwrap_or_default();
            let pending = decisions.iter().position(|s| *s == "PENDING");
            let done = decisions.iter().position(|s| *s == "CONFIRMED");
            if !matches!((pending, done), (Some(p), Some(c)) if p < c) {
                shell.fail(&format!(
                    "the timeline is {decisions:?}, not PENDING then CONFIRMED: {last}"
                ));
            }
            eprintln!("order {id}: {seen:?}, timeline {decisions:?}");
            confirmed = true;
        } else if words.starts_with(&["keel", "order"]) {
            let out = shell.ok(&typed);
            let id = order_id.clone().unwrap_or_default();
            let commands_topic = format!("{name}.");
            for expected in [id.as_str(), "CONFIRMED", "PENDING", commands_topic.as_str()] {
                if !out.output.contains(expected) {
                    shell.fail(&format!(
                        "`keel order` printed no {expected:?}: {}",
                        out.output
                    ));
                }
            }
            if !out.output.lines().any(|l| l.contains('@')) {
                shell.fail(&format!(
                    "`keel order` names no topic/partition@offset: {}",
                    out.output
                ));
            }
            timeline_shown = true;
        } else if words.starts_with(&["keel", "lag"]) {
            let out = shell.ok(&typed);
            for role in ["saga", "inventory", "payment"] {
                let group = format!("{name}-{role}");
                if !out.output.contains(&group) {
                    shell.fail(&format!(
                        "`keel lag --once` printed no group {group}: {}",
                        out.output
                    ));
                }
            }
            lag_shown = true;
        } else if typed.contains("/ready") {
            let out = shell.ok(&typed);
            // The line waits: when it returns, the API answers 200.
            let status = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("{}/ready", run.api))
                .output()
                .expect("curl");
            let code = String::from_utf8_lossy(&status.stdout).into_owned();
            if code != "200" {
                shell.fail(&format!(
                    "after the readiness line ({:?}) /ready answers {code}",
                    out.output
                ));
            }
            ready_seen = true;
        } else if words.first() == Some(&"kill") {
            shell.ok(&typed);
            if !shell.jobs.gone_within(Duration::from_secs(60)) {
                shell.fail(&format!(
                    "`{}` left a process running: {:?}",
                    typed.trim(),
                    shell.jobs.0
                ));
            }
        } else {
            shell.ok(&typed);
        }
    }
    for (done, what) in [
        (ready_seen, "a readiness wait"),
        (posted, "the POST"),
        (confirmed, "the poll of GET /orders/<orderId>"),
        (timeline_shown, "`keel order <orderId>`"),
        (lag_shown, "`keel lag --once`"),
    ] {
        if !done {
            shell.fail(&format!("the block has no {what}"));
        }
    }
    if shell.jobs.0.len() != 2 {
        shell.fail(&format!(
            "expected two background jobs (the PSP mock and keel run), saw {:?}",
            shell.jobs.0
        ));
    }
    if !shell.jobs.gone_within(Duration::from_secs(1)) {
        shell.fail("the block leaves its background jobs running (no `kill %1 %2`)");
    }
    // The logs the block redirects to files are for reading: plain text, no terminal colours.
    for entry in std::fs::read_dir(dir).expect("the working directory") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains('\u{1b}')) {
                shell.fail(&format!(
                    "{} has terminal escape codes: {line:?}",
                    path.display()
                ));
            }
        }
    }
}

#[test]
fn the_readme_checkout_by_hand_works_as_written() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let stack = Stack::from_env();
    let (name, run) = runtime.block_on(Run::new(&stack));
    let dir = tempfile::tempdir().expect("a working directory");

    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        the_checkout_by_hand(&run, &name, dir.path())
    }));
    if outcome.is_err() {
        for log in ["psp.log", "keel.log"] {
            eprintln!(
                "--- the last lines of {log} ---\n{}",
                tail(&dir.path().join(log))
            );
        }
    }
    runtime.block_on(run.clean_up(&stack, &name));
    drop(run);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
