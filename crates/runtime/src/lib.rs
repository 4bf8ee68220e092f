//! strata-runtime: run one container in a strata micro-VM.
//!
//! The container's rootfs is served over virtio-fs without a host mount (a `strata serve`
//! child with its usual confinement, or a session of a running `strata daemon`); the guest's
//! `/init` (the static `strata` binary) assembles the overlay, receives a
//! [`ContainerSpec`] on a virtio-serial control port, runs the process with its stdio on three
//! more ports, and reports its exit status before the VM powers off
//! ([`strata_plan::control`]).
//!
//! - [`spec::container_spec`]: a [`ContainerSpec`] from an image config plus a user's
//!   overrides (`strata run`); [`oci::from_oci`]: one from an OCI runtime spec (the containerd
//!   shim).
//! - [`Sandbox`]: serve, boot (optionally paused), stdio, signals, wait, kill, cleanup.
//! - [`initramfs`]: the guest initramfs for a kernel, built once per strata binary and cached.
//!
//! Used by `strata run` and `containerd-shim-strata-v2`; no lab or test code.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::path::PathBuf;
use std::str::FromStr;

pub mod error;
pub mod initramfs;
pub mod kvm;
pub mod oci;
mod qmp;
pub mod sandbox;
mod server;
pub mod spec;
#[allow(unsafe_code)]
mod sys;
pub mod terminal;

pub use error::{Result, RuntimeError};
pub use oci_spec;
pub use sandbox::{ExitStatus, Sandbox, SandboxConfig, Stdio, DEFAULT_EROFS_CACHE};
pub use strata_plan::container::{ConsoleSize, ContainerSpec, Mount, Rlimit, User};
pub use strata_vm::{KernelChoice, KernelSpec};

/// Which accelerator qemu uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM when `/dev/kvm` is usable (`strata_vm::qemu::detect_accel`), else TCG.
    #[default]
    Auto,
    /// KVM, required.
    Kvm,
    /// Emulation (multi-threaded TCG).
    Tcg,
}

impl FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Accel, String> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(format!(
                "unknown accelerator {s:?}: expected auto, kvm or tcg"
            )),
        }
    }
}

/// The VM a container runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The guest kernel: a Debian line (fetched and cached) or a path.
    pub kernel: KernelSpec,
    /// A ready guest initramfs (`strata initramfs`); `None`: built from the strata binary
    /// for this kernel and cached ([`initramfs::cached`]).
    pub initramfs: Option<PathBuf>,
    /// Guest RAM in MiB.
    pub mem_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    pub accel: Accel,
    /// `strata.debug=1` on the guest's command line (init logs every step on the console).
    pub debug: bool,
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            kernel: KernelSpec::Debian(KernelChoice::Debian6_1),
            initramfs: None,
            mem_mib: 512,
            vcpus: 2,
            accel: Accel::Auto,
            debug: false,
        }
    }
}

/// The container's root filesystem, as directories in the overlayfs on-disk format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rootfs {
    /// A container rootfs of a strata store (`strata rootfs create`).
    Store { store: PathBuf, id: String },
    /// Explicit directories (e.g. the overlayfs snapshotter's `lowerdir`/`upperdir`/`workdir`),
    /// lowers topmost first.
    Dirs {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
}

/// Who serves the rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    /// A `strata serve` child process of this sandbox (the strata binary of
    /// [`SandboxConfig::strata`]): capabilities dropped, Landlock, the no-mount seccomp filter.
    Spawn,
    /// A session of a running `strata daemon` at `api`; its vhost-user sockets go in
    /// `socket_dir` (default: the API socket's directory, which the daemon requires).
    Daemon {
        api: PathBuf,
        socket_dir: Option<PathBuf>,
    },
}
