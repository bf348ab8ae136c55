//! What several of the binary's integration tests share: the listener names of
//! `tessera.toml`'s `[listen]` table and a guard that never leaves a child process behind.
//! Each test crate uses part of it.
#![allow(dead_code)]

use std::process::Child;

/// Every key of `[listen]`, in the order the config documents them.
pub const SERVICES: [&str; 9] = [
    "smtp",
    "submission",
    "submissions",
    "imap",
    "imaps",
    "pop3",
    "pop3s",
    "http",
    "https",
];

/// Kills the child when dropped, so a failing test leaves no process behind.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
