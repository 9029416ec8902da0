-- The ingest API purges expired Idempotency-Keys of the payment routes
-- (`[api].idempotency_retention_hours`, ingest-api/src/idempotency/retention/payments.rs) in
-- batches that walk `created_at` from the oldest row (`... ORDER BY created_at LIMIT n`): this
-- index keeps each batch a short range scan instead of a scan of the whole table.
CREATE INDEX api_payment_requests_created ON api_payment_requests (created_at);
