-- The ingest API's Idempotency-Keys of the payment routes (POST /payments, POST
-- /payments/{id}/confirm, POST /payments/{id}/refund). Not ledger state: what the API answered
-- to a key, so a retry gets the first answer and the same key with another body is refused
-- (422) even before the payment service has applied the first command. Written only by
-- ingest-api/src/payments.rs; the payment service never reads it.
CREATE TABLE api_payment_requests (
    -- `anonymous` or `bearer:<sha256 of the token>`.
    scope           TEXT NOT NULL,
    -- The operation and its resource, e.g. `POST /payments` or `POST /payments/pay-1/refund`.
    route           TEXT NOT NULL,
    idem_key        TEXT NOT NULL,
    -- sha256 (hex) of the route and the canonical body.
    request_hash    CHAR(64) NOT NULL,
    payment_id      TEXT NOT NULL,
    order_id        TEXT NOT NULL,
    command_id      TEXT NOT NULL,
    -- NULL while the request is handled; the answer once Kafka confirmed its command.
    response_status INT,
    response_body   TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, route, idem_key)
);
-- One intent per payment id, whatever the keys: a second POST /payments for the same order
-- under another key conflicts here.
CREATE UNIQUE INDEX api_payment_requests_intent ON api_payment_requests (payment_id)
    WHERE route = 'POST /payments';
