//! The envelope decoder: every shape Debezium writes, and what it refuses.

use serde_json::{Value, json};

use super::*;

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

fn envelope(op: &str, before: Value, after: Value, lsn: u64) -> Vec<u8> {
    json!({
        "before": before,
        "after": after,
        "op": op,
        "ts_ms": 1_767_225_601_000_i64,
        "source": {
            "version": "3.0.0.Final", "connector": "postgresql", "name": "ledger",
            "ts_ms": 1_767_225_600_123_i64, "snapshot": if op == "r" { json!("true") } else { json!("false") },
            "db": "keel", "schema": "public", "table": "payments", "txId": 7, "lsn": lsn
        }
    })
    .to_string()
    .into_bytes()
}

fn row(note: &str) -> Value {
    json!({"id": "p-1", "note": note, "amount": "12.34", "at": "2026-01-01T00:00:00.123456Z"})
}

fn decoded(bytes: &[u8]) -> RowChange<Row> {
    match decode::<Row>(Some(bytes)).expect("decodes") {
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
fn an_envelope_with_schemas_enabled_decodes_its_payload() {
    let inner: Value =
        serde_json::from_slice(&envelope("c", Value::Null, row("x"), 1)).expect("json");
    let bytes = json!({"schema": {"type": "struct"}, "payload": inner}).to_string();
    assert_eq!(decoded(bytes.as_bytes()).op, Op::Create);
}

#[test]
fn bad_envelopes_are_refused_with_why() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "not JSON"),
        (json!({"after": {}}).to_string().into_bytes(), "no op"),
        (
            json!({"op": "c", "after": row("x")})
                .to_string()
                .into_bytes(),
            "no source",
        ),
        (
            json!({"op": "t", "source": {"ts_ms": 1}})
                .to_string()
                .into_bytes(),
            "unsupported op",
        ),
        (
            envelope("c", Value::Null, Value::Null, 1),
            "without an after image",
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
            envelope(
                "c",
                Value::Null,
                json!({"id": 5, "note": "n", "amount": "1", "at": "2026-01-01T00:00:00Z"}),
                1,
            ),
            "column id",
        ),
        (
            envelope(
                "c",
                Value::Null,
                json!({"note": "n", "amount": "1", "at": "2026-01-01T00:00:00Z"}),
                1,
            ),
            "missing",
        ),
    ];
    for (bytes, why) in cases {
        let err = decode::<Row>(Some(&bytes)).expect_err(why).to_string();
        assert!(err.contains(why), "{why:?} not in {err:?}");
    }
}

#[test]
fn the_runtime_serde_dead_letters_with_the_topic_and_the_reason() {
    let serde = CdcSerde::<Row, Change<Row>>::new(|c| c);
    let err = serde
        .deserialize(
            "ledger.public.payments",
            Some(b"{\"op\":\"x\",\"source\":{}}"),
        )
        .expect_err("bad op");
    assert!(err.0.contains("ledger.public.payments"), "{err}");
    assert!(err.0.contains("unsupported op"), "{err}");
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
    let bytes = json!({
        "op": "c", "after": row("x"),
        "source": {"ts_ms": 5, "file": "mysql-bin.000042", "pos": 1234, "row": 2, "snapshot": false}
    })
    .to_string();
    assert_eq!(
        decoded(bytes.as_bytes()).source.position,
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
