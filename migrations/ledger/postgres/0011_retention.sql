-- By expiry: start-up loads only unexpired keys into memory, and retention takes the oldest
-- expired authorizations first; neither may scan the whole history.
CREATE INDEX payments_by_expiry ON payments (valid_before);
