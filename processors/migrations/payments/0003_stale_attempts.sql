-- A PSP message that arrives after the payment moved past it (a declined callback for a
-- captured payment, a second event for a decided authorization) is kept as an attempt for
-- audit, but it changed nothing: `stale` says so, and such attempts are neither failures nor
-- attempts in the metrics (`payment_failure_rate`) or in reports over the ledger.
ALTER TABLE payment_attempts ADD COLUMN stale BOOLEAN NOT NULL DEFAULT FALSE;
