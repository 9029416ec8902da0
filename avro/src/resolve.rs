//! Avro schema resolution (writer's schema → reader's schema) that picks union branches by the
//! writer's branch, as the Avro specification says.
//!
//! `apache_avro`'s own `Value::resolve` (0.22) picks the *first* reader branch the value can be
//! resolved into: in a union of records, a `RefundPayment { refund_id, amount, reason }` then
//! becomes an `AuthorizePayment { amount }`, silently. Here a union value keeps its writer
//! branch, which is matched to the reader branch of the same name (or kind, for unnamed types);
//! everything below records, unions, enums, arrays and maps is left to `apache_avro`.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{Name, RecordSchema, ResolvedSchema, SchemaKind};
use apache_avro::types::Value;

type Names<'s> = HashMap<Name, &'s Schema>;

/// Resolve `value`, written with `writer`, into `reader`.
pub(crate) fn resolve(value: Value, writer: &Schema, reader: &Schema) -> Result<Value, String> {
    let writer_names = ResolvedSchema::try_from(writer).map_err(|e| e.to_string())?;
    let reader_names = ResolvedSchema::try_from(reader).map_err(|e| e.to_string())?;
    Resolver {
        writer: writer_names.get_names(),
        reader: reader_names.get_names(),
    }
    .resolve(value, writer, reader, "")
}

struct Resolver<'a, 's> {
    writer: &'a Names<'s>,
    reader: &'a Names<'s>,
}

impl<'a, 's> Resolver<'a, 's> {
    fn resolve(
        &self,
        value: Value,
        writer: &Schema,
        reader: &Schema,
        path: &str,
    ) -> Result<Value, String> {
        let writer = deref(writer, self.writer)?;
        let reader = deref(reader, self.reader)?;
        match (writer, reader) {
            (Schema::Union(union), _) => match value {
                Value::Union(index, inner) => {
                    let branch = union.variants().get(index as usize).ok_or_else(|| {
                        format!("{path}: union branch {index} is not in the writer's union")
                    })?;
                    self.resolve(*inner, branch, reader, path)
                }
                other => Err(format!("{path}: expected a union value, got {other:?}")),
            },
            (_, Schema::Union(union)) => {
                let (index, branch) = union
                    .variants()
                    .iter()
                    .enumerate()
                    .find(|(_, branch)| {
                        deref(branch, self.reader).is_ok_and(|branch| matches(writer, branch))
                    })
                    .ok_or_else(|| {
                        format!(
                            "{path}: no branch of the reader's union matches the writer's {}",
                            describe(writer)
                        )
                    })?;
                let index = u32::try_from(index).map_err(|e| e.to_string())?;
                Ok(Value::Union(
                    index,
                    Box::new(self.resolve(value, writer, branch, path)?),
                ))
            }
            (Schema::Record(w), Schema::Record(r)) => self.record(value, w, r, path),
            (Schema::Enum(_), Schema::Enum(r)) => {
                let symbol = match value {
                    Value::Enum(_, symbol) => symbol,
                    other => return Err(format!("{path}: expected an enum value, got {other:?}")),
                };
                match r.symbols.iter().position(|s| *s == symbol) {
                    Some(index) => Ok(Value::Enum(
                        u32::try_from(index).map_err(|e| e.to_string())?,
                        symbol,
                    )),
                    None => match &r.default {
                        Some(default) => {
                            let index =
                                r.symbols.iter().position(|s| s == default).ok_or_else(|| {
                                    format!("{path}: enum default {default} is not a symbol")
                                })?;
                            Ok(Value::Enum(
                                u32::try_from(index).map_err(|e| e.to_string())?,
                                default.clone(),
                            ))
                        }
                        None => Err(format!(
                            "{path}: symbol {symbol} is not in the reader's enum {}",
                            r.name.fullname(None)
                        )),
                    },
                }
            }
            (Schema::Array(w), Schema::Array(r)) => match value {
                Value::Array(items) => items
                    .into_iter()
                    .map(|item| self.resolve(item, &w.items, &r.items, path))
                    .collect::<Result<_, _>>()
                    .map(Value::Array),
                other => Err(format!("{path}: expected an array, got {other:?}")),
            },
            (Schema::Map(w), Schema::Map(r)) => match value {
                Value::Map(entries) => entries
                    .into_iter()
                    .map(|(k, v)| Ok((k, self.resolve(v, &w.types, &r.types, path)?)))
                    .collect::<Result<_, String>>()
                    .map(Value::Map),
                other => Err(format!("{path}: expected a map, got {other:?}")),
            },
            (w, r) if is_named(w) || is_named(r) || !matches(w, r) => Err(format!(
                "{path}: the writer's {} cannot be read as {}",
                describe(w),
                describe(r)
            )),
            // Primitives and logical types, with Avro's promotions.
            (_, r) => value
                .resolve_with_names(r, self.reader)
                .map_err(|e| format!("{path}: {e}")),
        }
    }

    fn record(
        &self,
        value: Value,
        writer: &RecordSchema,
        reader: &RecordSchema,
        path: &str,
    ) -> Result<Value, String> {
        if !same_name(&writer.name, &reader.name, reader_aliases(reader)) {
            return Err(format!(
                "{path}: record {} cannot be read as {}",
                writer.name.fullname(None),
                reader.name.fullname(None)
            ));
        }
        let Value::Record(fields) = value else {
            return Err(format!("{path}: expected a record, got {value:?}"));
        };
        let mut written: HashMap<String, Value> = fields.into_iter().collect();
        let mut out = Vec::with_capacity(reader.fields.len());
        for field in &reader.fields {
            let at = if path.is_empty() {
                field.name.clone()
            } else {
                format!("{path}.{}", field.name)
            };
            let source = writer
                .fields
                .iter()
                .find(|w| w.name == field.name || field.aliases.contains(&w.name));
            let resolved = match source.and_then(|w| written.remove(&w.name).map(|v| (w, v))) {
                Some((w, v)) => self.resolve(v, &w.schema, &field.schema, &at)?,
                None => self.default(&field.schema, field.default.as_ref(), &at)?,
            };
            out.push((field.name.clone(), resolved));
        }
        Ok(Value::Record(out))
    }

    /// The reader field's default, for a field the writer did not write.
    fn default(
        &self,
        schema: &Schema,
        default: Option<&serde_json::Value>,
        path: &str,
    ) -> Result<Value, String> {
        let json = default.ok_or_else(|| {
            format!("{path}: the writer has no field {path} and the reader's has no default")
        })?;
        let value = Value::try_from(json.clone()).map_err(|e| format!("{path}: {e}"))?;
        match deref(schema, self.reader)? {
            // A union's default is a value of its first branch.
            Schema::Union(union) => {
                let first = union
                    .variants()
                    .first()
                    .ok_or_else(|| format!("{path}: empty union"))?;
                let inner = value
                    .resolve_with_names(first, self.reader)
                    .map_err(|e| format!("{path}: default: {e}"))?;
                Ok(Value::Union(0, Box::new(inner)))
            }
            schema => value
                .resolve_with_names(schema, self.reader)
                .map_err(|e| format!("{path}: default: {e}")),
        }
    }
}

fn deref<'s>(schema: &'s Schema, names: &Names<'s>) -> Result<&'s Schema, String> {
    match schema {
        Schema::Ref { name } => names
            .get(name)
            .copied()
            .ok_or_else(|| format!("unknown type {}", name.fullname(None))),
        other => Ok(other),
    }
}

fn is_named(schema: &Schema) -> bool {
    schema.name().is_some()
}

fn reader_aliases(reader: &RecordSchema) -> Vec<String> {
    reader
        .aliases
        .iter()
        .flatten()
        .map(|alias| alias.fullname(None))
        .collect()
}

/// Named types match by full name, unqualified name or a reader alias (Avro 1.x practice).
fn same_name(writer: &Name, reader: &Name, reader_aliases: Vec<String>) -> bool {
    writer.fullname(None) == reader.fullname(None)
        || writer.name() == reader.name()
        || reader_aliases.contains(&writer.fullname(None))
}

/// Whether a reader's union branch is the one for the writer's schema.
fn matches(writer: &Schema, reader: &Schema) -> bool {
    match (writer, reader) {
        (Schema::Record(w), Schema::Record(r)) => same_name(&w.name, &r.name, reader_aliases(r)),
        (Schema::Enum(w), Schema::Enum(r)) => same_name(&w.name, &r.name, Vec::new()),
        (Schema::Fixed(w), Schema::Fixed(r)) => same_name(&w.name, &r.name, Vec::new()),
        (w, r) if is_named(w) || is_named(r) => false,
        (w, r) => {
            let (w, r) = (base_kind(w), base_kind(r));
            w == r
                || matches!(
                    (w, r),
                    (
                        SchemaKind::Int,
                        SchemaKind::Long | SchemaKind::Float | SchemaKind::Double
                    ) | (SchemaKind::Long, SchemaKind::Float | SchemaKind::Double)
                        | (SchemaKind::Float, SchemaKind::Double)
                        | (SchemaKind::String, SchemaKind::Bytes)
                        | (SchemaKind::Bytes, SchemaKind::String)
                )
        }
    }
}

/// The primitive a logical type is written as, for matching; other kinds as they are.
fn base_kind(schema: &Schema) -> SchemaKind {
    match SchemaKind::from(schema) {
        SchemaKind::Date | SchemaKind::TimeMillis => SchemaKind::Int,
        SchemaKind::TimeMicros
        | SchemaKind::TimestampMillis
        | SchemaKind::TimestampMicros
        | SchemaKind::TimestampNanos
        | SchemaKind::LocalTimestampMillis
        | SchemaKind::LocalTimestampMicros
        | SchemaKind::LocalTimestampNanos => SchemaKind::Long,
        kind => kind,
    }
}

fn describe(schema: &Schema) -> String {
    match schema.name() {
        Some(name) => format!("{:?} {}", SchemaKind::from(schema), name.fullname(None)),
        None => format!("{:?}", SchemaKind::from(schema)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;

    /// Branch `Small` reads everything `Big` has: first-match resolution would confuse them.
    const V1: &str = r#"{"type":"record","name":"Cmd","namespace":"t","fields":[
        {"name":"id","type":"string"},
        {"name":"body","type":[
            {"type":"record","name":"Small","fields":[{"name":"a","type":"long"}]},
            {"type":"record","name":"Big","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]}
        ]}]}"#;
    /// v2: the branches swapped, a new branch, and a new optional envelope field.
    const V2: &str = r#"{"type":"record","name":"Cmd","namespace":"t","fields":[
        {"name":"id","type":"string"},
        {"name":"body","type":[
            {"type":"record","name":"Big","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]},
            {"type":"record","name":"Small","fields":[{"name":"a","type":"long"}]},
            {"type":"record","name":"Newer","fields":[{"name":"c","type":"int"}]}
        ]},
        {"name":"note","type":["null","string"],"default":null},
        {"name":"level","type":{"type":"enum","name":"Level","symbols":["LOW","HIGH"]},"default":"HIGH"}]}"#;

    fn schema(text: &str) -> Schema {
        Schema::parse_str(text).expect("a valid schema")
    }

    fn record(id: &str, branch: u32, body: Value) -> Value {
        Value::Record(vec![
            ("id".into(), Value::String(id.into())),
            ("body".into(), Value::Union(branch, Box::new(body))),
        ])
    }

    fn big() -> Value {
        Value::Record(vec![
            ("a".into(), Value::Long(7)),
            ("b".into(), Value::String("x".into())),
        ])
    }

    /// Through Avro binary, as the codec sees it.
    fn written(schema: &Schema, value: Value) -> Value {
        let bytes = GenericDatumWriter::builder(schema)
            .build()
            .and_then(|w| w.write_value_to_vec(value))
            .expect("the value fits the schema");
        GenericDatumReader::builder(schema)
            .build()
            .and_then(|r| r.read_value(&mut bytes.as_slice()))
            .expect("the datum reads back")
    }

    #[test]
    fn apache_avro_resolution_confuses_union_branches_ours_does_not() {
        let v1 = schema(V1);
        let value = written(&v1, record("c1", 1, big()));
        let theirs = value.clone().resolve(&v1).expect("resolves");
        assert_ne!(
            theirs, value,
            "if this fails, apache_avro fixed its union resolution"
        );
        assert_eq!(resolve(value.clone(), &v1, &v1), Ok(value));
    }

    #[test]
    fn branches_match_by_name_across_versions_and_defaults_fill_new_fields() {
        let (v1, v2) = (schema(V1), schema(V2));
        let from_v1 = resolve(written(&v1, record("c1", 1, big())), &v1, &v2).expect("v2 reads v1");
        assert_eq!(
            from_v1,
            Value::Record(vec![
                ("id".into(), Value::String("c1".into())),
                ("body".into(), Value::Union(0, Box::new(big()))),
                ("note".into(), Value::Union(0, Box::new(Value::Null))),
                ("level".into(), Value::Enum(1, "HIGH".into())),
            ])
        );

        let small = Value::Record(vec![("a".into(), Value::Long(1))]);
        let mut v2_value = record("c2", 1, small.clone());
        if let Value::Record(fields) = &mut v2_value {
            fields.push((
                "note".into(),
                Value::Union(1, Box::new(Value::String("n".into()))),
            ));
            fields.push(("level".into(), Value::Enum(0, "LOW".into())));
        }
        let from_v2 = resolve(written(&v2, v2_value), &v2, &v1).expect("v1 reads v2");
        assert_eq!(from_v2, record("c2", 0, small));
    }

    #[test]
    fn a_branch_the_reader_does_not_know_is_an_error_not_a_guess() {
        let (v1, v2) = (schema(V1), schema(V2));
        let newer = Value::Record(vec![("c".into(), Value::Int(3))]);
        let mut value = record("c3", 2, newer);
        if let Value::Record(fields) = &mut value {
            fields.push(("note".into(), Value::Union(0, Box::new(Value::Null))));
            fields.push(("level".into(), Value::Enum(0, "LOW".into())));
        }
        let err = resolve(written(&v2, value), &v2, &v1).expect_err("v1 has no Newer");
        assert!(err.contains("body") && err.contains("t.Newer"), "{err}");
    }

    #[test]
    fn a_missing_field_without_default_is_named() {
        let writer = schema(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#);
        let reader = schema(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]}"#,
        );
        let value = Value::Record(vec![("a".into(), Value::Int(4))]);
        let err = resolve(value.clone(), &writer, &reader).expect_err("b has no default");
        assert!(err.contains('b'), "{err}");
        let promoted = resolve(
            value,
            &writer,
            &schema(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#),
        );
        assert_eq!(
            promoted,
            Ok(Value::Record(vec![("a".into(), Value::Long(4))]))
        );
    }
}
