//! `keel carts seed` and `keel inventory seed`: demo and test data through Keel's own paths —
//! carts into the cart service's MySQL tables, stock as `AdjustStock` commands on
//! `inventory.commands.v1` (so inventory applies them like any other command).

use std::time::Duration;

use anyhow::Context as _;
use keel_avro::Codec;
use keel_avro::records::{AdjustStock, InventoryCommand, InventoryCommandBody};
use keel_processors::topics;

use crate::config::KeelConfig;

/// One cart item on the command line: `SKU:QUANTITY:UNIT_PRICE_MINOR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemArg {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

impl std::str::FromStr for ItemArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let [sku, quantity, price] = parts.as_slice() else {
            return Err(format!(
                "{s:?} is not SKU:QUANTITY:UNIT_PRICE_MINOR, e.g. MUG-1:2:1250"
            ));
        };
        Ok(Self {
            sku: (*sku).to_owned(),
            quantity: quantity
                .parse()
                .map_err(|e| format!("quantity {quantity:?} in {s:?}: {e}"))?,
            unit_price_minor: price
                .parse()
                .map_err(|e| format!("unit price {price:?} in {s:?}: {e}"))?,
        })
    }
}

/// Creates or replaces an open cart.
pub async fn carts(
    config: &KeelConfig,
    cart_id: &str,
    customer_id: &str,
    currency: &str,
    items: &[ItemArg],
) -> anyhow::Result<()> {
    let pool = crate::run::orders_pool(config).await?;
    let items: Vec<(&str, i32, i64)> = items
        .iter()
        .map(|i| (i.sku.as_str(), i.quantity, i.unit_price_minor))
        .collect();
    keel_processors::orders::seed_cart(&pool, cart_id, customer_id, currency, &items).await?;
    Ok(())
}

/// The arguments of `keel inventory seed`, checked with the HTTP API's own rules before
/// anything is sent (`keel_ingest_api::inventory`: the same SKUs, reasons and warehouses
/// `POST /inventory/adjust` takes): every SKU of `--skus` 1 to 64 characters without whitespace
/// or control characters, each once; `--quantity` 1 to the API's largest adjustment (1,000,000
/// units: the seed adds stock); `--reason` 1 to 255 characters, not inventory's own `SOLD…` /
/// `OVERSOLD…` in any case; `--warehouse` like a SKU. The error names the flag.
pub fn check_inventory_args(
    skus: &[String],
    quantity: i32,
    reason: &str,
    warehouse: Option<&str>,
) -> anyhow::Result<()> {
    use keel_ingest_api::inventory::{MAX_ADJUST_DELTA, check_reason, check_sku, check_warehouse};
    if skus.is_empty() {
        anyhow::bail!(
            "--skus names no SKU; give one or more, comma-separated (e.g. MUG-1,PLATE-1)"
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, sku) in skus.iter().enumerate() {
        let at = format!("--skus: SKU {} of {} ({sku:?})", i + 1, skus.len());
        check_sku("sku", sku).map_err(|p| anyhow::anyhow!("{at}: {}", p.detail))?;
        if !seen.insert(sku.as_str()) {
            anyhow::bail!("{at}: appears more than once; name each SKU once");
        }
    }
    if !(1..=MAX_ADJUST_DELTA).contains(&i64::from(quantity)) {
        anyhow::bail!(
            "--quantity must be 1 to {MAX_ADJUST_DELTA} units (what the seed adds to each SKU; \
             the API's largest adjustment), got {quantity}"
        );
    }
    check_reason(reason).map_err(|p| anyhow::anyhow!("--reason: {}", p.detail))?;
    if let Some(w) = warehouse {
        check_warehouse("warehouse", w)
            .map_err(|p| anyhow::anyhow!("--warehouse: {}", p.detail))?;
    }
    Ok(())
}

/// Adds `quantity` units of each SKU to stock on hand in the default warehouse (an
/// `AdjustStock` command per SKU, with `reason`), waiting until Kafka has each command.
pub async fn inventory(
    config: &KeelConfig,
    skus: &[String],
    quantity: i32,
    reason: &str,
) -> anyhow::Result<()> {
    inventory_in(config, skus, quantity, reason, None).await
}

/// [`inventory`] into `warehouse` (`None`: the default warehouse).
pub async fn inventory_in(
    config: &KeelConfig,
    skus: &[String],
    quantity: i32,
    reason: &str,
    warehouse: Option<&str>,
) -> anyhow::Result<()> {
    crate::run::ensure_topics(config).await?;
    let codec = Codec::new(config.registry.clone())?;
    let topic = config.topics.names().name(topics::INVENTORY_COMMANDS);
    let api = keel_ingest_api::ApiConfig::default();
    let overrides: Vec<(String, String)> = config
        .kafka
        .client
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let producer =
        keel_ingest_api::command_producer(&config.kafka.bootstrap_servers, &api, &overrides)?;
    let now = chrono::Utc::now().timestamp_millis();
    for sku in skus {
        let command_id = uuid::Uuid::new_v4().to_string();
        let command = InventoryCommand {
            command_id: command_id.clone(),
            sku: sku.clone(),
            issued_at: now,
            causation_id: "keel inventory seed".to_owned(),
            correlation_id: command_id,
            command: InventoryCommandBody::Adjust(AdjustStock {
                delta: quantity,
                reason: reason.to_owned(),
                warehouse: warehouse.map(str::to_owned),
            }),
        };
        let payload = codec.encode_to(&topic, &command).await?;
        keel_ingest_api::kafka::produce(&producer, &topic, sku, &payload, Duration::from_secs(10))
            .await
            .with_context(|| format!("sending the stock of {sku} to {topic}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(skus: &[&str], quantity: i32, reason: &str, warehouse: Option<&str>) -> String {
        let skus: Vec<String> = skus.iter().map(|s| (*s).to_owned()).collect();
        match check_inventory_args(&skus, quantity, reason, warehouse) {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn seed_arguments_follow_the_apis_rules_and_name_the_flag() {
        assert_eq!(check(&["MUG-1", "PLATE-1"], 10, "seed", None), "");
        assert_eq!(check(&["MUG-1"], 1_000_000, "seed", Some("WH-2")), "");
        for (skus, quantity, reason, warehouse, flag) in [
            (&[""][..], 10, "seed", None, "--skus: SKU 1 of 1"),
            (&["A", "", "B"], 10, "seed", None, "--skus: SKU 2 of 3"),
            (&["WS X"], 10, "seed", None, "--skus"),
            (&["A", "A"], 10, "seed", None, "more than once"),
            (&[], 10, "seed", None, "--skus"),
            (&["A"], 0, "seed", None, "--quantity"),
            (&["A"], -5, "seed", None, "--quantity"),
            (&["A"], 1_000_001, "seed", None, "--quantity"),
            (&["A"], 1, "oversold", None, "--reason"),
            (&["A"], 1, " ", None, "--reason"),
            (&["A"], 1, "seed", Some("WH 1"), "--warehouse"),
        ] {
            let error = check(skus, quantity, reason, warehouse);
            assert!(
                error.contains(flag),
                "{skus:?} {quantity} {reason:?}: {error:?}"
            );
        }
    }
}
