//! The CLI tests: what `strata` promises its users, through the binary, without booting a VM.
//! Plain `cargo test` runs them, as any user; a test that needs root or a host tool follows the
//! harness's skip policy (`strata_harness::needs`).
//!
//! - [`serve`]: refused configurations, a socket in use, SIGTERM, `--print-sandbox`;
//! - [`image`]: `strata image`, `rootfs`, `gc`, `serve --rootfs` and `strata daemon` sessions;
//! - [`run`]: `strata run` and `strata initramfs` refusals (usage errors, 125, nothing left);
//! - [`trace`]: `strata trace --check` and tracing on this host;
//! - [`ops`]: completion scripts, man pages, log formats.
//!
//! The VM tests (`tests/vm`) are built only with `--features strata/vm-tests` (scripts/test).

mod image;
mod ops;
mod run;
mod serve;
mod trace;

/// The `strata` binary under test.
fn strata() -> strata_harness::Strata {
    strata_harness::strata!()
}

/// Plain `cargo test` neither builds nor runs the VM tests: this line in its output says so.
#[cfg(not(feature = "vm-tests"))]
#[test]
#[ignore = "the VM tests (tests/vm) run only with --features strata/vm-tests: scripts/test, as root"]
fn vm_tests() {}
