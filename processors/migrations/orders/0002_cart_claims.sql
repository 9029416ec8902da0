-- Which order claimed each cart, written by the ingest API before it sends the place-order
-- command: one cart, one order, whatever the Idempotency-Keys (the cart service's `carts.status`
-- only turns ORDERED once the order sink has written the order, too late to stop a second
-- request). A retry of the claiming request carries the same order id and passes.
CREATE TABLE IF NOT EXISTS order_cart_claims (
  cart_id    VARCHAR(64) NOT NULL,
  order_id   VARCHAR(64) NOT NULL,
  claimed_at DATETIME(3) NOT NULL,
  PRIMARY KEY (cart_id)
) ENGINE = InnoDB;
