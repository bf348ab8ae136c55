-- Tessera schema, version 2 (SQLite): the outbound queue.
--
-- One row per queued message (its body is a blob, like a stored message), one row per
-- recipient with its own delivery state. `next_attempt` on the message is the earliest
-- `next_attempt` of its pending recipients, so the worker's "what is due" query is one index
-- range scan.
--
-- Claims: a worker takes due messages by setting `claimed_by` (its node id) and
-- `claimed_until` (a lease) in one statement; a lease that lapses (a crashed node) makes the
-- message claimable again. On PostgreSQL the same columns are taken with
-- `SELECT ... FOR UPDATE SKIP LOCKED`, so each message is worked on by exactly one node.
CREATE TABLE queue (
    id             INTEGER PRIMARY KEY,
    blob_hash      TEXT NOT NULL,
    size           INTEGER NOT NULL,
    -- RFC 5321 reverse-path; '' is the null sender <> (bounces).
    sender         TEXT NOT NULL,
    -- The submitting account, if any (for per-account limits and `queue list`).
    account_id     INTEGER REFERENCES accounts(id) ON DELETE SET NULL,
    -- RFC 3461 ENVID and RET (NULL, 'full' or 'hdrs').
    dsn_envid      TEXT,
    dsn_ret        TEXT,
    created_at     INTEGER NOT NULL,
    next_attempt   INTEGER NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    expires_at     INTEGER NOT NULL,
    claimed_by     TEXT,
    claimed_until  INTEGER
);
CREATE INDEX queue_due ON queue(next_attempt);
CREATE INDEX queue_blob ON queue(blob_hash);

CREATE TABLE queue_recipients (
    queue_id      INTEGER NOT NULL REFERENCES queue(id) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    address       TEXT NOT NULL,
    -- RFC 3461 ORCPT (as given, xtext-decoded) and NOTIFY bits (1 success, 2 failure, 4 delay, 8 never).
    dsn_orcpt     TEXT,
    dsn_notify    INTEGER NOT NULL DEFAULT 0,
    -- 'pending', 'delivered' or 'failed'.
    state         TEXT NOT NULL DEFAULT 'pending',
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  INTEGER NOT NULL,
    last_error    TEXT,
    PRIMARY KEY (queue_id, position)
) WITHOUT ROWID;
