//! The trace report: what `strata trace` prints, and writes as JSON with `--json`/`--output`.
//!
//! ```json
//! {"kernel": {"shrinker_lock": "rwsem", ...}, "summary": {...},
//!  "mounts": [{"op": "mount", "fstype": "overlay", "n": 206, "p50_ms": ..., ...}],
//!  "waits": [{"waiter_comm": "strata", "wait_ms": 1340.1,
//!             "holders": [{"comm": "kswapd0", "pid": 45, "hold_ms": 1338.0,
//!                          "shrinker": "super_cache_scan", ...}]}],
//!  "vmstat": [{"t_s": 1.0, "pgscan_kswapd": ..., ...}]}
//! ```
//!
//! Times are milliseconds (`_ms`) or seconds since the start of the trace (`t_s`).

use serde::{Deserialize, Serialize};

use crate::check::KernelCheck;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub kernel: KernelCheck,
    /// Where the events came from: `ebpf`, `tracefs` or `synthetic`.
    pub source: String,
    /// `default` (cheap enough to leave on: only what overlaps a writer's wait is recorded)
    /// or `detail` (every lock event, every mount).
    #[serde(default)]
    pub mode: Mode,
    pub duration_s: f64,
    /// Waits shorter than this are counted in the summary but not listed.
    pub min_wait_ms: f64,
    /// What this kernel or tracer could not observe (e.g. a missing tracepoint).
    pub missing: Vec<String>,
    pub summary: Summary,
    /// Per operation (`mount`, `umount`) and filesystem type. In the default mode only the
    /// mounts that took at least `min_wait_ms` (the others are in `mount_totals`).
    pub mounts: Vec<MountStats>,
    /// Default mode: every traced mount, per operation (counted in the kernel).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_totals: Vec<MountTotal>,
    /// The slowest mounts and umounts, slowest first.
    pub slowest_mounts: Vec<MountRecord>,
    /// Writer waits on `shrinker_rwsem` of at least `min_wait_ms`, slowest first.
    pub waits: Vec<Wait>,
    /// Reclaim counters per second, aligned with `t_s` of the waits.
    pub vmstat: Vec<VmstatSample>,
    /// What the usual bpftrace script would have reported (`--naive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub naive: Option<crate::naive::NaiveReport>,
}

/// What the tracer recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Bounded by the events that matter: writer waits on the lock, the reader holds and
    /// shrinker calls that overlapped them, mounts at least `min_wait_ms` long; the rest is
    /// counted in the kernel.
    #[default]
    Default,
    /// Every lock event, context switch of a holder and mount (`--detail`, `--naive`, and
    /// the tracefs producer).
    Detail,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Default => "default",
            Mode::Detail => "detail",
        }
    }
}

/// Every traced mount of one operation (default mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountTotal {
    pub op: MountOp,
    pub n: u64,
    pub total_ms: f64,
    pub lock_wait_ms: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub mounts: u64,
    pub mount_ms: f64,
    /// Time mounts and umounts spent waiting for the shrinker lock.
    pub mount_lock_wait_ms: f64,
    /// `mount_lock_wait_ms / mount_ms` (0 when there were no mounts).
    pub lock_wait_share: f64,
    /// All writer waits on the lock (any length), and their total.
    pub all_waits: u64,
    pub all_wait_ms: f64,
    /// Waits of at least `min_wait_ms`.
    pub waits: u64,
    pub wait_ms: f64,
    /// The part of `wait_ms` during which some observed task held the lock.
    pub attributed_ms: f64,
    pub top_holders: Vec<TopHolder>,
    pub top_shrinkers: Vec<TopShrinker>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopHolder {
    pub comm: String,
    /// Listed waits this task held the lock during.
    pub waits: u64,
    /// Its hold time inside those waits.
    pub hold_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopShrinker {
    pub name: String,
    pub calls: u64,
    /// Time inside listed waits.
    pub ms: f64,
    pub freed: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountOp {
    /// mount(2) of a new superblock (not a remount, bind or move).
    Mount,
    /// umount2(2), until the superblock it ends (if any) is gone.
    Umount,
    /// fsconfig(FSCONFIG_CMD_CREATE) of the new mount API (fsopen/fsconfig/fsmount): the call
    /// that creates the superblock; the type comes from the fsopen of the same fd.
    Fsconfig,
}

impl MountOp {
    pub fn name(self) -> &'static str {
        match self {
            MountOp::Mount => "mount",
            MountOp::Umount => "umount",
            MountOp::Fsconfig => "fsconfig",
        }
    }
}

/// Where mount time goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `alloc_super` (on ≤ 6.6 includes `prealloc_shrinker`).
    AllocSuper,
    /// `register_shrinker_prepared` / `shrinker_register`.
    ShrinkerRegister,
    /// `unregister_shrinker` / `shrinker_free`.
    ShrinkerUnregister,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountStats {
    pub op: MountOp,
    pub fstype: String,
    pub n: u64,
    /// Calls that returned an error.
    pub failed: u64,
    pub total_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Log2 histogram: count of calls ≤ `le_ms` (and > the previous bucket).
    pub hist: Vec<Bucket>,
    /// Sums over all calls, by phase; `rest_ms` is everything else.
    pub alloc_super_ms: f64,
    pub shrinker_register_ms: f64,
    pub shrinker_unregister_ms: f64,
    pub rest_ms: f64,
    /// Lock wait inside the calls (part of the phases above).
    pub lock_wait_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub le_ms: f64,
    pub n: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountRecord {
    pub op: MountOp,
    pub fstype: String,
    pub comm: String,
    pub pid: u32,
    pub t_s: f64,
    pub total_ms: f64,
    pub alloc_super_ms: f64,
    pub shrinker_register_ms: f64,
    pub shrinker_unregister_ms: f64,
    pub lock_wait_ms: f64,
    pub ret: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wait {
    pub waiter_comm: String,
    pub waiter_pid: u32,
    pub waiter_tid: u32,
    /// When the wait began.
    pub t_s: f64,
    pub wait_ms: f64,
    /// `overlay mount`, `tmpfs umount`…, when the waiter was inside a traced mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_mount: Option<String>,
    /// Kernel stack of the waiter, innermost first.
    pub stack: Vec<String>,
    /// Time during the wait when at least one listed holder held the lock.
    pub attributed_ms: f64,
    /// Largest hold first.
    pub holders: Vec<Holder>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Held for reading (reclaim: `shrink_slab`, successful trylock).
    Reader,
    /// Held for writing (another mount, umount or registration).
    Writer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub comm: String,
    pub pid: u32,
    pub tid: u32,
    pub role: Role,
    /// How long it held the lock during the wait.
    pub hold_ms: f64,
    pub on_cpu_ms: f64,
    pub off_cpu_ms: f64,
    /// The shrinker callback that ran longest during the hold (its `scan_objects` symbol).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shrinker: Option<String>,
    /// Every shrinker callback that ran during the hold, longest first.
    pub shrinkers: Vec<ShrinkerTime>,
    /// The hold was inferred from shrinker calls (tracepoint-only mode), not seen on the lock:
    /// `hold_ms` is then a lower bound.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approximate: bool,
    /// On/off-CPU time not observed (a writer in the default mode): both are 0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cpu_unknown: bool,
}

impl Holder {
    pub fn new(tid: u32, pid: u32, comm: &str, role: Role) -> Holder {
        Holder {
            comm: comm.to_string(),
            pid,
            tid,
            role,
            hold_ms: 0.0,
            on_cpu_ms: 0.0,
            off_cpu_ms: 0.0,
            shrinker: None,
            shrinkers: Vec::new(),
            approximate: false,
            cpu_unknown: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShrinkerTime {
    pub name: String,
    pub calls: u64,
    pub ms: f64,
    /// Objects it was asked to scan (`total_scan` of mm_shrink_slab_start), summed.
    pub to_scan: i64,
    /// Objects freed (`retval` of mm_shrink_slab_end), summed.
    pub freed: i64,
}

/// Deltas over one interval ending at `t_s`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmstatSample {
    pub t_s: f64,
    pub interval_s: f64,
    pub pgscan_kswapd: u64,
    pub pgscan_direct: u64,
    pub pgsteal_kswapd: u64,
    pub pgsteal_direct: u64,
    pub slabs_scanned: u64,
    /// Sum of all `allocstall_*` zones.
    pub allocstall: u64,
    /// `/proc/pressure/memory`: the 10 s averages at the sample, and the stall time in the
    /// interval (µs), when PSI is available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi_some_avg10: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi_full_avg10: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi_some_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi_full_us: Option<u64>,
}

/// How a report was made: everything but the analysis and the reclaim counters.
pub struct Context {
    pub kernel: KernelCheck,
    pub source: &'static str,
    pub mode: Mode,
    pub duration_s: f64,
    pub min_wait_ms: f64,
    pub missing: Vec<String>,
}

impl Report {
    /// The sample whose interval contains `t_s`.
    pub fn vmstat_at(&self, t_s: f64) -> Option<&VmstatSample> {
        self.vmstat
            .iter()
            .find(|v| t_s <= v.t_s && t_s > v.t_s - v.interval_s)
    }
}

impl Report {
    /// A report from an analysis ([`crate::analyze::Analyzer::finish`]) and its context.
    pub fn assemble(
        ctx: Context,
        analysis: crate::analyze::Analysis,
        vmstat: Vec<VmstatSample>,
    ) -> Report {
        Report {
            kernel: ctx.kernel,
            source: ctx.source.to_string(),
            mode: ctx.mode,
            duration_s: ctx.duration_s,
            min_wait_ms: ctx.min_wait_ms,
            missing: ctx.missing,
            summary: analysis.summary,
            mounts: analysis.mounts,
            mount_totals: analysis.mount_totals,
            slowest_mounts: analysis.slowest_mounts,
            waits: analysis.waits,
            vmstat,
            naive: None,
        }
    }
}
