//! The VM tests: real Debian guests under qemu (TCG) on rootfs served over real virtio-fs, the
//! lab and benchmark commands, and everything else that needs root. Built only with
//! `--features strata/vm-tests`, which `scripts/test` (as root) enables; plain `cargo test`
//! neither builds nor runs them. A missing tool is a failure here, never a skip
//! (`strata_harness::require`).
//!
//! One module per area:
//! - [`boot`]: strata-vm itself (kernels, initramfs, qemu) on busybox guests;
//! - [`rootfs`]: the overlay semantics end to end, against a host overlay as oracle, and zero
//!   host mounts; [`hostile`]: a hostile guest against tight session limits;
//! - [`conformance`]: pjdfstest on strata, failures only where the Kata-style setup fails too;
//! - [`semantics`]: file semantics ordinary software relies on (O_NOFOLLOW, umask, set-id
//!   creates, device nodes, open flags);
//! - [`faults`]: the daemon or the VMM killed, a full upper filesystem;
//! - [`image`]: an umoci image imported into the store and booted; [`erofs`]: the same with
//!   its layers as a merged EROFS image on virtio-blk;
//! - [`workloads`]: apt, dpkg, useradd, Python and tar on a Debian image, against the oracle;
//! - [`daemon`]: one `strata daemon` serving two guests;
//! - [`run`]: `strata run` (the container contract: config, stdio, signals, exit codes) and
//!   `strata initramfs`;
//! - [`security`]: local attacks as `nobody` on the store and the daemon's sockets;
//! - [`trace`], [`trace_bpf`]: `strata trace` inside 6.1 and 6.12 guests;
//! - [`bench`], [`sessions`], [`bench_guest`], [`lab`]: short runs of the lab's commands and
//!   the demo;
//! - [`shim`]: `containerd-shim-strata-v2` under a real containerd (`ctr run`).

mod bench;
mod bench_guest;
mod boot;
mod conformance;
mod daemon;
mod erofs;
mod faults;
mod hostile;
mod image;
mod lab;
mod rootfs;
mod run;
mod security;
mod semantics;
mod sessions;
mod shim;
mod trace;
mod trace_bpf;
mod tty;
mod workloads;

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The `strata` binary under test (built with the `lab` feature: `vm-tests` implies it).
fn strata() -> strata_harness::Strata {
    strata_harness::strata!()
}

/// The machine the guests run on (2 cores, TCG): tests that boot one guest at a time share it
/// (as many as cargo runs at once), tests that boot several guests or measure have it alone.
static MACHINE: RwLock<()> = RwLock::new(());

/// For a test that boots one guest at a time.
fn shared() -> RwLockReadGuard<'static, ()> {
    // A test that panicked while holding the lock leaves nothing to repair.
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

/// For a test that boots several guests at once or prints measurements.
fn alone() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|e| e.into_inner())
}
