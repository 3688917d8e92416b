-- API keys for /verify and /settle: only a hash of the secret is stored; each key may be limited to
-- some payTo addresses, a request rate and a daily settled amount. Revoked keys stay for the record.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    pay_to_allowlist TEXT NOT NULL,
    per_minute BIGINT,
    daily_amount TEXT,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
-- Which key settled a payment (NULL: a public node's anonymous caller), for the daily budget.
ALTER TABLE payments ADD COLUMN api_key TEXT;
CREATE INDEX payments_by_key ON payments (api_key, created_at);
