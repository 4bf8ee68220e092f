//! strata-lab: the experiments and benchmarks behind `strata lab`, `strata bench …` and
//! `strata demo` (built into `strata` only with its `lab` feature).
//!
//! - [`bench`](mod@bench) measures the host-side cost of a container start and end
//!   (`strata bench create`).
//! - [`stall`] reproduces the shrinker_rwsem mount stall in Debian guests and measures every
//!   start strategy under it (`strata lab`); [`plot`] draws its latency tail.
//! - [`guest_bench`] times guest I/O over virtiofsd, strata and EROFS (`strata bench guest`).
//! - [`requests`] replays each setup's FUSE requests per created file against the real
//!   daemons, without a guest (`strata bench requests`).
//! - [`soak`] drives many sessions of one `strata daemon` (`strata bench sessions|soak`).
//! - [`demo`] boots a Debian guest on a tiny served image (`strata demo`).
//!
//! Guest kernels, initramfs images and qemu come from `strata-vm`; fixtures and the
//! serve/daemon processes from `strata-harness`. Host requirements are installed by
//! `scripts/install-deps.sh`.

pub mod bench;
pub mod demo;
pub mod guest_bench;
pub mod plot;
pub mod requests;
pub mod soak;
pub mod stall;
#[allow(unsafe_code)]
mod sys;

pub use strata_vm::{Result, VmError};
