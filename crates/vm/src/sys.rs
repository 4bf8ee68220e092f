//! The crate's only `unsafe` code, each use with its safety argument.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Make the child get SIGKILL when the thread that spawns it dies, so a killed harness never
/// leaves qemu behind. If the parent is already gone by the time the child runs, the child
/// exits before `exec`.
pub(crate) fn kill_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec; it only calls prctl(2) and
    // getppid(2), which are async-signal-safe, touches no locks and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other("parent exited before qemu started"));
            }
            Ok(())
        });
    }
}
