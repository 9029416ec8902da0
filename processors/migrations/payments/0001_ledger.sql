-- The payment ledger (PostgreSQL). Amounts are BIGINT minor units, never floats.
-- Written only by the payment service (processors/src/payment/ledger.rs); every state change
-- and its outbox row are one transaction.

CREATE TABLE payments (
    payment_id      TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL UNIQUE,
    customer_id     TEXT NOT NULL,
    amount_minor    BIGINT NOT NULL CHECK (amount_minor > 0),
    currency        CHAR(3) NOT NULL,
    payment_method  TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('INTENT', 'AUTHORIZING', 'AUTHORIZED',
                        'CAPTURED', 'VOIDED', 'REFUNDED', 'PARTIALLY_REFUNDED', 'FAILED')),
    psp_reference   TEXT,
    captured_minor  BIGINT NOT NULL DEFAULT 0 CHECK (captured_minor >= 0),
    refunded_minor  BIGINT NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT refunds_within_capture CHECK (refunded_minor <= captured_minor),
    CONSTRAINT capture_within_amount CHECK (captured_minor <= amount_minor)
);
CREATE INDEX payments_psp_reference ON payments (psp_reference);

-- One row per call to the PSP (and per PSP callback). The idempotency key is what the PSP
-- sees: a replay after a crash reuses the row and the key, so the PSP answers it from its
-- idempotency store instead of charging twice.
CREATE TABLE payment_attempts (
    attempt_id      TEXT PRIMARY KEY,
    payment_id      TEXT NOT NULL REFERENCES payments (payment_id),
    command_id      TEXT UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('AUTHORIZE', 'CAPTURE', 'VOID', 'REFUND')),
    outcome         TEXT NOT NULL CHECK (outcome IN ('PENDING', 'SUCCEEDED', 'DECLINED',
                        'FAILED', 'TIMEOUT')),
    decline_code    TEXT,
    latency_ms      BIGINT,
    psp_event_id    TEXT UNIQUE,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    -- Set once the reconciler learned the PSP's real answer to a TIMEOUT.
    reconciled_at   TIMESTAMPTZ
);
CREATE INDEX payment_attempts_payment ON payment_attempts (payment_id);
CREATE INDEX payment_attempts_unreconciled ON payment_attempts (started_at)
    WHERE outcome = 'TIMEOUT' AND reconciled_at IS NULL;

CREATE TABLE refunds (
    refund_id       TEXT PRIMARY KEY,
    payment_id      TEXT NOT NULL REFERENCES payments (payment_id),
    amount_minor    BIGINT NOT NULL CHECK (amount_minor > 0),
    reason          TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('PENDING', 'SUCCEEDED', 'FAILED', 'REFUSED')),
    -- Why a refund was refused or failed (e.g. refund_exceeds_captured).
    failure_code    TEXT,
    psp_reference   TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX refunds_payment ON refunds (payment_id);

-- Commands applied: a replayed command (same id) changes nothing.
CREATE TABLE processed_commands (
    command_id      TEXT PRIMARY KEY,
    processed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The outbox (see the outbox convention): written in the same transaction as the change,
-- published by the relay (processors/src/outbox) or Debezium.
CREATE TABLE payment_outbox (
    id              VARCHAR(36) PRIMARY KEY,
    aggregate_id    TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         BYTEA NOT NULL,
    status          VARCHAR(8) NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SENT')),
    -- clock_timestamp(), not now(): rows of one transaction keep their order.
    created_at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    sent_at         TIMESTAMPTZ
);
CREATE INDEX payment_outbox_pending ON payment_outbox (created_at, id) WHERE status = 'PENDING';
