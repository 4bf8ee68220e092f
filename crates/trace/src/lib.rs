//! strata trace: diagnose host mount stalls on `shrinker_rwsem`.
//!
//! - [`check`]: is this kernel exposed (`rwsem`) or not (`lockless`), from kallsyms and BTF;
//! - [`btf`], [`kallsyms`]: the readers it uses (no libbpf, no tracefs);
//! - [`analyze`]: kernel events (lock holds and waits, shrinker calls, scheduling, mounts) →
//!   waits attributed to holders and shrinkers, mount latency by phase;
//! - [`report`], [`render`]: the report (JSON) and its human form;
//! - [`bpf`] (feature `bpf`, default): the eBPF event producer (CO-RE programs, libbpf,
//!   linked statically), in a default mode cheap enough to leave on and a detail mode;
//! - [`tracefs`]: the fallback producer on tracefs kprobes/tracepoints (no BTF, no clang);
//! - [`naive`]: what the usual bpftrace script would report, from the same events;
//! - [`vmstat`]: reclaim counters and PSI per second;
//! - [`workload`]: the page-fault loop the tracer's overhead is measured on.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod analyze;
#[cfg(feature = "bpf")]
pub mod bpf;
pub mod btf;
pub mod check;
pub mod kallsyms;
pub mod naive;
pub mod render;
pub mod report;
#[allow(unsafe_code)]
mod sys;
pub mod tracefs;
pub mod vmstat;
pub mod workload;

pub use check::{KernelCheck, ShrinkerLock};
pub use report::{Mode, Report};

/// Say on stderr that events are being recorded (the probes are attached): the lab waits for
/// this line before it starts the pressure.
pub fn announce(producer: &str, duration: Option<std::time::Duration>) {
    eprintln!(
        "strata trace: tracing with {producer} {} (Ctrl-C to stop)",
        match duration {
            Some(d) => format!("for {} s", d.as_secs_f64()),
            None => "until stopped".into(),
        }
    );
}
