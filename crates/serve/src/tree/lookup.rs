//! Lookup, forget, attributes, readlink, statfs.

use std::ffi::CStr;
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::SetattrValid;
use fuse_backend_rs::api::filesystem::Entry;

use super::{check_name, err, Area, Handle, Node, StrataFs, LAYERS, PLAN, ROOT};
use crate::sys::{self, stat64, statvfs64};

impl StrataFs {
    pub(crate) fn do_lookup(&self, parent: u64, name: &CStr) -> io::Result<Entry> {
        let b = name.to_bytes();
        match self.node(parent)? {
            Node::Root => {
                if b == b"." || b == b".." {
                    // `..` at the root of the tree stays at the root.
                    return Ok(self.virtual_entry(ROOT));
                }
                match b {
                    b"layers" => Ok(self.virtual_entry(LAYERS)),
                    b"plan.json" if self.is_tree() => Ok(self.virtual_entry(PLAN)),
                    b"lower" => self.merged_root(),
                    b"rootfs" if self.is_tree() => self.union_root(),
                    _ => {
                        let (fd, area) = self.anchor(b).ok_or_else(|| err(libc::ENOENT))?;
                        self.register(sys::open_path_at(fd, c".")?, area)
                    }
                }
            }
            Node::Layers => {
                if b == b".." {
                    return Ok(self.virtual_entry(ROOT));
                }
                let (fd, area) = self.layer_anchor(b).ok_or_else(|| err(libc::ENOENT))?;
                self.register(sys::open_path_at(fd, c".")?, area)
            }
            Node::Plan => Err(err(libc::ENOTDIR)),
            Node::Host(dir) => {
                if !dir.is_dir() {
                    return Err(err(libc::ENOTDIR));
                }
                // `..` would leave the served subtree at its top: the kernel never needs it
                // (it walks `..` in its own dcache), so refuse it everywhere below the root.
                check_name(name)?;
                match dir.area {
                    Area::Merged => return self.merged_lookup(&dir, name),
                    Area::Union => return self.union_lookup(&dir, name),
                    _ => {}
                }
                match sys::open_path_at(dir.fd.as_fd(), name) {
                    Ok(fd) => self.register(fd, dir.area),
                    // A missing name is answered with node 0 and the area's entry timeout,
                    // which the kernel caches as a negative dentry (an ENOENT would be asked
                    // again on every lookup). Layers never change: a name missing from one
                    // stays missing (the guest overlay looks each name up in every layer above
                    // the one that has it). Upper/work change only through this guest, whose
                    // kernel updates its own dcache on every create, rename and unlink (the
                    // overlay looks a new name up twice in upper: path walk, then create).
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        self.count_op("lookup:negative-entry");
                        Ok(Entry {
                            entry_timeout: self.timeout(dir.area),
                            ..Entry::default()
                        })
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    pub(crate) fn do_getattr(&self, inode: u64) -> io::Result<(stat64, Duration)> {
        match self.node(inode)? {
            Node::Host(h) => Ok((sys::stat_fd(h.cur())?, self.timeout(h.area))),
            _ => Ok((self.virtual_attr(inode), self.cache.layer)),
        }
    }

    pub(crate) fn do_setattr(
        &self,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let h = self.host(inode, libc::EROFS)?;
        if h.area == Area::Union {
            self.copy_up(&h)?;
        } else if !h.area.writable() {
            return Err(err(libc::EROFS));
        }
        let fd = h.cur();
        if valid.intersects(SetattrValid::UID | SetattrValid::GID) {
            let uid = if valid.contains(SetattrValid::UID) {
                attr.st_uid
            } else {
                u32::MAX
            };
            let gid = if valid.contains(SetattrValid::GID) {
                attr.st_gid
            } else {
                u32::MAX
            };
            sys::chown_fd(fd, uid, gid)?;
        }
        if valid.contains(SetattrValid::MODE) {
            if h.kind == libc::S_IFLNK {
                return Err(err(libc::EOPNOTSUPP));
            }
            sys::chmod_fd(fd, attr.st_mode & 0o7777)?;
        }
        if valid.contains(SetattrValid::SIZE) {
            if h.kind != libc::S_IFREG {
                return Err(err(if h.is_dir() {
                    libc::EISDIR
                } else {
                    libc::EINVAL
                }));
            }
            let size = u64::try_from(attr.st_size).map_err(|_| err(libc::EINVAL))?;
            let open = handle.and_then(|id| self.handle(id).ok());
            match open.as_deref() {
                Some(Handle::File { file, .. }) => sys::ftruncate(file, size)?,
                _ => sys::ftruncate(&sys::reopen(fd, libc::O_WRONLY)?, size)?,
            }
        }
        let time_bits = SetattrValid::ATIME
            | SetattrValid::MTIME
            | SetattrValid::ATIME_NOW
            | SetattrValid::MTIME_NOW;
        if valid.intersects(time_bits) {
            let ts = |set: SetattrValid, now: SetattrValid, sec: i64, nsec: i64| {
                if valid.contains(now) {
                    libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_NOW,
                    }
                } else if valid.contains(set) {
                    libc::timespec {
                        tv_sec: sec,
                        tv_nsec: nsec,
                    }
                } else {
                    libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_OMIT,
                    }
                }
            };
            let times = [
                ts(
                    SetattrValid::ATIME,
                    SetattrValid::ATIME_NOW,
                    attr.st_atime,
                    attr.st_atime_nsec,
                ),
                ts(
                    SetattrValid::MTIME,
                    SetattrValid::MTIME_NOW,
                    attr.st_mtime,
                    attr.st_mtime_nsec,
                ),
            ];
            sys::utimens_fd(fd, times)?;
        }
        // HANDLE_KILLPRIV_V2 (`/rootfs` only): a truncate by a caller without CAP_FSETID.
        if valid.contains(SetattrValid::SIZE | SetattrValid::KILL_SUIDGID) {
            super::union::kill_suidgid(fd)?;
        }
        Ok((sys::stat_fd(fd)?, self.timeout(h.area)))
    }

    pub(crate) fn do_readlink(&self, inode: u64) -> io::Result<Vec<u8>> {
        let h = self.host(inode, libc::EINVAL)?;
        if h.kind != libc::S_IFLNK {
            return Err(err(libc::EINVAL));
        }
        sys::readlink_fd(h.cur())
    }

    pub(crate) fn do_statfs(&self, inode: u64) -> io::Result<statvfs64> {
        match self.node(inode)? {
            Node::Host(h) => sys::statfs_fd(h.cur()),
            // The virtual part reports the writable filesystem: that is where space matters.
            _ => sys::statfs_fd(
                self.anchor(b"upper")
                    .map(|(fd, _)| fd)
                    .ok_or_else(|| err(libc::EIO))?,
            ),
        }
    }
}
