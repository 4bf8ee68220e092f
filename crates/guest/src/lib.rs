//! `strata guest`: the part of strata that runs inside the VM.
//!
//! The host daemon (`strata serve`) exports a synthesized tree over virtio-fs (see
//! [`strata_plan`]); here the *guest* kernel mounts that tree and assembles the container root
//! filesystem with its own overlayfs. Nothing is mounted on the host.
//!
//! Two entry points:
//!
//! * [`init`]: PID 1 of a minimal initramfs (`/init` = the static `strata` binary, kernel modules
//!   as `.ko` files under `/lib/modules`, nothing else). It loads the modules, mounts the tag,
//!   builds the overlay, switches root into it, runs the command given on the kernel command
//!   line and powers the VM off when it exits. Kernel command line:
//!
//!   | parameter | default | meaning |
//!   |---|---|---|
//!   | `strata.tag=TAG` | `strata` | virtio-fs tag to mount |
//!   | `strata.cmd="PROG ARG..."` | `/sbin/init` | command to run in the new root (shell-like word splitting, no expansion) |
//!   | `strata.debug=1` | off | log every step with timings |
//!   | `strata.exit=reboot` | `poweroff` | how to stop the VM after the command (use `reboot` + `qemu -no-reboot` on machines without ACPI power-off) |
//!   | `strata.run=1` | off | container mode: the spec, stdio and exit status travel on virtio-serial ports ([`strata_plan::control`]); `strata.cmd` is not used |
//!
//! * [`mount`]: in an already running guest OS, mount a tag and assemble the overlay at a
//!   directory (`strata guest mount --tag TAG --target DIR`).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::path::PathBuf;

pub mod cmdline;
mod container;
mod error;
mod init;
pub mod modules;
mod mounts;
pub mod probe;
#[allow(unsafe_code)]
mod sys;
pub mod users;

pub use error::GuestError;

/// Print one line on the console (stderr = `/dev/console` in the VM). Never panics: a console
/// write error must not take PID 1 down.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use say;

/// Like [`say!`], only when `strata.debug=1`.
macro_rules! debug {
    ($($arg:tt)*) => {{
        if $crate::debug_enabled() {
            $crate::say!($($arg)*);
        }
    }};
}
pub(crate) use debug;

static DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn debug_enabled() -> bool {
    DEBUG.load(std::sync::atomic::Ordering::Relaxed)
}

pub(crate) fn set_debug(on: bool) {
    DEBUG.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Arguments of `strata guest mount`.
#[derive(Debug, Clone)]
pub struct MountArgs {
    /// The virtio-fs tag to mount (the `tag=` of the VMM's vhost-user-fs device).
    pub tag: String,
    /// Existing directory on which to mount the assembled overlay.
    pub target: PathBuf,
}

/// `strata guest init`: PID 1 in the initramfs. Never returns: powers the VM off.
///
/// The kernel starts `/init` with no arguments, so the CLI should call this when it runs as
/// PID 1 (see [`running_as_init`]) as well as for `strata guest init`.
///
/// Outside PID 1 it refuses to run (it would switch root and power off the machine) and exits
/// with status 2.
pub fn init() -> ! {
    if !running_as_init() {
        say!("strata: `strata guest init` must run as PID 1 inside the VM (it is /init of the strata initramfs); refusing to run as PID {}", std::process::id());
        std::process::exit(2);
    }
    init::main()
}

/// Whether this process is PID 1 (the kernel ran us as `/init`).
pub fn running_as_init() -> bool {
    std::process::id() == 1
}

/// `strata guest mount`: mount the tag at `/run/strata/<tag>` and assemble the overlay at
/// `args.target` (which must exist). Loads no kernel modules.
pub fn mount(args: &MountArgs) -> Result<(), GuestError> {
    mounts::validate_tag(&args.tag)?;
    if !args.target.is_dir() {
        return Err(GuestError::TargetMissing {
            path: args.target.clone(),
        });
    }
    let staging = mounts::staging_dir(&args.tag);
    mounts::mkdir_p(&staging)?;
    mounts::mount_virtiofs(&args.tag, &staging, mounts::VIRTIOFS_WAIT)?;
    let result = mounts::read_plan(&staging)
        .and_then(|plan| mounts::mount_overlay(&plan, &args.tag, &staging, &args.target));
    if result.is_err() {
        // Leave no half-done state behind, so a fixed re-run starts clean.
        let _ = nix::mount::umount(&staging);
    }
    result
}
