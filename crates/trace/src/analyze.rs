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
    Bucket, Holder, MountOp, MountRecord, MountStats, MountTotal, Phase, Role, ShrinkerTime,
    Summary, TopHolder, TopShrinker, Wait,
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
    /// Default mode: a writer's whole wait, sent when it ended (the event's time): when it
    /// began, its kernel stack, the mount it waited in and the writer that held the lock when
    /// it began (`None`: readers held it).
    Wait {
        lock: u64,
        start_ns: u64,
        pid: u32,
        comm: String,
        stack: Vec<String>,
        in_mount: Option<(MountOp, String)>,
        owner: Option<Owner>,
    },
    /// Default mode: a reader's whole hold (one `shrink_slab()` that got the lock while a
    /// writer waited), ending at the event's time, and the CPU time the task got during it.
    Hold {
        lock: u64,
        start_ns: u64,
        pid: u32,
        comm: String,
        on_cpu_ns: u64,
    },
    /// Default mode: one shrinker callback that ran while a writer waited.
    ShrinkCall {
        start_ns: u64,
        shrinker: String,
        to_scan: i64,
        freed: i64,
        pid: u32,
        comm: String,
    },
    /// Default mode: a mount that took at least `--min-wait`, ending at the event's time.
    Mount {
        op: MountOp,
        fstype: String,
        start_ns: u64,
        ret: i64,
        lock_wait_ns: u64,
        pid: u32,
        comm: String,
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

/// The writer that held the lock when a wait began (from the lock's owner field).
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
}

/// Totals the default mode keeps in the kernel: every traced mount and writer wait, not only
/// the ones sent as records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Per op: calls, nanoseconds, nanoseconds waiting for the lock.
    pub mounts: Vec<(MountOp, u64, u64, u64)>,
    pub waits: u64,
    pub wait_ns: u64,
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
    /// CPU time the task got during the whole hold, when known without scheduler events.
    on_cpu_ns: Option<u64>,
    /// Neither on/off-CPU events nor a runtime counter: CPU time unknown.
    cpu_unknown: bool,
}

impl Hold {
    fn new(tid: u32, pid: u32, comm: String, role: Role, start: u64) -> Hold {
        Hold {
            tid,
            pid,
            comm,
            role,
            start,
            end: None,
            approx: false,
            on_cpu_ns: None,
            cpu_unknown: false,
        }
    }
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

/// A wait that ended, attributed once every hold that overlapped it can have arrived.
#[derive(Debug, Clone)]
struct EndedWait {
    tid: u32,
    w: OpenWait,
    end: u64,
    in_mount: Option<String>,
    /// Writers that held the lock during it, where their releases are not traced.
    writers: Vec<Hold>,
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
    waits_ended: Vec<EndedWait>,
    /// Where writers' releases are not traced: when each writer that waited got the lock.
    acquisitions: Vec<(u32, u64)>,
    mounts_open: HashMap<u32, OpenMount>,
    totals: Option<Totals>,
    groups: BTreeMap<(MountOp, String), Group>,
    slowest: Vec<MountRecord>,
    waits: Vec<Wait>,
    all_waits: u64,
    all_wait_ns: u64,
    events: u64,
}

const KEEP_SLOWEST: usize = 10;

/// A wait is attributed this long after it ended (in trace time): holds are sent when they
/// end, and the default mode sends a reader's hold when its shrink_slab() returns, shortly
/// after the release that let the writer in.
const SETTLE_NS: u64 = 2_000_000_000;
/// Holds, shrinker calls and off-CPU intervals are kept this long after they ended: a
/// default-mode wait arrives when it ends, after the holds it waited for.
const KEEP_NS: u64 = 5_000_000_000;

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
            waits_ended: Vec::new(),
            acquisitions: Vec::new(),
            mounts_open: HashMap::new(),
            totals: None,
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

    /// Mount and wait totals counted by the producer (default mode): the summary uses them
    /// instead of the mounts and waits seen as events.
    pub fn set_totals(&mut self, t: Totals) {
        self.totals = Some(t);
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
                self.holds.push(Hold::new(tid, pid, comm, Role::Reader, ts));
            }
            Kind::ReadReleased { lock } if lock == self.lock => {
                self.close_hold(tid, Role::Reader, ts)
            }
            Kind::ReadFailed { lock } if lock == self.lock => self.withdraw_hold(tid),
            Kind::WriteWait {
                lock,
                pid,
                comm,
                stack,
            } if lock == self.lock => {
                self.tasks.insert(tid, (pid, comm.clone()));
                let w = OpenWait {
                    pid,
                    comm,
                    stack,
                    start: ts,
                };
                self.waits_open.insert(tid, w);
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
            } => self.shrink_start(tid, ts, shrinker, to_scan, (pid, comm)),
            Kind::ShrinkEnd { freed } => self.shrink_end(tid, ts, freed),
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
                self.mounts_open
                    .insert(tid, OpenMount::new(op, fstype, pid, comm, ts));
            }
            Kind::PhaseStart { phase } => {
                if let Some(m) = self.mounts_open.get_mut(&tid) {
                    m.phase_open.push((phase, ts));
                }
            }
            Kind::PhaseEnd { phase } => {
                if let Some(m) = self.mounts_open.get_mut(&tid) {
                    m.phase_end(phase, ts);
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
                    m.add_phases(fstype, phase_ns);
                }
                self.end_mount(tid, ts, ret)
            }
            Kind::Wait {
                lock,
                start_ns,
                pid,
                comm,
                stack,
                in_mount,
                owner,
            } if lock == self.lock => {
                self.tasks.insert(tid, (pid, comm.clone()));
                let w = OpenWait {
                    pid,
                    comm,
                    stack,
                    start: start_ns,
                };
                let in_mount = in_mount.map(|(op, fstype)| mount_name(op, &fstype));
                let writers = self.writer_sequence(tid, owner, start_ns, ts);
                self.wait_ended(tid, w, ts, in_mount, writers);
            }
            Kind::Hold {
                lock,
                start_ns,
                pid,
                comm,
                on_cpu_ns,
            } if lock == self.lock => {
                self.tasks.insert(tid, (pid, comm.clone()));
                let mut h = Hold::new(tid, pid, comm, Role::Reader, start_ns);
                h.end = Some(ts);
                h.on_cpu_ns = Some(on_cpu_ns);
                self.holds.push(h);
            }
            Kind::ShrinkCall {
                start_ns,
                shrinker,
                to_scan,
                freed,
                pid,
                comm,
            } => {
                self.shrink_start(tid, start_ns, shrinker, to_scan, (pid, comm));
                self.shrink_end(tid, ts, freed);
            }
            Kind::Mount {
                op,
                fstype,
                start_ns,
                ret,
                lock_wait_ns,
                pid,
                comm,
            } => {
                let mut m = OpenMount::new(op, fstype, pid, comm, start_ns);
                m.lock_wait_ns = lock_wait_ns;
                self.record_mount(m, ts, ret);
            }
            // Events on other locks, and what only the naive report reads.
            _ => {}
        }
        self.events += 1;
        self.settle(self.last_ts.saturating_sub(SETTLE_NS));
        if self.events & 4095 == 0 {
            self.prune();
        }
    }

    /// tracefs: the `down_read_trylock` announced by the task's last open hold failed.
    fn withdraw_hold(&mut self, tid: u32) {
        if let Some(i) = self
            .holds
            .iter()
            .rposition(|h| h.tid == tid && h.role == Role::Reader && h.end.is_none() && !h.approx)
        {
            self.holds.remove(i);
        }
    }

    fn shrink_start(
        &mut self,
        tid: u32,
        ts: u64,
        name: String,
        to_scan: i64,
        (pid, comm): (u32, String),
    ) {
        self.tasks.insert(tid, (pid, comm.clone()));
        let opened_hold = self.holds_from_shrinkers
            && !self
                .holds
                .iter()
                .any(|h| h.tid == tid && h.role == Role::Reader && h.end.is_none());
        if opened_hold {
            let mut h = Hold::new(tid, pid, comm, Role::Reader, ts);
            h.approx = true;
            self.holds.push(h);
        }
        self.shrinks.push(Shrink {
            tid,
            name,
            to_scan,
            freed: 0,
            start: ts,
            end: None,
            opened_hold,
        });
    }

    fn shrink_end(&mut self, tid: u32, ts: u64, freed: i64) {
        let Some(s) = self
            .shrinks
            .iter_mut()
            .rev()
            .find(|s| s.tid == tid && s.end.is_none())
        else {
            return;
        };
        s.end = Some(ts);
        s.freed = freed;
        if s.opened_hold {
            self.close_hold(tid, Role::Reader, ts);
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

    /// Writers that held the lock during `waiter`'s wait [start, end] where writers' releases
    /// are not traced (default mode): the owner when it began until the next writer known to
    /// have waited got the lock, each such writer until the next one, the last until `end`.
    fn writer_sequence(
        &self,
        waiter: u32,
        owner: Option<Owner>,
        start: u64,
        end: u64,
    ) -> Vec<Hold> {
        let mut seq: Vec<Hold> = Vec::new();
        if let Some(o) = owner {
            seq.push(Hold::new(o.tid, o.pid, o.comm, Role::Writer, start));
        }
        for &(tid, at) in &self.acquisitions {
            if tid == waiter || at <= start || at >= end {
                continue;
            }
            let (pid, comm) = self.task(tid);
            seq.push(Hold::new(tid, pid, comm, Role::Writer, at));
        }
        seq.sort_by_key(|h| h.start);
        let ends: Vec<u64> = seq.iter().skip(1).map(|h| h.start).chain([end]).collect();
        for (h, e) in seq.iter_mut().zip(ends) {
            h.end = Some(e);
            h.cpu_unknown = true;
        }
        seq
    }

    /// Detail mode and tracefs: a writer got the lock it waited for.
    fn end_wait(&mut self, tid: u32, ts: u64) {
        let Some(w) = self.waits_open.remove(&tid) else {
            self.writer_acquired(tid, ts);
            return;
        };
        let d = ts.saturating_sub(w.start);
        let in_mount = self.mounts_open.get_mut(&tid).map(|m| {
            m.lock_wait_ns += d;
            mount_name(m.op, &m.fstype)
        });
        let writers = if self.writer_releases {
            Vec::new()
        } else {
            self.writer_sequence(tid, None, w.start, ts)
        };
        self.wait_ended(tid, w, ts, in_mount, writers);
    }

    /// A writer's wait ended at `ts`: counted now, attributed once holds that overlapped it
    /// can have arrived ([`SETTLE_NS`]).
    /// `writers`: holders for writing during it, where releases are not traced.
    fn wait_ended(
        &mut self,
        tid: u32,
        w: OpenWait,
        ts: u64,
        in_mount: Option<String>,
        writers: Vec<Hold>,
    ) {
        let d = ts.saturating_sub(w.start);
        self.all_waits += 1;
        self.all_wait_ns += d;
        self.writer_acquired(tid, ts);
        if d >= self.min_wait_ns {
            self.waits_ended.push(EndedWait {
                tid,
                w,
                end: ts,
                in_mount,
                writers,
            });
        }
    }

    /// `tid` holds the lock for writing from `ts` on: a holder for later waiters until its
    /// release, or where releases are not traced, a point in the sequence of writers.
    fn writer_acquired(&mut self, tid: u32, ts: u64) {
        if self.writer_releases {
            let (pid, comm) = self.task(tid);
            self.holds.push(Hold::new(tid, pid, comm, Role::Writer, ts));
        } else {
            self.acquisitions.push((tid, ts));
        }
    }

    /// Attribute the ended waits whose end is at or before `upto`.
    fn settle(&mut self, upto: u64) {
        if !self.waits_ended.iter().any(|w| w.end <= upto) {
            return;
        }
        let (ready, later): (Vec<EndedWait>, Vec<EndedWait>) =
            std::mem::take(&mut self.waits_ended)
                .into_iter()
                .partition(|w| w.end <= upto);
        self.waits_ended = later;
        for e in ready {
            let (holders, attributed) = self.holders(e.tid, e.w.start, e.end, &e.writers);
            self.waits.push(Wait {
                waiter_comm: e.w.comm,
                waiter_pid: e.w.pid,
                waiter_tid: e.tid,
                t_s: self.t_s(e.w.start),
                wait_ms: ms(e.end.saturating_sub(e.w.start)),
                in_mount: e.in_mount,
                stack: e.w.stack,
                attributed_ms: ms(attributed),
                holders,
            });
        }
    }

    /// Holders of the lock during [ws, we] other than `waiter`, and the covered time.
    /// `writers`: the writer sequence of that wait, where writers' releases are not traced.
    fn holders(&self, waiter: u32, ws: u64, we: u64, writers: &[Hold]) -> (Vec<Holder>, u64) {
        let mut by_task: BTreeMap<(u32, Role), Holder> = BTreeMap::new();
        let mut spans = Vec::new();
        let mut shrink_by_task: HashMap<(u32, Role), BTreeMap<String, ShrinkerTime>> =
            HashMap::new();
        for h in self.holds.iter().chain(writers) {
            if h.tid == waiter {
                continue;
            }
            let (os, oe) = (h.start.max(ws), h.end.unwrap_or(we).min(we));
            if oe <= os {
                continue;
            }
            spans.push((os, oe));
            let (on, off) = self.cpu_split(h, os, oe);
            let e = by_task
                .entry((h.tid, h.role))
                .or_insert_with(|| Holder::new(h.tid, h.pid, &h.comm, h.role));
            e.approximate |= h.approx;
            e.cpu_unknown |= h.cpu_unknown;
            e.hold_ms += ms(oe - os);
            e.off_cpu_ms += ms(off);
            e.on_cpu_ms += ms(on);
            let per = shrink_by_task.entry((h.tid, h.role)).or_default();
            self.shrinker_time(h.tid, os, oe, per);
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

    /// On- and off-CPU nanoseconds of hold `h` within [s, e]: from the runtime counter over
    /// the whole hold (scaled to the overlap) where the producer sent it, else from on/off-CPU
    /// events (none: all on-CPU; `cpu_unknown` holds: zero).
    fn cpu_split(&self, h: &Hold, s: u64, e: u64) -> (u64, u64) {
        let len = e - s;
        if h.cpu_unknown {
            return (0, 0);
        }
        match (h.on_cpu_ns, h.end) {
            (Some(on), Some(end)) if end > h.start => {
                let share = (on as f64 / (end - h.start) as f64).min(1.0);
                let on = (share * len as f64) as u64;
                (on, len - on)
            }
            _ => {
                let off = self.overlap_off(h.tid, s, e).min(len);
                (len - off, off)
            }
        }
    }

    /// Shrinker callbacks `tid` ran within [s, e], added to `per`.
    fn shrinker_time(&self, tid: u32, s: u64, e: u64, per: &mut BTreeMap<String, ShrinkerTime>) {
        for c in self.shrinks.iter().filter(|c| c.tid == tid) {
            let (cs, ce) = (c.start.max(s), c.end.unwrap_or(e).min(e));
            if ce <= cs {
                continue;
            }
            let t = per.entry(c.name.clone()).or_insert_with(|| ShrinkerTime {
                name: c.name.clone(),
                calls: 0,
                ms: 0.0,
                to_scan: 0,
                freed: 0,
            });
            t.calls += 1;
            t.ms += ms(ce - cs);
            t.to_scan += c.to_scan;
            t.freed += c.freed;
        }
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
        if let Some(m) = self.mounts_open.remove(&tid) {
            self.record_mount(m, ts, ret);
        }
    }

    /// A mount that ended at `end`: into its (op, type) group and the slowest list.
    fn record_mount(&mut self, mut m: OpenMount, end: u64, ret: i64) {
        let total = end.saturating_sub(m.start);
        if m.fstype.is_empty() {
            // An umount that ended no superblock (or the type was not observable).
            m.fstype = "?".into();
        }
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

    /// Drop what no future wait can overlap: everything that ended before the oldest open or
    /// unattributed wait began, and at least [`KEEP_NS`] ago.
    fn prune(&mut self) {
        let horizon = self
            .waits_open
            .values()
            .map(|w| w.start)
            .chain(self.waits_ended.iter().map(|w| w.w.start))
            .min()
            .unwrap_or(u64::MAX)
            .min(self.last_ts.saturating_sub(KEEP_NS));
        let old = |end: Option<u64>| matches!(end, Some(e) if e < horizon);
        self.holds.retain(|h| !old(h.end));
        self.shrinks.retain(|s| !old(s.end));
        self.off.retain(|o| !old(o.2));
        self.acquisitions.retain(|a| a.1 >= horizon);
    }

    /// The analysis: every wait attributed, mounts per (op, type), the slowest mounts.
    pub fn finish(mut self) -> Analysis {
        self.settle(u64::MAX);
        let mut mounts = Vec::new();
        let (mut n, mut total_ns, mut wait_ns) = (0u64, 0u64, 0u64);
        for ((op, fstype), g) in &self.groups {
            let stats = g.stats(*op, fstype);
            n += stats.n;
            total_ns += g.durations_ns.iter().sum::<u64>();
            wait_ns += g.lock_wait_ns;
            mounts.push(stats);
        }
        let mut mount_totals = Vec::new();
        let (mut all_waits, mut all_wait_ns) = (self.all_waits, self.all_wait_ns);
        if let Some(t) = &self.totals {
            (n, total_ns, wait_ns) = (0, 0, 0);
            for &(op, calls, ns, w) in &t.mounts {
                n += calls;
                total_ns += ns;
                wait_ns += w;
                mount_totals.push(MountTotal {
                    op,
                    n: calls,
                    total_ms: ms(ns),
                    lock_wait_ms: ms(w),
                });
            }
            (all_waits, all_wait_ns) = (t.waits, t.wait_ns);
        }
        let mut waits = std::mem::take(&mut self.waits);
        waits.sort_by(|a, b| b.wait_ms.total_cmp(&a.wait_ms));
        let (top_holders, top_shrinkers) = tops(&waits);
        let summary = Summary {
            mounts: n,
            mount_ms: ms(total_ns),
            mount_lock_wait_ms: ms(wait_ns),
            lock_wait_share: if total_ns == 0 {
                0.0
            } else {
                wait_ns as f64 / total_ns as f64
            },
            all_waits,
            all_wait_ms: ms(all_wait_ns),
            waits: waits.len() as u64,
            wait_ms: waits.iter().map(|w| w.wait_ms).sum::<f64>() + 0.0,
            attributed_ms: waits.iter().map(|w| w.attributed_ms).sum::<f64>() + 0.0,
            top_holders,
            top_shrinkers,
        };
        Analysis {
            summary,
            mounts,
            mount_totals,
            slowest_mounts: std::mem::take(&mut self.slowest),
            waits,
        }
    }
}

/// What [`Analyzer::finish`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Analysis {
    pub summary: Summary,
    /// Per (op, fstype): in default mode only the mounts sent as records (at least
    /// `--min-wait` long).
    pub mounts: Vec<MountStats>,
    /// Default mode: every traced mount, per op.
    pub mount_totals: Vec<MountTotal>,
    pub slowest_mounts: Vec<MountRecord>,
    pub waits: Vec<Wait>,
}

/// The holders and shrinkers that held the listed waits up longest.
fn tops(waits: &[Wait]) -> (Vec<TopHolder>, Vec<TopShrinker>) {
    let mut holders: BTreeMap<String, TopHolder> = BTreeMap::new();
    let mut shrinkers: BTreeMap<String, TopShrinker> = BTreeMap::new();
    for h in waits.iter().flat_map(|w| &w.holders) {
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
    let mut top_holders: Vec<TopHolder> = holders.into_values().collect();
    top_holders.sort_by(|a, b| b.hold_ms.total_cmp(&a.hold_ms));
    top_holders.truncate(5);
    let mut top_shrinkers: Vec<TopShrinker> = shrinkers.into_values().collect();
    top_shrinkers.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    top_shrinkers.truncate(5);
    (top_holders, top_shrinkers)
}

/// `overlay mount`, `tmpfs umount`, `umount` (type unknown)…
fn mount_name(op: MountOp, fstype: &str) -> String {
    if fstype.is_empty() {
        op.name().to_string()
    } else {
        format!("{fstype} {}", op.name())
    }
}

impl OpenMount {
    fn new(op: MountOp, fstype: String, pid: u32, comm: String, start: u64) -> OpenMount {
        OpenMount {
            op,
            fstype,
            pid,
            comm,
            start,
            phase_open: Vec::new(),
            phase_ns: HashMap::new(),
            lock_wait_ns: 0,
        }
    }

    /// Only outermost phases count, so that phases never overlap.
    fn phase_end(&mut self, phase: Phase, ts: u64) {
        if let Some(i) = self.phase_open.iter().rposition(|p| p.0 == phase) {
            let (_, start) = self.phase_open.remove(i);
            if self.phase_open.is_empty() {
                *self.phase_ns.entry(phase).or_default() += ts.saturating_sub(start);
            }
        }
    }

    /// The phases and type the eBPF producer sends with a mount's end.
    fn add_phases(&mut self, fstype: String, phase_ns: [u64; 3]) {
        if !fstype.is_empty() {
            self.fstype = fstype;
        }
        let phases = [
            Phase::AllocSuper,
            Phase::ShrinkerRegister,
            Phase::ShrinkerUnregister,
        ];
        for (p, ns) in phases.into_iter().zip(phase_ns) {
            if ns > 0 {
                *self.phase_ns.entry(p).or_default() += ns;
            }
        }
    }
}

impl Group {
    fn stats(&self, op: MountOp, fstype: &str) -> MountStats {
        let mut d = self.durations_ns.clone();
        d.sort_unstable();
        let sum: u64 = d.iter().sum();
        let phase = |p| self.phase_ns.get(&p).copied().unwrap_or(0);
        let phases = phase(Phase::AllocSuper)
            + phase(Phase::ShrinkerRegister)
            + phase(Phase::ShrinkerUnregister);
        MountStats {
            op,
            fstype: fstype.to_string(),
            n: d.len() as u64,
            failed: self.failed,
            total_ms: ms(sum),
            p50_ms: ms(nearest_rank(&d, 0.50)),
            p99_ms: ms(nearest_rank(&d, 0.99)),
            max_ms: ms(d.last().copied().unwrap_or(0)),
            hist: histogram(&d),
            alloc_super_ms: ms(phase(Phase::AllocSuper)),
            shrinker_register_ms: ms(phase(Phase::ShrinkerRegister)),
            shrinker_unregister_ms: ms(phase(Phase::ShrinkerUnregister)),
            rest_ms: ms(sum.saturating_sub(phases)),
            lock_wait_ms: ms(self.lock_wait_ns),
        }
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
        let a = a.finish();
        (a.summary, a.mounts, a.slowest_mounts, a.waits)
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
        // 20 s of trace: what ended more than KEEP_NS (5 s) ago is dropped.
        for i in 0..10_000u64 {
            let t = i * 2_000_000;
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
        let f = a.finish();
        let (s, waits) = (f.summary, f.waits);
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
        assert_eq!(exact.finish().waits[0].holders.len(), 0);
        let waits = approx.finish().waits;
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

    /// The stall of [`stall_events`] as the default mode reports it: whole intervals sent
    /// when they end, only what overlapped the wait, the reader's hold arriving after the
    /// wait it held up, totals counted in the kernel.
    pub fn default_mode_stall() -> Analyzer {
        let mut a = Analyzer::new(LOCK, 10.0).no_writer_releases();
        a.start_at(0);
        let call = |t_ms: f64, start_ms: f64, name: &str, to_scan, freed| {
            ev(
                t_ms,
                45,
                Kind::ShrinkCall {
                    start_ns: (start_ms * MS as f64) as u64,
                    shrinker: name.into(),
                    to_scan,
                    freed,
                    pid: 45,
                    comm: "kswapd0".into(),
                },
            )
        };
        let events = vec![
            call(1490.0, 160.0, "super_cache_scan", 2_500_000, 2_400_000),
            ev(
                1501.0,
                311,
                Kind::Wait {
                    lock: LOCK,
                    start_ns: 200 * MS,
                    pid: 311,
                    comm: "strata".into(),
                    stack: vec!["down_write".into(), "prealloc_shrinker".into()],
                    in_mount: Some((MountOp::Mount, "overlay".into())),
                    owner: None,
                },
            ),
            // shrink_slab() returns after up_read and cond_resched: after the writer got in.
            ev(
                1501.5,
                45,
                Kind::Hold {
                    lock: LOCK,
                    start_ns: 100 * MS,
                    pid: 45,
                    comm: "kswapd0".into(),
                    on_cpu_ns: 1_401_500_000 / 2,
                },
            ),
            ev(
                1510.0,
                311,
                Kind::Mount {
                    op: MountOp::Mount,
                    fstype: "overlay".into(),
                    start_ns: 190 * MS,
                    ret: 0,
                    lock_wait_ns: 1301 * MS,
                    pid: 311,
                    comm: "strata".into(),
                },
            ),
        ];
        for e in events {
            a.push(e);
        }
        a.set_totals(Totals {
            mounts: vec![
                (MountOp::Mount, 2, 1325 * MS, 1301 * MS),
                (MountOp::Umount, 1, MS, 0),
            ],
            waits: 3,
            wait_ns: 1302 * MS,
        });
        a
    }

    #[test]
    fn default_mode_attributes_the_stall_from_whole_intervals() {
        let f = default_mode_stall().finish();
        assert_eq!(f.waits.len(), 1, "{:#?}", f.waits);
        let w = &f.waits[0];
        assert!(close(w.wait_ms, 1301.0), "{}", w.wait_ms);
        assert_eq!(w.in_mount.as_deref(), Some("overlay mount"));
        assert_eq!(w.holders.len(), 1, "{:#?}", w.holders);
        let h = &w.holders[0];
        assert_eq!(
            (h.comm.as_str(), h.role, h.cpu_unknown),
            ("kswapd0", Role::Reader, false)
        );
        assert!(close(h.hold_ms, 1301.0), "{}", h.hold_ms);
        // Half the hold on CPU (its runtime counter), scaled to the overlap.
        assert!((h.on_cpu_ms - 650.5).abs() < 0.01, "{}", h.on_cpu_ms);
        assert_eq!(h.shrinker.as_deref(), Some("super_cache_scan"));
        assert_eq!(
            (h.shrinkers[0].to_scan, h.shrinkers[0].freed),
            (2_500_000, 2_400_000)
        );
        assert!(close(w.attributed_ms, 1301.0));
        // The summary counts every mount and wait, from the kernel's totals.
        assert_eq!((f.summary.mounts, f.summary.all_waits), (3, 3));
        assert!(close(f.summary.mount_lock_wait_ms, 1301.0));
        assert_eq!(f.mount_totals.len(), 2);
        assert_eq!(f.slowest_mounts[0].fstype, "overlay");
        assert!(close(f.slowest_mounts[0].total_ms, 1320.0));
        assert!(close(f.slowest_mounts[0].lock_wait_ms, 1301.0));
        // Only the recorded mount is in the per-type rows.
        assert_eq!(f.mounts.len(), 1);
    }

    #[test]
    fn default_mode_writers_hold_in_turn() {
        // mount B (tid 2) waits 5..30 ms behind writer A (tid 1, the owner); mount C (tid 3)
        // waits 10..50 behind A, then B.
        let mut a = Analyzer::new(LOCK, 1.0).no_writer_releases();
        let wait = |end: f64, tid: u32, start: u64, owner: Option<u32>| {
            ev(
                end,
                tid,
                Kind::Wait {
                    lock: LOCK,
                    start_ns: start * MS,
                    pid: tid,
                    comm: format!("m{tid}"),
                    stack: vec![],
                    in_mount: None,
                    owner: owner.map(|o| Owner {
                        tid: o,
                        pid: o,
                        comm: format!("m{o}"),
                    }),
                },
            )
        };
        a.push(wait(30.0, 2, 5, Some(1)));
        a.push(wait(50.0, 3, 10, Some(1)));
        let f = a.finish();
        let c = f.waits.iter().find(|w| w.waiter_comm == "m3").unwrap();
        let held: Vec<(&str, f64, bool)> = c
            .holders
            .iter()
            .map(|h| (h.comm.as_str(), h.hold_ms, h.cpu_unknown))
            .collect();
        assert_eq!(held, [("m1", 20.0, true), ("m2", 20.0, true)]);
        assert!(close(c.attributed_ms, 40.0));
        let b = f.waits.iter().find(|w| w.waiter_comm == "m2").unwrap();
        assert_eq!(b.holders.len(), 1);
        assert!(close(b.holders[0].hold_ms, 25.0));
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
