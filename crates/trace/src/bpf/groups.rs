//! The BPF programs in groups, per mode, and which of them this kernel loads.
//!
//! A group is loaded and attached whole or not at all; a group that does not load is listed
//! in the report's `missing` with libbpf's reason, and its stand-in (if it has one) is tried.

use std::collections::BTreeSet;
use std::mem::MaybeUninit;
use std::sync::Mutex;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;

use crate::report::Mode;
use crate::sys::skel;

pub(crate) struct Group {
    pub name: &'static str,
    pub progs: &'static [&'static str],
    /// Kernel functions the group attaches to (checked in BTF before loading).
    pub funcs: &'static [&'static str],
    pub what: &'static str,
}

pub(crate) const WAITS: &str = "waits";
pub(crate) const WAITS_SLOWPATH: &str = "waits_slowpath";
pub(crate) const HOLDS: &str = "holds";
pub(crate) const MOUNTS: &str = "mounts";
pub(crate) const READER: &str = "reader";
pub(crate) const WRITER: &str = "writer";
pub(crate) const CONTENTION: &str = "contention";
pub(crate) const WRITER_ENTRY: &str = "writer_entry";
pub(crate) const SHRINK: &str = "shrink";
pub(crate) const SYSCALLS: &str = "syscalls";
pub(crate) const SYSCALLS_TP: &str = "syscalls_tp";

/// The groups of each mode (stand-ins are in [`FALLBACKS`]).
const DEFAULT: &[&str] = &[WAITS, HOLDS, MOUNTS];
const DETAIL: &[&str] = &[
    READER,
    WRITER,
    CONTENTION,
    SHRINK,
    "sched",
    SYSCALLS,
    "sb_end",
    "alloc_super",
    "register_6_1",
    "register_6_7",
];

/// (group, its stand-in): the stand-in is loaded only where the group cannot be.
const FALLBACKS: &[(&str, &str)] = &[
    (WAITS, WAITS_SLOWPATH),
    (HOLDS, SHRINK),
    (CONTENTION, WRITER_ENTRY),
    (SYSCALLS, SYSCALLS_TP),
];

pub(crate) const GROUPS: &[Group] = &[
    // ---- default mode ----
    Group {
        name: WAITS,
        progs: &["tp_wait_begin", "tp_wait_end"],
        funcs: &[],
        what: "writer waits with stacks (lock:contention_begin/end, 5.19+)",
    },
    Group {
        name: WAITS_SLOWPATH,
        progs: &["fentry_wait_slowpath", "fexit_wait_slowpath"],
        funcs: &["rwsem_down_write_slowpath"],
        what: "writer waits with stacks (the rwsem write slow path)",
    },
    Group {
        name: HOLDS,
        progs: &[
            "fentry_shrink_slab",
            "fexit_shrink_slab",
            "tp_call_start",
            "tp_call_end",
        ],
        funcs: &["shrink_slab"],
        what: "reader holds and shrinker callbacks (fentry/fexit shrink_slab, \
               vmscan:mm_shrink_slab_start/end)",
    },
    Group {
        name: MOUNTS,
        progs: &[
            "fentry_lean_mount",
            "fexit_lean_mount",
            "fentry_lean_fsconfig",
            "fexit_lean_fsconfig",
        ],
        funcs: &["__x64_sys_mount", "__x64_sys_fsconfig"],
        what: "mount latency (fentry/fexit on mount, fsconfig)",
    },
    // ---- detail mode ----
    Group {
        name: READER,
        progs: &["fexit_down_read_trylock", "fentry_up_read"],
        funcs: &["down_read_trylock", "up_read"],
        what: "exact reader holds (fexit/down_read_trylock, fentry/up_read)",
    },
    Group {
        name: WRITER,
        progs: &["fexit_down_write", "fentry_up_write"],
        funcs: &["down_write", "up_write"],
        what: "writer holds (fexit/down_write, fentry/up_write)",
    },
    Group {
        name: CONTENTION,
        progs: &["tp_contention_begin", "tp_contention_end"],
        funcs: &[],
        what: "writer waits with stacks (lock:contention_begin/end, 5.19+)",
    },
    Group {
        name: SHRINK,
        progs: &["tp_shrink_start", "tp_shrink_end"],
        funcs: &[],
        what: "shrinker callbacks (vmscan:mm_shrink_slab_start/end)",
    },
    Group {
        name: "sched",
        progs: &["tp_sched_switch"],
        funcs: &[],
        what: "on/off CPU (sched:sched_switch)",
    },
    Group {
        name: SYSCALLS,
        progs: &[
            "fentry_sys_mount",
            "fexit_sys_mount",
            "fentry_sys_umount",
            "fexit_sys_umount",
            "fexit_task_work_run",
            "fentry_sys_fsopen",
            "fexit_sys_fsopen",
            "fentry_sys_fsconfig",
            "fexit_sys_fsconfig",
        ],
        funcs: &[
            "__x64_sys_mount",
            "__x64_sys_umount",
            "task_work_run",
            "__x64_sys_fsopen",
            "__x64_sys_fsconfig",
        ],
        what: "mount latency (fentry/fexit on the mount-family syscalls)",
    },
    Group {
        name: SYSCALLS_TP,
        progs: &["tp_sys_enter", "tp_sys_exit"],
        funcs: &[],
        what: "mount latency (raw_syscalls:sys_enter/sys_exit: every syscall pays)",
    },
    Group {
        name: "sb_end",
        progs: &["fentry_deact_sb", "fexit_deact_sb"],
        funcs: &["deactivate_locked_super"],
        what: "umount filesystem types and superblock teardown (deactivate_locked_super)",
    },
    Group {
        name: "alloc_super",
        progs: &["fentry_alloc_super", "fexit_alloc_super"],
        funcs: &["alloc_super"],
        what: "the alloc_super phase",
    },
    Group {
        name: "register_6_1",
        progs: &[
            "fentry_reg_prep",
            "fexit_reg_prep",
            "fentry_unreg",
            "fexit_unreg",
        ],
        funcs: &["register_shrinker_prepared", "unregister_shrinker"],
        what: "shrinker (un)registration phases (≤ 6.6 names)",
    },
    Group {
        name: "register_6_7",
        progs: &[
            "fentry_shr_reg",
            "fexit_shr_reg",
            "fentry_shr_free",
            "fexit_shr_free",
        ],
        funcs: &["shrinker_register", "shrinker_free"],
        what: "shrinker (un)registration phases (6.7+ names)",
    },
    Group {
        name: WRITER_ENTRY,
        progs: &["fentry_down_write"],
        funcs: &["down_write"],
        what: "writer waits from fentry/down_write (where contention tracepoints are missing)",
    },
];

fn group(name: &str) -> Option<&'static Group> {
    GROUPS.iter().find(|g| g.name == name)
}

/// libbpf's messages since the last [`take_log`], for error reports.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn log_print(_level: libbpf_rs::PrintLevel, msg: String) {
    if let Ok(mut l) = LOG.lock() {
        if l.len() > 200 {
            l.remove(0);
        }
        l.push(msg.trim_end().to_string());
    }
}

/// Route libbpf's warnings into [`LOG`] (instead of stderr).
pub(crate) fn capture_libbpf_log() {
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Warn, log_print)));
}

/// The last libbpf lines that say what went wrong (the verifier log can be long).
fn take_log() -> String {
    let l = LOG
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default();
    let keep: Vec<&String> = l.iter().rev().take(3).collect();
    keep.into_iter()
        .rev()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Load-time settings of the BPF object (its `.rodata`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub lock: u64,
    pub naive: bool,
    pub min_wait_ns: u64,
}

/// Open the object, set its constants, and load the programs named in `progs` only.
pub(crate) fn open_load<'o>(
    obj: &'o mut MaybeUninit<OpenObject>,
    s: Settings,
    progs: &BTreeSet<&str>,
) -> Result<skel::TraceSkel<'o>, String> {
    let mut open = skel::TraceSkelBuilder::default()
        .open(obj)
        .map_err(|e| format!("open the BPF object: {e}"))?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or("the BPF object has no .rodata")?;
    ro.target_lock = s.lock;
    ro.naive = s.naive;
    ro.min_wait_ns = s.min_wait_ns;
    for mut p in open.open_object_mut().progs_mut() {
        let keep = progs.contains(p.name().to_string_lossy().as_ref());
        p.set_autoload(keep);
    }
    open.load().map_err(|e| {
        let log = take_log();
        if log.is_empty() {
            e.to_string()
        } else {
            format!("{e}: {log}")
        }
    })
}

pub(crate) fn progs_of<'a>(groups: impl IntoIterator<Item = &'a Group>) -> BTreeSet<&'static str> {
    groups
        .into_iter()
        .flat_map(|g| g.progs.iter().copied())
        .collect()
}

/// Groups named in `STRATA_TRACE_SKIP` (comma-separated, e.g. `reader,sched`): left out, to
/// measure what each one costs (`scripts/bench-trace-overhead`). Listed in the report's
/// `missing`, like any group that did not load.
fn skipped_groups() -> Vec<String> {
    std::env::var("STRATA_TRACE_SKIP")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Which groups of `mode` this kernel loads: all at once if it can, else each group alone to
/// find the ones it refuses (with the reason) and their stand-ins.
pub(crate) fn choose(mode: Mode, s: Settings, missing: &mut Vec<String>) -> Vec<&'static Group> {
    let btf = std::fs::read(crate::check::VMLINUX_BTF)
        .ok()
        .and_then(|b| crate::btf::Btf::parse(&b).ok());
    let absent_funcs = |g: &Group| -> Vec<&str> {
        g.funcs
            .iter()
            .copied()
            .filter(|f| btf.as_ref().is_some_and(|b| !b.has_func(f)))
            .collect()
    };
    let skip = skipped_groups();
    let mut want: Vec<&'static Group> = Vec::new();
    let names = match mode {
        Mode::Default => DEFAULT,
        Mode::Detail => DETAIL,
    };
    for g in names.iter().filter_map(|n| group(n)) {
        if skip.iter().any(|s| s == g.name) {
            missing.push(format!("{}: skipped (STRATA_TRACE_SKIP)", g.what));
            continue;
        }
        let absent = absent_funcs(g);
        if absent.is_empty() {
            want.push(g);
        } else if !g.name.starts_with("register_") {
            // The (un)registration groups exist under one of two names: not a gap.
            missing.push(format!("{}: no {} in BTF", g.what, absent.join(", ")));
        }
    }
    let loads = |w: &[&Group]| -> Result<(), String> {
        let mut obj = MaybeUninit::uninit();
        open_load(&mut obj, s, &progs_of(w.iter().copied())).map(drop)
    };
    if loads(&want).is_ok() {
        return want;
    }
    let mut ok = Vec::new();
    for g in want {
        match loads(&[g]) {
            Ok(()) => ok.push(g),
            Err(e) => missing.push(format!("{}: {e}", g.what)),
        }
    }
    for (name, stand_in) in FALLBACKS {
        if !names.contains(name)
            || skip.iter().any(|s| s == name)
            || ok.iter().any(|g| g.name == *name)
        {
            continue;
        }
        let Some(c) = group(stand_in) else { continue };
        let absent = absent_funcs(c);
        let res = if absent.is_empty() {
            loads(&[c])
        } else {
            Err(format!("no {} in BTF", absent.join(", ")))
        };
        match res {
            Ok(()) => ok.push(c),
            Err(e) => missing.push(format!("{}: {e}", c.what)),
        }
    }
    ok
}

/// The program groups of `mode` this kernel loads (by name) and why the others are missing;
/// loads and unloads, attaches nothing. `lock` is only a filter constant here.
pub fn probe(mode: Mode, lock: u64) -> (Vec<&'static str>, Vec<String>) {
    capture_libbpf_log();
    let mut missing = Vec::new();
    let s = Settings {
        lock,
        naive: false,
        min_wait_ns: 0,
    };
    let groups = choose(mode, s, &mut missing);
    (groups.iter().map(|g| g.name).collect(), missing)
}
