//! `docker/docker-compose.yml` is valid YAML and stays in step with the local stack: the same
//! servers on the same loopback ports, with the same CDC and transaction settings and the same
//! JMX exporter agents (Connect, broker) scraped by Prometheus; its Grafana dashboards read only
//! metrics and labels that docs/metrics.md documents.

use std::collections::{BTreeMap, BTreeSet};
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

/// The PSP mock runs in compose from Keel's own image, built from a Dockerfile in the
/// repository that builds the `keel` binary, on the port `[payment].psp_url` defaults to.
#[test]
fn the_psp_mock_runs_from_keels_image_on_the_default_psp_port() -> anyhow::Result<()> {
    let doc = compose()?;
    let svc = &doc["services"]["psp-mock"];
    assert!(svc.is_mapping(), "compose has no psp-mock");
    assert_eq!(command_line(svc), "keel psp-mock");
    assert_eq!(published_ports(svc), vec!["127.0.0.1:8090:8090".to_owned()]);
    let dockerfile = svc["build"]["dockerfile"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("psp-mock has no build.dockerfile"))?;
    let root = repo();
    let text = std::fs::read_to_string(root.join(dockerfile))?;
    assert!(
        text.contains("cargo build --release --locked --bin keel"),
        "{dockerfile} does not build the keel binary"
    );
    let defaults = std::fs::read_to_string(root.join("config/default.toml"))?;
    assert!(
        defaults.contains("psp_url = \"http://127.0.0.1:8090\""),
        "[payment].psp_url's default is not the port compose publishes"
    );
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

/// The metrics `docs/metrics.md` documents (first cell of each row of a `## Role` table), each
/// with the labels its third cell names (empty for `—`).
fn documented_metrics() -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let text = std::fs::read_to_string(repo().join("docs/metrics.md"))?;
    let mut metrics = BTreeMap::new();
    let mut in_role = false;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            in_role = heading.starts_with("Role ");
            continue;
        }
        if !in_role || !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let name = cells[0].trim_matches('`').to_owned();
        let labels = cells
            .get(2)
            .map(|c| c.split('`').skip(1).step_by(2).map(str::to_owned).collect())
            .unwrap_or_default();
        metrics.insert(name, labels);
    }
    Ok(metrics)
}

/// The tokens of a PromQL expression with strings, label matchers and range selectors dropped:
/// identifiers (with `:` and `.`) and single punctuation characters.
fn promql_tokens(expr: &str) -> Vec<String> {
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
    tokens
}

/// Modifiers followed by a label list: `by (…)`, `on (…)`, `group_left (…)`, ….
const LABEL_LIST_MODIFIERS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads: identifiers that are not functions, aggregation
/// keywords or label names (label matchers, ranges, strings and `by (…)` lists are skipped).
fn promql_metrics(expr: &str) -> Vec<String> {
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
    let tokens = promql_tokens(expr);
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        // A function or an aggregation (`sum (…)`, `sum by (…) (…)`).
        let next_is_paren = tokens
            .get(i + 1)
            .is_some_and(|n| n == "(" || n == "by" || n == "without");
        if LABEL_LIST_MODIFIERS.contains(&t.as_str()) && next_is_paren {
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

/// The labels a PromQL expression groups or matches on: the lists after `by`, `without`, `on`,
/// `ignoring`, `group_left` and `group_right`.
fn promql_grouping_labels(expr: &str) -> Vec<String> {
    let tokens = promql_tokens(expr);
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if LABEL_LIST_MODIFIERS.contains(&tokens[i].as_str())
            && tokens.get(i + 1).is_some_and(|n| n == "(")
        {
            i += 2;
            while i < tokens.len() && tokens[i] != ")" {
                if tokens[i] != "," {
                    out.push(tokens[i].clone());
                }
                i += 1;
            }
        }
        i += 1;
    }
    out
}

/// The labels a Grafana legend shows (`{{group}} {{topic}}[{{partition}}]`).
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|s| s.split_once("}}").map(|(l, _)| l.trim().to_owned()))
        .collect()
}

/// One query of a dashboard: its `expr` and its `legendFormat` (empty when none).
#[derive(Debug)]
struct Query {
    expr: String,
    legend: String,
}

/// Every query in a JSON value (dashboard panels and their targets, rows included).
fn queries(v: &serde_json::Value, out: &mut Vec<Query>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                out.push(Query {
                    expr: expr.clone(),
                    legend: map
                        .get("legendFormat")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
            map.values().for_each(|v| queries(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// A provisioned dashboard, parsed.
fn dashboard(file: &str) -> anyhow::Result<serde_json::Value> {
    let path = repo()
        .join("docker/grafana/provisioning/dashboards")
        .join(file);
    serde_json::from_str(&std::fs::read_to_string(&path)?)
        .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", path.display()))
}

#[test]
fn promql_names_are_found_and_functions_labels_and_strings_are_not() {
    let expr = "histogram_quantile(0.95, sum by (le, outcome) (rate(saga_duration_seconds_bucket{kind=\"a b\"}[5m]))) \
         / ignoring(x) sum without (task) (inventory_holds_active) * 60 + max(payment_failure_rate >= 0) > bool 1";
    assert_eq!(
        promql_metrics(expr),
        [
            "saga_duration_seconds_bucket",
            "inventory_holds_active",
            "payment_failure_rate"
        ]
    );
    assert_eq!(promql_grouping_labels(expr), ["le", "outcome", "x", "task"]);
    assert_eq!(
        legend_labels("{{group}} {{ topic }}[{{partition}}] lag"),
        ["group", "topic", "partition"]
    );
}

#[test]
fn every_dashboard_query_names_a_metric_and_labels_documented_in_docs_metrics_md()
-> anyhow::Result<()> {
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
            queries(panel, &mut found);
            assert!(!found.is_empty(), "panel {} has no query", panel["title"]);
            for Query { expr, legend } in found {
                let names = promql_metrics(&expr);
                assert!(!names.is_empty(), "no metric in {expr:?}");
                // The labels the metrics read here carry (`le` for a histogram's buckets).
                let mut labels = BTreeSet::new();
                for name in names {
                    let bucket = name.strip_suffix("_bucket").is_some();
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .filter(|b| documented.contains_key(*b))
                        .unwrap_or(&name);
                    match documented.get(base) {
                        Some(known) => labels.extend(known.iter().cloned()),
                        None => {
                            undocumented.push(format!("{}: {name} in {expr}", path.display()));
                        }
                    }
                    if bucket {
                        labels.insert("le".to_owned());
                    }
                }
                for label in promql_grouping_labels(&expr)
                    .into_iter()
                    .chain(legend_labels(&legend))
                {
                    if !labels.contains(&label) {
                        undocumented.push(format!(
                            "{}: label {label} in {expr} / legend {legend:?} (documented: {labels:?})",
                            path.display()
                        ));
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
        "dashboard queries read metrics or labels docs/metrics.md does not list:\n{}",
        undocumented.join("\n")
    );
    let source: Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo().join("docker/grafana/provisioning/datasources/prometheus.yml"),
    )?)?;
    assert_eq!(source["datasources"][0]["uid"].as_str(), Some("prometheus"));
    Ok(())
}

#[test]
fn the_lag_dashboard_charts_connect_debezium_and_the_broker() -> anyhow::Result<()> {
    let doc = dashboard("keel-lag.json")?;
    let mut found = Vec::new();
    queries(&doc, &mut found);
    let read: BTreeSet<String> = found.iter().flat_map(|q| promql_metrics(&q.expr)).collect();
    for metric in [
        // Role `connect` (docs/metrics.md): CDC lag, connector status, records polled.
        "debezium_streaming_milliseconds_behind_source",
        "debezium_streaming_connected",
        "kafka_connect_connector_status",
        "kafka_connect_source_task_records_polled_total",
        // Role `kafka`: messages in, request p99, under-replicated and offline partitions.
        "kafka_server_messages_in_total",
        "kafka_network_request_total_time_ms_p99",
        "kafka_server_under_replicated_partitions",
        "kafka_controller_offline_partitions",
    ] {
        assert!(
            read.contains(metric),
            "the lag dashboard charts no {metric}: it reads {read:?}"
        );
    }
    // Panels do not overlap on Grafana's 24-column grid.
    let mut cells = BTreeMap::new();
    for panel in doc["panels"].as_array().into_iter().flatten() {
        let g = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap_or_default());
        assert!(w > 0 && h > 0 && x + w <= 24, "{}: {g}", panel["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), panel["title"].clone()) {
                    panic!("{} overlaps {other} at ({cx}, {cy})", panel["title"]);
                }
            }
        }
    }
    Ok(())
}

/// The default of a local-stack module's `<module>_METRICS_PORT="${KEEL_…:-9405}"`.
fn local_metrics_port(module: &str) -> anyhow::Result<u16> {
    let text = std::fs::read_to_string(repo().join(format!("stack/servers/{module}.sh")))?;
    let prefix = format!("{module}_METRICS_PORT=");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .and_then(|v| v.split(":-").nth(1))
        .and_then(|v| v.split('}').next())
        .ok_or_else(|| anyhow::anyhow!("{module}.sh declares no {prefix}\"${{…:-port}}\""))?
        .parse()
        .map_err(Into::into)
}

/// A compose service's volume mounts as (host or volume, path in the container).
fn mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|v| {
            let mut parts = v.split(':');
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// `service` runs the JMX exporter agent that the `jmx-agent` service fetches, serving on
/// `port` with the rules of `docker/prometheus/<rules>` mounted where its KAFKA_OPTS says, and
/// starts only after the agent was fetched.
fn assert_jmx_agent(doc: &Value, service: &str, rules: &str, port: u16) -> anyhow::Result<()> {
    let svc = &doc["services"][service];
    let opts = svc["environment"]["KAFKA_OPTS"]
        .as_str()
        .unwrap_or_default();
    let agent = opts
        .split_whitespace()
        .find_map(|o| o.strip_prefix("-javaagent:"))
        .ok_or_else(|| anyhow::anyhow!("{service}: KAFKA_OPTS loads no java agent: {opts:?}"))?;
    let (jar, args) = agent
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("{service}: the agent has no <port>:<rules>: {agent}"))?;
    let (agent_port, rules_path) = args
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("{service}: the agent has no <port>:<rules>: {agent}"))?;
    assert_eq!(
        agent_port.parse::<u16>()?,
        port,
        "{service}: the agent serves on {agent_port}, the local stack and Prometheus on {port}"
    );
    let mounted = mounts(svc);
    let (_, agent_dir) = mounted
        .iter()
        .find(|(from, _)| from == "jmx-agent")
        .ok_or_else(|| anyhow::anyhow!("{service} does not mount the jmx-agent volume"))?;
    let file = jar
        .strip_prefix(&format!("{agent_dir}/"))
        .ok_or_else(|| anyhow::anyhow!("{service}: {jar} is not in the jmx-agent volume"))?;
    let fetcher = &doc["services"]["jmx-agent"];
    let fetched_to = mounts(fetcher)
        .into_iter()
        .find(|(from, _)| from == "jmx-agent")
        .map(|(_, to)| format!("{to}/{file}"))
        .unwrap_or_default();
    let fetch = command_line(fetcher);
    assert!(
        fetch.contains(&format!("-o {fetched_to} ")),
        "jmx-agent does not write the {file} that {service} loads: {fetch}"
    );
    assert!(
        mounted.contains(&(format!("./prometheus/{rules}"), rules_path.to_owned())),
        "{service} does not mount ./prometheus/{rules} at {rules_path}: {mounted:?}"
    );
    assert_eq!(
        svc["depends_on"]["jmx-agent"]["condition"].as_str(),
        Some("service_completed_successfully"),
        "{service} must start after jmx-agent fetched the agent"
    );
    Ok(())
}

#[test]
fn connect_and_the_broker_run_the_jmx_exporter_as_in_the_local_stack() -> anyhow::Result<()> {
    let doc = compose()?;
    assert_jmx_agent(
        &doc,
        "connect",
        "jmx-connect.yml",
        local_metrics_port("connect")?,
    )?;
    assert_jmx_agent(&doc, "kafka", "jmx-kafka.yml", local_metrics_port("kafka")?)?;
    // The same agent version as the local stack (stack/lib.sh).
    let lib = std::fs::read_to_string(repo().join("stack/lib.sh"))?;
    let version = lib
        .lines()
        .find_map(|l| l.trim().strip_prefix(": \"${KEEL_JMX_EXPORTER_VERSION:="))
        .and_then(|v| v.split('}').next())
        .ok_or_else(|| anyhow::anyhow!("stack/lib.sh sets no KEEL_JMX_EXPORTER_VERSION"))?;
    let fetch = command_line(&doc["services"]["jmx-agent"]);
    assert!(
        fetch.contains(&format!("jmx_prometheus_javaagent-{version}.jar")),
        "compose fetches another agent than the local stack's {version}: {fetch}"
    );
    // Every Kafka script in the broker's container reads KAFKA_OPTS; a second JVM with the
    // agent cannot bind its port while the broker holds it and exits 1. The healthcheck runs
    // one, so it must clear KAFKA_OPTS, or the broker never turns healthy.
    let health = match &doc["services"]["kafka"]["healthcheck"]["test"] {
        Value::Sequence(args) => args
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        other => other.as_str().unwrap_or_default().to_owned(),
    };
    if health.contains("/opt/kafka/bin/") {
        assert!(
            health.contains("KAFKA_OPTS= "),
            "the broker's healthcheck runs a Kafka script with the agent in KAFKA_OPTS: {health}"
        );
    }
    Ok(())
}

#[test]
fn prometheus_scrapes_keel_run_and_the_jmx_exporters_of_connect_and_the_broker()
-> anyhow::Result<()> {
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
    // The jobs the local stack's Prometheus has too (stack/servers/prometheus.sh), on the
    // compose services and the ports their agents serve on.
    let documented = documented_metrics()?;
    for (job, service, rules) in [
        ("connect", "connect", "jmx-connect.yml"),
        ("kafka", "kafka", "jmx-kafka.yml"),
    ] {
        let port = local_metrics_port(service)?;
        assert_eq!(targets(job), [format!("{service}:{port}")], "job {job}");
        let rules: Value = serde_yaml::from_str(&std::fs::read_to_string(
            repo().join("docker/prometheus").join(rules),
        )?)?;
        for rule in rules["rules"].as_sequence().into_iter().flatten() {
            let name = rule["name"].as_str().unwrap_or_default();
            assert!(
                documented.contains_key(name),
                "the JMX exporter exports {name}, which docs/metrics.md does not list"
            );
        }
    }
    Ok(())
}
