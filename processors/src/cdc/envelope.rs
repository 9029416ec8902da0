//! The Debezium change-event envelope, decoded into a typed [`Change<T>`].
//!
//! Input: a Kafka value of a Debezium table topic, Avro in the Confluent wire format written by
//! the registry converter (ADR 0006), already read with its writer schema into a tree
//! (`super::avro`: records as objects, unions as their branch): the envelope
//! `{"before", "after", "op", "source", "ts_ms"}`. A null value is a tombstone (Debezium writes
//! one after each delete so compaction can drop the key).
//!
//! - `op`: `c` create, `u` update, `d` delete, `r` read (a snapshot row), `t` truncate
//!   (refused: it names no row).
//! - `source.ts_ms`: when the change was committed in the source database (ms since the
//!   epoch); for a snapshot read, when the row was read. What CDC lag is measured against.
//! - `source.lsn` (PostgreSQL) or `source.file`/`pos`/`row` (MySQL, MariaDB): the change's
//!   position in the source log, a [`Position`]; the consumer keeps the last one applied per key
//!   and drops anything at or before it ([`Position::supersedes`]), which removes the duplicates
//!   Debezium's at-least-once delivery makes after a connector restart.
//! - Row images are [`Image`]s read column by column with typed getters: text, integers,
//!   decimals (as minor units at a given scale, from the exact text of
//!   `decimal.handling.mode = string`, Avro `string`, or an integer), and Debezium's temporal
//!   types ([`Temporal`], Avro `int`/`long`/`string` per Debezium's mapping) as epoch
//!   milliseconds. A column
//!   holding Debezium's TOAST placeholder ([`UNAVAILABLE`]: an unchanged large value PostgreSQL
//!   did not put in the WAL) reads as [`Field::Unchanged`]: the consumer keeps what it had and
//!   never stores the placeholder.

use serde_json::{Map, Value};

/// The value Debezium writes for a TOASTed column that an update did not change (PostgreSQL
/// leaves it out of the WAL unless the table has `REPLICA IDENTITY FULL`).
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// Why an envelope could not be decoded. The record goes to the dead-letter topic with this
/// text as its `keel.error` header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not Avro in the Confluent wire format, or a datum its writer schema does not read
    /// (e.g. schemaless JSON as Debezium wrote before ADR 0006).
    #[error("not Avro in the Confluent wire format: {0}")]
    NotAvro(String),
    /// Avro, but not a Debezium envelope (no `op`, no `source`, wrong shapes).
    #[error("not a Debezium envelope: {0}")]
    NotAnEnvelope(String),
    /// An `op` this decoder does not know (or one that names no row, such as `t`).
    #[error("unsupported op {0:?}")]
    UnsupportedOp(String),
    /// A column is missing or has an unexpected type or value.
    #[error("column {column}: {problem}")]
    Column { column: String, problem: String },
}

impl DecodeError {
    fn column(column: &str, problem: impl Into<String>) -> Self {
        Self::Column {
            column: column.to_owned(),
            problem: problem.into(),
        }
    }
}

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// `c`: inserted.
    Create,
    /// `u`: updated.
    Update,
    /// `d`: deleted (`after` is null).
    Delete,
    /// `r`: read by a snapshot (the row as it was when the snapshot ran).
    Read,
}

impl Op {
    fn parse(op: &str) -> Result<Self, DecodeError> {
        match op {
            "c" => Ok(Self::Create),
            "u" => Ok(Self::Update),
            "d" => Ok(Self::Delete),
            "r" => Ok(Self::Read),
            other => Err(DecodeError::UnsupportedOp(other.to_owned())),
        }
    }
}

/// Where a change sits in its source's log; later changes have greater positions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Position {
    /// PostgreSQL: the WAL position of the change (`source.lsn`).
    Lsn(u64),
    /// MySQL/MariaDB: binlog file (its numeric suffix), offset of the event, row in the event.
    Binlog { file: u64, pos: u64, row: u64 },
}

impl Position {
    /// Whether a change at `self` comes after one at `applied` (so it is new, not a duplicate).
    /// Positions of different kinds (a connector switched databases) never compare as a
    /// duplicate: the change is applied.
    pub fn supersedes(&self, applied: Option<&Position>) -> bool {
        match (self, applied) {
            (_, None) => true,
            (Self::Lsn(new), Some(Self::Lsn(old))) => new > old,
            (
                Self::Binlog { file, pos, row },
                Some(Self::Binlog {
                    file: f,
                    pos: p,
                    row: r,
                }),
            ) => (file, pos, row) > (f, p, r),
            _ => true,
        }
    }
}

/// The envelope's `source` block, as far as Keel needs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Source {
    /// `source.name`: the connector's `topic.prefix`.
    pub name: String,
    /// Commit time of the change in the source database (ms since the epoch).
    pub ts_ms: i64,
    /// Whether the row came from a snapshot (`source.snapshot` is `true`, `first`, `last`, …).
    pub snapshot: bool,
    /// `source.table`, when present.
    pub table: Option<String>,
    /// The position in the source's log, when the envelope carries one.
    pub position: Option<Position>,
}

/// A row image (`before` or `after`): column name → value as Debezium wrote it (read from Avro
/// into a JSON tree, see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Image(Map<String, Value>);

/// One column of an [`Image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field<T> {
    /// The column's value.
    Value(T),
    /// SQL NULL.
    Null,
    /// The TOAST placeholder: unchanged by this update, value not sent. Keep the old one.
    Unchanged,
}

impl<T> Field<T> {
    /// The value, or `previous` when the column was unchanged; `None` for NULL.
    pub fn or_previous(self, previous: Option<T>) -> Option<T> {
        match self {
            Self::Value(v) => Some(v),
            Self::Null => None,
            Self::Unchanged => previous,
        }
    }

    /// The value; NULL and unchanged are `None`.
    pub fn value(self) -> Option<T> {
        match self {
            Self::Value(v) => Some(v),
            Self::Null | Self::Unchanged => None,
        }
    }
}

/// Debezium's temporal representations (`time.precision.mode = adaptive`, the default, and
/// `connect`), all converted to epoch milliseconds by [`Image::timestamp_ms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporal {
    /// `io.debezium.time.Date` / `org.apache.kafka.connect.data.Date`: days since the epoch.
    Date,
    /// `io.debezium.time.Timestamp` / `org.apache.kafka.connect.data.Timestamp`: ms.
    Timestamp,
    /// `io.debezium.time.MicroTimestamp` (PostgreSQL `TIMESTAMP`): µs since the epoch.
    MicroTimestamp,
    /// `io.debezium.time.NanoTimestamp`: ns since the epoch.
    NanoTimestamp,
    /// `io.debezium.time.ZonedTimestamp` (PostgreSQL `TIMESTAMPTZ`): ISO-8601 text with offset.
    ZonedTimestamp,
}

impl Image {
    /// An image from a JSON object (test and tooling helper).
    pub fn from_map(map: Map<String, Value>) -> Self {
        Self(map)
    }

    fn raw(&self, column: &str) -> Result<Field<&Value>, DecodeError> {
        match self.0.get(column) {
            None => Err(DecodeError::column(column, "missing from the row image")),
            Some(Value::Null) => Ok(Field::Null),
            Some(Value::String(s)) if s == UNAVAILABLE => Ok(Field::Unchanged),
            Some(v) => Ok(Field::Value(v)),
        }
    }

    fn map<T>(
        &self,
        column: &str,
        f: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<Field<T>, DecodeError> {
        Ok(match self.raw(column)? {
            Field::Value(v) => Field::Value(f(v).map_err(|p| DecodeError::column(column, p))?),
            Field::Null => Field::Null,
            Field::Unchanged => Field::Unchanged,
        })
    }

    /// A text column (`TEXT`, `VARCHAR`, `CHAR` — trailing blanks of `CHAR(n)` trimmed).
    pub fn text(&self, column: &str) -> Result<Field<String>, DecodeError> {
        self.map(column, |v| {
            v.as_str()
                .map(|s| s.trim_end().to_owned())
                .ok_or_else(|| format!("expected text, got {v}"))
        })
    }

    /// An integer column (`SMALLINT`, `INT`, `BIGINT`).
    pub fn i64(&self, column: &str) -> Result<Field<i64>, DecodeError> {
        self.map(column, |v| {
            v.as_i64()
                .ok_or_else(|| format!("expected an integer, got {v}"))
        })
    }

    /// A decimal column as an integer number of `10^-scale` units (e.g. scale 2: a `NUMERIC`
    /// of `12.34` is `1234` cents). Accepts the exact text of `decimal.handling.mode = string`
    /// and JSON integers; a value with more fractional digits than `scale` is refused, never
    /// rounded.
    pub fn decimal_units(&self, column: &str, scale: u32) -> Result<Field<i64>, DecodeError> {
        self.map(column, |v| match v {
            Value::String(s) => parse_decimal(s, scale),
            Value::Number(n) => match n.as_i64() {
                Some(i) => 10_i64
                    .checked_pow(scale)
                    .and_then(|m| i.checked_mul(m))
                    .ok_or_else(|| format!("{i} overflows at scale {scale}")),
                None => parse_decimal(&n.to_string(), scale),
            },
            other => Err(format!("expected a decimal, got {other}")),
        })
    }

    /// A temporal column as epoch milliseconds (µs and ns are truncated toward the past).
    pub fn timestamp_ms(&self, column: &str, kind: Temporal) -> Result<Field<i64>, DecodeError> {
        self.map(column, |v| temporal_ms(v, kind))
    }

    /// Whether any column holds the TOAST placeholder.
    pub fn has_unchanged(&self) -> bool {
        self.0
            .values()
            .any(|v| matches!(v, Value::String(s) if s == UNAVAILABLE))
    }
}

fn parse_decimal(text: &str, scale: u32) -> Result<i64, String> {
    let bad = || format!("{text:?} is not a decimal");
    let (negative, digits) = match text.trim().strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.trim()),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !fraction.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let significant = fraction.trim_end_matches('0');
    let scale_usize = usize::try_from(scale).map_err(|_| bad())?;
    if significant.len() > scale_usize {
        return Err(format!(
            "{text:?} has more than {scale} fractional digits; refusing to round"
        ));
    }
    let mut padded = String::with_capacity(whole.len() + scale_usize);
    padded.push_str(if whole.is_empty() { "0" } else { whole });
    padded.push_str(significant);
    padded.extend(std::iter::repeat_n('0', scale_usize - significant.len()));
    let units: i64 = padded
        .parse()
        .map_err(|_| format!("{text:?} overflows at scale {scale}"))?;
    Ok(if negative { -units } else { units })
}

fn temporal_ms(v: &Value, kind: Temporal) -> Result<i64, String> {
    let int = || {
        v.as_i64()
            .ok_or_else(|| format!("expected an integer for {kind:?}, got {v}"))
    };
    match kind {
        Temporal::Date => int()?
            .checked_mul(86_400_000)
            .ok_or_else(|| format!("date {v} out of range")),
        Temporal::Timestamp => int(),
        Temporal::MicroTimestamp => Ok(int()?.div_euclid(1_000)),
        Temporal::NanoTimestamp => Ok(int()?.div_euclid(1_000_000)),
        Temporal::ZonedTimestamp => {
            let text = v
                .as_str()
                .ok_or_else(|| format!("expected ISO-8601 text, got {v}"))?;
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.timestamp_millis())
                .map_err(|e| format!("{text:?} is not an ISO-8601 timestamp: {e}"))
        }
    }
}

/// A row type that can be read from a row [`Image`].
pub trait FromImage: Sized {
    /// Reads the columns this type needs; unchanged (TOAST) columns stay [`Field::Unchanged`]
    /// inside the type so the consumer can keep its previous value.
    fn from_image(image: &Image) -> Result<Self, DecodeError>;
}

/// One decoded change of a row of type `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange<T> {
    pub op: Op,
    /// The row before (updates and deletes; present for updates only with `REPLICA IDENTITY
    /// FULL` on PostgreSQL).
    pub before: Option<T>,
    /// The row after (creates, updates, snapshot reads).
    pub after: Option<T>,
    pub source: Source,
}

/// A decoded Kafka value of a Debezium table topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    /// A change of one row.
    Row(RowChange<T>),
    /// A null value: Debezium's tombstone after a delete (the key is all it says).
    Tombstone,
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, DecodeError> {
    v.as_object()
        .ok_or_else(|| DecodeError::NotAnEnvelope(format!("{what} is not an object")))
}

fn image<T: FromImage>(
    envelope: &Map<String, Value>,
    side: &str,
) -> Result<Option<T>, DecodeError> {
    match envelope.get(side) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::from_image(&Image(object(v, side)?.clone())).map(Some),
    }
}

fn position(source: &Map<String, Value>) -> Option<Position> {
    if let Some(lsn) = source.get("lsn").and_then(Value::as_u64) {
        return Some(Position::Lsn(lsn));
    }
    let file = source.get("file").and_then(Value::as_str)?;
    let pos = source.get("pos").and_then(Value::as_u64)?;
    let row = source.get("row").and_then(Value::as_u64).unwrap_or(0);
    // `mysql-bin.000042` → 42: files sort by their numeric suffix.
    let index = file
        .rsplit('.')
        .next()
        .and_then(|n| n.parse::<u64>().ok())?;
    Some(Position::Binlog {
        file: index,
        pos,
        row,
    })
}

fn snapshot_flag(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        // "true", "first", "first_in_data_collection", "last", …; "false" when streaming.
        Some(Value::String(s)) => s != "false",
        _ => false,
    }
}

/// Decodes one value of a Debezium table topic, already read from Avro into a tree
/// (`super::avro`); `None` or a null is a tombstone. Errors say what was wrong; the caller
/// dead-letters the record.
pub fn decode<T: FromImage>(value: Option<&Value>) -> Result<Change<T>, DecodeError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Change::Tombstone);
    };
    let envelope = object(value, "the value")?;
    let op = envelope
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| DecodeError::NotAnEnvelope("no op".into()))?;
    let op = Op::parse(op)?;
    let source = object(
        envelope
            .get("source")
            .ok_or_else(|| DecodeError::NotAnEnvelope("no source".into()))?,
        "source",
    )?;
    let ts_ms = source
        .get("ts_ms")
        .and_then(Value::as_i64)
        .ok_or_else(|| DecodeError::NotAnEnvelope("source.ts_ms is missing".into()))?;
    let source = Source {
        name: source
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        ts_ms,
        snapshot: op == Op::Read || snapshot_flag(source.get("snapshot")),
        table: source
            .get("table")
            .and_then(Value::as_str)
            .map(str::to_owned),
        position: position(source),
    };
    let before = image::<T>(envelope, "before")?;
    let after = image::<T>(envelope, "after")?;
    match (op, &after) {
        (Op::Delete, Some(_)) => {
            return Err(DecodeError::NotAnEnvelope(
                "a delete with an after image".into(),
            ));
        }
        (Op::Create | Op::Update | Op::Read, None) => {
            return Err(DecodeError::NotAnEnvelope(format!(
                "op {op:?} without an after image"
            )));
        }
        _ => {}
    }
    Ok(Change::Row(RowChange {
        op,
        before,
        after,
        source,
    }))
}
