//! The eBPF producer: the CO-RE programs of `src/bpf/trace.bpf.c` (compiled by clang at build
//! time, embedded in the binary), loaded with libbpf, their ring buffer records turned into
//! [`Event`]s for the [`Analyzer`] — the same events and analysis as the tracefs producer.
//!
//! Programs come in groups; each kernel gets the groups it can load and attach, and the report
//! lists the others under `missing`:
//! - `reader`: `fexit/down_read_trylock` (successful trylocks of the lock only) and
//!   `fentry/up_read` (release matched by lock address): exact reader holds;
//! - `contention`: `lock:contention_begin/end` (5.19+): writers that wait, with the waiter's
//!   kernel stack (only contended writers pay for the stack walk); before 5.19,
//!   `writer_entry` (`fentry/down_write`) instead;
//! - `writer`: `fexit/down_write` and `fentry/up_write`: every writer's hold; where fentry is
//!   refused, reader holds are inferred from shrinker calls and writers are not holders;
//! - `shrink` (`vmscan:mm_shrink_slab_start/end`, the callback read from `struct shrinker`),
//!   `sched` (`sched_switch`, only for tasks holding the lock or shrinking), `syscalls`
//!   (mount, umount2, fsopen, fsconfig), `sb_end` (`deactivate_locked_super`: an umount's
//!   filesystem type and real end), and the mount phases (`alloc_super`, shrinker
//!   (un)registration under their ≤ 6.6 or 6.7+ names).
//!
//! [`Analyzer`]: crate::analyze::Analyzer

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, OpenObject};

use crate::analyze::{Event, Kind};
use crate::kallsyms::Symbolizer;
use crate::report::MountOp;

#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::expect_used,
    clippy::unwrap_used,
    unsafe_code,
    dead_code,
    non_camel_case_types,
    unused_imports
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/trace.skel.rs"));
}

struct Group {
    name: &'static str,
    progs: &'static [&'static str],
    /// Kernel functions the group attaches to (checked in BTF before loading).
    funcs: &'static [&'static str],
    what: &'static str,
}

const READER: &str = "reader";
const WRITER: &str = "writer";
const CONTENTION: &str = "contention";
const WRITER_ENTRY: &str = "writer_entry";
const SYSCALLS: &str = "syscalls";
const SYSCALLS_TP: &str = "syscalls_tp";

/// (group, its stand-in): the stand-in is loaded only where the group cannot be.
const FALLBACKS: &[(&str, &str)] = &[(CONTENTION, WRITER_ENTRY), (SYSCALLS, SYSCALLS_TP)];

fn is_fallback(name: &str) -> bool {
    FALLBACKS.iter().any(|(_, f)| *f == name)
}

const GROUPS: &[Group] = &[
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
        name: "shrink",
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

fn open_load<'o>(
    obj: &'o mut MaybeUninit<OpenObject>,
    lock: u64,
    naive: bool,
    progs: &BTreeSet<&str>,
) -> Result<skel::TraceSkel<'o>, String> {
    let open = skel::TraceSkelBuilder::default()
        .open(obj)
        .map_err(|e| format!("open the BPF object: {e}"))?;
    let mut open = open;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or("the BPF object has no .rodata")?;
    ro.target_lock = lock;
    ro.naive = naive;
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

fn progs_of<'a>(groups: impl IntoIterator<Item = &'a Group>) -> BTreeSet<&'static str> {
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

/// Which groups this kernel loads: all at once if it can, else each group alone to find the
/// ones it refuses (with the reason).
fn choose(lock: u64, naive: bool, missing: &mut Vec<String>) -> Vec<&'static Group> {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux")
        .ok()
        .and_then(|b| crate::btf::Btf::parse(&b).ok());
    let mut want: Vec<&'static Group> = Vec::new();
    let skip = skipped_groups();
    for g in GROUPS.iter().filter(|g| !is_fallback(g.name)) {
        if skip.iter().any(|s| s == g.name) {
            missing.push(format!("{}: skipped (STRATA_TRACE_SKIP)", g.what));
            continue;
        }
        let absent: Vec<&str> = g
            .funcs
            .iter()
            .copied()
            .filter(|f| btf.as_ref().is_some_and(|b| !b.has_func(f)))
            .collect();
        if absent.is_empty() {
            want.push(g);
        } else if !g.name.starts_with("register_") {
            // The (un)registration groups exist under one of two names: not a gap.
            missing.push(format!("{}: no {} in BTF", g.what, absent.join(", ")));
        }
    }
    let all = |w: &[&Group]| -> Result<(), String> {
        let mut obj = MaybeUninit::uninit();
        open_load(&mut obj, lock, naive, &progs_of(w.iter().copied())).map(drop)
    };
    if all(&want).is_ok() {
        return want;
    }
    let mut ok = Vec::new();
    for g in want {
        match all(&[g]) {
            Ok(()) => ok.push(g),
            Err(e) => missing.push(format!("{}: {e}", g.what)),
        }
    }
    for (group, stand_in) in FALLBACKS {
        if skip.iter().any(|s| s == group) || ok.iter().any(|g| g.name == *group) {
            continue;
        }
        if let Some(c) = GROUPS.iter().find(|g| g.name == *stand_in) {
            match all(&[c]) {
                Ok(()) => ok.push(c),
                Err(e) => missing.push(format!("{}: {e}", c.what)),
            }
        }
    }
    ok
}

/// The program groups this kernel loads (by name) and why the others are missing; loads and
/// unloads, attaches nothing. `lock` is only a filter constant here.
pub fn probe(lock: u64) -> (Vec<&'static str>, Vec<String>) {
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Warn, log_print)));
    let mut missing = Vec::new();
    let groups = choose(lock, false, &mut missing);
    (groups.iter().map(|g| g.name).collect(), missing)
}

/// One ring buffer record (layout of `struct event` / `struct stack_event`).
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    pub ts: u64,
    pub tid: u32,
    pub pid: u32,
    pub kind: u32,
    pub small: i32,
    pub a: u64,
    pub b: i64,
    pub comm: String,
    pub text: String,
    pub stack: Option<Vec<u64>>,
    /// Nanoseconds in each phase (alloc_super, shrinker register, unregister), in a mount's
    /// end record (`struct mount_done`).
    pub phases: Option<[u64; 3]>,
}

const EVENT_LEN: usize = 88;
/// `K_MOUNT_DONE`: a mount's end, with its phases and superblock type.
const MOUNT_DONE: u32 = 18;
const MAX_FRAMES: usize = 32;

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Decode a record; `None` for a short or unknown one.
pub fn decode(d: &[u8]) -> Option<Raw> {
    if d.len() < EVENT_LEN {
        return None;
    }
    let u64_at = |o: usize| u64::from_le_bytes(d[o..o + 8].try_into().unwrap_or([0; 8]));
    let u32_at = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap_or([0; 4]));
    let stack = (d.len() >= EVENT_LEN + 8 + 8 * MAX_FRAMES).then(|| {
        let n = (u64_at(EVENT_LEN) as i64).clamp(0, 8 * MAX_FRAMES as i64) as usize / 8;
        (0..n).map(|i| u64_at(EVENT_LEN + 8 + 8 * i)).collect()
    });
    Some(Raw {
        ts: u64_at(0),
        tid: u32_at(8),
        pid: u32_at(12),
        kind: u32_at(16),
        small: u32_at(20) as i32,
        a: u64_at(24),
        b: u64_at(32) as i64,
        comm: cstr(&d[40..56]),
        text: cstr(&d[56..88]),
        phases: (u32_at(16) == MOUNT_DONE && d.len() >= EVENT_LEN + 24).then(|| {
            [
                u64_at(EVENT_LEN),
                u64_at(EVENT_LEN + 8),
                u64_at(EVENT_LEN + 16),
            ]
        }),
        stack,
    })
}

/// Records → analyzer events (symbols resolved, writer waits paired).
pub struct Converter {
    lock: u64,
    /// fexit/down_write reports every writer's acquisition: contention_end is not needed.
    writer_exits: bool,
    sym: Symbolizer,
    names: HashMap<u64, String>,
    waiting: HashSet<u32>,
}

impl Converter {
    pub fn new(lock: u64, sym: Symbolizer, writer_exits: bool) -> Converter {
        Converter {
            lock,
            writer_exits,
            sym,
            names: HashMap::new(),
            waiting: HashSet::new(),
        }
    }

    fn stack(&self, ips: &[u64]) -> Vec<String> {
        let names: Vec<String> = ips.iter().map(|&ip| self.sym.name(ip)).collect();
        // The BPF program and its trampoline come first: not part of the kernel's stack.
        let skip = names
            .iter()
            .take_while(|n| {
                n.starts_with("bpf_")
                    || n.starts_with("__bpf")
                    || n.starts_with("__traceiter")
                    || n.starts_with("0x")
            })
            .count();
        // A function with a trampoline (fentry/fexit attached) shows twice around it.
        let mut out: Vec<String> = Vec::new();
        for n in &names[skip..] {
            if n.starts_with("bpf_trampoline_") || out.last() == Some(n) {
                continue;
            }
            out.push(n.clone());
        }
        out
    }

    pub fn convert(&mut self, r: Raw) -> Option<Event> {
        let lock = self.lock;
        let kind = match r.kind {
            1 => Kind::ReadAcquired {
                lock: r.a,
                pid: r.pid,
                comm: r.comm,
            },
            2 => Kind::ReadReleased { lock: r.a },
            3 => {
                self.waiting.insert(r.tid);
                Kind::WriteWait {
                    lock: r.a,
                    pid: r.pid,
                    comm: r.comm,
                    stack: self.stack(r.stack.as_deref().unwrap_or(&[])),
                }
            }
            4 => {
                self.waiting.remove(&r.tid);
                Kind::WriteAcquired { lock }
            }
            // contention_end also ends readers' contention: only a waiting writer acquires.
            17 if !self.writer_exits && self.waiting.remove(&r.tid) => Kind::WriteAcquired { lock },
            17 => return None,
            5 => Kind::WriteReleased { lock: r.a },
            6 => {
                let sym = &self.sym;
                let shrinker = self
                    .names
                    .entry(r.a)
                    .or_insert_with(|| sym.name(r.a))
                    .clone();
                Kind::ShrinkStart {
                    shrinker,
                    to_scan: r.b,
                    pid: r.pid,
                    comm: r.comm,
                }
            }
            7 => Kind::ShrinkEnd { freed: r.b },
            8 => Kind::OffCpu,
            9 => Kind::OnCpu,
            10 => Kind::MountStart {
                op: match r.small {
                    1 => MountOp::Umount,
                    2 => MountOp::Fsconfig,
                    _ => MountOp::Mount,
                },
                fstype: r.text,
                pid: r.pid,
                comm: r.comm,
            },
            MOUNT_DONE => Kind::MountDone {
                ret: r.b,
                fstype: r.text,
                phase_ns: r.phases.unwrap_or_default(),
            },
            15 => Kind::NaiveTry { ok: r.small != 0 },
            16 => Kind::NaiveUp {
                lock: r.a,
                stack: self.stack(r.stack.as_deref().unwrap_or(&[])),
            },
            _ => return None,
        };
        Some(Event {
            ts_ns: r.ts,
            tid: r.tid,
            kind,
        })
    }
}

/// Events from several CPUs arrive nearly, not exactly, in time order: hold them back for
/// `lag` and release them sorted.
#[derive(Default)]
pub struct Reorder {
    pending: Vec<Event>,
}

impl Reorder {
    pub fn push(&mut self, e: Event) {
        self.pending.push(e);
    }

    /// Events older than `upto` (all with `u64::MAX`), in time order.
    pub fn release(&mut self, upto: u64) -> Vec<Event> {
        self.pending.sort_by_key(|e| e.ts_ns);
        let n = self.pending.partition_point(|e| e.ts_ns <= upto);
        self.pending.drain(..n).collect()
    }
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// What [`run`] needs besides the kernel facts.
pub struct Options<'a> {
    pub duration: Option<Duration>,
    pub min_wait_ms: f64,
    pub naive: bool,
    pub stop: &'a AtomicBool,
}

/// Whether this kernel can run the eBPF producer at all (BTF present, lock address known).
pub fn available(kernel: &crate::check::KernelCheck) -> Result<u64, String> {
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(
            "no /sys/kernel/btf/vmlinux (kernel built without CONFIG_DEBUG_INFO_BTF)".into(),
        );
    }
    crate::tracefs::lock_addr(kernel)
}

/// Trace until `duration` has passed or `stop` is set, then build the report.
pub fn run(kernel: crate::check::KernelCheck, o: Options) -> io::Result<crate::report::Report> {
    let lock = available(&kernel).map_err(io::Error::other)?;
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Warn, log_print)));
    let mut missing = Vec::new();
    let groups = choose(lock, o.naive, &mut missing);
    let names: HashSet<&str> = groups.iter().map(|g| g.name).collect();
    let essential = names.contains(CONTENTION) || names.contains(WRITER_ENTRY);
    if !essential {
        return Err(io::Error::other(format!(
            "the eBPF producer cannot see writer waits on this kernel ({}); try --producer tracefs",
            missing.join("; ")
        )));
    }
    let mut obj = MaybeUninit::uninit();
    let skel = open_load(&mut obj, lock, o.naive, &progs_of(groups.iter().copied()))
        .map_err(|e| io::Error::other(format!("load the BPF programs: {e}")))?;
    let mut links: Vec<Link> = Vec::new();
    let mut attached: HashSet<&str> = HashSet::new();
    for g in &groups {
        let mut glinks = Vec::new();
        let mut err = None;
        for p in skel.object().progs_mut() {
            let name = p.name().to_string_lossy().to_string();
            if !g.progs.contains(&name.as_str()) {
                continue;
            }
            match p.attach() {
                Ok(l) => glinks.push(l),
                Err(e) => {
                    err = Some(format!("{name}: {e}"));
                    break;
                }
            }
        }
        match err {
            None => {
                links.extend(glinks);
                attached.insert(g.name);
            }
            Some(e) => missing.push(format!("{}: attach {e}", g.what)),
        }
    }
    // After attaching (the programs and trampolines are in kallsyms only then, and show in
    // stacks) and before announcing: reading kallsyms takes seconds in a TCG guest, and a
    // benchmark that waits for the announcement should measure the steady state. Records wait
    // in the ring buffer meanwhile.
    let sym = Symbolizer::load();
    let mut analyzer = crate::analyze::Analyzer::new(lock, o.min_wait_ms);
    if !attached.contains(READER) {
        analyzer = analyzer.holds_from_shrinkers();
        missing.push(
            "reader holds inferred from shrinker calls (no fexit/fentry on the lock functions): \
             hold times are lower bounds"
                .into(),
        );
    }
    if !attached.contains(WRITER) {
        analyzer = analyzer.no_writer_releases();
        missing.push(
            "writer holds not seen (no fentry/up_write): only readers are listed as holders".into(),
        );
    }
    if o.naive && !attached.contains(READER) {
        missing.push("--naive needs the reader group (fexit/fentry): no naive report".into());
    }
    let records: Rc<RefCell<Vec<Vec<u8>>>> = Rc::new(RefCell::new(Vec::new()));
    let sink = records.clone();
    let mut rb = libbpf_rs::RingBufferBuilder::new();
    rb.add(&skel.maps.events, move |d: &[u8]| {
        sink.borrow_mut().push(d.to_vec());
        0
    })
    .map_err(|e| io::Error::other(format!("BPF ring buffer: {e}")))?;
    let rb = rb
        .build()
        .map_err(|e| io::Error::other(format!("BPF ring buffer: {e}")))?;

    let start = Instant::now();
    let t0 = monotonic_ns();
    let mut sampler = crate::vmstat::Sampler::new(start);
    crate::announce("eBPF", o.duration);
    analyzer.start_at(t0);
    let mut naive = (o.naive && attached.contains(READER)).then(|| {
        let mut n = crate::naive::Naive::default();
        n.start_at(t0);
        n
    });
    let mut conv = Converter::new(lock, sym, attached.contains(WRITER));
    let mut reorder = Reorder::default();
    let mut next_sample = start + Duration::from_secs(1);
    let mut feed = |evs: Vec<Event>, a: &mut crate::analyze::Analyzer| {
        for e in evs {
            if let Some(n) = naive.as_mut() {
                n.push(&e);
            }
            a.push(e);
        }
    };
    const LAG_NS: u64 = 200_000_000;
    loop {
        let done =
            o.stop.load(Ordering::Relaxed) || o.duration.is_some_and(|d| start.elapsed() >= d);
        // The programs never wake us (see trace.bpf.c): drain on a timer.
        std::thread::sleep(Duration::from_millis(50));
        rb.consume()
            .map_err(|e| io::Error::other(format!("BPF ring buffer: {e}")))?;
        for d in records.borrow_mut().drain(..) {
            if let Some(e) = decode(&d).and_then(|r| conv.convert(r)) {
                reorder.push(e);
            }
        }
        feed(
            reorder.release(monotonic_ns().saturating_sub(LAG_NS)),
            &mut analyzer,
        );
        if Instant::now() >= next_sample {
            sampler.sample();
            next_sample += Duration::from_secs(1);
        }
        if done {
            break;
        }
    }
    drop(links);
    let _ = rb.consume();
    for d in records.borrow_mut().drain(..) {
        if let Some(e) = decode(&d).and_then(|r| conv.convert(r)) {
            reorder.push(e);
        }
    }
    feed(reorder.release(u64::MAX), &mut analyzer);
    let dropped = skel.maps.bss_data.as_deref().map_or(0, |b| b.dropped);
    if dropped > 0 {
        missing.push(format!(
            "{dropped} events lost (BPF ring buffer full): holds or waits may be incomplete"
        ));
    }
    let mut report = crate::report::Report::assemble(
        kernel,
        "ebpf",
        start.elapsed().as_secs_f64(),
        o.min_wait_ms,
        missing,
        analyzer.finish(),
        std::mem::take(&mut sampler.samples),
    );
    report.naive = naive.map(|n| n.finish(&report.waits));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u32, tid: u32, ts: u64, a: u64, b: i64, small: i32, text: &str) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&ts.to_le_bytes());
        d.extend_from_slice(&tid.to_le_bytes());
        d.extend_from_slice(&(tid + 1000).to_le_bytes());
        d.extend_from_slice(&kind.to_le_bytes());
        d.extend_from_slice(&small.to_le_bytes());
        d.extend_from_slice(&a.to_le_bytes());
        d.extend_from_slice(&b.to_le_bytes());
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"sh\0\0");
        d.extend_from_slice(&comm);
        let mut t = [0u8; 32];
        t[..text.len()].copy_from_slice(text.as_bytes());
        d.extend_from_slice(&t);
        d
    }

    fn with_stack(mut d: Vec<u8>, ips: &[u64]) -> Vec<u8> {
        d.extend_from_slice(&((ips.len() * 8) as i64).to_le_bytes());
        for i in 0..MAX_FRAMES {
            d.extend_from_slice(&ips.get(i).copied().unwrap_or(0).to_le_bytes());
        }
        d
    }

    const LOCK: u64 = 0xffffffff82b5f8a0;
    const SYMS: &str = "ffffffffc0000000 t bpf_prog_abc_fentry_down_write\t[bpf]\n\
ffffffffc0001000 t bpf_trampoline_6442\t[bpf]\n\
ffffffff81100000 T down_write\nffffffff81200000 T prealloc_shrinker\n\
ffffffff81300000 T alloc_super\nffffffff81400000 t super_cache_scan\n";

    #[test]
    fn a_mount_end_record_carries_its_phases_and_type() {
        let mut c = Converter::new(LOCK, Symbolizer::from_text(SYMS), false);
        let mut d = record(MOUNT_DONE, 7, 500, 0, -16, 1, "tmpfs");
        for ns in [1_000u64, 0, 2_500] {
            d.extend_from_slice(&ns.to_le_bytes());
        }
        let r = decode(&d).unwrap();
        assert_eq!(r.phases, Some([1_000, 0, 2_500]));
        assert_eq!(r.stack, None);
        let e = c.convert(r).unwrap();
        assert!(
            matches!(&e.kind, Kind::MountDone { ret: -16, fstype, phase_ns: [1_000, 0, 2_500] } if fstype == "tmpfs"),
            "{e:?}"
        );
    }

    #[test]
    fn decodes_and_converts_records() {
        let mut c = Converter::new(LOCK, Symbolizer::from_text(SYMS), false);
        let r = decode(&record(10, 7, 100, 0, 0, 0, "overlay")).unwrap();
        assert_eq!((r.kind, r.tid, r.pid, r.comm.as_str()), (10, 7, 1007, "sh"));
        assert_eq!(r.stack, None);
        let e = c.convert(r).unwrap();
        assert!(
            matches!(&e.kind, Kind::MountStart { op: MountOp::Mount, fstype, .. } if fstype == "overlay")
        );
        // A writer's wait: the BPF frames are cut, the kernel's stack is named.
        let d = with_stack(
            record(3, 7, 200, LOCK, 0, 0, ""),
            &[
                0xffffffffc0000010,
                0xffffffffc0001010,
                0xffffffff81100005,
                0xffffffff81200040,
                0xffffffff81300100,
                0xffffffffc0001010,
                0xffffffff81300005,
            ],
        );
        let e = c.convert(decode(&d).unwrap()).unwrap();
        match e.kind {
            Kind::WriteWait { stack, lock, .. } => {
                assert_eq!(lock, LOCK);
                assert_eq!(stack, ["down_write", "prealloc_shrinker", "alloc_super"]);
            }
            k => panic!("{k:?}"),
        }
        // The shrinker callback's address becomes its name.
        let e = c
            .convert(decode(&record(6, 9, 300, 0xffffffff81400000, 2_000_000, 0, "")).unwrap())
            .unwrap();
        assert!(
            matches!(&e.kind, Kind::ShrinkStart { shrinker, to_scan: 2_000_000, .. } if shrinker == "super_cache_scan")
        );
        // contention_end of a task that was not waiting to write: dropped.
        assert!(c
            .convert(decode(&record(17, 9, 400, LOCK, 0, 0, "")).unwrap())
            .is_none());
        assert!(c
            .convert(decode(&record(17, 7, 500, LOCK, 0, 0, "")).unwrap())
            .is_some());
        // With fexit/down_write, that is the acquisition and contention_end is ignored.
        let mut c = Converter::new(LOCK, Symbolizer::from_text(SYMS), true);
        c.convert(decode(&d).unwrap());
        assert!(c
            .convert(decode(&record(17, 7, 500, LOCK, 0, 0, "")).unwrap())
            .is_none());
        assert!(c
            .convert(decode(&record(4, 7, 501, LOCK, 0, 0, "")).unwrap())
            .is_some());
        assert!(decode(&[0u8; 10]).is_none());
    }

    /// The embedded programs load with the statically linked libbpf on this kernel: at least
    /// the tracepoint groups (this project's CI host refuses fentry but allows tp_btf).
    #[test]
    fn programs_load_here() {
        if !nix::unistd::geteuid().is_root()
            || !std::path::Path::new("/sys/kernel/btf/vmlinux").exists()
        {
            eprintln!("SKIP: needs root and /sys/kernel/btf/vmlinux");
            return;
        }
        let (groups, missing) = probe(0xffff_ffff_8000_0000);
        eprintln!("loaded: {groups:?}\nmissing: {missing:#?}");
        for g in ["shrink", "sched"] {
            assert!(groups.contains(&g), "{g} did not load: {missing:#?}");
        }
        assert!(
            groups.contains(&SYSCALLS) || groups.contains(&SYSCALLS_TP),
            "no mount latency: {missing:#?}"
        );
        assert!(
            groups.contains(&CONTENTION) || groups.contains(&WRITER_ENTRY),
            "no writer waits: {missing:#?}"
        );
    }

    #[test]
    fn reorder_releases_in_time_order() {
        let mut r = Reorder::default();
        for ts in [30, 10, 20, 50] {
            r.push(Event {
                ts_ns: ts,
                tid: 1,
                kind: Kind::OffCpu,
            });
        }
        let ts: Vec<u64> = r.release(30).iter().map(|e| e.ts_ns).collect();
        assert_eq!(ts, [10, 20, 30]);
        assert_eq!(r.release(u64::MAX).len(), 1);
    }
}
