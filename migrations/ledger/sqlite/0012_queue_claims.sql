-- Several nodes read one queue: a node's batcher claims the queued payments it is about to batch
-- (until claim_until, ms), so no other node batches and signs the same ones; a dead node's claims
-- lapse. A single node (SQLite) never claims.
ALTER TABLE payments ADD COLUMN claimed_by TEXT;
ALTER TABLE payments ADD COLUMN claim_until INTEGER NOT NULL DEFAULT 0;
