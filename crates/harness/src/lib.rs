//! strata-harness: the dev-only harness of strata's tests and lab (never a dependency of the
//! `strata` binary).
//!
//! - [`fixture`] builds rootfs layers (busybox, whiteouts, opaque dirs).
//! - [`session`] runs `strata serve` and `strata daemon` as child processes (optionally under
//!   `strace -f`), waits until they listen, and reads what they did.

pub mod fixture;
pub mod session;
