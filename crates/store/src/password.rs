//! Password hashing: Argon2id (RFC 9106) in PHC string format.

use std::sync::Mutex;

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::rngs::OsRng;

use crate::error::StoreError;

/// The shortest password accepted for a new account.
pub const MIN_PASSWORD_LEN: usize = 8;
/// The longest password accepted (bounds hashing cost for hostile input).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Hashes `password` with Argon2id and a random salt. Refuses empty, short or overlong passwords.
pub fn hash_password(password: &str) -> Result<String, StoreError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(StoreError::Invalid(format!(
            "password too weak: use at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(StoreError::Invalid(format!(
            "password longer than {MAX_PASSWORD_LEN} bytes"
        )));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Invalid(format!("cannot hash password: {e}")))
}

/// Most Argon2 memory a stored hash may ask for (1 KiB blocks): 256 MiB.
const MAX_BLOCKS: usize = 256 * 1024;
/// Memory buffers kept for reuse between verifications (callers bound concurrency).
const POOLED_BUFFERS: usize = 2;

/// Argon2 working memory reused across verifications. Each verification needs m_cost KiB
/// (19 MiB by default); allocating it afresh every time makes the C allocator keep growing
/// under a burst of logins, so a few buffers are kept and reused instead.
static BUFFERS: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// Checks `password` against a stored PHC hash. A malformed stored hash never matches.
/// Blocking (CPU and memory heavy): call from a blocking thread.
pub fn verify_password(password: &str, stored: &str) -> bool {
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let blocks = params.block_count();
    if blocks > MAX_BLOCKS {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let mut memory = BUFFERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .unwrap_or_default();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let hashed = Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..blocks])
        .is_ok();
    {
        let mut pool = BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOLED_BUFFERS {
            pool.push(memory);
        }
    }
    // Output's equality is constant-time.
    hashed && Output::new(&out).is_ok_and(|o| o == expected)
}

/// Generates a random password of 20 characters from an unambiguous alphabet.
pub fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789";
    let mut rng = OsRng;
    (0..20)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn verifies_hashes_made_with_other_parameters() {
        // Imported or older hashes carry their own m/t/p; the pooled buffer adapts.
        let params = Params::new(8 * 1024, 3, 1, None).expect("params");
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        let h = argon
            .hash_password(b"imported secret", &salt)
            .expect("hash")
            .to_string();
        assert!(verify_password("imported secret", &h));
        assert!(!verify_password("imported secreT", &h));
        // Default parameters again after a smaller run.
        let d = hash_password("correct horse").expect("hash");
        assert!(verify_password("correct horse", &d));
        // A stored hash asking for absurd memory is refused, not computed.
        let greedy = d.replace("m=19456", "m=4000000");
        assert!(!verify_password("correct horse", &greedy));
    }

    #[test]
    fn weak_passwords_refused() {
        assert!(hash_password("").is_err());
        assert!(hash_password("short").is_err());
        assert!(hash_password(&"x".repeat(2000)).is_err());
    }

    #[test]
    fn generated_passwords_differ() {
        let a = generate_password();
        assert_eq!(a.len(), 20);
        assert_ne!(a, generate_password());
    }
}
