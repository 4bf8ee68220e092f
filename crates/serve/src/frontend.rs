//! A minimal vhost-user-fs *frontend* (the VMM's side), for tests and benchmarks that need
//! many connected sessions where booting a VM each cannot run (100 qemu TCG guests do not fit
//! on a 2-core machine). It does what qemu does on the socket — feature negotiation, a
//! memfd-like shared memory table, two virtqueues with kick/call eventfds — and then sends
//! real FUSE requests through the request queue, one at a time, the way a guest driver would.
//! [`TestVm::connect_event_idx`] also negotiates `VIRTIO_RING_F_EVENT_IDX` as qemu does, so
//! the daemon takes its real path (notifications suppressed while it polls, kicks only when
//! it asks for one).
//!
//! Everything here is the *client*: it is trusted test code, not part of the served path.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory shared with the daemon.
const MEM_SIZE: usize = 4 << 20;
const QSIZE: u16 = 64;
/// Queue 0 (hiprio) and queue 1 (requests): descriptor table, avail ring, used ring.
const RINGS: [(u64, u64, u64); 2] = [(0x1000, 0x2000, 0x3000), (0x4000, 0x5000, 0x6000)];
const REQ: u64 = 0x10000;
const REQ_MAX: usize = 0x30000;
const REPLY: u64 = 0x40000;
const REPLY_MAX: usize = 0x120000;

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;

/// FUSE opcodes used here.
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const CREATE: u32 = 35;
    pub const MKNOD: u32 = 8;
    pub const GETXATTR: u32 = 22;
    pub const FLUSH: u32 = 25;
}

/// One connected "VMM" with its guest memory and request queue. Dropping it hangs up, which
/// is all a VMM does when it quits.
pub struct TestVm {
    /// The vhost-user connection: held for its lifetime (dropping it is the hang-up).
    #[allow(dead_code)]
    fe: Frontend,
    mem: GuestMemoryMmap,
    _file: File,
    kicks: [EventFd; 2],
    calls: [EventFd; 2],
    epoll: Epoll,
    avail_idx: u16,
    used_seen: u16,
    unique: u64,
    timeout: Duration,
    /// `VIRTIO_RING_F_EVENT_IDX` negotiated.
    event_idx: bool,
    /// Kicks sent (with EVENT_IDX, fewer than requests while the daemon polls).
    pub kicks_sent: u64,
    /// How long to poll the used ring for a reply before sleeping on the call eventfd.
    reply_poll: Duration,
}

fn verr(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("vhost-user: {e}"))
}

/// What a LOOKUP or CREATE returned.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub node: u64,
    pub size: u64,
    pub mode: u32,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        })
        .unwrap_or(0)
}

fn entry(body: &[u8]) -> Entry {
    // fuse_entry_out: nodeid, generation, entry_valid, attr_valid, 2 × nsec, then fuse_attr
    // (ino, size, blocks, atime, mtime, ctime, 3 × nsec, mode, …).
    Entry {
        node: le_u64(body, 0),
        size: le_u64(body, 40 + 8),
        mode: le_u32(body, 40 + 60),
    }
}

fn name(n: &str) -> Vec<u8> {
    let mut v = n.as_bytes().to_vec();
    v.push(0);
    v
}

impl TestVm {
    /// Connect to a vhost-user-fs socket and set the device up as qemu does, then send
    /// FUSE_INIT.
    pub fn connect(socket: &Path) -> io::Result<TestVm> {
        Self::connect_with(socket, false)
    }

    /// [`TestVm::connect`] with `VIRTIO_RING_F_EVENT_IDX`, as qemu negotiates it.
    pub fn connect_event_idx(socket: &Path) -> io::Result<TestVm> {
        Self::connect_with(socket, true)
    }

    fn connect_with(socket: &Path, event_idx: bool) -> io::Result<TestVm> {
        let mut fe = Frontend::connect(socket, 2).map_err(verr)?;
        let features = fe.get_features().map_err(verr)?;
        let mut want =
            (1u64 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if event_idx {
            want |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        if features & want != want {
            return Err(verr(format!(
                "backend lacks features {want:#x} (has {features:#x})"
            )));
        }
        let proto = fe.get_protocol_features().map_err(verr)?;
        fe.set_protocol_features(proto & VhostUserProtocolFeatures::MQ)
            .map_err(verr)?;
        fe.set_owner().map_err(verr)?;
        fe.set_features(want).map_err(verr)?;

        let file = tempfile::tempfile()?;
        file.set_len(MEM_SIZE as u64)?;
        let fd = file.as_raw_fd();
        let mem = GuestMemoryMmap::from_ranges_with_files(&[(
            GuestAddress(0),
            MEM_SIZE,
            Some(FileOffset::new(file.try_clone()?, 0)),
        )])
        .map_err(verr)?;
        let va = mem.get_host_address(GuestAddress(0)).map_err(verr)? as u64;
        fe.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: va,
            mmap_offset: 0,
            mmap_handle: fd,
        }])
        .map_err(verr)?;
        let kicks = [EventFd::new(EFD_NONBLOCK)?, EventFd::new(EFD_NONBLOCK)?];
        let calls = [EventFd::new(EFD_NONBLOCK)?, EventFd::new(EFD_NONBLOCK)?];
        for (q, (desc, avail, used)) in RINGS.iter().enumerate() {
            fe.set_vring_num(q, QSIZE).map_err(verr)?;
            fe.set_vring_base(q, 0).map_err(verr)?;
            fe.set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: QSIZE,
                    queue_size: QSIZE,
                    flags: 0,
                    desc_table_addr: va + desc,
                    used_ring_addr: va + used,
                    avail_ring_addr: va + avail,
                    log_addr: None,
                },
            )
            .map_err(verr)?;
            fe.set_vring_call(q, &calls[q]).map_err(verr)?;
            fe.set_vring_kick(q, &kicks[q]).map_err(verr)?;
            fe.set_vring_enable(q, true).map_err(verr)?;
        }
        // SET_VRING_ENABLE has no reply: a request with one makes sure the backend processed
        // it before the first kick (a kick on a disabled ring is consumed and dropped).
        fe.get_features().map_err(verr)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            calls[1].as_raw_fd(),
            EpollEvent::new(EventSet::IN, 1),
        )?;
        let mut vm = TestVm {
            fe,
            mem,
            _file: file,
            kicks,
            calls,
            epoll,
            avail_idx: 0,
            used_seen: 0,
            unique: 0,
            timeout: Duration::from_secs(10),
            event_idx,
            kicks_sent: 0,
            reply_poll: Duration::ZERO,
        };
        let mut init = Vec::new();
        for v in [7u32, 31, 128 << 10, 0] {
            init.extend_from_slice(&v.to_le_bytes());
        }
        vm.call(op::INIT, 0, &init)?;
        Ok(vm)
    }

    /// Poll for each reply up to `d` before sleeping on the call eventfd, as KVM polls for a
    /// halted vCPU's interrupt (`halt_poll_ns`, 200 µs by default on x86): a reply within `d`
    /// then costs no wake-up of this thread. Zero (the default): sleep at once.
    pub fn set_reply_poll(&mut self, d: Duration) {
        self.reply_poll = d;
    }

    /// Send one FUSE request and wait for the reply: `Ok(body)` or the errno the server sent.
    /// FORGET has no reply; it returns an empty body once the daemon completed the buffer.
    pub fn call(&mut self, opcode: u32, node: u64, body: &[u8]) -> io::Result<Vec<u8>> {
        let total = 40 + body.len();
        if total > REQ_MAX {
            return Err(io::Error::from_raw_os_error(libc::E2BIG));
        }
        self.unique += 1;
        let mut req = Vec::with_capacity(total);
        req.extend_from_slice(&(total as u32).to_le_bytes());
        req.extend_from_slice(&opcode.to_le_bytes());
        req.extend_from_slice(&self.unique.to_le_bytes());
        req.extend_from_slice(&node.to_le_bytes());
        for v in [0u32, 0, 1, 0] {
            req.extend_from_slice(&v.to_le_bytes()); // uid, gid, pid, padding
        }
        req.extend_from_slice(body);
        let (desc, avail, used) = RINGS[1];
        let m = &self.mem;
        m.write_slice(&req, GuestAddress(REQ)).map_err(verr)?;
        let descs = [
            (REQ, total as u32, VIRTQ_DESC_F_NEXT, 1u16),
            (REPLY, REPLY_MAX as u32, VIRTQ_DESC_F_WRITE, 0),
        ];
        for (i, (addr, len, flags, next)) in descs.iter().enumerate() {
            let at = desc + 16 * i as u64;
            m.write_obj(*addr, GuestAddress(at)).map_err(verr)?;
            m.write_obj(*len, GuestAddress(at + 8)).map_err(verr)?;
            m.write_obj(*flags, GuestAddress(at + 12)).map_err(verr)?;
            m.write_obj(*next, GuestAddress(at + 14)).map_err(verr)?;
        }
        let slot = (self.avail_idx % QSIZE) as u64;
        m.write_obj(0u16, GuestAddress(avail + 4 + 2 * slot))
            .map_err(verr)?;
        if self.event_idx {
            // used_event (after the avail ring): interrupt me when this request completes.
            m.store(
                self.used_seen,
                GuestAddress(avail + 4 + 2 * QSIZE as u64),
                Ordering::Release,
            )
            .map_err(verr)?;
        }
        let old = self.avail_idx;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.store(self.avail_idx, GuestAddress(avail + 2), Ordering::Release)
            .map_err(verr)?;
        std::sync::atomic::fence(Ordering::SeqCst);
        let kick = if self.event_idx {
            // avail_event (after the used ring): the device wants a kick once the avail index
            // passes it; a polling device leaves it behind and is not kicked.
            let avail_event: u16 = m
                .load(GuestAddress(used + 4 + 8 * QSIZE as u64), Ordering::Acquire)
                .map_err(verr)?;
            self.avail_idx.wrapping_sub(avail_event).wrapping_sub(1)
                < self.avail_idx.wrapping_sub(old)
        } else {
            true
        };
        if kick {
            self.kicks[1].write(1)?;
            self.kicks_sent += 1;
        }
        let deadline = std::time::Instant::now() + self.timeout;
        let mut events = [EpollEvent::default(); 1];
        if !self.reply_poll.is_zero() {
            let until = std::time::Instant::now() + self.reply_poll;
            loop {
                let idx: u16 = m
                    .load(GuestAddress(used + 2), Ordering::Acquire)
                    .map_err(verr)?;
                if idx != self.used_seen || std::time::Instant::now() >= until {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        loop {
            let idx: u16 = m
                .load(GuestAddress(used + 2), Ordering::Acquire)
                .map_err(verr)?;
            if idx != self.used_seen {
                break;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no reply to FUSE opcode {opcode} within {:?}", self.timeout),
                ));
            }
            let _ = self.epoll.wait(left.as_millis().max(1) as i32, &mut events);
            let _ = self.calls[1].read();
        }
        let slot = (self.used_seen % QSIZE) as u64;
        self.used_seen = self.used_seen.wrapping_add(1);
        let len: u32 = m
            .read_obj(GuestAddress(used + 4 + 8 * slot + 4))
            .map_err(verr)?;
        if opcode == op::FORGET {
            return Ok(Vec::new());
        }
        if len < 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("reply of {len} bytes to FUSE opcode {opcode}"),
            ));
        }
        let mut out = vec![0u8; (len as usize).min(REPLY_MAX)];
        m.read_slice(&mut out, GuestAddress(REPLY)).map_err(verr)?;
        let errno = le_u32(&out, 4) as i32;
        if errno != 0 {
            return Err(io::Error::from_raw_os_error(-errno));
        }
        Ok(out.split_off(16))
    }

    pub fn lookup(&mut self, parent: u64, n: &str) -> io::Result<Entry> {
        Ok(entry(&self.call(op::LOOKUP, parent, &name(n))?))
    }

    /// Resolve a `/`-separated path from the root (node 1).
    pub fn walk(&mut self, path: &str) -> io::Result<Entry> {
        let mut e = Entry {
            node: 1,
            size: 0,
            mode: libc::S_IFDIR,
        };
        for part in path.split('/').filter(|p| !p.is_empty()) {
            e = self.lookup(e.node, part)?;
        }
        Ok(e)
    }

    pub fn forget(&mut self, node: u64, n: u64) -> io::Result<()> {
        self.call(op::FORGET, node, &n.to_le_bytes()).map(|_| ())
    }

    /// OPEN: the handle, or 0 if the daemon answers ENOSYS (as it does unless
    /// `STRATA_SERVE_OPEN=1`); reads and writes then name the node with handle 0 and nothing
    /// is released, as the kernel does.
    pub fn open(&mut self, node: u64, flags: u32) -> io::Result<u64> {
        let mut b = flags.to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        match self.call(op::OPEN, node, &b) {
            Ok(r) => Ok(le_u64(&r, 0)),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn rw_in(fh: u64, offset: u64, size: u32) -> Vec<u8> {
        let mut b = Vec::with_capacity(40);
        b.extend_from_slice(&fh.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&[0u8; 20]); // read/write flags, lock_owner, flags, padding
        b
    }

    pub fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        self.call(op::READ, node, &Self::rw_in(fh, offset, size))
    }

    pub fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> io::Result<u32> {
        let mut b = Self::rw_in(fh, offset, data.len() as u32);
        b.extend_from_slice(data);
        Ok(le_u32(&self.call(op::WRITE, node, &b)?, 0))
    }

    pub fn fsync(&mut self, node: u64, fh: u64) -> io::Result<()> {
        let mut b = fh.to_le_bytes().to_vec();
        b.extend_from_slice(&[0u8; 8]);
        self.call(op::FSYNC, node, &b).map(|_| ())
    }

    /// RELEASE or RELEASEDIR of `fh`; nothing for handle 0 (no OPEN made one).
    pub fn release(&mut self, node: u64, fh: u64, dir: bool) -> io::Result<()> {
        if fh == 0 {
            return Ok(());
        }
        let mut b = fh.to_le_bytes().to_vec();
        b.extend_from_slice(&[0u8; 16]);
        let o = if dir { op::RELEASEDIR } else { op::RELEASE };
        self.call(o, node, &b).map(|_| ())
    }

    /// Create and open `n` in `parent` (O_RDWR|O_CREAT|O_EXCL).
    pub fn create(&mut self, parent: u64, n: &str, mode: u32) -> io::Result<(Entry, u64)> {
        let mut b = Vec::new();
        let flags = (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32;
        for v in [flags, mode | libc::S_IFREG, 0o022, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&name(n));
        let r = self.call(op::CREATE, parent, &b)?;
        Ok((entry(&r), le_u64(&r, 128)))
    }

    /// MKNOD of a regular file, as the kernel's `vfs_create` on a FUSE directory sends it.
    pub fn mknod(&mut self, parent: u64, n: &str, mode: u32) -> io::Result<Entry> {
        let mut b = Vec::new();
        for v in [mode | libc::S_IFREG, 0, 0o022, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&name(n));
        Ok(entry(&self.call(op::MKNOD, parent, &b)?))
    }

    /// GETXATTR of `n` with size 0 (the value's length), as the kernel's own probes ask.
    pub fn getxattr_len(&mut self, node: u64, n: &str) -> io::Result<u32> {
        let mut b = Vec::new();
        for v in [0u32, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&name(n));
        Ok(le_u32(&self.call(op::GETXATTR, node, &b)?, 0))
    }

    /// GETATTR: the node's mode.
    pub fn getattr(&mut self, node: u64) -> io::Result<u32> {
        // fuse_attr_out: attr_valid, attr_valid_nsec, dummy, then fuse_attr (mode at 60).
        let r = self.call(op::GETATTR, node, &[0u8; 16])?;
        Ok(le_u32(&r, 16 + 60))
    }

    /// FLUSH of `fh` (on every close of a file the kernel opened with a handle).
    pub fn flush(&mut self, node: u64, fh: u64) -> io::Result<()> {
        let mut b = fh.to_le_bytes().to_vec();
        b.extend_from_slice(&[0u8; 16]);
        self.call(op::FLUSH, node, &b).map(|_| ())
    }

    /// STATFS: the bare round trip (the server does one `fstatfs`).
    pub fn statfs(&mut self) -> io::Result<()> {
        self.call(op::STATFS, 1, &[]).map(|_| ())
    }

    /// CREATE with the guest's `flags` (`O_CREAT` added): the entry and the handle (0 if the
    /// server keeps none).
    pub fn create_flags(
        &mut self,
        parent: u64,
        n: &str,
        mode: u32,
        flags: u32,
    ) -> io::Result<(Entry, u64)> {
        let mut b = Vec::new();
        for v in [flags | libc::O_CREAT as u32, mode | libc::S_IFREG, 0o022, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&name(n));
        let r = self.call(op::CREATE, parent, &b)?;
        Ok((entry(&r), le_u64(&r, 128)))
    }

    pub fn mkdir(&mut self, parent: u64, n: &str, mode: u32) -> io::Result<Entry> {
        let mut b = Vec::new();
        for v in [mode, 0o022] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&name(n));
        Ok(entry(&self.call(op::MKDIR, parent, &b)?))
    }

    pub fn unlink(&mut self, parent: u64, n: &str) -> io::Result<()> {
        self.call(op::UNLINK, parent, &name(n)).map(|_| ())
    }

    pub fn rmdir(&mut self, parent: u64, n: &str) -> io::Result<()> {
        self.call(op::RMDIR, parent, &name(n)).map(|_| ())
    }

    /// Names in a directory (one READDIR round of up to 64 KiB after OPENDIR).
    pub fn list(&mut self, node: u64) -> io::Result<Vec<String>> {
        // As the kernel does: an OPENDIR answered ENOSYS means directories are read with
        // handle 0 and never released.
        let fh = match self.call(op::OPENDIR, node, &[0u8; 8]) {
            Ok(r) => Some(le_u64(&r, 0)),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => None,
            Err(e) => return Err(e),
        };
        let release = |vm: &mut Self| match fh {
            Some(fh) => vm.release(node, fh, true),
            None => Ok(()),
        };
        let fh = fh.unwrap_or(0);
        let mut names = Vec::new();
        let mut offset = 0u64;
        loop {
            let r = self.call(op::READDIR, node, &Self::rw_in(fh, offset, 64 << 10));
            let buf = match r {
                Ok(b) => b,
                Err(e) => {
                    let _ = release(self);
                    return Err(e);
                }
            };
            if buf.is_empty() {
                break;
            }
            // fuse_dirent: ino u64, off u64, namelen u32, type u32, name, padded to 8.
            let mut at = 0usize;
            while at + 24 <= buf.len() {
                let off = le_u64(&buf, at + 8);
                let len = le_u32(&buf, at + 16) as usize;
                let Some(n) = buf.get(at + 24..at + 24 + len) else {
                    break;
                };
                names.push(String::from_utf8_lossy(n).into_owned());
                offset = off;
                at += (24 + len + 7) & !7;
            }
        }
        release(self)?;
        Ok(names)
    }

    /// Read a whole file by path (lookup, open, read in 128 KiB pieces, release, forget the
    /// file: the guest's cache lets go of it).
    pub fn read_file(&mut self, path: &str) -> io::Result<Vec<u8>> {
        let e = self.walk(path)?;
        let fh = self.open(e.node, libc::O_RDONLY as u32)?;
        let mut out = Vec::new();
        loop {
            let chunk = self.read(e.node, fh, out.len() as u64, 128 << 10)?;
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        self.release(e.node, fh, false)?;
        self.forget(e.node, 1)?;
        Ok(out)
    }
}
