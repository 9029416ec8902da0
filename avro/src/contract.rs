//! The contracts: which topic carries which `.avsc` and which Rust type, as one explicit list
//! ([`CONTRACTS`]) that registration, checking and the tests walk.

use std::fmt;
use std::sync::OnceLock;

use apache_avro::Schema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::records::{
    AuditViolation, CartChecked, InventoryAdjusted, InventoryCommand, InventoryReleased,
    InventoryReserved, OrderCommand, OrderCreated, OrderDecision, OrderStatusChanged,
    PaymentAuthorized, PaymentCommand, PaymentFailed, PaymentRefunded, ReconciliationMismatch,
};

/// Whether a topic carries commands (asks) or events (facts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Carries `command_id` and `issued_at`.
    Command,
    /// Carries `event_id` and `occurred_at`.
    Event,
    /// A processor's decision for its own sink (`order.decisions.v1`): carries `decision_id`
    /// and `decided_at`.
    Decision,
}

/// One topic's value contract: its schema file and its Rust type.
pub struct Contract {
    /// The Kafka topic; its subject is `<topic>-value` (topic-name strategy).
    pub topic: &'static str,
    /// The file in `avro/schemas/`.
    pub schema_file: &'static str,
    /// The file's text, embedded at build time.
    pub schema_source: &'static str,
    /// The Rust type in [`crate::records`].
    pub rust_type: &'static str,
    /// The schema's full name.
    pub full_name: &'static str,
    pub kind: Kind,
    /// The field whose value is the Kafka key.
    pub key_field: &'static str,
    /// The field naming the aggregate the record is about.
    pub aggregate_field: &'static str,
    parsed: OnceLock<std::result::Result<Schema, String>>,
}

impl fmt::Debug for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contract")
            .field("topic", &self.topic)
            .field("schema_file", &self.schema_file)
            .field("rust_type", &self.rust_type)
            .field("full_name", &self.full_name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Contract {
    /// The subject this contract registers under, with an optional prefix (empty in
    /// production; tests use a random one): `<prefix><topic>-value`.
    pub fn subject(&self, prefix: &str) -> String {
        subject_for_topic(prefix, self.topic)
    }

    /// The parsed `.avsc` (parsed once, then shared).
    pub fn schema(&self) -> Result<&Schema> {
        self.parsed
            .get_or_init(|| Schema::parse_str(self.schema_source).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|detail| Error::LocalSchema {
                file: self.schema_file,
                detail: detail.clone(),
            })
    }
}

/// The topic-name strategy's subject for a topic's values: `<prefix><topic>-value`.
pub fn subject_for_topic(prefix: &str, topic: &str) -> String {
    format!("{prefix}{topic}-value")
}

macro_rules! contract {
    ($static:ident, $topic:literal, $ty:literal, $kind:expr, key = $key:literal, aggregate = $agg:literal) => {
        #[doc = concat!("`", $topic, "` → `schemas/", $topic, ".avsc` → [`crate::records::", $ty, "`].")]
        pub static $static: Contract = Contract {
            topic: $topic,
            schema_file: concat!($topic, ".avsc"),
            schema_source: include_str!(concat!("../schemas/", $topic, ".avsc")),
            rust_type: $ty,
            full_name: concat!("dev.keel.v1.", $ty),
            kind: $kind,
            key_field: $key,
            aggregate_field: $agg,
            parsed: OnceLock::new(),
        };
    };
}

contract!(
    ORDER_COMMANDS,
    "orders.commands.v1",
    "OrderCommand",
    Kind::Command,
    key = "order_id",
    aggregate = "order_id"
);
contract!(
    INVENTORY_COMMANDS,
    "inventory.commands.v1",
    "InventoryCommand",
    Kind::Command,
    key = "sku",
    aggregate = "sku"
);
contract!(
    PAYMENT_COMMANDS,
    "payments.commands.v1",
    "PaymentCommand",
    Kind::Command,
    key = "order_id",
    aggregate = "payment_id"
);
contract!(
    ORDER_CREATED,
    "order.created",
    "OrderCreated",
    Kind::Event,
    key = "order_id",
    aggregate = "order_id"
);
contract!(
    ORDER_STATUS_CHANGED,
    "order.status.changed",
    "OrderStatusChanged",
    Kind::Event,
    key = "order_id",
    aggregate = "order_id"
);
contract!(
    PAYMENT_AUTHORIZED,
    "payment.authorized.v1",
    "PaymentAuthorized",
    Kind::Event,
    key = "order_id",
    aggregate = "payment_id"
);
contract!(
    PAYMENT_FAILED,
    "payment.failed.v1",
    "PaymentFailed",
    Kind::Event,
    key = "order_id",
    aggregate = "payment_id"
);
contract!(
    PAYMENT_REFUNDED,
    "payment.refunded.v1",
    "PaymentRefunded",
    Kind::Event,
    key = "order_id",
    aggregate = "payment_id"
);
contract!(
    INVENTORY_RESERVED,
    "inventory.reserved.v1",
    "InventoryReserved",
    Kind::Event,
    key = "order_id",
    aggregate = "sku"
);
contract!(
    INVENTORY_RELEASED,
    "inventory.released.v1",
    "InventoryReleased",
    Kind::Event,
    key = "order_id",
    aggregate = "sku"
);
contract!(
    INVENTORY_ADJUSTED,
    "inventory.adjusted.v1",
    "InventoryAdjusted",
    Kind::Event,
    key = "sku",
    aggregate = "sku"
);

contract!(
    ORDER_DECISIONS,
    "order.decisions.v1",
    "OrderDecision",
    Kind::Decision,
    key = "order_id",
    aggregate = "order_id"
);
contract!(
    CART_CHECKED,
    "cart.checked.v1",
    "CartChecked",
    Kind::Event,
    key = "order_id",
    aggregate = "cart_id"
);

contract!(
    RECONCILIATION_MISMATCHES,
    "reconciliation.mismatches.v1",
    "ReconciliationMismatch",
    Kind::Event,
    key = "order_id",
    aggregate = "order_id"
);

contract!(
    AUDIT_VIOLATIONS,
    "audit.violations.v1",
    "AuditViolation",
    Kind::Event,
    key = "subject_id",
    aggregate = "subject_id"
);

/// Every contract Keel has, commands first. Registration and checking walk this list.
pub static CONTRACTS: [&Contract; 15] = [
    &ORDER_COMMANDS,
    &INVENTORY_COMMANDS,
    &PAYMENT_COMMANDS,
    &ORDER_CREATED,
    &ORDER_STATUS_CHANGED,
    &PAYMENT_AUTHORIZED,
    &PAYMENT_FAILED,
    &PAYMENT_REFUNDED,
    &INVENTORY_RESERVED,
    &INVENTORY_RELEASED,
    &INVENTORY_ADJUSTED,
    &ORDER_DECISIONS,
    &CART_CHECKED,
    &RECONCILIATION_MISMATCHES,
    &AUDIT_VIOLATIONS,
];

/// The contract of a topic, if Keel has one.
pub fn contract_for_topic(topic: &str) -> Option<&'static Contract> {
    CONTRACTS.iter().copied().find(|c| c.topic == topic)
}

/// The fields every record has, whatever its topic: what consumers de-duplicate and trace by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// `command_id` or `event_id`.
    pub id: &'a str,
    /// The aggregate the record is about (see [`Contract::aggregate_field`]).
    pub aggregate_id: &'a str,
    /// `issued_at` or `occurred_at`, ms since the Unix epoch.
    pub at_millis: i64,
    pub causation_id: &'a str,
    /// The saga's id: the order id.
    pub correlation_id: &'a str,
}

/// A typed record that is the value of one topic.
pub trait Record: Serialize + DeserializeOwned + fmt::Debug + Send + Sync + 'static {
    /// The topic, schema file and names this type belongs to.
    fn contract() -> &'static Contract;
    /// The Kafka key: the entity id named by [`Contract::key_field`].
    fn key(&self) -> &str;
    /// The ids and time every record carries.
    fn envelope(&self) -> Envelope<'_>;
}

macro_rules! record {
    ($ty:ty, $contract:ident, key = $key:ident, id = $id:ident, aggregate = $agg:ident, at = $at:ident) => {
        impl Record for $ty {
            fn contract() -> &'static Contract {
                &$contract
            }
            fn key(&self) -> &str {
                &self.$key
            }
            fn envelope(&self) -> Envelope<'_> {
                Envelope {
                    id: &self.$id,
                    aggregate_id: &self.$agg,
                    at_millis: self.$at,
                    causation_id: &self.causation_id,
                    correlation_id: &self.correlation_id,
                }
            }
        }
    };
}

record!(
    CartChecked,
    CART_CHECKED,
    key = order_id,
    id = event_id,
    aggregate = cart_id,
    at = occurred_at
);
record!(
    OrderCommand,
    ORDER_COMMANDS,
    key = order_id,
    id = command_id,
    aggregate = order_id,
    at = issued_at
);
record!(
    InventoryCommand,
    INVENTORY_COMMANDS,
    key = sku,
    id = command_id,
    aggregate = sku,
    at = issued_at
);
record!(
    PaymentCommand,
    PAYMENT_COMMANDS,
    key = order_id,
    id = command_id,
    aggregate = payment_id,
    at = issued_at
);
record!(
    OrderCreated,
    ORDER_CREATED,
    key = order_id,
    id = event_id,
    aggregate = order_id,
    at = occurred_at
);
record!(
    OrderStatusChanged,
    ORDER_STATUS_CHANGED,
    key = order_id,
    id = event_id,
    aggregate = order_id,
    at = occurred_at
);
record!(
    PaymentAuthorized,
    PAYMENT_AUTHORIZED,
    key = order_id,
    id = event_id,
    aggregate = payment_id,
    at = occurred_at
);
record!(
    PaymentFailed,
    PAYMENT_FAILED,
    key = order_id,
    id = event_id,
    aggregate = payment_id,
    at = occurred_at
);
record!(
    PaymentRefunded,
    PAYMENT_REFUNDED,
    key = order_id,
    id = event_id,
    aggregate = payment_id,
    at = occurred_at
);
record!(
    InventoryReserved,
    INVENTORY_RESERVED,
    key = order_id,
    id = event_id,
    aggregate = sku,
    at = occurred_at
);
record!(
    InventoryReleased,
    INVENTORY_RELEASED,
    key = order_id,
    id = event_id,
    aggregate = sku,
    at = occurred_at
);
record!(
    InventoryAdjusted,
    INVENTORY_ADJUSTED,
    key = sku,
    id = event_id,
    aggregate = sku,
    at = occurred_at
);
record!(
    OrderDecision,
    ORDER_DECISIONS,
    key = order_id,
    id = decision_id,
    aggregate = order_id,
    at = decided_at
);
record!(
    ReconciliationMismatch,
    RECONCILIATION_MISMATCHES,
    key = order_id,
    id = event_id,
    aggregate = order_id,
    at = occurred_at
);
record!(
    AuditViolation,
    AUDIT_VIOLATIONS,
    key = subject_id,
    id = event_id,
    aggregate = subject_id,
    at = occurred_at
);
