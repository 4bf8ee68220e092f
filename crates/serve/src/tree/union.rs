//! `/rootfs`: the container's root filesystem merged by the daemon — upper dir over the
//! layers, with overlayfs' rules — so the guest mounts this directory as its root and runs no
//! overlay of its own (`strata serve --union`, plan field `rootfs`).
//!
//! Why: a guest overlay over a FUSE upper pays 8 round trips per new file (a negative lookup
//! it drops and redoes, MKNOD instead of CREATE, three xattr probes); served merged, a create
//! is 5 (LOOKUP, CREATE, GETATTR, the new inode's one GETXATTR, WRITE), and a
//! walk's lookups fall through the layers on the host, natively (docs/benchmarks.md, setup (f)).
//!
//! The upper dir keeps the overlayfs on-disk format a host `mount -t overlay` reads back
//! (the oracle in this module's tests): a removed name that a layer still has becomes a
//! whiteout (char 0:0, made with `RENAME_WHITEOUT` when an upper entry goes); a directory made
//! where a whiteout was is opaque (`trusted.overlay.opaque=y`); a file or directory of a layer
//! is copied up (data, owner, mode, times, xattrs; built in `work`, renamed into place, so a
//! crash leaves either the layer's version or the whole copy) before its first change, with
//! every parent directory first. As overlayfs with `redirect_dir=off`, a directory that has
//! layer content cannot be renamed (EXDEV: `mv` copies it instead), and copy-up breaks a
//! layer file's hard links. `trusted.overlay.*` is the daemon's: the guest cannot read or set
//! it here.
//!
//! A node of this tree ([`UnionNode`]) knows its parent and name (to copy itself up), the
//! layer directories it merges, and its upper inode once it has one; its node id stays the
//! same across a copy-up. Copy-ups are serialized by one lock; nothing else is.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use fuse_backend_rs::api::filesystem::{Context, Entry};

use super::merged::{self, is_opaque, Found, LowerFound, MergedEntry, OPAQUE};
use super::{check_name, err, Area, HostNode, StrataFs};
use crate::sys;

/// What a node of `/rootfs` is beyond its host inode.
pub(crate) struct UnionNode {
    /// The directory it was looked up in, and its name there (`None`: the root).
    pub parent: Option<(Arc<HostNode>, CString)>,
    /// Whether the node's `fd` is in the upper dir (else in layer `layer`).
    pub in_upper: bool,
    /// The layer of `fd` when it is not in the upper dir.
    pub layer: u16,
    /// The upper inode a copy-up made after the lookup (and its place in the fd budget).
    pub copied: OnceLock<(OwnedFd, crate::fdbudget::Permit)>,
    /// A directory's layer directories below `fd` (or below the upper dir), topmost first,
    /// ending at an opaque one.
    pub lowers: Vec<(u16, OwnedFd)>,
    /// A directory's listing and the namespace generation it was made at
    /// ([`StrataFs::union_listing_cached`]).
    pub listing: std::sync::Mutex<Option<(u64, Arc<Vec<MergedEntry>>)>>,
}

impl Drop for UnionNode {
    /// Let go of the parents one by one: a chain of thousands of directories dropped by its
    /// last child would otherwise recurse as deep.
    fn drop(&mut self) {
        let mut next = self.parent.take().map(|(p, _)| p);
        while let Some(p) = next {
            next = match Arc::try_unwrap(p) {
                Ok(mut node) => node
                    .union
                    .as_mut()
                    .and_then(|u| u.parent.take())
                    .map(|(p, _)| p),
                Err(_) => None,
            };
        }
    }
}

/// What a name is in a `/rootfs` directory: in its upper dir, and in the layers below it.
struct NameState {
    upper: Found,
    lower: LowerFound,
}

impl NameState {
    fn visible(&self) -> bool {
        match self.upper {
            Found::Dir(_) | Found::Other(_) => true,
            Found::Whiteout => false,
            Found::Missing => !matches!(self.lower, LowerFound::Missing),
        }
    }

    fn is_dir(&self) -> bool {
        match self.upper {
            Found::Dir(_) => true,
            Found::Missing => matches!(self.lower, LowerFound::Dirs(_)),
            _ => false,
        }
    }

    /// A layer has the name: removing it needs a whiteout.
    fn lower_positive(&self) -> bool {
        !matches!(self.lower, LowerFound::Missing)
    }

    /// The layer directories an upper directory of this name merges (none if it is opaque).
    fn merged_lowers(&self) -> bool {
        match &self.upper {
            Found::Dir(d) => !is_opaque(d.as_fd()) && matches!(self.lower, LowerFound::Dirs(_)),
            Found::Missing => matches!(self.lower, LowerFound::Dirs(_)),
            _ => false,
        }
    }
}

/// An attribute of the daemon's on-disk format, not the container's.
pub(crate) fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
}

impl HostNode {
    /// The inode operations act on: the upper one once there is one.
    pub(crate) fn cur(&self) -> BorrowedFd<'_> {
        match &self.union {
            Some(u) if !u.in_upper => u.copied.get().map_or(self.fd.as_fd(), |(f, _)| f.as_fd()),
            _ => self.fd.as_fd(),
        }
    }

    /// The upper inode of a `/rootfs` node, if it has one yet.
    pub(crate) fn upper(&self) -> Option<BorrowedFd<'_>> {
        let u = self.union.as_ref()?;
        if u.in_upper {
            Some(self.fd.as_fd())
        } else {
            u.copied.get().map(|(f, _)| f.as_fd())
        }
    }

    /// A `/rootfs` directory's layer directories, topmost first.
    fn union_lowers(&self) -> Vec<(u16, BorrowedFd<'_>)> {
        let Some(u) = &self.union else {
            return Vec::new();
        };
        let top = (!u.in_upper).then(|| (u.layer, self.fd.as_fd()));
        top.into_iter()
            .chain(u.lowers.iter().map(|(l, f)| (*l, f.as_fd())))
            .collect()
    }

    /// The whole stack a listing merges: the upper dir (if any) over the layer directories.
    pub(crate) fn union_stack(&self) -> Vec<BorrowedFd<'_>> {
        let lowers = self.union_lowers();
        self.upper()
            .into_iter()
            .chain(lowers.into_iter().map(|(_, f)| f))
            .collect()
    }
}

impl StrataFs {
    /// `/rootfs` itself: the upper dir over every layer's root.
    pub(crate) fn union_root(&self) -> io::Result<Entry> {
        if !self.union {
            return Err(err(libc::ENOENT));
        }
        let mut lowers = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let d = sys::open_path_at(l.as_fd(), c".")?;
            let opaque = is_opaque(d.as_fd());
            lowers.push((i as u16, d));
            if opaque {
                break;
            }
        }
        let node = upper_node(None, lowers);
        self.register_union(sys::open_path_at(self.upper.as_fd(), c".")?, node, true)
    }

    fn name_state(&self, dir: &HostNode, name: &CStr) -> io::Result<NameState> {
        let upper = match dir.upper() {
            Some(u) => merged::find(u, name)?,
            None => Found::Missing,
        };
        // An opaque upper directory hides its layers: they were cut off at lookup already.
        let lower = merged::lower_find(dir.union_lowers().into_iter(), name)?;
        Ok(NameState { upper, lower })
    }

    /// Look `name` up in the `/rootfs` directory `dir`.
    pub(crate) fn union_lookup(&self, dir: &Arc<HostNode>, name: &CStr) -> io::Result<Entry> {
        let st = self.name_state(dir, name)?;
        let parent = Some((dir.clone(), name.to_owned()));
        let (fd, node) = match (st.upper, st.lower) {
            (Found::Whiteout, _) | (Found::Missing, LowerFound::Missing) => {
                return Ok(Entry {
                    entry_timeout: self.cache.rw,
                    ..Entry::default()
                })
            }
            (Found::Other(fd), _) => (fd, upper_node(parent, Vec::new())),
            (Found::Dir(fd), lower) => {
                let lowers = match lower {
                    LowerFound::Dirs(v) if !is_opaque(fd.as_fd()) => v,
                    _ => Vec::new(),
                };
                (fd, upper_node(parent, lowers))
            }
            (Found::Missing, LowerFound::File(layer, fd)) => {
                (fd, lower_node(parent, layer, vec![]))
            }
            (Found::Missing, LowerFound::Dirs(mut v)) => {
                let (layer, fd) = v.remove(0);
                (fd, lower_node(parent, layer, v))
            }
        };
        self.register_union(fd, node, true)
    }

    /// The listing of `/rootfs` directory `dir`, made anew.
    pub(crate) fn union_listing(&self, dir: &HostNode) -> io::Result<Vec<MergedEntry>> {
        merged::listing(dir.union_stack().into_iter())
    }

    /// The listing of `/rootfs` directory `dir` for READDIR without a handle (the guest sends
    /// no OPENDIR: one READDIRPLUS after another, each from an offset into the listing): kept
    /// with the node until the namespace changes, so a large directory read 4 KiB at a time is
    /// listed once, not once per request.
    pub(crate) fn union_listing_cached(&self, dir: &HostNode) -> io::Result<Arc<Vec<MergedEntry>>> {
        let u = dir.union.as_ref().ok_or_else(|| err(libc::EIO))?;
        // Read before listing: a change that lands meanwhile bumps it, and the next request
        // lists again.
        let gen = self.union_gen.load(Ordering::Acquire);
        if let Some((g, l)) = &*u.listing.lock().map_err(|_| super::lock_poisoned())? {
            if *g == gen {
                return Ok(l.clone());
            }
        }
        let made = Arc::new(self.union_listing(dir)?);
        *u.listing.lock().map_err(|_| super::lock_poisoned())? = Some((gen, made.clone()));
        Ok(made)
    }

    /// A name of `/rootfs` changed: cached listings are stale (after the change, never before).
    fn namespace_changed(&self) {
        self.union_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// The node behind `id` if it is a `/rootfs` node.
    pub(crate) fn union_node(&self, id: u64) -> io::Result<Option<Arc<HostNode>>> {
        match self.node(id)? {
            super::Node::Host(h) if h.area == Area::Union => Ok(Some(h)),
            _ => Ok(None),
        }
    }

    /// Give `node` an upper inode, copying it (and every parent without one) up from its
    /// layer: afterwards [`HostNode::cur`] is the upper inode.
    pub(crate) fn copy_up(&self, node: &HostNode) -> io::Result<()> {
        if node.upper().is_some() {
            return Ok(());
        }
        let _one = self.copy_lock.lock().map_err(|_| super::lock_poisoned())?;
        // The node and its parents without an upper inode, nearest first (a loop, not
        // recursion: an image's tree may be thousands of directories deep).
        let mut chain: Vec<&HostNode> = Vec::new();
        let mut at = node;
        while at.upper().is_none() {
            chain.push(at);
            let u = at.union.as_ref().ok_or_else(|| err(libc::EIO))?;
            // The root is always in the upper dir; every other node has a parent.
            let (parent, _) = u.parent.as_ref().ok_or_else(|| err(libc::EIO))?;
            at = parent;
        }
        for n in chain.into_iter().rev() {
            self.copy_up_one(n)?;
        }
        Ok(())
    }

    /// Copy up `node`, whose parent has its upper inode.
    fn copy_up_one(&self, node: &HostNode) -> io::Result<()> {
        let u = node.union.as_ref().ok_or_else(|| err(libc::EIO))?;
        let (parent, name) = u.parent.as_ref().ok_or_else(|| err(libc::EIO))?;
        let pdir = parent.upper().ok_or_else(|| err(libc::EIO))?;
        let st = sys::stat_fd(node.fd.as_fd())?;
        let kind = st.st_mode & libc::S_IFMT;
        match merged::find(pdir, name)? {
            Found::Missing => {}
            // A directory copied up already through a newer node of the same name (the guest
            // forgot this one and looked the name up again, while a child it still holds keeps
            // this one alive): the same directory.
            Found::Dir(fd) if kind == libc::S_IFDIR => return self.set_copied(node, fd),
            // A file has one node per name while the guest holds it, so a file in the upper
            // dir under its name is another one, made after this was removed: changing it
            // would change the wrong file.
            _ => return Err(err(libc::ESTALE)),
        }
        let tmp = self.temp_name();
        let work = self.work.as_fd();
        let made = self.copy_into(node.fd.as_fd(), &st, work, &tmp);
        let fd = match made.and_then(|fd| {
            sys::rename_at(work, &tmp, pdir, name, libc::RENAME_NOREPLACE).map(|()| fd)
        }) {
            Ok(fd) => fd,
            Err(e) => {
                let flags = if kind == libc::S_IFDIR {
                    libc::AT_REMOVEDIR
                } else {
                    0
                };
                let _ = sys::unlink_at(work, &tmp, flags);
                return Err(e);
            }
        };
        self.set_copied(node, fd)
    }

    fn set_copied(&self, node: &HostNode, fd: OwnedFd) -> io::Result<()> {
        let u = node.union.as_ref().ok_or_else(|| err(libc::EIO))?;
        let st = sys::stat_fd(fd.as_fd())?;
        // One more fd, held by this node for as long as it lives (a copy-up is not refused
        // for the budget: the guest's change must not fail halfway).
        if u.copied
            .set((fd, crate::fdbudget::Permit::take(1)))
            .is_err()
        {
            return Ok(());
        }
        self.rekey(
            node,
            super::NodeKey::Inode(Area::Union, st.st_dev, st.st_ino),
        )
    }

    /// A fresh name in the work dir for something being built.
    pub(crate) fn temp_name(&self) -> CString {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        CString::new(format!("#strata-{}-{n}", std::process::id())).unwrap_or_default()
    }

    /// Build a copy of the inode `src` (stat `st`) as `dir/name`: content, owner, mode,
    /// xattrs (but overlayfs' own), then times. Returns an `O_PATH` fd on the copy.
    fn copy_into(
        &self,
        src: BorrowedFd<'_>,
        st: &sys::stat64,
        dir: BorrowedFd<'_>,
        name: &CStr,
    ) -> io::Result<OwnedFd> {
        let kind = st.st_mode & libc::S_IFMT;
        if matches!(kind, libc::S_IFCHR | libc::S_IFBLK) && !self.limits.device_nodes {
            // `--no-device-nodes`: not even an image's own (as a guest overlay's copy-up, a
            // MKNOD, would be refused).
            return Err(err(libc::EPERM));
        }
        match kind {
            libc::S_IFDIR => sys::mkdir_at(dir, name, 0o700)?,
            libc::S_IFREG => {
                let mut to = sys::create_at(dir, name, libc::O_WRONLY | libc::O_EXCL, 0o600)?;
                let mut from = sys::reopen(src, libc::O_RDONLY)?;
                std::io::copy(&mut from, &mut to)?;
            }
            libc::S_IFLNK => {
                let target = CString::new(sys::readlink_fd(src)?).map_err(|_| err(libc::EIO))?;
                sys::symlink_at(&target, dir, name)?;
            }
            _ => sys::mknod_at(dir, name, kind | 0o600, st.st_rdev)?,
        }
        let fd = sys::open_path_at(dir, name)?;
        if kind != libc::S_IFLNK {
            copy_xattrs(src, fd.as_fd())?;
        }
        sys::chown_fd(fd.as_fd(), st.st_uid, st.st_gid)?;
        if kind != libc::S_IFLNK {
            // After the chown, which clears set-id bits.
            sys::chmod_fd(fd.as_fd(), st.st_mode & 0o7777)?;
            let ts = |sec: i64, nsec: i64| libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            };
            sys::utimens_fd(
                fd.as_fd(),
                [
                    ts(st.st_atime, st.st_atime_nsec),
                    ts(st.st_mtime, st.st_mtime_nsec),
                ],
            )?;
        }
        Ok(fd)
    }

    /// Make `name` in `/rootfs` directory `dir` with `make(dir fd, name)` as the guest's
    /// caller: in the upper dir, or, where a whiteout hides a layer's name, built in `work`
    /// and swapped in (a directory made there is opaque: the layer's is gone for good).
    pub(crate) fn union_make<R>(
        &self,
        ctx: &Context,
        dir: &Arc<HostNode>,
        name: &CStr,
        mode: u32,
        make: impl FnOnce(BorrowedFd<'_>, &CStr) -> io::Result<R>,
    ) -> io::Result<(Entry, R)> {
        let st = self.new_name(dir, name)?;
        self.copy_up(dir)?;
        let up = dir.upper().ok_or_else(|| err(libc::EIO))?;
        let (made, fd) = if matches!(st.upper, Found::Whiteout) {
            let tmp = self.temp_name();
            let work = self.work.as_fd();
            let (made, fd) = self.make_as_caller(
                ctx,
                mode,
                || make(work, &tmp),
                || sys::open_path_at(work, &tmp),
            )?;
            let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
            let swapped = if is_dir {
                sys::xattr::set(fd.as_fd(), OPAQUE, b"y", 0)
                    .and_then(|()| sys::rename_at(work, &tmp, up, name, libc::RENAME_EXCHANGE))
                    .and_then(|()| sys::unlink_at(work, &tmp, 0))
            } else {
                sys::rename_at(work, &tmp, up, name, 0)
            };
            if let Err(e) = swapped {
                let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
                let _ = sys::unlink_at(work, &tmp, flags);
                return Err(e);
            }
            (made, fd)
        } else {
            self.make_as_caller(ctx, mode, || make(up, name), || sys::open_path_at(up, name))?
        };
        self.namespace_changed();
        let node = upper_node(Some((dir.clone(), name.to_owned())), Vec::new());
        Ok((self.register_union(fd, node, false)?, made))
    }

    /// What `name` is in `dir` before a new node is made there: EEXIST if it is visible,
    /// ENFILE if the guest holds all the nodes it may.
    fn new_name(&self, dir: &HostNode, name: &CStr) -> io::Result<NameState> {
        check_name(name)?;
        if !dir.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        self.node_room()?;
        let st = self.name_state(dir, name)?;
        if st.visible() {
            return Err(err(libc::EEXIST));
        }
        Ok(st)
    }

    /// UNLINK / RMDIR of `name` in `/rootfs` directory `dir`.
    pub(crate) fn union_remove(
        &self,
        dir: &Arc<HostNode>,
        name: &CStr,
        rmdir: bool,
    ) -> io::Result<()> {
        check_name(name)?;
        let st = self.name_state(dir, name)?;
        if !st.visible() {
            return Err(err(libc::ENOENT));
        }
        match (rmdir, st.is_dir()) {
            (true, false) => return Err(err(libc::ENOTDIR)),
            (false, true) => return Err(err(libc::EISDIR)),
            _ => {}
        }
        if rmdir {
            self.check_empty(dir, name)?;
        }
        self.copy_up(dir)?;
        let up = dir.upper().ok_or_else(|| err(libc::EIO))?;
        let flags = if rmdir { libc::AT_REMOVEDIR } else { 0 };
        let removed = match (&st.upper, st.lower_positive()) {
            (Found::Missing, _) => make_whiteout(up, name),
            (Found::Dir(d), positive) if rmdir => {
                clear_whiteouts(d.as_fd())?;
                if positive {
                    self.remove_leaving_whiteout(up, name, flags)
                } else {
                    sys::unlink_at(up, name, flags)
                }
            }
            (_, true) => self.remove_leaving_whiteout(up, name, flags),
            (_, false) => sys::unlink_at(up, name, flags),
        };
        self.namespace_changed();
        removed
    }

    /// Replace `dir/name` by a whiteout in one step, then remove what it was.
    fn remove_leaving_whiteout(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        flags: i32,
    ) -> io::Result<()> {
        let tmp = self.temp_name();
        let work = self.work.as_fd();
        sys::rename_at(dir, name, work, &tmp, libc::RENAME_WHITEOUT)?;
        sys::unlink_at(work, &tmp, flags)
    }

    /// ENOTEMPTY unless the `/rootfs` directory `dir/name` lists nothing.
    fn check_empty(&self, dir: &Arc<HostNode>, name: &CStr) -> io::Result<()> {
        let e = self.union_lookup(dir, name)?;
        if e.inode == 0 {
            return Err(err(libc::ENOENT));
        }
        let listed = self.union_node(e.inode).and_then(|n| {
            let n = n.ok_or_else(|| err(libc::EIO))?;
            self.union_listing(&n)
        });
        self.forget_node(e.inode, 1);
        if listed?.len() > 2 {
            return Err(err(libc::ENOTEMPTY));
        }
        Ok(())
    }

    /// RENAME in `/rootfs` (flags: `RENAME_NOREPLACE` only).
    pub(crate) fn union_rename(
        &self,
        from: &Arc<HostNode>,
        oldname: &CStr,
        to: &Arc<HostNode>,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        check_name(oldname)?;
        check_name(newname)?;
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(err(libc::EINVAL));
        }
        let src = self.name_state(from, oldname)?;
        if !src.visible() {
            return Err(err(libc::ENOENT));
        }
        let is_dir = src.is_dir();
        // overlayfs with redirect_dir=off: a directory with layer content stays where it is.
        if is_dir && src.merged_lowers() {
            return Err(err(libc::EXDEV));
        }
        let dst = self.name_state(to, newname)?;
        if dst.visible() {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(err(libc::EEXIST));
            }
            match (is_dir, dst.is_dir()) {
                (true, false) => return Err(err(libc::ENOTDIR)),
                (false, true) => return Err(err(libc::EISDIR)),
                _ => {}
            }
            if let (Found::Other(a) | Found::Dir(a), Found::Other(b) | Found::Dir(b)) =
                (&src.upper, &dst.upper)
            {
                let (a, b) = (sys::stat_fd(a.as_fd())?, sys::stat_fd(b.as_fd())?);
                if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) {
                    return Ok(()); // two names of one file: rename(2) does nothing
                }
            }
            if is_dir {
                self.check_empty(to, newname)?;
            }
        }
        // The source in the upper dir, as the node the guest holds for it (if any).
        if matches!(src.upper, Found::Missing) {
            let e = self.union_lookup(from, oldname)?;
            let copied = self
                .union_node(e.inode)
                .and_then(|n| self.copy_up(&*n.ok_or_else(|| err(libc::EIO))?));
            self.forget_node(e.inode, 1);
            copied?;
        } else {
            self.copy_up(from)?;
        }
        self.copy_up(to)?;
        let up_from = from.upper().ok_or_else(|| err(libc::EIO))?;
        let up_to = to.upper().ok_or_else(|| err(libc::EIO))?;
        if let Found::Dir(d) = &dst.upper {
            clear_whiteouts(d.as_fd())?;
        }
        if is_dir && dst.lower_positive() {
            // The moved directory must hide the layers' one of its new name.
            let moved = sys::open_path_at(up_from, oldname)?;
            sys::xattr::set(moved.as_fd(), OPAQUE, b"y", 0)?;
        }
        if is_dir && matches!(dst.upper, Found::Whiteout) {
            // A directory cannot replace the whiteout (a char device): swap them, and the
            // whiteout lands on the old name, which needs one if a layer has it.
            let swapped = sys::rename_at(up_from, oldname, up_to, newname, libc::RENAME_EXCHANGE)
                .and_then(|()| match src.lower_positive() {
                    true => Ok(()),
                    false => sys::unlink_at(up_from, oldname, 0),
                });
            self.namespace_changed();
            return swapped;
        }
        let wh = if src.lower_positive() {
            libc::RENAME_WHITEOUT
        } else {
            0
        };
        let renamed = sys::rename_at(up_from, oldname, up_to, newname, wh | flags);
        self.namespace_changed();
        renamed
    }

    /// LINK of `node` as `dir/name` in `/rootfs`: a layer file is copied up first.
    pub(crate) fn union_link(
        &self,
        node: &Arc<HostNode>,
        dir: &Arc<HostNode>,
        name: &CStr,
    ) -> io::Result<Entry> {
        if node.is_dir() {
            return Err(err(libc::EPERM));
        }
        let st = self.new_name(dir, name)?;
        self.copy_up(node)?;
        self.copy_up(dir)?;
        let src = node.upper().ok_or_else(|| err(libc::EIO))?;
        let up = dir.upper().ok_or_else(|| err(libc::EIO))?;
        if matches!(st.upper, Found::Whiteout) {
            let tmp = self.temp_name();
            let work = self.work.as_fd();
            sys::link_at(src, work, &tmp)?;
            if let Err(e) = sys::rename_at(work, &tmp, up, name, 0) {
                let _ = sys::unlink_at(work, &tmp, 0);
                return Err(e);
            }
        } else {
            sys::link_at(src, up, name)?;
        }
        self.namespace_changed();
        let fd = sys::open_path_at(up, name)?;
        let node = upper_node(Some((dir.clone(), name.to_owned())), Vec::new());
        self.register_union(fd, node, false)
    }
}

fn upper_node(parent: Option<(Arc<HostNode>, CString)>, lowers: Vec<(u16, OwnedFd)>) -> UnionNode {
    UnionNode {
        parent,
        in_upper: true,
        layer: 0,
        copied: OnceLock::new(),
        lowers,
        listing: Default::default(),
    }
}

fn lower_node(
    parent: Option<(Arc<HostNode>, CString)>,
    layer: u16,
    lowers: Vec<(u16, OwnedFd)>,
) -> UnionNode {
    UnionNode {
        parent,
        in_upper: false,
        layer,
        copied: OnceLock::new(),
        lowers,
        listing: Default::default(),
    }
}

/// Clear the set-user-ID bit of `fd`'s inode, and set-group-ID if group-executable (what
/// Linux clears on a write or truncate by a caller without CAP_FSETID): the daemon's own
/// writes keep them, so with HANDLE_KILLPRIV_V2 the guest kernel asks the daemon to.
pub(crate) fn kill_suidgid(fd: BorrowedFd<'_>) -> io::Result<()> {
    let st = sys::stat_fd(fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(());
    }
    let mut mode = st.st_mode & 0o7777;
    mode &= !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        mode &= !libc::S_ISGID;
    }
    if mode != st.st_mode & 0o7777 {
        sys::chmod_fd(fd, mode)?;
    }
    Ok(())
}

impl StrataFs {
    /// After an OPEN or CREATE with `O_TRUNC` that the guest kernel flagged
    /// (`FOPEN_IN_KILL_SUIDGID`, HANDLE_KILLPRIV_V2): clear the set-id bits.
    pub(crate) fn kill_suidgid_on_open(
        &self,
        handle: Option<u64>,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<()> {
        let flagged = fuse_flags & fuse_backend_rs::abi::fuse_abi::FOPEN_IN_KILL_SUIDGID != 0;
        match handle {
            Some(h) if self.union && flagged && flags & libc::O_TRUNC as u32 != 0 => {
                self.kill_suidgid_handle(h)
            }
            _ => Ok(()),
        }
    }

    /// A flagged open: clear the set-id bits of the open file.
    fn kill_suidgid_handle(&self, handle: u64) -> io::Result<()> {
        if !self.union {
            return Ok(());
        }
        match &*self.handle(handle)? {
            super::Handle::File { file, .. } => kill_suidgid(file.as_fd()),
            _ => Ok(()),
        }
    }
}

/// A whiteout (char 0:0) at `dir/name`.
fn make_whiteout(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    sys::mknod_at(dir, name, libc::S_IFCHR, 0)
}

/// Remove the whiteouts of an upper directory that lists nothing else (before it is removed
/// or replaced: rmdir(2) refuses a directory with entries).
fn clear_whiteouts(dir: BorrowedFd<'_>) -> io::Result<()> {
    let f = sys::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut names: HashSet<Vec<u8>> = HashSet::new();
    loop {
        let n = sys::getdents(&f, &mut buf)?;
        if n == 0 {
            break;
        }
        for d in super::dir::dirents(&buf[..n]) {
            if d.name != b"." && d.name != b".." {
                names.insert(d.name.to_vec());
            }
        }
    }
    for n in names {
        let c = CString::new(n).map_err(|_| err(libc::EIO))?;
        if matches!(merged::find(dir, &c)?, Found::Whiteout) {
            sys::unlink_at(dir, &c, 0)?;
        }
    }
    Ok(())
}

/// Copy every extended attribute of `from` to `to`, but overlayfs' own.
fn copy_xattrs(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
    let list = match sys::xattr::list(from, 64 * 1024) {
        Ok(l) => l,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP)) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if is_private_xattr(name) {
            continue;
        }
        let c = CString::new(name).map_err(|_| err(libc::EIO))?;
        let v = match sys::xattr::get(from, &c, 64 * 1024) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        sys::xattr::set(to, &c, &v, 0)?;
    }
    Ok(())
}
