//! strata trace: diagnose host mount stalls on `shrinker_rwsem`.
//!
//! - [`check`]: is this kernel exposed (`rwsem`) or not (`lockless`), from kallsyms and BTF;
//! - [`btf`], [`kallsyms`]: the readers it uses (no libbpf, no tracefs);
//! - [`analyze`]: kernel events (lock holds and waits, shrinker calls, scheduling, mounts) →
//!   waits attributed to holders and shrinkers, mount latency by phase;
//! - [`report`], [`render`]: the report (JSON) and its human form;
//! - [`tracefs`]: the event producer on tracefs kprobes/tracepoints (no libbpf yet);
//! - [`vmstat`]: reclaim counters and PSI per second.

pub mod analyze;
pub mod btf;
pub mod check;
pub mod kallsyms;
pub mod render;
pub mod report;
pub mod tracefs;
pub mod vmstat;

pub use check::{KernelCheck, ShrinkerLock};
pub use report::Report;
