-- By expiry: start-up loads only unexpired keys into memory, and retention takes the oldest
-- expired authorizations first; neither may scan the whole history.
CREATE INDEX payments_by_expiry ON payments (valid_before);

-- The "does a payment hold this key" look-up of every /verify and /settle. The unique B-tree on
-- the four text columns is ~260 bytes an entry and outgrows the buffer cache with history; a hash
-- index on the random nonce is a few bytes an entry and one bucket page a look-up.
CREATE INDEX payments_by_nonce ON payments USING hash (nonce);
