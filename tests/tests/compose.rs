//! `docker/docker-compose.yml` is valid YAML and stays in step with the local stack: the same
//! servers on the same loopback ports, with the same CDC and transaction settings.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compose() -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(repo().join("docker/docker-compose.yml"))?;
    Ok(serde_yaml::from_str(&text)?)
}

/// The first port a local-stack module declares (`<name>_PORTS="9092 9093"`).
fn local_port(module: &str) -> anyhow::Result<u16> {
    let text = std::fs::read_to_string(repo().join(format!("stack/servers/{module}.sh")))?;
    let prefix = format!("{module}_PORTS=");
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .ok_or_else(|| anyhow::anyhow!("{module}.sh declares no {prefix}"))?;
    let first = line
        .trim_matches(|c| c == '"' || c == '\'')
        .split_whitespace()
        .next()
        .unwrap_or_default();
    Ok(first.parse()?)
}

fn published_ports(service: &Value) -> Vec<String> {
    service["ports"]
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Every argument of a service's `command`, joined, to search for flags.
fn command_line(service: &Value) -> String {
    match &service["command"] {
        Value::Sequence(args) => args
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

#[test]
fn every_local_server_has_a_compose_service_on_the_same_loopback_port() -> anyhow::Result<()> {
    let doc = compose()?;
    let services = &doc["services"];
    for (module, service) in [
        ("kafka", "kafka"),
        ("registry", "registry"),
        ("connect", "connect"),
        ("mariadb", "mysql"),
        ("postgres", "postgres"),
        ("cassandra", "cassandra"),
    ] {
        let port = local_port(module)?;
        let svc = &services[service];
        assert!(svc.is_mapping(), "compose has no service {service}");
        assert!(
            svc["image"].as_str().is_some_and(|i| !i.is_empty()),
            "{service} names no image"
        );
        assert_eq!(
            published_ports(svc),
            vec![format!("127.0.0.1:{port}:{port}")],
            "{service} must publish the local stack's port {port} on loopback only"
        );
    }
    for extra in ["prometheus", "grafana"] {
        assert!(services[extra].is_mapping(), "compose has no {extra}");
    }
    Ok(())
}

#[test]
fn databases_are_configured_for_cdc_and_kafka_for_transactions() -> anyhow::Result<()> {
    let doc = compose()?;
    let s = &doc["services"];
    let mysql = command_line(&s["mysql"]);
    for flag in [
        "--server-id=1",
        "--log-bin",
        "--binlog-format=ROW",
        "--binlog-row-image=FULL",
    ] {
        assert!(mysql.contains(flag), "mysql lacks {flag}: {mysql}");
    }
    let pg = command_line(&s["postgres"]);
    assert!(pg.contains("wal_level=logical"), "postgres: {pg}");
    let env = &s["kafka"]["environment"];
    for key in [
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
    ] {
        assert_eq!(env[key].as_str(), Some("1"), "kafka {key}");
    }
    Ok(())
}

#[test]
fn mounted_files_exist_and_grafana_provisioning_parses() -> anyhow::Result<()> {
    let doc = compose()?;
    let services = doc["services"]
        .as_mapping()
        .ok_or_else(|| anyhow::anyhow!("services is not a mapping"))?;
    for (name, svc) in services {
        for volume in svc["volumes"].as_sequence().into_iter().flatten() {
            let Some(spec) = volume.as_str() else {
                continue;
            };
            let host = spec.split(':').next().unwrap_or_default();
            if host.starts_with("./") {
                let path = repo().join("docker").join(host);
                assert!(
                    path.exists(),
                    "{name:?} mounts {host}, which does not exist"
                );
            }
        }
    }
    for file in [
        "docker/prometheus/prometheus.yml",
        "docker/grafana/provisioning/datasources/prometheus.yml",
        "docker/grafana/provisioning/dashboards/keel.yml",
    ] {
        let text = std::fs::read_to_string(repo().join(file))?;
        let _: Value = serde_yaml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{file} is not valid YAML: {e}"))?;
    }
    Ok(())
}
