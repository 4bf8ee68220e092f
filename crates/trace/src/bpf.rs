//! The eBPF producer: the CO-RE programs of `src/bpf/trace.bpf.c` (compiled by clang at build
//! time, embedded in the binary), loaded with libbpf, their ring buffer records turned into
//! [`Event`]s for the [`Analyzer`] — the same events and analysis as the tracefs producer.
//!
//! Two modes ([`Mode`]), each a set of program groups (`bpf/groups.rs`); each kernel gets the
//! groups it can load and attach, and the report lists the others under `missing`:
//! - default: `waits` (`lock:contention_begin/end`, or the rwsem write slow path), `holds`
//!   (fentry/fexit `shrink_slab` and the shrinker tracepoints), `mounts` (fentry/fexit on
//!   mount and fsconfig; umount2 is not probed). Nothing on a global hot path; records only
//!   for what overlaps a writer's wait and for mounts that took at least `--min-wait`; totals
//!   in the kernel.
//! - detail (`--detail`, `--naive`): every rwsem acquire/release of the lock from the lock
//!   functions themselves, every writer's hold, on/off CPU from `sched_switch`, every mount
//!   with its phases.

mod groups;
mod records;

use std::cell::RefCell;
use std::collections::HashSet;
use std::io;
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libbpf_rs::skel::Skel;
use libbpf_rs::Link;

use crate::analyze::{Analyzer, Event, Totals};
use crate::kallsyms::Symbolizer;
use crate::report::{Mode, MountOp};
use crate::sys::skel;

pub use groups::probe;
pub use records::Converter;

use groups::{Group, Settings};

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
    pub mode: Mode,
    pub naive: bool,
    pub stop: &'a AtomicBool,
}

/// Whether this kernel can run the eBPF producer at all (BTF present, lock address known).
pub fn available(kernel: &crate::check::KernelCheck) -> Result<u64, String> {
    if !std::path::Path::new(crate::check::VMLINUX_BTF).exists() {
        return Err(
            "no /sys/kernel/btf/vmlinux (kernel built without CONFIG_DEBUG_INFO_BTF)".into(),
        );
    }
    crate::tracefs::lock_addr(kernel)
}

/// The attached programs; dropping it detaches them.
struct Attached {
    links: Vec<Link>,
    groups: HashSet<&'static str>,
}

/// Attach every program of each group; a group with a program that does not attach is left
/// out whole (its reason in `missing`).
fn attach(skel: &skel::TraceSkel, groups: &[&Group], missing: &mut Vec<String>) -> Attached {
    let mut a = Attached {
        links: Vec::new(),
        groups: HashSet::new(),
    };
    for g in groups {
        let mut links = Vec::new();
        let mut err = None;
        for p in skel.object().progs_mut() {
            let name = p.name().to_string_lossy().to_string();
            if !g.progs.contains(&name.as_str()) {
                continue;
            }
            match p.attach() {
                Ok(l) => links.push(l),
                Err(e) => {
                    err = Some(format!("{name}: {e}"));
                    break;
                }
            }
        }
        match err {
            None => {
                a.links.extend(links);
                a.groups.insert(g.name);
            }
            Some(e) => missing.push(format!("{}: attach {e}", g.what)),
        }
    }
    a
}

/// The analyzer for what is attached (and notes on what that leaves approximate).
fn analyzer_for(
    mode: Mode,
    lock: u64,
    o: &Options,
    attached: &HashSet<&str>,
    missing: &mut Vec<String>,
) -> Analyzer {
    let mut analyzer = Analyzer::new(lock, o.min_wait_ms);
    let exact_readers = match mode {
        Mode::Default => attached.contains(groups::HOLDS),
        Mode::Detail => attached.contains(groups::READER),
    };
    if !exact_readers {
        analyzer = analyzer.holds_from_shrinkers();
        missing.push(
            "reader holds inferred from shrinker calls (no fentry/fexit on the lock or \
             shrink_slab): hold times are lower bounds"
                .into(),
        );
    }
    if mode == Mode::Default || !attached.contains(groups::WRITER) {
        // Default mode: writers' releases are not traced (they are on every rwsem's path).
        analyzer = analyzer.no_writer_releases();
    }
    if mode == Mode::Detail && !attached.contains(groups::WRITER) {
        missing.push(
            "writer holds not seen (no fentry/up_write): writers are listed only as they get \
             the lock after a wait"
                .into(),
        );
    }
    if o.naive && !attached.contains(groups::READER) {
        missing.push("--naive needs the reader group (fexit/fentry): no naive report".into());
    }
    analyzer
}

/// The default mode's totals: its per-CPU map, summed.
fn totals(skel: &skel::TraceSkel) -> Option<Totals> {
    use libbpf_rs::MapCore;
    let per_cpu = skel
        .maps
        .totals
        .lookup_percpu(&0u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
        .ok()??;
    let mut sum = skel::types::totals::default();
    for t in per_cpu
        .iter()
        .filter_map(|b| crate::sys::record::<skel::types::totals>(b))
    {
        for i in 0..3 {
            sum.mounts[i] += t.mounts[i];
            sum.mount_ns[i] += t.mount_ns[i];
            sum.mount_wait_ns[i] += t.mount_wait_ns[i];
        }
        sum.waits += t.waits;
        sum.wait_ns += t.wait_ns;
    }
    // umount2 is not probed in the default mode: no umount total.
    let ops = [(0, MountOp::Mount), (2, MountOp::Fsconfig)];
    Some(Totals {
        mounts: ops
            .iter()
            .map(|&(i, op)| (op, sum.mounts[i], sum.mount_ns[i], sum.mount_wait_ns[i]))
            .collect(),
        waits: sum.waits,
        wait_ns: sum.wait_ns,
    })
}

/// Ring buffer records → time-ordered events → analyzer (and the naive report).
struct Pipeline {
    conv: Converter,
    reorder: Reorder,
    analyzer: Analyzer,
    naive: Option<crate::naive::Naive>,
}

impl Pipeline {
    fn take(&mut self, records: &RefCell<Vec<Vec<u8>>>) {
        for d in records.borrow_mut().drain(..) {
            if let Some(e) = self.conv.convert(&d) {
                self.reorder.push(e);
            }
        }
    }

    fn feed(&mut self, upto: u64) {
        for e in self.reorder.release(upto) {
            if let Some(n) = self.naive.as_mut() {
                n.push(&e);
            }
            self.analyzer.push(e);
        }
    }
}

/// How long records wait to be sorted: CPUs interleave in the ring buffer.
const LAG_NS: u64 = 200_000_000;
/// The programs never wake the reader (see trace.bpf.c): it drains on this timer.
const DRAIN: Duration = Duration::from_millis(50);

/// Trace until `duration` has passed or `stop` is set, then build the report.
pub fn run(kernel: crate::check::KernelCheck, o: Options) -> io::Result<crate::report::Report> {
    let lock = available(&kernel).map_err(io::Error::other)?;
    let mode = if o.naive { Mode::Detail } else { o.mode };
    groups::capture_libbpf_log();
    let settings = Settings {
        lock,
        naive: o.naive,
        min_wait_ns: (o.min_wait_ms.max(0.0) * 1e6) as u64,
    };
    let mut missing = Vec::new();
    let chosen = groups::choose(mode, settings, &mut missing);
    let names: HashSet<&str> = chosen.iter().map(|g| g.name).collect();
    let sees_waits = [
        groups::WAITS,
        groups::WAITS_SLOWPATH,
        groups::CONTENTION,
        groups::WRITER_ENTRY,
    ]
    .iter()
    .any(|g| names.contains(g));
    if !sees_waits {
        return Err(io::Error::other(format!(
            "the eBPF producer cannot see writer waits on this kernel ({}); try --producer tracefs",
            missing.join("; ")
        )));
    }
    let mut obj = MaybeUninit::uninit();
    let skel = groups::open_load(
        &mut obj,
        settings,
        &groups::progs_of(chosen.iter().copied()),
    )
    .map_err(|e| io::Error::other(format!("load the BPF programs: {e}")))?;
    let attached = attach(&skel, &chosen, &mut missing);
    // After attaching (the programs and trampolines are in kallsyms only then: their frames in
    // stacks are named, and cut) and before announcing: reading kallsyms takes seconds in a TCG
    // guest, and a benchmark that waits for the announcement should measure the steady state.
    // Records wait in the ring buffer meanwhile.
    let sym = Symbolizer::load();
    if mode == Mode::Default && !attached.groups.contains(groups::MOUNTS) {
        missing.push("mounts not traced: waits are listed without the mount they were in".into());
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
    let mut analyzer = analyzer_for(mode, lock, &o, &attached.groups, &mut missing);
    analyzer.start_at(t0);
    let naive = (o.naive && attached.groups.contains(groups::READER)).then(|| {
        let mut n = crate::naive::Naive::default();
        n.start_at(t0);
        n
    });
    let mut p = Pipeline {
        conv: Converter::new(lock, sym, attached.groups.contains(groups::WRITER)),
        reorder: Reorder::default(),
        analyzer,
        naive,
    };
    crate::announce("eBPF", o.duration);
    let mut next_sample = start + Duration::from_secs(1);
    loop {
        let done =
            o.stop.load(Ordering::Relaxed) || o.duration.is_some_and(|d| start.elapsed() >= d);
        std::thread::sleep(DRAIN);
        rb.consume()
            .map_err(|e| io::Error::other(format!("BPF ring buffer: {e}")))?;
        p.take(&records);
        p.feed(monotonic_ns().saturating_sub(LAG_NS));
        if Instant::now() >= next_sample {
            sampler.sample();
            next_sample += Duration::from_secs(1);
        }
        if done {
            break;
        }
    }
    detach(attached);
    let _ = rb.consume();
    p.take(&records);
    p.feed(u64::MAX);
    let bss = skel.maps.bss_data.as_deref();
    let dropped = bss.map_or(0, |b| b.dropped);
    if dropped > 0 {
        missing.push(format!(
            "{dropped} events lost (BPF ring buffer full): holds or waits may be incomplete"
        ));
    }
    if mode == Mode::Default {
        if let Some(t) = totals(&skel) {
            p.analyzer.set_totals(t);
        }
    }
    let ctx = crate::report::Context {
        kernel,
        source: "ebpf",
        mode,
        duration_s: start.elapsed().as_secs_f64(),
        min_wait_ms: o.min_wait_ms,
        missing,
    };
    let mut report = crate::report::Report::assemble(
        ctx,
        p.analyzer.finish(),
        std::mem::take(&mut sampler.samples),
    );
    report.naive = p.naive.map(|n| n.finish(&report.waits));
    Ok(report)
}

/// Drop every link, saying on stderr how long it took: under TCG each detach patches live
/// kernel text, and a slow exit should not look like an ignored SIGINT.
fn detach(a: Attached) {
    let n = a.links.len();
    let t = Instant::now();
    eprintln!("strata trace: stopping: detaching {n} programs");
    drop(a.links);
    eprintln!(
        "strata trace: detached {n} programs in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::Kind;

    /// The embedded programs load with the statically linked libbpf on this kernel: at least
    /// the tracepoint groups (this project's CI host refuses fentry but allows tp_btf).
    #[test]
    fn programs_load_here() {
        if !nix::unistd::geteuid().is_root()
            || !std::path::Path::new(crate::check::VMLINUX_BTF).exists()
        {
            eprintln!("SKIP: needs root and /sys/kernel/btf/vmlinux");
            return;
        }
        let (detail, missing) = probe(Mode::Detail, 0xffff_ffff_8000_0000);
        eprintln!("detail: loaded {detail:?}\nmissing: {missing:#?}");
        for g in [groups::SHRINK, "sched"] {
            assert!(detail.contains(&g), "{g} did not load: {missing:#?}");
        }
        assert!(
            detail.contains(&groups::SYSCALLS) || detail.contains(&groups::SYSCALLS_TP),
            "no mount latency: {missing:#?}"
        );
        assert!(
            detail.contains(&groups::CONTENTION) || detail.contains(&groups::WRITER_ENTRY),
            "no writer waits: {missing:#?}"
        );
        let (default, missing) = probe(Mode::Default, 0xffff_ffff_8000_0000);
        eprintln!("default: loaded {default:?}\nmissing: {missing:#?}");
        assert!(
            default.contains(&groups::WAITS) || default.contains(&groups::WAITS_SLOWPATH),
            "no writer waits: {missing:#?}"
        );
        assert!(
            default.contains(&groups::HOLDS) || default.contains(&groups::SHRINK),
            "no reader holds: {missing:#?}"
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
