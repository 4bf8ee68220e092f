//! The only `unsafe` code of strata-guest: process plumbing that nix exposes as `unsafe`.

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::ForkResult;

/// `fork(2)`. Only for PID 1 in `init`, which is single-threaded.
pub(crate) fn fork() -> nix::Result<ForkResult> {
    // SAFETY: strata guest init never starts a thread (std spawns none on its own), so the
    // child is a complete copy of a single-threaded process: no lock can be held by a thread
    // that does not exist in the child, and running ordinary Rust code before exec is sound.
    unsafe { nix::unistd::fork() }
}

/// `ioctl(fd, TIOCSCTTY, 1)`: make the terminal on `fd` our controlling terminal (stealing it
/// if another session had it; we are root).
pub(crate) fn set_controlling_tty(fd: RawFd) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes a plain int argument by value and reads/writes no user memory;
    // an invalid fd only yields an error.
    let r = unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 1 as libc::c_int) };
    Errno::result(r).map(drop)
}

/// Restore the default `SIGPIPE` disposition (the Rust runtime ignores it, and an ignored
/// signal would stay ignored across exec).
pub(crate) fn default_sigpipe() -> nix::Result<()> {
    // SAFETY: installing SIG_DFL registers no handler code, so there is no signal-safety
    // requirement on anything in this program.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(drop)
}

/// `_exit(2)`: end a forked child right away, without running the parent's exit-time code.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and never returns.
    unsafe { libc::_exit(code) }
}
