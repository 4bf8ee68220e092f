//! strata-vm: what booting a strata guest needs, for `strata` itself and for its tests.
//!
//! - [`GuestKernel::fetch`] gets a Debian cloud kernel (6.1 or 6.12) into the cache, once
//!   ([`kernel`]).
//! - [`Initramfs`] writes newc cpio archives; [`guest_initramfs`] builds the strata guest image,
//!   its `/init` a stripped copy of the static `strata` binary ([`initramfs`], [`elf`]).
//! - [`VmConfig`] boots it under qemu and captures the serial console ([`qemu`]).
//! - [`cmd`] runs host tools with errors that say what to do.
//!
//! Host requirements are installed by `scripts/install-deps.sh`.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod cmd;
pub mod elf;
mod error;
pub mod initramfs;
pub mod kernel;
pub mod qemu;
#[allow(unsafe_code)]
mod sys;

pub use error::{tail, Result, VmError};
pub use initramfs::{guest_initramfs, Contents, Initramfs};
pub use kernel::{cache_dir, GuestKernel, KernelChoice, KernelSpec, GUEST_MODULES};
pub use qemu::{Vm, VmConfig, VmOutput};
