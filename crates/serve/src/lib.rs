//! `strata serve`: a vhost-user-fs daemon that gives one VM its container rootfs as a
//! synthesized tree (read-only layers, upper, work and a mount plan) without a single host
//! mount. The guest kernel assembles the overlay itself.
//!
//! Layout: [`config`] (what to serve, checked before anything is created), [`tree`] (the
//! `FileSystem` implementation, one file per operation family), [`backend`] (the vhost-user
//! transport glue), [`sandbox`] (capabilities, Landlock, and the seccomp filter that makes
//! mounting impossible), [`daemon`] (start-up, socket, signals), [`sys`] (the only `unsafe`);
//! [`fuzzing`] is the request-stream fuzzer. [`supervisor`] is `strata daemon` (many VMs in
//! one process, started and stopped over the local [`api`]).

pub mod api;
pub mod backend;
pub mod config;
pub mod daemon;
pub mod error;
#[doc(hidden)]
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod sandbox;
pub mod supervisor;
pub(crate) mod sys;
pub mod tree;

pub use config::{LowerDevice, ServeConfig, DEFAULT_LOWER_TAG};
pub use daemon::{prepare, serve, Prepared};
pub use error::{ConfigError, ServeError};
pub use tree::{CachePolicy, Limits, Role, StrataFs};
