//! The only module of strata-serve with `unsafe`: thin wrappers over the libc calls the served
//! tree needs, each taking owned/borrowed fds and `CStr` names and returning `io::Result`.
//!
//! Every call here operates *relative to an fd the daemon already holds* (`*at` calls, or the
//! `/proc/self/fd/N` magic link of an `O_PATH` fd). No call resolves a path from the guest
//! beyond a single, already-validated component, and every open uses `O_NOFOLLOW` where a name
//! is involved, so the guest cannot make the daemon follow a symlink on the host.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

pub use libc::{stat64, statvfs64};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `/proc/self/fd/N` for an fd we own: opening it re-opens the very inode behind the fd.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    // A decimal number never contains NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open-like syscall, so it is a valid fd
    // that nothing else owns; wrapping it transfers ownership exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn file(fd: RawFd) -> File {
    File::from(owned(fd))
}

/// Open a host directory given by the operator as an `O_PATH` anchor for a served subtree.
pub fn open_anchor(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    Ok(owned(fd))
}

/// `openat2(dir, rel, O_PATH | O_DIRECTORY)` resolved with `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: the directory `rel` names below `dir`, reached
/// without leaving `dir` (`..` past it is EXDEV) and without following any symlink on the way
/// (ELOOP), whatever another process renames meanwhile. `rel` empty or `.` is `dir` itself.
pub fn open_dir_beneath(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c = CString::new(rel.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: an all-zero open_how is valid (no flags, mode 0, no resolve flags).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `dir` is live for the call, `c` is NUL-terminated and `how` is a valid open_how
    // whose size is passed along; the kernel only reads both.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned(fd as RawFd))
}

/// The path the kernel has for the inode behind `fd` (its `/proc/self/fd` link): where an
/// opened directory really is, whatever path was used to open it.
pub fn fd_path(fd: BorrowedFd<'_>) -> io::Result<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `openat(dir, name, O_PATH | O_NOFOLLOW)`: a handle on one child, never following a symlink.
pub fn open_path_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `dir` is a live fd for the duration of the call and `name` is NUL-terminated.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    Ok(owned(fd))
}

/// `openat(dir, name, flags | O_CREAT | O_NOFOLLOW, mode)`: create (or open) a regular file.
pub fn create_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<File> {
    let flags = flags | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: as for `open_path_at`; `mode` is passed as the variadic mode argument.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) })?;
    Ok(file(fd))
}

/// Re-open the inode behind an `O_PATH` fd with real access flags.
///
/// The inode is already resolved (without following), so the flags that only steer path
/// resolution or creation are dropped: `O_NOFOLLOW` in particular would make the open of the
/// `/proc/self/fd/N` magic link itself fail with `ELOOP` (apt, dpkg and useradd open with it).
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<File> {
    let p = proc_fd_path(fd);
    let flags = (flags | libc::O_CLOEXEC)
        & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW);
    // SAFETY: `p` is a valid C string; the magic link resolves to the inode `fd` refers to.
    let fd = cvt(unsafe { libc::open(p.as_ptr(), flags) })?;
    Ok(file(fd))
}

/// `fstatat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`: attributes of the inode itself.
pub fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<stat64> {
    let mut st = MaybeUninit::<stat64>::zeroed();
    // SAFETY: `st` is a properly sized, writable stat64; the empty path is a valid C string.
    cvt(unsafe {
        libc::fstatat64(
            fd.as_raw_fd(),
            c"".as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat64 succeeded, so it filled the whole struct (it was zeroed before anyway).
    Ok(unsafe { st.assume_init() })
}

/// `fstatfs` of the filesystem holding `fd`, in the `statvfs` shape FUSE replies with.
pub fn statfs_fd(fd: BorrowedFd<'_>) -> io::Result<statvfs64> {
    let mut st = MaybeUninit::<libc::statfs64>::zeroed();
    // SAFETY: `st` is a properly sized, writable statfs64.
    cvt(unsafe { libc::fstatfs64(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatfs64 succeeded and filled the struct.
    let s = unsafe { st.assume_init() };
    // SAFETY: statvfs64 is plain old data; all-zero is a valid value.
    let mut out: statvfs64 = unsafe { std::mem::zeroed() };
    out.f_bsize = s.f_bsize as _;
    out.f_frsize = if s.f_frsize != 0 {
        s.f_frsize as _
    } else {
        s.f_bsize as _
    };
    out.f_blocks = s.f_blocks;
    out.f_bfree = s.f_bfree;
    out.f_bavail = s.f_bavail;
    out.f_files = s.f_files;
    out.f_ffree = s.f_ffree;
    out.f_favail = s.f_ffree;
    out.f_namemax = s.f_namelen as _;
    Ok(out)
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: live fd, NUL-terminated name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: live fd, NUL-terminated name.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: live fd, NUL-terminated strings.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: live fd, NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn rename_at(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: live fds, NUL-terminated names; renameat2 never follows the final components.
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `linkat(fd, "", newdir, newname, AT_EMPTY_PATH)`: a new name for the inode behind `fd`.
pub fn link_at(fd: BorrowedFd<'_>, newdir: BorrowedFd<'_>, newname: &CStr) -> io::Result<()> {
    // SAFETY: live fds, NUL-terminated names.
    cvt(unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// The target of the symlink behind an `O_PATH | O_NOFOLLOW` fd.
pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is writable for `buf.len()` bytes; the empty path names `fd` itself.
    let n = cvt_size(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// Change owner of the inode behind `fd` (never following a symlink). `u32::MAX` = unchanged.
pub fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: live fd, empty path names the fd itself.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// chmod of the inode behind an `O_PATH` fd (through its `/proc/self/fd` link).
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let p = proc_fd_path(fd);
    // SAFETY: NUL-terminated path.
    cvt(unsafe { libc::fchmodat(libc::AT_FDCWD, p.as_ptr(), mode, 0) }).map(drop)
}

/// Set times of the inode behind an `O_PATH` fd. `None` = leave alone (`UTIME_OMIT`).
pub fn utimens_fd(fd: BorrowedFd<'_>, times: [libc::timespec; 2]) -> io::Result<()> {
    let p = proc_fd_path(fd);
    // SAFETY: `times` is a two-element array as utimensat requires; NUL-terminated path.
    // The magic link resolves to the inode itself, symlinks included, and is not followed
    // any further.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

pub fn ftruncate(f: &File, size: u64) -> io::Result<()> {
    let size = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: live fd.
    cvt(unsafe { libc::ftruncate64(f.as_raw_fd(), size) }).map(drop)
}

pub fn fallocate(f: &File, mode: u32, offset: u64, len: u64) -> io::Result<()> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: live fd, plain integer arguments.
    cvt(unsafe { libc::fallocate64(f.as_raw_fd(), mode as i32, off, len) }).map(drop)
}

pub fn lseek(f: &File, offset: u64, whence: u32) -> io::Result<u64> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: live fd, plain integer arguments.
    let r = unsafe { libc::lseek64(f.as_raw_fd(), off, whence as i32) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// One `getdents64` batch from the directory's current position into `buf`.
pub fn getdents(f: &File, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length; the kernel writes at most that many bytes.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            f.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Run `op` with a `&mut File` view of a shared file (fuse-backend-rs' zero-copy traits want
/// `&mut`, but pread/pwrite never touch the file position, so sharing is sound).
pub fn with_file_mut<R>(f: &File, op: impl FnOnce(&mut File) -> R) -> R {
    // SAFETY: the fd stays owned by `f`, which outlives this call; ManuallyDrop makes sure the
    // temporary `File` never closes it.
    let mut tmp = ManuallyDrop::new(unsafe { File::from_raw_fd(f.as_raw_fd()) });
    op(&mut tmp)
}

/// Close an eventfd that vhost-user-backend 0.21 leaked (`VringEpollHandler::new` turns the
/// exit event's consumer into a raw fd, registers it in its epoll and never closes it).
/// Refuses anything that is not an eventfd, so a mistaken number cannot close a real file.
pub fn close_leaked_eventfd(fd: RawFd) -> io::Result<()> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
    if link.as_os_str() != "anon_inode:[eventfd]" {
        return Err(io::Error::other(format!(
            "fd {fd} is {link:?}, not an eventfd: left open"
        )));
    }
    // SAFETY: the library gave up ownership of this fd (into_raw_fd) and nothing else owns
    // or closes it; the caller calls this once per leaked fd, after the epoll that watched it
    // is gone. So taking ownership here and closing it is the single close it ever gets.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// Raise the open-files limit (RLIMIT_NOFILE) to `wanted`: the soft limit, and the hard one
/// too when the process may (root, before the sandbox drops CAP_SYS_RESOURCE); else the soft
/// limit up to the hard one. Never lowers anything. Returns the soft limit now in force.
pub fn raise_fd_limit(wanted: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur >= wanted {
        return Ok(lim.rlim_cur);
    }
    let both = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: lim.rlim_max.max(wanted),
    };
    // SAFETY: `both` is a valid rlimit that outlives the call; the kernel only reads it.
    if cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &both) }).is_ok() {
        return Ok(wanted);
    }
    let soft = libc::rlimit {
        rlim_cur: wanted.min(lim.rlim_max),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) })?;
    Ok(soft.rlim_cur)
}

/// The uid of the peer of a connected unix socket (`SO_PEERCRED`).
pub fn peer_uid(sock: BorrowedFd<'_>) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is writable for `len` bytes and `len` is a valid in/out length; `sock` is
    // live for the call.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.uid)
}

/// `fchownat(AT_FDCWD, path, -1, gid, AT_SYMLINK_NOFOLLOW)`: give `path` itself (never what
/// a symlink there points to) the group `gid`, its owner unchanged.
pub fn chgrp_nofollow(path: &Path, gid: u32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated path that lives across the call; uid -1 leaves
    // the owner as it is.
    cvt(unsafe {
        libc::fchownat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::uid_t::MAX,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// One `int` socket option of `fd`.
fn sockopt_int(fd: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` is writable for `len` bytes and `len` is a valid in/out length; `fd` is live
    // for the call.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

/// Take ownership of the listening socket this process inherited as fd number `fd`
/// (`strata serve --fd`, as a VMM manager or systemd hands it over): it must be open, above
/// the standard streams, a unix stream socket and listening. Close-on-exec is set on it.
pub fn inherited_listener(fd: RawFd) -> Result<std::os::unix::net::UnixListener, String> {
    if fd <= 2 {
        return Err(format!(
            "fd {fd} is a standard stream, not an inherited socket"
        ));
    }
    // SAFETY: F_GETFD only reads the descriptor table entry; an fd that is not open fails with
    // EBADF and nothing else happens.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(format!("fd {fd} is not open in this process"));
    }
    // SAFETY: `fd` is open (checked just above) and stays open for the borrow's lifetime:
    // nothing closes it before ownership is taken below.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    let st = stat_fd(b).map_err(|e| format!("fd {fd}: {e}"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("fd {fd} is not a socket"));
    }
    let domain = sockopt_int(b, libc::SO_DOMAIN).map_err(|e| format!("fd {fd}: {e}"))?;
    let kind = sockopt_int(b, libc::SO_TYPE).map_err(|e| format!("fd {fd}: {e}"))?;
    if domain != libc::AF_UNIX || kind != libc::SOCK_STREAM {
        return Err(format!(
            "fd {fd} is not a unix stream socket (vhost-user needs one)"
        ));
    }
    if sockopt_int(b, libc::SO_ACCEPTCONN).map_err(|e| format!("fd {fd}: {e}"))? != 1 {
        return Err(format!(
            "fd {fd} is a unix socket that is not listening (bind and listen before handing it over)"
        ));
    }
    // SAFETY: `fd` is open, a listening unix stream socket (checked above), and from here on
    // owned only by the returned listener: the caller hands each inherited number over once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD on an fd this process owns changes only its close-on-exec flag.
    cvt(unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC) })
        .map_err(|e| format!("fd {fd}: {e}"))?;
    Ok(std::os::unix::net::UnixListener::from(owned))
}

/// The Landlock ABI version of the running kernel; 0 or less if it has none (or it is off).
pub fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the syscall only
    // returns a number; it reads and writes no memory.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    }
}

/// Give the calling thread a umask of 0, once per thread: the guest's kernel already applied the
/// guest process's umask to every mode it sends (FUSE_CREATE/MKDIR/MKNOD carry it separately and
/// the tree masks with it), so the daemon's own inherited umask (typically 022) must not mask
/// the mode a second time (`creat(f, 0777)` under umask 0 in the guest gave 0755).
///
/// `unshare(CLONE_FS)` first: the umask lives in the fs_struct that threads share, and the
/// daemon's other threads (the ones that bind the vhost-user and API sockets) keep their umask,
/// so no socket is ever created world-connectable.
pub fn clear_thread_umask() -> io::Result<()> {
    thread_local! {
        static CLEARED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if CLEARED.with(std::cell::Cell::get) {
        return Ok(());
    }
    // SAFETY: unshare(CLONE_FS) gives this thread a private copy of its root, cwd and umask;
    // it touches no memory of ours and is allowed in a multi-threaded process.
    cvt(unsafe { libc::unshare(libc::CLONE_FS) })?;
    // SAFETY: umask(2) cannot fail and only changes this thread's (now private) umask.
    unsafe { libc::umask(0) };
    CLEARED.with(|c| c.set(true));
    Ok(())
}

/// Whether [`as_fs_creds`] may switch the filesystem uid/gid: set once by the sandbox when the
/// securebit that keeps capabilities across fsuid changes is in force and CAP_SETUID/SETGID are
/// kept. Without it (a daemon that is not confined, or not root) creates run as the daemon and
/// the tree chowns afterwards.
static FS_CREDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether creates run with the guest caller's fsuid/fsgid ([`as_fs_creds`]).
pub fn fs_creds_enabled() -> bool {
    FS_CREDS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Set `SECBIT_NO_SETUID_FIXUP` (locked) on the calling thread, and every thread it creates
/// later: switching the fsuid away from 0 then keeps the file capabilities (CAP_DAC_OVERRIDE,
/// CAP_FOWNER, CAP_MKNOD, …) effective, so a create as the guest's user still works in
/// directories only root may write to (overlayfs' work dir). Needs CAP_SETPCAP (call before the
/// capabilities are dropped). `switch`: whether [`as_fs_creds`] may then switch.
pub fn keep_caps_across_fsuid(switch: bool) -> io::Result<()> {
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    // SAFETY: PR_GET_SECUREBITS takes no pointer and returns the bits.
    let bits = cvt(unsafe { libc::prctl(libc::PR_GET_SECUREBITS) })? as libc::c_ulong;
    let want = bits | SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED;
    if bits != want {
        // SAFETY: PR_SET_SECUREBITS with an integer argument; no memory is passed.
        cvt(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, want) })?;
    }
    FS_CREDS.store(switch, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The calling thread's filesystem uid and gid switched to a guest caller's for one create, as
/// virtiofsd does: the host kernel then makes the new inode with the owner, group and set-id
/// bits the guest asked for, in one step (no root-owned moment, no chown that clears set-id
/// bits). The previous ids come back when the guard drops. Not `Send`: the ids are per thread.
pub struct FsCreds {
    old_uid: u32,
    old_gid: u32,
    _thread: std::marker::PhantomData<*const ()>,
}

impl FsCreds {
    /// Switch to `uid`/`gid`; `None` when switching is not enabled ([`fs_creds_enabled`]) or
    /// did not take (the ids are then unchanged).
    pub fn switch(uid: u32, gid: u32) -> Option<FsCreds> {
        if !fs_creds_enabled() {
            return None;
        }
        // SAFETY: setfsgid/setfsuid change only this thread's filesystem ids (raw syscalls, not
        // the process-wide setxid broadcast) and take plain integers; an invalid id (-1) only
        // queries the current value.
        let old_gid = unsafe { libc::setfsgid(gid) } as u32;
        // SAFETY: as above.
        let old_uid = unsafe { libc::setfsuid(uid) } as u32;
        let guard = FsCreds {
            old_uid,
            old_gid,
            _thread: std::marker::PhantomData,
        };
        // SAFETY: as above (queries).
        let now = unsafe {
            (
                libc::setfsuid(u32::MAX) as u32,
                libc::setfsgid(u32::MAX) as u32,
            )
        };
        (now == (uid, gid)).then_some(guard)
    }
}

impl Drop for FsCreds {
    fn drop(&mut self) {
        // SAFETY: as in `switch`: back to the ids this thread had.
        unsafe {
            libc::setfsuid(self.old_uid);
            libc::setfsgid(self.old_gid);
        }
    }
}

/// Extended attributes, addressed through the `/proc/self/fd` link of an `O_PATH` fd.
pub mod xattr {
    use super::*;

    pub fn get(fd: BorrowedFd<'_>, name: &CStr, size: usize) -> io::Result<Vec<u8>> {
        let p = proc_fd_path(fd);
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` writable for `size` bytes (a null pointer with size 0 asks the length).
        let n = cvt_size(unsafe {
            libc::getxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), size)
        })?;
        buf.truncate(n);
        Ok(buf)
    }

    /// `get` through an open (not `O_PATH`) file: no `/proc/self/fd` path to resolve.
    pub fn get_open(f: &File, name: &CStr, size: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; size];
        // SAFETY: live fd; `buf` writable for `size` bytes (size 0 asks the length).
        let n = cvt_size(unsafe {
            libc::fgetxattr(f.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), size)
        })?;
        buf.truncate(n);
        Ok(buf)
    }

    /// `len` through an open (not `O_PATH`) file.
    pub fn len_open(f: &File, name: &CStr) -> io::Result<usize> {
        // SAFETY: live fd; size 0 with a null buffer only queries the length.
        cvt_size(unsafe { libc::fgetxattr(f.as_raw_fd(), name.as_ptr(), std::ptr::null_mut(), 0) })
    }

    pub fn len(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<usize> {
        let p = proc_fd_path(fd);
        // SAFETY: size 0 with a null buffer only queries the length.
        cvt_size(unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) })
    }

    pub fn list(fd: BorrowedFd<'_>, size: usize) -> io::Result<Vec<u8>> {
        let p = proc_fd_path(fd);
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` writable for `size` bytes (size 0 asks the length).
        let n = cvt_size(unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), size) })?;
        if size == 0 {
            return Ok(vec![0; n]);
        }
        buf.truncate(n);
        Ok(buf)
    }

    /// The attribute names of `path` itself (a symlink's own, not its target's), NUL-separated.
    pub fn list_path(path: &Path) -> io::Result<Vec<u8>> {
        let p = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        loop {
            // SAFETY: NUL-terminated path; size 0 with a null buffer only asks the length.
            let want = cvt_size(unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) })?;
            if want == 0 {
                return Ok(Vec::new());
            }
            let mut buf = vec![0u8; want];
            // SAFETY: `buf` is writable for `want` bytes.
            match cvt_size(unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), want) }) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                // The list grew between the two calls: ask again.
                Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Set an attribute on `path` itself (tests build layers with it).
    #[cfg(test)]
    pub fn set_path(path: &Path, name: &CStr, value: &[u8]) -> io::Result<()> {
        let p = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: NUL-terminated strings; `value` readable for its length.
        cvt(unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        })
        .map(drop)
    }

    pub fn set(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
        let p = proc_fd_path(fd);
        // SAFETY: `value` readable for its length; NUL-terminated strings.
        cvt(unsafe {
            libc::setxattr(
                p.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })
        .map(drop)
    }

    pub fn remove(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        let p = proc_fd_path(fd);
        // SAFETY: NUL-terminated strings.
        cvt(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) }).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn symlink_inode_ops_never_follow() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("target"), b"x").unwrap();
        std::os::unix::fs::symlink("target", d.path().join("link")).unwrap();
        let dir = open_anchor(d.path()).unwrap();
        let l = open_path_at(dir.as_fd(), c"link").unwrap();
        let st = stat_fd(l.as_fd()).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(readlink_fd(l.as_fd()).unwrap(), b"target");
        // utimens through the proc link must hit the symlink, not its target.
        let t = libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 0,
        };
        utimens_fd(l.as_fd(), [t, t]).unwrap();
        let lst = std::fs::symlink_metadata(d.path().join("link")).unwrap();
        let tst = std::fs::metadata(d.path().join("target")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(lst.mtime(), 1_000_000);
        assert_ne!(tst.mtime(), 1_000_000);
    }
}
