-- One row per instance, rewritten every few seconds: a write that must commit for the
-- instance to report its store healthy (a full disk refuses writes while reads still work).
CREATE TABLE store_probe (
    instance TEXT PRIMARY KEY,
    probed_unix_ms BIGINT NOT NULL
);
