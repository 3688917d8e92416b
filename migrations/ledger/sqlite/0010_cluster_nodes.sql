-- The nodes settling on each chain of this ledger, by the last time each said it was alive. A lane
-- holder hands a lane over when it holds more than its fair share, ceil(lanes / live nodes), so
-- that the gas wallets spread over the nodes instead of staying with whichever started first.
CREATE TABLE cluster_nodes (
    chain_id BIGINT NOT NULL,
    node TEXT NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (chain_id, node)
);
