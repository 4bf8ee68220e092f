//! A request-stream fuzzer that needs no nightly toolchain: structured-random FUSE requests,
//! laid out in guest memory as virtqueue descriptor chains and handed to the daemon's own
//! request path ([`crate::backend::serve_chain`]: fuse-backend-rs' `Server::handle_message` over
//! [`StrataFs`]), over a temp tree of two layers, upper, work and an `outside` directory.
//!
//! Requests come from a seeded xorshift generator: every opcode (valid, reserved and random),
//! lengths that lie, bodies cut short, names with `/`, NUL, `..` or 4 KiB long, huge counts,
//! offsets and sizes, node ids and handles that were returned earlier, released, or never
//! existed, chains without a writable part or pointing outside guest memory. The first request
//! is a valid INIT; node ids and handles from replies feed later requests.
//!
//! Checked after every run (and fds every 1000 requests): no panic; nothing outside upper/work
//! changed (layers, `outside` and the temp root: type, mode, owner, size, links, mtime, ctime);
//! the open fds never exceed the anchors plus what the fd budget counts (nodes, their layer
//! dirs and copied-up inodes, open handles); and after the guest
//! releases every handle and forgets every node, no fd is left over.
//!
//! `cargo test -p strata-serve --test fuzz_requests` runs a short version;
//! `cargo run --profile fuzz -p strata-serve --features test-utils --example fuzz_requests --
//! SECONDS` a timed one.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::{serve_chain, Stats};
use crate::config::ServeConfig;
use crate::tree::{CachePolicy, Role, StrataFs};

const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const REQ: u64 = 0x10000;
const REQ_MAX: usize = 0x20_0000;
const REPLY: u64 = REQ + REQ_MAX as u64 + 0x1000;
const REPLY_MAX: usize = 0x20_0000;
const MEM_SIZE: usize = (REPLY as usize) + REPLY_MAX + 0x1000;

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;

/// FUSE opcodes (linux `fuse.h`).
mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    /// Everything else the kernel defines, plus reserved numbers: answered without our code.
    pub const OTHERS: &[u32] = &[
        0,
        7,
        19,
        31,
        32,
        33,
        36,
        37,
        38,
        39,
        40,
        41,
        47,
        48,
        49,
        50,
        51,
        4096,
        1_048_576,
        436_207_616,
    ];
}

/// xorshift64*: tiny, seedable, good enough to drive a structured fuzzer.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// True with probability `pct` percent.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// What a fuzz run found, if anything.
#[derive(Debug, Clone)]
pub struct Finding {
    pub seed: u64,
    /// Index of the request that triggered it (or the run length for end-of-run checks).
    pub request: u64,
    pub what: String,
    /// The request's bytes, hex, for a regression test.
    pub bytes: String,
}

/// Counters of one run.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    pub requests: u64,
    pub replies_ok: u64,
    pub replies_err: u64,
    pub no_reply: u64,
    pub bad_chains: u64,
    pub max_live_nodes: usize,
    /// Replies refused for the session limits (ENFILE).
    pub enfile: u64,
}

/// Metadata of everything the daemon must never change.
type Snapshot = BTreeMap<PathBuf, (u32, u32, u32, u64, u64, i64, i64, i64, i64)>;

fn snapshot(root: &Path, skip: &[PathBuf]) -> Snapshot {
    let mut out = Snapshot::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if skip.iter().any(|s| s == &p) {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        out.insert(
            p.strip_prefix(root).unwrap_or(&p).to_path_buf(),
            (
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.nlink(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            ),
        );
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    out
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Words a guest would use, and a few it should not.
const NAMES: &[&[u8]] = &[
    b"upper",
    b"rootfs",
    b"work",
    b"layers",
    b"plan.json",
    b"0",
    b"1",
    b"2",
    b"01",
    b"etc",
    b"top",
    b"base",
    b"usr",
    b"bin",
    b"rootlink",
    b"up",
    b"dev",
    b"a",
    b"b",
    b"c",
    b"d",
    b"..",
    b".",
    b"a/b",
    b"../outside",
    b"/",
    b"x\0y",
    b"",
    b"#whiteout",
    b"work",
    b"index",
];
const XATTRS: &[&[u8]] = &[
    b"user.a",
    b"trusted.overlay.opaque",
    b"trusted.overlay.origin",
    b"trusted.overlay.redirect",
    b"security.capability",
    b"security.selinux",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
    b"trusted.",
    b"user.",
    b"os2.x",
    b"",
];

/// The request generator: remembers node ids and handles the server handed out.
struct Gen {
    rng: Rng,
    nodes: Vec<u64>,
    fhs: Vec<u64>,
    all_nodes: BTreeSet<u64>,
    all_fhs: BTreeSet<u64>,
    unique: u64,
}

impl Gen {
    fn node(&mut self) -> u64 {
        match self.rng.below(20) {
            0 => 0,
            1 => self
                .rng
                .pick(&[u64::MAX, i64::MAX as u64, 1 << 32, 4, 15, 16]),
            2 => self.rng.below(64),
            3 => self.rng.next_u64(),
            4..=7 => self.nodes[self.rng.below(self.nodes.len() as u64) as usize],
            _ => {
                // Mostly the host nodes (past the three virtual ones) the server handed out.
                match self.nodes.len().saturating_sub(3) as u64 {
                    0 => self.nodes[0],
                    host => self.nodes[3 + self.rng.below(host) as usize],
                }
            }
        }
    }
    fn fh(&mut self) -> u64 {
        // Handle 0 often: it is what every READ and WRITE carries when OPEN answers ENOSYS.
        if self.fhs.is_empty() || self.rng.pct(15) {
            return self.rng.pick(&[0, 0, 0, 1, 2, u64::MAX, self.rng.0 % 100]);
        }
        let i = self.rng.below(self.fhs.len() as u64) as usize;
        self.fhs[i]
    }
    fn u64v(&mut self) -> u64 {
        match self.rng.below(10) {
            0 => 0,
            1 => u64::MAX,
            2 => i64::MAX as u64,
            3 => 1 << 63,
            4 => self.rng.next_u64(),
            5 => (1 << 40) + self.rng.below(4096),
            _ => self.rng.below(1 << 20),
        }
    }
    fn size(&mut self) -> u32 {
        match self.rng.below(10) {
            0 => 0,
            1 => u32::MAX,
            2 => 1 << 20,
            3 => (1 << 20) + 4096,
            4 => self.rng.next_u64() as u32,
            5 => 131072,
            _ => self.rng.below(8192) as u32,
        }
    }
    fn mode(&mut self) -> u32 {
        let ty = self.rng.pick(&[
            libc::S_IFREG,
            libc::S_IFDIR,
            libc::S_IFCHR,
            libc::S_IFBLK,
            libc::S_IFIFO,
            libc::S_IFSOCK,
            libc::S_IFLNK,
            0,
        ]);
        if self.rng.pct(10) {
            self.rng.next_u64() as u32
        } else {
            ty | (self.rng.below(0o10000) as u32)
        }
    }
    fn name(&mut self) -> Vec<u8> {
        let mut n = match self.rng.below(20) {
            0 => (0..self.rng.below(24))
                .map(|_| self.rng.next_u64() as u8)
                .collect(),
            1 => vec![b'n'; 250 + self.rng.below(10) as usize],
            2 => vec![b'L'; 4000 + self.rng.below(200) as usize],
            3..=11 => NAMES[self.rng.below(NAMES.len() as u64) as usize].to_vec(),
            _ => {
                // Short names from a small alphabet, so creates, lookups and renames collide.
                let len = 1 + self.rng.below(2) as usize;
                (0..len).map(|_| b'p' + self.rng.below(4) as u8).collect()
            }
        };
        if !self.rng.pct(3) {
            n.push(0); // names travel NUL-terminated; sometimes the NUL is missing
        }
        n
    }
    fn xattr(&mut self) -> Vec<u8> {
        let mut n = if self.rng.pct(80) {
            XATTRS[self.rng.below(XATTRS.len() as u64) as usize].to_vec()
        } else {
            self.name()
        };
        if n.last() != Some(&0) {
            n.push(0);
        }
        n
    }
    fn data(&mut self) -> Vec<u8> {
        let len = match self.rng.below(20) {
            0 => self.rng.below(1 << 20),
            1..=3 => self.rng.below(65536),
            _ => self.rng.below(4096),
        } as usize;
        let b = self.rng.next_u64() as u8;
        vec![b; len]
    }

    /// One request: the header's opcode and node id, and the body after the header.
    fn request(&mut self, first: bool) -> (u32, u64, Vec<u8>) {
        let mut b = Body(Vec::new());
        if first {
            // 7.31 with every flag, INIT_EXT included: flags2 and the unused words follow.
            b.u32(7).u32(31).u32(131072).u32(0xffff_ffff);
            for _ in 0..12 {
                b.u32(0);
            }
            return (op::INIT, 0, b.0);
        }
        let opcode = match self.rng.below(40) {
            0 => self.rng.pick(op::OTHERS),
            1 => self.rng.next_u64() as u32,
            _ => self.rng.pick(&[
                op::LOOKUP,
                op::LOOKUP,
                op::LOOKUP,
                op::FORGET,
                op::GETATTR,
                op::SETATTR,
                op::READLINK,
                op::SYMLINK,
                op::MKNOD,
                op::MKDIR,
                op::UNLINK,
                op::RMDIR,
                op::RENAME,
                op::LINK,
                op::OPEN,
                op::OPEN,
                op::READ,
                op::WRITE,
                op::STATFS,
                op::RELEASE,
                op::FSYNC,
                op::SETXATTR,
                op::GETXATTR,
                op::LISTXATTR,
                op::REMOVEXATTR,
                op::FLUSH,
                op::INIT,
                op::OPENDIR,
                op::READDIR,
                op::RELEASEDIR,
                op::FSYNCDIR,
                op::ACCESS,
                op::CREATE,
                op::CREATE,
                op::BATCH_FORGET,
                op::FALLOCATE,
                op::READDIRPLUS,
                op::RENAME2,
                op::LSEEK,
            ]),
        };
        let node = self.node();
        match opcode {
            op::LOOKUP | op::UNLINK | op::RMDIR => {
                let n = self.name();
                b.bytes(&n);
            }
            op::FORGET => {
                let n = self.rng.pick(&[1, 1, 1, 2, u64::MAX, 0]);
                b.u64(n);
            }
            op::GETATTR => {
                let fh = self.fh();
                b.u32(self.rng.below(2) as u32).u32(0).u64(fh);
            }
            op::SETATTR => {
                let valid = self.rng.next_u64() as u32 & 0x1ff;
                let fh = self.fh();
                let size = self.u64v();
                let mode = self.mode();
                b.u32(valid).u32(0).u64(fh).u64(size).u64(0);
                for _ in 0..3 {
                    let t = self.u64v();
                    b.u64(t);
                }
                for _ in 0..3 {
                    let ns = self.rng.pick(&[0, 999_999_999, 1_000_000_000, u32::MAX]);
                    b.u32(ns);
                }
                let uid = self.rng.pick(&[0, 1000, u32::MAX]);
                let gid = self.rng.pick(&[0, 1000, u32::MAX]);
                b.u32(mode).u32(0).u32(uid).u32(gid).u32(0);
            }
            op::SYMLINK => {
                let n = self.name();
                let target: &[u8] =
                    self.rng
                        .pick(&[&b"/\0"[..], b"../../outside\0", b"/etc/shadow\0", b"a\0"]);
                b.bytes(&n).bytes(target);
            }
            op::MKNOD => {
                let mode = self.mode();
                let rdev = self.rng.pick(&[0, 0x103, 0x801, u32::MAX]);
                b.u32(mode).u32(rdev).u32(0o022).u32(0);
                let n = self.name();
                b.bytes(&n);
            }
            op::MKDIR => {
                let mode = self.mode();
                b.u32(mode).u32(0o022);
                let n = self.name();
                b.bytes(&n);
            }
            op::RENAME | op::RENAME2 => {
                let nd = self.node();
                b.u64(nd);
                if opcode == op::RENAME2 {
                    let flags = self.rng.pick(&[0, 1, 2, 4, 3, 6, u32::MAX]);
                    b.u32(flags).u32(0);
                }
                let (a, c) = (self.name(), self.name());
                b.bytes(&a).bytes(&c);
            }
            op::LINK => {
                let old = self.node();
                b.u64(old);
                let n = self.name();
                b.bytes(&n);
            }
            op::OPEN | op::OPENDIR => {
                let flags = if self.rng.pct(20) {
                    self.rng.next_u64() as u32
                } else {
                    self.rng.pick(&[
                        libc::O_RDONLY,
                        libc::O_WRONLY,
                        libc::O_RDWR,
                        libc::O_RDWR | libc::O_TRUNC,
                        libc::O_WRONLY | libc::O_APPEND,
                        libc::O_RDONLY | libc::O_DIRECTORY,
                        libc::O_PATH,
                        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
                    ]) as u32
                };
                b.u32(flags).u32(0);
            }
            op::READ | op::READDIR | op::READDIRPLUS => {
                let fh = self.fh();
                let off = self.u64v();
                let size = self.size();
                b.u64(fh).u64(off).u32(size).u32(0).u64(0).u32(0).u32(0);
            }
            op::WRITE => {
                let fh = self.fh();
                let off = self.u64v();
                let data = self.data();
                let size = if self.rng.pct(90) {
                    data.len() as u32
                } else {
                    self.size()
                };
                b.u64(fh).u64(off).u32(size).u32(0).u64(0).u32(0).u32(0);
                b.bytes(&data);
            }
            op::RELEASE | op::RELEASEDIR => {
                let fh = self.fh();
                b.u64(fh).u32(0).u32(0).u64(0);
            }
            op::FSYNC | op::FSYNCDIR => {
                let fh = self.fh();
                b.u64(fh).u32(self.rng.below(2) as u32).u32(0);
            }
            op::SETXATTR => {
                let n = self.xattr();
                let v = if self.rng.pct(50) {
                    b"y".to_vec()
                } else {
                    self.data()
                };
                let size = if self.rng.pct(90) {
                    v.len() as u32
                } else {
                    self.size()
                };
                let flags = self.rng.pick(&[0, 1, 2, 3]);
                b.u32(size).u32(flags).bytes(&n).bytes(&v);
            }
            op::GETXATTR | op::LISTXATTR => {
                let size = self.size();
                b.u32(size).u32(0);
                if opcode == op::GETXATTR {
                    let n = self.xattr();
                    b.bytes(&n);
                }
            }
            op::REMOVEXATTR => {
                let n = self.xattr();
                b.bytes(&n);
            }
            op::FLUSH => {
                let fh = self.fh();
                b.u64(fh).u32(0).u32(0).u64(0);
            }
            op::INIT => {
                let major = self.rng.pick(&[7, 6, 8, 0, u32::MAX]);
                let minor = self.rng.next_u64() as u32 % 40;
                b.u32(major).u32(minor).u32(self.size());
                b.u32(self.rng.next_u64() as u32)
                    .u32(self.rng.next_u64() as u32)
                    .u32(0);
            }
            op::ACCESS => {
                b.u32(self.rng.below(8) as u32).u32(0);
            }
            op::CREATE => {
                let flags = self.rng.pick(&[
                    libc::O_RDWR,
                    libc::O_WRONLY | libc::O_EXCL,
                    libc::O_RDWR | libc::O_TRUNC,
                    libc::O_RDONLY,
                ]) as u32;
                let mode = self.mode();
                b.u32(flags).u32(mode).u32(0o022).u32(0);
                let n = self.name();
                b.bytes(&n);
            }
            op::BATCH_FORGET => {
                let real = self.rng.below(8);
                let count = if self.rng.pct(10) {
                    self.rng.pick(&[u32::MAX, 1 << 20, 100])
                } else {
                    real as u32
                };
                b.u32(count).u32(0);
                for _ in 0..real {
                    let n = self.node();
                    b.u64(n).u64(self.rng.pick(&[1, 2, u64::MAX]));
                }
            }
            op::FALLOCATE => {
                let fh = self.fh();
                let off = self.rng.below(1 << 20);
                let mode = self.rng.pick(&[0, 1, 2, 3, 0x10, 0x20, u32::MAX]);
                // Lengths stay small: the fuzzer's own disk is real (a guest filling the
                // host disk is the ENOSPC fault test's business, not this one's).
                b.u64(fh)
                    .u64(off)
                    .u64(self.rng.below(1 << 20))
                    .u32(mode)
                    .u32(0);
            }
            op::LSEEK => {
                let fh = self.fh();
                let off = self.u64v();
                b.u64(fh).u64(off).u32(self.rng.below(6) as u32).u32(0);
            }
            _ => {
                let len = self.rng.below(128) as usize;
                for _ in 0..len {
                    b.0.push(self.rng.next_u64() as u8);
                }
            }
        }
        // Mutations: cut the body short, or flip a byte (never in FALLOCATE, see above).
        if self.rng.pct(4) && !b.0.is_empty() {
            let cut = self.rng.below(b.0.len() as u64) as usize;
            b.0.truncate(cut);
        }
        if self.rng.pct(3) && !b.0.is_empty() && opcode != op::FALLOCATE {
            let i = self.rng.below(b.0.len() as u64) as usize;
            b.0[i] ^= 1 << self.rng.below(8);
        }
        (opcode, node, b.0)
    }

    fn remember_node(&mut self, id: u64) {
        if id == 0 {
            return;
        }
        self.all_nodes.insert(id);
        if self.nodes.len() < 64 {
            self.nodes.push(id);
        } else {
            let i = 3 + self.rng.below(61) as usize;
            self.nodes[i] = id;
        }
    }
    fn remember_fh(&mut self, fh: u64) {
        self.all_fhs.insert(fh);
        if self.fhs.len() < 32 {
            self.fhs.push(fh);
        } else {
            let i = self.rng.below(32) as usize;
            self.fhs[i] = fh;
        }
    }
}

struct Body(Vec<u8>);
impl Body {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One fuzz run: a fresh temp tree, a fresh daemon-side tree and server, a virtqueue in fresh
/// guest memory.
pub struct Harness {
    dir: tempfile::TempDir,
    fs: Arc<StrataFs>,
    server: Server<Arc<StrataFs>>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    queue: Queue,
    avail_idx: u16,
    stats: Stats,
    before: Snapshot,
    fds_base: usize,
    /// fds in the budget when the harness was built (other harnesses of this process).
    held_base: usize,
    /// When set, every request after INIT is appended here in [`run_bytes`]' format.
    record: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
    recording: bool,
}

impl Harness {
    /// Build the temp tree (layers with a file, a symlink to `/`, a symlink out of the tree, a
    /// device node and a hard link; upper/work; `outside`) and everything above it.
    pub fn new() -> std::io::Result<Harness> {
        Harness::with_limits(crate::tree::Limits::default())
    }

    /// [`Harness::new`] with the given per-session limits.
    pub fn with_limits(limits: crate::tree::Limits) -> std::io::Result<Harness> {
        Harness::with_setup(limits, Role::Tree { lower_tag: None }, false, false)
    }

    /// [`Harness::new`] with the given per-session limits, serving the tree as `role` (the
    /// whole tree, or the layer device), with `/rootfs` (the root merged by the daemon) if
    /// `union`, OPEN making handles if `file_handles` (else answered ENOSYS, the default).
    pub fn with_setup(
        limits: crate::tree::Limits,
        role: Role,
        union: bool,
        file_handles: bool,
    ) -> std::io::Result<Harness> {
        let dir = tempfile::tempdir()?;
        let p = dir.path();
        for d in [
            "l0/etc",
            "l1/etc",
            "l1/usr/bin",
            "c/upper",
            "c/work",
            "outside",
        ] {
            std::fs::create_dir_all(p.join(d))?;
        }
        std::fs::write(p.join("l0/etc/top"), b"top")?;
        std::fs::write(p.join("l1/etc/base"), b"base")?;
        std::fs::hard_link(p.join("l1/etc/base"), p.join("l1/etc/base2"))?;
        std::fs::write(p.join("outside/secret"), b"secret")?;
        std::os::unix::fs::symlink("/", p.join("l1/rootlink"))?;
        std::os::unix::fs::symlink("../../outside/secret", p.join("l1/etc/up"))?;
        // A device node in a layer, as images sometimes ship (/dev/null's numbers).
        // Failure (no CAP_MKNOD) is fine: the tree just lacks the node.
        let l1 = crate::sys::open_anchor(&p.join("l1"))?;
        let _ = crate::sys::mknod_at(
            std::os::fd::AsFd::as_fd(&l1),
            c"dev",
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
        );
        let cfg = ServeConfig {
            lowers: vec![p.join("l0"), p.join("l1")],
            upper: p.join("c/upper"),
            work: p.join("c/work"),
            socket: p.join("sock"),
            socket_fd: None,
            socket_perms: Default::default(),
            tag: "fuzz".into(),
            limits,
            lower_device: None,
            lower_block: None,
            union,
        };
        let checked = cfg.check().map_err(std::io::Error::other)?;
        let mut fs = StrataFs::with_role(&checked, CachePolicy::default(), role)
            .map_err(std::io::Error::other)?;
        fs.set_file_handles(file_handles);
        let fs = Arc::new(fs);
        let server = Server::new(fs.clone());
        let mm = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
            .map_err(std::io::Error::other)?;
        let mem = GuestMemoryAtomic::new(mm);
        let mut queue = Queue::new(QSIZE).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(DESC as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_ready(true);
        let skip = vec![p.join("c/upper"), p.join("c/work")];
        let before = snapshot(p, &skip);
        Ok(Harness {
            dir,
            fs,
            server,
            mem,
            queue,
            avail_idx: 0,
            stats: Stats::default(),
            before,
            fds_base: open_fds(),
            held_base: crate::fdbudget::held(),
            record: None,
            recording: false,
        })
    }

    /// Put one request into guest memory as a descriptor chain, serve it through the daemon's
    /// path, and return the reply bytes (None if the server wrote none).
    /// `shape`: where the chain's shape comes from; `None` is one readable and one large
    /// writable descriptor, as a well-behaved guest sends.
    fn roundtrip(&mut self, shape: Option<&mut Rng>, req: &[u8]) -> Option<Vec<u8>> {
        let mut calm = Rng(0);
        let (rng, wild) = match shape {
            Some(r) => (r, true),
            None => (&mut calm, false),
        };
        if let (true, Some(rec)) = (self.recording, &self.record) {
            if let Ok(mut rec) = rec.lock() {
                let req = &req[..req.len().min(u16::MAX as usize)];
                rec.extend_from_slice(&(req.len() as u16).to_le_bytes());
                rec.extend_from_slice(req);
            }
        }
        let m = self.mem.memory();
        let req = &req[..req.len().min(REQ_MAX)];
        m.write_slice(req, GuestAddress(REQ)).ok()?;
        // Split the request over 1-3 readable descriptors; then 0-2 writable ones.
        let mut descs: Vec<(u64, u32, u16)> = Vec::new();
        let mut pos = 0usize;
        let parts = if wild { 1 + rng.below(3) as usize } else { 1 };
        for i in 0..parts {
            let end = if i + 1 == parts {
                req.len()
            } else {
                pos + rng.below((req.len() - pos) as u64 + 1) as usize
            };
            descs.push((REQ + pos as u64, (end - pos) as u32, 0));
            pos = end;
        }
        let reply_len = match if wild { rng.below(20) } else { 99 } {
            0 => rng.below(16) as u32,
            1 => rng.below(200) as u32,
            _ => REPLY_MAX as u32,
        };
        let writable = match if wild { rng.below(30) } else { 99 } {
            0 => 0,
            1 => 2,
            _ => 1,
        };
        if writable == 2 {
            let a = rng.below(reply_len as u64 + 1) as u32;
            descs.push((REPLY, a, VIRTQ_DESC_F_WRITE));
            descs.push((REPLY + a as u64, reply_len - a, VIRTQ_DESC_F_WRITE));
        } else if writable == 1 {
            descs.push((REPLY, reply_len, VIRTQ_DESC_F_WRITE));
        }
        if wild && rng.pct(1) {
            // A descriptor pointing past guest memory.
            let i = rng.below(descs.len() as u64) as usize;
            descs[i].0 = MEM_SIZE as u64 + rng.below(1 << 20);
        }
        let _ = m.write_slice(&[0u8; 16], GuestAddress(REPLY));
        let n = descs.len();
        for (i, (addr, len, flags)) in descs.iter().enumerate() {
            let mut d = Vec::with_capacity(16);
            d.extend_from_slice(&addr.to_le_bytes());
            d.extend_from_slice(&len.to_le_bytes());
            let next = if i + 1 < n { VIRTQ_DESC_F_NEXT } else { 0 };
            d.extend_from_slice(&(flags | next).to_le_bytes());
            d.extend_from_slice(&((i + 1) as u16).to_le_bytes());
            m.write_slice(&d, GuestAddress(DESC + 16 * i as u64)).ok()?;
        }
        let slot = self.avail_idx % QSIZE;
        m.write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * slot as u64))
            .ok()?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.write_obj(self.avail_idx, GuestAddress(AVAIL + 2)).ok()?;
        let chain = self.queue.pop_descriptor_chain(m.clone())?;
        let head = chain.head_index();
        let len = serve_chain(&self.server, &m, chain, &self.stats);
        let _ = self.queue.add_used(&*m, head, len);
        if len == 0 || writable == 0 {
            return None;
        }
        let mut out = vec![0u8; (len as usize).min(REPLY_MAX)];
        m.read_slice(&mut out, GuestAddress(REPLY)).ok()?;
        Some(out)
    }

    fn request_bytes(opcode: u32, node: u64, body: &[u8], lie: Option<u32>) -> Vec<u8> {
        let total = 40 + body.len();
        let mut req = Body(Vec::with_capacity(total));
        req.u32(lie.unwrap_or(total as u32))
            .u32(opcode)
            .u64(0)
            .u64(node)
            .u32(0)
            .u32(0)
            .u32(1)
            .u32(0)
            .bytes(body);
        req.0
    }

    /// Run `n` requests from `seed`. `Err` is a finding.
    pub fn run(mut self, seed: u64, n: u64) -> Result<RunStats, Finding> {
        let mut g = Gen {
            rng: Rng::new(seed),
            nodes: vec![1, 2, 3],
            fhs: Vec::new(),
            all_nodes: BTreeSet::new(),
            all_fhs: BTreeSet::new(),
            unique: 0,
        };
        let mut chain_rng = Rng::new(seed ^ 0xdead_beef);
        // Warm-up, as a guest mounting the tree would: INIT, then look up the served dirs so
        // that random requests start from real host nodes.
        let mut init = Body(Vec::new());
        init.u32(7).u32(31).u32(131072).u32(0xffff_ffff);
        for _ in 0..12 {
            init.u32(0);
        }
        self.roundtrip(None, &Self::request_bytes(op::INIT, 0, &init.0, None));
        self.recording = true;
        // `rootfs` exists only with `/rootfs` (union seeds).
        let walk: &[(u64, &[u8])] = &[
            (1, b"upper\0"),
            (1, b"work\0"),
            (2, b"0\0"),
            (2, b"1\0"),
            (1, b"rootfs\0"),
        ];
        // Twenty times over: the guest holds those lookups, so random FORGETs take a while.
        for &(parent, name) in walk.iter().cycle().take(20 * walk.len()) {
            let r = self.roundtrip(None, &Self::request_bytes(op::LOOKUP, parent, name, None));
            if let Some(id) = r.as_ref().and_then(|r| r.get(16..24)) {
                let id = u64::from_le_bytes(id.try_into().unwrap_or([0; 8]));
                g.remember_node(id);
                for name in [&b"etc\0"[..], b"rootlink\0", b"dev\0", b"usr\0"] {
                    let r = self.roundtrip(None, &Self::request_bytes(op::LOOKUP, id, name, None));
                    if let Some(r) = r.filter(|r| r.len() >= 24 && r[4..8] == [0; 4]) {
                        g.remember_node(u64::from_le_bytes(r[16..24].try_into().unwrap_or([0; 8])));
                    }
                }
            }
        }
        let mut st = RunStats::default();
        for i in 0..n {
            let (opcode, node, body) = g.request(false);
            let lie = if g.rng.pct(3) {
                Some(
                    g.rng
                        .pick(&[0, 1, 39, 40, u32::MAX, (1 << 20) + 0x1000 + 1]),
                )
            } else {
                None
            };
            g.unique += 1;
            let mut req = Self::request_bytes(opcode, node, &body, lie);
            req[8..16].copy_from_slice(&g.unique.to_le_bytes());
            let uid: u32 = g.rng.pick(&[0, 0, 0, 1000, u32::MAX]);
            req[24..28].copy_from_slice(&uid.to_le_bytes());
            let reply = catch_unwind(AssertUnwindSafe(|| {
                self.roundtrip(Some(&mut chain_rng), &req)
            }));
            let reply = match reply {
                Ok(r) => r,
                Err(p) => {
                    let what = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    return Err(Finding {
                        seed,
                        request: i,
                        what: format!("panic: {what}"),
                        bytes: hex(&req),
                    });
                }
            };
            st.requests += 1;
            if std::env::var_os("STRATA_FUZZ_DEBUG").is_some() {
                eprintln!(
                    "#{i} op {opcode} node {node} body {} -> {:?}",
                    hex(&body[..body.len().min(48)]),
                    reply.as_ref().map(|r| hex(&r[..r.len().min(40)]))
                );
            }
            match reply {
                None => st.no_reply += 1,
                Some(r) if r.len() >= 16 => {
                    let error = i32::from_le_bytes(r[4..8].try_into().unwrap_or([0; 4]));
                    if error != 0 {
                        st.replies_err += 1;
                        if error == -libc::ENFILE {
                            st.enfile += 1;
                        }
                    } else {
                        st.replies_ok += 1;
                        let u64_at = |o: usize| {
                            r.get(o..o + 8)
                                .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
                        };
                        match opcode {
                            op::LOOKUP | op::MKDIR | op::MKNOD | op::SYMLINK | op::LINK => {
                                if let Some(id) = u64_at(16) {
                                    g.remember_node(id);
                                }
                            }
                            op::CREATE => {
                                if let Some(id) = u64_at(16) {
                                    g.remember_node(id);
                                }
                                if let Some(fh) = u64_at(16 + 128) {
                                    g.remember_fh(fh);
                                }
                            }
                            op::OPEN | op::OPENDIR => {
                                if let Some(fh) = u64_at(16) {
                                    g.remember_fh(fh);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Some(_) => st.replies_err += 1,
            }
            st.max_live_nodes = st.max_live_nodes.max(self.fs.live_nodes());
            let lim = self.fs.limits();
            if self.fs.live_nodes() > lim.max_nodes || self.fs.open_handles() > lim.max_handles {
                return Err(Finding {
                    seed,
                    request: i,
                    what: format!(
                        "past the session limits: {} nodes, {} handles ({lim:?})",
                        self.fs.live_nodes(),
                        self.fs.open_handles()
                    ),
                    bytes: hex(&req),
                });
            }
            if i % 1000 == 999 {
                // Every fd a node or handle holds is in the fd budget: a node's own, a merged
                // or `/rootfs` directory's layer dirs, a copied-up inode, and those of the
                // `/rootfs` parents a held node keeps alive.
                let fds = open_fds();
                let held = crate::fdbudget::held().saturating_sub(self.held_base);
                let allowed = self.fds_base + held;
                if fds > allowed {
                    return Err(Finding {
                        seed,
                        request: i,
                        what: format!(
                            "fd leak: {fds} open, {allowed} allowed (base {} + budgeted {held}; \
                             {} nodes, {} handles)",
                            self.fds_base,
                            self.fs.live_nodes(),
                            self.fs.open_handles()
                        ),
                        bytes: hex(&req),
                    });
                }
            }
        }
        st.bad_chains = self
            .stats
            .bad_chains
            .load(std::sync::atomic::Ordering::Relaxed);
        self.finish(seed, n, g, st)
    }

    /// The guest goes away politely: release every handle, forget every node. Then nothing may
    /// be left open, and nothing outside upper/work may have changed.
    fn finish(mut self, seed: u64, n: u64, g: Gen, st: RunStats) -> Result<RunStats, Finding> {
        // A reply the guest never received (no or too small a writable buffer) still opened a
        // handle or registered a node: a guest cannot name those, so they live until the
        // session ends. The polite guest here names every id the server can have handed out
        // (both are sequential) besides those it saw.
        let max_fh = g
            .all_fhs
            .iter()
            .copied()
            .filter(|&f| f < 1 << 32)
            .max()
            .unwrap_or(0);
        let fhs: BTreeSet<u64> = g
            .all_fhs
            .iter()
            .copied()
            .chain(0..=max_fh.max(n + 1))
            .collect();
        for fh in fhs {
            for opcode in [op::RELEASE, op::RELEASEDIR] {
                let mut b = Body(Vec::new());
                b.u64(fh).u32(0).u32(0).u64(0);
                let req = Self::request_bytes(opcode, 1, &b.0, None);
                self.roundtrip(None, &req);
            }
        }
        let nodes: BTreeSet<u64> = g.all_nodes.iter().copied().chain(16..16 + n + 1).collect();
        for chunk in nodes.into_iter().collect::<Vec<_>>().chunks(1000) {
            let mut b = Body(Vec::new());
            b.u32(chunk.len() as u32).u32(0);
            for id in chunk {
                b.u64(*id).u64(u64::MAX);
            }
            let req = Self::request_bytes(op::BATCH_FORGET, 0, &b.0, None);
            self.roundtrip(None, &req);
        }
        let fail = |what: String| Finding {
            seed,
            request: n,
            what,
            bytes: String::new(),
        };
        if self.fs.live_nodes() != 0 || self.fs.open_handles() != 0 {
            return Err(fail(format!(
                "after releasing and forgetting everything: {} nodes, {} handles left",
                self.fs.live_nodes(),
                self.fs.open_handles()
            )));
        }
        let fds = open_fds();
        if fds > self.fds_base {
            return Err(fail(format!(
                "fd leak: {fds} open at the end, {} at the start",
                self.fds_base
            )));
        }
        let p = self.dir.path();
        let after = snapshot(p, &[p.join("c/upper"), p.join("c/work")]);
        if after != self.before {
            let mut diff = Vec::new();
            for (k, v) in &after {
                if self.before.get(k) != Some(v) {
                    diff.push(format!(
                        "changed/new {k:?}: {v:?} (was {:?})",
                        self.before.get(k)
                    ));
                }
            }
            for k in self.before.keys() {
                if !after.contains_key(k) {
                    diff.push(format!("removed {k:?}"));
                }
            }
            return Err(fail(format!("outside upper/work changed: {diff:#?}")));
        }
        Ok(st)
    }
}

/// Every third seed runs with tight session limits, so that refusals past them (and the slots
/// FORGET/RELEASE give back) are fuzzed too; the others with the defaults.
pub fn limits_for(seed: u64) -> crate::tree::Limits {
    if seed.is_multiple_of(3) {
        crate::tree::Limits {
            max_nodes: 6,
            max_handles: 1,
            ..crate::tree::Limits::DEFAULT
        }
    } else {
        crate::tree::Limits::default()
    }
}

/// Seeds 1, 5, 9, … serve the layer device (read-only, no xattrs, no upper/work); the others
/// the whole tree.
pub fn role_for(seed: u64) -> Role {
    if seed % 4 == 1 {
        Role::Layers
    } else {
        Role::Tree { lower_tag: None }
    }
}

/// Seeds 2, 6, 10, … serve `/rootfs` (the root merged by the daemon: copy-ups, whiteouts)
/// besides the tree.
pub fn union_for(seed: u64) -> bool {
    seed % 4 == 2
}

/// Seeds 0, 3, 6, … answer OPEN with handles (`STRATA_SERVE_OPEN=1`); the others with ENOSYS,
/// as the daemon does by default, so their reads and writes name inodes with handle 0.
pub fn handles_for(seed: u64) -> bool {
    seed.is_multiple_of(3)
}

/// Run `n` requests from `seed` on a fresh harness.
pub fn run_seed(seed: u64, n: u64) -> Result<RunStats, Finding> {
    run_seed_with(seed, n, || Ok(()))
}

/// [`run_seed`], with `setup` run once the harness is built and before the first request (to
/// put a sandbox in force, for example).
pub fn run_seed_with(
    seed: u64,
    n: u64,
    setup: impl FnOnce() -> Result<(), String>,
) -> Result<RunStats, Finding> {
    let fail = |what: String| Finding {
        seed,
        request: 0,
        what,
        bytes: String::new(),
    };
    let h = Harness::with_setup(
        limits_for(seed),
        role_for(seed),
        union_for(seed),
        handles_for(seed),
    )
    .map_err(|e| fail(format!("harness: {e}")))?;
    setup().map_err(|e| fail(format!("setup: {e}")))?;
    h.run(seed, n)
}

/// The requests of [`run_seed`]`(seed, n)` (after its INIT) as a [`run_bytes`] stream: a seed
/// corpus for the coverage-guided fuzzer that starts past the handshake, with node ids and
/// handles that exist. (The chain shapes of the structured run are not kept.)
pub fn stream_for_seed(seed: u64, n: u64) -> Result<Vec<u8>, Finding> {
    let mut h = Harness::with_setup(
        limits_for(seed),
        role_for(seed),
        union_for(seed),
        handles_for(seed),
    )
    .map_err(|e| Finding {
        seed,
        request: 0,
        what: format!("harness: {e}"),
        bytes: String::new(),
    })?;
    let rec = Arc::new(std::sync::Mutex::new(Vec::new()));
    h.record = Some(rec.clone());
    h.run(seed, n)?;
    let out = rec.lock().map(|r| r.clone()).unwrap_or_default();
    Ok(out)
}

/// For coverage-guided fuzzers (`fuzz/` at the repo root, cargo-fuzz): `data` is a stream of
/// raw requests, each a little-endian u16 length and that many bytes (header and body as the
/// guest would put them in the chain), served in order after a valid INIT on a fresh harness;
/// then the end-of-run checks. `Err` is a finding.
pub fn run_bytes(data: &[u8]) -> Result<(), Finding> {
    let mut h = Harness::new().map_err(|e| Finding {
        seed: 0,
        request: 0,
        what: format!("harness: {e}"),
        bytes: String::new(),
    })?;
    let mut init = Body(Vec::new());
    init.u32(7).u32(31).u32(131072).u32(0xffff_ffff);
    for _ in 0..12 {
        init.u32(0);
    }
    h.roundtrip(None, &Harness::request_bytes(op::INIT, 0, &init.0, None));
    let mut rest = data;
    let mut n = 0;
    while rest.len() >= 2 {
        let len = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let req = &rest[2..2 + len];
        rest = &rest[2 + len..];
        h.roundtrip(None, req);
        n += 1;
    }
    let g = Gen {
        rng: Rng::new(0),
        nodes: vec![1, 2, 3],
        fhs: Vec::new(),
        all_nodes: BTreeSet::new(),
        all_fhs: BTreeSet::new(),
        unique: 0,
    };
    h.finish(0, n, g, RunStats::default()).map(drop)
}

/// Replay one request (hex, as in a [`Finding`]) after a valid INIT, on a fresh harness.
pub fn replay(hex_req: &str) -> Result<Option<Vec<u8>>, String> {
    let bytes: Vec<u8> = (0..hex_req.len() / 2)
        .map(|i| u8::from_str_radix(&hex_req[2 * i..2 * i + 2], 16).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut h = Harness::new().map_err(|e| e.to_string())?;
    let mut init = Body(Vec::new());
    init.u32(7).u32(31).u32(131072).u32(0xffff_ffff);
    for _ in 0..12 {
        init.u32(0);
    }
    let req = Harness::request_bytes(op::INIT, 0, &init.0, None);
    h.roundtrip(None, &req);
    Ok(h.roundtrip(None, &bytes))
}
