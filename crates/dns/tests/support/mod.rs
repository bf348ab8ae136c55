//! Test support shared by the suites.

pub mod nsd;
