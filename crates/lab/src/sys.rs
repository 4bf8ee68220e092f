//! The lab's only `unsafe` code, each use with its safety argument.

use std::io;

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
