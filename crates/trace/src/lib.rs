//! strata trace: diagnose host mount stalls on `shrinker_rwsem`.
//!
//! - [`check`]: is this kernel exposed (`rwsem`) or not (`lockless`), from kallsyms and BTF;
//! - [`btf`], [`kallsyms`]: the readers it uses (no libbpf, no tracefs).

pub mod btf;
pub mod check;
pub mod kallsyms;

pub use check::{KernelCheck, ShrinkerLock};
