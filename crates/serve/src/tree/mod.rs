//! The synthesized tree one VM sees: a virtual root holding `plan.json`, `layers/N` (read-only
//! host layer directories), `lower` (the layers merged, read-only), `upper` and `work`
//! (read-write host directories).
//!
//! Why not fuse-backend-rs' `Vfs` with one passthrough per directory: `Vfs` refuses `rename` and
//! `link` between its backends (EINVAL), and the guest's overlayfs renames from `work` into
//! `upper` on every copy-up and whiteout. Here upper and work are one *area* served from one
//! inode table, so those renames are plain host `renameat2` calls between two held fds.
//!
//! Layout of this module, one file per operation family:
//! - `mod.rs`: nodes, the inode table, handles, name checks, attributes;
//! - `lookup.rs`: lookup/forget/getattr/setattr/readlink/statfs;
//! - `dir.rs`: directory reads and namespace changes (mkdir, unlink, rename, link, ...);
//! - `file.rs`: open/create/read/write/fsync/release, and the files kept open between reads
//!   and writes by inode;
//! - `xattr.rs`: extended attributes and which namespaces a guest may write;
//! - `merged.rs`: `/lower`, the layers merged with overlayfs' rules (the plan's one lower);
//! - `union.rs`: `/rootfs`, upper and layers merged by the daemon (`--union`: no guest overlay);
//! - `opstats.rs`: request counts for benchmarks (`STRATA_SERVE_OPSTATS=1`);
//! - `filesystem.rs`: the `FileSystem` trait impl that dispatches to the above.

mod dir;
mod file;
mod filesystem;
mod lookup;
mod merged;
pub mod opstats;
mod union;
mod xattr;

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use fuse_backend_rs::api::filesystem::{Context, Entry};
use strata_plan::MountPlan;

use crate::config::Checked;
use crate::sys::{self, stat64};

/// Most layers one tree serves (overlayfs itself allows 500 lower layers).
pub const MAX_LAYERS: usize = 500;

/// Node ids of the virtual part of the tree.
pub(crate) const ROOT: u64 = fuse_backend_rs::api::filesystem::ROOT_ID;
pub(crate) const LAYERS: u64 = 2;
pub(crate) const PLAN: u64 = 3;
const FIRST_HOST_NODE: u64 = 16;

/// Which part of the host a node belongs to. Upper and work are one area: the guest's overlay
/// renames and links between them, and they are on one host filesystem (checked at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Area {
    /// Read-only layer, by index (0 = topmost).
    Layer(u16),
    /// A directory of `/lower`, the layers merged (read-only; files in it are `Layer` nodes).
    Merged,
    /// The writable area: upper and work.
    Rw,
    /// A node of `/rootfs`, the upper dir and the layers merged by the daemon: changed only
    /// through the operations of `union.rs` (copy-up first), never as a plain host inode.
    Union,
}

impl Area {
    pub fn writable(self) -> bool {
        matches!(self, Area::Rw)
    }
}

/// Which device of a VM this tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The whole tree: plan, layers, `/lower`, upper and work. With `lower_tag`, the plan
    /// sends the guest's overlay to the layer device of that tag for its lowers, if no layer
    /// has an xattr a container could read (checked once, when the tree is opened).
    Tree { lower_tag: Option<String> },
    /// The layer device ([`crate::config::LowerDevice`]): `layers/` and `lower` only, read-only,
    /// GETXATTR and LISTXATTR answered ENOSYS (the guest kernel then stops asking).
    Layers,
}

/// How long the guest may cache entries and attributes.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    /// Layers are immutable: cache for a long time and keep page cache across opens.
    pub layer: Duration,
    /// Upper/work change only through this guest, but stay short so host-side checks agree.
    pub rw: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            layer: Duration::from_secs(24 * 3600),
            rw: Duration::from_secs(1),
        }
    }
}

/// What one guest session may hold at once on the daemon's side. Every node is a host `O_PATH`
/// fd and every handle an open host file, so without a cap a guest could grow the daemon's fds
/// and memory without bound (by looking up or opening everything and never forgetting).
/// Past a limit the request fails with ENFILE (the served filesystem's "file table is full"),
/// one warning is logged (again at each doubling of the refusals), and FORGET/RELEASE give
/// the slots back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Host inodes the guest may hold looked up at once (its inode cache; FORGET frees).
    pub max_nodes: usize,
    /// Files and directories the guest may hold open at once (RELEASE/RELEASEDIR free).
    pub max_handles: usize,
    /// Whether the guest may make block and character device nodes in its upper dir (as
    /// Docker and Kata-style runtimes let a container's root do: the guest kernel opens them
    /// with its own drivers, the daemon never opens one, and device nodes an image ships must
    /// survive a copy-up, which is a mknod). `false` (`--no-device-nodes`): EPERM, except the
    /// overlayfs whiteout (char 0:0).
    pub device_nodes: bool,
}

impl Limits {
    /// 65536 nodes: a walk of a large image (tens of thousands of files) stays well inside;
    /// the guest kernel forgets inodes it evicts. 16384 handles: far above what a container's
    /// processes keep open, and with the nodes still inside a common `ulimit -n` of 100k.
    pub const DEFAULT: Limits = Limits {
        max_nodes: 65536,
        max_handles: 16384,
        device_nodes: true,
    };

    /// File descriptors a session can hold at most with these limits (nodes, handles, anchors).
    pub fn fds_needed(&self, layers: usize) -> u64 {
        (self.max_nodes + self.max_handles + layers + 2) as u64
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// One warning per process about a worker thread whose umask could not be cleared.
static UMASK_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One warning per process about an open-files limit below what the session limits allow.
static FD_LIMIT_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Refusals past a limit, for rate-limited logging.
#[derive(Default)]
struct Refusals {
    nodes: AtomicU64,
    handles: AtomicU64,
}

/// Refusals because the process's fd budget ([`crate::fdbudget`]) is spent, over all sessions.
static FD_BUDGET_LOG: crate::ratelog::RateLog =
    crate::ratelog::RateLog::new(1, Duration::from_secs(10));

/// Log the `n`th refusal (1-based) only when `n` is a power of two: a guest hammering a limit
/// cannot flood the host's log.
fn log_refusal(what: &str, limit: usize, n: u64) {
    if n.is_power_of_two() {
        tracing::warn!(
            "guest holds {limit} {what} (the per-session limit): refusing more with ENFILE \
             ({n} refused so far); it must forget/release some first, or raise the limit \
             (--max-{what} of strata serve / strata daemon)"
        );
    }
}

/// What identifies a node, so that a second lookup of it gives the same node id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum NodeKey {
    /// A host inode of an area.
    Inode(Area, u64, u64),
    /// A `/rootfs` name still in a layer: its directory's node (address) and name. Not the
    /// layer inode: layers may share inodes (hard links), and each name copies up alone.
    Path(usize, Box<[u8]>),
}

/// A host inode the guest holds a reference to.
pub(crate) struct HostNode {
    /// `O_PATH | O_NOFOLLOW` fd on the inode: every operation goes through it.
    pub fd: OwnedFd,
    pub area: Area,
    /// File type bits (`S_IFMT`) at lookup time; the type of an inode never changes.
    pub kind: u32,
    key: Mutex<NodeKey>,
    /// Outstanding guest lookups (FUSE nlookup).
    refs: AtomicU64,
    /// For a `Merged` directory: the layer of `fd`, and the same directory in the layers below
    /// it that it merges (topmost first).
    merged: Option<(u16, Vec<(u16, OwnedFd)>)>,
    /// For a `Merged` directory: its listing, made at the first OPENDIR and shared by every
    /// handle on it (layers never change), so N handles cost one listing, not N.
    pub(crate) listing: std::sync::OnceLock<Arc<Vec<merged::MergedEntry>>>,
    /// For a `/rootfs` node: where it is and what it merges.
    pub(crate) union: Option<union::UnionNode>,
    /// A regular file's inode opened for READ and WRITE by inode, kept between requests
    /// ([`file::IoCache`]).
    pub(crate) io: Mutex<Option<file::CachedIo>>,
    /// `fd` and the stack's fds, counted in the process's fd budget.
    _fds: crate::fdbudget::Permit,
}

impl HostNode {
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// A merged directory's stack, topmost first: (layer, directory). Empty for other nodes.
    pub(crate) fn stack(&self) -> impl Iterator<Item = (u16, BorrowedFd<'_>)> {
        let (top, below) = match &self.merged {
            Some((top, below)) => (Some((*top, self.fd.as_fd())), below.as_slice()),
            None => (None, &[][..]),
        };
        top.into_iter()
            .chain(below.iter().map(|(l, fd)| (*l, fd.as_fd())))
    }
}

/// What a node id refers to.
#[derive(Clone)]
pub(crate) enum Node {
    Root,
    Layers,
    Plan,
    Host(Arc<HostNode>),
}

#[derive(Default)]
struct NodeTable {
    by_id: HashMap<u64, Arc<HostNode>>,
    by_key: HashMap<NodeKey, u64>,
}

/// An open file or directory.
pub(crate) enum Handle {
    File {
        file: File,
        area: Area,
    },
    Dir {
        dir: Mutex<File>,
    },
    /// A directory of `/lower`: its node's shared listing.
    Merged {
        entries: Arc<Vec<merged::MergedEntry>>,
    },
}

/// What the plan is made of; [`PlanSpec::decide`] makes it.
struct PlanSpec {
    base: MountPlan,
    /// The layer device's tag, if the session has one.
    lower_tag: Option<String>,
    lowers: Vec<std::path::PathBuf>,
    merged: bool,
    /// `/rootfs` is served: the guest mounts it, no overlay.
    union: bool,
}

impl PlanSpec {
    /// The base plan, sent to the layer device for its lowers if there is one and no layer has
    /// an xattr a container could read (the layer device serves none).
    fn decide(&self) -> MountPlan {
        if self.union {
            return self.base.clone().with_rootfs(strata_plan::UNION_ROOTFS_DIR);
        }
        if self.base.lower_block.is_some() {
            return self.base.clone();
        }
        let Some(tag) = &self.lower_tag else {
            return self.base.clone();
        };
        match crate::config::first_layer_xattr_cached(&self.lowers, self.merged) {
            Ok(None) => return self.base.clone().with_lower_tag(tag),
            Ok(Some((path, name))) => tracing::info!(
                "layers served on this device, not on the layer device {tag:?}: {} has xattr \
                 {name} (the layer device serves none)",
                path.display()
            ),
            Err(e) => tracing::warn!(
                "layers served on this device, not on the layer device {tag:?}: cannot list \
                 the layers' xattrs: {e}"
            ),
        }
        self.base.clone()
    }
}

/// The served tree of one VM.
pub struct StrataFs {
    role: Role,
    layers: Vec<OwnedFd>,
    upper: OwnedFd,
    work: OwnedFd,
    /// The upper directory opened and flock'ed exclusively while this tree serves it (the
    /// device with the upper only): one rootfs, one VM. The kernel drops the lock when the
    /// tree is dropped or the process dies.
    _upper_lock: Option<File>,
    /// `plan.json`, decided on first use ([`StrataFs::plan_bytes`]).
    plan: std::sync::OnceLock<Vec<u8>>,
    plan_spec: PlanSpec,
    cache: CachePolicy,
    nodes: RwLock<NodeTable>,
    next_node: AtomicU64,
    handles: RwLock<HashMap<u64, (Arc<Handle>, crate::fdbudget::Permit)>>,
    next_handle: AtomicU64,
    limits: Limits,
    refused: Refusals,
    /// Request counts (`STRATA_SERVE_OPSTATS=1`), printed on FUSE DESTROY.
    ops: Option<opstats::OpStats>,
    /// Whether `/rootfs` is served (`--union`).
    union: bool,
    /// Whether OPEN makes handles (`STRATA_SERVE_OPEN=1`). Off by default: OPEN is answered
    /// ENOSYS, the guest kernel then sends neither OPEN nor RELEASE, and reads and writes name
    /// the inode with handle 0 ([`file`]).
    file_handles: bool,
    /// Files kept open for reads and writes by inode ([`file::IoCache`]).
    io_cache: file::IoCache,
    /// One copy-up at a time (`union.rs`).
    copy_lock: Mutex<()>,
    /// Names of things being built in `work`.
    next_temp: AtomicU64,
    /// Bumped after every change to a `/rootfs` name: cached listings older than it are stale.
    union_gen: AtomicU64,
}

pub(crate) fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// ENFILE if `n` more fds would pass the process's fd budget (all sessions together).
fn fd_room(n: usize) -> io::Result<()> {
    if crate::fdbudget::room(n) {
        return Ok(());
    }
    crate::ratelog_warn!(
        FD_BUDGET_LOG,
        "the daemon's fd budget ({} fds for all sessions, below its open-files limit) is spent: \
         refusing more with ENFILE; raise `ulimit -n` (LimitNOFILE=) or lower --max-nodes/\
         --max-handles",
        crate::fdbudget::cap()
    );
    Err(err(libc::ENFILE))
}

/// A name from the guest must be one plain path component.
pub(crate) fn check_name(name: &CStr) -> io::Result<()> {
    let b = name.to_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(err(libc::EINVAL));
    }
    if b.len() > 255 {
        return Err(err(libc::ENAMETOOLONG));
    }
    Ok(())
}

fn lock_poisoned() -> io::Error {
    // A panic elsewhere poisoned a lock; refuse the request rather than panic again.
    err(libc::EIO)
}

/// Take the exclusive lock on the upper directory (`flock`, on a directory fd re-opened from
/// the held anchor, so no symlink swap can point it elsewhere): a second server or daemon
/// session on the same upper is refused before anything else happens.
fn claim_upper(path: &std::path::Path, upper: BorrowedFd<'_>) -> Result<File, crate::ServeError> {
    let failed = |source| crate::ServeError::Open {
        role: "upper",
        path: path.to_owned(),
        source,
    };
    let f = sys::reopen(upper, libc::O_RDONLY | libc::O_DIRECTORY).map_err(failed)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(crate::ConfigError::RootfsInUse(path.to_owned()).into())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(failed(e)),
    }
}

impl StrataFs {
    /// Open the anchors of every served directory: the whole tree on one device.
    pub fn new(cfg: &Checked, cache: CachePolicy) -> Result<StrataFs, crate::ServeError> {
        StrataFs::with_role(cfg, cache, Role::Tree { lower_tag: None })
    }

    /// Open the anchors of every served directory, for the device `role`.
    pub fn with_role(
        cfg: &Checked,
        cache: CachePolicy,
        role: Role,
    ) -> Result<StrataFs, crate::ServeError> {
        // The fds the checks were made on, never the paths again.
        let open = |role: &'static str, p: &std::path::Path, fd: std::io::Result<OwnedFd>| {
            fd.map_err(|source| crate::ServeError::Open {
                role,
                path: p.to_owned(),
                source,
            })
        };
        let layers = cfg
            .lowers
            .iter()
            .enumerate()
            .map(|(i, l)| open("layer", l, cfg.layer_fd(i)))
            .collect::<Result<Vec<_>, _>>()?;
        // More than one layer: the guest overlay gets them merged as one lower (`/lower`);
        // STRATA_SERVE_SEPARATE_LAYERS=1 keeps one lower per layer (for comparisons).
        let separate = std::env::var_os("STRATA_SERVE_SEPARATE_LAYERS").is_some_and(|v| v == "1");
        let merged = layers.len() > 1 && !separate;
        let plan_spec = PlanSpec {
            // An EROFS layer device always holds the merged lower (`lower` at its root).
            base: match (&cfg.lower_block, merged) {
                (Some(block), _) => MountPlan::merged().with_lower_block(block.clone()),
                (None, true) => MountPlan::merged(),
                (None, false) => MountPlan::standard(layers.len()),
            },
            lower_tag: match &role {
                Role::Tree { lower_tag } => lower_tag.clone(),
                Role::Layers => None,
            },
            lowers: cfg.lowers.clone(),
            merged,
            union: cfg.union,
        };
        let limits = cfg.limits;
        if limits.device_nodes
            && matches!(role, Role::Tree { .. })
            && crate::config::reachable_by_others(&cfg.upper)
        {
            tracing::warn!(
                "other host users can reach the upper dir {} (o+x on every parent): device \
                 nodes the guest makes there would be host device nodes they could open; make a \
                 parent 0700 (the store does) or pass --no-device-nodes",
                cfg.upper.display()
            );
        }
        let needed = limits.fds_needed(layers.len()) + 64;
        match sys::raise_fd_limit(needed) {
            Ok(have) if have >= needed => {}
            Ok(have) if !FD_LIMIT_WARNED.swap(true, Ordering::Relaxed) => tracing::warn!(
                "open-files limit {have} is below the {needed} fds the session limits allow \
                 ({} nodes + {} handles): the guest may see EMFILE before ENFILE; raise \
                 `ulimit -n` (LimitNOFILE=) or lower --max-nodes/--max-handles",
                limits.max_nodes,
                limits.max_handles
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot read the open-files limit: {e}"),
        }
        let upper = open("upper", &cfg.upper, cfg.upper_fd())?;
        let upper_lock = match role {
            Role::Tree { .. } => Some(claim_upper(&cfg.upper, upper.as_fd())?),
            Role::Layers => None,
        };
        Ok(StrataFs {
            role,
            layers,
            upper,
            work: open("work", &cfg.work, cfg.work_fd())?,
            _upper_lock: upper_lock,
            plan: std::sync::OnceLock::new(),
            plan_spec,
            cache,
            nodes: RwLock::new(NodeTable::default()),
            next_node: AtomicU64::new(FIRST_HOST_NODE),
            handles: RwLock::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            limits,
            refused: Refusals::default(),
            ops: opstats::OpStats::from_env(),
            union: cfg.union,
            file_handles: std::env::var_os("STRATA_SERVE_OPEN").is_some_and(|v| v == "1"),
            io_cache: file::IoCache::from_env(),
            copy_lock: Mutex::new(()),
            next_temp: AtomicU64::new(0),
            union_gen: AtomicU64::new(0),
        })
    }

    /// Count one request of `op` (with `STRATA_SERVE_OPSTATS`).
    #[inline]
    pub(crate) fn count_op(&self, op: &str) {
        if let Some(o) = &self.ops {
            o.add(op);
        }
    }

    /// Count a failed `op` as `op!ERRNO`, and pass the result on.
    #[inline]
    pub(crate) fn count_result<T>(&self, op: &str, r: io::Result<T>) -> io::Result<T> {
        if let (Some(o), Err(e)) = (&self.ops, &r) {
            o.add(&format!("{op}!{}", opstats::errno_name(e)));
        }
        r
    }

    /// Print the request counts (FUSE DESTROY: the guest unmounted).
    pub(crate) fn report_ops(&self) {
        if let Some(o) = &self.ops {
            eprintln!("strata serve: opstats {}", o.to_json());
        }
    }

    /// Answer OPEN with a handle (`true`, as with `STRATA_SERVE_OPEN=1`) or with ENOSYS
    /// (`false`, the default): for tests and the request fuzzer, which run both.
    pub fn set_file_handles(&mut self, on: bool) {
        self.file_handles = on;
    }

    /// Whether OPEN makes handles ([`StrataFs::set_file_handles`]).
    pub fn file_handles(&self) -> bool {
        self.file_handles
    }

    /// Which device this tree is.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Whether this is the whole tree (not the layer device).
    pub(crate) fn is_tree(&self) -> bool {
        matches!(self.role, Role::Tree { .. })
    }

    /// The plan file's bytes, as the guest reads them.
    ///
    /// Decided on first use, not when the tree opens: with a layer device, whether the plan may
    /// send the guest there depends on the layers' xattrs, a walk of every layer file (tens of
    /// ms for a few thousand files) that must stay off the start path. The daemon asks for it
    /// as soon as the VMM connects ([`crate::backend::FsBackend::warm_plan`]), a second or so
    /// before the booting guest reads it.
    pub fn plan_bytes(&self) -> &[u8] {
        self.plan.get_or_init(|| self.plan_spec.decide().to_json())
    }

    /// Number of host inodes the guest currently holds.
    pub fn live_nodes(&self) -> usize {
        self.nodes.read().map(|t| t.by_id.len()).unwrap_or(0)
    }

    /// Number of files and directories the guest holds open.
    pub fn open_handles(&self) -> usize {
        self.handles.read().map(|h| h.len()).unwrap_or(0)
    }

    /// The limits this session runs with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// ENFILE if the guest already holds as many nodes as it may: checked before a request
    /// creates anything on the host, so a refused MKDIR/CREATE/... leaves nothing behind.
    pub(crate) fn node_room(&self) -> io::Result<()> {
        let held = self.nodes.read().map_err(|_| lock_poisoned())?.by_id.len();
        if held >= self.limits.max_nodes {
            return Err(self.refuse_node());
        }
        self.fd_room(1)
    }

    /// Room for `n` more fds in the process's budget, closing this session's kept I/O files
    /// first if that makes it: they only save re-opens, a node or handle is what the guest asked.
    fn fd_room(&self, n: usize) -> io::Result<()> {
        if !crate::fdbudget::room(n) {
            self.io_cache.clear();
        }
        fd_room(n)
    }

    /// ENFILE if the guest already holds as many open handles as it may (checked before the
    /// host open, which may truncate).
    pub(crate) fn handle_room(&self) -> io::Result<()> {
        let held = self.handles.read().map_err(|_| lock_poisoned())?.len();
        if held >= self.limits.max_handles {
            return Err(self.refuse_handle());
        }
        self.fd_room(1)
    }

    fn refuse_node(&self) -> io::Error {
        let n = self.refused.nodes.fetch_add(1, Ordering::Relaxed) + 1;
        log_refusal("nodes", self.limits.max_nodes, n);
        err(libc::ENFILE)
    }

    fn refuse_handle(&self) -> io::Error {
        let n = self.refused.handles.fetch_add(1, Ordering::Relaxed) + 1;
        log_refusal("handles", self.limits.max_handles, n);
        err(libc::ENFILE)
    }

    pub(crate) fn node(&self, id: u64) -> io::Result<Node> {
        match id {
            ROOT => Ok(Node::Root),
            LAYERS => Ok(Node::Layers),
            PLAN => Ok(Node::Plan),
            _ => self
                .nodes
                .read()
                .map_err(|_| lock_poisoned())?
                .by_id
                .get(&id)
                .cloned()
                .map(Node::Host)
                .ok_or_else(|| err(libc::EBADF)),
        }
    }

    /// The host node behind `id`, or the error for the virtual part of the tree.
    pub(crate) fn host(&self, id: u64, virtual_err: i32) -> io::Result<Arc<HostNode>> {
        match self.node(id)? {
            Node::Host(h) => Ok(h),
            _ => Err(err(virtual_err)),
        }
    }

    /// A host directory in the writable area: the parent of every namespace change.
    pub(crate) fn rw_dir(&self, id: u64) -> io::Result<Arc<HostNode>> {
        let h = self.host(id, libc::EROFS)?;
        if !h.area.writable() {
            return Err(err(libc::EROFS));
        }
        if !h.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        Ok(h)
    }

    pub(crate) fn timeout(&self, area: Area) -> Duration {
        match area {
            Area::Layer(_) | Area::Merged => self.cache.layer,
            Area::Rw | Area::Union => self.cache.rw,
        }
    }

    /// Make a new host inode for the guest caller `ctx` with `make`, and open it (`O_PATH`) with
    /// `open`: the mode the guest sent is already masked with the guest's umask, so `make` runs
    /// with this thread's umask at 0, and, when the sandbox allows it, with the caller's
    /// fsuid/fsgid ([`sys::FsCreds`]), so the host kernel creates it with the right owner, group
    /// and set-id bits at once. Otherwise (a daemon that is not confined) the inode is made as
    /// the daemon and chowned afterwards, and set-id bits the chown cleared are put back.
    pub(crate) fn make_as_caller<R>(
        &self,
        ctx: &Context,
        mode: u32,
        make: impl FnOnce() -> io::Result<R>,
        open: impl FnOnce() -> io::Result<OwnedFd>,
    ) -> io::Result<(R, OwnedFd)> {
        if let Err(e) = sys::clear_thread_umask() {
            if !UMASK_WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "cannot clear the umask of a worker thread ({e}): new files may get fewer \
                     permission bits than the guest asked for"
                );
            }
        }
        let as_root = ctx.uid == 0 && ctx.gid == 0;
        let creds = if as_root {
            None
        } else {
            sys::FsCreds::switch(ctx.uid, ctx.gid)
        };
        let owned = as_root || creds.is_some();
        let made = make();
        drop(creds);
        let made = made?;
        let fd = open()?;
        if !owned {
            sys::chown_fd(fd.as_fd(), ctx.uid, ctx.gid)?;
            let kind = mode & libc::S_IFMT;
            // Not for directories: mkdir(2) ignores set-id bits in the mode.
            let keeps_bits = !matches!(kind, libc::S_IFLNK | libc::S_IFDIR);
            if mode & (libc::S_ISUID | libc::S_ISGID) != 0 && keeps_bits {
                sys::chmod_fd(fd.as_fd(), mode & 0o7777)?;
            }
        }
        Ok((made, fd))
    }

    /// Register (or find) the host inode behind `fd` and count one guest lookup of it.
    pub(crate) fn register(&self, fd: OwnedFd, area: Area) -> io::Result<Entry> {
        self.register_inner(fd, area, true, None, None)
    }

    /// [`register`](Self::register) for a name this request just created on the host, after
    /// [`node_room`](Self::node_room) said there was room: not refused, so the guest never gets
    /// an error for a change that happened. Concurrent creates may overshoot the limit by at
    /// most one node each (the requests in flight: one per vhost-user worker thread).
    pub(crate) fn register_new(&self, fd: OwnedFd, area: Area) -> io::Result<Entry> {
        self.register_inner(fd, area, false, None, None)
    }

    /// Register (or find) a `/rootfs` node; `enforce`: refuse past the node limit (a lookup),
    /// or not (a name this request just made).
    pub(crate) fn register_union(
        &self,
        fd: OwnedFd,
        node: union::UnionNode,
        enforce: bool,
    ) -> io::Result<Entry> {
        self.register_inner(fd, Area::Union, enforce, None, Some(node))
    }

    /// Key `node` by its new upper inode (after a copy-up): a lookup of the name now finds the
    /// upper inode, and must give the same node id.
    pub(crate) fn rekey(&self, node: &HostNode, key: NodeKey) -> io::Result<()> {
        let mut t = self.nodes.write().map_err(|_| lock_poisoned())?;
        let mut k = node.key.lock().map_err(|_| lock_poisoned())?;
        if let Some(id) = t.by_key.remove(&*k) {
            t.by_key.insert(key.clone(), id);
        }
        *k = key;
        Ok(())
    }

    /// Register (or find) the merged directory whose stack is `stack` (topmost first, not
    /// empty): keyed by its topmost directory.
    pub(crate) fn register_merged(&self, mut stack: Vec<(u16, OwnedFd)>) -> io::Result<Entry> {
        if stack.is_empty() {
            return Err(err(libc::ENOENT));
        }
        let (top, fd) = stack.remove(0);
        self.register_inner(fd, Area::Merged, true, Some((top, stack)), None)
    }

    fn register_inner(
        &self,
        fd: OwnedFd,
        area: Area,
        enforce: bool,
        merged: Option<(u16, Vec<(u16, OwnedFd)>)>,
        union: Option<union::UnionNode>,
    ) -> io::Result<Entry> {
        let st = sys::stat_fd(fd.as_fd())?;
        let key = match &union {
            Some(u) if !u.in_upper => {
                let (dir, name) = u.parent.as_ref().ok_or_else(|| err(libc::EIO))?;
                NodeKey::Path(Arc::as_ptr(dir) as usize, name.to_bytes().into())
            }
            _ => NodeKey::Inode(area, st.st_dev, st.st_ino),
        };
        let t_layer_only = matches!(key, NodeKey::Path(..));
        let mut t = self.nodes.write().map_err(|_| lock_poisoned())?;
        let id = match t.by_key.get(&key) {
            Some(&id) => {
                if let Some(n) = t.by_id.get(&id) {
                    n.refs.fetch_add(1, Ordering::Relaxed);
                }
                id
            }
            None => {
                if enforce && t.by_id.len() >= self.limits.max_nodes {
                    drop(t);
                    return Err(self.refuse_node());
                }
                let fds = 1
                    + merged.as_ref().map_or(0, |(_, below)| below.len())
                    + union.as_ref().map_or(0, |u| u.lowers.len());
                if enforce {
                    self.fd_room(fds)?;
                }
                let id = self.next_node.fetch_add(1, Ordering::Relaxed);
                let node = HostNode {
                    fd,
                    area,
                    kind: st.st_mode & libc::S_IFMT,
                    key: Mutex::new(key.clone()),
                    refs: AtomicU64::new(1),
                    merged,
                    listing: std::sync::OnceLock::new(),
                    union,
                    io: Mutex::new(None),
                    _fds: crate::fdbudget::Permit::take(fds),
                };
                t.by_id.insert(id, Arc::new(node));
                t.by_key.insert(key, id);
                id
            }
        };
        drop(t);
        // A `/rootfs` name still in a layer changes only through this guest (a copy-up keeps
        // the node): cached as long as a layer's.
        let tmo = match t_layer_only {
            true => self.cache.layer,
            false => self.timeout(area),
        };
        Ok(Entry {
            inode: id,
            generation: 0,
            attr: st,
            attr_flags: 0,
            attr_timeout: tmo,
            entry_timeout: tmo,
        })
    }

    /// Drop `count` guest lookups of node `id`; the host fd closes with the last one.
    pub(crate) fn forget_node(&self, id: u64, count: u64) {
        if id < FIRST_HOST_NODE {
            return;
        }
        let Ok(mut t) = self.nodes.write() else {
            return;
        };
        let Some(n) = t.by_id.get(&id) else {
            return;
        };
        let prev = n.refs.load(Ordering::Relaxed);
        let left = prev.saturating_sub(count);
        n.refs.store(left, Ordering::Relaxed);
        if left == 0 {
            if let Some(n) = t.by_id.remove(&id) {
                if let Ok(k) = n.key.lock() {
                    if t.by_key.get(&*k) == Some(&id) {
                        t.by_key.remove(&*k);
                    }
                }
            }
        }
    }

    /// The anchor fd of a top-level served directory, and its area.
    pub(crate) fn anchor(&self, name: &[u8]) -> Option<(BorrowedFd<'_>, Area)> {
        if !self.is_tree() {
            return None;
        }
        match name {
            b"upper" => Some((self.upper.as_fd(), Area::Rw)),
            b"work" => Some((self.work.as_fd(), Area::Rw)),
            _ => None,
        }
    }

    pub(crate) fn layer_anchor(&self, name: &[u8]) -> Option<(BorrowedFd<'_>, Area)> {
        let s = std::str::from_utf8(name).ok()?;
        let i: usize = s.parse().ok()?;
        // Canonical names only: "01" or "+1" are not layer 1.
        if i.to_string() != s {
            return None;
        }
        let fd = self.layers.get(i)?;
        Some((fd.as_fd(), Area::Layer(i as u16)))
    }

    pub(crate) fn n_layers(&self) -> usize {
        self.layers.len()
    }

    pub(crate) fn add_handle(&self, h: Handle) -> io::Result<u64> {
        // Every caller checked `handle_room` before opening anything on the host: refusing
        // here would fail a request whose open (maybe O_TRUNC, maybe O_CREAT) already happened.
        let fds = match h {
            Handle::File { .. } | Handle::Dir { .. } => 1,
            Handle::Merged { .. } => 0,
        };
        let mut handles = self.handles.write().map_err(|_| lock_poisoned())?;
        let id = self.next_handle.fetch_add(1, Ordering::Relaxed);
        handles.insert(id, (Arc::new(h), crate::fdbudget::Permit::take(fds)));
        Ok(id)
    }

    pub(crate) fn handle(&self, id: u64) -> io::Result<Arc<Handle>> {
        self.handles
            .read()
            .map_err(|_| lock_poisoned())?
            .get(&id)
            .map(|(h, _)| h.clone())
            .ok_or_else(|| err(libc::EBADF))
    }

    pub(crate) fn drop_handle(&self, id: u64) {
        if let Ok(mut h) = self.handles.write() {
            h.remove(&id);
        }
    }

    /// Attributes of a virtual node.
    pub(crate) fn virtual_attr(&self, id: u64) -> stat64 {
        let mut st: stat64 = zeroed_stat();
        st.st_ino = id;
        st.st_uid = 0;
        st.st_gid = 0;
        st.st_blksize = 4096;
        match id {
            PLAN => {
                st.st_mode = libc::S_IFREG | 0o444;
                st.st_nlink = 1;
                let len = self.plan_bytes().len() as i64;
                st.st_size = len;
                st.st_blocks = (len + 511) / 512;
            }
            LAYERS => {
                st.st_mode = libc::S_IFDIR | 0o555;
                st.st_nlink = 2 + self.layers.len() as u64;
            }
            _ => {
                st.st_mode = libc::S_IFDIR | 0o555;
                st.st_nlink = 5;
            }
        }
        st
    }

    pub(crate) fn virtual_entry(&self, id: u64) -> Entry {
        Entry {
            inode: id,
            generation: 0,
            attr: self.virtual_attr(id),
            attr_flags: 0,
            attr_timeout: self.cache.layer,
            entry_timeout: self.cache.layer,
        }
    }
}

fn zeroed_stat() -> stat64 {
    // `Entry::default()` already holds a zeroed stat64; reuse it to stay free of `unsafe`.
    Entry::default().attr
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod union_tests;
