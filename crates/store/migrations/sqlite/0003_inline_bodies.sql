-- Tessera schema, version 3 (SQLite): small message bodies live in the database.
--
-- Bodies up to 64 KiB (most mail) are stored here, keyed by the same SHA-256 content
-- address as the files under blobs/. They commit in the same transaction as the rows
-- that refer to them, so a batch of deliveries costs one WAL fsync in all, instead of
-- one more filesystem sync for the body files. Larger bodies stay files.
CREATE TABLE inline_blobs (
    hash  TEXT PRIMARY KEY,
    data  BLOB NOT NULL
);
