-- The ingest API purges expired Idempotency-Keys (`[api].idempotency_retention_hours`,
-- ingest-api/src/idempotency/retention.rs) with `DELETE ... WHERE created_at < ? ORDER BY
-- created_at LIMIT n`: this index keeps each batch a short range scan instead of a scan (and
-- lock) of the whole table.
CREATE INDEX api_idempotency_created ON api_idempotency (created_at);
