-- Refunds accepted but not yet confirmed by the PSP reserve their amount on the payment row
-- itself, so the reservation is read and written under the payment's row lock. (Summing the
-- PENDING refunds inside the locking SELECT read the snapshot from before the lock wait under
-- READ COMMITTED, and two concurrent refunds could both be reserved.) The database enforces
-- the sum: refunded + reserved never exceeds the capture.
ALTER TABLE payments ADD COLUMN refund_reserved_minor BIGINT NOT NULL DEFAULT 0
    CONSTRAINT refund_reserved_not_negative CHECK (refund_reserved_minor >= 0);

-- Existing rows: the reservation is the sum of their PENDING refunds.
UPDATE payments p SET refund_reserved_minor = r.reserved
FROM (SELECT payment_id, SUM(amount_minor)::BIGINT AS reserved FROM refunds
      WHERE status = 'PENDING' GROUP BY payment_id) r
WHERE r.payment_id = p.payment_id;

-- NOT VALID, then validated only when every existing row satisfies it: a ledger that already
-- holds an over-reservation (the race above) still migrates, and the constraint holds for every
-- row written from now on.
ALTER TABLE payments ADD CONSTRAINT refunds_and_reservations_within_capture
    CHECK (refunded_minor + refund_reserved_minor <= captured_minor) NOT VALID;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM payments
                   WHERE refunded_minor + refund_reserved_minor > captured_minor) THEN
        ALTER TABLE payments VALIDATE CONSTRAINT refunds_and_reservations_within_capture;
    END IF;
END
$$;
