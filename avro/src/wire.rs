//! The Confluent wire format: magic byte `0`, the schema id as 4 big-endian bytes, then the
//! Avro binary datum. Pure functions, no registry: the runtime can read a record's schema id for
//! a dead-letter header without decoding it.

use crate::error::FramingError;

/// The first byte of every Confluent-framed payload.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

/// A payload split into its schema id and Avro datum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub schema_id: u32,
    pub datum: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Split `payload`; never panics, whatever the bytes.
    pub fn parse(payload: &'a [u8]) -> Result<Self, FramingError> {
        match payload {
            [MAGIC_BYTE, a, b, c, d, datum @ ..] => Ok(Self {
                schema_id: u32::from_be_bytes([*a, *b, *c, *d]),
                datum,
            }),
            [byte, ..] if *byte != MAGIC_BYTE => Err(FramingError::BadMagic { byte: *byte }),
            short => Err(FramingError::TooShort { len: short.len() }),
        }
    }
}

/// Frame an Avro datum with its schema id.
pub fn frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_framed_datum_parses_back_to_its_id_and_bytes() {
        let bytes = frame(0x0102_0304, b"datum");
        assert_eq!(bytes[..5], [0, 1, 2, 3, 4]);
        assert_eq!(
            Frame::parse(&bytes),
            Ok(Frame {
                schema_id: 0x0102_0304,
                datum: b"datum"
            })
        );
    }

    #[test]
    fn short_and_unmagical_payloads_say_why_they_are_not_framed() {
        assert_eq!(Frame::parse(&[]), Err(FramingError::TooShort { len: 0 }));
        assert_eq!(
            Frame::parse(&[0, 0, 0, 1]),
            Err(FramingError::TooShort { len: 4 })
        );
        assert_eq!(
            Frame::parse(b"{\"json\":true}"),
            Err(FramingError::BadMagic { byte: b'{' })
        );
        // A header with an empty datum is framed; whether the datum decodes is the codec's call.
        assert_eq!(
            Frame::parse(&[0, 0, 0, 0, 7]),
            Ok(Frame {
                schema_id: 7,
                datum: &[]
            })
        );
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics_and_agrees_with_the_format(
            bytes in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            match Frame::parse(&bytes) {
                Ok(frame) => {
                    prop_assert!(bytes.len() >= HEADER_LEN);
                    prop_assert_eq!(bytes[0], MAGIC_BYTE);
                    prop_assert_eq!(frame.datum, &bytes[HEADER_LEN..]);
                }
                Err(FramingError::TooShort { len }) => {
                    prop_assert_eq!(len, bytes.len());
                    prop_assert!(len < HEADER_LEN);
                    prop_assert!(bytes.first().is_none_or(|b| *b == MAGIC_BYTE));
                }
                Err(FramingError::BadMagic { byte }) => {
                    prop_assert_eq!(Some(&byte), bytes.first());
                    prop_assert_ne!(byte, MAGIC_BYTE);
                }
            }
        }

        #[test]
        fn framing_round_trips(id in any::<u32>(), datum in proptest::collection::vec(any::<u8>(), 0..32)) {
            let framed = frame(id, &datum);
            prop_assert_eq!(Frame::parse(&framed), Ok(Frame { schema_id: id, datum: &datum }));
        }
    }
}
