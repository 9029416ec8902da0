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

/// The metric names `docs/metrics.md` documents (first cell of each row of a `## Role` table).
fn documented_metrics() -> anyhow::Result<std::collections::BTreeSet<String>> {
    let text = std::fs::read_to_string(repo().join("docs/metrics.md"))?;
    let mut names = std::collections::BTreeSet::new();
    let mut in_role = false;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            in_role = heading.starts_with("Role ");
            continue;
        }
        if in_role && let Some(rest) = line.strip_prefix("| `") {
            names.insert(rest.split('`').next().unwrap_or_default().to_owned());
        }
    }
    Ok(names)
}

/// The metric names a PromQL expression reads: identifiers that are not functions, aggregation
/// keywords or label names (label matchers, ranges, strings and `by (…)` lists are skipped).
fn promql_metrics(expr: &str) -> Vec<String> {
    // Drop strings, label matchers and range selectors.
    let mut plain = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut quote: Option<char> = None;
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{') => depth_brace += 1,
            (None, '}') => depth_brace -= 1,
            (None, '[') => depth_bracket += 1,
            (None, ']') => depth_bracket -= 1,
            (None, c) if depth_brace == 0 && depth_bracket == 0 => plain.push(c),
            _ => {}
        }
    }
    let mut tokens: Vec<String> = Vec::new();
    let mut word = String::new();
    for c in plain.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '.' {
            word.push(c);
        } else {
            if !word.is_empty() {
                tokens.push(std::mem::take(&mut word));
            }
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    const KEYWORDS: [&str; 12] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
    ];
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        // A function or an aggregation (`sum (…)`, `sum by (…) (…)`).
        let next_is_paren = tokens
            .get(i + 1)
            .is_some_and(|n| n == "(" || n == "by" || n == "without");
        if [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .contains(&t.as_str())
            && next_is_paren
        {
            // Skip the label list.
            while i < tokens.len() && tokens[i] != ")" {
                i += 1;
            }
        } else if t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && !next_is_paren
            && !KEYWORDS.contains(&t.to_ascii_lowercase().as_str())
        {
            out.push(t.clone());
        }
        i += 1;
    }
    out
}

/// Every `expr` in a JSON value (dashboard panels and their targets, rows included).
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn promql_names_are_found_and_functions_labels_and_strings_are_not() {
    let names = promql_metrics(
        "histogram_quantile(0.95, sum by (le, outcome) (rate(saga_duration_seconds_bucket{kind=\"a b\"}[5m]))) \
         / ignoring(x) sum without (task) (inventory_holds_active) * 60 + max(payment_failure_rate) > bool 1",
    );
    assert_eq!(
        names,
        [
            "saga_duration_seconds_bucket",
            "inventory_holds_active",
            "payment_failure_rate"
        ]
    );
}

#[test]
fn every_dashboard_query_names_a_metric_documented_in_docs_metrics_md() -> anyhow::Result<()> {
    let documented = documented_metrics()?;
    assert!(documented.len() > 30, "docs/metrics.md: {documented:?}");
    let dir = repo().join("docker/grafana/provisioning/dashboards");
    let mut dashboards = 0;
    let mut undocumented = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        dashboards += 1;
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", path.display()))?;
        assert!(doc["uid"].is_string() && doc["title"].is_string());
        let panels = doc["panels"].as_array().cloned().unwrap_or_default();
        assert!(!panels.is_empty(), "{} has no panels", path.display());
        for panel in &panels {
            // Every panel reads the provisioned data source (uid `prometheus`).
            assert_eq!(panel["datasource"]["uid"], "prometheus", "{panel}");
            let mut found = Vec::new();
            exprs(panel, &mut found);
            assert!(!found.is_empty(), "panel {} has no query", panel["title"]);
            for expr in found {
                let names = promql_metrics(&expr);
                assert!(!names.is_empty(), "no metric in {expr:?}");
                for name in names {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .filter(|b| documented.contains(*b))
                        .unwrap_or(&name);
                    if !documented.contains(base) {
                        undocumented.push(format!("{}: {name} in {expr}", path.display()));
                    }
                }
            }
        }
    }
    assert!(
        dashboards >= 2,
        "the flow and lag dashboards are provisioned"
    );
    assert!(
        undocumented.is_empty(),
        "dashboard queries read metrics docs/metrics.md does not list:\n{}",
        undocumented.join("\n")
    );
    let source: Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo().join("docker/grafana/provisioning/datasources/prometheus.yml"),
    )?)?;
    assert_eq!(source["datasources"][0]["uid"].as_str(), Some("prometheus"));
    Ok(())
}

#[test]
fn prometheus_scrapes_keel_run_and_the_connect_jmx_exporter() -> anyhow::Result<()> {
    let prom: Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo().join("docker/prometheus/prometheus.yml"),
    )?)?;
    let targets = |job: &str| -> Vec<String> {
        prom["scrape_configs"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter(|c| c["job_name"].as_str() == Some(job))
            .flat_map(|c| {
                c["static_configs"]
                    .as_sequence()
                    .cloned()
                    .unwrap_or_default()
            })
            .flat_map(|s| s["targets"].as_sequence().cloned().unwrap_or_default())
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    };
    // keel run serves /metrics on the API's port ([api].listen in config/default.toml).
    let defaults = std::fs::read_to_string(repo().join("config/default.toml"))?;
    let api_port = defaults
        .split("[api]")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.trim().strip_prefix("listen = ")))
        .and_then(|l| l.trim_matches('"').rsplit(':').next().map(str::to_owned))
        .ok_or_else(|| anyhow::anyhow!("config/default.toml has no [api] listen"))?;
    let keel = targets("keel");
    assert!(
        keel.iter().any(|t| t.ends_with(&format!(":{api_port}"))),
        "prometheus scrapes keel at {keel:?}, not on the API port {api_port}"
    );
    let connect = targets("connect");
    assert_eq!(connect, ["connect:9404"]);
    let doc = compose()?;
    let opts = doc["services"]["connect"]["environment"]["KAFKA_OPTS"]
        .as_str()
        .unwrap_or_default();
    assert!(
        opts.contains("-javaagent:") && opts.contains("=9404:"),
        "Connect runs no JMX exporter on 9404: {opts:?}"
    );
    let rules: Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo().join("docker/prometheus/jmx-connect.yml"),
    )?)?;
    let documented = documented_metrics()?;
    for rule in rules["rules"].as_sequence().into_iter().flatten() {
        let name = rule["name"].as_str().unwrap_or_default();
        assert!(
            documented.contains(name),
            "the JMX exporter exports {name}, which docs/metrics.md does not list"
        );
    }
    Ok(())
}
