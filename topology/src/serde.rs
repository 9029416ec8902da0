//! Serdes: how a source turns bytes into typed keys and values, and a sink turns them back.
//!
//! A `None` payload is Kafka's null (a tombstone); serdes that cannot represent it refuse it
//! with a [`SerdeError`], which sends the record to the dead-letter topic.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::SerdeError;

/// Bytes ⇄ `T` for one side (key or value) of a topic.
pub trait Serde<T>: Send + Sync + 'static {
    fn serialize(&self, topic: &str, value: &T) -> Result<Option<Vec<u8>>, SerdeError>;
    fn deserialize(&self, topic: &str, bytes: Option<&[u8]>) -> Result<T, SerdeError>;
}

fn required<'a>(topic: &str, bytes: Option<&'a [u8]>) -> Result<&'a [u8], SerdeError> {
    bytes.ok_or_else(|| SerdeError(format!("null payload on {topic}, a value was required")))
}

/// UTF-8 text.
#[derive(Debug, Clone, Copy, Default)]
pub struct Utf8;

impl Serde<String> for Utf8 {
    fn serialize(&self, _: &str, value: &String) -> Result<Option<Vec<u8>>, SerdeError> {
        Ok(Some(value.as_bytes().to_vec()))
    }
    fn deserialize(&self, topic: &str, bytes: Option<&[u8]>) -> Result<String, SerdeError> {
        String::from_utf8(required(topic, bytes)?.to_vec())
            .map_err(|e| SerdeError(format!("not UTF-8: {e}")))
    }
}

/// Raw bytes; null is refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bytes;

impl Serde<Vec<u8>> for Bytes {
    fn serialize(&self, _: &str, value: &Vec<u8>) -> Result<Option<Vec<u8>>, SerdeError> {
        Ok(Some(value.clone()))
    }
    fn deserialize(&self, topic: &str, bytes: Option<&[u8]>) -> Result<Vec<u8>, SerdeError> {
        Ok(required(topic, bytes)?.to_vec())
    }
}

/// Raw bytes where null is allowed (tombstones, keyless records).
#[derive(Debug, Clone, Copy, Default)]
pub struct NullableBytes;

impl Serde<Option<Vec<u8>>> for NullableBytes {
    fn serialize(&self, _: &str, value: &Option<Vec<u8>>) -> Result<Option<Vec<u8>>, SerdeError> {
        Ok(value.clone())
    }
    fn deserialize(&self, _: &str, bytes: Option<&[u8]>) -> Result<Option<Vec<u8>>, SerdeError> {
        Ok(bytes.map(<[u8]>::to_vec))
    }
}

/// A signed 64-bit integer, 8 bytes big-endian (Kafka's `LongSerializer`).
#[derive(Debug, Clone, Copy, Default)]
pub struct I64;

impl Serde<i64> for I64 {
    fn serialize(&self, _: &str, value: &i64) -> Result<Option<Vec<u8>>, SerdeError> {
        Ok(Some(value.to_be_bytes().to_vec()))
    }
    fn deserialize(&self, topic: &str, bytes: Option<&[u8]>) -> Result<i64, SerdeError> {
        let bytes = required(topic, bytes)?;
        let array: [u8; 8] = bytes
            .try_into()
            .map_err(|_| SerdeError(format!("expected 8 bytes for an i64, got {}", bytes.len())))?;
        Ok(i64::from_be_bytes(array))
    }
}

/// JSON through serde.
#[derive(Debug)]
pub struct Json<T>(PhantomData<fn() -> T>);

impl<T> Default for Json<T> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T> Json<T> {
    pub fn new() -> Self {
        Self::default()
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Serde<T> for Json<T> {
    fn serialize(&self, _: &str, value: &T) -> Result<Option<Vec<u8>>, SerdeError> {
        serde_json::to_vec(value)
            .map(Some)
            .map_err(|e| SerdeError(format!("cannot write JSON: {e}")))
    }
    fn deserialize(&self, topic: &str, bytes: Option<&[u8]>) -> Result<T, SerdeError> {
        serde_json::from_slice(required(topic, bytes)?)
            .map_err(|e| SerdeError(format!("not the expected JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i64_round_trips_and_refuses_short_input() {
        let bytes = I64.serialize("t", &-42).expect("serializes");
        assert_eq!(I64.deserialize("t", bytes.as_deref()).ok(), Some(-42));
        let err = I64.deserialize("t", Some(b"abc")).expect_err("3 bytes");
        assert!(err.0.contains("8 bytes"), "{err}");
        assert!(I64.deserialize("t", None).is_err());
    }

    #[test]
    fn utf8_refuses_invalid_text_and_null() {
        assert!(Utf8.deserialize("t", Some(&[0xff, 0xfe])).is_err());
        let err = Utf8.deserialize("orders", None).expect_err("null");
        assert!(err.0.contains("orders"), "{err}");
    }

    #[test]
    fn json_reports_what_was_wrong() {
        let serde = Json::<Vec<u32>>::new();
        let err = serde
            .deserialize("t", Some(b"{\"a\":1}"))
            .expect_err("not a list");
        assert!(err.0.contains("JSON"), "{err}");
    }
}
