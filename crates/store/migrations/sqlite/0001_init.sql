-- Tessera schema, version 1 (SQLite). Addresses and names are stored lower-case.
CREATE TABLE domains (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY,
    domain_id     INTEGER NOT NULL REFERENCES domains(id),
    local_part    TEXT NOT NULL,
    address       TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    display_name  TEXT NOT NULL DEFAULT '',
    quota_bytes   INTEGER NOT NULL DEFAULT 0,
    used_bytes    INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);
CREATE INDEX accounts_local_part ON accounts(local_part);

-- source is an address or '@domain' for a catch-all; one row per target account.
CREATE TABLE aliases (
    source      TEXT NOT NULL,
    domain_id   INTEGER NOT NULL REFERENCES domains(id),
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    PRIMARY KEY (source, account_id)
);
CREATE INDEX aliases_account ON aliases(account_id);

CREATE TABLE mailboxes (
    id             INTEGER PRIMARY KEY,
    account_id     INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    special_use    TEXT,
    uidvalidity    INTEGER NOT NULL,
    uidnext        INTEGER NOT NULL,
    highestmodseq  INTEGER NOT NULL,
    subscribed     INTEGER NOT NULL,
    UNIQUE (account_id, name)
);

-- One row per stored body; copies in several mailboxes share it.
CREATE TABLE messages (
    id             INTEGER PRIMARY KEY,
    account_id     INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    blob_hash      TEXT NOT NULL,
    size           INTEGER NOT NULL,
    internal_date  INTEGER NOT NULL,
    tz_offset      INTEGER NOT NULL
);
CREATE INDEX messages_blob ON messages(blob_hash);

CREATE TABLE mailbox_messages (
    mailbox_id  INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid         INTEGER NOT NULL,
    message_id  INTEGER NOT NULL REFERENCES messages(id),
    flags       INTEGER NOT NULL,
    keywords    TEXT NOT NULL,
    modseq      INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE INDEX mailbox_messages_message ON mailbox_messages(message_id);

-- RFC 7162 QRESYNC needs to know what was expunged since a MODSEQ.
CREATE TABLE expunged (
    mailbox_id  INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid         INTEGER NOT NULL,
    modseq      INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
