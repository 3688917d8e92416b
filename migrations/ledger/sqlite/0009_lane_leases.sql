-- Each gas wallet's lane has one writer among the nodes sharing this ledger: the holder of its
-- lease. `fence` grows at every change of holder, and a transaction row is written only under
-- the current fence (a node that lost its lease can never record, so never sign, a transaction).
CREATE TABLE lane_leases (
    chain_id BIGINT NOT NULL,
    wallet TEXT NOT NULL,
    holder TEXT NOT NULL,
    fence BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (chain_id, wallet)
);
