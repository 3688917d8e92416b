-- Dial receives: inbound messages, owner webhooks, number lifecycle, verification codes, refunds.
-- (Versions are one sequence shared with migrations/ledger: both run on one database.)

-- Texts that arrived at a number Dial sold or rented, one row per provider message.
CREATE TABLE dial_inbound (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    provider TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    phone_number TEXT NOT NULL,
    sender TEXT NOT NULL,
    body TEXT NOT NULL,
    segments BIGINT NOT NULL,
    -- The number's owner (or the verification's payer) when it arrived: a later owner of a
    -- released number never sees it.
    owner TEXT,
    verification_id TEXT,
    received_at BIGINT NOT NULL,
    UNIQUE (provider, provider_id)
);
CREATE INDEX dial_inbound_by_owner ON dial_inbound (owner, id);

-- A number's life: active until expires_at, grace until released, then released at the provider.
ALTER TABLE dial_numbers ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
ALTER TABLE dial_numbers ADD COLUMN status_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE dial_numbers ADD COLUMN webhook_url TEXT;
ALTER TABLE dial_numbers ADD COLUMN webhook_failing_since BIGINT;
ALTER TABLE dial_numbers ADD COLUMN webhook_disabled_at BIGINT;

-- One signing secret per owner for webhook deliveries (needed in clear to sign; shown once).
CREATE TABLE dial_owner_secrets (
    owner TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- One delivery per inbound message and webhook URL; attempts are rows of their own.
CREATE TABLE dial_webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    inbound_id BIGINT NOT NULL,
    owner TEXT NOT NULL,
    phone_number TEXT NOT NULL,
    url TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (inbound_id, url)
);
CREATE INDEX dial_webhook_deliveries_due ON dial_webhook_deliveries (status, next_attempt_at);

CREATE TABLE dial_webhook_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id BIGINT NOT NULL,
    at BIGINT NOT NULL,
    http_status BIGINT,
    error TEXT,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX dial_webhook_attempts_by_delivery ON dial_webhook_attempts (delivery_id, id);

-- A verification rental: who paid, who may read it, its window and the code once it arrives.
ALTER TABLE dial_verifications ADD COLUMN owner TEXT;
ALTER TABLE dial_verifications ADD COLUMN read_token_hash TEXT;
ALTER TABLE dial_verifications ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE dial_verifications ADD COLUMN code TEXT;
ALTER TABLE dial_verifications ADD COLUMN message_text TEXT;
ALTER TABLE dial_verifications ADD COLUMN received_at BIGINT;
CREATE INDEX dial_verifications_by_number ON dial_verifications (phone_number, status);

-- A refund owed for work paid and not delivered, keyed by the payment (its receipt): at most one.
-- owed → signed (raw transaction stored before it is broadcast) → confirmed; a signed refund
-- whose nonce was taken by another transaction goes back to owed and is signed again.
CREATE TABLE dial_refunds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    receipt_id BIGINT NOT NULL UNIQUE,
    payer TEXT NOT NULL,
    amount TEXT NOT NULL,
    network TEXT NOT NULL,
    asset TEXT NOT NULL,
    reason TEXT NOT NULL,
    status TEXT NOT NULL,
    tx_hash TEXT,
    tx_nonce BIGINT,
    raw_tx TEXT,
    last_error TEXT,
    displaced_since BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX dial_refunds_by_status ON dial_refunds (status, id);
