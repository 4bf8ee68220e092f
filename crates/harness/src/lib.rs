//! strata-harness: the dev-only harness of strata's tests and lab (never a dependency of the
//! `strata` binary).
//!
//! - [`Strata`] runs the `strata` binary under test ([`strata!`] makes one in an integration
//!   test of the `strata` package).
//! - [`have`], [`require`] and [`needs`]: the one skip policy (see [`needs`]).
//! - [`fixture`] builds rootfs layers (busybox, whiteouts, opaque dirs).
//! - [`session`] runs `strata serve` and `strata daemon` as child processes (optionally under
//!   `strace -f`), waits until they listen, and reads what they did.
//! - [`env`](mod@env) is a two-layer busybox rootfs, its `strata serve` and a Debian guest booted on it.
//! - [`snapshot`] records a tree's metadata and contents, to show nothing changed.
//! - [`child`] runs a test's irreversible checks (seccomp, capabilities) in a child process.

pub mod child;
pub mod env;
pub mod fixture;
pub mod session;
pub mod snapshot;
mod strata;
#[allow(unsafe_code)]
mod sys;

pub use strata::{Run, Strata};

/// A [`Strata`] for the `strata` binary built for this test (only in the integration tests of
/// the `strata` package, where cargo sets `CARGO_BIN_EXE_strata`).
#[macro_export]
macro_rules! strata {
    () => {
        $crate::Strata::new(env!("CARGO_BIN_EXE_strata"))
    };
}

/// The environment variable `scripts/test` sets: every test must run (see [`needs`]).
pub const ALL_TESTS_ENV: &str = "STRATA_VM_TESTS";

/// Whether `tool` is an executable on `$PATH`.
pub fn have(tool: &str) -> bool {
    strata_vm::qemu::find_in_path(tool).is_some()
}

/// For the VM tests: fail (never skip) when one of `tools` is missing.
pub fn require(tools: &[&str]) {
    for tool in tools {
        assert!(
            have(tool),
            "{tool} is missing: run scripts/install-deps.sh (as root)"
        );
    }
}

/// The one skip policy, for a test outside the VM tests that needs root or host tools: whether
/// `test` can run. With `STRATA_VM_TESTS=1` (set by `scripts/test`, which runs everything) a
/// missing prerequisite is a failure; otherwise the test is skipped with a line on stderr that
/// says what it needs. The VM tests themselves never skip ([`require`]).
pub fn needs(test: &str, root: bool, tools: &[&str]) -> bool {
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| !have(t))
        .map(|t| format!("{t} (scripts/install-deps.sh)"))
        .collect();
    if root && !nix::unistd::geteuid().is_root() {
        missing.insert(0, "root".into());
    }
    if missing.is_empty() {
        return true;
    }
    let all = std::env::var_os(ALL_TESTS_ENV).is_some_and(|v| v == "1");
    assert!(
        !all,
        "{test} needs {} ({ALL_TESTS_ENV}=1: nothing may be skipped)",
        missing.join(", ")
    );
    eprintln!(
        "SKIP {test}: needs {} (scripts/test runs it)",
        missing.join(", ")
    );
    false
}
