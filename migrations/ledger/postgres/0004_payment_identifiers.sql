-- payment-identifier: a client's id for one payment, bound to the first payload that carried it
-- (the same id with another payload is a conflict), within one merchant's scope (network and
-- payTo), so two merchants' ids never collide. A valid /verify answer is kept for retries.
CREATE TABLE payment_identifiers (
    scope TEXT NOT NULL,
    id TEXT NOT NULL,
    payload_digest TEXT NOT NULL,
    verify_answer TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, id)
);
CREATE INDEX payment_identifiers_by_age ON payment_identifiers (created_at);
