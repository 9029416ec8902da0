//! The envelope decoder: every shape Debezium writes, and what it refuses.

use serde_json::{Value, json};

use super::*;
use crate::cdc::testing;

/// A row type for the tests: a text column that may be TOASTed, an amount, a timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    id: Field<String>,
    note: Field<String>,
    amount_minor: Field<i64>,
    at_ms: Field<i64>,
}

impl FromImage for Row {
    fn from_image(image: &Image) -> Result<Self, DecodeError> {
        Ok(Self {
            id: image.text("id")?,
            note: image.text("note")?,
            amount_minor: image.decimal_units("amount", 2)?,
            at_ms: image.timestamp_ms("at", Temporal::ZonedTimestamp)?,
        })
    }
}

/// A Debezium envelope schema of a table `t (id, note, amount, at)`, shaped as the registry
/// converter writes Debezium's (`fixtures/payments.avsc`): nullable images, a `source` block
/// with PostgreSQL's `lsn` and MySQL's `file`/`pos`/`row` (both nullable), `op`, `ts_ms`.
const ENVELOPE: &str = r#"{"type": "record", "name": "Envelope", "namespace": "ledger.public.t",
  "fields": [
    {"name": "before", "type": ["null", {"type": "record", "name": "Value", "fields": [
      {"name": "id", "type": "string"},
      {"name": "note", "type": ["null", "string"], "default": null},
      {"name": "amount", "type": ["null", "string"], "default": null},
      {"name": "at", "type": ["null", {"type": "string", "connect.name": "io.debezium.time.ZonedTimestamp"}], "default": null}
    ]}], "default": null},
    {"name": "after", "type": ["null", "Value"], "default": null},
    {"name": "source", "type": {"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql", "fields": [
      {"name": "version", "type": "string"},
      {"name": "connector", "type": "string"},
      {"name": "name", "type": "string"},
      {"name": "ts_ms", "type": "long"},
      {"name": "snapshot", "type": [{"type": "string", "connect.name": "io.debezium.data.Enum"}, "null"], "default": "false"},
      {"name": "db", "type": "string"},
      {"name": "schema", "type": "string"},
      {"name": "table", "type": "string"},
      {"name": "txId", "type": ["null", "long"], "default": null},
      {"name": "lsn", "type": ["null", "long"], "default": null},
      {"name": "file", "type": ["null", "string"], "default": null},
      {"name": "pos", "type": ["null", "long"], "default": null},
      {"name": "row", "type": ["null", "int"], "default": null}
    ]}},
    {"name": "op", "type": "string"},
    {"name": "ts_ms", "type": ["null", "long"], "default": null}
  ]}"#;

fn envelope_tree(op: &str, before: Value, after: Value, lsn: u64) -> Value {
    json!({
        "before": before,
        "after": after,
        "op": op,
        "ts_ms": 1_767_225_601_000_i64,
        "source": {
            "version": "3.6.1.Final", "connector": "postgresql", "name": "ledger",
            "ts_ms": 1_767_225_600_123_i64, "snapshot": if op == "r" { "true" } else { "false" },
            "db": "keel", "schema": "public", "table": "payments", "txId": 7, "lsn": lsn
        }
    })
}

/// The envelope as the registry converter writes it: Avro, Confluent-framed.
fn envelope(op: &str, before: Value, after: Value, lsn: u64) -> Vec<u8> {
    testing::avro(ENVELOPE, envelope_tree(op, before, after, lsn))
}

fn row(note: &str) -> Value {
    json!({"id": "p-1", "note": note, "amount": "12.34", "at": "2026-01-01T00:00:00.123456Z"})
}

/// Reads `bytes` as the runtime does (Avro with its writer schema), then decodes the envelope.
fn decode_bytes<T: FromImage>(bytes: &[u8]) -> Result<Change<T>, DecodeError> {
    let tree = CdcValues::Local.decode("ledger.public.t", bytes)?;
    decode::<T>(Some(&tree))
}

fn decoded(bytes: &[u8]) -> RowChange<Row> {
    match decode_bytes::<Row>(bytes).expect("decodes") {
        Change::Row(c) => c,
        Change::Tombstone => panic!("not a tombstone"),
    }
}

#[test]
fn a_create_decodes_op_after_source_time_position_decimals_and_zoned_timestamps() {
    let c = decoded(&envelope("c", Value::Null, row("hi"), 42));
    assert_eq!(c.op, Op::Create);
    assert_eq!(c.before, None);
    let after = c.after.expect("after");
    assert_eq!(after.id, Field::Value("p-1".into()));
    assert_eq!(after.amount_minor, Field::Value(1234));
    assert_eq!(after.at_ms, Field::Value(1_767_225_600_123));
    assert_eq!(c.source.ts_ms, 1_767_225_600_123);
    assert_eq!(c.source.position, Some(Position::Lsn(42)));
    assert!(!c.source.snapshot);
    assert_eq!(c.source.table.as_deref(), Some("payments"));
}

#[test]
fn a_snapshot_read_is_op_read_and_flagged_as_snapshot() {
    let c = decoded(&envelope("r", Value::Null, row("hi"), 10));
    assert_eq!(c.op, Op::Read);
    assert!(c.source.snapshot);
    assert!(c.after.is_some());
}

#[test]
fn a_null_value_is_a_tombstone() {
    assert_eq!(decode::<Row>(None).expect("decodes"), Change::Tombstone);
}

#[test]
fn a_delete_has_no_after_and_keeps_before() {
    let c = decoded(&envelope("d", row("bye"), Value::Null, 50));
    assert_eq!(c.op, Op::Delete);
    assert!(c.after.is_none());
    assert_eq!(
        c.before.expect("before").note,
        Field::Value("bye".to_owned())
    );
}

#[test]
fn the_toast_placeholder_reads_as_unchanged_and_never_as_a_value() {
    let c = decoded(&envelope("u", Value::Null, row(UNAVAILABLE), 43));
    let after = c.after.expect("after");
    assert_eq!(after.note, Field::Unchanged);
    // The consumer keeps what it had …
    assert_eq!(
        after.note.clone().or_previous(Some("stored".to_owned())),
        Some("stored".to_owned())
    );
    // … and a value it never had stays unknown, not the placeholder.
    assert_eq!(after.note.value(), None);
}

#[test]
fn schemaless_json_as_debezium_wrote_before_adr_0006_is_refused_as_not_avro() {
    let json = envelope_tree("c", Value::Null, row("x"), 1).to_string();
    let err = decode_bytes::<Row>(json.as_bytes()).expect_err("JSON is not Avro");
    assert!(matches!(err, DecodeError::NotAvro(_)), "{err:?}");
    assert!(err.to_string().contains("Confluent wire format"), "{err}");
}

#[test]
fn bad_envelopes_are_refused_with_why() {
    let good = envelope("c", Value::Null, row("x"), 1);
    let mut unknown_id = good.clone();
    unknown_id[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
    // The same table with `id` as a BIGINT, and without the `note` column.
    let id_as_long = ENVELOPE
        .replace(
            "\"name\": \"id\", \"type\": \"string\"",
            "\"name\": \"id\", \"type\": \"long\"",
        )
        .replace("ledger.public.t", "ledger.public.t_long_id");
    let no_note = ENVELOPE
        .replace(
            "{\"name\": \"note\", \"type\": [\"null\", \"string\"], \"default\": null},",
            "",
        )
        .replace("ledger.public.t", "ledger.public.t_no_note");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"not avro".to_vec(),
            "not Avro in the Confluent wire format",
        ),
        (vec![0, 0, 0], "not Avro in the Confluent wire format"),
        (good[..good.len() - 3].to_vec(), "does not decode"),
        (unknown_id, "not among the local schemas"),
        (envelope("t", Value::Null, Value::Null, 1), "unsupported op"),
        (
            envelope("c", Value::Null, Value::Null, 1),
            "without an after image",
        ),
        (
            envelope("d", Value::Null, row("x"), 1),
            "a delete with an after image",
        ),
        (
            envelope(
                "c",
                Value::Null,
                json!({"id": "p", "note": "n", "amount": "1.234", "at": "2026-01-01T00:00:00Z"}),
                1,
            ),
            "refusing to round",
        ),
        (
            testing::avro(
                &id_as_long,
                envelope_tree(
                    "c",
                    Value::Null,
                    json!({"id": 5, "note": "n", "amount": "1", "at": "2026-01-01T00:00:00Z"}),
                    1,
                ),
            ),
            "column id",
        ),
        (
            testing::avro(
                &no_note,
                envelope_tree(
                    "c",
                    Value::Null,
                    json!({"id": "p", "amount": "1", "at": "2026-01-01T00:00:00Z"}),
                    1,
                ),
            ),
            "missing",
        ),
    ];
    for (bytes, why) in cases {
        let err = decode_bytes::<Row>(&bytes).expect_err(why).to_string();
        assert!(err.contains(why), "{why:?} not in {err:?}");
    }
}

#[test]
fn a_truncated_value_is_refused_never_read_as_null_columns() {
    let good = envelope("u", row("before"), row("after"), 77);
    let whole = decode_bytes::<Row>(&good).expect("decodes");
    let mut said_truncated = 0;
    for cut in 5..good.len() {
        match decode_bytes::<Row>(&good[..cut]) {
            Err(e) => {
                let err = e.to_string();
                assert!(err.contains("not Avro"), "cut at {cut}: {err}");
                said_truncated += usize::from(err.contains("truncated"));
            }
            // apache_avro reads a nullable field cut off whole by the end as null: only the
            // envelope's trailing `ts_ms`, which Keel does not read, can go that way.
            Ok(change) => assert_eq!(change, whole, "cut at {cut} lost something"),
        }
    }
    // Strings and unions cut off by the end read as null: caught by the schema check (without
    // it they decoded as NULL columns).
    assert!(said_truncated > 0);
}

#[test]
fn the_runtime_serde_dead_letters_with_the_topic_and_the_reason() {
    let serde = CdcSerde::<Row, Change<Row>>::new(CdcValues::Local, |c| c);
    let err = serde
        .deserialize(
            "ledger.public.payments",
            Some(&envelope("x", Value::Null, row("x"), 1)),
        )
        .expect_err("bad op");
    assert!(err.0.contains("ledger.public.payments"), "{err}");
    assert!(err.0.contains("unsupported op"), "{err}");
    // A JSON record (what Debezium wrote before ADR 0006) is a poison record now.
    let err = serde
        .deserialize(
            "ledger.public.payments",
            Some(b"{\"op\":\"c\",\"source\":{}}"),
        )
        .expect_err("JSON");
    assert!(err.0.contains("not Avro"), "{err}");
    let c = serde
        .deserialize(
            "ledger.public.payments",
            Some(&envelope("c", Value::Null, row("x"), 9)),
        )
        .expect("an Avro envelope decodes");
    assert!(
        matches!(c, Change::Row(RowChange { op: Op::Create, .. })),
        "{c:?}"
    );
    assert_eq!(
        serde.deserialize("t", None).expect("a tombstone decodes"),
        Change::Tombstone
    );
}

#[test]
fn duplicates_are_changes_at_or_before_the_applied_position() {
    let applied = Position::Lsn(100);
    assert!(
        !Position::Lsn(100).supersedes(Some(&applied)),
        "the same change again"
    );
    assert!(
        !Position::Lsn(99).supersedes(Some(&applied)),
        "an older change"
    );
    assert!(Position::Lsn(101).supersedes(Some(&applied)));
    assert!(Position::Lsn(1).supersedes(None));
    let binlog = |file, pos, row| Position::Binlog { file, pos, row };
    assert!(binlog(2, 4, 0).supersedes(Some(&binlog(1, 900, 3))));
    assert!(binlog(1, 900, 4).supersedes(Some(&binlog(1, 900, 3))));
    assert!(!binlog(1, 900, 3).supersedes(Some(&binlog(1, 900, 3))));
}

#[test]
fn binlog_positions_come_from_file_pos_and_row() {
    let bytes = testing::avro(
        ENVELOPE,
        json!({
            "op": "c", "after": row("x"),
            "source": {"ts_ms": 5, "file": "mysql-bin.000042", "pos": 1234, "row": 2, "snapshot": "false"}
        }),
    );
    assert_eq!(
        decoded(&bytes).source.position,
        Some(Position::Binlog {
            file: 42,
            pos: 1234,
            row: 2
        })
    );
}

#[test]
fn temporal_types_become_epoch_milliseconds() {
    let image = Image::from_map(
        json!({
            "d": 20_454, "ms": 1_767_225_600_123_i64, "us": 1_767_225_600_123_456_i64,
            "ns": 1_767_225_600_123_456_789_i64, "z": "2026-01-01T01:00:00.123+01:00",
            "neg_us": -1_i64
        })
        .as_object()
        .cloned()
        .expect("object"),
    );
    let ms = |c, k| image.timestamp_ms(c, k).expect("decodes").value();
    assert_eq!(ms("d", Temporal::Date), Some(20_454 * 86_400_000));
    assert_eq!(ms("ms", Temporal::Timestamp), Some(1_767_225_600_123));
    assert_eq!(ms("us", Temporal::MicroTimestamp), Some(1_767_225_600_123));
    assert_eq!(ms("ns", Temporal::NanoTimestamp), Some(1_767_225_600_123));
    assert_eq!(ms("z", Temporal::ZonedTimestamp), Some(1_767_225_600_123));
    assert_eq!(
        ms("neg_us", Temporal::MicroTimestamp),
        Some(-1),
        "toward the past"
    );
}

#[test]
fn decimals_read_as_exact_units() {
    let image = Image::from_map(
        json!({"a": "12.3", "b": "-0.05", "c": 7, "d": "12.30", "e": "abc", "f": ".5"})
            .as_object()
            .cloned()
            .expect("object"),
    );
    let units = |c| image.decimal_units(c, 2).map(Field::value);
    assert_eq!(units("a"), Ok(Some(1230)));
    assert_eq!(units("b"), Ok(Some(-5)));
    assert_eq!(units("c"), Ok(Some(700)));
    assert_eq!(units("d"), Ok(Some(1230)));
    assert!(units("e").is_err());
    assert_eq!(units("f"), Ok(Some(50)));
}
