-- Tessera schema, version 7 (SQLite): no index on messages.blob_hash.
--
-- No query finds a message by its body's hash: a body is found from its message row (through
-- inline_blobs' own key), and garbage collection scans every row anyway. But each delivery
-- put a key at a random place in this index (a SHA-256 in hex), so every batch of deliveries
-- wrote one more page per message to the WAL and to the checkpoint: about 1.3 of the 7 pages
-- a 10 KB message costs (bench/smtp/README.md, 2026-11-29, 07:30-09:00 UTC).
DROP INDEX IF EXISTS messages_blob;
