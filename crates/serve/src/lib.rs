//! `strata serve`: a vhost-user-fs daemon that gives one VM its container rootfs as a
//! synthesized tree (read-only layers, upper, work and a mount plan) without a single host
//! mount. The guest kernel assembles the overlay itself.
//!
//! Layout: [`config`] (what to serve, checked before anything is created), [`tree`] (the
//! `FileSystem` implementation, one file per operation family), [`backend`] (the vhost-user
//! transport glue), [`sandbox`] (capabilities, Landlock, and the seccomp filter that makes
//! mounting impossible), [`daemon`] (start-up, socket, signals), `sys` (the only `unsafe`).
//! [`fdbudget`] is the process's fd budget shared by all sessions, [`ratelog`] the rate limit on
//! log lines a guest can trigger. [`supervisor`] is `strata daemon` (many VMs in one process, started and stopped over the
//! local [`api`]).
//!
//! Features (none is on by default; the `strata` binary's default build enables none):
//! - `test-utils`: `frontend` (a vhost-user VMM side, for tests and the lab's benchmarks) and
//!   `fuzzing` (the request-stream fuzzer);
//! - `fault-injection`: `Supervisor::inject_panic`, a session that panics on request, for the
//!   isolation test. Debug builds only: a release build with it does not compile.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(all(feature = "fault-injection", not(debug_assertions)))]
compile_error!(
    "the `fault-injection` feature of strata-serve is for debug builds (tests) only: build \
     without --release, or without the feature"
);

pub mod api;
pub mod backend;
pub mod config;
pub mod daemon;
pub mod error;
pub mod fdbudget;
#[cfg(feature = "test-utils")]
pub mod frontend;
#[cfg(feature = "test-utils")]
pub mod fuzzing;
pub mod notify;
pub mod ratelog;
pub mod sandbox;
pub mod socket;
pub mod supervisor;
#[allow(unsafe_code)]
pub(crate) mod sys;
pub mod tree;

pub use config::{LowerDevice, ServeConfig, SocketPerms, DEFAULT_LOWER_TAG};
pub use daemon::{prepare, serve, Prepared};
pub use error::{ConfigError, ServeError};
pub use tree::{CachePolicy, Limits, Role, StrataFs};
