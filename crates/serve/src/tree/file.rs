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

use std::ffi::CStr;
use std::io;
use std::os::fd::AsFd;

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
    Inode(std::fs::File),
}

impl IoFile {
    pub(crate) fn file(&self) -> io::Result<&std::fs::File> {
        match self {
            IoFile::Inode(f) => Ok(f),
            IoFile::Handle(h) => match &**h {
                Handle::File { file, .. } => Ok(file),
                Handle::Dir { .. } | Handle::Merged { .. } => Err(err(libc::EISDIR)),
            },
        }
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
        // O_NONBLOCK: were the inode ever not a regular file after all, opening it must not
        // wait for a fifo's other end. Regular files ignore it.
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
