//! The cart service's tables (`carts`, `cart_items`): seeding them for demos and tests
//! ([`seed_cart`], `keel carts seed`) and reading one cart ([`load_cart`], for the ingest API).

use sqlx::MySqlPool;

use super::{Error, Result, sql};

/// A cart as stored: who owns it, its currency, whether it was ordered, and its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cart {
    pub cart_id: String,
    pub customer_id: String,
    /// ISO 4217, the currency of every unit price.
    pub currency: String,
    pub status: CartStatus,
    /// Ordered by SKU.
    pub items: Vec<CartItem>,
}

/// `carts.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CartStatus {
    Open,
    /// An order was placed from it (set by the order sink on `PENDING`).
    Ordered,
}

/// One `cart_items` row; the unit price is in the cart's currency, minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartItem {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

/// Create or replace cart `cart_id` as `OPEN` with exactly `items` (`(sku, quantity, unit price
/// in minor units)`), in one transaction. Errors: [`Error::InvalidCart`] for an id or SKU that
/// is empty or longer than 64 characters, a currency that is not three upper-case letters, a
/// quantity below 1, a negative price or a SKU listed twice; [`Error::Sql`].
pub async fn seed_cart<S: AsRef<str>>(
    pool: &MySqlPool,
    cart_id: &str,
    customer_id: &str,
    currency: &str,
    items: &[(S, i32, i64)],
) -> Result<()> {
    let mut problems = Vec::new();
    for (what, value) in [("cart id", cart_id), ("customer id", customer_id)] {
        if value.is_empty() || value.chars().count() > 64 {
            problems.push(format!("{what} must be 1 to 64 characters, got {value:?}"));
        }
    }
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        problems.push(format!(
            "currency must be an ISO 4217 code like EUR, got {currency:?}"
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (sku, quantity, price) in items {
        let sku = sku.as_ref();
        if sku.is_empty() || sku.chars().count() > 64 {
            problems.push(format!("sku must be 1 to 64 characters, got {sku:?}"));
        }
        if !seen.insert(sku) {
            problems.push(format!("sku {sku:?} is listed twice"));
        }
        if *quantity < 1 {
            problems.push(format!(
                "sku {sku:?}: quantity must be 1 or more, got {quantity}"
            ));
        }
        if *price < 0 {
            problems.push(format!(
                "sku {sku:?}: unit price must not be negative, got {price}"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(Error::InvalidCart {
            cart_id: cart_id.to_owned(),
            reason: problems.join("; "),
        });
    }
    let mut tx = pool.begin().await.map_err(sql("beginning a transaction"))?;
    sqlx::query(
        "INSERT INTO carts (cart_id, customer_id, currency, status, updated_at) \
         VALUES (?, ?, ?, 'OPEN', UTC_TIMESTAMP(3)) ON DUPLICATE KEY UPDATE \
         customer_id = VALUES(customer_id), currency = VALUES(currency), status = 'OPEN', \
         updated_at = VALUES(updated_at)",
    )
    .bind(cart_id)
    .bind(customer_id)
    .bind(currency)
    .execute(&mut *tx)
    .await
    .map_err(sql("writing the cart"))?;
    sqlx::query("DELETE FROM cart_items WHERE cart_id = ?")
        .bind(cart_id)
        .execute(&mut *tx)
        .await
        .map_err(sql("clearing the cart items"))?;
    for (sku, quantity, price) in items {
        sqlx::query(
            "INSERT INTO cart_items (cart_id, sku, quantity, unit_price_minor) VALUES (?, ?, ?, ?)",
        )
        .bind(cart_id)
        .bind(sku.as_ref())
        .bind(quantity)
        .bind(price)
        .execute(&mut *tx)
        .await
        .map_err(sql("writing a cart item"))?;
    }
    tx.commit().await.map_err(sql("committing the cart"))?;
    Ok(())
}

/// Cart `cart_id` with its items (`None`: no such cart). Errors: [`Error::Sql`],
/// [`Error::CorruptRow`] for a status other than `OPEN`/`ORDERED`.
pub async fn load_cart(pool: &MySqlPool, cart_id: &str) -> Result<Option<Cart>> {
    let mut tx = pool.begin().await.map_err(sql("beginning a read"))?;
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT customer_id, currency, status FROM carts WHERE cart_id = ?")
            .bind(cart_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(sql("reading the cart"))?;
    let Some((customer_id, currency, status)) = row else {
        return Ok(None);
    };
    let items: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT sku, quantity, unit_price_minor FROM cart_items WHERE cart_id = ? ORDER BY sku",
    )
    .bind(cart_id)
    .fetch_all(&mut *tx)
    .await
    .map_err(sql("reading the cart items"))?;
    tx.commit().await.map_err(sql("ending a read"))?;
    let status = match status.as_str() {
        "OPEN" => CartStatus::Open,
        "ORDERED" => CartStatus::Ordered,
        other => {
            return Err(Error::CorruptRow {
                table: "carts",
                detail: format!("cart {cart_id} has status {other:?}"),
            });
        }
    };
    Ok(Some(Cart {
        cart_id: cart_id.to_owned(),
        customer_id,
        currency,
        status,
        items: items
            .into_iter()
            .map(|(sku, quantity, unit_price_minor)| CartItem {
                sku,
                quantity,
                unit_price_minor,
            })
            .collect(),
    }))
}

/// Claims `cart_id` for `order_id` (table `order_cart_claims`). `Ok(None)`: the cart is this
/// order's (claimed now, or earlier by the same order — a retry); `Ok(Some(other))`: another
/// order claimed it first. Concurrent claims are decided by the primary key.
pub async fn claim_cart(pool: &MySqlPool, cart_id: &str, order_id: &str) -> Result<Option<String>> {
    let inserted = sqlx::query(
        "INSERT INTO order_cart_claims (cart_id, order_id, claimed_at) \
         VALUES (?, ?, UTC_TIMESTAMP(3))",
    )
    .bind(cart_id)
    .bind(order_id)
    .execute(pool)
    .await;
    match inserted {
        Ok(_) => return Ok(None),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
        Err(e) => return Err(sql("claiming a cart")(e)),
    }
    let owner: Option<String> =
        sqlx::query_scalar("SELECT order_id FROM order_cart_claims WHERE cart_id = ?")
            .bind(cart_id)
            .fetch_optional(pool)
            .await
            .map_err(sql("reading a cart's claim"))?;
    Ok(owner.filter(|o| o != order_id))
}
