-- Settlement on a live chain: block hashes as reorg evidence, per-item retry with backoff, the
-- cost of each transaction (OP Stack L1 fee), and replacement attempts sharing a nonce.
ALTER TABLE payments ADD COLUMN block_hash TEXT;
-- Not picked by the batcher before this time (ms): an item that could not be judged now.
ALTER TABLE payments ADD COLUMN not_before INTEGER NOT NULL DEFAULT 0;
-- Times it went back to the queue after being in a signed transaction.
ALTER TABLE payments ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
CREATE INDEX payments_settled_window ON payments (chain_id, state, block_number);

ALTER TABLE transactions ADD COLUMN block_hash TEXT;
ALTER TABLE transactions ADD COLUMN l1_fee TEXT;
CREATE INDEX transactions_by_wallet ON transactions (chain_id, wallet, nonce);
