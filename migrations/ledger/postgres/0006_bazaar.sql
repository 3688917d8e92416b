-- The Bazaar catalogue: what resource servers declared in payments that settled, one row per
-- resource (HTTP: method and URL or route template; MCP: URL and tool), refreshed on every sighting.
CREATE TABLE bazaar_resources (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    resource TEXT NOT NULL,
    accepts TEXT NOT NULL,
    metadata TEXT NOT NULL,
    last_seen BIGINT NOT NULL
);
CREATE INDEX bazaar_resources_by_age ON bazaar_resources (kind, last_seen);
