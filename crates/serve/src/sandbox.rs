//! Zero mounts, enforced: a seccomp filter, installed on every thread before the daemon serves a
//! single request, that makes every syscall able to create, change or move a mount fail.
//!
//! - `mount`, `umount2`, `fsopen`, `fsconfig`, `fsmount`, `move_mount`, `open_tree`,
//!   `mount_setattr`, `pivot_root`, `setns`: EPERM.
//! - `unshare` and `clone` with `CLONE_NEWNS`: EPERM (a private mount namespace is the usual
//!   first step of a mounting sandbox).
//! - `clone3`: ENOSYS, because its flags live in memory a filter cannot inspect; glibc then
//!   falls back to `clone`, which the rule above checks.

use std::collections::BTreeMap;

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

/// Install the no-mount filters on every thread of this process. Irreversible.
pub fn forbid_mounts() -> Result<(), ServeError> {
    for f in no_mount_filters()? {
        seccompiler::apply_filter_all_threads(&f)
            .map_err(|e| ServeError::Seccomp(e.to_string()))?;
    }
    Ok(())
}

/// One line per rule, for `--print-sandbox` and the start-up log.
pub fn describe() -> String {
    let names: Vec<&str> = DENIED_SYSCALLS.iter().map(|(n, _)| *n).collect();
    format!(
        "seccomp: {} -> EPERM; unshare/clone with CLONE_NEWNS -> EPERM; clone3 -> ENOSYS",
        names.join(", ")
    )
}
