-- Payments keyed by the EIP-3009 natural key; every state change is also an event row.
CREATE TABLE payments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chain_id INTEGER NOT NULL,
    asset TEXT NOT NULL,
    payer TEXT NOT NULL,
    nonce TEXT NOT NULL,
    pay_to TEXT NOT NULL,
    amount TEXT NOT NULL,
    valid_before INTEGER NOT NULL,
    payload_digest TEXT NOT NULL,
    x402_version INTEGER NOT NULL,
    network TEXT NOT NULL,
    request_json TEXT NOT NULL,
    deploy_target TEXT,
    deploy_calldata TEXT,
    transfer_calldata TEXT NOT NULL,
    state TEXT NOT NULL,
    fail_reason TEXT,
    fail_message TEXT,
    batch_id INTEGER,
    tx_hash TEXT,
    block_number INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (chain_id, asset, payer, nonce)
);
CREATE INDEX payments_by_state ON payments (chain_id, state, id);
CREATE INDEX payments_by_batch ON payments (batch_id);

CREATE TABLE payment_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    detail TEXT,
    at INTEGER NOT NULL
);
CREATE INDEX payment_events_by_payment ON payment_events (payment_id);

CREATE TABLE batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chain_id INTEGER NOT NULL,
    item_count INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Written (raw bytes and hash included) before the transaction is broadcast.
CREATE TABLE transactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id INTEGER NOT NULL,
    chain_id INTEGER NOT NULL,
    wallet TEXT NOT NULL,
    nonce INTEGER NOT NULL,
    raw_tx TEXT NOT NULL,
    tx_hash TEXT NOT NULL,
    gas_limit INTEGER NOT NULL,
    max_fee_per_gas TEXT NOT NULL,
    max_priority_fee_per_gas TEXT NOT NULL,
    status TEXT NOT NULL,
    gas_used INTEGER,
    effective_gas_price TEXT,
    block_number INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX transactions_by_status ON transactions (chain_id, status);
CREATE UNIQUE INDEX transactions_by_hash ON transactions (tx_hash);
