//! strata lab: the VM harness for tests, the demo and the stall lab.
//!
//! - [`GuestKernel::fetch`] gets a Debian cloud kernel (6.1 or 6.12) into the cache, once.
//! - [`Initramfs`] writes newc cpio archives; [`guest_initramfs`] builds the strata guest image.
//! - [`VmConfig`] boots it under qemu (TCG) and captures the serial console.
//! - [`fixture`] builds rootfs layers (busybox, whiteouts, opaque dirs).
//! - [`bench`](mod@bench) measures the host-side cost of a container start and end (`strata bench create`).
//!
//! Host requirements are installed by `scripts/install-deps.sh`.

pub mod bench;
mod cmd;
pub mod demo;
pub mod elf;
mod error;
pub mod fixture;
pub mod guest_bench;
pub mod initramfs;
pub mod kernel;
pub mod plot;
pub mod qemu;
pub mod session;
pub mod soak;
pub mod stall;
mod sys;

pub use error::{LabError, Result};
pub use initramfs::{guest_initramfs, Contents, Initramfs};
pub use kernel::{cache_dir, GuestKernel, KernelChoice, GUEST_MODULES};
pub use qemu::{Vm, VmConfig, VmOutput};
