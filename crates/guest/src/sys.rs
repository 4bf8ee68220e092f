//! The only `unsafe` code of strata-guest: process plumbing that nix exposes as `unsafe`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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

/// A new pseudo-terminal of the devpts instance at `/dev/pts` (through `/dev/ptmx`):
/// (master, slave), both close-on-exec, the slave opened without becoming anyone's controlling
/// terminal, `size` (rows, cols) set on it.
pub(crate) fn open_pty(size: Option<(u16, u16)>) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::unix::fs::OpenOptionsExt;
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which points at a live local; the
    // fd is the master just opened.
    Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd (or -1); it reads and
    // writes no memory of ours.
    let slave = Errno::result(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `slave` is a new fd the kernel just returned to us and nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    if let Some((rows, cols)) = size {
        set_winsize(master.as_raw_fd(), rows, cols)?;
    }
    Ok((master, slave))
}

/// `ioctl(fd, TIOCSWINSZ)`: the terminal on `fd` (master or slave) is `rows` x `cols`; its
/// foreground process group gets SIGWINCH.
pub(crate) fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` through the pointer, which points at a
    // live, fully initialised local; a bad fd only yields an error.
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }).map(drop)
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
