//! `strata guest probe`: tiny file-operation probes for tests inside a VM whose rootfs has only
//! busybox (which has no xattr tools and no way to write through a shared mapping).

use std::path::Path;

/// One probe operation.
#[derive(Debug, Clone)]
pub enum Probe {
    /// Set an extended attribute (value as text).
    XattrSet {
        path: String,
        name: String,
        value: String,
    },
    /// Print an extended attribute's value.
    XattrGet { path: String, name: String },
    /// Write `data` at `offset` through a `MAP_SHARED` mapping, then msync.
    MmapWrite {
        path: String,
        offset: usize,
        data: String,
    },
    /// `open(2)` (or `openat(2)` relative to an `O_PATH` fd on `at`) with the given flags and
    /// mode, optionally as another uid:gid and under another umask; prints `ok MODE` (the new
    /// fd's permission bits, octal; after writing `write` through it, if given) or the errno's
    /// name (`ELOOP`). Exit status 0 either way.
    Open {
        path: String,
        /// Comma-separated: rdonly, wronly, rdwr, creat, excl, trunc, append, nofollow,
        /// directory, noatime, direct, sync, dsync, tmpfile, path.
        flags: String,
        mode: u32,
        at: Option<String>,
        as_user: Option<(u32, u32)>,
        umask: Option<u32>,
        write: Option<String>,
    },
}

/// Run a probe; errors are returned as text for the caller to print.
pub fn run(p: &Probe) -> Result<(), String> {
    match p {
        Probe::XattrSet { path, name, value } => xattr::set(path, name, value.as_bytes())
            .map_err(|e| format!("setxattr {path} {name}: {e}")),
        Probe::XattrGet { path, name } => match xattr::get(path, name) {
            Ok(Some(v)) => {
                println!("{}", String::from_utf8_lossy(&v));
                Ok(())
            }
            Ok(None) => Err(format!("{path}: no attribute {name}")),
            Err(e) => Err(format!("getxattr {path} {name}: {e}")),
        },
        Probe::MmapWrite { path, offset, data } => {
            mmap_write(Path::new(path), *offset, data.as_bytes())
        }
        Probe::Open {
            path,
            flags,
            mode,
            at,
            as_user,
            umask,
            write,
        } => {
            let how = OpenHow {
                at: at.as_deref(),
                as_user: *as_user,
                umask: *umask,
                write: write.as_deref(),
            };
            println!("{}", open(path, flags, *mode, &how)?);
            Ok(())
        }
    }
}

/// The `open` probe's flag names.
fn open_flags(names: &str) -> Result<nix::fcntl::OFlag, String> {
    use nix::fcntl::OFlag;
    let mut f = OFlag::empty();
    for n in names.split(',').filter(|n| !n.is_empty()) {
        f |= match n {
            "rdonly" => OFlag::O_RDONLY,
            "wronly" => OFlag::O_WRONLY,
            "rdwr" => OFlag::O_RDWR,
            "creat" => OFlag::O_CREAT,
            "excl" => OFlag::O_EXCL,
            "trunc" => OFlag::O_TRUNC,
            "append" => OFlag::O_APPEND,
            "nofollow" => OFlag::O_NOFOLLOW,
            "directory" => OFlag::O_DIRECTORY,
            "noatime" => OFlag::O_NOATIME,
            "direct" => OFlag::O_DIRECT,
            "sync" => OFlag::O_SYNC,
            "dsync" => OFlag::O_DSYNC,
            "tmpfile" => OFlag::O_TMPFILE,
            "path" => OFlag::O_PATH,
            other => return Err(format!("unknown open flag {other:?}")),
        };
    }
    Ok(f)
}

/// How the `open` probe opens: relative to `at`, as another user, under a umask, and what it
/// writes afterwards.
struct OpenHow<'a> {
    at: Option<&'a str>,
    as_user: Option<(u32, u32)>,
    umask: Option<u32>,
    write: Option<&'a str>,
}

fn open(path: &str, flags: &str, mode: u32, how: &OpenHow<'_>) -> Result<String, String> {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::{fstat, Mode};
    let OpenHow {
        at,
        as_user,
        umask,
        write,
    } = *how;
    let flags = open_flags(flags)? | OFlag::O_CLOEXEC;
    let dir = match at {
        Some(d) => Some(
            open(d, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
                .map_err(|e| format!("open {d}: {e}"))?,
        ),
        None => None,
    };
    if let Some(m) = umask {
        nix::sys::stat::umask(Mode::from_bits_truncate(m));
    }
    if let Some((uid, gid)) = as_user {
        nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setgid(gid.into()).map_err(|e| format!("setgid {gid}: {e}"))?;
        nix::unistd::setuid(uid.into()).map_err(|e| format!("setuid {uid}: {e}"))?;
    }
    let mode = Mode::from_bits_truncate(mode);
    let r = match dir {
        Some(d) => openat(Some(d), path, flags, mode),
        None => open(path, flags, mode),
    };
    if let (Ok(fd), Some(data)) = (&r, write) {
        // Through the fd's /proc link (this nix's write wants an owned fd): the same file, the
        // same credentials.
        use std::io::Write;
        let w = std::fs::OpenOptions::new()
            .append(true)
            .open(format!("/proc/self/fd/{fd}"))
            .and_then(|mut f| f.write_all(data.as_bytes()));
        if let Err(e) = w {
            return Ok(format!("{} on write", e.kind()));
        }
    }
    Ok(match r {
        Ok(fd) => match fstat(fd) {
            Ok(st) => format!("ok {:o}", st.st_mode & 0o7777),
            Err(e) => format!("ok ({e:?} on fstat)"),
        },
        Err(e) => format!("{e:?}"),
    })
}

fn mmap_write(path: &Path, offset: usize, data: &[u8]) -> Result<(), String> {
    use std::num::NonZeroUsize;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
    let end = offset.checked_add(data.len()).filter(|&e| e <= len);
    let (Some(_), Some(nz)) = (end, NonZeroUsize::new(len)) else {
        return Err(format!(
            "{}: write past the end of the file",
            path.display()
        ));
    };
    crate::sys::with_shared_mapping(&f, nz, |map| {
        map[offset..offset + data.len()].copy_from_slice(data);
    })
    .map_err(|e| format!("mmap {}: {e}", path.display()))?;
    Ok(())
}
