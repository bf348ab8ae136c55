-- Tessera schema, version 9 (SQLite): the expunge log and mailbox contents indexed by MODSEQ.
--
-- Every IMAP session that syncs a mailbox asks what was expunged since the MODSEQ it knows
-- (RFC 7162 VANISHED, and the shared mailbox index catching up). The log keeps every expunged
-- UID, so without this index that question read the mailbox's whole log each time.
CREATE INDEX expunged_modseq ON expunged(mailbox_id, modseq);

-- Likewise what changed since a MODSEQ (flags, new messages): without this, each sync of a
-- 100,000-message mailbox after a flag change stepped every row of it.
CREATE INDEX mailbox_messages_modseq ON mailbox_messages(mailbox_id, modseq);
