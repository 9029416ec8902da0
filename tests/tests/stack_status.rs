//! `keel-stack status` reports every server healthy once `keel-stack up` has run.

use std::process::Command;

use keel_tests::{STACK_SERVERS, stack_script};

#[test]
fn status_reports_every_server_healthy() -> anyhow::Result<()> {
    let out = Command::new(stack_script()).arg("status").output()?;
    let table = String::from_utf8(out.stdout)?;
    for server in STACK_SERVERS {
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
