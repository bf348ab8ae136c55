-- Tessera schema, version 6 (SQLite): ACME state (RFC 8555).
--
-- One account per directory URL (the CA), kept as instant-acme's credentials JSON (account URL
-- and private key). One row per certificate Tessera orders: the mail host, and one per hosted
-- domain covering the names clients use. The current chain and key are kept here so a restart
-- serves them at once; the last attempt's outcome feeds `tessera cert status`.
CREATE TABLE acme_accounts (
    directory    TEXT PRIMARY KEY,
    credentials  TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);

CREATE TABLE acme_certificates (
    -- The certificate's first name: the mail host, or the hosted domain.
    id            TEXT PRIMARY KEY,
    -- Names the current certificate covers, space-separated ('' before the first issuance).
    names         TEXT NOT NULL DEFAULT '',
    -- Full chain, PEM (leaf first); NULL before the first issuance.
    chain_pem     TEXT,
    -- The certificate's private key, PKCS#8 PEM. Kept across renewals when `keep_key` is on.
    key_pem       TEXT,
    issuer        TEXT,
    not_before    INTEGER,
    not_after     INTEGER,
    -- Unix time of the last attempt, its outcome ('issued', 'failed', 'skipped'), the error.
    last_attempt  INTEGER,
    last_result   TEXT,
    last_error    TEXT,
    -- Names left out of the last order because they do not resolve here, with the reason,
    -- one per line: '<name> <reason>'.
    skipped       TEXT NOT NULL DEFAULT '',
    -- Consecutive failed attempts (drives the back-off) and when to try next.
    failures      INTEGER NOT NULL DEFAULT 0,
    next_attempt  INTEGER
);
