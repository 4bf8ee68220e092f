//! The daemon's confinement, in force before it serves a single request:
//!
//! 1. [`confine`] (on the one thread that exists at that point, so every later thread inherits
//!    it): capabilities cut to [`KEPT_CAPS`] in every set, bounding included; Landlock limiting
//!    file access to the served directories (layers read-only) and the socket's directory.
//! 2. [`forbid_mounts`] (every thread): zero mounts, enforced: a seccomp filter that makes every
//!    syscall able to create, change or move a mount fail.
//!
//! - `mount`, `umount2`, `fsopen`, `fsconfig`, `fsmount`, `move_mount`, `open_tree`,
//!   `mount_setattr`, `pivot_root`, `setns`: EPERM.
//! - `unshare` and `clone` with `CLONE_NEWNS`: EPERM (a private mount namespace is the usual
//!   first step of a mounting sandbox).
//! - `clone3`: ENOSYS, because its flags live in memory a filter cannot inspect; glibc then
//!   falls back to `clone`, which the rule above checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use landlock::{
    Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::ServeError;

/// The syscalls denied outright, by name (for `--print-sandbox` and logs) and number.
pub const DENIED_SYSCALLS: &[(&str, i64)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("pivot_root", libc::SYS_pivot_root),
    ("setns", libc::SYS_setns),
];

fn arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
    #[cfg(not(target_arch = "aarch64"))]
    TargetArch::x86_64
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram, ServeError> {
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch(),
    )
    .map_err(|e| ServeError::Seccomp(e.to_string()))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| ServeError::Seccomp(e.to_string()))
}

/// The compiled filters (no side effects): `[mount family → EPERM, clone3 → ENOSYS]`.
pub fn no_mount_filters() -> Result<Vec<BpfProgram>, ServeError> {
    let newns = || {
        SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_NEWNS as u64),
            libc::CLONE_NEWNS as u64,
        )
        .map_err(|e| ServeError::Seccomp(e.to_string()))?])
        .map_err(|e| ServeError::Seccomp(e.to_string()))
    };
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = DENIED_SYSCALLS
        .iter()
        .map(|&(_, nr)| (nr, Vec::new()))
        .collect();
    deny.insert(libc::SYS_unshare, vec![newns()?]);
    deny.insert(libc::SYS_clone, vec![newns()?]);
    let mut enosys = BTreeMap::new();
    enosys.insert(libc::SYS_clone3, Vec::new());
    Ok(vec![
        compile(deny, libc::EPERM)?,
        compile(enosys, libc::ENOSYS)?,
    ])
}

/// Every syscall the daemon makes once serving (from `strace -f` of the VM test, plus the
/// neighbours a library may pick instead: `*at` and plain forms, v/v2 forms, fallbacks).
/// Anything else fails with ENOSYS (see [`allow_list_filter`]).
pub fn allowed_syscalls() -> Vec<(&'static str, i64)> {
    macro_rules! sys {
        ($($n:ident),* $(,)?) => { vec![$((stringify!($n), libc::$n as i64)),*] };
    }
    #[allow(unused_mut)]
    let mut v = sys!(
        // files, through held fds and /proc/self/fd
        SYS_read,
        SYS_write,
        SYS_pread64,
        SYS_pwrite64,
        SYS_readv,
        SYS_writev,
        SYS_preadv,
        SYS_pwritev,
        SYS_preadv2,
        SYS_pwritev2,
        SYS_lseek,
        SYS_close,
        SYS_openat,
        SYS_openat2,
        SYS_fcntl,
        SYS_dup,
        SYS_dup3,
        SYS_newfstatat,
        SYS_fstat,
        SYS_statx,
        SYS_fstatfs,
        SYS_statfs,
        SYS_getdents64,
        SYS_mkdirat,
        SYS_mknodat,
        SYS_symlinkat,
        SYS_unlinkat,
        SYS_renameat,
        SYS_renameat2,
        SYS_linkat,
        SYS_readlinkat,
        SYS_fchownat,
        SYS_fchown,
        SYS_fchmodat,
        SYS_fchmod,
        SYS_utimensat,
        SYS_ftruncate,
        SYS_fallocate,
        // copy-up of a layer file into the upper dir (`--union`): in-kernel copy or reflink
        SYS_copy_file_range,
        SYS_fsync,
        SYS_fdatasync,
        SYS_getxattr,
        SYS_lgetxattr,
        SYS_fgetxattr,
        SYS_setxattr,
        SYS_lsetxattr,
        SYS_fsetxattr,
        SYS_listxattr,
        SYS_llistxattr,
        SYS_flistxattr,
        SYS_removexattr,
        SYS_lremovexattr,
        SYS_fremovexattr,
        SYS_flock,
        SYS_faccessat,
        SYS_faccessat2,
        // creates as the guest's caller, without the daemon's umask (sys::FsCreds,
        // sys::clear_thread_umask; unshare is allowed with CLONE_FS only, see allow_list_filter)
        SYS_setfsuid,
        SYS_setfsgid,
        SYS_umask,
        SYS_unshare,
        // memory (guest memory arrives as memfds and is mmapped)
        SYS_mmap,
        SYS_munmap,
        SYS_mprotect,
        SYS_madvise,
        SYS_brk,
        SYS_mremap,
        // threads, signals, time
        SYS_futex,
        SYS_clone,
        SYS_clone3,
        SYS_set_robust_list,
        SYS_rseq,
        SYS_sched_getaffinity,
        SYS_sched_yield,
        SYS_gettid,
        SYS_getpid,
        SYS_getuid,
        SYS_geteuid,
        SYS_tgkill,
        SYS_exit,
        SYS_exit_group,
        SYS_rt_sigaction,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_sigaltstack,
        SYS_prctl,
        SYS_getrandom,
        SYS_clock_gettime,
        SYS_clock_nanosleep,
        SYS_nanosleep,
        SYS_restart_syscall,
        SYS_prlimit64,
        SYS_capget,
        // the vhost-user socket and event loop
        SYS_epoll_pwait,
        SYS_epoll_ctl,
        SYS_epoll_create1,
        SYS_eventfd2,
        SYS_recvmsg,
        SYS_sendmsg,
        SYS_recvfrom,
        SYS_sendto,
        SYS_accept4,
        SYS_ppoll,
        SYS_socket,
        SYS_bind,
        SYS_listen,
        SYS_socketpair,
        SYS_getsockopt,
        SYS_shutdown,
        SYS_getsockname,
        // the liveness probe of a socket path before binding over it (crate::daemon)
        SYS_connect,
        // more filters later (strata serve's forbid_new_sockets): a filter can only take away
        SYS_seccomp,
    );
    #[cfg(target_arch = "x86_64")]
    v.extend(sys!(
        SYS_epoll_wait,
        SYS_poll,
        SYS_open,
        SYS_stat,
        SYS_lstat,
        SYS_unlink,
        SYS_rename,
        SYS_readlink,
        SYS_access,
        SYS_mkdir,
        SYS_rmdir,
        SYS_chmod,
        SYS_link,
        SYS_arch_prctl,
    ));
    v
}

/// The syscalls of the allow-list that pass only with certain arguments, and which, for
/// `--print-sandbox` and logs.
pub const ARGUMENT_FILTERS: &[(&str, &str)] = &[
    (
        "socket",
        "domain AF_UNIX only (the daemon speaks vhost-user and its API, nothing else)",
    ),
    ("socketpair", "domain AF_UNIX only"),
    (
        "clone",
        "only with CLONE_THREAD (threads, never processes) and no CLONE_NEW* flag",
    ),
    ("tgkill", "this process's own threads only (tgid = its pid)"),
    ("prlimit64", "this process only (pid 0 or its own)"),
    (
        "unshare",
        "CLONE_FS only (a worker thread's own umask), never a namespace",
    ),
];

/// Every `CLONE_NEW*` namespace flag.
const CLONE_NEW_ANY: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, ServeError> {
    SeccompCondition::new(arg, len, op, value).map_err(|e| ServeError::Seccomp(e.to_string()))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, ServeError> {
    SeccompRule::new(conds).map_err(|e| ServeError::Seccomp(e.to_string()))
}

/// The argument rules of [`ARGUMENT_FILTERS`] for a process with pid `pid` (any one rule
/// matching lets the call through).
fn argument_rules(pid: u64) -> Result<BTreeMap<i64, Vec<SeccompRule>>, ServeError> {
    use SeccompCmpArgLen::{Dword, Qword};
    let unix_only = || {
        rule(vec![cond(
            0,
            Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )?])
    };
    let thread = CLONE_NEW_ANY | libc::CLONE_THREAD as u64;
    let mut m = BTreeMap::new();
    m.insert(libc::SYS_socket, vec![unix_only()?]);
    m.insert(libc::SYS_socketpair, vec![unix_only()?]);
    m.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            Qword,
            SeccompCmpOp::MaskedEq(thread),
            libc::CLONE_THREAD as u64,
        )?])?],
    );
    m.insert(
        libc::SYS_tgkill,
        vec![rule(vec![cond(0, Dword, SeccompCmpOp::Eq, pid)?])?],
    );
    m.insert(
        libc::SYS_prlimit64,
        vec![
            rule(vec![cond(0, Dword, SeccompCmpOp::Eq, 0)?])?,
            rule(vec![cond(0, Dword, SeccompCmpOp::Eq, pid)?])?,
        ],
    );
    m.insert(
        libc::SYS_unshare,
        vec![rule(vec![cond(
            0,
            Qword,
            SeccompCmpOp::Eq,
            libc::CLONE_FS as u64,
        )?])?],
    );
    Ok(m)
}

/// The allow-list filter: [`allowed_syscalls`] pass (those of [`ARGUMENT_FILTERS`] only with
/// those arguments), everything else gets `otherwise` (the daemon uses ENOSYS, so that
/// libraries fall back where they can; tests use a trap to find a missing entry loudly).
pub fn allow_list_filter(otherwise: SeccompAction) -> Result<BpfProgram, ServeError> {
    let mut args = argument_rules(u64::from(std::process::id()))?;
    let rules: BTreeMap<i64, Vec<SeccompRule>> = allowed_syscalls()
        .into_iter()
        .map(|(_, nr)| (nr, args.remove(&nr).unwrap_or_default()))
        .collect();
    let f = SeccompFilter::new(rules, otherwise, SeccompAction::Allow, arch())
        .map_err(|e| ServeError::Seccomp(e.to_string()))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| ServeError::Seccomp(e.to_string()))
}

/// Install the allow-list on every thread: from here on only [`allowed_syscalls`] work.
pub fn allow_only_known() -> Result<(), ServeError> {
    let f = allow_list_filter(SeccompAction::Errno(libc::ENOSYS as u32))?;
    seccompiler::apply_filter_all_threads(&f).map_err(|e| ServeError::Seccomp(e.to_string()))
}

/// The syscalls [`forbid_new_sockets`] takes away.
pub const NO_NEW_SOCKETS: &[(&str, i64)] = &[
    ("socket", libc::SYS_socket),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("connect", libc::SYS_connect),
];

/// For `strata serve` once its sockets listen (it serves one VMM and binds nothing later):
/// no thread can make a socket, bind, listen or connect any more (EPERM). Irreversible.
/// `strata daemon` binds a socket per session it starts, so keeps them.
pub fn forbid_new_sockets() -> Result<(), ServeError> {
    let deny: BTreeMap<i64, Vec<SeccompRule>> = NO_NEW_SOCKETS
        .iter()
        .map(|&(_, nr)| (nr, Vec::new()))
        .collect();
    seccompiler::apply_filter_all_threads(&compile(deny, libc::EPERM)?)
        .map_err(|e| ServeError::Seccomp(e.to_string()))
}

/// Install the no-mount filters on every thread of this process. Irreversible.
pub fn forbid_mounts() -> Result<(), ServeError> {
    for f in no_mount_filters()? {
        seccompiler::apply_filter_all_threads(&f)
            .map_err(|e| ServeError::Seccomp(e.to_string()))?;
    }
    Ok(())
}

/// The capabilities the daemon keeps after start-up, and why. Every other one is dropped from
/// the effective, permitted, inheritable, ambient and bounding sets.
pub const KEPT_CAPS: &[(Capability, &str)] = &[
    (
        Capability::CAP_CHOWN,
        "new files get the guest's uid/gid; guest chown",
    ),
    (
        Capability::CAP_DAC_OVERRIDE,
        "read/write guest files whatever their modes",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "read and search layer dirs of any owner",
    ),
    (
        Capability::CAP_FOWNER,
        "chmod/utimes/xattrs on files the daemon does not own",
    ),
    (Capability::CAP_FSETID, "keep set-id bits the guest sets"),
    (
        Capability::CAP_MKNOD,
        "overlayfs whiteouts (char 0:0), the guest's device nodes in its upper",
    ),
    (
        Capability::CAP_SETGID,
        "setfsgid: a new file gets the guest caller's group as it is created",
    ),
    (
        Capability::CAP_SETUID,
        "setfsuid: a new file gets the guest caller's owner (and set-id bits) as it is created",
    ),
    (
        Capability::CAP_SETFCAP,
        "security.capability xattrs copied up by the guest",
    ),
    (
        Capability::CAP_SYS_ADMIN,
        "trusted.* xattrs (overlayfs opaque/redirect/origin); mounting stays denied by seccomp",
    ),
];

/// The directories Landlock lets the daemon touch after start-up.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// Read-only: read files, list directories.
    pub layers: Vec<PathBuf>,
    /// Everything: upper and work.
    pub rw: Vec<PathBuf>,
    /// The sockets' directories: create the sockets, remove them and their lock files at the
    /// end.
    pub socket_dirs: Vec<PathBuf>,
}

impl Confinement {
    /// The served directories, and no socket yet ([`Confinement::add_socket`]).
    pub fn new(layers: &[PathBuf], upper: &Path, work: &Path) -> Confinement {
        Confinement {
            layers: layers.to_vec(),
            rw: vec![upper.to_owned(), work.to_owned()],
            socket_dirs: Vec::new(),
        }
    }

    /// A socket the process binds (and removes at the end).
    pub fn add_socket(&mut self, socket: &Path) {
        let dir = match socket.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        if !self.socket_dirs.contains(&dir) {
            self.socket_dirs.push(dir);
        }
    }
}

/// The Landlock ABI this build asks for (6: every filesystem right up to `IOCTL_DEV`).
const LANDLOCK_ABI: ABI = ABI::V6;

/// What [`confine`] could put in force on this kernel.
#[derive(Debug, Clone)]
pub struct ConfineReport {
    pub caps_kept: Vec<Capability>,
    /// `None`: the kernel has no Landlock (or it is disabled); otherwise how much of the
    /// ruleset the kernel enforces.
    pub landlock: Option<String>,
    /// Threads that existed when confining (they would not inherit it): should be 1.
    pub threads: usize,
}

impl ConfineReport {
    pub fn summary(&self) -> String {
        let caps: Vec<String> = self.caps_kept.iter().map(|c| c.to_string()).collect();
        format!(
            "capabilities kept: {}; landlock: {}",
            caps.join(","),
            self.landlock
                .as_deref()
                .unwrap_or("NOT SUPPORTED by this kernel: file access not restricted")
        )
    }
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Drop capabilities and restrict file access, on the calling thread (and every thread it
/// creates later). Call while the process has a single thread. Irreversible.
pub fn confine(c: &Confinement) -> Result<ConfineReport, ServeError> {
    let threads = thread_count();
    if threads > 1 {
        tracing::warn!("confining with {threads} threads alive: only this one is confined");
    }
    let landlock = restrict_files(c)?;
    // Before the capabilities go (it needs CAP_SETPCAP): creates switch the fsuid to the guest
    // caller's and must keep CAP_DAC_OVERRIDE & co. while they do (sys::FsCreds).
    let switch = [Capability::CAP_SETUID, Capability::CAP_SETGID]
        .iter()
        .all(|c| caps::has_cap(None, CapSet::Permitted, *c).unwrap_or(false));
    if let Err(e) = crate::sys::keep_caps_across_fsuid(switch) {
        tracing::warn!(
            "cannot set SECBIT_NO_SETUID_FIXUP ({e}): new files are created as root, then \
             chowned to the guest's user"
        );
    }
    let caps_kept = drop_caps()?;
    Ok(ConfineReport {
        caps_kept,
        landlock,
        threads,
    })
}

fn lerr(e: impl std::fmt::Display) -> ServeError {
    ServeError::Seccomp(format!("landlock: {e}"))
}

fn restrict_files(c: &Confinement) -> Result<Option<String>, ServeError> {
    let kernel_abi = crate::sys::landlock_abi();
    if kernel_abi <= 0 {
        tracing::warn!(
            "this kernel has no Landlock (or it is disabled): file access is not restricted \
             beyond the served tree's own checks"
        );
        return Ok(None);
    }
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    // Sockets are bound in a private directory and linked into place (crate::socket).
    let sock = AccessFs::MakeSock
        | AccessFs::RemoveFile
        | AccessFs::MakeDir
        | AccessFs::RemoveDir
        | AccessFs::Refer;
    let mut rs = Ruleset::default()
        .handle_access(all)
        .map_err(lerr)?
        .create()
        .map_err(lerr)?;
    let rule = |p: &Path, a| -> Result<PathBeneath<PathFd>, ServeError> {
        Ok(PathBeneath::new(
            PathFd::new(p).map_err(|e| lerr(format!("{}: {e}", p.display())))?,
            a,
        ))
    };
    for l in &c.layers {
        rs = rs.add_rule(rule(l, read)?).map_err(lerr)?;
    }
    for d in &c.rw {
        rs = rs.add_rule(rule(d, all)?).map_err(lerr)?;
    }
    for d in &c.socket_dirs {
        rs = rs.add_rule(rule(d, sock)?).map_err(lerr)?;
    }
    let st = rs.restrict_self().map_err(lerr)?;
    let how = match st.ruleset {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partially enforced (older kernel ABI)",
        RulesetStatus::NotEnforced => {
            tracing::warn!("Landlock ruleset not enforced by this kernel");
            return Ok(None);
        }
    };
    Ok(Some(format!(
        "kernel ABI {kernel_abi}, {how}: layers read-only, upper+work read-write, socket dir \
         create/remove sockets, nothing else"
    )))
}

fn drop_caps() -> Result<Vec<Capability>, ServeError> {
    let cerr = |e: caps::errors::CapsError| ServeError::Seccomp(format!("capabilities: {e}"));
    let have = caps::read(None, CapSet::Permitted).map_err(cerr)?;
    let keep: CapsHashSet = KEPT_CAPS
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| have.contains(c))
        .collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(cerr)?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(cerr)?;
    caps::clear(None, CapSet::Inheritable).map_err(cerr)?;
    caps::set(None, CapSet::Effective, &keep).map_err(cerr)?;
    caps::set(None, CapSet::Permitted, &keep).map_err(cerr)?;
    let mut kept: Vec<Capability> = keep.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(kept)
}

/// What is in force, one line per mechanism, for `--print-sandbox` and the start-up log.
/// `confined`: what [`confine`] reported, if it ran.
pub fn describe_with(confined: Option<&ConfineReport>) -> String {
    let names: Vec<&str> = DENIED_SYSCALLS.iter().map(|(n, _)| *n).collect();
    let mut out = format!(
        "seccomp: {} -> EPERM; unshare/clone with CLONE_NEWNS -> EPERM; clone3 -> ENOSYS\n\
         seccomp allow-list: {} syscalls (file ops on held fds, memory, threads, the vhost-user \
         socket), every other -> ENOSYS; argument filters (other arguments -> ENOSYS):\n",
        names.join(", "),
        allowed_syscalls().len()
    );
    for (name, what) in ARGUMENT_FILTERS {
        out.push_str(&format!("  {name}: {what}\n"));
    }
    let names: Vec<&str> = NO_NEW_SOCKETS.iter().map(|(n, _)| *n).collect();
    out.push_str(&format!(
        "seccomp, strata serve once its sockets listen: {} -> EPERM\n",
        names.join(", ")
    ));
    match confined {
        Some(r) => out.push_str(&r.summary()),
        None => {
            out.push_str("capabilities: keep only\n");
            for (c, why) in KEPT_CAPS {
                out.push_str(&format!("  {c}: {why}\n"));
            }
            out.push_str(
                "  (all others dropped from the effective, permitted, inheritable, ambient and \
                 bounding sets)\n",
            );
            let abi = crate::sys::landlock_abi();
            if abi > 0 {
                out.push_str(&format!(
                    "landlock: kernel ABI {abi} (asking for {}): layers read-only (read file, \
                     read dir), upper+work all rights, socket dir create/remove sockets, \
                     nothing else",
                    LANDLOCK_ABI as i32
                ));
            } else {
                out.push_str(
                    "landlock: NOT SUPPORTED by this kernel: file access not restricted beyond \
                     the served tree's own checks",
                );
            }
            out.push_str(
                "\n(strata daemon refuses to start without Landlock unless --allow-no-landlock)",
            );
        }
    }
    out
}

/// [`describe_with`] before start-up: the policy and what this kernel supports.
pub fn describe() -> String {
    describe_with(None)
}
