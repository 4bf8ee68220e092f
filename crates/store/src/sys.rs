//! The only `unsafe` in the crate: owning the fd `openat(2)` returns.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// `openat(dir, name, flags, mode)` returning an owned fd (closed on drop).
pub fn openat(dir: RawFd, name: &[u8], flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let fd = nix::fcntl::openat(Some(dir), name, flags | OFlag::O_CLOEXEC, mode)?;
    // SAFETY: `fd` was just returned by a successful openat(2); nothing else owns or closes it,
    // so transferring its ownership to an OwnedFd (which closes it exactly once) is sound.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
