//! Open files: open/create, read/write, sync, release.
//!
//! OPEN is answered ENOSYS unless `STRATA_SERVE_OPEN=1` ([`StrataFs::set_file_handles`]): the
//! guest kernel then sends neither OPEN nor RELEASE on the connection (fc->no_open), two round
//! trips less per file it opens, and READ, WRITE, FSYNC, FALLOCATE and LSEEK come with handle
//! 0 and the inode. The daemon opens that inode for the one request ([`IoFile`]); a write to a
//! `/rootfs` file still in its layer copies it up first. What an OPEN did besides opening
//! happens elsewhere then: permission checks in the guest kernel (virtio-fs mounts with
//! `default_permissions`), `O_TRUNC` as a SETATTR of the size (ATOMIC_O_TRUNC is not asked
//! for without handles, or the kernel would trust OPEN to have truncated), `O_APPEND` as the
//! kernel's own offset, `O_SYNC` as FSYNC after each write.
//!
//! Opening the inode again for every request costs a `/proc/self/fd` path walk and a close
//! each time, so the daemon keeps a few such files open between requests ([`IoCache`]): a
//! regular file of the upper opened read-write (a new file's one is the one MKNOD created it
//! with), a layer file read-only, each dropped when the guest forgets the node or when newer
//! ones push it out.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};

use fuse_backend_rs::abi::fuse_abi::{CreateIn, OpenOptions};
use fuse_backend_rs::api::filesystem::{Context, Entry, ZeroCopyReader, ZeroCopyWriter};

use super::{check_name, err, Area, Handle, HostNode, Node, StrataFs, PLAN};
use crate::sys;
use std::sync::Arc;

/// Open flags the guest may pass through to the host open. Not `O_DIRECT` (as virtiofsd
/// without `--allow-direct-io`): the guest's own page cache and FUSE's direct I/O path already
/// give the guest its O_DIRECT semantics, and a host `O_DIRECT` fd refuses the unaligned
/// buffers and offsets FUSE requests may carry (EINVAL on read/write).
pub(crate) fn host_flags(flags: u32) -> i32 {
    (flags as i32)
        & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_PATH | libc::O_DIRECT)
}

fn wants_write(flags: i32) -> bool {
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// The host file one READ, WRITE, FSYNC, FALLOCATE or LSEEK works on.
pub(crate) enum IoFile {
    /// What an OPEN or CREATE opened (`STRATA_SERVE_OPEN=1`).
    Handle(Arc<Handle>),
    /// Handle 0: the node's inode, opened for this one request and closed after it.
    Inode(File),
    /// Handle 0: the node's inode, kept open in the [`IoCache`].
    Cached(Arc<File>),
}

impl IoFile {
    pub(crate) fn file(&self) -> io::Result<&File> {
        match self {
            IoFile::Inode(f) => Ok(f),
            IoFile::Cached(f) => Ok(f),
            IoFile::Handle(h) => match &**h {
                Handle::File { file, .. } => Ok(file),
                Handle::Dir { .. } | Handle::Merged { .. } => Err(err(libc::EISDIR)),
            },
        }
    }
}

/// Files each default session keeps open for reads and writes by inode (`STRATA_SERVE_IO_CACHE`
/// sets another number; 0 turns the cache off). A handful covers the files a guest is writing
/// at once (an install, a log, a database); more would only hold fds.
const IO_CACHE_DEFAULT: usize = 64;

/// A node's file kept open for reads and writes by inode.
pub(crate) struct CachedIo {
    file: Arc<File>,
    /// What it was opened for: an upper file read-write, a layer file read-only, a new file as
    /// its CREATE asked.
    access: Access,
    _slot: Slot,
    _fd: crate::fdbudget::Permit,
}

/// What a kept file may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    pub read: bool,
    pub write: bool,
}

impl Access {
    pub(crate) const READ_WRITE: Access = Access {
        read: true,
        write: true,
    };
    pub(crate) const READ: Access = Access {
        read: true,
        write: false,
    };

    /// What a file opened with host open `flags` may be kept for: nothing if a flag changes
    /// what a positioned write does (`O_APPEND` writes at the end whatever the offset) or
    /// makes every later write synchronous.
    pub(crate) fn of_flags(flags: i32) -> Option<Access> {
        if flags & (libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC | libc::O_PATH) != 0 {
            return None;
        }
        let acc = flags & libc::O_ACCMODE;
        Some(Access {
            read: acc == libc::O_RDONLY || acc == libc::O_RDWR,
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
        })
    }

    fn allows(self, write: bool) -> bool {
        if write {
            self.write
        } else {
            self.read
        }
    }
}

/// One place in an [`IoCache`], given back when its [`CachedIo`] drops (pushed out, or its node
/// forgotten).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The session's files kept open between reads and writes by inode, at most `cap`, oldest
/// pushed out first. Each sits in its node ([`HostNode::io`]), so forgetting the node closes
/// it; this only keeps the count and the order. Each fd is counted in the process's fd budget
/// and none is kept when the budget is spent.
///
/// Which inode a node's file is open on never changes: an upper or layer inode is the node
/// itself, and a `/rootfs` node is cached only once it has its upper inode (a copy-up would
/// change which inode its reads must see).
pub(crate) struct IoCache {
    cap: usize,
    held: Arc<AtomicUsize>,
    /// Nodes in the order their files were kept; some forgotten or pushed out since.
    order: Mutex<VecDeque<Weak<HostNode>>>,
}

impl IoCache {
    pub(crate) fn new(cap: usize) -> IoCache {
        IoCache {
            cap,
            held: Arc::new(AtomicUsize::new(0)),
            order: Mutex::new(VecDeque::new()),
        }
    }

    /// [`IO_CACHE_DEFAULT`], or `STRATA_SERVE_IO_CACHE` (a count; 0 turns the cache off).
    pub(crate) fn from_env() -> IoCache {
        let cap = std::env::var("STRATA_SERVE_IO_CACHE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(IO_CACHE_DEFAULT);
        IoCache::new(cap)
    }

    pub(crate) fn enabled(&self) -> bool {
        self.cap > 0
    }

    /// Files kept open now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Close every kept file (the fd budget is short).
    pub(crate) fn clear(&self) {
        let Ok(mut order) = self.order.lock() else {
            return;
        };
        for w in order.drain(..) {
            if let Some(n) = w.upgrade() {
                let gone = n.io.lock().ok().and_then(|mut io| io.take());
                drop(gone);
            }
        }
    }

    /// The node's kept file, if it has one that allows `write` (or reads).
    pub(crate) fn get(&self, node: &HostNode, write: bool) -> Option<Arc<File>> {
        let io = node.io.lock().ok()?;
        let c = io.as_ref()?;
        c.access.allows(write).then(|| c.file.clone())
    }

    /// Keep `file` (opened on `node`'s inode for `access`) if there is room in the fd budget,
    /// pushing the oldest kept file out past `cap`. Returns it for the request.
    pub(crate) fn put(&self, node: &Arc<HostNode>, file: File, access: Access) -> Arc<File> {
        let file = Arc::new(file);
        if self.cap == 0 || !crate::fdbudget::room(1) {
            return file;
        }
        let Ok(mut io) = node.io.lock() else {
            return file;
        };
        self.held.fetch_add(1, Ordering::Relaxed);
        *io = Some(CachedIo {
            file: file.clone(),
            access,
            _slot: Slot(self.held.clone()),
            _fd: crate::fdbudget::Permit::take(1),
        });
        drop(io);
        // Order lock, then node locks (never the other way round).
        let Ok(mut order) = self.order.lock() else {
            return file;
        };
        order.push_back(Arc::downgrade(node));
        while self.held() > self.cap {
            let Some(old) = order.pop_front() else {
                break;
            };
            if let Some(n) = old.upgrade() {
                let gone = n.io.lock().ok().and_then(|mut io| io.take());
                drop(gone);
            }
        }
        // Forgotten nodes leave their entries behind: sweep them now and then.
        if order.len() > 2 * self.cap + 16 {
            order.retain(|w| {
                w.upgrade()
                    .is_some_and(|n| n.io.lock().is_ok_and(|io| io.is_some()))
            });
        }
        file
    }
}

impl StrataFs {
    pub(crate) fn do_open(&self, inode: u64, flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        let flags = host_flags(flags);
        let h = match self.node(inode)? {
            Node::Plan if wants_write(flags) => return Err(err(libc::EROFS)),
            Node::Plan => return Ok((None, OpenOptions::KEEP_CACHE)),
            Node::Root | Node::Layers => return Err(err(libc::EISDIR)),
            Node::Host(h) => h,
        };
        match h.kind {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(err(libc::EISDIR)),
            // Device nodes in an image are host devices, and opening a fifo would block the
            // daemon: the guest's overlay never needs either, so refuse them.
            _ => return Err(err(libc::EACCES)),
        }
        if h.area == Area::Union {
            return self.union_open(&h, flags);
        }
        if !h.area.writable() && wants_write(flags) {
            return Err(err(libc::EROFS));
        }
        // Before the host open: with O_TRUNC the open itself changes the file.
        self.handle_room()?;
        let file = sys::reopen(h.fd.as_fd(), flags)?;
        let id = self.add_handle(Handle::File { file, area: h.area })?;
        let opts = match h.area {
            Area::Layer(_) | Area::Merged => OpenOptions::KEEP_CACHE,
            Area::Rw | Area::Union => OpenOptions::empty(),
        };
        Ok((Some(id), opts))
    }

    /// CREATE without handles (OPEN answered ENOSYS): instead of closing the file CREATE opened,
    /// keep it for the reads and writes by inode that follow, if its flags allow.
    pub(crate) fn keep_created(&self, inode: u64, id: u64, flags: u32) {
        let taken = self.handles.write().ok().and_then(|mut t| t.remove(&id));
        let Some((handle, _permit)) = taken else {
            return;
        };
        let Some(access) = Access::of_flags(host_flags(flags)) else {
            return;
        };
        let Ok(Node::Host(node)) = self.node(inode) else {
            return;
        };
        if !self.io_cache.enabled() || (node.area == Area::Union && node.upper().is_none()) {
            return;
        }
        if let Ok(Handle::File { file, .. }) = Arc::try_unwrap(handle) {
            self.io_cache.put(&node, file, access);
        }
    }

    /// MKNOD of a regular file in the upper (the guest's overlay creates files so): made with
    /// `open(O_CREAT | O_EXCL | O_RDWR)` instead of `mknod`, the same file, and the open file
    /// kept for the write that usually follows. `None` if the cache is off.
    pub(crate) fn mknod_file(
        &self,
        ctx: &Context,
        dir: &HostNode,
        name: &CStr,
        perm: u32,
    ) -> Option<io::Result<Entry>> {
        if !self.io_cache.enabled() {
            return None;
        }
        let made = self.make_as_caller(
            ctx,
            libc::S_IFREG | perm,
            || sys::create_at(dir.fd.as_fd(), name, libc::O_RDWR | libc::O_EXCL, perm),
            || sys::open_path_at(dir.fd.as_fd(), name),
        );
        let (file, fd) = match made {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        let entry = match self.register_new(fd, dir.area) {
            Ok(e) => e,
            Err(e) => return Some(Err(e)),
        };
        if let Ok(Node::Host(node)) = self.node(entry.inode) {
            self.io_cache.put(&node, file, Access::READ_WRITE);
        }
        Some(Ok(entry))
    }

    /// OPEN of a `/rootfs` file: copied up first if opened for writing. A file still in its
    /// layer is opened there, read-only, and its page cache kept (a later copy-up has the same
    /// content).
    fn union_open(&self, h: &HostNode, flags: i32) -> io::Result<(Option<u64>, OpenOptions)> {
        if wants_write(flags) {
            self.copy_up(h)?;
        }
        self.handle_room()?;
        let upper = h.upper().is_some();
        let file = sys::reopen(h.cur(), flags)?;
        let (area, opts) = if upper {
            (Area::Rw, OpenOptions::empty())
        } else {
            (Area::Layer(0), OpenOptions::KEEP_CACHE)
        };
        let id = self.add_handle(Handle::File { file, area })?;
        Ok((Some(id), opts))
    }

    pub(crate) fn do_create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions)> {
        check_name(name)?;
        if let Some(dir) = self.union_node(parent)? {
            return self.union_create(ctx, &dir, name, args);
        }
        let dir = self.rw_dir(parent)?;
        // Room for the new node and its handle before anything exists on the host.
        self.node_room()?;
        self.handle_room()?;
        let mode = args.mode & !args.umask & 0o7777;
        let flags = host_flags(args.flags);
        // Create exclusively first. Without O_EXCL from the guest, an existing name is opened
        // through its O_PATH handle, and only if it is a regular file: a plain O_CREAT open of
        // an existing fifo blocks the daemon until a writer shows up (found by the request
        // fuzzer), and one of a device node would open a host device.
        let made = self.make_as_caller(
            ctx,
            libc::S_IFREG | mode,
            || sys::create_at(dir.fd.as_fd(), name, flags | libc::O_EXCL, mode),
            || sys::open_path_at(dir.fd.as_fd(), name),
        );
        let (file, fd) = match made {
            Ok(made) => made,
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST)
                    && args.flags & libc::O_EXCL as u32 == 0 =>
            {
                let fd = sys::open_path_at(dir.fd.as_fd(), name)?;
                match sys::stat_fd(fd.as_fd())?.st_mode & libc::S_IFMT {
                    libc::S_IFREG => {}
                    libc::S_IFDIR => return Err(err(libc::EISDIR)),
                    libc::S_IFLNK => return Err(err(libc::ELOOP)),
                    _ => return Err(err(libc::EACCES)),
                }
                (sys::reopen(fd.as_fd(), flags)?, fd)
            }
            Err(e) => return Err(e),
        };
        let entry = self.register_new(fd, dir.area)?;
        let id = self.add_handle(Handle::File {
            file,
            area: dir.area,
        })?;
        Ok((entry, Some(id), OpenOptions::empty()))
    }

    /// CREATE in a `/rootfs` directory: a new file in the upper dir, or, without `O_EXCL`, an
    /// existing regular file opened as OPEN would.
    fn union_create(
        &self,
        ctx: &Context,
        dir: &Arc<HostNode>,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions)> {
        self.handle_room()?;
        let mode = args.mode & !args.umask & 0o7777;
        let flags = host_flags(args.flags);
        let made = self.union_make(ctx, dir, name, libc::S_IFREG | mode, |d, n| {
            sys::create_at(d, n, flags | libc::O_EXCL, mode)
        });
        match made {
            Ok((entry, file)) => {
                let id = self.add_handle(Handle::File {
                    file,
                    area: Area::Rw,
                })?;
                Ok((entry, Some(id), OpenOptions::empty()))
            }
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST)
                    && args.flags & libc::O_EXCL as u32 == 0 =>
            {
                let entry = self.union_lookup(dir, name)?;
                let opened = self
                    .host(entry.inode, libc::ENOENT)
                    .and_then(|h| match h.kind {
                        libc::S_IFREG => self.union_open(&h, flags),
                        libc::S_IFDIR => Err(err(libc::EISDIR)),
                        libc::S_IFLNK => Err(err(libc::ELOOP)),
                        _ => Err(err(libc::EACCES)),
                    });
                match opened {
                    Ok((h, opts)) => {
                        // Attributes after a copy-up or O_TRUNC.
                        let mut entry = entry;
                        if let Ok(n) = self.host(entry.inode, libc::ENOENT) {
                            entry.attr = sys::stat_fd(n.cur())?;
                        }
                        Ok((entry, h, opts))
                    }
                    Err(e) => {
                        if entry.inode != 0 {
                            self.forget_node(entry.inode, 1);
                        }
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The file a READ (`write` false) or WRITE, FALLOCATE (`write` true) works on: the open
    /// `handle`, or with handle 0 the inode itself, opened now. Only regular files: a guest
    /// naming a fifo or device node would otherwise have the daemon open a host fifo (and
    /// block) or a host device. A write to a `/rootfs` file still in its layer copies it up
    /// first, as an OPEN for writing would have; a node whose name was removed or replaced
    /// since gets ESTALE there instead.
    pub(crate) fn io_file(&self, inode: u64, handle: u64, write: bool) -> io::Result<IoFile> {
        if handle != 0 {
            let h = self.handle(handle)?;
            return match &*h {
                Handle::File { area, .. } if write && !area.writable() => Err(err(libc::EROFS)),
                Handle::File { .. } => Ok(IoFile::Handle(h)),
                Handle::Dir { .. } | Handle::Merged { .. } => Err(err(libc::EISDIR)),
            };
        }
        let h = match self.node(inode)? {
            Node::Host(h) => h,
            Node::Plan if write => return Err(err(libc::EROFS)),
            Node::Plan => return Err(err(libc::EBADF)),
            Node::Root | Node::Layers => return Err(err(libc::EISDIR)),
        };
        match h.kind {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(err(libc::EISDIR)),
            _ => return Err(err(libc::EINVAL)),
        }
        if write {
            if h.area == Area::Union {
                self.copy_up(&h)?;
            } else if !h.area.writable() {
                return Err(err(libc::EROFS));
            }
        }
        if let Some(f) = self.io_cache.get(&h, write) {
            return Ok(IoFile::Cached(f));
        }
        // O_NONBLOCK: were the inode ever not a regular file after all, opening it must not
        // wait for a fifo's other end. Regular files ignore it.
        let upper = match h.area {
            Area::Rw => true,
            Area::Union => h.upper().is_some(),
            Area::Layer(_) | Area::Merged => false,
        };
        // Not a `/rootfs` file still in its layer: a copy-up would leave its reads on the
        // layer's inode.
        if self.io_cache.enabled() && (h.area != Area::Union || upper) {
            let (flags, access) = if upper {
                (libc::O_RDWR, Access::READ_WRITE)
            } else {
                (libc::O_RDONLY, Access::READ)
            };
            // A file the daemon cannot open read-write (an immutable one, say) is opened per
            // request below, as the request needs it.
            if let Ok(f) = sys::reopen(h.cur(), flags | libc::O_NONBLOCK) {
                return Ok(IoFile::Cached(self.io_cache.put(&h, f, access)));
            }
        }
        let access = if write {
            libc::O_WRONLY
        } else {
            libc::O_RDONLY
        };
        Ok(IoFile::Inode(sys::reopen(
            h.cur(),
            access | libc::O_NONBLOCK,
        )?))
    }

    pub(crate) fn do_read(
        &self,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
    ) -> io::Result<usize> {
        if inode == PLAN {
            let plan = self.plan_bytes();
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(plan.len());
            let end = start.saturating_add(size as usize).min(plan.len());
            return w.write(&plan[start..end]);
        }
        let f = self.io_file(inode, handle, false)?;
        sys::with_file_mut(f.file()?, |f| w.write_from(f, size as usize, offset))
    }

    /// WRITE; `kill_suidgid`: the guest kernel flagged it as a write by a caller without
    /// CAP_FSETID (HANDLE_KILLPRIV_V2, `/rootfs` only), so set-id bits go first.
    pub(crate) fn do_write(
        &self,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        kill_suidgid: bool,
    ) -> io::Result<usize> {
        let f = self.io_file(inode, handle, true)?;
        let file = f.file()?;
        if kill_suidgid && self.union {
            super::union::kill_suidgid(file.as_fd())?;
        }
        sys::with_file_mut(file, |f| r.read_to(f, size as usize, offset))
    }

    pub(crate) fn do_fsync(&self, inode: u64, handle: u64, datasync: bool) -> io::Result<()> {
        if handle != 0 {
            if let Handle::Dir { dir } = &*self.handle(handle)? {
                return dir.lock().map_err(|_| err(libc::EIO))?.sync_all();
            }
        }
        match self.io_file(inode, handle, false) {
            Ok(f) if datasync => f.file()?.sync_data(),
            Ok(f) => f.file()?.sync_all(),
            // A `/lower` listing's handle: nothing on the host to sync.
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) && handle != 0 => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn do_fallocate(
        &self,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let f = self.io_file(inode, handle, true)?;
        sys::fallocate(f.file()?, mode, offset, length)
    }

    pub(crate) fn do_lseek(
        &self,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        match self.io_file(inode, handle, false) {
            Ok(f) => sys::lseek(f.file()?, offset, whence),
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Err(err(libc::EINVAL)),
            Err(e) => Err(e),
        }
    }
}
