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

/// Past `KEEL_STACK_FD_WARN_PCT` % of the broker's open-file limit, `status` warns with the
/// broker's numbers and what to do; the warning does not change the exit status. (A threshold
/// of 0 % stands in for a broker near its limit.)
#[test]
fn status_warns_when_the_broker_nears_its_open_file_limit() -> anyhow::Result<()> {
    let warned = Command::new(stack_script())
        .arg("status")
        .env("KEEL_STACK_FD_WARN_PCT", "0")
        .output()?;
    let stderr = String::from_utf8(warned.stderr)?;
    assert!(
        stderr.contains("warning: kafka has") && stderr.contains("open-file limit"),
        "no warning at 0 %:\n{stderr}"
    );
    assert!(
        stderr.contains("stack/keel-stack down && rm -rf") && stderr.contains("ulimit -n"),
        "the warning says what to do:\n{stderr}"
    );
    assert!(
        warned.status.success(),
        "a warning is not a failure:\n{stderr}"
    );
    // At 101 % nothing can be over the limit (the broker could not have opened it).
    let quiet = Command::new(stack_script())
        .arg("status")
        .env("KEEL_STACK_FD_WARN_PCT", "101")
        .output()?;
    let stderr = String::from_utf8(quiet.stderr)?;
    assert!(!stderr.contains("warning: kafka"), "{stderr}");
    Ok(())
}
