-- Tessera schema, version 11 (SQLite): the expunge log is bounded.
--
-- The log of expunged UIDs (RFC 7162 QRESYNC: what vanished since a MODSEQ) grew with every
-- expunge, for ever. Garbage collection now keeps the newest entries of each mailbox and
-- records in expunge_floor the highest MODSEQ it removed: the log holds every UID expunged
-- with a MODSEQ above expunge_floor. A client resyncing from below it is told every UID it
-- may know that is not in the mailbox.
ALTER TABLE mailboxes ADD COLUMN expunge_floor INTEGER NOT NULL DEFAULT 0;
