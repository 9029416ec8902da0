//! What a processor checks about a command record's Kafka key before it applies the command,
//! whoever produced it (the API, Keel's own processors, or another system writing straight to a
//! command topic) — and the saga about every event it reads too (inventory's, the payment
//! service's and the carts processor's replies, all keyed by order id):
//!
//! - [`check_key`]: the key is the id the command is about — the order id on
//!   `orders.commands.v1`, the SKU on `inventory.commands.v1` (the payment service does not
//!   check: it keys nothing by the record's key, its ledger's rows are by order and payment id)
//!   — and that id keeps the id rule ([`keel_avro::ids`]). The key routes the command to the task
//!   that holds the entity's state; a key that is not the id would apply the command to
//!   another entity (an empty key once confirmed and charged order `""`).
//! - [`check_partition`]: the record sits on the partition Kafka's default partitioner
//!   (murmur2 of the key, [`keel_topology::default_partition`]) gives its key. That partition's
//!   task holds the entity's state and gets every answer about it (Keel's producers, Kafka
//!   Connect and the runtime all partition with murmur2); a command written with another
//!   partitioner (librdkafka's own default, `consistent_random`, is CRC32) would start state that
//!   its answers never reach.
//!
//! A record that fails either is the producer's mistake: the processor dead-letters it with
//! the [`KeyProblem`] as the reason (`keel.error`) and applies nothing. Pure functions.

use keel_avro::ids::{ID_RULE, is_valid_id, shown};

/// Why a command record's key cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// The key is not the id inside the command or event (an empty key included).
    #[error(
        "the record's key {} is not the {field} {} inside it: a command or event must be keyed \
         by its {field}, which routes it to the task that holds that state",
        shown(.key),
        shown(.id)
    )]
    NotTheId {
        /// The record's field the key must equal (`order_id`, `sku`).
        field: &'static str,
        key: String,
        id: String,
    },
    /// Key and id agree, but the id breaks the id rule (empty, too long, whitespace, control
    /// characters).
    #[error("the command's {field} {} is not a valid id: an id is {ID_RULE}", shown(.id))]
    InvalidId { field: &'static str, id: String },
    /// The record is not on the partition its key hashes to.
    #[error(
        "key {} belongs on partition {expected} of {partitions} (Kafka's default partitioner: \
         murmur2 of the key), but the record is on partition {partition}: its state and every \
         answer about it are on partition {expected}. Producers of this topic must use Kafka's \
         default (murmur2) partitioner (librdkafka: partitioner=murmur2_random; its own default, \
         consistent_random, is CRC32); write the record again from such a producer",
        shown(.key)
    )]
    WrongPartition {
        key: String,
        partition: i32,
        partitions: i32,
        expected: i32,
    },
}

/// Checks that `key` (the record's Kafka key) is `id`, the command's `field` (`order_id`,
/// `sku`), and that `id` keeps the id rule. A mismatch is reported before an invalid id, so the
/// reason names both values.
pub fn check_key(field: &'static str, key: &str, id: &str) -> Result<(), KeyProblem> {
    if key != id {
        return Err(KeyProblem::NotTheId {
            field,
            key: key.to_owned(),
            id: id.to_owned(),
        });
    }
    if !is_valid_id(id) {
        return Err(KeyProblem::InvalidId {
            field,
            id: id.to_owned(),
        });
    }
    Ok(())
}

/// Checks that a record keyed `key` on `partition` of a topic with `partitions` partitions is
/// where Kafka's default partitioner puts it. `partitions` unknown (`None`, e.g. outside the
/// runtime) or not positive: nothing can be told, so it passes.
pub fn check_partition(
    key: &str,
    partition: i32,
    partitions: Option<i32>,
) -> Result<(), KeyProblem> {
    let Some(partitions) = partitions.filter(|n| *n > 0) else {
        return Ok(());
    };
    let expected = keel_topology::default_partition(key.as_bytes(), partitions);
    if expected == partition {
        return Ok(());
    }
    Err(KeyProblem::WrongPartition {
        key: key.to_owned(),
        partition,
        partitions,
        expected,
    })
}

/// [`check_partition`] for the record a processor is processing, from its metadata (`None` in a
/// punctuation: passes).
pub fn check_record_partition(
    key: &str,
    meta: Option<&keel_topology::RecordMeta>,
) -> Result<(), KeyProblem> {
    match meta {
        Some(m) => check_partition(key, m.partition, m.partitions),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_must_be_the_commands_id_and_the_id_must_keep_the_id_rule() {
        assert_eq!(check_key("order_id", "ord-1", "ord-1"), Ok(()));
        for (key, id) in [("mmkey-x", "mm-x"), ("", "ek-x"), ("ord-1", "")] {
            let err = check_key("order_id", key, id).expect_err("mismatch");
            assert!(matches!(err, KeyProblem::NotTheId { .. }), "{err:?}");
            let why = err.to_string();
            assert!(
                why.contains(&format!("key {key:?}")) && why.contains(&format!("order_id {id:?}")),
                "{why}"
            );
        }
        let long = "S".repeat(65);
        for bad in ["", "WS X", long.as_str()] {
            let err = check_key("sku", bad, bad).expect_err("invalid");
            assert!(matches!(err, KeyProblem::InvalidId { .. }), "{err:?}");
            assert!(err.to_string().contains("1 to 64 characters"), "{err}");
        }
    }

    #[test]
    fn a_huge_key_is_cut_in_the_reason() {
        let huge = "K".repeat(900_000);
        let why = check_key("order_id", &huge, "ord-1")
            .expect_err("mismatch")
            .to_string();
        assert!(why.len() < 400, "{} bytes", why.len());
        assert!(why.contains("(900000 characters)"), "{why}");
    }

    #[test]
    fn a_record_off_its_keys_murmur2_partition_is_refused_naming_the_right_one() {
        let key = "order-crc32";
        let right = keel_topology::default_partition(key.as_bytes(), 4);
        assert_eq!(check_partition(key, right, Some(4)), Ok(()));
        for wrong in (0..4).filter(|p| *p != right) {
            let err = check_partition(key, wrong, Some(4)).expect_err("misplaced");
            let why = err.to_string();
            assert!(
                why.contains(&format!("belongs on partition {right} of 4")),
                "{why}"
            );
            assert!(why.contains(&format!("on partition {wrong}")), "{why}");
            assert!(why.contains("murmur2_random"), "{why}");
        }
        // One partition, or a count nobody knows: nothing to tell.
        assert_eq!(check_partition(key, 0, Some(1)), Ok(()));
        assert_eq!(check_partition(key, 3, None), Ok(()));
    }
}
