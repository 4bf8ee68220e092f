//! The crate's only `unsafe` code, each use with its safety argument.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
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

/// `setxattr(2)` on `path` (following no symlink: `lsetxattr`).
pub(crate) fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both strings are valid NUL-terminated C strings that outlive the call, and
    // `value` points to `value.len()` readable bytes.
    let r = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Give every thread of process `pid` this thread's nice value (the lab renices each bench
/// after starting it; the `strata daemon` a bench spawned must run at the bench's priority, not
/// below it). Nice values are per thread on Linux, hence the walk over `/proc/PID/task`.
pub(crate) fn share_nice_with(pid: u32) -> io::Result<()> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        if let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
            set_nice_like_mine(tid)?;
        }
    }
    Ok(())
}

fn set_nice_like_mine(pid: u32) -> io::Result<()> {
    // SAFETY: getpriority/setpriority take plain integers and touch no memory of ours. errno
    // is cleared first because -1 is a valid nice value.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        if nice == -1 && *libc::__errno_location() != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, nice) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
