//! Failed-login throttle (DESIGN §6): a growing delay before answering failed attempts, per
//! (account, client address) and per client address alone. It never bans and never groups
//! addresses into ranges: Outlook and Gmail log in from shared cloud ranges, and one user's
//! stale password must not lock out everyone behind the same provider.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Throttle settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Delay once the free failures are used up; doubles with each further failure.
    pub base_delay: Duration,
    /// Cap on the delay.
    pub max_delay: Duration,
    /// Failures of one account from one address answered without delay.
    pub free_failures: u32,
    /// Failures from one address, over all accounts, answered without delay (password
    /// spraying). Higher than `free_failures`: many users may share an address.
    pub ip_free_failures: u32,
    /// A key is forgotten this long after its last failure.
    pub window: Duration,
    /// Most keys tracked; when full, expired keys go first, then the oldest.
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    /// 3 free failures per account and address (20 per address), then 1 s doubling up to
    /// 60 s; forgotten after 15 minutes; at most 100 000 keys (a few MB).
    fn default() -> Self {
        ThrottleConfig {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            free_failures: 3,
            ip_free_failures: 20,
            window: Duration::from_secs(15 * 60),
            max_entries: 100_000,
        }
    }
}

impl ThrottleConfig {
    /// No delays at all, for tests (STYLE §19).
    pub fn disabled() -> Self {
        ThrottleConfig {
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            free_failures: u32::MAX,
            ip_free_failures: u32::MAX,
            window: Duration::ZERO,
            max_entries: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// Lowercased account name and client address.
    Account(String, IpAddr),
    /// Client address alone.
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// Shared by all sessions of all protocols. Usage on a failed login:
/// `let d = throttle.delay_for(account, ip); throttle.record_failure(account, ip);
/// tokio::time::sleep(d).await;` then answer. On success, `record_success`.
#[derive(Debug)]
pub struct LoginThrottle {
    config: ThrottleConfig,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl LoginThrottle {
    /// A throttle with no failures recorded.
    pub fn new(config: ThrottleConfig) -> LoginThrottle {
        LoginThrottle {
            config,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long to wait before answering this attempt, from the failures recorded so far: the
    /// larger of the (account, address) delay and the address delay.
    pub fn delay_for(&self, account: &str, ip: IpAddr) -> Duration {
        self.delay_at(account, ip, Instant::now())
    }

    /// Counts a failed attempt against (account, address) and against the address.
    pub fn record_failure(&self, account: &str, ip: IpAddr) {
        self.failure_at(account, ip, Instant::now());
    }

    /// Forgets the (account, address) failures. The address's own count stays, so one valid
    /// account cannot be used to reset a spraying address.
    pub fn record_success(&self, account: &str, ip: IpAddr) {
        let mut entries = self.lock();
        entries.remove(&account_key(account, ip));
    }

    /// Number of keys tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn delay_at(&self, account: &str, ip: IpAddr, now: Instant) -> Duration {
        let entries = self.lock();
        let failures = |key: &Key| match entries.get(key) {
            Some(e) if now.saturating_duration_since(e.last) < self.config.window => e.failures,
            _ => 0,
        };
        let by_account = failures(&account_key(account, ip));
        let by_address = failures(&Key::Address(ip.to_canonical()));
        self.delay(by_account, self.config.free_failures)
            .max(self.delay(by_address, self.config.ip_free_failures))
    }

    /// 0 for the first `free` failures, then `base_delay * 2^(failures - free)`, capped.
    fn delay(&self, failures: u32, free: u32) -> Duration {
        if failures < free {
            return Duration::ZERO;
        }
        let doublings = (failures - free).min(31);
        self.config
            .base_delay
            .saturating_mul(1 << doublings)
            .min(self.config.max_delay)
    }

    fn failure_at(&self, account: &str, ip: IpAddr, now: Instant) {
        if self.config.max_entries == 0 {
            return;
        }
        let mut entries = self.lock();
        for key in [account_key(account, ip), Key::Address(ip.to_canonical())] {
            if !entries.contains_key(&key) && entries.len() >= self.config.max_entries {
                self.evict(&mut entries, now);
            }
            let entry = entries.entry(key).or_insert(Entry {
                failures: 0,
                last: now,
            });
            if now.saturating_duration_since(entry.last) >= self.config.window {
                entry.failures = 0; // expired: start over
            }
            entry.failures = entry.failures.saturating_add(1);
            entry.last = now;
        }
    }

    /// Makes room: drops expired keys, then, if still full, the oldest eighth (at least one),
    /// so the O(n) scan is paid once per many insertions.
    fn evict(&self, entries: &mut HashMap<Key, Entry>, now: Instant) {
        let window = self.config.window;
        entries.retain(|_, e| now.saturating_duration_since(e.last) < window);
        if entries.len() < self.config.max_entries {
            return;
        }
        let mut ages: Vec<Instant> = entries.values().map(|e| e.last).collect();
        let drop = (ages.len() / 8).max(1);
        let (_, cutoff, _) = ages.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        let mut dropped = 0;
        entries.retain(|_, e| {
            if dropped < drop && e.last <= cutoff {
                dropped += 1;
                false
            } else {
                true
            }
        });
    }
}

fn account_key(account: &str, ip: IpAddr) -> Key {
    Key::Account(account.to_lowercase(), ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn delays_grow_then_cap() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let now = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..12 {
            seen.push(t.delay_at("alice", A, now).as_secs());
            t.failure_at("alice", A, now);
        }
        assert_eq!(seen, [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn success_clears_account_and_accounts_compare_lowercased() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let now = Instant::now();
        for _ in 0..5 {
            t.failure_at("Alice@Example.org", A, now);
        }
        assert_eq!(t.delay_at("alice@example.ORG", A, now), secs(4));
        t.record_success("ALICE@example.org", A);
        assert_eq!(t.delay_at("alice@example.org", A, now), Duration::ZERO);
    }

    #[test]
    fn other_address_and_other_account_unaffected() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let now = Instant::now();
        for _ in 0..10 {
            t.failure_at("alice", A, now);
        }
        assert_eq!(t.delay_at("alice", B, now), Duration::ZERO);
        // Same address, other account: only the address count applies (10 < 20 free).
        assert_eq!(t.delay_at("bob", A, now), Duration::ZERO);
    }

    #[test]
    fn spraying_address_is_slowed_for_every_account() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let now = Instant::now();
        for i in 0..21 {
            t.failure_at(&format!("user{i}"), A, now);
        }
        assert_eq!(t.delay_at("fresh-account", A, now), secs(2));
        assert_eq!(t.delay_at("fresh-account", B, now), Duration::ZERO);
    }

    #[test]
    fn entries_expire_after_window() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let start = Instant::now();
        for _ in 0..6 {
            t.failure_at("alice", A, start);
        }
        let later = start + secs(15 * 60);
        assert_eq!(t.delay_at("alice", A, later), Duration::ZERO);
        t.failure_at("alice", A, later);
        assert_eq!(
            t.delay_at("alice", A, later),
            Duration::ZERO,
            "count restarted at 1"
        );
    }

    #[test]
    fn memory_is_bounded_and_oldest_evicted() {
        let config = ThrottleConfig {
            max_entries: 64,
            ..ThrottleConfig::default()
        };
        let t = LoginThrottle::new(config);
        let start = Instant::now();
        for i in 0..1000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            t.failure_at("victim", ip, start + Duration::from_millis(u64::from(i)));
            assert!(t.tracked() <= 64, "{} keys after {i}", t.tracked());
        }
        let now = start + secs(2);
        let newest = IpAddr::from(999u32.to_be_bytes());
        for _ in 0..3 {
            t.failure_at("victim", newest, now);
        }
        assert_eq!(
            t.delay_at("victim", newest, now),
            secs(2),
            "newest key kept"
        );
    }

    #[test]
    fn disabled_never_delays() {
        let t = LoginThrottle::new(ThrottleConfig::disabled());
        for _ in 0..100 {
            t.record_failure("alice", A);
        }
        assert_eq!(t.delay_for("alice", A), Duration::ZERO);
        assert_eq!(t.tracked(), 0);
    }
}
