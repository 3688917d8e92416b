-- Dial, the embedded merchant: what it was paid for and what it delivered.

-- One receipt per payment (its EIP-3009 key): a replayed payment header finds it instead of buying twice.
CREATE TABLE dial_receipts (
    id BIGSERIAL PRIMARY KEY,
    payment_key TEXT NOT NULL UNIQUE,
    payer TEXT NOT NULL,
    route TEXT NOT NULL,
    amount TEXT NOT NULL,
    network TEXT NOT NULL,
    asset TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    tx_hash TEXT,
    provider_id TEXT,
    response_json TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX dial_receipts_by_payer ON dial_receipts (payer, id);

CREATE TABLE dial_messages (
    id BIGSERIAL PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL,
    sender TEXT,
    recipient TEXT NOT NULL,
    body TEXT NOT NULL,
    segments BIGINT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    receipt_id BIGINT,
    created_at BIGINT NOT NULL
);

CREATE TABLE dial_numbers (
    id BIGSERIAL PRIMARY KEY,
    phone_number TEXT NOT NULL UNIQUE,
    country TEXT NOT NULL,
    owner TEXT NOT NULL,
    provider TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    quota_period_start BIGINT NOT NULL,
    texts_used BIGINT NOT NULL,
    texts_quota BIGINT NOT NULL,
    receipt_id BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX dial_numbers_by_owner ON dial_numbers (owner, id);

CREATE TABLE dial_esims (
    id BIGSERIAL PRIMARY KEY,
    package_id TEXT NOT NULL,
    iccid TEXT NOT NULL UNIQUE,
    activation_code TEXT NOT NULL,
    receipt_id BIGINT,
    created_at BIGINT NOT NULL
);

CREATE TABLE dial_verifications (
    id BIGSERIAL PRIMARY KEY,
    verification_id TEXT NOT NULL UNIQUE,
    service TEXT NOT NULL,
    phone_number TEXT NOT NULL,
    status TEXT NOT NULL,
    receipt_id BIGINT,
    created_at BIGINT NOT NULL
);

-- SIWE nonces are single use: `used_at` is set by the one login that consumes it.
CREATE TABLE dial_siwe_nonces (
    nonce TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    chain_id BIGINT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

-- Bearer tokens are stored only as their hash.
CREATE TABLE dial_sessions (
    token_hash TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
