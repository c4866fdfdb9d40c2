-- Call quotas: calls counted per user and window, for each period of a
-- quota. A window is named by its start, so that names of one period sort
-- by date: '2026-12-06' for a day, '2026-12' for a month. Past windows are
-- pruned. ("window" is quoted: it is a reserved word of PostgreSQL.)
CREATE TABLE quota_usage (
    user_name TEXT NOT NULL,
    period    TEXT NOT NULL,    -- 'day' or 'month'
    "window"  TEXT NOT NULL,
    calls     INTEGER NOT NULL,
    PRIMARY KEY (user_name, period, "window")
);

-- Lockdowns: calls refused on every server ('*') or on one, by name, until
-- lifted. Times here are microseconds since the epoch.
CREATE TABLE lockdowns (
    scope  TEXT PRIMARY KEY,    -- '*' (every server) or a server name
    reason TEXT,
    set_by TEXT,
    since  INTEGER NOT NULL
);

-- A version per topic ('keys', 'users', 'secrets', 'pins', 'lockdown'),
-- bumped in the same transaction as every write that other gateway
-- processes must see: they follow this table (SQLite) or its notifications
-- (PostgreSQL) to know what to read again.
CREATE TABLE changes (
    topic   TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
