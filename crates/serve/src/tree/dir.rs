//! Directories: listing, and every change to the namespace (all confined to the writable area).

use std::ffi::CStr;
use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use fuse_backend_rs::api::filesystem::{Context, DirEntry, Entry};

use super::{check_name, err, Area, Handle, HostNode, Node, StrataFs, LAYERS, PLAN, ROOT};
use crate::sys;

/// Rename flags the guest may use (overlayfs uses all three).
const RENAME_FLAGS: u32 = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;

/// One `linux_dirent64` record parsed out of a `getdents64` buffer.
pub(crate) struct RawDirent<'a> {
    pub ino: u64,
    pub off: u64,
    pub kind: u8,
    pub name: &'a [u8],
}

/// Iterate the records of a `getdents64` buffer, stopping at the first malformed one.
pub(crate) fn dirents(buf: &[u8]) -> impl Iterator<Item = RawDirent<'_>> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rec = buf.get(pos..)?;
        let head = rec.get(..19)?;
        let ino = u64::from_ne_bytes(head[0..8].try_into().ok()?);
        let off = i64::from_ne_bytes(head[8..16].try_into().ok()?) as u64;
        let reclen = u16::from_ne_bytes(head[16..18].try_into().ok()?) as usize;
        let kind = head[18];
        let name_area = rec.get(19..reclen)?;
        let len = name_area.iter().position(|&c| c == 0)?;
        pos += reclen;
        Some(RawDirent {
            ino,
            off,
            kind,
            name: &name_area[..len],
        })
    })
}

impl StrataFs {
    pub(crate) fn do_opendir(&self, inode: u64) -> io::Result<Option<u64>> {
        match self.node(inode)? {
            Node::Root | Node::Layers => Ok(None),
            Node::Plan => Err(err(libc::ENOTDIR)),
            Node::Host(h) => {
                if !h.is_dir() {
                    return Err(err(libc::ENOTDIR));
                }
                self.handle_room()?;
                if h.area == Area::Union {
                    // Made at each OPENDIR: unlike a `/lower` directory's, it changes.
                    let entries = Arc::new(self.union_listing(&h)?);
                    return Ok(Some(self.add_handle(Handle::Merged { entries })?));
                }
                if h.area == Area::Merged {
                    let entries = self.merged_listing_shared(&h)?;
                    return Ok(Some(self.add_handle(Handle::Merged { entries })?));
                }
                let dir = sys::reopen(h.fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
                Ok(Some(self.add_handle(Handle::Dir {
                    dir: Mutex::new(dir),
                })?))
            }
        }
    }

    pub(crate) fn do_readdir(
        &self,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        match self.node(inode)? {
            Node::Root => {
                const TREE: [(&[u8], u64, u32); 8] = [
                    (b".", ROOT, libc::DT_DIR as u32),
                    (b"..", ROOT, libc::DT_DIR as u32),
                    (b"layers", LAYERS, libc::DT_DIR as u32),
                    (b"lower", ROOT, libc::DT_DIR as u32),
                    (b"plan.json", PLAN, libc::DT_REG as u32),
                    (b"upper", ROOT, libc::DT_DIR as u32),
                    (b"work", ROOT, libc::DT_DIR as u32),
                    (b"rootfs", ROOT, libc::DT_DIR as u32),
                ];
                // The layer device lists only what it serves; `rootfs` only with --union.
                let names = match (self.is_tree(), self.union) {
                    (true, true) => &TREE[..],
                    (true, false) => &TREE[..7],
                    (false, _) => &TREE[..4],
                };
                for (i, (name, ino, type_)) in names.iter().enumerate().skip(offset as usize) {
                    let e = DirEntry {
                        ino: *ino,
                        offset: i as u64 + 1,
                        type_: *type_,
                        name,
                    };
                    if add_entry(e)? == 0 {
                        break;
                    }
                }
                Ok(())
            }
            Node::Layers => {
                let total = self.n_layers() as u64 + 2;
                for i in offset..total {
                    let owned;
                    let name: &[u8] = match i {
                        0 => b".",
                        1 => b"..",
                        n => {
                            owned = (n - 2).to_string();
                            owned.as_bytes()
                        }
                    };
                    let e = DirEntry {
                        ino: if i < 2 { LAYERS } else { ROOT },
                        offset: i + 1,
                        type_: libc::DT_DIR as u32,
                        name,
                    };
                    if add_entry(e)? == 0 {
                        break;
                    }
                }
                Ok(())
            }
            Node::Plan => Err(err(libc::ENOTDIR)),
            Node::Host(node) if handle == 0 => {
                self.readdir_unopened(&node, size, offset, false, &mut |e, _| add_entry(e))
            }
            Node::Host(node) => {
                let h = self.handle(handle)?;
                let dir = match &*h {
                    Handle::Dir { dir } => dir,
                    Handle::Merged { entries } => {
                        return self.merged_readdir(&node, entries, offset, false, &mut |e, _| {
                            add_entry(e)
                        })
                    }
                    Handle::File { .. } => return Err(err(libc::EBADF)),
                };
                host_dirents(dir, size, offset, &mut |e| Ok(add_entry(e)? != 0))
            }
        }
    }

    /// READDIRPLUS: the entries of [`do_readdir`](Self::do_readdir), each with its lookup
    /// (a counted node reference, as a LOOKUP would give), so the guest's dcache is filled by
    /// one request per buffer instead of one LOOKUP per name. `.`, `..` and the virtual
    /// directories' entries come without one (node 0: the kernel then looks them up itself).
    pub(crate) fn do_readdirplus(
        &self,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let dir = match self.node(inode)? {
            Node::Host(h) => h,
            _ => {
                return self.do_readdir(inode, handle, size, offset, &mut |e| {
                    add_entry(e, Entry::default())
                })
            }
        };
        if handle == 0 {
            return self.readdir_unopened(&dir, size, offset, true, add_entry);
        }
        let h = self.handle(handle)?;
        let file = match &*h {
            Handle::Dir { dir } => dir,
            Handle::Merged { entries } => {
                return self.merged_readdir(&dir, entries, offset, true, add_entry)
            }
            Handle::File { .. } => return Err(err(libc::EBADF)),
        };
        self.host_readdirplus(&dir, file, size, offset, add_entry)
    }

    /// READDIR(PLUS) of a host directory the guest did not open (OPENDIR is answered ENOSYS,
    /// so the kernel sends none, and no RELEASEDIR either: two round trips less per directory
    /// a walk lists). Each request starts from its offset: a merged listing is the node's
    /// (made once, or, in `/rootfs`, once per namespace generation); a host directory is opened
    /// again and sought to the offset (a cookie of the host filesystem, stable across opens).
    fn readdir_unopened(
        &self,
        dir: &Arc<HostNode>,
        size: u32,
        offset: u64,
        plus: bool,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        if !dir.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        let entries = match dir.area {
            Area::Union => self.union_listing_cached(dir)?,
            Area::Merged => self.merged_listing_shared(dir)?,
            Area::Layer(_) | Area::Rw => {
                let f = Mutex::new(sys::reopen(
                    dir.fd.as_fd(),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                )?);
                if plus {
                    return self.host_readdirplus(dir, &f, size, offset, add_entry);
                }
                return host_dirents(&f, size, offset, &mut |e| {
                    Ok(add_entry(e, Entry::default())? != 0)
                });
            }
        };
        self.merged_readdir(dir, &entries, offset, plus, add_entry)
    }

    /// READDIRPLUS of an open host directory: each entry with its lookup.
    fn host_readdirplus(
        &self,
        dir: &HostNode,
        file: &Mutex<std::fs::File>,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        host_dirents(file, size, offset, &mut |e| {
            let entry = if e.name == b"." || e.name == b".." {
                Entry::default()
            } else {
                // A name that vanished (upper changed on the host) or cannot be opened is
                // listed without attributes; the guest's own lookup reports it.
                match std::ffi::CString::new(e.name)
                    .ok()
                    .and_then(|c| sys::open_path_at(dir.fd.as_fd(), &c).ok())
                {
                    Some(fd) => self.register(fd, dir.area).unwrap_or_default(),
                    None => Entry::default(),
                }
            };
            let node = entry.inode;
            if add_entry(e, entry)? == 0 {
                // Not sent: take back the reference the guest will never forget.
                if node != 0 {
                    self.forget_node(node, 1);
                }
                return Ok(false);
            }
            Ok(true)
        })
    }

    /// Make a name with `make` as the guest's caller ([`StrataFs::make_as_caller`]) and hand
    /// it to the guest, registered as a node.
    fn created(
        &self,
        ctx: &Context,
        dir: &HostNode,
        name: &CStr,
        mode: u32,
        make: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<Entry> {
        let ((), fd) =
            self.make_as_caller(ctx, mode, make, || sys::open_path_at(dir.fd.as_fd(), name))?;
        self.register_new(fd, dir.area)
    }

    pub(crate) fn do_mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        check_name(name)?;
        let perm = mode & !umask & 0o7777;
        if let Some(dir) = self.union_node(parent)? {
            let made = self.union_make(ctx, &dir, name, libc::S_IFDIR | perm, |d, n| {
                sys::mkdir_at(d, n, perm)
            });
            return made.map(|(e, ())| e);
        }
        let dir = self.rw_dir(parent)?;
        self.node_room()?;
        self.created(ctx, &dir, name, libc::S_IFDIR | perm, || {
            sys::mkdir_at(dir.fd.as_fd(), name, perm)
        })
    }

    pub(crate) fn do_mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        check_name(name)?;
        let union = self.union_node(parent)?;
        let kind = mode & libc::S_IFMT;
        // Fifos, sockets, plain files and the overlayfs whiteout (char 0:0) always; block and
        // char devices unless refused (`--no-device-nodes`). The daemon never opens a device
        // node (open refuses non-regular files); the guest kernel opens them with its own
        // drivers. On the host they sit in the upper dir, which only root can reach (the
        // store's container dirs are 0700; see docs/security.md).
        let allowed = matches!(kind, libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK)
            || (kind == libc::S_IFCHR && rdev == 0)
            || (matches!(kind, libc::S_IFCHR | libc::S_IFBLK) && self.limits.device_nodes);
        if !allowed {
            return Err(err(libc::EPERM));
        }
        let perm = mode & !umask & 0o7777;
        if let Some(dir) = union {
            // In `/rootfs` a char 0:0 is a whiteout: the guest cannot make one (as overlayfs).
            if kind == libc::S_IFCHR && rdev == 0 {
                return Err(err(libc::EPERM));
            }
            let made = self.union_make(ctx, &dir, name, kind | perm, |d, n| {
                sys::mknod_at(d, n, kind | perm, rdev as u64)
            });
            return made.map(|(e, ())| e);
        }
        let dir = self.rw_dir(parent)?;
        self.node_room()?;
        if kind == libc::S_IFREG {
            if let Some(made) = self.mknod_file(ctx, &dir, name, perm) {
                return made;
            }
        }
        self.created(ctx, &dir, name, kind | perm, || {
            sys::mknod_at(dir.fd.as_fd(), name, kind | perm, rdev as u64)
        })
    }

    pub(crate) fn do_symlink(
        &self,
        ctx: &Context,
        target: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        check_name(name)?;
        if target.to_bytes().is_empty() || target.to_bytes().len() >= libc::PATH_MAX as usize {
            return Err(err(libc::EINVAL));
        }
        if let Some(dir) = self.union_node(parent)? {
            let made = self.union_make(ctx, &dir, name, libc::S_IFLNK | 0o777, |d, n| {
                sys::symlink_at(target, d, n)
            });
            return made.map(|(e, ())| e);
        }
        let dir = self.rw_dir(parent)?;
        self.node_room()?;
        // The target is stored as text; the daemon never follows it.
        self.created(ctx, &dir, name, libc::S_IFLNK | 0o777, || {
            sys::symlink_at(target, dir.fd.as_fd(), name)
        })
    }

    pub(crate) fn do_unlink(&self, parent: u64, name: &CStr, flags: i32) -> io::Result<()> {
        check_name(name)?;
        if let Some(dir) = self.union_node(parent)? {
            return self.union_remove(&dir, name, flags == libc::AT_REMOVEDIR);
        }
        let dir = self.rw_dir(parent)?;
        sys::unlink_at(dir.fd.as_fd(), name, flags)
    }

    pub(crate) fn do_rename(
        &self,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        check_name(oldname)?;
        check_name(newname)?;
        if flags & !RENAME_FLAGS != 0 {
            return Err(err(libc::EINVAL));
        }
        match (self.union_node(olddir)?, self.union_node(newdir)?) {
            (Some(from), Some(to)) => {
                return self.union_rename(&from, oldname, &to, newname, flags)
            }
            (None, None) => {}
            // Between `/rootfs` and the upper dir itself: different trees to the guest.
            _ => return Err(err(libc::EXDEV)),
        }
        let from = self.rw_dir(olddir)?;
        let to = self.rw_dir(newdir)?;
        sys::rename_at(from.fd.as_fd(), oldname, to.fd.as_fd(), newname, flags)
    }

    pub(crate) fn do_link(&self, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        check_name(newname)?;
        let src = self.host(inode, libc::EPERM)?;
        match (src.area == Area::Union, self.union_node(newparent)?) {
            (true, Some(dir)) => return self.union_link(&src, &dir, newname),
            (false, None) => {}
            _ => return Err(err(libc::EXDEV)),
        }
        // A hard link from a layer into the upper dir would make a shared, immutable layer
        // file writable by this guest: report it like a link across filesystems.
        if !src.area.writable() {
            return Err(err(libc::EXDEV));
        }
        if src.is_dir() {
            return Err(err(libc::EPERM));
        }
        let dir = self.rw_dir(newparent)?;
        self.node_room()?;
        sys::link_at(src.fd.as_fd(), dir.fd.as_fd(), newname)?;
        let fd = sys::open_path_at(dir.fd.as_fd(), newname)?;
        self.register_new(fd, dir.area)
    }
}

/// The entries of an open host directory from `offset` on, read `size` bytes (1-64 KiB) at a
/// time, each given to `each` until it returns `false` or the directory ends.
fn host_dirents(
    dir: &std::sync::Mutex<std::fs::File>,
    size: u32,
    offset: u64,
    each: &mut dyn FnMut(DirEntry) -> io::Result<bool>,
) -> io::Result<()> {
    let dir = dir.lock().map_err(|_| err(libc::EIO))?;
    sys::lseek(&dir, offset, libc::SEEK_SET as u32)?;
    let mut buf = vec![0u8; (size as usize).clamp(1024, 64 * 1024)];
    loop {
        let n = sys::getdents(&dir, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        for d in dirents(&buf[..n]) {
            let e = DirEntry {
                ino: d.ino,
                offset: d.off,
                type_: d.kind as u32,
                name: d.name,
            };
            if !each(e)? {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dirents;

    #[test]
    fn malformed_dirent_buffers_stop_cleanly() {
        // Truncated header, reclen past the end, missing NUL: no panic, no entries.
        assert_eq!(dirents(&[0u8; 10]).count(), 0);
        let mut rec = vec![0u8; 24];
        rec[16] = 200; // reclen beyond buffer
        assert_eq!(dirents(&rec).count(), 0);
        let mut rec = vec![b'a'; 24];
        rec[16] = 24;
        rec[17] = 0;
        assert_eq!(dirents(&rec).count(), 0);
    }
}
