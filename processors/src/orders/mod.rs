//! The order service's MySQL side: the schema ([`migrate`]), the order sink that writes the
//! saga's decisions ([`run_order_sink`]), the cart tables it inherits ([`seed_cart`],
//! [`load_cart`]) and the read model the ingest API serves ([`load_order`]).
//!
//! Layout:
//! - `logic.rs` — pure: one decision and the order's current row → the rows and the outbox event.
//! - `sink.rs` — the consumer of `order.decisions.v1` and the one-transaction write.
//! - `cart.rs` — `carts` / `cart_items`.
//! - `view.rs` — [`OrderView`], [`load_order`].
//! - `tests.rs` — unit tests of `logic.rs`.
//! - `processors/migrations/orders/` — the SQL, applied by [`migrate`].

pub mod cart;
pub mod logic;
pub mod sink;
pub mod view;

#[cfg(test)]
mod tests;

use keel_avro::Fault;
use sqlx::MySqlPool;
use sqlx::migrate::Migrator;

pub use cart::{Cart, CartItem, CartStatus, claim_cart, load_cart, seed_cart};
pub use sink::{Applied, apply_batch, apply_decision, run_order_sink, run_order_sink_with};
pub use view::{
    AddressView, MoneyView, OrderItemView, OrderView, TimelineEntry, load_order, order_status,
};

/// The table that records which of this service's migrations ran (its own, so other services'
/// migrations in the same database never confuse it).
pub const MIGRATIONS_TABLE: &str = "_keel_orders_migrations";

/// Everything the orders side can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("mysql: {operation}: {source}")]
    Sql {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the orders schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Avro(#[from] keel_avro::Error),
    #[error("kafka: {operation}: {source}")]
    Kafka {
        operation: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A decision no row can be made of (the input's fault).
    #[error("decision {decision_id} of order {order_id} is invalid: {reason}")]
    InvalidDecision {
        decision_id: String,
        order_id: String,
        reason: String,
    },
    /// A record without a value (a tombstone) on `topic`, the decisions topic: an event topic
    /// where every record has one (the input's fault: dead-lettered).
    #[error("a tombstone (a record without a value) on {topic}: every order decision has a value")]
    Tombstone { topic: String },
    /// `seed_cart` was given a cart that cannot be stored.
    #[error("cart {cart_id}: {reason}")]
    InvalidCart { cart_id: String, reason: String },
    /// A stored row holds a value the code does not know.
    #[error("table {table}: {detail}")]
    CorruptRow { table: &'static str, detail: String },
}

/// `Result` with the orders [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whose fault: the input's (dead-letter it), a dependency's (retry with backoff) or a bug
    /// (stop).
    pub fn fault(&self) -> Fault {
        match self {
            Self::Sql { .. } | Self::Kafka { .. } => Fault::Dependency,
            Self::Avro(e) => e.fault(),
            Self::InvalidDecision { .. } | Self::InvalidCart { .. } | Self::Tombstone { .. } => {
                Fault::Input
            }
            Self::Migrate(_) | Self::CorruptRow { .. } => Fault::Bug,
        }
    }
}

/// Maps an `sqlx::Error` to [`Error::Sql`] naming the operation.
pub(crate) fn sql(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Sql { operation, source }
}

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/orders");

/// Apply the orders schema (`processors/migrations/orders/*.sql`) to the pool's database;
/// idempotent, safe from several processes at once (sqlx takes a lock). Errors:
/// [`Error::Migrate`].
pub async fn migrate(pool: &MySqlPool) -> Result<()> {
    let mut migrator = Migrator::with_migrations(MIGRATOR.iter().cloned().collect());
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator.run(pool).await?;
    Ok(())
}
