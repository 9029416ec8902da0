//! `keel-stack status` reports every server healthy once `keel-stack up` has run, Prometheus
//! included.

use std::process::Command;

use keel_tests::{STACK_SERVERS, stack_script};

/// Every server `keel-stack up` starts: the ones tests connect to ([`STACK_SERVERS`]) and
/// Prometheus, which scrapes `keel run` (stack/servers/prometheus.sh).
fn servers() -> impl Iterator<Item = &'static str> {
    STACK_SERVERS.into_iter().chain(["prometheus"])
}

#[test]
fn status_reports_every_server_healthy() -> anyhow::Result<()> {
    let out = Command::new(stack_script()).arg("status").output()?;
    let table = String::from_utf8(out.stdout)?;
    for server in servers() {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(server))
            .unwrap_or_else(|| panic!("status has no line for {server}:\n{table}"));
        assert_eq!(
            line.split_whitespace().last(),
            Some("healthy"),
            "{server} is not healthy:\n{table}"
        );
    }
    assert!(
        out.status.success(),
        "status exits 0 when all are healthy:\n{table}"
    );
    Ok(())
}
