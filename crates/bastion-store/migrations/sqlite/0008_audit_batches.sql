-- The audit trail is kept in batches: one row per batch of records
-- written, each record a line of `records` ("<seq> <body> <mac hex>", see
-- the bastion-audit crate). A row per record cost the store an insert into
-- each of its indexes for every call; a row per batch pays that once for
-- hundreds of records. `first_seq`/`last_seq` and `ts_min`/`ts_max` bound
-- the batch's numbers and times (microseconds since the epoch); a batch
-- spans at most a second. Verification checks both against the records.
CREATE TABLE audit_batches (
    chain     TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    ts_min    INTEGER NOT NULL,
    ts_max    INTEGER NOT NULL,
    records   TEXT NOT NULL,
    PRIMARY KEY (chain, first_seq)
);
CREATE INDEX audit_batches_ts ON audit_batches (ts_min, chain, first_seq);

-- Records kept so far become batches of one.
INSERT INTO audit_batches (chain, first_seq, last_seq, ts_min, ts_max, records)
    SELECT chain, seq, seq, ts, ts, seq || ' ' || body || ' ' || lower(hex(mac)) FROM audit_records;
DROP TABLE audit_records;
