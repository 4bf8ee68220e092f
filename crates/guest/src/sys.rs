//! The only `unsafe` code of strata-guest: process plumbing that nix exposes as `unsafe`.

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::ForkResult;

/// `fork(2)`. Only for PID 1 in `init`, while it is single-threaded.
pub(crate) fn fork() -> nix::Result<ForkResult> {
    // SAFETY: strata guest init forks only before it starts any thread (std spawns none on
    // its own; container mode starts its relay and control threads after its one fork), so
    // the child is a complete copy of a single-threaded process: no lock can be held by a
    // thread that does not exist in the child, and running ordinary Rust code before exec is
    // sound.
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

/// `tcdrain(3)`: wait until everything written to the terminal on `fd` has been transmitted.
pub(crate) fn drain_tty(fd: RawFd) -> nix::Result<()> {
    // SAFETY: tcdrain takes a plain int fd and touches no memory of ours; a bad fd (or one
    // that is not a terminal) only yields an error.
    Errno::result(unsafe { libc::tcdrain(fd) }).map(drop)
}

/// Ignore the terminal's job-control and hang-up signals (SIGINT, SIGQUIT, SIGHUP, SIGTSTP),
/// for the process that waits for the command and must outlive it.
pub(crate) fn ignore_terminal_signals() -> nix::Result<()> {
    for sig in [
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGTSTP,
    ] {
        // SAFETY: installing SIG_IGN registers no handler code, so there is no
        // signal-safety requirement on anything in this program.
        unsafe { signal(sig, SigHandler::SigIgn) }?;
    }
    Ok(())
}

/// `_exit(2)`: end a forked child right away, without running the parent's exit-time code.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and never returns.
    unsafe { libc::_exit(code) }
}

/// Map all `len` bytes of `f` shared and writable, let `op` change them, msync and unmap.
pub(crate) fn with_shared_mapping(
    f: &std::fs::File,
    len: std::num::NonZeroUsize,
    op: impl FnOnce(&mut [u8]),
) -> nix::Result<()> {
    use nix::sys::mman::{mmap, msync, munmap, MapFlags, MsFlags, ProtFlags};
    // SAFETY: a fresh shared mapping of a file we opened read-write; no other Rust reference
    // to this memory exists.
    let ptr = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            f,
            0,
        )
    }?;
    // SAFETY: the mapping is `len` bytes long, readable and writable, and lives until the
    // munmap below; the slice does not outlive this function.
    let bytes = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr().cast::<u8>(), len.get()) };
    op(bytes);
    // SAFETY: same mapping, same length.
    let synced = unsafe { msync(ptr, len.get(), MsFlags::MS_SYNC) };
    // SAFETY: unmapping what we mapped; `bytes` is no longer used.
    unsafe { munmap(ptr, len.get()) }?;
    synced
}
