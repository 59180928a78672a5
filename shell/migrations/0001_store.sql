-- Handset's durable state. One schema for SQLite and PostgreSQL: TEXT and BIGINT only,
-- times as milliseconds since the Unix epoch (every instance's wall clock), no
-- dialect-specific types, so the same file migrates both.

-- Single-use stream tokens: issued by the voice webhook, redeemed by the Media Streams
-- WebSocket (possibly on another instance). Only a SHA-256 of the token is kept.
CREATE TABLE stream_tokens (
    call_sid TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    account_sid TEXT NOT NULL,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    issued_unix_ms BIGINT NOT NULL,
    expires_unix_ms BIGINT NOT NULL,
    redeemed_unix_ms BIGINT
);
CREATE INDEX stream_tokens_expiry ON stream_tokens (expires_unix_ms);

-- One row per call that reached a media stream: where it ran and why it ended.
CREATE TABLE calls (
    call_sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    stream_sid TEXT NOT NULL,
    instance TEXT NOT NULL,
    started_unix_ms BIGINT NOT NULL,
    ended_unix_ms BIGINT,
    end_reason TEXT
);

-- Twilio call-status callbacks. A retried callback is the same row (the key), stored once.
-- sequence_number is -1 when Twilio sent none.
CREATE TABLE call_status_events (
    call_sid TEXT NOT NULL,
    call_status TEXT NOT NULL,
    sequence_number BIGINT NOT NULL,
    duration_secs BIGINT,
    received_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (call_sid, call_status, sequence_number)
);

-- Media Streams status callbacks (`<Stream statusCallback>`).
CREATE TABLE stream_status_events (
    stream_sid TEXT NOT NULL,
    stream_event TEXT NOT NULL,
    call_sid TEXT NOT NULL,
    stream_error TEXT,
    received_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (stream_sid, stream_event)
);

-- Recording callbacks, and the job queue that fetches and transcribes them.
-- state: pending → fetched → transcribed, or failed. A job is claimed by writing
-- lease_owner and lease_until_unix_ms; an expired lease (a crashed instance) makes the job
-- claimable again. While not leased, lease_until_unix_ms is the earliest next attempt.
CREATE TABLE recordings (
    recording_sid TEXT PRIMARY KEY,
    call_sid TEXT NOT NULL,
    account_sid TEXT NOT NULL,
    recording_url TEXT NOT NULL,
    duration_secs BIGINT,
    digits TEXT,
    received_unix_ms BIGINT NOT NULL,
    state TEXT NOT NULL,
    claims BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until_unix_ms BIGINT,
    file TEXT,
    transcript TEXT,
    error TEXT,
    updated_unix_ms BIGINT NOT NULL
);
CREATE INDEX recordings_queue ON recordings (state, lease_until_unix_ms);
