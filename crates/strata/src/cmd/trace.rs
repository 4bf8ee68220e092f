//! `strata trace`: is this kernel exposed to the shrinker_rwsem mount stall (`--check`), and
//! who holds the lock while a mount waits (eBPF, or tracefs kprobes/tracepoints as a fallback).
//!
//! Exit codes (docs/cli.md): `--check` 0 with a verdict, 1 without (`unknown`), 2 for a
//! `--kallsyms`/`--btf` file that cannot be read, holds no kernel symbols, or is not of the same
//! kernel as the other; with `--exit-code`, 5 on an exposed (`rwsem`) kernel. Tracing: 2 when
//! there is nothing to trace (not root, a lockless kernel).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use strata_trace::{check, KernelCheck, Mode, Report, ShrinkerLock};

use crate::args::{json_line, OutputArgs};
use crate::error::{Error, Kind, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Only say whether memory reclaim holds the lock mounts take on this kernel: `rwsem`
    /// (exposed, Linux < 6.7) or `lockless` (6.7+ or a backport), from kallsyms and BTF.
    #[arg(long)]
    check: bool,
    /// With --check: exit with 5 on an exposed (`rwsem`) kernel, 0 on a lockless one.
    #[arg(long, requires = "check")]
    exit_code: bool,
    /// `--json`: the verdict or the report as one line of JSON on stdout; `--output FILE`:
    /// also written to FILE.
    #[command(flatten)]
    out: OutputArgs,
    /// With --check: the symbol listing of the kernel to check instead of this one's
    /// /proc/kallsyms (e.g. its System.map). Only the given files are read.
    #[arg(long, value_name = "FILE", requires = "check")]
    kallsyms: Option<PathBuf>,
    /// With --check: the BTF of the kernel to check instead of /sys/kernel/btf/vmlinux (raw
    /// BTF or a vmlinux ELF). Only the given files are read.
    #[arg(long, value_name = "FILE", requires = "check")]
    btf: Option<PathBuf>,
    /// Trace for this many seconds (default: until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// List writer waits on the lock of at least this long (shorter ones are only counted);
    /// in the default mode also the threshold for recording a mount.
    #[arg(long, value_name = "MS", default_value_t = 10.0)]
    min_wait: f64,
    /// Record every lock event, every context switch of a holder and every mount with its
    /// phases (fentry/fexit on the rwsem functions: every rwsem operation in the kernel pays;
    /// crates/trace/BPF.md has the cost). Default: only what overlaps a writer's wait.
    #[arg(long)]
    detail: bool,
    /// Where events come from: `bpf` (CO-RE programs, needs BTF), `tracefs` (kprobes and
    /// tracepoints through /sys/kernel/tracing, always in detail), or `auto` (bpf if it loads,
    /// else tracefs).
    #[arg(long, value_enum, default_value_t = Producer::Auto)]
    producer: Producer,
    /// Also report what the usual bpftrace script (kprobe:down_read_trylock →
    /// kretprobe:up_read) would have said, from the same trace (bpf producer; implies
    /// --detail).
    #[arg(long)]
    naive: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Producer {
    Auto,
    Bpf,
    Tracefs,
}

pub fn run(a: Args) -> Result {
    // First thing, before reading kallsyms (seconds in a TCG guest): a tracer started in the
    // background by a non-interactive shell inherits SIGINT ignored, and a SIGINT that came
    // before the handler was lost — the tracer then ran until the next one.
    let stop = match a.check {
        true => None,
        false => Some(stop_flag()?),
    };
    let c = check::check(a.kallsyms.as_deref(), a.btf.as_deref()).map_err(Error::refused)?;
    if let Some(stop) = stop {
        return trace(&a, c, &stop);
    }
    output(&a.out, &c, || check::render(&c))?;
    match c.shrinker_lock {
        ShrinkerLock::Unknown => Err(Error::failed(
            "no verdict: neither kallsyms nor BTF says which shrinker lock this kernel has",
        )),
        ShrinkerLock::Rwsem if a.exit_code => Err(Error::new(
            Kind::Exposed,
            "exposed: reclaim holds shrinker_rwsem, mounts can wait behind it (--exit-code)",
        )),
        _ => Ok(()),
    }
}

/// Print `v` as one JSON line (`--json`) or in its human form, and write it to `--output`.
fn output<T: serde::Serialize>(out: &OutputArgs, v: &T, human: impl FnOnce() -> String) -> Result {
    let json = json_line(v)? + "\n";
    if out.json {
        std::io::stdout()
            .write_all(json.as_bytes())
            .map_err(Error::failed)?;
    } else {
        std::io::stdout()
            .write_all(human().as_bytes())
            .map_err(Error::failed)?;
    }
    if let Some(p) = &out.output {
        std::fs::write(p, json).map_err(Error::io("cannot write", p))?;
    }
    Ok(())
}

/// Stops the tracer on SIGINT/SIGTERM.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Error::failed(format!("cannot install signal handlers: {e}")))?;
    }
    Ok(stop)
}

fn trace(a: &Args, c: KernelCheck, stop: &AtomicBool) -> Result {
    if !c.root {
        return Err(Error::refused(
            "tracing needs root (BPF programs, tracefs); run it with sudo. --check works without",
        ));
    }
    if c.shrinker_lock == ShrinkerLock::Lockless {
        return Err(Error::refused(
            "this kernel's shrinkers are lockless: mounts do not wait for reclaim (see strata \
             trace --check); nothing to trace",
        ));
    }
    let duration = a.duration.map(std::time::Duration::from_secs_f64);
    let tracefs = |c| strata_trace::tracefs::run(c, duration, a.min_wait, stop);
    let res = match a.producer {
        Producer::Tracefs => tracefs(c),
        Producer::Bpf => bpf(a, c, duration, stop),
        Producer::Auto => match bpf_available(&c) {
            Ok(()) => bpf(a, c.clone(), duration, stop).or_else(|e| {
                eprintln!("strata trace: eBPF producer failed ({e}); using tracefs");
                fallback(tracefs(c), e.to_string())
            }),
            Err(why) => fallback(tracefs(c), why),
        },
    };
    let mut r = res.map_err(Error::failed)?;
    if a.naive && r.naive.is_none() && r.source != "ebpf" {
        r.missing
            .push("--naive: only the eBPF producer records the naive script's events".into());
    }
    if !a.detail && !a.naive && r.mode == Mode::Detail {
        r.missing.push(
            "the tracefs producer records every lock event (detail mode): it costs what \
             --detail costs"
                .into(),
        );
    }
    output(&a.out, &r, || strata_trace::render::render(&r))
}

/// The tracefs report, saying why the eBPF producer was not used.
fn fallback(r: std::io::Result<Report>, why: String) -> std::io::Result<Report> {
    r.map(|mut r| {
        r.missing.insert(0, format!("eBPF producer: {why}"));
        r
    })
}

#[cfg(feature = "bpf")]
fn bpf_available(c: &KernelCheck) -> std::result::Result<(), String> {
    strata_trace::bpf::available(c).map(drop)
}

#[cfg(not(feature = "bpf"))]
fn bpf_available(_: &KernelCheck) -> std::result::Result<(), String> {
    Err("this strata was built without the `bpf` feature".into())
}

#[cfg(feature = "bpf")]
fn bpf(
    a: &Args,
    c: KernelCheck,
    duration: Option<std::time::Duration>,
    stop: &AtomicBool,
) -> std::io::Result<Report> {
    let o = strata_trace::bpf::Options {
        duration,
        min_wait_ms: a.min_wait,
        mode: if a.detail {
            Mode::Detail
        } else {
            Mode::Default
        },
        naive: a.naive,
        stop,
    };
    strata_trace::bpf::run(c, o)
}

#[cfg(not(feature = "bpf"))]
fn bpf(
    _: &Args,
    _: KernelCheck,
    _: Option<std::time::Duration>,
    _: &AtomicBool,
) -> std::io::Result<Report> {
    Err(std::io::Error::other(
        "this strata was built without the `bpf` feature: use --producer tracefs",
    ))
}
