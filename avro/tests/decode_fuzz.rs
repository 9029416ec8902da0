//! Arbitrary bytes never make the codec panic: they decode or give a typed input error.
//!
//! Registry calls stay bounded: random payloads almost always fail framing before any HTTP;
//! random schema ids get a handful of cases (each unknown id is one lookup, then cached); random
//! datums behind a registered id reuse the one cached schema.

mod common;

use std::sync::OnceLock;

use keel_avro::records::OrderCommand;
use keel_avro::wire::{self, Frame, HEADER_LEN};
use keel_avro::{Codec, Error, Fault, FramingError};
use proptest::prelude::*;
use tokio::runtime::Runtime;

struct Fixture {
    runtime: Runtime,
    codec: Codec,
    /// A real payload: an `OrderCommand` placing an order, with its registered schema id.
    payload: Vec<u8>,
    schema_id: u32,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = Runtime::new().expect("a tokio runtime");
        // An unknown id is the input's fault at once here (no patience for a lagging replica).
        let codec = Codec::new(common::config("fuzz"))
            .expect("a valid config")
            .with_unknown_id_patience(std::time::Duration::ZERO);
        let payload = runtime
            .block_on(codec.encode(&common::order_commands().remove(0)))
            .expect("the registry takes the schema");
        let schema_id = Frame::parse(&payload).expect("framed").schema_id;
        Fixture {
            runtime,
            codec,
            payload,
            schema_id,
        }
    })
}

fn decode(bytes: &[u8]) -> keel_avro::Result<OrderCommand> {
    let f = fixture();
    f.runtime.block_on(f.codec.decode::<OrderCommand>(bytes))
}

/// Every failure on bad bytes is the input's fault and names the subject.
fn assert_input_error(err: &Error) -> Result<(), TestCaseError> {
    prop_assert_eq!(err.fault(), Fault::Input, "{:?}", err);
    let subject = fixture().codec.subject("orders.commands.v1");
    prop_assert_eq!(err.subject(), Some(subject.as_str()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_are_a_typed_error(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        if let Err(err) = decode(&bytes) {
            assert_input_error(&err)?;
            match (&err, Frame::parse(&bytes)) {
                (Error::NotFramed { reason, .. }, Err(expected)) => prop_assert_eq!(*reason, expected),
                (Error::NotFramed { .. }, Ok(_)) => prop_assert!(false, "a framed payload was called unframed"),
                (_, Ok(frame)) => prop_assert_eq!(err.schema_id(), Some(frame.schema_id)),
                (_, Err(_)) => prop_assert!(false, "unframed bytes got past framing: {:?}", err),
            }
        }
    }

    #[test]
    fn unframed_bytes_never_reach_the_registry(
        first in 1u8..=255,
        rest in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let bytes = [&[first][..], &rest].concat();
        let err = decode(&bytes).expect_err("a non-zero first byte is never framed");
        prop_assert!(
            matches!(err, Error::NotFramed { reason: FramingError::BadMagic { byte }, .. } if byte == first),
            "{:?}", err
        );
    }

    #[test]
    fn random_datums_behind_a_registered_id_decode_or_fail_cleanly(
        datum in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let f = fixture();
        match decode(&wire::frame(f.schema_id, &datum)) {
            Ok(_) => {}
            Err(err) => {
                assert_input_error(&err)?;
                prop_assert!(
                    matches!(err, Error::AvroDecode { .. } | Error::SchemaMismatch { .. }),
                    "{:?}", err
                );
                prop_assert_eq!(err.schema_id(), Some(f.schema_id));
            }
        }
    }

    #[test]
    fn a_corrupted_real_payload_decodes_or_fails_cleanly(
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<proptest::sample::Index>(),
    ) {
        let f = fixture();
        let mut bytes = f.payload.clone();
        for (at, byte) in flips {
            // Keep the header so the corruption lands in the datum.
            let at = HEADER_LEN + at.index(bytes.len() - HEADER_LEN);
            bytes[at] = byte;
        }
        bytes.truncate(HEADER_LEN + cut.index(bytes.len() - HEADER_LEN + 1));
        if let Err(err) = decode(&bytes) {
            assert_input_error(&err)?;
            prop_assert_eq!(err.schema_id(), Some(f.schema_id));
        }
    }
}

proptest! {
    // Each unknown id costs one registry lookup (then it is cached): keep this small.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn a_random_unknown_schema_id_is_named_in_the_error(
        id in 0x6000_0000u32..=u32::MAX,
        datum in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let err = decode(&wire::frame(id, &datum)).expect_err("the registry never issued this id");
        assert_input_error(&err)?;
        prop_assert!(matches!(err, Error::UnknownSchemaId { schema_id, .. } if schema_id == id), "{:?}", err);
    }
}
