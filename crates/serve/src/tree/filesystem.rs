//! The FUSE dispatcher: `FileSystem` for [`StrataFs`], one line per request type, handing each
//! to its operation family. Requests not listed here answer ENOSYS (the kernel then stops
//! asking, or falls back).

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};

use super::StrataFs;

/// `STRATA_SERVE_OPENDIR=1`: answer OPENDIR with a handle (and get RELEASEDIR) as before
/// directories were read without one, for comparisons.
static OPENDIR: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("STRATA_SERVE_OPENDIR").is_some_and(|v| v == "1"));

/// `STRATA_SERVE_LAYER_ENODATA=1`: the layer device answers GETXATTR with ENODATA (per request)
/// instead of ENOSYS (once), for measurements.
static LAYER_ENODATA: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::env::var_os("STRATA_SERVE_LAYER_ENODATA").is_some_and(|v| v == "1")
});

impl FileSystem for StrataFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // Deliberately not asked for: SUBMOUNTS (overlayfs refuses automount points as layers),
        // WRITEBACK_CACHE (keep upper writes ordered as the guest issued them), EXPORT_SUPPORT,
        // HANDLE_KILLPRIV_V2: it would spare the two `security.capability` GETXATTRs of every
        // write(2), but the guest's overlayfs writes and truncates the upper with its mounter's
        // credentials, so the kernel never flags a user's write as one that must clear set-id
        // bits, and they would survive (guest/semantics.sh: "a user's write clears set-id bits").
        let wanted = FsOptions::ASYNC_READ
            | FsOptions::BIG_WRITES
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::MAX_PAGES
            // Directory listings carry each entry's lookup: a guest walk (and the guest
            // overlay's lookups in the layers it just listed) needs no LOOKUP per name.
            | FsOptions::DO_READDIRPLUS;
        // With `/rootfs` the guest runs no overlay: its kernel flags exactly the writes,
        // truncates and O_TRUNC opens of callers without CAP_FSETID, and the daemon clears
        // set-id bits for them (`union.rs`); no `security.capability` GETXATTR per write(2).
        let wanted = if self.union {
            wanted | FsOptions::HANDLE_KILLPRIV_V2
        } else {
            wanted
        };
        // `O_TRUNC` done by OPEN itself: only when OPEN is answered. Without handles the
        // kernel must send the truncation as a SETATTR (with ATOMIC_O_TRUNC and no OPEN it
        // would drop the file's size in its cache and truncate nothing).
        let wanted = if self.file_handles() {
            wanted | FsOptions::ATOMIC_O_TRUNC
        } else {
            wanted
        };
        Ok(capable & wanted)
    }

    fn destroy(&self) {
        self.report_ops();
    }

    fn access(&self, _ctx: &Context, _inode: u64, _mask: u32) -> io::Result<()> {
        self.count_op("access");
        Err(super::err(libc::ENOSYS))
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.count_op("lookup");
        self.count_result("lookup", self.do_lookup(parent, name))
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.count_op("forget");
        self.forget_node(inode, count)
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        self.count_op("batch_forget");
        for (inode, count) in requests {
            self.forget_node(inode, count)
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        self.count_op("getattr");
        self.do_getattr(inode)
    }

    fn setattr(
        &self,
        _ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.count_op("setattr");
        self.do_setattr(inode, attr, handle, valid)
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.count_op("readlink");
        self.do_readlink(inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.count_op("symlink");
        self.do_symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.count_op("mknod");
        self.do_mknod(ctx, parent, name, mode, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.count_op("mkdir");
        self.do_mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.count_op("unlink");
        self.do_unlink(parent, name, 0)
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.count_op("rmdir");
        self.do_unlink(parent, name, libc::AT_REMOVEDIR)
    }

    fn rename(
        &self,
        _ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.count_op("rename");
        self.do_rename(olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        _ctx: &Context,
        inode: u64,
        newparent: u64,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.count_op("link");
        self.do_link(inode, newparent, newname)
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        self.count_op("open");
        if !self.file_handles() {
            // ENOSYS: the kernel stops sending OPEN and RELEASE on this connection and names
            // the inode, with handle 0, in every READ and WRITE (`file.rs`).
            return Err(super::err(libc::ENOSYS));
        }
        let (h, opts) = self.do_open(inode, flags)?;
        self.kill_suidgid_on_open(h, flags, fuse_flags)?;
        Ok((h, opts, None))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.count_op("create");
        let (flags, fuse_flags) = (args.flags, args.fuse_flags);
        let (e, h, opts) = self.do_create(ctx, parent, name, args)?;
        self.kill_suidgid_on_open(h, flags, fuse_flags)?;
        if !self.file_handles() {
            // The kernel sends no RELEASE once an OPEN was answered ENOSYS: its reads and
            // writes name the inode, and the file stays open only in the I/O cache.
            if let Some(h) = h {
                self.keep_created(e.inode, h, flags);
            }
            return Ok((e, None, opts, None));
        }
        Ok((e, h, opts, None))
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        self.count_op("read");
        self.do_read(inode, handle, w, size, offset)
    }

    fn write(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.count_op("write");
        let kill = fuse_flags & fuse_backend_rs::abi::fuse_abi::WRITE_KILL_PRIV != 0;
        self.do_write(inode, handle, r, size, offset, kill)
    }

    fn flush(&self, _ctx: &Context, _inode: u64, _handle: u64, _lock_owner: u64) -> io::Result<()> {
        self.count_op("flush");
        // Nothing to do on close (no locks, no write-back): ENOSYS makes the kernel stop
        // sending FLUSH on every close of this connection (fc->no_flush), one round trip less
        // per file a guest opens.
        Err(super::err(libc::ENOSYS))
    }

    fn fsync(&self, _ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.count_op("fsync");
        self.do_fsync(inode, handle, datasync)
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.count_op("fallocate");
        self.do_fallocate(inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.count_op("release");
        self.drop_handle(handle);
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.count_op("statfs");
        self.do_statfs(inode)
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.count_op("setxattr");
        self.do_setxattr(inode, name, value, flags)
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.count_op("getxattr");
        if !self.is_tree() {
            // ENOSYS: the guest kernel stops asking this device (see docs/conformance.md);
            // STRATA_SERVE_LAYER_ENODATA=1 answers ENODATA every time instead, to measure
            // what answering like a filesystem without xattrs would cost.
            let errno = if *LAYER_ENODATA {
                libc::ENODATA
            } else {
                libc::ENOSYS
            };
            return self.count_result("getxattr", Err(super::err(errno)));
        }
        if self.ops.is_some() {
            if let Some(n) = name
                .to_str()
                .ok()
                .filter(|n| super::xattr::OVERLAY_PROBES.contains(n))
            {
                let r = self.do_getxattr(inode, name, size);
                return self.count_result(&format!("getxattr {n}"), r);
            }
        }
        self.count_result("getxattr", self.do_getxattr(inode, name, size))
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.count_op("listxattr");
        // The layer device serves no xattrs: an empty list, as a filesystem without any answers
        // (unlike GETXATTR, which overlayfs sends on every lookup, LISTXATTR comes only from a
        // copy-up or a program, so answering it costs nothing).
        if !self.is_tree() {
            return Ok(if size == 0 {
                ListxattrReply::Count(0)
            } else {
                ListxattrReply::Names(Vec::new())
            });
        }
        self.do_listxattr(inode, size)
    }

    fn removexattr(&self, _ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.count_op("removexattr");
        self.do_removexattr(inode, name)
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        self.count_op("opendir");
        if !*OPENDIR {
            // ENOSYS: the kernel stops sending OPENDIR and RELEASEDIR on this connection and
            // reads directories with handle 0 (`readdir_unopened`): two round trips less per
            // directory opened. It also keeps listings in its page cache across opens
            // (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR), dropped when the guest changes the
            // directory or, after the attribute timeout, its mtime moved.
            return Err(super::err(libc::ENOSYS));
        }
        let h = self.do_opendir(inode)?;
        Ok((h, OpenOptions::empty()))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.count_op("readdir");
        self.do_readdir(inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.count_op("readdirplus");
        self.do_readdirplus(inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(&self, _ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.count_op("fsyncdir");
        if handle == 0 {
            return Ok(());
        }
        self.do_fsync(inode, handle, datasync)
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.count_op("releasedir");
        self.drop_handle(handle);
        Ok(())
    }

    fn lseek(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.count_op("lseek");
        self.do_lseek(inode, handle, offset, whence)
    }
}
