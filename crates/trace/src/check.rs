//! `strata trace --check`: does this kernel's memory reclaim hold the lock that every
//! superblock-creating mount takes for writing?
//!
//! Decided from what the kernel contains, never from its version string (vendors backport):
//!
//! 1. the lock variable itself, in kallsyms (needs `CONFIG_KALLSYMS_ALL`): `shrinker_rwsem`
//!    (≤ 6.6: `shrink_slab` holds it for reading across every `do_shrink_slab` call) or
//!    `shrinker_mutex` (6.7+: registration only; reclaim walks the list under RCU), or
//!    `shrinker_srcu` (the SRCU variant that was in 6.4-rc1);
//! 2. the RCU machinery of lockless shrinkers: `shrinker_free_rcu_cb` (kallsyms or BTF), and
//!    `struct shrinker` with `refcount` and `rcu` members (BTF);
//! 3. the registration API: `shrinker_alloc`/`shrinker_register` (6.7+, came with the lockless
//!    walk) versus `prealloc_shrinker`/`register_shrinker` (≤ 6.6), and a `struct shrinker`
//!    without the refcount (BTF).
//!
//! The strongest level that says anything decides; weaker evidence that disagrees is reported.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::btf::Btf;
use crate::kallsyms::Kallsyms;

/// Default sources.
pub const KALLSYMS: &str = "/proc/kallsyms";
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShrinkerLock {
    /// `shrinker_rwsem`: reclaim holds it for reading while shrinkers run; mounts wait.
    Rwsem,
    /// `shrinker_mutex` + RCU (or SRCU): reclaim does not take the registration lock.
    Lockless,
    /// Not enough evidence.
    Unknown,
}

impl ShrinkerLock {
    pub fn name(self) -> &'static str {
        match self {
            ShrinkerLock::Rwsem => "rwsem",
            ShrinkerLock::Lockless => "lockless",
            ShrinkerLock::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Kallsyms,
    Btf,
}

/// How much a fact says; higher decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strength {
    /// Context only.
    Info,
    /// The registration API or the struct layout.
    Api,
    /// The RCU machinery of lockless shrinkers.
    Rcu,
    /// The lock variable itself.
    LockSymbol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub source: Source,
    pub fact: String,
    /// The verdict this fact points to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indicates: Option<ShrinkerLock>,
    pub strength: Strength,
}

/// The `kernel` object of a trace report, and the output of `--check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelCheck {
    /// `uname -r` (context only: not used for the verdict).
    pub release: String,
    pub shrinker_lock: ShrinkerLock,
    /// The fact that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    pub evidence: Vec<Evidence>,
    /// Address of `shrinker_rwsem`, when listed and visible (what the tracer filters on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shrinker_rwsem_addr: Option<String>,
    pub root: bool,
    pub notes: Vec<String>,
    pub meaning: String,
    pub advice: Vec<String>,
}

/// Symbols the check (and the tracer) looks for.
pub const WANTED: &[&str] = &[
    "shrinker_rwsem",
    "shrinker_mutex",
    "shrinker_srcu",
    "shrinker_free_rcu_cb",
    "shrinker_alloc",
    "shrinker_register",
    "shrinker_free",
    "prealloc_shrinker",
    "register_shrinker",
    "register_shrinker_prepared",
    "unregister_shrinker",
    "free_prealloced_shrinker",
    "shrink_slab",
    "do_shrink_slab",
    "super_cache_scan",
    "alloc_super",
];

const NEW_API: &[&str] = &["shrinker_alloc", "shrinker_register", "shrinker_free"];
const OLD_API: &[&str] = &[
    "prealloc_shrinker",
    "register_shrinker",
    "register_shrinker_prepared",
    "unregister_shrinker",
    "free_prealloced_shrinker",
];

/// What BTF says about shrinkers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BtfFacts {
    /// Member names of `struct shrinker`, if BTF has the struct.
    pub shrinker_members: Option<Vec<String>>,
    /// Which of [`WANTED`] BTF has as functions.
    pub funcs: BTreeSet<String>,
}

impl BtfFacts {
    pub fn from_btf(btf: &Btf) -> BtfFacts {
        BtfFacts {
            shrinker_members: btf
                .struct_members("shrinker")
                .map(|m| m.into_iter().map(|m| m.name).collect()),
            funcs: WANTED
                .iter()
                .filter(|f| btf.has_func(f))
                .map(|f| f.to_string())
                .collect(),
        }
    }
}

/// Everything the verdict is computed from; `Err` holds why a source is unusable.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub release: String,
    pub root: bool,
    pub kallsyms: Result<Kallsyms, String>,
    pub btf: Result<BtfFacts, String>,
}

/// An explicit input (`--kallsyms`, `--btf`) that cannot be used: no verdict is drawn from it,
/// and none from the running kernel's sources in its place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Core kernel text symbols every symbol table has: a listing without any of them is not one
/// (Debian ships a one-line stub `System.map`; the real one is in `linux-image-…-dbg`).
const CORE_TEXT: &[&str] = &["_stext", "_text", "_sinittext", "start_kernel"];

fn read_kallsyms(path: &Path) -> Result<Kallsyms, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut wanted: Vec<&str> = WANTED.to_vec();
    wanted.extend_from_slice(CORE_TEXT);
    let k = Kallsyms::scan(&text, &wanted);
    if k.lines == 0 {
        return Err(format!(
            "{} is empty (CONFIG_KALLSYMS off?)",
            path.display()
        ));
    }
    if !CORE_TEXT.iter().any(|n| k.has(n)) {
        return Err(format!(
            "{}: no kernel symbols in {} lines (not a symbol table: Debian's System.map is a \
             stub, the real one is in the linux-image-…-dbg package; or use /proc/kallsyms of \
             the running kernel)",
            path.display(),
            k.lines
        ));
    }
    Ok(k)
}

fn read_btf(path: &Path) -> Result<BtfFacts, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let btf = Btf::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if btf.is_empty() {
        return Err(format!("{}: BTF without types", path.display()));
    }
    let facts = BtfFacts::from_btf(&btf);
    if facts.shrinker_members.is_none() && facts.funcs.is_empty() {
        return Err(format!(
            "{}: no struct shrinker and none of the shrinker functions: not a kernel's BTF \
             (a module's split BTF?)",
            path.display()
        ));
    }
    Ok(facts)
}

/// Read the sources. With neither `kallsyms` nor `btf` given: the running kernel's
/// ([`KALLSYMS`], [`VMLINUX_BTF`]), each of which may be unusable (a note, not an error).
/// With either given: only the given files, which must be readable and hold symbols — the
/// running kernel's sources are never mixed in — and, when both are given, must agree on
/// which shrinker functions the kernel has (one kernel's files).
pub fn gather(kallsyms: Option<&Path>, btf: Option<&Path>) -> Result<Inputs, InputError> {
    let running = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    let root = nix::unistd::geteuid().is_root();
    if kallsyms.is_none() && btf.is_none() {
        return Ok(Inputs {
            release: running,
            root,
            kallsyms: read_kallsyms(Path::new(KALLSYMS)),
            btf: read_btf(Path::new(VMLINUX_BTF)),
        });
    }
    let not_given = |what: &str| format!("{what} not given (only the given files are read)");
    let k = match kallsyms {
        Some(p) => Ok(read_kallsyms(p).map_err(InputError)?),
        None => Err(not_given("--kallsyms")),
    };
    let b = match btf {
        Some(p) => Ok(read_btf(p).map_err(InputError)?),
        None => Err(not_given("--btf")),
    };
    if let (Ok(k), Ok(b)) = (&k, &b) {
        same_kernel(k, b).map_err(InputError)?;
    }
    Ok(Inputs {
        // Files of another kernel: the running kernel's release would mislead.
        release: format!("(given files; running kernel {running})"),
        root,
        kallsyms: k,
        btf: b,
    })
}

/// A symbol table and a BTF of one kernel list the same shrinker API functions.
fn same_kernel(k: &Kallsyms, b: &BtfFacts) -> Result<(), String> {
    let differ: Vec<String> = NEW_API
        .iter()
        .chain(OLD_API)
        .filter(|n| k.has(n) != b.funcs.contains(**n))
        .map(|n| {
            let (yes, no) = if k.has(n) {
                ("kallsyms", "BTF")
            } else {
                ("BTF", "kallsyms")
            };
            format!("{n} (in {yes}, not in {no})")
        })
        .collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "--kallsyms and --btf are not from the same kernel: {}",
            differ.join(", ")
        ))
    }
}

/// Check this kernel, or the kernel the given files belong to.
pub fn check(kallsyms: Option<&Path>, btf: Option<&Path>) -> Result<KernelCheck, InputError> {
    gather(kallsyms, btf).map(|i| decide(&i))
}

fn list(names: &[&str]) -> String {
    names.join(", ")
}

fn evidence(inp: &Inputs) -> (Vec<Evidence>, Vec<String>) {
    use ShrinkerLock::*;
    use Strength::*;
    let mut ev = Vec::new();
    let mut notes = Vec::new();
    let mut push = |source, fact: String, indicates, strength| {
        ev.push(Evidence {
            source,
            fact,
            indicates,
            strength,
        })
    };
    match &inp.kallsyms {
        Err(e) => notes.push(format!("kallsyms unusable: {e}")),
        Ok(k) => {
            let sym = |n: &str| {
                k.found
                    .get(n)
                    .map(|s| format!("{n} ({} {:016x})", s.kind, s.addr))
            };
            let (rw, mx, srcu) = (
                sym("shrinker_rwsem"),
                sym("shrinker_mutex"),
                sym("shrinker_srcu"),
            );
            if let Some(s) = &srcu {
                push(
                    Source::Kallsyms,
                    format!("{s}: shrink_slab walks shrinkers under SRCU"),
                    Some(Lockless),
                    LockSymbol,
                );
            } else if let Some(r) = &rw {
                push(
                    Source::Kallsyms,
                    format!(
                        "{r}: the lock shrink_slab holds for reading and mounts take for writing"
                    ),
                    Some(Rwsem),
                    LockSymbol,
                );
                if mx.is_some() {
                    notes.push("kallsyms lists both shrinker_rwsem and shrinker_mutex".into());
                }
            } else if let Some(m) = &mx {
                push(
                    Source::Kallsyms,
                    format!("{m} and no shrinker_rwsem: registration lock only, reclaim walks shrinkers under RCU"),
                    Some(Lockless),
                    LockSymbol,
                );
            } else if k.data_symbols {
                push(
                    Source::Kallsyms,
                    "variables are listed but none of shrinker_rwsem/shrinker_mutex/shrinker_srcu"
                        .into(),
                    None,
                    Info,
                );
            } else {
                push(
                    Source::Kallsyms,
                    "no variables listed (CONFIG_KALLSYMS_ALL off): the lock itself is not visible here".into(),
                    None,
                    Info,
                );
            }
            if k.has("shrinker_free_rcu_cb") {
                push(
                    Source::Kallsyms,
                    "shrinker_free_rcu_cb: shrinkers are freed after an RCU grace period (lockless walk)".into(),
                    Some(Lockless),
                    Rcu,
                );
            }
            let new: Vec<&str> = NEW_API.iter().copied().filter(|n| k.has(n)).collect();
            let old: Vec<&str> = OLD_API.iter().copied().filter(|n| k.has(n)).collect();
            if !new.is_empty() {
                push(
                    Source::Kallsyms,
                    format!("shrinker API of 6.7+: {}", list(&new)),
                    Some(Lockless),
                    Api,
                );
            }
            if !old.is_empty() {
                push(
                    Source::Kallsyms,
                    format!("shrinker API of ≤ 6.6: {}", list(&old)),
                    Some(Rwsem),
                    Api,
                );
            }
        }
    }
    match &inp.btf {
        Err(e) => notes.push(format!("BTF unusable: {e}")),
        Ok(b) => {
            match &b.shrinker_members {
                None => push(Source::Btf, "no struct shrinker in BTF".into(), None, Info),
                Some(m) => {
                    let has = |n: &str| m.iter().any(|x| x == n);
                    if has("refcount") && has("rcu") {
                        push(
                            Source::Btf,
                            "struct shrinker has refcount and rcu members (lockless lookup under RCU)".into(),
                            Some(Lockless),
                            Rcu,
                        );
                    } else {
                        push(
                            Source::Btf,
                            format!(
                                "struct shrinker has no refcount/rcu members ({})",
                                m.join(", ")
                            ),
                            Some(Rwsem),
                            Api,
                        );
                    }
                }
            }
            if b.funcs.contains("shrinker_free_rcu_cb") {
                push(
                    Source::Btf,
                    "function shrinker_free_rcu_cb".into(),
                    Some(Lockless),
                    Rcu,
                );
            }
        }
    }
    (ev, notes)
}

/// Major and minor of a release string like `6.1.0-56-cloud-amd64`.
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The verdict, from the inputs alone (pure).
pub fn decide(inp: &Inputs) -> KernelCheck {
    let (evidence, mut notes) = evidence(inp);
    let top = evidence
        .iter()
        .filter(|e| e.indicates.is_some())
        .map(|e| e.strength)
        .max();
    let mut verdict = ShrinkerLock::Unknown;
    let mut decided_by = None;
    if let Some(top) = top {
        let deciding: Vec<&Evidence> = evidence
            .iter()
            .filter(|e| e.indicates.is_some() && e.strength == top)
            .collect();
        // `top` came from this evidence: `deciding` has at least one entry.
        let first = deciding.first().and_then(|e| e.indicates);
        if let Some(first) = first.filter(|f| deciding.iter().all(|e| e.indicates == Some(*f))) {
            verdict = first;
            decided_by = Some(
                deciding
                    .iter()
                    .map(|e| format!("{}: {}", source_name(e.source), e.fact))
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        } else {
            notes.push("the strongest evidence disagrees with itself; no verdict".into());
        }
        if verdict != ShrinkerLock::Unknown {
            for e in &evidence {
                if matches!(e.indicates, Some(v) if v != verdict) {
                    notes.push(format!(
                        "weaker evidence disagrees: {}: {}",
                        source_name(e.source),
                        e.fact
                    ));
                }
            }
        }
    }
    match (verdict, version(&inp.release)) {
        (ShrinkerLock::Lockless, Some(v)) if v < (6, 7) => notes.push(format!(
            "the version string ({}) is older than 6.7: lockless shrinkers were backported",
            inp.release
        )),
        (ShrinkerLock::Rwsem, Some(v)) if v >= (6, 7) => notes.push(format!(
            "the version string ({}) is 6.7 or newer, yet shrinker_rwsem is in use",
            inp.release
        )),
        _ => {}
    }
    let mut rwsem_addr = None;
    if let Ok(k) = &inp.kallsyms {
        rwsem_addr = k.addr("shrinker_rwsem").map(|a| format!("0x{a:x}"));
        if !inp.root {
            notes.push(
                "not root: symbol names in /proc/kallsyms are readable (enough for this check), \
                 addresses are hidden; tracing needs root"
                    .into(),
            );
        } else if !k.addresses_visible {
            notes.push(
                "kallsyms addresses are hidden even to root (kernel.kptr_restrict=2?)".into(),
            );
        }
    }
    let (meaning, advice) = explain(verdict);
    KernelCheck {
        release: inp.release.clone(),
        shrinker_lock: verdict,
        decided_by,
        evidence,
        shrinker_rwsem_addr: rwsem_addr,
        root: inp.root,
        notes,
        meaning,
        advice,
    }
}

fn source_name(s: Source) -> &'static str {
    match s {
        Source::Kallsyms => "kallsyms",
        Source::Btf => "btf",
    }
}

fn explain(v: ShrinkerLock) -> (String, Vec<String>) {
    match v {
        ShrinkerLock::Rwsem => (
            "Exposed. Every mount that creates a superblock (overlay, tmpfs, proc, fuse, …) \
             registers a shrinker under down_write(&shrinker_rwsem), and umount unregisters it \
             the same way. Memory reclaim (kswapd and direct reclaim) holds shrinker_rwsem for \
             reading across whole do_shrink_slab() calls, so under memory pressure a mount — and \
             with it a container start that mounts on the host — can wait for seconds."
                .into(),
            vec![
                "Upgrade to Linux 6.7 or newer (lockless shrinkers: shrinker_mutex + RCU), or \
                 backport the lockless slab shrink series (Qi Zheng, merged in 6.7) to this kernel."
                    .into(),
                "Keep superblock creation off the container start path: strata serve gives the VM \
                 plain directories over virtio-fs and the guest kernel builds the overlay, so \
                 starting a container mounts nothing on the host."
                    .into(),
                "To see who holds the lock while a mount waits: strata trace (as root).".into(),
            ],
        ),
        ShrinkerLock::Lockless => (
            "Not exposed. Reclaim walks the shrinker list under RCU without taking the lock \
             that shrinker registration (and so every superblock-creating mount) takes; \
             shrinker_mutex only serializes registrations. Mounts do not wait behind reclaim \
             on this lock."
                .into(),
            vec![
                "Nothing to do about shrinker_rwsem on this kernel. Each host mount still creates \
                 a superblock; strata serve keeps container starts free of host mounts anyway."
                    .into(),
            ],
        ),
        ShrinkerLock::Unknown => (
            "Could not tell which shrinker lock this kernel uses (see the notes).".into(),
            vec![
                "Make /proc/kallsyms readable (CONFIG_KALLSYMS; CONFIG_KALLSYMS_ALL lists the lock \
                 itself) or provide BTF (CONFIG_DEBUG_INFO_BTF, /sys/kernel/btf/vmlinux), or pass \
                 --kallsyms/--btf for this kernel's System.map or vmlinux."
                    .into(),
            ],
        ),
    }
}

/// The human-readable verdict.
pub fn render(c: &KernelCheck) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let what = match c.shrinker_lock {
        ShrinkerLock::Rwsem => "rwsem — mounts can stall behind memory reclaim",
        ShrinkerLock::Lockless => "lockless — mounts do not wait for reclaim on the shrinker lock",
        ShrinkerLock::Unknown => "unknown",
    };
    let _ = writeln!(s, "shrinker lock: {what}");
    let _ = writeln!(s, "kernel: {}", c.release);
    let _ = writeln!(s, "evidence:");
    if c.evidence.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for e in &c.evidence {
        let arrow = match e.indicates {
            Some(v) => format!(" → {}", v.name()),
            None => String::new(),
        };
        let _ = writeln!(s, "  {:<8}  {}{arrow}", source_name(e.source), e.fact);
    }
    if let Some(d) = &c.decided_by {
        let _ = writeln!(s, "decided by: {d}");
    }
    for n in &c.notes {
        let _ = writeln!(s, "note: {n}");
    }
    let _ = writeln!(s, "\nwhat it means:\n{}", wrap(&c.meaning, 90, "  "));
    let _ = writeln!(s, "what to do:");
    for a in &c.advice {
        let w = wrap(a, 88, "    ");
        let _ = writeln!(s, "  - {}", w.trim_start());
    }
    s
}

/// Word-wrap `text` to `width` columns, each line starting with `indent`.
pub(crate) fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for w in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + w.chars().count() > width {
            out.push_str(indent);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    if !line.is_empty() {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shrinker-related lines of Debian 6.1.0 (KALLSYMS_ALL) kallsyms.
    const K61: &str = "\
ffffffff82a0c1c0 D init_task
ffffffff8125b9c0 T prealloc_shrinker
ffffffff8125ba20 T register_shrinker_prepared
ffffffff8125ba80 T register_shrinker
ffffffff8125bb00 T unregister_shrinker
ffffffff8125bbc0 T free_prealloced_shrinker
ffffffff8125c160 t do_shrink_slab
ffffffff8125e0f0 t shrink_slab
ffffffff812f1a30 t super_cache_scan
ffffffff812f2a00 t alloc_super
ffffffff82b5f8a0 D shrinker_rwsem
";
    /// Debian 6.12 (KALLSYMS_ALL).
    const K612: &str = "\
ffffffff82c0c1c0 D init_task
ffffffff81301000 t shrinker_free_rcu_cb
ffffffff81301100 T shrinker_register
ffffffff81301200 T shrinker_free
ffffffff81301300 T shrinker_alloc
ffffffff81302000 t do_shrink_slab
ffffffff82d01020 d shrinker_mutex
";
    /// 6.18 without KALLSYMS_ALL, as a non-root user sees it.
    const K618_NOALL_USER: &str = "\
0000000000000000 t shrinker_free_rcu_cb
0000000000000000 T shrinker_register
0000000000000000 T shrinker_free
0000000000000000 T shrinker_alloc
0000000000000000 t do_shrink_slab
";
    /// A 6.1-based vendor kernel with the lockless series backported but the old API kept.
    const BACKPORT: &str = "\
ffffffff82a0c1c0 D init_task
ffffffff8125b9c0 T prealloc_shrinker
ffffffff8125ba80 T register_shrinker
ffffffff8125bb00 T unregister_shrinker
ffffffff82b5f8a0 d shrinker_mutex
";

    fn inputs(release: &str, root: bool, k: Option<&str>, btf: Option<BtfFacts>) -> Inputs {
        Inputs {
            release: release.into(),
            root,
            kallsyms: k
                .map(|t| Kallsyms::scan(t, WANTED))
                .ok_or_else(|| "/proc/kallsyms: No such file".to_string()),
            btf: btf.ok_or_else(|| "/sys/kernel/btf/vmlinux: No such file".to_string()),
        }
    }

    fn btf(members: &[&str], funcs: &[&str]) -> BtfFacts {
        BtfFacts {
            shrinker_members: Some(members.iter().map(|s| s.to_string()).collect()),
            funcs: funcs.iter().map(|s| s.to_string()).collect(),
        }
    }

    const M61: &[&str] = &[
        "count_objects",
        "scan_objects",
        "batch",
        "seeks",
        "flags",
        "list",
        "id",
        "nr_deferred",
    ];
    const M612: &[&str] = &[
        "count_objects",
        "scan_objects",
        "batch",
        "seeks",
        "flags",
        "refcount",
        "done",
        "rcu",
        "private_data",
        "list",
        "id",
        "nr_deferred",
    ];

    #[test]
    fn debian_6_1_is_rwsem_by_the_lock_symbol() {
        let c = decide(&inputs(
            "6.1.0-56-cloud-amd64",
            true,
            Some(K61),
            Some(btf(M61, &["prealloc_shrinker", "do_shrink_slab"])),
        ));
        assert_eq!(c.shrinker_lock, ShrinkerLock::Rwsem);
        assert!(c.decided_by.unwrap().contains("shrinker_rwsem"));
        assert_eq!(c.shrinker_rwsem_addr.as_deref(), Some("0xffffffff82b5f8a0"));
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        assert!(c.advice.iter().any(|a| a.contains("strata serve")));
        assert!(c.advice.iter().any(|a| a.contains("6.7")));
    }

    #[test]
    fn debian_6_12_is_lockless_by_the_mutex() {
        let c = decide(&inputs(
            "6.12.117+deb12-cloud-amd64",
            true,
            Some(K612),
            Some(btf(M612, &["shrinker_free_rcu_cb"])),
        ));
        assert_eq!(c.shrinker_lock, ShrinkerLock::Lockless);
        assert!(c.decided_by.unwrap().contains("shrinker_mutex"));
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        assert_eq!(c.shrinker_rwsem_addr, None);
    }

    #[test]
    fn without_kallsyms_all_rcu_markers_decide_and_non_root_is_told() {
        let c = decide(&inputs("6.18.44", false, Some(K618_NOALL_USER), None));
        assert_eq!(c.shrinker_lock, ShrinkerLock::Lockless);
        assert!(c
            .decided_by
            .as_ref()
            .unwrap()
            .contains("shrinker_free_rcu_cb"));
        assert!(c.evidence.iter().any(|e| e.fact.contains("KALLSYMS_ALL")));
        assert!(c.notes.iter().any(|n| n.starts_with("not root")));
        assert!(c.notes.iter().any(|n| n.starts_with("BTF unusable")));
    }

    #[test]
    fn btf_alone_decides() {
        let c = decide(&inputs("6.1.0", true, None, Some(btf(M61, &[]))));
        assert_eq!(c.shrinker_lock, ShrinkerLock::Rwsem);
        let c = decide(&inputs("6.12.0", true, None, Some(btf(M612, &[]))));
        assert_eq!(c.shrinker_lock, ShrinkerLock::Lockless);
    }

    #[test]
    fn a_backport_is_decided_by_the_lock_not_the_version_or_api() {
        let c = decide(&inputs("6.1.0-99-vendor", true, Some(BACKPORT), None));
        assert_eq!(c.shrinker_lock, ShrinkerLock::Lockless);
        assert!(
            c.notes.iter().any(|n| n.contains("backported")),
            "{:?}",
            c.notes
        );
        assert!(c
            .notes
            .iter()
            .any(|n| n.contains("weaker evidence disagrees")));
    }

    #[test]
    fn the_version_string_alone_decides_nothing() {
        let c = decide(&inputs("6.1.0-56-cloud-amd64", true, None, None));
        assert_eq!(c.shrinker_lock, ShrinkerLock::Unknown);
        assert!(c.decided_by.is_none());
        assert_eq!(c.notes.len(), 2);
    }

    #[test]
    fn equal_strength_conflict_is_unknown() {
        // 6.7+ API in kallsyms, a pre-6.7 struct layout in BTF: both Api strength, opposite.
        let k = "ffffffff81301100 T shrinker_register\n";
        let c = decide(&inputs("x", true, Some(k), Some(btf(M61, &[]))));
        assert_eq!(c.shrinker_lock, ShrinkerLock::Unknown);
    }

    #[test]
    fn json_shape() {
        let c = decide(&inputs("6.1.0", true, Some(K61), None));
        let v: serde_json::Value = serde_json::to_value(&c).unwrap();
        assert_eq!(v["shrinker_lock"], "rwsem");
        assert_eq!(v["evidence"][0]["source"], "kallsyms");
        assert_eq!(v["evidence"][0]["indicates"], "rwsem");
        assert_eq!(v["evidence"][0]["strength"], "lock_symbol");
        let back: KernelCheck = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn human_output() {
        let c = decide(&inputs("6.1.0", true, Some(K61), None));
        let text = render(&c);
        assert!(text.starts_with("shrinker lock: rwsem"), "{text}");
        assert!(text.contains("what to do:"));
        assert!(text.contains("→ rwsem"));
    }

    /// The files `--check` is given, written to a temp dir.
    fn files(
        k: Option<&str>,
        b: Option<Vec<u8>>,
    ) -> (
        tempfile::TempDir,
        Option<std::path::PathBuf>,
        Option<std::path::PathBuf>,
    ) {
        let d = tempfile::tempdir().unwrap();
        let kp = k.map(|t| {
            let p = d.path().join("System.map");
            std::fs::write(&p, t).unwrap();
            p
        });
        let bp = b.map(|bytes| {
            let p = d.path().join("vmlinux.btf");
            std::fs::write(&p, bytes).unwrap();
            p
        });
        (d, kp, bp)
    }

    fn btf_612() -> Vec<u8> {
        let mut b = crate::btf::build::Builder::new();
        b.strukt("shrinker", M612)
            .func("shrinker_alloc")
            .func("shrinker_register")
            .func("shrinker_free")
            .func("shrinker_free_rcu_cb");
        b.bytes()
    }

    fn btf_61() -> Vec<u8> {
        let mut b = crate::btf::build::Builder::new();
        b.strukt("shrinker", M61);
        for f in OLD_API {
            b.func(f);
        }
        b.bytes()
    }

    const STUB: &str =
        "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n";

    fn with_stext(k: &str) -> String {
        format!("ffffffff81000000 T _stext\n{k}")
    }

    #[test]
    fn a_stub_system_map_is_an_error_not_a_verdict() {
        // Alone, or with BTF: the running kernel's BTF is never used in its place.
        let (_d, k, _) = files(Some(STUB), None);
        let e = check(k.as_deref(), None).unwrap_err();
        assert!(
            e.0.contains("no kernel symbols") && e.0.contains("-dbg"),
            "{e}"
        );
        let (_d, k, b) = files(Some(STUB), Some(btf_612()));
        assert!(check(k.as_deref(), b.as_deref()).is_err());
    }

    #[test]
    fn unreadable_or_empty_explicit_inputs_are_errors() {
        let missing = std::path::Path::new("/nonexistent/System.map");
        assert!(check(Some(missing), None)
            .unwrap_err()
            .0
            .contains("/nonexistent"));
        let (_d, k, b) = files(Some(""), Some(b"not btf".to_vec()));
        assert!(check(k.as_deref(), None).unwrap_err().0.contains("empty"));
        assert!(check(None, b.as_deref()).is_err());
        // A BTF without anything about shrinkers (a module's) says nothing about the kernel.
        let (_d, _, b) = files(None, Some(crate::btf::build::Builder::new().bytes()));
        assert!(check(None, b.as_deref()).is_err());
    }

    #[test]
    fn given_files_decide_alone() {
        // --kallsyms of a 6.1 kernel, on whatever kernel runs here: rwsem, and the running
        // kernel's BTF is not read.
        let (_d, k, _) = files(Some(&with_stext(K61)), None);
        let c = check(k.as_deref(), None).unwrap();
        assert_eq!(c.shrinker_lock, ShrinkerLock::Rwsem);
        assert!(c.release.starts_with("(given files"), "{}", c.release);
        assert!(
            c.evidence.iter().all(|e| e.source == Source::Kallsyms),
            "{c:?}"
        );
        assert!(
            c.notes.iter().any(|n| n.contains("--btf not given")),
            "{:?}",
            c.notes
        );
        // --btf alone.
        let (_d, _, b) = files(None, Some(btf_612()));
        let c = check(None, b.as_deref()).unwrap();
        assert_eq!(c.shrinker_lock, ShrinkerLock::Lockless);
        assert!(c.evidence.iter().all(|e| e.source == Source::Btf), "{c:?}");
        // Both, of one kernel.
        let (_d, k, b) = files(Some(&with_stext(K61)), Some(btf_61()));
        assert_eq!(
            check(k.as_deref(), b.as_deref()).unwrap().shrinker_lock,
            ShrinkerLock::Rwsem
        );
    }

    #[test]
    fn files_of_two_kernels_are_refused() {
        let (_d, k, b) = files(Some(&with_stext(K61)), Some(btf_612()));
        let e = check(k.as_deref(), b.as_deref()).unwrap_err();
        assert!(e.0.contains("not from the same kernel"), "{e}");
        assert!(
            e.0.contains("shrinker_alloc (in BTF, not in kallsyms)"),
            "{e}"
        );
    }

    #[test]
    fn versions() {
        assert_eq!(version("6.1.0-56-cloud-amd64"), Some((6, 1)));
        assert_eq!(version("6.12.117+deb12-cloud-amd64"), Some((6, 12)));
        assert_eq!(version("garbage"), None);
    }
}
