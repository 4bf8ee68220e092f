//! `strata trace`: is this kernel exposed to the shrinker_rwsem mount stall (`--check`), and
//! who holds the lock while a mount waits (eBPF, or tracefs kprobes/tracepoints as a fallback).

use std::io::Write;
use std::path::PathBuf;

use strata_trace::check;

use crate::args::{json_line, OutputArgs};
use crate::error::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Only say whether memory reclaim holds the lock mounts take on this kernel: `rwsem`
    /// (exposed, Linux < 6.7) or `lockless` (6.7+ or a backport), from kallsyms and BTF.
    #[arg(long)]
    check: bool,
    /// `--json`: the verdict or the report as one line of JSON on stdout; `--output FILE`:
    /// also written to FILE.
    #[command(flatten)]
    out: OutputArgs,
    /// Symbol listing to read instead of /proc/kallsyms (e.g. another kernel's System.map).
    #[arg(long, value_name = "FILE")]
    kallsyms: Option<PathBuf>,
    /// BTF to read instead of /sys/kernel/btf/vmlinux: raw BTF or a vmlinux ELF.
    #[arg(long, value_name = "FILE")]
    btf: Option<PathBuf>,
    /// Trace for this many seconds (default: until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// List writer waits on the lock of at least this long (shorter ones are only counted).
    #[arg(long, value_name = "MS", default_value_t = 10.0)]
    min_wait: f64,
    /// Where events come from: `bpf` (CO-RE programs, needs BTF), `tracefs` (kprobes and
    /// tracepoints through /sys/kernel/tracing), or `auto` (bpf if it loads, else tracefs).
    #[arg(long, value_enum, default_value_t = Producer::Auto)]
    producer: Producer,
    /// Also report what the usual bpftrace script (kprobe:down_read_trylock →
    /// kretprobe:up_read) would have said, from the same trace (bpf producer only).
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
    let c = check::check(a.kallsyms.as_deref(), a.btf.as_deref());
    if !a.check {
        return trace(&a, c);
    }
    output(&a.out, &c, || check::render(&c))?;
    match c.shrinker_lock {
        strata_trace::ShrinkerLock::Unknown => Err(Error::failed(
            "no verdict: neither kallsyms nor BTF says which shrinker lock this kernel has",
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

fn trace(a: &Args, c: strata_trace::KernelCheck) -> Result {
    if !c.root {
        return Err(Error::refused(
            "tracing needs root (BPF programs, tracefs); run it with sudo. --check works without",
        ));
    }
    if c.shrinker_lock == strata_trace::ShrinkerLock::Lockless {
        return Err(Error::refused(
            "this kernel's shrinkers are lockless: mounts do not wait for reclaim (see strata \
             trace --check); nothing to trace",
        ));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Error::failed(format!("cannot install signal handlers: {e}")))?;
    }
    let duration = a.duration.map(std::time::Duration::from_secs_f64);
    let bpf = |c| {
        strata_trace::bpf::run(
            c,
            strata_trace::bpf::Options {
                duration,
                min_wait_ms: a.min_wait,
                naive: a.naive,
                stop: &stop,
            },
        )
    };
    let tracefs = |c| strata_trace::tracefs::run(c, duration, a.min_wait, &stop);
    let res = match a.producer {
        Producer::Bpf => bpf(c),
        Producer::Tracefs => tracefs(c),
        Producer::Auto => match strata_trace::bpf::available(&c) {
            Ok(_) => match bpf(c.clone()) {
                Ok(r) => Ok(r),
                Err(e) => {
                    eprintln!("strata trace: eBPF producer failed ({e}); using tracefs");
                    tracefs(c).map(|mut r| {
                        r.missing.insert(0, format!("eBPF producer: {e}"));
                        r
                    })
                }
            },
            Err(why) => tracefs(c).map(|mut r| {
                r.missing.insert(0, format!("eBPF producer: {why}"));
                r
            }),
        },
    };
    let mut r = res.map_err(Error::failed)?;
    if a.naive && r.naive.is_none() && r.source != "ebpf" {
        r.missing
            .push("--naive: only the eBPF producer records the naive script's events".into());
    }
    output(&a.out, &r, || strata_trace::render::render(&r))
}
