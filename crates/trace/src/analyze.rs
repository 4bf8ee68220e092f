//! From kernel events to the report: which tasks held `shrinker_rwsem` while a mount waited
//! for it, which shrinker callback they were running, on or off CPU.
//!
//! The producer (eBPF, or tracefs kprobes as a fallback) only has to emit [`Event`]s in time
//! order; all matching happens here, so it is tested on synthetic events. The rules that make
//! the attribution right (where the usual bpftrace one-liner goes wrong):
//!
//! - a reader hold starts at a *successful* `down_read_trylock(&shrinker_rwsem)` (a failed
//!   trylock is no hold: it fails precisely because a writer waits);
//! - it ends at the `up_read` of the *same lock* by the same task, not at any `up_read`;
//! - a writer wait runs from `down_write` entry to its return; every hold overlapping it is a
//!   holder (other writers too), with the shrinker callbacks it ran during the overlap.
//!
//! Memory stays bounded: records that ended before the oldest open wait are dropped.

use std::collections::{BTreeMap, HashMap};

use crate::report::{
    Bucket, Holder, MountOp, MountRecord, MountStats, Phase, Role, ShrinkerTime, Summary,
    TopHolder, TopShrinker, Wait,
};

/// One kernel event, as the tracer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Monotonic clock (`bpf_ktime_get_ns`), nanoseconds.
    pub ts_ns: u64,
    /// The kernel task id (thread).
    pub tid: u32,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A successful `down_read_trylock(lock)`.
    ReadAcquired {
        lock: u64,
        pid: u32,
        comm: String,
    },
    /// The `down_read_trylock(lock)` announced by the last `ReadAcquired` of this task failed
    /// (tracefs mode: the acquire is seen at entry, a failure at return): no hold.
    ReadFailed {
        lock: u64,
    },
    /// `up_read(lock)`.
    ReadReleased {
        lock: u64,
    },
    /// `down_write(lock)` entered; the task now waits (or gets it at once).
    WriteWait {
        lock: u64,
        pid: u32,
        comm: String,
        /// Kernel stack, innermost first.
        stack: Vec<String>,
    },
    /// `down_write(lock)` returned.
    WriteAcquired {
        lock: u64,
    },
    /// `up_write(lock)`.
    WriteReleased {
        lock: u64,
    },
    /// `vmscan:mm_shrink_slab_start`: the callback symbol and `total_scan`.
    ShrinkStart {
        shrinker: String,
        to_scan: i64,
        pid: u32,
        comm: String,
    },
    /// `vmscan:mm_shrink_slab_end`: objects freed.
    ShrinkEnd {
        freed: i64,
    },
    /// The task was switched out (`sched_switch` prev) / back in (next).
    OffCpu,
    OnCpu,
    /// A superblock-creating mount or a superblock-ending umount begins.
    MountStart {
        op: MountOp,
        fstype: String,
        pid: u32,
        comm: String,
    },
    PhaseStart {
        phase: Phase,
    },
    PhaseEnd {
        phase: Phase,
    },
    /// The filesystem type of the open mount or umount, learned late (an umount's superblock).
    MountFstype {
        fstype: String,
    },
    /// The syscall returned `ret`.
    MountEnd {
        ret: i64,
    },
    /// The end of a mount as the eBPF producer reports it, in one record: the return value,
    /// the type of the superblock an umount ended (empty if none or already known) and the
    /// nanoseconds spent in each phase ([`Phase::AllocSuper`], [`Phase::ShrinkerRegister`],
    /// [`Phase::ShrinkerUnregister`], outermost phases only).
    MountDone {
        ret: i64,
        fstype: String,
        phase_ns: [u64; 3],
    },
    /// What the naive bpftrace script sees (only with `--naive`; the analyzer ignores it, see
    /// [`crate::naive`]): any `down_read_trylock(lock)`, successful or not…
    NaiveTry {
        ok: bool,
    },
    /// …and the next `up_read` of that task, of *any* lock, with the kernel stack there.
    NaiveUp {
        lock: u64,
        stack: Vec<String>,
    },
}

#[derive(Debug, Clone)]
struct Hold {
    tid: u32,
    pid: u32,
    comm: String,
    role: Role,
    start: u64,
    end: Option<u64>,
    /// Inferred from a shrinker call, not from the lock itself.
    approx: bool,
}

#[derive(Debug, Clone)]
struct Shrink {
    tid: u32,
    name: String,
    to_scan: i64,
    freed: i64,
    start: u64,
    end: Option<u64>,
    /// This call opened an inferred reader hold (closed with it).
    opened_hold: bool,
}

#[derive(Debug, Clone)]
struct OpenWait {
    pid: u32,
    comm: String,
    stack: Vec<String>,
    start: u64,
}

#[derive(Debug, Clone)]
struct OpenMount {
    op: MountOp,
    fstype: String,
    pid: u32,
    comm: String,
    start: u64,
    phase_open: Vec<(Phase, u64)>,
    phase_ns: HashMap<Phase, u64>,
    lock_wait_ns: u64,
}

/// Per (op, fstype): every call's duration and its sums.
#[derive(Debug, Default)]
struct Group {
    durations_ns: Vec<u64>,
    failed: u64,
    phase_ns: HashMap<Phase, u64>,
    lock_wait_ns: u64,
}

/// Folds events into waits and mount statistics.
pub struct Analyzer {
    lock: u64,
    holds_from_shrinkers: bool,
    writer_releases: bool,
    min_wait_ns: u64,
    t0: Option<u64>,
    last_ts: u64,
    tasks: HashMap<u32, (u32, String)>,
    holds: Vec<Hold>,
    shrinks: Vec<Shrink>,
    /// Off-CPU intervals per task: (start, end).
    off: Vec<(u32, u64, Option<u64>)>,
    waits_open: HashMap<u32, OpenWait>,
    mounts_open: HashMap<u32, OpenMount>,
    groups: BTreeMap<(MountOp, String), Group>,
    slowest: Vec<MountRecord>,
    waits: Vec<Wait>,
    all_waits: u64,
    all_wait_ns: u64,
    events: u64,
}

const KEEP_SLOWEST: usize = 10;

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Analyzer {
    /// `lock`: the address of `shrinker_rwsem` (events on other locks are ignored).
    pub fn new(lock: u64, min_wait_ms: f64) -> Analyzer {
        Analyzer {
            lock,
            holds_from_shrinkers: false,
            writer_releases: true,
            min_wait_ns: (min_wait_ms * 1e6) as u64,
            t0: None,
            last_ts: 0,
            tasks: HashMap::new(),
            holds: Vec::new(),
            shrinks: Vec::new(),
            off: Vec::new(),
            waits_open: HashMap::new(),
            mounts_open: HashMap::new(),
            groups: BTreeMap::new(),
            slowest: Vec::new(),
            waits: Vec::new(),
            all_waits: 0,
            all_wait_ns: 0,
            events: 0,
        }
    }

    /// Tracepoint-only mode (no events for the lock's readers, e.g. where fentry/kprobes are
    /// unavailable): on a kernel with `shrinker_rwsem`, every `do_shrink_slab` call runs with
    /// the lock held for reading, so each shrinker call counts as a reader hold. A lower bound:
    /// the time between calls inside one `shrink_slab` is missed. Holders are marked
    /// `approximate`.
    pub fn holds_from_shrinkers(mut self) -> Analyzer {
        self.holds_from_shrinkers = true;
        self
    }

    /// The producer sees no `up_write` of the lock: a writer's hold cannot be closed, so it is
    /// not recorded (it would otherwise cover every later wait).
    pub fn no_writer_releases(mut self) -> Analyzer {
        self.writer_releases = false;
        self
    }

    /// Set the trace's time zero (otherwise: the first event).
    pub fn start_at(&mut self, ts_ns: u64) {
        self.t0 = Some(ts_ns);
    }

    fn t_s(&self, ts: u64) -> f64 {
        ts.saturating_sub(self.t0.unwrap_or(0)) as f64 / 1e9
    }

    fn task(&self, tid: u32) -> (u32, String) {
        self.tasks
            .get(&tid)
            .cloned()
            .unwrap_or((tid, String::from("?")))
    }

    pub fn push(&mut self, e: Event) {
        let ts = e.ts_ns;
        self.t0.get_or_insert(ts);
        self.last_ts = self.last_ts.max(ts);
        let tid = e.tid;
        match e.kind {
            Kind::ReadAcquired { lock, pid, comm } if lock == self.lock => {
                self.tasks.insert(tid, (pid, comm.clone()));
                self.holds.push(Hold {
                    tid,
                    pid,
                    comm,
                    role: Role::Reader,
                    start: ts,
                    end: None,
                    approx: false,
                });
            }
            Kind::ReadReleased { lock } if lock == self.lock => {
                self.close_hold(tid, Role::Reader, ts)
            }
            Kind::ReadFailed { lock } if lock == self.lock => {
                if let Some(i) = self.holds.iter().rposition(|h| {
                    h.tid == tid && h.role == Role::Reader && h.end.is_none() && !h.approx
                }) {
                    self.holds.remove(i);
                }
            }
            Kind::WriteWait {
                lock,
                pid,
                comm,
                stack,
            } if lock == self.lock => {
                self.tasks.insert(tid, (pid, comm.clone()));
                self.waits_open.insert(
                    tid,
                    OpenWait {
                        pid,
                        comm,
                        stack,
                        start: ts,
                    },
                );
            }
            Kind::WriteAcquired { lock } if lock == self.lock => self.end_wait(tid, ts),
            Kind::WriteReleased { lock } if lock == self.lock => {
                self.close_hold(tid, Role::Writer, ts)
            }
            Kind::ShrinkStart {
                shrinker,
                to_scan,
                pid,
                comm,
            } => {
                self.tasks.insert(tid, (pid, comm.clone()));
                let opened_hold = self.holds_from_shrinkers
                    && !self
                        .holds
                        .iter()
                        .any(|h| h.tid == tid && h.role == Role::Reader && h.end.is_none());
                if opened_hold {
                    self.holds.push(Hold {
                        tid,
                        pid,
                        comm,
                        role: Role::Reader,
                        start: ts,
                        end: None,
                        approx: true,
                    });
                }
                self.shrinks.push(Shrink {
                    tid,
                    name: shrinker,
                    to_scan,
                    freed: 0,
                    start: ts,
                    end: None,
                    opened_hold,
                });
            }
            Kind::ShrinkEnd { freed } => {
                if let Some(s) = self
                    .shrinks
                    .iter_mut()
                    .rev()
                    .find(|s| s.tid == tid && s.end.is_none())
                {
                    s.end = Some(ts);
                    s.freed = freed;
                    if s.opened_hold {
                        self.close_hold(tid, Role::Reader, ts);
                    }
                }
            }
            Kind::OffCpu => self.off.push((tid, ts, None)),
            Kind::OnCpu => {
                if let Some(o) = self
                    .off
                    .iter_mut()
                    .rev()
                    .find(|o| o.0 == tid && o.2.is_none())
                {
                    o.2 = Some(ts);
                }
            }
            Kind::MountStart {
                op,
                fstype,
                pid,
                comm,
            } => {
                self.tasks.insert(tid, (pid, comm.clone()));
                self.mounts_open.insert(
                    tid,
                    OpenMount {
                        op,
                        fstype,
                        pid,
                        comm,
                        start: ts,
                        phase_open: Vec::new(),
                        phase_ns: HashMap::new(),
                        lock_wait_ns: 0,
                    },
                );
            }
            Kind::PhaseStart { phase } => {
                if let Some(m) = self.mounts_open.get_mut(&tid) {
                    m.phase_open.push((phase, ts));
                }
            }
            Kind::PhaseEnd { phase } => {
                if let Some(m) = self.mounts_open.get_mut(&tid) {
                    if let Some(i) = m.phase_open.iter().rposition(|p| p.0 == phase) {
                        let (_, start) = m.phase_open.remove(i);
                        // Only outermost phases count, so that phases never overlap.
                        if m.phase_open.is_empty() {
                            *m.phase_ns.entry(phase).or_default() += ts.saturating_sub(start);
                        }
                    }
                }
            }
            Kind::MountFstype { fstype } => {
                if let Some(m) = self.mounts_open.get_mut(&tid) {
                    m.fstype = fstype;
                }
            }
            Kind::MountEnd { ret } => self.end_mount(tid, ts, ret),
            Kind::MountDone {
                ret,
                fstype,
                phase_ns,
            } => {
                if let Some(m) = self.mounts_open.get_mut(&tid) {
                    if !fstype.is_empty() {
                        m.fstype = fstype;
                    }
                    let phases = [
                        Phase::AllocSuper,
                        Phase::ShrinkerRegister,
                        Phase::ShrinkerUnregister,
                    ];
                    for (p, ns) in phases.into_iter().zip(phase_ns) {
                        if ns > 0 {
                            *m.phase_ns.entry(p).or_default() += ns;
                        }
                    }
                }
                self.end_mount(tid, ts, ret)
            }
            // Events on other locks.
            _ => {}
        }
        self.events += 1;
        if self.events & 4095 == 0 {
            self.prune();
        }
    }

    fn close_hold(&mut self, tid: u32, role: Role, ts: u64) {
        if let Some(h) = self
            .holds
            .iter_mut()
            .rev()
            .find(|h| h.tid == tid && h.role == role && h.end.is_none())
        {
            h.end = Some(ts);
        }
        // A release without an acquire (the hold began before the trace): nothing to close.
    }

    fn end_wait(&mut self, tid: u32, ts: u64) {
        let (pid, comm) = self.task(tid);
        // The writer holds the lock from now on (a holder for later waiters).
        if self.writer_releases {
            self.holds.push(Hold {
                tid,
                pid,
                comm,
                role: Role::Writer,
                start: ts,
                end: None,
                approx: false,
            });
        }
        let Some(w) = self.waits_open.remove(&tid) else {
            return;
        };
        let d = ts.saturating_sub(w.start);
        self.all_waits += 1;
        self.all_wait_ns += d;
        let mut in_mount = None;
        if let Some(m) = self.mounts_open.get_mut(&tid) {
            m.lock_wait_ns += d;
            in_mount = Some(format!("{} {}", m.fstype, m.op.name()));
        }
        if d < self.min_wait_ns {
            return;
        }
        let (holders, attributed) = self.holders(tid, w.start, ts);
        self.waits.push(Wait {
            waiter_comm: w.comm,
            waiter_pid: w.pid,
            waiter_tid: tid,
            t_s: self.t_s(w.start),
            wait_ms: ms(d),
            in_mount,
            stack: w.stack,
            attributed_ms: ms(attributed),
            holders,
        });
    }

    /// Holders of the lock during [ws, we] other than `waiter`, and the covered time.
    fn holders(&self, waiter: u32, ws: u64, we: u64) -> (Vec<Holder>, u64) {
        let mut by_task: BTreeMap<(u32, Role), Holder> = BTreeMap::new();
        let mut spans = Vec::new();
        let mut shrink_by_task: HashMap<(u32, Role), BTreeMap<String, ShrinkerTime>> =
            HashMap::new();
        for h in &self.holds {
            if h.tid == waiter {
                continue;
            }
            let (os, oe) = (h.start.max(ws), h.end.unwrap_or(we).min(we));
            if oe <= os {
                continue;
            }
            spans.push((os, oe));
            let off = self.overlap_off(h.tid, os, oe);
            let e = by_task.entry((h.tid, h.role)).or_insert_with(|| Holder {
                comm: h.comm.clone(),
                pid: h.pid,
                tid: h.tid,
                role: h.role,
                hold_ms: 0.0,
                on_cpu_ms: 0.0,
                off_cpu_ms: 0.0,
                shrinker: None,
                shrinkers: Vec::new(),
                approximate: false,
            });
            e.approximate |= h.approx;
            e.hold_ms += ms(oe - os);
            e.off_cpu_ms += ms(off);
            e.on_cpu_ms += ms(oe - os - off);
            let per = shrink_by_task.entry((h.tid, h.role)).or_default();
            for s in self.shrinks.iter().filter(|s| s.tid == h.tid) {
                let (ss, se) = (s.start.max(os), s.end.unwrap_or(oe).min(oe));
                if se <= ss {
                    continue;
                }
                let t = per.entry(s.name.clone()).or_insert_with(|| ShrinkerTime {
                    name: s.name.clone(),
                    calls: 0,
                    ms: 0.0,
                    to_scan: 0,
                    freed: 0,
                });
                t.calls += 1;
                t.ms += ms(se - ss);
                t.to_scan += s.to_scan;
                t.freed += s.freed;
            }
        }
        let mut holders: Vec<Holder> = by_task
            .into_iter()
            .map(|(k, mut h)| {
                let mut s: Vec<ShrinkerTime> = shrink_by_task
                    .remove(&k)
                    .unwrap_or_default()
                    .into_values()
                    .collect();
                s.sort_by(|a, b| b.ms.total_cmp(&a.ms));
                h.shrinker = s.first().map(|s| s.name.clone());
                h.shrinkers = s;
                h
            })
            .collect();
        holders.sort_by(|a, b| b.hold_ms.total_cmp(&a.hold_ms));
        (holders, union_len(&mut spans))
    }

    /// Off-CPU time of `tid` inside [s, e].
    fn overlap_off(&self, tid: u32, s: u64, e: u64) -> u64 {
        self.off
            .iter()
            .filter(|o| o.0 == tid)
            .map(|o| {
                let (os, oe) = (o.1.max(s), o.2.unwrap_or(e).min(e));
                oe.saturating_sub(os)
            })
            .sum()
    }

    fn end_mount(&mut self, tid: u32, ts: u64, ret: i64) {
        let Some(m) = self.mounts_open.remove(&tid) else {
            return;
        };
        let total = ts.saturating_sub(m.start);
        let m = OpenMount {
            // An umount that ended no superblock (or the type was not observable).
            fstype: if m.fstype.is_empty() {
                "?".into()
            } else {
                m.fstype
            },
            ..m
        };
        let g = self.groups.entry((m.op, m.fstype.clone())).or_default();
        g.durations_ns.push(total);
        if ret < 0 {
            g.failed += 1;
        }
        for (p, v) in &m.phase_ns {
            *g.phase_ns.entry(*p).or_default() += v;
        }
        g.lock_wait_ns += m.lock_wait_ns;
        let phase = |p| ms(m.phase_ns.get(&p).copied().unwrap_or(0));
        let rec = MountRecord {
            op: m.op,
            fstype: m.fstype.clone(),
            comm: m.comm.clone(),
            pid: m.pid,
            t_s: self.t_s(m.start),
            total_ms: ms(total),
            alloc_super_ms: phase(Phase::AllocSuper),
            shrinker_register_ms: phase(Phase::ShrinkerRegister),
            shrinker_unregister_ms: phase(Phase::ShrinkerUnregister),
            lock_wait_ms: ms(m.lock_wait_ns),
            ret,
        };
        if self.slowest.len() < KEEP_SLOWEST
            || rec.total_ms > self.slowest.last().map_or(0.0, |r| r.total_ms)
        {
            self.slowest.push(rec);
            self.slowest
                .sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
            self.slowest.truncate(KEEP_SLOWEST);
        }
    }

    /// Drop what no future wait can overlap.
    fn prune(&mut self) {
        let horizon = self
            .waits_open
            .values()
            .map(|w| w.start)
            .min()
            .unwrap_or(self.last_ts);
        self.holds
            .retain(|h| !matches!(h.end, Some(e) if e < horizon));
        self.shrinks
            .retain(|s| !matches!(s.end, Some(e) if e < horizon));
        self.off.retain(|o| !matches!(o.2, Some(e) if e < horizon));
    }

    /// The analysis so far: summary, per-group mount stats, slowest mounts, listed waits.
    pub fn finish(&self) -> (Summary, Vec<MountStats>, Vec<MountRecord>, Vec<Wait>) {
        let mut mounts = Vec::new();
        let (mut n, mut total_ns, mut wait_ns) = (0u64, 0u64, 0u64);
        for ((op, fstype), g) in &self.groups {
            let mut d = g.durations_ns.clone();
            d.sort_unstable();
            let sum: u64 = d.iter().sum();
            n += d.len() as u64;
            total_ns += sum;
            wait_ns += g.lock_wait_ns;
            let phase = |p| g.phase_ns.get(&p).copied().unwrap_or(0);
            let phases = phase(Phase::AllocSuper)
                + phase(Phase::ShrinkerRegister)
                + phase(Phase::ShrinkerUnregister);
            mounts.push(MountStats {
                op: *op,
                fstype: fstype.clone(),
                n: d.len() as u64,
                failed: g.failed,
                total_ms: ms(sum),
                p50_ms: ms(nearest_rank(&d, 0.50)),
                p99_ms: ms(nearest_rank(&d, 0.99)),
                max_ms: ms(d.last().copied().unwrap_or(0)),
                hist: histogram(&d),
                alloc_super_ms: ms(phase(Phase::AllocSuper)),
                shrinker_register_ms: ms(phase(Phase::ShrinkerRegister)),
                shrinker_unregister_ms: ms(phase(Phase::ShrinkerUnregister)),
                rest_ms: ms(sum.saturating_sub(phases)),
                lock_wait_ms: ms(g.lock_wait_ns),
            });
        }
        let mut waits = self.waits.clone();
        waits.sort_by(|a, b| b.wait_ms.total_cmp(&a.wait_ms));
        let mut holders: BTreeMap<String, TopHolder> = BTreeMap::new();
        let mut shrinkers: BTreeMap<String, TopShrinker> = BTreeMap::new();
        for w in &waits {
            for h in &w.holders {
                let t = holders.entry(h.comm.clone()).or_insert_with(|| TopHolder {
                    comm: h.comm.clone(),
                    waits: 0,
                    hold_ms: 0.0,
                });
                t.waits += 1;
                t.hold_ms += h.hold_ms;
                for s in &h.shrinkers {
                    let t = shrinkers
                        .entry(s.name.clone())
                        .or_insert_with(|| TopShrinker {
                            name: s.name.clone(),
                            calls: 0,
                            ms: 0.0,
                            freed: 0,
                        });
                    t.calls += s.calls;
                    t.ms += s.ms;
                    t.freed += s.freed;
                }
            }
        }
        let mut top_holders: Vec<TopHolder> = holders.into_values().collect();
        top_holders.sort_by(|a, b| b.hold_ms.total_cmp(&a.hold_ms));
        top_holders.truncate(5);
        let mut top_shrinkers: Vec<TopShrinker> = shrinkers.into_values().collect();
        top_shrinkers.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        top_shrinkers.truncate(5);
        let summary = Summary {
            mounts: n,
            mount_ms: ms(total_ns),
            mount_lock_wait_ms: ms(wait_ns),
            lock_wait_share: if total_ns == 0 {
                0.0
            } else {
                wait_ns as f64 / total_ns as f64
            },
            all_waits: self.all_waits,
            all_wait_ms: ms(self.all_wait_ns),
            waits: waits.len() as u64,
            wait_ms: waits.iter().map(|w| w.wait_ms).sum::<f64>() + 0.0,
            attributed_ms: waits.iter().map(|w| w.attributed_ms).sum::<f64>() + 0.0,
            top_holders,
            top_shrinkers,
        };
        (summary, mounts, self.slowest.clone(), waits)
    }
}

/// Total length of the union of intervals.
fn union_len(spans: &mut [(u64, u64)]) -> u64 {
    spans.sort_unstable();
    let mut total = 0;
    let mut cur: Option<(u64, u64)> = None;
    for &(s, e) in spans.iter() {
        match cur {
            Some((cs, ce)) if s <= ce => cur = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                cur = Some((s, e));
            }
            None => cur = Some((s, e)),
        }
    }
    total + cur.map_or(0, |(s, e)| e - s)
}

/// Nearest-rank percentile of sorted values.
fn nearest_rank(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Log2 buckets from 16 µs up; only up to the largest non-empty one.
fn histogram(sorted: &[u64]) -> Vec<Bucket> {
    let Some(&max) = sorted.last() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut le: u64 = 16_000;
    let mut i = 0;
    loop {
        let start = i;
        while i < sorted.len() && sorted[i] <= le {
            i += 1;
        }
        out.push(Bucket {
            le_ms: ms(le),
            n: (i - start) as u64,
        });
        if le >= max {
            return out;
        }
        le *= 2;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const LOCK: u64 = 0xffff_ffff_82b5_f8a0;
    const MS: u64 = 1_000_000;

    fn ev(t_ms: f64, tid: u32, kind: Kind) -> Event {
        Event {
            ts_ns: (t_ms * MS as f64).round() as u64,
            tid,
            kind,
        }
    }

    fn read(lock: u64, comm: &str, pid: u32) -> Kind {
        Kind::ReadAcquired {
            lock,
            pid,
            comm: comm.into(),
        }
    }

    /// kswapd0 (tid 45) holds the lock for reading from 100 ms to 1500 ms, running
    /// super_cache_scan for most of it; an overlay mount by strata (tid 311) waits in
    /// alloc_super from 200 ms to 1501 ms. Plus noise: another rwsem's up_read by kswapd,
    /// a failed trylock (no event), a short tmpfs mount without a wait.
    pub fn stall_events() -> Vec<Event> {
        let other_lock = 0xffff_8880_1234_0000;
        vec![
            ev(
                0.0,
                311,
                Kind::MountStart {
                    op: MountOp::Mount,
                    fstype: "tmpfs".into(),
                    pid: 311,
                    comm: "strata".into(),
                },
            ),
            ev(
                0.1,
                311,
                Kind::PhaseStart {
                    phase: Phase::AllocSuper,
                },
            ),
            ev(
                0.2,
                311,
                Kind::WriteWait {
                    lock: LOCK,
                    pid: 311,
                    comm: "strata".into(),
                    stack: vec![],
                },
            ),
            ev(0.3, 311, Kind::WriteAcquired { lock: LOCK }),
            ev(0.35, 311, Kind::WriteReleased { lock: LOCK }),
            ev(
                0.4,
                311,
                Kind::PhaseEnd {
                    phase: Phase::AllocSuper,
                },
            ),
            ev(0.5, 311, Kind::MountEnd { ret: 0 }),
            ev(100.0, 45, read(LOCK, "kswapd0", 45)),
            ev(
                110.0,
                45,
                Kind::ShrinkStart {
                    shrinker: "ext4_es_scan".into(),
                    to_scan: 128,
                    pid: 45,
                    comm: "kswapd0".into(),
                },
            ),
            ev(150.0, 45, Kind::ShrinkEnd { freed: 100 }),
            ev(
                160.0,
                45,
                Kind::ShrinkStart {
                    shrinker: "super_cache_scan".into(),
                    to_scan: 2_500_000,
                    pid: 45,
                    comm: "kswapd0".into(),
                },
            ),
            ev(
                190.0,
                311,
                Kind::MountStart {
                    op: MountOp::Mount,
                    fstype: "overlay".into(),
                    pid: 311,
                    comm: "strata".into(),
                },
            ),
            ev(
                195.0,
                311,
                Kind::PhaseStart {
                    phase: Phase::AllocSuper,
                },
            ),
            ev(
                200.0,
                311,
                Kind::WriteWait {
                    lock: LOCK,
                    pid: 311,
                    comm: "strata".into(),
                    stack: vec![
                        "down_write".into(),
                        "prealloc_shrinker".into(),
                        "alloc_super".into(),
                    ],
                },
            ),
            ev(300.0, 45, Kind::ReadReleased { lock: other_lock }),
            ev(400.0, 45, Kind::OffCpu),
            ev(500.0, 45, Kind::OnCpu),
            ev(1490.0, 45, Kind::ShrinkEnd { freed: 2_400_000 }),
            ev(1500.0, 45, Kind::ReadReleased { lock: LOCK }),
            ev(1501.0, 311, Kind::WriteAcquired { lock: LOCK }),
            ev(1501.1, 311, Kind::WriteReleased { lock: LOCK }),
            ev(
                1502.0,
                311,
                Kind::PhaseEnd {
                    phase: Phase::AllocSuper,
                },
            ),
            ev(
                1502.5,
                311,
                Kind::PhaseStart {
                    phase: Phase::ShrinkerRegister,
                },
            ),
            ev(
                1502.7,
                311,
                Kind::WriteWait {
                    lock: LOCK,
                    pid: 311,
                    comm: "strata".into(),
                    stack: vec![],
                },
            ),
            ev(1502.8, 311, Kind::WriteAcquired { lock: LOCK }),
            ev(1502.9, 311, Kind::WriteReleased { lock: LOCK }),
            ev(
                1503.0,
                311,
                Kind::PhaseEnd {
                    phase: Phase::ShrinkerRegister,
                },
            ),
            ev(1510.0, 311, Kind::MountEnd { ret: 0 }),
        ]
    }

    fn run(events: Vec<Event>) -> (Summary, Vec<MountStats>, Vec<MountRecord>, Vec<Wait>) {
        let mut a = Analyzer::new(LOCK, 10.0);
        for e in events {
            a.push(e);
        }
        a.finish()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn attributes_the_wait_to_the_reader_and_its_shrinker() {
        let (summary, _, _, waits) = run(stall_events());
        assert_eq!(waits.len(), 1, "{waits:#?}");
        let w = &waits[0];
        assert_eq!(w.waiter_comm, "strata");
        assert!(close(w.wait_ms, 1301.0), "{}", w.wait_ms);
        assert_eq!(w.in_mount.as_deref(), Some("overlay mount"));
        assert_eq!(w.holders.len(), 1);
        let h = &w.holders[0];
        assert_eq!(
            (h.comm.as_str(), h.pid, h.role),
            ("kswapd0", 45, Role::Reader)
        );
        // The hold ends at the up_read of shrinker_rwsem (1500), not of the other lock (300).
        assert!(close(h.hold_ms, 1300.0), "{}", h.hold_ms);
        assert!(close(h.off_cpu_ms, 100.0) && close(h.on_cpu_ms, 1200.0));
        assert_eq!(h.shrinker.as_deref(), Some("super_cache_scan"));
        let s = &h.shrinkers[0];
        assert!(close(s.ms, 1290.0), "{}", s.ms);
        assert_eq!((s.calls, s.to_scan, s.freed), (1, 2_500_000, 2_400_000));
        // ext4_es_scan ran before the wait began: not part of it.
        assert_eq!(h.shrinkers.len(), 1);
        assert!(close(w.attributed_ms, 1300.0));
        assert_eq!(summary.top_holders[0].comm, "kswapd0");
        assert_eq!(summary.top_shrinkers[0].name, "super_cache_scan");
        assert_eq!(summary.all_waits, 3);
        assert_eq!(summary.waits, 1);
    }

    #[test]
    fn mount_phases_and_lock_wait() {
        let (summary, mounts, slowest, _) = run(stall_events());
        assert_eq!(summary.mounts, 2);
        let ov = mounts.iter().find(|m| m.fstype == "overlay").unwrap();
        assert_eq!((ov.op, ov.n, ov.failed), (MountOp::Mount, 1, 0));
        assert!(close(ov.max_ms, 1320.0), "{}", ov.max_ms);
        assert!(close(ov.alloc_super_ms, 1307.0), "{}", ov.alloc_super_ms);
        assert!(close(ov.shrinker_register_ms, 0.5));
        assert!(close(ov.rest_ms, 1320.0 - 1307.0 - 0.5));
        assert!(close(ov.lock_wait_ms, 1301.1), "{}", ov.lock_wait_ms);
        assert_eq!(slowest[0].fstype, "overlay");
        // 1301.1 + 0.1 of 1320.5 ms of mount time.
        assert!(
            close(summary.lock_wait_share, 1301.2 / 1320.5),
            "{}",
            summary.lock_wait_share
        );
        let n: u64 = ov.hist.iter().map(|b| b.n).sum();
        assert_eq!(n, 1);
        assert!(ov.hist.last().unwrap().le_ms >= 1320.0);
    }

    #[test]
    fn failed_trylocks_and_other_locks_are_not_holds() {
        // A reader that never acquired shrinker_rwsem (its trylock failed: no event) and only
        // releases some other rwsem is not a holder; the wait is then unattributed.
        let evs = vec![
            ev(
                0.0,
                7,
                Kind::WriteWait {
                    lock: LOCK,
                    pid: 7,
                    comm: "mount".into(),
                    stack: vec![],
                },
            ),
            ev(1.0, 9, read(0x1000, "kswapd0", 9)),
            ev(30.0, 9, Kind::ReadReleased { lock: 0x1000 }),
            ev(50.0, 7, Kind::WriteAcquired { lock: LOCK }),
        ];
        let (s, _, _, waits) = run(evs);
        assert_eq!(waits[0].holders.len(), 0);
        assert_eq!(waits[0].attributed_ms, 0.0);
        assert_eq!(s.attributed_ms, 0.0);
    }

    #[test]
    fn other_writers_and_overlapping_readers_are_merged() {
        let evs = vec![
            ev(0.0, 1, read(LOCK, "kswapd0", 1)),
            ev(5.0, 2, read(LOCK, "cc1", 2)),
            ev(
                10.0,
                3,
                Kind::WriteWait {
                    lock: LOCK,
                    pid: 3,
                    comm: "umount".into(),
                    stack: vec![],
                },
            ),
            ev(
                12.0,
                4,
                Kind::WriteWait {
                    lock: LOCK,
                    pid: 4,
                    comm: "mount".into(),
                    stack: vec![],
                },
            ),
            ev(40.0, 1, Kind::ReadReleased { lock: LOCK }),
            ev(60.0, 2, Kind::ReadReleased { lock: LOCK }),
            ev(60.0, 3, Kind::WriteAcquired { lock: LOCK }),
            ev(90.0, 3, Kind::WriteReleased { lock: LOCK }),
            ev(90.0, 4, Kind::WriteAcquired { lock: LOCK }),
        ];
        let (s, _, _, waits) = run(evs);
        assert_eq!(waits.len(), 2);
        // mount waited 78 ms: readers 12..60, then umount as writer 60..90.
        let m = waits.iter().find(|w| w.waiter_comm == "mount").unwrap();
        assert!(close(m.wait_ms, 78.0));
        assert!(close(m.attributed_ms, 78.0), "{}", m.attributed_ms);
        let roles: Vec<_> = m
            .holders
            .iter()
            .map(|h| (h.comm.as_str(), h.role))
            .collect();
        assert_eq!(
            roles,
            [
                ("cc1", Role::Reader),
                ("umount", Role::Writer),
                ("kswapd0", Role::Reader)
            ]
        );
        assert_eq!(s.waits, 2);
        assert_eq!(s.top_holders[0].comm, "cc1");
    }

    #[test]
    fn short_waits_are_counted_not_listed_and_memory_is_pruned() {
        let mut a = Analyzer::new(LOCK, 10.0);
        let e = |ts_ns: u64, tid: u32, kind: Kind| Event { ts_ns, tid, kind };
        for i in 0..10_000u64 {
            let t = i * 100_000;
            a.push(e(t, 1, read(LOCK, "kswapd0", 1)));
            a.push(e(
                t + 10_000,
                1,
                Kind::ShrinkStart {
                    shrinker: "super_cache_scan".into(),
                    to_scan: 1,
                    pid: 45,
                    comm: "kswapd0".into(),
                },
            ));
            a.push(e(t + 20_000, 1, Kind::ShrinkEnd { freed: 1 }));
            a.push(e(t + 30_000, 1, Kind::ReadReleased { lock: LOCK }));
            if i % 100 == 0 {
                a.push(e(
                    t + 40_000,
                    2,
                    Kind::WriteWait {
                        lock: LOCK,
                        pid: 2,
                        comm: "mount".into(),
                        stack: vec![],
                    },
                ));
                a.push(e(t + 50_000, 2, Kind::WriteAcquired { lock: LOCK }));
                a.push(e(t + 60_000, 2, Kind::WriteReleased { lock: LOCK }));
            }
        }
        assert!(
            a.holds.len() < 5000 && a.shrinks.len() < 5000,
            "{}",
            a.holds.len()
        );
        let (s, _, _, waits) = a.finish();
        assert_eq!((s.all_waits, s.waits, waits.len()), (100, 0, 0));
        assert!(close(s.all_wait_ms, 1.0), "{}", s.all_wait_ms);
    }

    /// Tracepoint-only mode: the wait from lock:contention_begin/end, no reader lock events;
    /// the shrinker calls stand in for the reader's hold.
    #[test]
    fn tracepoint_mode_infers_reader_holds_from_shrinker_calls() {
        let shrink = |t, name: &str| {
            ev(
                t,
                45,
                Kind::ShrinkStart {
                    shrinker: name.into(),
                    to_scan: 1000,
                    pid: 45,
                    comm: "kswapd0".into(),
                },
            )
        };
        let evs = vec![
            shrink(0.0, "ext4_es_scan"),
            ev(5.0, 45, Kind::ShrinkEnd { freed: 10 }),
            shrink(6.0, "super_cache_scan"),
            ev(
                10.0,
                311,
                Kind::WriteWait {
                    lock: LOCK,
                    pid: 311,
                    comm: "strata".into(),
                    stack: vec![],
                },
            ),
            ev(800.0, 45, Kind::ShrinkEnd { freed: 900 }),
            ev(801.0, 311, Kind::WriteAcquired { lock: LOCK }),
        ];
        let mut exact = Analyzer::new(LOCK, 10.0);
        let mut approx = Analyzer::new(LOCK, 10.0).holds_from_shrinkers();
        for e in evs {
            exact.push(e.clone());
            approx.push(e);
        }
        // Without the inference nobody held the lock as far as the events say.
        assert_eq!(exact.finish().3[0].holders.len(), 0);
        let (_, _, _, waits) = approx.finish();
        let w = &waits[0];
        assert!(close(w.wait_ms, 791.0));
        let h = &w.holders[0];
        assert!(h.approximate);
        assert_eq!((h.comm.as_str(), h.role), ("kswapd0", Role::Reader));
        assert!(close(h.hold_ms, 790.0), "{}", h.hold_ms);
        assert_eq!(h.shrinker.as_deref(), Some("super_cache_scan"));
        assert!(close(w.attributed_ms, 790.0));
        let v = serde_json::to_value(h).unwrap();
        assert_eq!(v["approximate"], true);
    }

    #[test]
    fn percentiles_and_histogram() {
        let d: Vec<u64> = (1..=100).map(|i| i * MS).collect();
        assert_eq!(nearest_rank(&d, 0.5), 50 * MS);
        assert_eq!(nearest_rank(&d, 0.99), 99 * MS);
        let h = histogram(&d);
        assert_eq!(h.iter().map(|b| b.n).sum::<u64>(), 100);
        assert!(h.last().unwrap().le_ms >= 100.0);
        assert_eq!(union_len(&mut [(0, 10), (5, 20), (30, 40)]), 30);
    }
}
