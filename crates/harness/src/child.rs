//! Tests that change their process for good (a seccomp filter, dropped capabilities, Landlock)
//! run their checks in a child: the test binary re-executed for that one test, told by an
//! environment variable that it is the child and given one argument. The child prints
//! `CHILD-OK` when every check passed; the parent asserts that it did and that it exited 0.
//!
//! ```ignore
//! #[test]
//! fn filter_holds() {
//!     if let Some(arg) = strata_harness::child::arg("filter_holds") {
//!         return checks(&arg);
//!     }
//!     strata_harness::child::run("filter_holds", "some/dir");
//! }
//! ```

use std::ffi::{OsStr, OsString};
use std::process::Command;

const TEST: &str = "STRATA_TEST_CHILD";
const ARG: &str = "STRATA_TEST_CHILD_ARG";

/// In the child that [`run`] started for `test`: its argument; otherwise `None`.
pub fn arg(test: &str) -> Option<OsString> {
    (std::env::var_os(TEST)? == test).then(|| std::env::var_os(ARG).unwrap_or_default())
}

/// Re-run `test` of this test binary in a child process with `arg`; panics unless it exits 0
/// having printed `CHILD-OK`. Returns what it printed.
pub fn run(test: &str, arg: impl AsRef<OsStr>) -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(TEST, test)
        .env(ARG, arg.as_ref())
        .output()
        .expect("cannot re-run the test binary");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("CHILD-OK"), "child did not run:\n{text}");
    text
}

/// Spawn `cmd` with this process's fds handed over at fixed numbers: each `(from, to)` makes
/// fd `from` of this process fd `to` of the child (e.g. a listening socket as fd 3 for
/// `strata serve --fd 3`); every `to` below 100.
pub fn pass_fds(cmd: &mut std::process::Command, fds: &[(std::os::fd::RawFd, std::os::fd::RawFd)]) {
    crate::sys::pass_fds(cmd, fds.to_vec());
}
