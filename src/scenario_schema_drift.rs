//! `keel scenario schema-drift` (issue 13): a foreign producer of `payment.authorized.v1` (the
//! scenario itself, with rdkafka and apache-avro) starts writing schemas Keel does not have.
//!
//! "Not registered", precisely, in the Confluent wire format (`0x00`, a 4-byte big-endian
//! schema id, the Avro datum): the id in the frame is the only thing a consumer can resolve the
//! writer's schema by, so a producer's schema is unknown to Keel in one of two ways, both
//! driven here:
//! - the id is unknown to the registry (`GET /schemas/ids/{id}` → 404: the producer used
//!   another registry or never registered): the saga cannot read the record at all → it is
//!   dead-lettered with `schema id N is unknown to the registry`;
//! - the id is known, but its schema is not Keel's: a version someone else registered under the
//!   subject after Keel's (a new optional field: BACKWARD-compatible, so the registry takes it
//!   and the saga reads it, skipping the field), which `keel schemas check` reports as DRIFT
//!   and fails on; or, case 2, an incompatible schema — refused under the subject (409, the
//!   global BACKWARD level) — that the producer registered under another subject and writes
//!   anyway: the saga cannot resolve it into its `.avsc` → dead-lettered with the reason.
//!
//! Every record the scenario writes is accounted for. The unreadable ones (the unknown id,
//! the incompatible schema) are found on the saga's dead-letter topic
//! (`<application_id>-saga-dlq`) with `keel.error` (why) and `keel.source.topic/partition/
//! offset` (where from), and counted by `keel_dead_letters_total{application="<app>-saga"}`.
//! The readable one (the newer compatible version) is a valid authorization for an order the
//! saga does not orchestrate — as a payment opened through `POST /payments` would be — so the
//! saga reads it and leaves it alone: `keel_saga_events_ignored_total{event=
//! "payment.authorized.v1",reason="no_saga"}` rises by that record (exactly, on a Keel with no
//! other such traffic), and it is not on the dead-letter topic. The counter only moves for a record the saga decoded, so its rise is the
//! proof that the new field did not stand in the way (an undecodable record is a dead letter).
//! The schema versions it registered are deleted at the end, so the registry is left as found.

use std::time::Duration;

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use keel_avro::registry::{SchemaRegistry, check_all_topics};
use keel_avro::wire;
use keel_processors::topics;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use crate::config::KeelConfig;
use crate::scenario::Report;
use crate::scenario_oversell::{RawRecord, raw_records, sample};

/// The optional field the foreign producer adds (case 1).
const NEW_FIELD: &str = "risk_score";

/// Runs the schema-drift scenario into `report`.
pub(crate) async fn drive(
    config: &KeelConfig,
    api: &str,
    timeout: Duration,
    suffix: &str,
    report: &mut Report,
) {
    let registry = match SchemaRegistry::new(&config.registry) {
        Ok(r) => r,
        Err(e) => {
            report.check("registry client", false, format!("{e}"));
            return;
        }
    };
    let mut cleanup = Cleanup::default();
    run(
        config,
        api,
        timeout,
        suffix,
        &registry,
        &mut cleanup,
        report,
    )
    .await;
    let http = reqwest::Client::new();
    let url = &config.registry.url;
    for (subject, version) in &cleanup.versions {
        for q in ["", "?permanent=true"] {
            let _ = http
                .delete(format!("{url}/subjects/{subject}/versions/{version}{q}"))
                .send()
                .await;
        }
    }
    for subject in &cleanup.subjects {
        for q in ["", "?permanent=true"] {
            let _ = http
                .delete(format!("{url}/subjects/{subject}{q}"))
                .send()
                .await;
        }
    }
    if !cleanup.versions.is_empty() || !cleanup.subjects.is_empty() {
        report.did.push(format!(
            "deleted what it registered: versions {:?}, subjects {:?}",
            cleanup.versions, cleanup.subjects
        ));
    }
}

#[derive(Default)]
struct Cleanup {
    versions: Vec<(String, u32)>,
    subjects: Vec<String>,
}

/// Keel's `payment.authorized.v1` schema with `edit` applied to its fields.
fn edited(edit: impl FnOnce(&mut Vec<Value>)) -> String {
    let contract = keel_avro::contract_for_topic(topics::PAYMENT_AUTHORIZED);
    let source = contract.map_or("{}", |c| c.schema_source);
    let mut schema: Value = serde_json::from_str(source).unwrap_or(Value::Null);
    if let Some(fields) = schema["fields"].as_array_mut() {
        edit(fields);
    }
    schema.to_string()
}

/// A `PaymentAuthorized` datum under `schema` (whatever fields it has: Keel's, a new optional
/// `risk_score`, or `psp_reference` as a long).
fn datum(schema: &Schema, order_id: &str) -> anyhow::Result<Vec<u8>> {
    let Schema::Record(record) = schema else {
        anyhow::bail!("not a record schema");
    };
    let now = chrono::Utc::now().timestamp_millis();
    let mut fields = Vec::new();
    for f in &record.fields {
        let v = match f.name.as_str() {
            "occurred_at" => Avro::TimestampMillis(now),
            "amount" => Avro::Record(vec![
                ("amount_minor".into(), Avro::Long(1250)),
                ("currency".into(), Avro::String("EUR".into())),
            ]),
            "psp_reference" if matches!(f.schema, Schema::Long) => Avro::Long(42),
            "order_id" | "correlation_id" => Avro::String(order_id.to_owned()),
            NEW_FIELD => Avro::Union(1, Box::new(Avro::Double(0.93))),
            other => Avro::String(format!("{other}-{order_id}")),
        };
        fields.push((f.name.clone(), v));
    }
    Ok(
        apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()?
            .write_value_to_vec(Avro::Record(fields))?,
    )
}

async fn produce(
    config: &KeelConfig,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<(i32, i64)> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    for (k, v) in &config.kafka.client {
        client.set(k, v);
    }
    client
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("acks", "all");
    let producer: FutureProducer = client.create()?;
    let delivered = producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(15),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok((delivered.partition, delivered.offset))
}

fn header<'r>(r: &'r RawRecord, name: &str) -> &'r str {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

async fn run(
    config: &KeelConfig,
    api: &str,
    timeout: Duration,
    suffix: &str,
    registry: &SchemaRegistry,
    cleanup: &mut Cleanup,
    report: &mut Report,
) {
    let http = crate::scenario::api_client(config).unwrap_or_default();
    let ready = http.get(format!("{api}/ready")).send().await;
    let ok = matches!(&ready, Ok(r) if r.status().is_success());
    report.check(
        "keel is ready (GET /ready)",
        ok,
        match &ready {
            Ok(r) => r.status().to_string(),
            Err(e) => format!("{e}"),
        },
    );
    if !ok {
        return;
    }
    let saga_app = format!("{}-saga", config.streams.application_id);
    let names = config.topics.names();
    let topic = names.name(topics::PAYMENT_AUTHORIZED);
    let dlq = format!("{saga_app}-dlq");
    let metric = |page: &str| {
        sample(
            page,
            "keel_dead_letters_total",
            &[("application", &saga_app), ("topic", &topic)],
        )
        .unwrap_or(0.0)
    };
    let page = |http: reqwest::Client| async move {
        match http.get(format!("{api}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let ignored_metric = |page: &str| {
        sample(
            page,
            "keel_saga_events_ignored_total",
            &[("event", topics::PAYMENT_AUTHORIZED), ("reason", "no_saga")],
        )
    };
    let first_page = page(http.clone()).await;
    let dead_before = metric(&first_page);
    let ignored_before = ignored_metric(&first_page);
    let from_ms = chrono::Utc::now().timestamp_millis() - 2_000;

    // Keel's schema under the subject Keel writes (as `keel schemas register` does).
    let subject = registry.subject(&topic);
    let keel_schema = edited(|_| {});
    let keel_version = match registry.register(&subject, &keel_schema).await {
        Ok(v) => v,
        Err(e) => {
            report.check(
                format!("Keel's schema registered under {subject}"),
                false,
                format!("{e}"),
            );
            return;
        }
    };
    report.did.push(format!(
        "Keel's payment.authorized.v1 schema is {subject} version {:?} (id {})",
        keel_version.version, keel_version.id
    ));

    // Case 1: a new optional field.
    let plus_text = edited(|fields| {
        fields.push(serde_json::json!({
            "name": NEW_FIELD, "type": ["null", "double"], "default": null,
            "doc": "added by a foreign producer"
        }));
    });
    let bang_text = edited(|fields| {
        for f in fields.iter_mut() {
            if f["name"] == "psp_reference" {
                f["type"] = Value::from("long");
            }
        }
    });
    let (plus, bang) = match (Schema::parse_str(&plus_text), Schema::parse_str(&bang_text)) {
        (Ok(p), Ok(b)) => (p, b),
        (p, b) => {
            report.check("the foreign schemas parse", false, format!("{p:?} {b:?}"));
            return;
        }
    };

    // 1a: framed with an id the registry does not know.
    let mut unknown_id = 1_900_000_000 + u32::from_str_radix(&suffix[..4], 16).unwrap_or(0);
    for _ in 0..20 {
        let status = http
            .get(format!("{}/schemas/ids/{unknown_id}", config.registry.url))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if status == 404 {
            break;
        }
        unknown_id += 1;
    }
    // Records the saga cannot read: (what, key, partition, offset, the reason expected).
    let mut written: Vec<(&'static str, String, i32, i64, &'static str)> = Vec::new();
    // Records it reads fine and ignores (no saga for their order): (what, key, partition, offset).
    let mut read_fine: Vec<(&'static str, String, i32, i64)> = Vec::new();
    let order_1a = format!("drift-{suffix}-unknown-id");
    match datum(&plus, &order_1a) {
        Ok(d) => match produce(config, &topic, &order_1a, &wire::frame(unknown_id, &d)).await {
            Ok((p, o)) => {
                report.did.push(format!(
                    "case 1, not registered: wrote {topic} [{p}]@{o} with a new field \
                     '{NEW_FIELD}', framed with schema id {unknown_id} (GET /schemas/ids/{unknown_id} → 404)"
                ));
                written.push((
                    "case 1 (schema id unknown to the registry)",
                    order_1a.clone(),
                    p,
                    o,
                    "unknown to the registry",
                ));
            }
            Err(e) => report.check("case 1: produced", false, format!("{e:#}")),
        },
        Err(e) => report.check("case 1: datum", false, format!("{e:#}")),
    }

    // 1b: registered by someone else as a newer version under Keel's subject.
    match registry.register(&subject, &plus_text).await {
        Ok(v) => {
            if let Some(version) = v.version {
                cleanup.versions.push((subject.clone(), version));
            }
            report.check(
                format!(
                    "case 1: the registry takes the new optional field as a newer version of {subject} (BACKWARD)"
                ),
                v.version > keel_version.version,
                format!("version {:?} id {}", v.version, v.id),
            );
            let order_1b = format!("drift-{suffix}-newer-version");
            let sent = match datum(&plus, &order_1b) {
                Ok(d) => produce(config, &topic, &order_1b, &wire::frame(v.id, &d)).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok((p, o)) => {
                    report.did.push(format!(
                        "case 1, registered by someone else: wrote {topic} [{p}]@{o} framed with \
                         id {} (version {:?}), for an order no saga orchestrates",
                        v.id, v.version
                    ));
                    read_fine.push((
                        "case 1 (a newer version someone else registered)",
                        order_1b,
                        p,
                        o,
                    ));
                }
                Err(e) => report.check("case 1: produced (newer version)", false, format!("{e:#}")),
            }
            match check_all_topics(&config.registry, &config.topics.prefix).await {
                Ok(rows) => {
                    let row = rows.iter().find(|r| r.subject == subject);
                    let drift = row.and_then(|r| r.drift.clone());
                    report.check(
                        format!("keel schemas check flags DRIFT on {subject}"),
                        drift.as_deref().is_some_and(|d| d.contains(NEW_FIELD))
                            && keel_avro::registry::any_drift(&rows),
                        drift.unwrap_or_else(|| format!("{row:?}")),
                    );
                }
                Err(e) => report.check("keel schemas check runs", false, format!("{e}")),
            }
        }
        Err(e) => report.check(
            "case 1: the registry takes the new optional field",
            false,
            format!("{e}"),
        ),
    }

    // Case 2: an incompatible schema (psp_reference string -> long).
    match registry.register(&subject, &bang_text).await {
        Err(keel_avro::Error::Incompatible { reason, .. }) => report.check(
            format!("case 2: the registry refuses the incompatible schema under {subject} (409)"),
            true,
            reason,
        ),
        other => {
            if let Ok(v) = &other
                && let Some(version) = v.version
            {
                cleanup.versions.push((subject.clone(), version));
            }
            report.check(
                format!(
                    "case 2: the registry refuses the incompatible schema under {subject} (409)"
                ),
                false,
                format!("{other:?}"),
            );
        }
    }
    let foreign = format!("{subject}-foreign-{suffix}");
    match registry.register(&foreign, &bang_text).await {
        Ok(v) => {
            cleanup.subjects.push(foreign.clone());
            let order_2 = format!("drift-{suffix}-incompatible");
            let sent = match datum(&bang, &order_2) {
                Ok(d) => produce(config, &topic, &order_2, &wire::frame(v.id, &d)).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok((p, o)) => {
                    report.did.push(format!(
                        "case 2: wrote {topic} [{p}]@{o} anyway, framed with id {} (the \
                         incompatible schema, registered under {foreign})",
                        v.id
                    ));
                    written.push((
                        "case 2 (incompatible schema registered elsewhere)",
                        order_2,
                        p,
                        o,
                        "cannot be read as dev.keel.v1.PaymentAuthorized",
                    ));
                }
                Err(e) => report.check("case 2: produced", false, format!("{e:#}")),
            }
        }
        Err(e) => report.check(
            "case 2: the foreign producer registers its schema elsewhere",
            false,
            format!("{e}"),
        ),
    }

    // The readable record is read and ignored: the counter only moves once the saga decoded it.
    let want = read_fine.len() as f64;
    let start = std::time::Instant::now();
    let mut ignored_after = ignored_before;
    while start.elapsed() < timeout {
        ignored_after = ignored_metric(&page(http.clone()).await);
        if ignored_after.unwrap_or(0.0) >= ignored_before.unwrap_or(0.0) + want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every unreadable record is on the saga's dead-letter topic, with why and where from.
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    for (k, v) in &config.kafka.client {
        client.set(k, v);
    }
    client
        .set("group.id", format!("keel-scenario-{suffix}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    let start = std::time::Instant::now();
    let mut found: Vec<Option<RawRecord>> = vec![None; written.len()];
    while start.elapsed() < timeout && found.iter().any(Option::is_none) {
        if let Ok(records) = raw_records(&client, &dlq, from_ms, Duration::from_secs(3)).await {
            for (slot, (_, _, p, o, _)) in found.iter_mut().zip(&written) {
                if slot.is_none() {
                    *slot = records
                        .iter()
                        .find(|r| {
                            header(r, "keel.source.topic") == topic
                                && header(r, "keel.source.partition") == p.to_string()
                                && header(r, "keel.source.offset") == o.to_string()
                        })
                        .cloned();
                }
            }
        }
        if found.iter().any(Option::is_none) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for ((what, key, p, o, why), dead) in written.iter().zip(&found) {
        let error = dead.as_ref().map(|r| header(r, "keel.error").to_owned());
        report.check(
            format!("{what}: dead-lettered on {dlq} with why and where"),
            error.as_deref().is_some_and(|e| e.contains(why))
                && dead.as_ref().is_some_and(|r| r.key == *key),
            match &error {
                Some(e) => format!("from {topic} [{p}]@{o}: {e}"),
                None => format!("nothing on {dlq} for {topic} [{p}]@{o}"),
            },
        );
    }
    // The readable record: not on the dead-letter topic, counted as ignored.
    let dead_letters = raw_records(&client, &dlq, from_ms, Duration::from_secs(3))
        .await
        .unwrap_or_default();
    for (what, key, p, o) in &read_fine {
        let dead = dead_letters.iter().find(|r| {
            header(r, "keel.source.topic") == topic
                && header(r, "keel.source.partition") == p.to_string()
                && header(r, "keel.source.offset") == o.to_string()
        });
        report.check(
            format!(
                "{what}: read with the new field '{NEW_FIELD}' and, for order {key} that no saga \
                 orchestrates, ignored: not on {dlq}"
            ),
            dead.is_none(),
            match dead {
                Some(r) => format!(
                    "dead-lettered from {topic} [{p}]@{o}: {}",
                    header(r, "keel.error")
                ),
                None => format!("nothing on {dlq} for {topic} [{p}]@{o}"),
            },
        );
    }
    let show = |v: Option<f64>| v.map_or_else(|| "absent".to_owned(), |v| v.to_string());
    report.check(
        format!(
            "keel_saga_events_ignored_total{{event=\"{}\",reason=\"no_saga\"}} rose by the \
             readable records written",
            topics::PAYMENT_AUTHORIZED
        ),
        !read_fine.is_empty()
            && ignored_before.is_some()
            && ignored_after.unwrap_or(0.0) >= ignored_before.unwrap_or(0.0) + want,
        format!(
            "{} -> {} ({} written)",
            show(ignored_before),
            show(ignored_after),
            read_fine.len()
        ),
    );
    let dead_after = metric(&page(http.clone()).await);
    report.check(
        format!(
            "keel_dead_letters_total{{application=\"{saga_app}\",topic=\"{topic}\"}} rose by every unreadable record written"
        ),
        !written.is_empty() && dead_after >= dead_before + written.len() as f64,
        format!("{dead_before} -> {dead_after} ({} written)", written.len()),
    );
}
