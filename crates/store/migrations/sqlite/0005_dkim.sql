-- Tessera schema, version 5 (SQLite): DKIM signing keys (RFC 6376, RFC 8463).
--
-- Each hosted domain has keys under dated selectors (`ts2026-11r` RSA, `ts2026-11e` Ed25519).
-- Rotation adds new keys and retires the old ones: a retired key no longer signs but stays
-- published in DNS (mail in flight still verifies) until it is removed. Keys go with their
-- domain.
CREATE TABLE dkim_keys (
    id           INTEGER PRIMARY KEY,
    domain_id    INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    selector     TEXT NOT NULL,
    -- 'rsa-sha256' or 'ed25519-sha256' (RFC 6376 §3.3, RFC 8463 §3).
    algorithm    TEXT NOT NULL,
    -- PKCS#8 DER.
    private_key  BLOB NOT NULL,
    -- What the DNS record's p= carries, decoded: SubjectPublicKeyInfo DER for RSA,
    -- the raw 32-byte key for Ed25519.
    public_key   BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    -- NULL while the key signs; the time it was retired otherwise.
    retired_at   INTEGER,
    UNIQUE (domain_id, selector)
);
