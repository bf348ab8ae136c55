-- Tessera schema, version 4 (SQLite): outbound delivery bookkeeping (issue 8).
--
-- `dsn_sent`: a failed recipient's failure DSN went out (or none was wanted: null sender,
-- NOTIFY=NEVER). The worker records a failure first and marks the DSN sent after it was
-- delivered or queued, so a crash in between sends it again rather than never.
-- `delay_notified`: the sender got the one optional "delayed" notice for this message.
ALTER TABLE queue_recipients ADD COLUMN dsn_sent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue ADD COLUMN delay_notified INTEGER NOT NULL DEFAULT 0;
