-- Tessera schema, version 10 (SQLite): \Recent survives a restart.
--
-- RFC 3501 §2.3.2: a message is \Recent only for the first read-write session told about it.
-- Which UIDs sessions were told about was kept in memory only, so after a restart the first
-- session saw every message of the mailbox as \Recent again. recent_uid is the highest UID a
-- session has claimed; sessions write it when they leave the mailbox. Existing mailboxes start
-- with every present message claimed.
ALTER TABLE mailboxes ADD COLUMN recent_uid INTEGER NOT NULL DEFAULT 0;
UPDATE mailboxes SET recent_uid = uidnext - 1;
