//! The harness's only `unsafe` code, each use with its safety argument.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Numbers above any `to` of [`pass_fds`]: each `from` is moved there first, so that a `to`
/// that is another pair's `from` is not overwritten before it is passed on.
const STAGING: RawFd = 100;

/// Have the child of `cmd` find each `from` fd of this process at number `to` (< 100), with
/// close-on-exec cleared there.
pub(crate) fn pass_fds(cmd: &mut Command, fds: Vec<(RawFd, RawFd)>) {
    let mut staged: Vec<RawFd> = vec![-1; fds.len()];
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl(2),
    // dup2(2) and close(2), which are async-signal-safe; it allocates nothing (both Vecs were
    // made before the fork and are only indexed) and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &(from, _)) in fds.iter().enumerate() {
                staged[i] = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, STAGING);
                if staged[i] < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, &(_, to)) in fds.iter().enumerate() {
                // dup2 clears close-on-exec on `to`; the staged copy closes at exec.
                if libc::dup2(staged[i], to) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
