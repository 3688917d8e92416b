-- Permit2 payments: how a payment moves (`eip3009`, `permit2` through the exact proxy, `upto`
-- through the upto proxy), which contract its calldata goes to (NULL: the token, as for every
-- earlier row), and the gas wallet that must send it (upto binds one; NULL: any lane).
ALTER TABLE payments ADD COLUMN method TEXT NOT NULL DEFAULT 'eip3009';
ALTER TABLE payments ADD COLUMN call_target TEXT;
ALTER TABLE payments ADD COLUMN sender TEXT;
