//! Records as processors see them, and where they came from.

use std::sync::Arc;

/// Record headers, in order; names may repeat, as in Kafka. A value is `None` for a header
/// whose value is null, which Kafka keeps distinct from an empty value (`Some(vec![])`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, Option<Vec<u8>>)>);

impl Headers {
    /// Appends a header with a value (possibly empty).
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.0.push((name.into(), Some(value.into())));
    }

    /// Appends a header whose value is null.
    pub fn insert_null(&mut self, name: impl Into<String>) {
        self.0.push((name.into(), None));
    }

    /// The value of the last header named `name`: `None` if there is none or its value is
    /// null (tell the two apart with [`Headers::value`]).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.value(name).flatten()
    }

    /// The last header named `name`: `None` if there is none, `Some(None)` if its value is
    /// null.
    pub fn value(&self, name: &str) -> Option<Option<&[u8]>> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref())
    }

    /// The last value of `name` as UTF-8, if it is.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header in order, a null value as `None`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_deref()))
    }
}

/// A typed record flowing between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<K, V> {
    pub key: K,
    pub value: V,
    /// Milliseconds since the epoch: the input record's timestamp unless a processor changes it.
    pub timestamp: i64,
    pub headers: Headers,
}

impl<K, V> Record<K, V> {
    pub fn new(key: K, value: V, timestamp: i64) -> Self {
        Self {
            key,
            value,
            timestamp,
            headers: Headers::default(),
        }
    }

    /// The same timestamp and headers with another key and value.
    pub fn with<K2, V2>(self, key: K2, value: V2) -> Record<K2, V2> {
        Record {
            key,
            value,
            timestamp: self.timestamp,
            headers: self.headers,
        }
    }
}

/// Where the record being processed came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    pub topic: Arc<str>,
    pub partition: i32,
    /// How many partitions `topic` has, as the task knows it (the runtime's metadata at
    /// start, the test driver's layout); `None` if unknown. With [`crate::default_partition`]
    /// a processor can tell whether the record's key belongs on `partition`, i.e. whether its
    /// producer used Kafka's default (murmur2) partitioner.
    pub partitions: Option<i32>,
    pub offset: i64,
    pub timestamp: i64,
}

/// The timestamp of a record that has none: Kafka's `NO_TIMESTAMP` (`-1`, what a Java
/// `ConsumerRecord` says then). [`timestamp_ms`] gives it; a dead letter's
/// `keel.source.timestamp` reads `-1` then ([`crate::dlq_headers::for_source`]).
pub const NO_TIMESTAMP: i64 = -1;

/// A consumed record's timestamp in ms since the epoch, or [`NO_TIMESTAMP`] if the broker
/// record has none: the one rule the runtime's consumer and the plain consumers' sinks follow.
pub fn timestamp_ms(timestamp: rdkafka::message::Timestamp) -> i64 {
    timestamp.to_millis().unwrap_or(NO_TIMESTAMP)
}

/// An input record as the consumer (or the test driver) hands it over: bytes, not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Ms since the epoch; [`NO_TIMESTAMP`] if the broker record has none ([`timestamp_ms`]).
    /// Processors see it as is; an output that keeps it is written with the time it is sent
    /// (a negative timestamp goes to the producer as 0: "now").
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Headers,
}

impl RawRecord {
    /// Its metadata; `partitions` is left unknown (the task fills it in).
    pub fn meta(&self) -> RecordMeta {
        RecordMeta {
            topic: self.topic.clone(),
            partition: self.partition,
            partitions: None,
            offset: self.offset,
            timestamp: self.timestamp,
        }
    }
}

/// A record a task wants written: to an output, repartition or dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: String,
    /// `None`: Kafka's default partitioner (murmur2 of the key) decides.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: i64,
    pub headers: Headers,
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Timestamp;

    use super::*;
    use crate::dlq_headers;

    #[test]
    fn a_record_without_a_timestamp_reads_minus_one_in_its_dead_letter() {
        for missing in [Timestamp::NotAvailable, Timestamp::CreateTime(-1)] {
            assert_eq!(timestamp_ms(missing), NO_TIMESTAMP);
        }
        assert_eq!(timestamp_ms(Timestamp::LogAppendTime(1_700)), 1_700);
        let headers =
            dlq_headers::for_source("why", "t", 2, 7, timestamp_ms(Timestamp::NotAvailable), "p");
        assert_eq!(
            headers.map(|(name, value)| format!("{name}={value}")),
            [
                "keel.error=why",
                "keel.source.topic=t",
                "keel.source.partition=2",
                "keel.source.offset=7",
                "keel.source.timestamp=-1",
                "keel.processor=p",
            ]
        );
    }
}
