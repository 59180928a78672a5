-- Where a call was transferred when its agent ended it with `transfer`, and how that went
-- (`DialCallStatus` from the `<Dial action>`).
ALTER TABLE calls ADD COLUMN transfer_to TEXT;
ALTER TABLE calls ADD COLUMN transfer_caller_id TEXT;
ALTER TABLE calls ADD COLUMN transfer_timeout_s BIGINT;
ALTER TABLE calls ADD COLUMN transfer_status TEXT;
