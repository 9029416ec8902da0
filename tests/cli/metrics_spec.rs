//! `docs/metrics.md` and a real `keel run`'s `/metrics` agree, both ways: every metric the
//! document lists for a role `keel run` hosts is exposed with the documented type and exactly the
//! documented labels, and every metric the process exposes is documented.
//!
//! Labelled series only exist once used, so the run first makes them: a checkout, a restart on
//! a wiped state directory (the stores are restored from their changelogs: the restore metrics),
//! a confirmed, a declined and a PSP-callback-settled checkout (payment, compensation,
//! `payment_callbacks_total`), and an undecodable record on the orders topic (a dead letter).
//! The run hosts `keel run`'s default roles plus `audit` (the invariant auditor only reads
//! topics, so it is cheap here).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Run, place, settled, wait_ready};
use keel_tests::Stack;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The roles the test's `keel run` hosts ([`KEEL_ROLES`]), plus `runtime` (the stream
/// applications' metrics) and `process` (what every process serving `/metrics` samples).
const RUN_ROLES: [&str; 7] = [
    "api",
    "saga",
    "inventory",
    "payment",
    "audit",
    "runtime",
    "process",
];

/// `keel run --roles`: the default roles and the invariant auditor.
const KEEL_ROLES: &str = "api,saga,inventory,payment,sinks,relay,audit";

/// Documented metrics whose first series needs an event this run does not make.
const APPEARS_ON_EVENTS_NOT_MADE: [&str; 1] = ["on an abort"];

/// One documented metric.
#[derive(Debug, Clone)]
struct Documented {
    role: String,
    kind: String,
    labels: BTreeSet<String>,
    appears: String,
}

/// What the document lists: metric name → row. Rows are `| \`name\` | type | \`a\`, \`b\` | unit |
/// appears | meaning |` inside `## Role \`<role>\`…` sections.
fn documented(text: &str) -> BTreeMap<String, Documented> {
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut out = BTreeMap::new();
    let mut role = None;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            role = heading
                .starts_with("Role ")
                .then(|| ticked(heading).into_iter().next())
                .flatten();
            continue;
        }
        let Some(role) = &role else { continue };
        if !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(cells.len() >= 7, "a metric row needs 6 cells: {line}");
        let name = ticked(cells[1]).into_iter().next().expect("a metric name");
        let row = Documented {
            role: role.clone(),
            kind: cells[2].to_owned(),
            labels: ticked(cells[3]).into_iter().collect(),
            appears: cells[5].to_owned(),
        };
        assert!(
            ["counter", "gauge", "histogram"].contains(&row.kind.as_str()),
            "{name}: unknown type {:?}",
            row.kind
        );
        assert!(
            out.insert(name.clone(), row).is_none(),
            "{name} is documented twice"
        );
    }
    out
}

/// What the exposition shows: family name → (type, label names without `le`).
fn exposed(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                panic!("malformed TYPE line: {line}");
            };
            out.entry(name.to_owned()).or_default().0 = kind.to_owned();
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).expect("a sample line");
        let sample = &line[..end];
        let family = if out.contains_key(sample) {
            sample.to_owned()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| sample.strip_suffix(s))
                .filter(|base| out.get(*base).is_some_and(|(k, _)| k == "histogram"))
                .unwrap_or_else(|| panic!("sample {sample} has no TYPE line"))
                .to_owned()
        };
        let labels = &mut out.get_mut(&family).expect("family").1;
        if let Some(body) = line[end..].strip_prefix('{') {
            // Label names: before each `="`; values are quoted, so split on `",` boundaries.
            let body = &body[..body.rfind('}').expect("closing brace")];
            let mut rest = body;
            while let Some(eq) = rest.find("=\"") {
                let name = rest[..eq].trim_start_matches(',').trim();
                if name != "le" {
                    labels.insert(name.to_owned());
                }
                // Skip the quoted value (escapes: \\ and \").
                let value = &rest[eq + 2..];
                let mut chars = value.char_indices();
                let mut close = value.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => {
                            close = i;
                            break;
                        }
                        _ => {}
                    }
                }
                rest = &value[(close + 1).min(value.len())..];
            }
        }
    }
    out
}

/// Every disagreement between the document and the exposition (empty: they agree).
fn disagreements(
    docs: &BTreeMap<String, Documented>,
    exposition: &BTreeMap<String, (String, BTreeSet<String>)>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, (kind, labels)) in exposition {
        let Some(doc) = docs.get(name) else {
            problems.push(format!(
                "{name} ({kind}, labels {labels:?}) is exposed but not in docs/metrics.md"
            ));
            continue;
        };
        if &doc.kind != kind {
            problems.push(format!(
                "{name}: documented as {}, exposed as {kind}",
                doc.kind
            ));
        }
        if &doc.labels != labels {
            problems.push(format!(
                "{name}: documented labels {:?}, exposed labels {labels:?}",
                doc.labels
            ));
        }
    }
    for (name, doc) in docs {
        let may_be_absent = !RUN_ROLES.contains(&doc.role.as_str())
            || APPEARS_ON_EVENTS_NOT_MADE.contains(&doc.appears.as_str());
        if !may_be_absent && !exposition.contains_key(name) {
            problems.push(format!(
                "{name} (role {}, appears {}) is documented but not exposed",
                doc.role, doc.appears
            ));
        }
    }
    problems
}

async fn metrics_page(client: &reqwest::Client, api: &str) -> String {
    let r = client
        .get(format!("{api}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.expect("text")
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_checkers_find_a_missing_an_undocumented_and_a_mislabelled_metric() {
    let docs = documented(
        "## Role `api`: x\n\n| metric | type | labels | unit | appears | meaning |\n\
         | --- | --- | --- | --- | --- | --- |\n\
         | `a_total` | counter | `x`, `y` | 1 | with traffic | A. |\n\
         | `b_seconds` | histogram | — | s | at start | B. |\n\
         | `c` | gauge | — | 1 | on an abort | C. |\n\
         ## Role `elsewhere`: y\n\
         | `d` | gauge | — | 1 | at start | D. |\n",
    );
    assert_eq!(docs.len(), 4);
    let agree = exposed(
        "# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 1\n\
         # TYPE b_seconds histogram\nb_seconds_bucket{le=\"1\"} 1\nb_seconds_sum 1\nb_seconds_count 1\n",
    );
    assert_eq!(disagreements(&docs, &agree), Vec::<String>::new());
    let wrong = exposed(
        "# TYPE a_total counter\na_total{x=\"1\"} 1\n# TYPE e gauge\ne 1\n\
         # TYPE c counter\nc 1\n",
    );
    let problems = disagreements(&docs, &wrong).join("\n");
    for expected in [
        "a_total: documented labels",
        "e (gauge, labels {}) is exposed but not in docs",
        "c: documented as gauge, exposed as counter",
        "b_seconds (role api, appears at start) is documented but not exposed",
    ] {
        assert!(problems.contains(expected), "{expected:?} in:\n{problems}");
    }
    assert!(!problems.contains("d ("), "{problems}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_page_and_docs_metrics_md_agree_both_ways() {
    let docs = documented(
        &std::fs::read_to_string(repo().join("docs/metrics.md")).expect("docs/metrics.md"),
    );
    assert!(
        docs.len() >= 30,
        "docs/metrics.md lists {} metrics",
        docs.len()
    );

    let stack = Stack::from_env();
    let (name, run) = Run::new(&stack).await;
    for cart in ["cart-before", "cart-ok", "cart-declined", "cart-pending"] {
        run.ok(&["carts", "seed", "--cart-id", cart, "--item", "SKU-M:1:1000"]);
    }
    run.ok(&["inventory", "seed", "--skus", "SKU-M", "--quantity", "10"]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let client = reqwest::Client::new();

    // First run: one checkout, so the saga and inventory stores have changelog records.
    let mut keel = run.spawn("keel run", &["run", "--roles", KEEL_ROLES]);
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    let first = place(&client, &run.api, "cart-before", "tok_visa", "k-before").await;
    let id = first["orderId"].as_str().expect("id");
    let order = settled(&client, &run.api, id, Duration::from_secs(60)).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    assert!(
        keel.terminate(Duration::from_secs(60)).is_some(),
        "keel run did not stop on SIGTERM"
    );
    // Second run on an empty state directory: the stores are restored from the changelogs.
    std::fs::remove_dir_all(run.state_dir.path()).expect("wipe the state dir");
    std::fs::create_dir_all(run.state_dir.path()).expect("recreate the state dir");
    let mut keel = run.spawn("keel run (restored)", &["run", "--roles", KEEL_ROLES]);
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    // Past the runtime's first 5 s, so a commit samples store sizes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for (cart, token, key) in [
        ("cart-ok", "tok_visa", "k-ok"),
        (
            "cart-declined",
            "tok_decline_insufficient_funds",
            "k-declined",
        ),
        // "pending", then the PSP's callback settles it: payment_callbacks_total.
        ("cart-pending", "tok_pending", "k-pending"),
    ] {
        let placed = place(&client, &run.api, cart, token, key).await;
        let id = placed["orderId"].as_str().expect("id");
        settled(&client, &run.api, id, Duration::from_secs(60)).await;
    }
    // An undecodable record on the orders topic: the saga dead-letters it.
    let topic = format!("{name}.orders.commands.v1");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(&topic)
                .key("not-an-order")
                .payload(b"not avro"),
            Duration::from_secs(10),
        )
        .await
        .expect("sent");

    // Wait for the sampled and asynchronous series, then compare.
    let start = Instant::now();
    let (problems, families) = loop {
        let page = metrics_page(&client, &run.api).await;
        let families = exposed(&page);
        let problems = disagreements(&docs, &families);
        if problems.is_empty() || start.elapsed() > Duration::from_secs(45) {
            break (problems, families.len());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    keel.terminate(Duration::from_secs(30));
    run.clean_up(&stack, &name).await;
    eprintln!(
        "docs/metrics.md lists {} metrics; keel run exposed {families} families",
        docs.len()
    );
    assert!(
        problems.is_empty(),
        "docs/metrics.md and /metrics disagree:\n  {}",
        problems.join("\n  ")
    );
}
