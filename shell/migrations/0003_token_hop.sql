-- Which voice-webhook hop issued the call's current token: 0 for the call's first webhook, n for
-- the n-th redirect after a drain. A CallSid gets a new token only from a higher hop, so a
-- replayed webhook (same CallSid, same hop) issues none.
ALTER TABLE stream_tokens ADD COLUMN hop BIGINT NOT NULL DEFAULT 0;
