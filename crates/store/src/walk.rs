//! Iterative, fd-bounded walks of directory trees the store owns: removal (`rootfs rm`, gc) and
//! the seal of an unpacked layer.
//!
//! A container's upper dir holds whatever its guest wrote, so a tree may be deeper than
//! `PATH_MAX` or than the open-files limit: both walks go down with `openat(name,
//! O_NOFOLLOW|O_DIRECTORY)` and back up with `openat("..")` (checked against the device and
//! inode seen on the way down), holding two fds at most and never recursing.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};
use nix::unistd::UnlinkatFlags;
use sha2::Digest;

use crate::digest::Sha256;

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW);

fn open_dir_at(dir: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
    crate::sys::openat(dir.as_raw_fd(), name.to_bytes(), DIR_FLAGS, Mode::empty()).map_err(errno)
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nofollow_dir()
        .open(path)?;
    Ok(OwnedFd::from(f))
}

/// `O_DIRECTORY | O_NOFOLLOW` on std's `OpenOptions`.
trait NoFollowDir {
    fn custom_flags_nofollow_dir(&mut self) -> &mut Self;
}

impl NoFollowDir for std::fs::OpenOptions {
    fn custom_flags_nofollow_dir(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_DIRECTORY | libc::O_NOFOLLOW)
    }
}

fn fstat(fd: &OwnedFd) -> io::Result<FileStat> {
    nix::sys::stat::fstat(fd.as_raw_fd()).map_err(errno)
}

fn lstat_at(dir: &OwnedFd, name: &CStr) -> io::Result<FileStat> {
    nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(errno)
}

fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// The entries of `dir` (not `.` and `..`), each with whether it is a directory.
fn entries(dir: &OwnedFd) -> io::Result<Vec<(CString, bool)>> {
    // A second open description, so that listing does not move anything `dir` is used for.
    let mut d = Dir::openat(
        Some(dir.as_raw_fd()),
        ".",
        DIR_FLAGS | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(errno)?;
        let name = e.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let dir_entry = match e.file_type() {
            Some(t) => t == Type::Directory,
            None => is_dir(&lstat_at(dir, name)?),
        };
        out.push((name.to_owned(), dir_entry));
    }
    Ok(out)
}

/// One directory on the way down: its identity, its name in its parent, what is left to visit.
struct Frame {
    dev: u64,
    ino: u64,
    name: CString,
    pending: Vec<CString>,
}

/// The parent of `cur` (opened through `..`), checked to be the directory `parent` went down
/// from: a tree moved while it is walked is an error, never a walk somewhere else.
fn up(cur: &OwnedFd, parent: &Frame) -> io::Result<OwnedFd> {
    let p = open_dir_at(cur, c"..")?;
    let st = fstat(&p)?;
    if (st.st_dev, st.st_ino) != (parent.dev, parent.ino) {
        return Err(io::Error::other(
            "the tree was moved while it was being walked",
        ));
    }
    Ok(p)
}

fn with_name(e: io::Error, name: &CStr) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "{}: {e}",
            OsStr::from_bytes(name.to_bytes()).to_string_lossy()
        ),
    )
}

/// Remove `path` and everything under it, however deep, without following symlinks and with at
/// most two directory fds open at a time.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    let top = open_dir(path)?;
    let st = fstat(&top)?;
    if (st.st_dev, st.st_ino) != (meta.dev(), meta.ino()) {
        return Err(io::Error::other(
            "the tree was moved while it was being removed",
        ));
    }
    let clear = |dir: &OwnedFd| -> io::Result<Vec<CString>> {
        let mut subdirs = Vec::new();
        for (name, sub) in entries(dir)? {
            if sub {
                subdirs.push(name);
            } else {
                nix::unistd::unlinkat(
                    Some(dir.as_raw_fd()),
                    name.as_c_str(),
                    UnlinkatFlags::NoRemoveDir,
                )
                .map_err(|e| with_name(errno(e), &name))?;
            }
        }
        Ok(subdirs)
    };
    let mut frames = vec![Frame {
        dev: st.st_dev,
        ino: st.st_ino,
        name: CString::default(),
        pending: clear(&top)?,
    }];
    let mut cur = top;
    while let Some(frame) = frames.last_mut() {
        if let Some(name) = frame.pending.pop() {
            let child = open_dir_at(&cur, &name).map_err(|e| with_name(e, &name))?;
            let st = fstat(&child)?;
            let pending = clear(&child)?;
            frames.push(Frame {
                dev: st.st_dev,
                ino: st.st_ino,
                name,
                pending,
            });
            cur = child;
            continue;
        }
        let Some(done) = frames.pop() else { break };
        let Some(parent) = frames.last() else { break };
        let p = up(&cur, parent)?;
        nix::unistd::unlinkat(
            Some(p.as_raw_fd()),
            done.name.as_c_str(),
            UnlinkatFlags::RemoveDir,
        )
        .map_err(|e| with_name(errno(e), &done.name))?;
        cur = p;
    }
    drop(cur);
    std::fs::remove_dir(path)
}

fn meta_bytes(h: &mut sha2::Sha256, st: &FileStat, times: bool) {
    let mut put = |v: i64| h.update(v.to_le_bytes());
    put(st.st_mode as i64);
    put(st.st_uid as i64);
    put(st.st_gid as i64);
    if times {
        put(st.st_size);
        put(st.st_nlink as i64);
        put(st.st_rdev as i64);
        put(st.st_mtime);
        put(st.st_mtime_nsec);
        put(st.st_ctime);
        put(st.st_ctime_nsec);
    }
}

/// A digest of everything about an unpacked layer's tree that a change to it would alter:
/// every entry's name, type, mode, owner, size, link count, device number, mtime and ctime
/// (in name order, depth first). Whoever is not root cannot set a ctime, so any change made
/// without root (a write, chmod, chown, xattr, create, rename or removal) changes the seal; the
/// top directory's own times are left out (publishing renames it). Reading it costs one
/// `stat` per entry, no file data.
pub fn seal(path: &Path) -> io::Result<Sha256> {
    let top = open_dir(path)?;
    let mut h = sha2::Sha256::new();
    let st = fstat(&top)?;
    meta_bytes(&mut h, &st, false);
    let scan = |dir: &OwnedFd, h: &mut sha2::Sha256| -> io::Result<Vec<CString>> {
        let mut all = entries(dir)?;
        all.sort();
        let mut subdirs = Vec::new();
        for (name, sub) in all {
            if sub {
                subdirs.push(name);
                continue;
            }
            let st = lstat_at(dir, &name)?;
            h.update(b"F");
            h.update(name.as_bytes_with_nul());
            meta_bytes(h, &st, true);
        }
        subdirs.reverse();
        Ok(subdirs)
    };
    let mut frames = vec![Frame {
        dev: st.st_dev,
        ino: st.st_ino,
        name: CString::default(),
        pending: scan(&top, &mut h)?,
    }];
    let mut cur = top;
    while let Some(frame) = frames.last_mut() {
        if let Some(name) = frame.pending.pop() {
            let child = open_dir_at(&cur, &name)?;
            let st = fstat(&child)?;
            h.update(b"D");
            h.update(name.as_bytes_with_nul());
            meta_bytes(&mut h, &st, true);
            let pending = scan(&child, &mut h)?;
            frames.push(Frame {
                dev: st.st_dev,
                ino: st.st_ino,
                name,
                pending,
            });
            cur = child;
            continue;
        }
        h.update(b"U");
        let _ = frames.pop();
        let Some(parent) = frames.last() else { break };
        cur = up(&cur, parent)?;
    }
    Sha256::from_hex(&crate::digest::to_hex(&h.finalize()))
        .ok_or_else(|| io::Error::other("sha256 gave no 64-digit hex"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_trees_are_removed_and_sealed() {
        let d = tempfile::tempdir().unwrap();
        let top = d.path().join("t");
        std::fs::create_dir(&top).unwrap();
        // 3,000 levels of 64-byte names: ~195 kB of path, far beyond PATH_MAX.
        let name = "d".repeat(64);
        let mut fd = open_dir(&top).unwrap();
        for i in 0..3000 {
            let c = CString::new(name.as_str()).unwrap();
            nix::sys::stat::mkdirat(
                Some(fd.as_raw_fd()),
                c.as_c_str(),
                Mode::from_bits_truncate(0o755),
            )
            .unwrap();
            if i % 100 == 0 {
                let f = crate::sys::openat(
                    fd.as_raw_fd(),
                    b"f",
                    OFlag::O_CREAT | OFlag::O_WRONLY,
                    Mode::from_bits_truncate(0o644),
                )
                .unwrap();
                drop(f);
            }
            fd = open_dir_at(&fd, &c).unwrap();
        }
        drop(fd);
        std::os::unix::fs::symlink("/etc", top.join("link")).unwrap();
        let a = seal(&top).unwrap();
        assert_eq!(a, seal(&top).unwrap());
        std::fs::write(top.join("f"), b"changed").unwrap();
        assert_ne!(a, seal(&top).unwrap());
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert!(Path::new("/etc").is_dir());
    }
}
