//! `keel-stack down` stops exactly what `up` started and leaves no server process behind.
//!
//! Ignored by default because it takes the stack down: `make test` and `.ci/run` run it last
//! with `cargo test --test stack_down -- --ignored`.

use std::path::PathBuf;
use std::process::Command;

use keel_tests::{STACK_SERVERS, stack_script};

/// Every server `keel-stack up` starts: the ones tests connect to ([`STACK_SERVERS`]) and
/// Prometheus, which scrapes `keel run` (stack/servers/prometheus.sh).
fn servers() -> impl Iterator<Item = &'static str> {
    STACK_SERVERS.into_iter().chain(["prometheus"])
}

fn pid_dir() -> anyhow::Result<PathBuf> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". {} && printf %s \"$KEEL_STACK_DIR/pids\"",
            stack_script().with_file_name("lib.sh").display()
        ))
        .output()?;
    Ok(PathBuf::from(String::from_utf8(out.stdout)?))
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
#[ignore = "takes the whole stack down; run last"]
fn down_stops_every_server_it_started() -> anyhow::Result<()> {
    let pids = pid_dir()?;
    let mut started = Vec::new();
    for server in servers() {
        let text = std::fs::read_to_string(pids.join(format!("{server}.pid")))
            .map_err(|e| anyhow::anyhow!("{server} has no pid file (was the stack up?): {e}"))?;
        let pid: i32 = text.trim().parse()?;
        assert!(
            alive(pid),
            "{server} (pid {pid}) should be running before down"
        );
        started.push((server, pid));
    }

    let status = Command::new(stack_script()).arg("down").status()?;
    assert!(status.success(), "down exits 0");

    for (server, pid) in &started {
        assert!(
            !alive(*pid),
            "{server} (pid {pid}) is still running after down"
        );
        assert!(
            !pids.join(format!("{server}.pid")).exists(),
            "{server}'s pid file is left behind"
        );
    }
    let status = Command::new(stack_script()).arg("status").output()?;
    assert!(
        !status.status.success(),
        "status must report the stack down"
    );
    let table = String::from_utf8(status.stdout)?;
    for server in servers() {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(server))
            .unwrap_or_default();
        assert!(line.ends_with("stopped"), "{server} after down: {line}");
    }
    Ok(())
}
