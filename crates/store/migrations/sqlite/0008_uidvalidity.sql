-- Tessera schema, version 8 (SQLite): the last UIDVALIDITY given.
--
-- RFC 3501 §2.3.1.1: a mailbox deleted and created again must get a UIDVALIDITY it never had.
-- The largest value among existing mailboxes is not enough: deleting the mailbox that held it
-- and recreating it within the same second gave the same value again. The counter below only
-- grows.
CREATE TABLE counters (
    name   TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO counters (name, value)
    SELECT 'uidvalidity', COALESCE(MAX(uidvalidity), 0) FROM mailboxes;
