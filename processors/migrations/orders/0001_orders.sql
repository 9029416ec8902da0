-- The orders side in MariaDB/MySQL: the cart service's tables (shipped here for demos and tests),
-- the order sink's tables and outbox, and the ingest API's idempotency keys.
-- Times are UTC, DATETIME(3) (milliseconds). Money is BIGINT minor units with an ISO 4217 code.

-- Owned by the cart service of the earlier wave; Debezium streams them to the saga.
CREATE TABLE IF NOT EXISTS carts (
  cart_id     VARCHAR(64)  NOT NULL,
  customer_id VARCHAR(64)  NOT NULL,
  currency    CHAR(3)      NOT NULL,
  status      VARCHAR(16)  NOT NULL DEFAULT 'OPEN',
  updated_at  DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  PRIMARY KEY (cart_id),
  CONSTRAINT carts_status CHECK (status IN ('OPEN', 'ORDERED'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS cart_items (
  cart_id          VARCHAR(64)  NOT NULL,
  sku              VARCHAR(64)  NOT NULL,
  quantity         INT          NOT NULL,
  unit_price_minor BIGINT       NOT NULL,
  PRIMARY KEY (cart_id, sku),
  CONSTRAINT cart_items_quantity CHECK (quantity > 0),
  CONSTRAINT cart_items_price CHECK (unit_price_minor >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- One row per order, written by the order sink from the saga's decisions.
-- last_sequence: the saga step of the decision applied last; a decision whose sequence is not
-- greater changes nothing, so a status never goes backwards.
CREATE TABLE IF NOT EXISTS orders (
  order_id          VARCHAR(64)   NOT NULL,
  customer_id       VARCHAR(64)   NOT NULL,
  cart_id           VARCHAR(64)   NOT NULL,
  status            VARCHAR(16)   NOT NULL,
  reason            VARCHAR(64)   NULL,
  detail            VARCHAR(1024) NULL,
  total_minor       BIGINT        NOT NULL,
  currency          CHAR(3)       NOT NULL,
  ship_name         VARCHAR(200)  NULL,
  ship_line1        VARCHAR(200)  NULL,
  ship_line2        VARCHAR(200)  NULL,
  ship_city         VARCHAR(100)  NULL,
  ship_postal_code  VARCHAR(32)   NULL,
  ship_country      CHAR(2)       NULL,
  payment_method    VARCHAR(255)  NOT NULL,
  last_sequence     INT           NOT NULL,
  created_at        DATETIME(3)   NOT NULL,
  updated_at        DATETIME(3)   NOT NULL,
  PRIMARY KEY (order_id),
  KEY orders_customer (customer_id, created_at),
  KEY orders_cart (cart_id),
  CONSTRAINT orders_status CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED', 'REJECTED'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS order_items (
  order_id         VARCHAR(64) NOT NULL,
  line_no          INT         NOT NULL,
  sku              VARCHAR(64) NOT NULL,
  quantity         INT         NOT NULL,
  unit_price_minor BIGINT      NOT NULL,
  currency         CHAR(3)     NOT NULL,
  PRIMARY KEY (order_id, line_no)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- The timeline: one row per applied decision. decision_id is the idempotency key: a replayed
-- decision inserts nothing (and the sink then skips it whole). source_*: the Kafka coordinates
-- of the input record that caused the decision.
CREATE TABLE IF NOT EXISTS order_status_history (
  decision_id      VARCHAR(64)   NOT NULL,
  order_id         VARCHAR(64)   NOT NULL,
  sequence         INT           NOT NULL,
  from_status      VARCHAR(16)   NULL,
  to_status        VARCHAR(16)   NOT NULL,
  reason           VARCHAR(64)   NULL,
  detail           VARCHAR(1024) NULL,
  decided_at       DATETIME(3)   NOT NULL,
  source_topic     VARCHAR(255)  NOT NULL,
  source_partition INT           NOT NULL,
  source_offset    BIGINT        NOT NULL,
  PRIMARY KEY (decision_id),
  KEY order_status_history_order (order_id, sequence)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- The outbox (see the outbox convention): id is the event id (Kafka header keel.event.id),
-- aggregate_id the Kafka key, event_type the destination topic, payload the Confluent-framed
-- Avro value, written in the same transaction as the state change.
CREATE TABLE IF NOT EXISTS order_outbox (
  id           CHAR(36)     NOT NULL,
  aggregate_id VARCHAR(64)  NOT NULL,
  event_type   VARCHAR(128) NOT NULL,
  payload      LONGBLOB     NOT NULL,
  status       VARCHAR(8)   NOT NULL DEFAULT 'PENDING',
  created_at   DATETIME(3)  NOT NULL,
  sent_at      DATETIME(3)  NULL,
  PRIMARY KEY (id),
  KEY order_outbox_pending (status, created_at),
  KEY order_outbox_aggregate (aggregate_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- The ingest API's Idempotency-Key records. scope: whose key (a hash of the bearer token, or
-- 'anonymous'; 'auto' for requests without a key, keyed by order id). A row with
-- response_status NULL is a request in progress; 503 a failed attempt that a retry with the
-- same key and body may take over (same order id and command id).
CREATE TABLE IF NOT EXISTS api_idempotency (
  scope           VARCHAR(128) NOT NULL,
  idem_key        VARCHAR(255) NOT NULL,
  request_hash    CHAR(64)     NOT NULL,
  order_id        VARCHAR(64)  NOT NULL,
  command_id      CHAR(36)     NOT NULL,
  response_status INT          NULL,
  response_body   TEXT         NULL,
  created_at      DATETIME(3)  NOT NULL,
  PRIMARY KEY (scope, idem_key),
  KEY api_idempotency_order (order_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
