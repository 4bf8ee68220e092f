//! The tracefs producer: kprobes and tracepoints through `/sys/kernel/tracing`, read as text
//! from `trace_pipe`, turned into [`Event`]s for the [`Analyzer`]. No libbpf, no BPF: it works
//! in a busybox guest (it mounts tracefs itself) and on any kernel with ftrace.
//!
//! Exact mode (kprobes available):
//! - `down_read_trylock(sem == shrinker_rwsem)` entry → reader hold starts; its return with
//!   0 (failed: a writer waits) within 1 ms → the hold is withdrawn;
//! - `up_read(sem == shrinker_rwsem)` → hold ends (matched by lock address, not any up_read);
//! - `up_write(sem == shrinker_rwsem)` → writer hold ends;
//! - `path_mount` (fstype) and `alloc_super` entry/return → mount latency and its phase.
//!
//! Always (tracepoints): `lock:contention_begin/end` on the lock (filtered in the kernel by
//! `lock_addr`: the printed address is hashed; writer waits, with the
//! waiter's kernel stack from a `stacktrace` trigger), `vmscan:mm_shrink_slab_start/end`
//! (the callback symbol, printed by the kernel), `sched:sched_switch` (on/off CPU). Without
//! kprobes, reader holds are inferred from shrinker calls
//! ([`Analyzer::holds_from_shrinkers`]) and marked approximate.
//!
//! [`Analyzer`]: crate::analyze::Analyzer
//! [`Analyzer::holds_from_shrinkers`]: crate::analyze::Analyzer::holds_from_shrinkers

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::analyze::{Event, Kind};
use crate::report::{MountOp, Phase};

const ROOTS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Where tracefs is, mounting it on `/sys/kernel/tracing` if nothing is mounted.
pub fn find_or_mount() -> io::Result<PathBuf> {
    for r in ROOTS {
        if Path::new(r).join("trace_pipe").exists() {
            return Ok(PathBuf::from(r));
        }
    }
    let root = Path::new(ROOTS[0]);
    nix::mount::mount(
        Some("tracefs"),
        root,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| io::Error::other(format!("mount tracefs on {}: {e}", root.display())))?;
    Ok(root.to_path_buf())
}

/// The probes set up on tracefs; removed again by [`Session::stop`].
pub struct Session {
    root: PathBuf,
    kprobes: Vec<String>,
    enabled: Vec<PathBuf>,
    triggers: Vec<(PathBuf, String)>,
    /// What could not be set up.
    pub missing: Vec<String>,
    /// Reader holds come from the lock itself (kprobes), not from shrinker calls.
    pub exact: bool,
    pipe: File,
}

fn write(p: &Path, s: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).truncate(true).open(p)?;
    f.write_all(s.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {s:?}: {e}", p.display())))
}

fn append(p: &Path, s: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().append(true).open(p)?;
    f.write_all(s.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {s:?}: {e}", p.display())))
}

/// Kprobes: (name, definition after the name, filter, what it is for).
fn kprobe_defs(lock: u64) -> Vec<(&'static str, String, Option<String>, &'static str)> {
    let f = Some(format!("sem == {lock:#x}"));
    vec![
        (
            "p:strata/rtry",
            "down_read_trylock sem=%di:x64".into(),
            f.clone(),
            "reader holds (exact)",
        ),
        (
            "r:strata/rtryr",
            "down_read_trylock ret=$retval:u32".into(),
            Some("ret == 0".into()),
            "failed trylocks",
        ),
        (
            "p:strata/rup",
            "up_read sem=%di:x64".into(),
            f.clone(),
            "reader releases",
        ),
        (
            "p:strata/wup",
            "up_write sem=%di:x64".into(),
            f,
            "writer releases",
        ),
        (
            "p:strata/mnt",
            "path_mount fstype=+0(%dx):string".into(),
            None,
            "mount latency",
        ),
        (
            "r:strata/mntr",
            "path_mount ret=$retval:s32".into(),
            None,
            "mount latency",
        ),
        (
            "p:strata/as",
            "alloc_super".into(),
            None,
            "alloc_super phase",
        ),
        (
            "r:strata/asr",
            "alloc_super".into(),
            None,
            "alloc_super phase",
        ),
    ]
}

impl Session {
    /// Set up every probe this kernel allows; `lock` is the address of `shrinker_rwsem`.
    pub fn start(root: &Path, lock: u64) -> io::Result<Session> {
        let root = root.to_path_buf();
        let _ = write(&root.join("tracing_on"), "0");
        let _ = write(&root.join("trace"), "");
        let _ = write(&root.join("trace_clock"), "mono");
        let _ = write(&root.join("buffer_size_kb"), "8192");
        let mut s = Session {
            pipe: OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(root.join("trace_pipe"))
                .map_err(|e| io::Error::new(e.kind(), format!("tracefs trace_pipe: {e}")))?,
            root,
            kprobes: Vec::new(),
            enabled: Vec::new(),
            triggers: Vec::new(),
            missing: Vec::new(),
            exact: false,
        };
        // Leftovers of a killed run.
        for (name, ..) in kprobe_defs(lock) {
            let _ = append(
                &s.root.join("kprobe_events"),
                &format!("-:{}\n", &name[2..]),
            );
        }
        let mut ok = HashMap::new();
        for (name, def, filter, what) in kprobe_defs(lock) {
            let ev = &name[2..];
            let r =
                append(&s.root.join("kprobe_events"), &format!("{name} {def}\n")).and_then(|_| {
                    s.kprobes.push(ev.to_string());
                    let dir = s.root.join("events").join(ev);
                    if let Some(f) = &filter {
                        write(&dir.join("filter"), f)?;
                    }
                    s.enable(&dir)
                });
            if let Err(e) = r {
                s.missing.push(format!("kprobe {ev} ({what}): {e}"));
            }
            ok.insert(ev, s.kprobes.iter().any(|k| k == ev));
        }
        s.exact = ok["strata/rtry"] && ok["strata/rup"];
        let lf = format!("lock_addr == {lock:#x}");
        for (ev, filter, what) in [
            ("lock/contention_begin", Some(&lf), "writer waits"),
            ("lock/contention_end", Some(&lf), "writer waits"),
            ("vmscan/mm_shrink_slab_start", None, "shrinker callbacks"),
            ("vmscan/mm_shrink_slab_end", None, "shrinker callbacks"),
            ("sched/sched_switch", None, "on/off CPU"),
        ] {
            let dir = s.root.join("events").join(ev);
            let r = (|| {
                if let Some(f) = filter {
                    write(&dir.join("filter"), f)?;
                }
                s.enable(&dir)
            })();
            if let Err(e) = r {
                s.missing.push(format!("tracepoint {ev} ({what}): {e}"));
            }
        }
        let trig = s.root.join("events/lock/contention_begin/trigger");
        let t = format!("stacktrace if {lf}");
        match write(&trig, &t) {
            Ok(()) => s.triggers.push((trig, t)),
            Err(e) => s.missing.push(format!("waiter stacks: {e}")),
        }
        write(&s.root.join("tracing_on"), "1")?;
        Ok(s)
    }

    fn enable(&mut self, dir: &Path) -> io::Result<()> {
        write(&dir.join("enable"), "1")?;
        self.enabled.push(dir.to_path_buf());
        Ok(())
    }

    /// Whatever `trace_pipe` has now (never blocks).
    pub fn read_available(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let mut chunk = [0u8; 65536];
        let mut n = 0;
        loop {
            match self.pipe.read(&mut chunk) {
                Ok(0) => return Ok(n),
                Ok(k) => {
                    buf.extend_from_slice(&chunk[..k]);
                    n += k;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }

    /// Stop tracing and remove every probe, filter and trigger set up.
    pub fn stop(&mut self) {
        let _ = write(&self.root.join("tracing_on"), "0");
        for (p, t) in self.triggers.drain(..) {
            let _ = write(&p, &format!("!{}", t.split(" if").next().unwrap_or(&t)));
        }
        for d in self.enabled.drain(..) {
            let _ = write(&d.join("enable"), "0");
            let _ = write(&d.join("filter"), "0");
        }
        for k in self.kprobes.drain(..) {
            let _ = append(&self.root.join("kprobe_events"), &format!("-:{k}\n"));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `trace_pipe` line: `comm-tid [cpu] flags secs.micros: event: fields`.
#[derive(Debug, PartialEq)]
pub struct Line<'a> {
    pub comm: &'a str,
    pub tid: u32,
    pub ts_ns: u64,
    pub event: &'a str,
    pub rest: &'a str,
}

pub fn parse_line(l: &str) -> Option<Line<'_>> {
    // The comm may contain spaces and dashes: the task is what precedes the `[cpu]` field.
    let open = l.find(" [")?;
    let close = open + l[open..].find("] ")?;
    let (comm, tid) = l[..open].trim().rsplit_once('-')?;
    let tid = tid.trim().parse().ok()?;
    let mut after = &l[close + 2..];
    let ts_ns = loop {
        let t = after.trim_start();
        let (tok, rest) = t.split_once(' ')?;
        after = rest;
        if let Some(secs) = tok.strip_suffix(':') {
            if let Some((a, b)) = secs.split_once('.') {
                if let (Ok(a), Ok(_)) = (a.parse::<u64>(), b.parse::<u64>()) {
                    let frac: u64 = format!("{b:0<9}")[..9].parse().ok()?;
                    break a * 1_000_000_000 + frac;
                }
            }
        }
    };
    let after = after.trim_start();
    let (event, rest) = after
        .split_once(": ")
        .unwrap_or((after.trim_end_matches(':'), ""));
    Some(Line {
        comm,
        tid,
        ts_ns,
        event,
        rest,
    })
}

/// `key=value` from the fields of a line (value up to the next space).
fn field<'a>(rest: &'a str, key: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = rest[from..].find(key) {
        let at = from + i;
        let ok_before = at == 0 || matches!(rest.as_bytes()[at - 1], b' ' | b'(');
        let v = &rest[at + key.len()..];
        if ok_before {
            if let Some(v) = v.strip_prefix('=') {
                return Some(v.split(' ').next().unwrap_or("").trim_end_matches(')'));
            }
        }
        from = at + key.len();
    }
    None
}

/// The number after `label` (e.g. `total_scan `) in free text.
fn after_label(rest: &str, label: &str) -> Option<i64> {
    let i = rest.find(label)?;
    rest[i + label.len()..]
        .split([' ', ','])
        .next()?
        .parse()
        .ok()
}

fn hex(v: &str) -> Option<u64> {
    u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()
}

/// `super_cache_scan+0x0/0x1b0 [mod]` → `super_cache_scan`.
fn symbol(tok: &str) -> String {
    tok.split('+').next().unwrap_or(tok).to_string()
}

/// Text lines → events, keeping the per-task state the pairing needs.
#[derive(Default)]
pub struct Parser {
    lock: u64,
    trylock_at: HashMap<u32, u64>,
    waiting: HashMap<u32, ()>,
    in_mount: HashMap<u32, ()>,
    /// A waiter's stack, while its lines come in.
    stack: Option<(u32, Vec<String>)>,
    /// The last event, held back while stack lines may follow.
    held: Option<Event>,
    comms: HashMap<u32, String>,
    pub lines: u64,
    pub lost: u64,
    /// The timestamp of the start marker, once seen.
    pub start: Option<u64>,
}

impl Parser {
    pub fn new(lock: u64) -> Parser {
        Parser {
            lock,
            ..Parser::default()
        }
    }

    fn comm(&mut self, tid: u32, seen: &str) -> String {
        if seen != "<...>" && !seen.is_empty() {
            self.comms.insert(tid, seen.to_string());
            return seen.to_string();
        }
        if let Some(c) = self.comms.get(&tid) {
            return c.clone();
        }
        let c = std::fs::read_to_string(format!("/proc/{tid}/comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        self.comms.insert(tid, c.clone());
        c
    }

    /// Feed one line; finished events go to `out` in order.
    pub fn line(&mut self, l: &str, out: &mut Vec<Event>) {
        self.lines += 1;
        if let Some(f) = l.strip_prefix(" => ") {
            if let Some((_, st)) = &mut self.stack {
                st.push(symbol(f.trim()));
            }
            return;
        }
        if l.starts_with("CPU:") && l.contains("LOST") {
            self.lost += 1;
            return;
        }
        let Some(p) = parse_line(l) else { return };
        if p.event.starts_with("<stack trace>") {
            self.flush_stack(out);
            self.stack = Some((p.tid, Vec::new()));
            return;
        }
        self.flush_stack(out);
        let comm = self.comm(p.tid, p.comm);
        let (tid, ts_ns) = (p.tid, p.ts_ns);
        let ev = |kind| Event { ts_ns, tid, kind };
        let lock = self.lock;
        let mut push = |e: Event, s: &mut Parser| {
            if let Some(h) = s.held.replace(e) {
                out.push(h);
            }
        };
        match p.event {
            "tracing_mark_write" if p.rest.starts_with("strata-trace-start") => {
                self.start = Some(ts_ns)
            }
            "rtry" => {
                self.trylock_at.insert(tid, ts_ns);
                push(
                    ev(Kind::ReadAcquired {
                        lock,
                        pid: tid,
                        comm,
                    }),
                    self,
                );
            }
            "rtryr" => {
                if let Some(t) = self.trylock_at.remove(&tid) {
                    if ts_ns.saturating_sub(t) < 1_000_000 {
                        push(ev(Kind::ReadFailed { lock }), self);
                    }
                }
            }
            "rup" => push(ev(Kind::ReadReleased { lock }), self),
            "wup" => push(ev(Kind::WriteReleased { lock }), self),
            "contention_begin" => {
                let flags = field(p.rest, "flags").unwrap_or("");
                let write = flags.contains("WRITE") || hex(flags).is_some_and(|f| f & 4 != 0);
                // The kernel filter keeps this lock only (the text has a hashed `%p`).
                if write {
                    self.waiting.insert(tid, ());
                    push(
                        ev(Kind::WriteWait {
                            lock,
                            pid: tid,
                            comm,
                            stack: Vec::new(),
                        }),
                        self,
                    );
                }
            }
            "contention_end" if self.waiting.remove(&tid).is_some() => {
                push(ev(Kind::WriteAcquired { lock }), self);
            }
            "mm_shrink_slab_start" => {
                let shrinker = symbol(p.rest.split(' ').next().unwrap_or("?"));
                let to_scan = after_label(p.rest, "total_scan ").unwrap_or(0);
                push(
                    ev(Kind::ShrinkStart {
                        shrinker,
                        to_scan,
                        pid: tid,
                        comm,
                    }),
                    self,
                );
            }
            "mm_shrink_slab_end" => {
                let freed = after_label(p.rest, "return val ").unwrap_or(0);
                push(ev(Kind::ShrinkEnd { freed }), self);
            }
            "sched_switch" => {
                let prev = field(p.rest, "prev_pid").and_then(|v| v.parse().ok());
                let next = field(p.rest, "next_pid").and_then(|v| v.parse().ok());
                if let Some(prev) = prev {
                    push(
                        Event {
                            ts_ns,
                            tid: prev,
                            kind: Kind::OffCpu,
                        },
                        self,
                    );
                }
                if let Some(next) = next {
                    push(
                        Event {
                            ts_ns,
                            tid: next,
                            kind: Kind::OnCpu,
                        },
                        self,
                    );
                }
            }
            "mnt" => {
                let fstype = field(p.rest, "fstype").unwrap_or("").trim_matches('"');
                if !fstype.is_empty() && !fstype.contains("(fault)") {
                    self.in_mount.insert(tid, ());
                    push(
                        ev(Kind::MountStart {
                            op: MountOp::Mount,
                            fstype: fstype.to_string(),
                            pid: tid,
                            comm,
                        }),
                        self,
                    );
                }
            }
            "mntr" if self.in_mount.remove(&tid).is_some() => {
                let ret = field(p.rest, "ret")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                push(ev(Kind::MountEnd { ret }), self);
            }
            "as" => push(
                ev(Kind::PhaseStart {
                    phase: Phase::AllocSuper,
                }),
                self,
            ),
            "asr" => push(
                ev(Kind::PhaseEnd {
                    phase: Phase::AllocSuper,
                }),
                self,
            ),
            _ => {}
        }
    }

    /// A finished stack goes to the held event if that is the same task's wait.
    fn flush_stack(&mut self, _out: &mut [Event]) {
        let Some((tid, st)) = self.stack.take() else {
            return;
        };
        if let Some(Event {
            tid: t,
            kind: Kind::WriteWait { stack, .. },
            ..
        }) = &mut self.held
        {
            if *t == tid && stack.is_empty() {
                *stack = st;
            }
        }
    }

    /// The held-back event, at the end.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        self.flush_stack(out);
        if let Some(h) = self.held.take() {
            out.push(h);
        }
    }
}

/// The address of `shrinker_rwsem`, from the kernel check (kallsyms).
pub fn lock_addr(kernel: &crate::check::KernelCheck) -> Result<u64, String> {
    kernel
        .shrinker_rwsem_addr
        .as_deref()
        .and_then(hex)
        .filter(|&a| a != 0)
        .ok_or_else(|| {
            "the address of shrinker_rwsem is unknown (not in /proc/kallsyms, or hidden: run as \
             root); nothing to trace on this kernel"
                .to_string()
        })
}

/// Trace until `duration` has passed or `stop` is set, then build the report.
pub fn run(
    kernel: crate::check::KernelCheck,
    duration: Option<std::time::Duration>,
    min_wait_ms: f64,
    stop: &std::sync::atomic::AtomicBool,
) -> io::Result<crate::report::Report> {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let lock = lock_addr(&kernel).map_err(io::Error::other)?;
    let root = find_or_mount()?;
    let mut sess = Session::start(&root, lock)?;
    crate::announce("tracefs", duration);
    let start = Instant::now();
    // Time zero of the report: this marker's timestamp in the trace.
    let _ = write(&root.join("trace_marker"), "strata-trace-start");
    let mut analyzer = crate::analyze::Analyzer::new(lock, min_wait_ms);
    if !sess.exact {
        analyzer = analyzer.holds_from_shrinkers();
    }
    let mut sampler = crate::vmstat::Sampler::new(start);
    let mut parser = Parser::new(lock);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut next_sample = start + Duration::from_secs(1);
    let mut draining = 0;
    loop {
        let n = sess.read_available(&mut buf)?;
        if let Some(end) = buf.iter().rposition(|&b| b == b'\n') {
            for l in String::from_utf8_lossy(&buf[..end]).lines() {
                parser.line(l, &mut out);
            }
            buf.drain(..=end);
            if let Some(t0) = parser.start.take() {
                analyzer.start_at(t0);
            }
            for e in out.drain(..) {
                analyzer.push(e);
            }
        }
        let now = Instant::now();
        if now >= next_sample {
            sampler.sample();
            next_sample += Duration::from_secs(1);
        }
        let done = stop.load(Ordering::Relaxed) || duration.is_some_and(|d| now >= start + d);
        if done {
            if draining == 0 {
                let _ = write(&root.join("tracing_on"), "0");
            }
            // Read what the buffers still hold, then stop.
            draining += 1;
            if n == 0 && draining > 2 {
                break;
            }
        }
        if n == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    parser.finish(&mut out);
    for e in out.drain(..) {
        analyzer.push(e);
    }
    sess.stop();
    let mut missing = std::mem::take(&mut sess.missing);
    if !sess.exact {
        missing.push(
            "reader holds inferred from shrinker calls (no kprobes on down_read_trylock/up_read): \
             hold times are lower bounds"
                .into(),
        );
    }
    if parser.lost > 0 {
        missing.push(format!(
            "{} trace buffer overruns: events were lost",
            parser.lost
        ));
    }
    let ctx = crate::report::Context {
        kernel,
        source: "tracefs",
        mode: crate::report::Mode::Detail,
        duration_s: start.elapsed().as_secs_f64(),
        min_wait_ms,
        missing,
    };
    Ok(crate::report::Report::assemble(
        ctx,
        analyzer.finish(),
        std::mem::take(&mut sampler.samples),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: u64 = 0xffffffff82a5c2e0;

    fn feed(text: &str) -> Vec<Event> {
        let mut p = Parser::new(LOCK);
        let mut out = Vec::new();
        for l in text.lines() {
            p.line(l, &mut out);
        }
        p.finish(&mut out);
        out
    }

    #[test]
    fn lines() {
        let l = parse_line(
            "     kworker/u4:1-45      [001] d..1.   123.000456: mm_shrink_slab_start: super_cache_scan+0x0/0x1b0 0000000012345678: nid: 0 objects to shrink 0 gfp_flags GFP_KERNEL cache items 8000 delta 31 total_scan 31 priority 12",
        )
        .unwrap();
        assert_eq!(l.comm, "kworker/u4:1");
        assert_eq!(l.tid, 45);
        assert_eq!(l.ts_ns, 123_000_456_000);
        assert_eq!(l.event, "mm_shrink_slab_start");
        // A comm with a space and a dash; no irq-info column.
        let l = parse_line("my-prog x-9 [000] 5.5: rtry: (down_read_trylock+0x0/0x50) sem=0x1")
            .unwrap();
        assert_eq!(
            (l.comm, l.tid, l.ts_ns, l.event),
            ("my-prog x", 9, 5_500_000_000, "rtry")
        );
    }

    #[test]
    fn events() {
        let t = format!(
            "         kswapd0-40      [000] ..... 10.000000: rtry: (down_read_trylock+0x0/0x50) sem={LOCK:#x}
         kswapd0-40      [000] ..... 10.000100: mm_shrink_slab_start: super_cache_scan+0x0/0x1b0 00000000aa: nid: 0 objects to shrink 0 gfp_flags GFP_KERNEL cache items 8000 delta 31 total_scan 31 priority 12
          strata-77      [001] d..1. 10.100000: contention_begin: 00000000d3ad8e1c (flags=WRITE)
          strata-77      [001] d..1. 10.100001: <stack trace>
 => rwsem_down_write_slowpath+0x2d1/0x4a0
 => prealloc_shrinker+0x1b/0x90
 => alloc_super+0x2a8/0x2f0
         kswapd0-40      [000] ..... 11.000000: mm_shrink_slab_end: 00000000aa super_cache_scan+0x0/0x1b0: nid: 0 unused scan count 0 new scan count 0 total_scan 0 last shrinker return val 29
         kswapd0-40      [000] ..... 11.000001: rup: (up_read+0x0/0x40) sem={LOCK:#x}
          strata-77      [001] d..1. 11.000010: contention_end: 00000000d3ad8e1c (ret=0)
          strata-77      [001] ..... 11.000020: wup: (up_write+0x0/0x40) sem={LOCK:#x}
          <idle>-0       [000] d..2. 11.5: sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=kswapd0 next_pid=40 next_prio=120
"
        );
        let ev = feed(&t);
        let kinds: Vec<&Kind> = ev.iter().map(|e| &e.kind).collect();
        assert!(
            matches!(kinds[0], Kind::ReadAcquired { lock: LOCK, pid: 40, comm } if comm == "kswapd0")
        );
        assert!(
            matches!(kinds[1], Kind::ShrinkStart { shrinker, to_scan: 31, .. } if shrinker == "super_cache_scan")
        );
        match kinds[2] {
            Kind::WriteWait { stack, comm, .. } => {
                assert_eq!(comm, "strata");
                assert_eq!(
                    stack[..2],
                    ["rwsem_down_write_slowpath", "prealloc_shrinker"]
                );
            }
            k => panic!("{k:?}"),
        }
        assert!(matches!(kinds[3], Kind::ShrinkEnd { freed: 29 }));
        assert!(matches!(kinds[4], Kind::ReadReleased { lock: LOCK }));
        assert!(matches!(kinds[5], Kind::WriteAcquired { lock: LOCK }));
        assert!(matches!(kinds[6], Kind::WriteReleased { lock: LOCK }));
        assert!(matches!(kinds[7], Kind::OffCpu));
        assert!(matches!(kinds[8], Kind::OnCpu));
        assert_eq!(ev.len(), 9);

        // Fed to the analyzer: one wait of 900 ms, held by kswapd0 in super_cache_scan.
        let mut a = crate::analyze::Analyzer::new(LOCK, 10.0);
        for e in ev {
            a.push(e);
        }
        let waits = a.finish().waits;
        assert_eq!(waits.len(), 1);
        assert_eq!(waits[0].holders[0].comm, "kswapd0");
        assert_eq!(
            waits[0].holders[0].shrinker.as_deref(),
            Some("super_cache_scan")
        );
        assert!(waits[0].attributed_ms > 0.9 * waits[0].wait_ms);
    }

    #[test]
    fn failed_trylock_is_no_hold() {
        let t = format!(
            "         kswapd0-40      [000] ..... 10.000000: rtry: (down_read_trylock+0x0/0x50) sem={LOCK:#x}
         kswapd0-40      [000] ..... 10.000001: rtryr: (shrink_slab+0x8c/0x2a0 <- down_read_trylock) ret=0
          strata-77      [001] d..1. 10.000010: contention_begin: 00000000d3ad8e1c (flags=WRITE)
          strata-77      [001] d..1. 10.100000: contention_end: 00000000d3ad8e1c (ret=0)
"
        );
        let mut a = crate::analyze::Analyzer::new(LOCK, 10.0);
        for e in feed(&t) {
            a.push(e);
        }
        let waits = a.finish().waits;
        assert_eq!(waits.len(), 1);
        assert!(waits[0].holders.is_empty(), "{:?}", waits[0].holders);
    }

    #[test]
    fn mounts() {
        let t = "          strata-77      [001] ..... 1.0: mnt: (path_mount+0x0/0x900) fstype=\"overlay\"
          strata-77      [001] ..... 1.1: as: (alloc_super+0x0/0x2f0)
          strata-77      [001] ..... 1.9: asr: (sget_fc+0x10/0x200 <- alloc_super)
          strata-77      [001] ..... 2.0: mntr: (do_mount+0x5/0x90 <- path_mount) ret=0
";
        let mut a = crate::analyze::Analyzer::new(LOCK, 10.0);
        for e in feed(t) {
            a.push(e);
        }
        let f = a.finish();
        let (summary, mounts) = (f.summary, f.mounts);
        assert_eq!(summary.mounts, 1);
        assert_eq!(mounts[0].fstype, "overlay");
        assert!((mounts[0].alloc_super_ms - 800.0).abs() < 1.0);
    }
}
