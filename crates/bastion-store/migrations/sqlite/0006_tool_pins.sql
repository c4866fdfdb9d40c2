-- Pins of what servers list (tools and prompts), by server name and item
-- name: the hash of the definition an operator or first sight approved, the
-- definition seen last, and what that makes of the item. Definitions are
-- kept as canonical JSON so that an operator can see what changed.
CREATE TABLE tool_pins (
    server              TEXT NOT NULL,
    kind                TEXT NOT NULL CHECK (kind IN ('tool', 'prompt')),
    name                TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('pinned', 'pending', 'quarantined', 'rejected')),
    reason              TEXT,
    approved_hash       TEXT,          -- SHA-256 (hex) of the approved definition
    approved_definition TEXT,
    approved_by         TEXT,          -- 'auto' (first sight) or the operator
    seen_hash           TEXT NOT NULL, -- the definition seen last
    seen_definition     TEXT NOT NULL,
    version             INTEGER NOT NULL,   -- bumped on every change (compare and set)
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    PRIMARY KEY (server, kind, name)
);
-- Gateways follow changes made by others (the CLI, replicas).
CREATE INDEX tool_pins_updated ON tool_pins (updated_at);
