//! A short-lived, per-process memory of successful password verifications.
//!
//! Argon2id costs ~35 ms of CPU and 19 MiB per verification by design; a client that opens a
//! new IMAP session every few seconds (or fifty sessions at once) would otherwise pay it on
//! every LOGIN. Dovecot keeps an auth cache for the same reason.
//!
//! Invariants:
//! - Only successes are remembered. A wrong password always goes through Argon2id (and the
//!   caller's failure throttle); it is never answered from here.
//! - The key binds the account id, the *stored hash* and the password, so changing the
//!   password (a new stored hash, from any process or node) or removing the account makes the
//!   entry useless at once; entries also expire after [`TTL`].
//! - No password is kept: only SHA-256 over a random per-process salt, the stored hash and the
//!   password. The salt never leaves memory, so the digests are useless outside the process.
//! - Bounded: at most [`MAX_ENTRIES`] accounts (one entry each).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

/// How long a successful verification is trusted without running Argon2id again.
pub(crate) const TTL: Duration = Duration::from_secs(120);
/// Accounts remembered at most.
const MAX_ENTRIES: usize = 10_000;
/// Locks that make concurrent logins to one account verify once (striped by account id).
const STRIPES: usize = 64;

/// Remembered verifications, keyed by account id.
pub(crate) struct AuthCache {
    salt: [u8; 32],
    entries: Mutex<HashMap<i64, Entry>>,
    /// Held around a verification, so fifty sessions logging in at once to one account
    /// run Argon2id once and the others find the result here.
    stripes: Vec<tokio::sync::Mutex<()>>,
}

struct Entry {
    digest: [u8; 32],
    expires: Instant,
}

/// The process-wide cache.
pub(crate) static AUTH_CACHE: LazyLock<AuthCache> = LazyLock::new(AuthCache::new);

impl AuthCache {
    fn new() -> Self {
        let mut salt = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut salt);
        AuthCache {
            salt,
            entries: Mutex::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    fn digest(&self, account: i64, stored_hash: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(account.to_be_bytes());
        h.update((stored_hash.len() as u64).to_be_bytes());
        h.update(stored_hash.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// True when `password` was verified against `stored_hash` for `account` within [`TTL`].
    pub(crate) fn verified(&self, account: i64, stored_hash: &str, password: &str) -> bool {
        let digest = self.digest(account, stored_hash, password);
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(&account).is_some_and(|e| {
            e.expires > Instant::now()
                && e.digest
                    .iter()
                    .zip(digest.iter())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    }

    /// Waits for other verifications for `account` (and accounts sharing its stripe); hold
    /// the guard while verifying and check [`verified`](Self::verified) again after taking it.
    pub(crate) async fn serialise(&self, account: i64) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = usize::try_from(account.rem_euclid(STRIPES as i64)).unwrap_or(0);
        self.stripes[stripe].lock().await
    }

    /// Records a successful Argon2id verification.
    pub(crate) fn remember(&self, account: i64, stored_hash: &str, password: &str) {
        let digest = self.digest(account, stored_hash, password);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&account) {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            account,
            Entry {
                digest,
                expires: now + TTL,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_only_the_verified_password_and_hash() {
        let c = AuthCache::new();
        assert!(!c.verified(1, "$argon2id$a", "secret-1"));
        c.remember(1, "$argon2id$a", "secret-1");
        assert!(c.verified(1, "$argon2id$a", "secret-1"));
        assert!(!c.verified(1, "$argon2id$a", "secret-2"), "other password");
        assert!(!c.verified(2, "$argon2id$a", "secret-1"), "other account");
        // A password change stores a new hash: the old entry no longer matches.
        assert!(!c.verified(1, "$argon2id$b", "secret-1"), "changed hash");
    }

    #[test]
    fn entries_expire() {
        let c = AuthCache::new();
        c.remember(1, "h", "p");
        if let Some(e) = c
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&1)
        {
            e.expires = Instant::now() - Duration::from_secs(1);
        }
        assert!(!c.verified(1, "h", "p"));
    }
}
