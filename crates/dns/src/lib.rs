//! Tessera's DNS: a resolver behind a small trait, the records a hosted domain needs (the
//! plan), and the live check of those records.
//!
//! Standards: RFC 1035 and RFC 2308 (answers, NXDOMAIN vs NODATA), RFC 3596 (AAAA, ip6.arpa),
//! RFC 5321 §5.1 (MX), RFC 7208 (SPF, §4.6.4 the 10-look-up limit), RFC 6376 and RFC 8463
//! (DKIM key records), RFC 7489 (DMARC), RFC 8461 (MTA-STS), RFC 8460 (TLS-RPT), RFC 6186 and
//! RFC 8314 (SRV for mail clients), RFC 2782 (SRV), RFC 8659 (CAA), RFC 8601 §3 (iprev).
//!
//! Implementation notes (invariants):
//! - Every look-up answer says why a record is absent: NXDOMAIN and NODATA are "missing";
//!   a timeout, SERVFAIL or an unreachable server are reported as such, never as missing.
//! - Record parsing (SPF, DMARC, MTA-STS, TLS-RPT) is mail-auth's, the same code that judges
//!   incoming mail; the DKIM key record comparison is ours (only `k=` and `p=` matter).
//! - The plan is pure: config, domain and keys in, records out; no I/O.
//! - The check does I/O only through [`Resolver`] and the HTTPS fetch of the MTA-STS policy,
//!   whose host name is resolved through the same resolver.
//! - Tests never query the machine's resolver: unit tests use [`MemoryResolver`], end-to-end
//!   tests a real authoritative server (nsd) on loopback.
//! - DKIM keys are generated here (aws-lc-rs) and stored by `store`, which only stores them.

pub mod check;
pub mod dkim;
pub mod https;
pub mod plan;
pub mod resolver;
pub mod spf;

pub use check::{Check, CheckError, CheckOptions, Finding, Report, Status, check};
pub use plan::{ClientPorts, MtaStsPolicy, Plan, PlanInput, PlannedRecord, Purpose};
pub use resolver::{
    Caa, HickoryResolver, Lookup, MemoryRecord, MemoryResolver, Mx, Resolver, ResolverSetupError,
    Srv, Txt,
};
