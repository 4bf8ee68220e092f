//! Coverage-guided version of the request fuzzer: libFuzzer's bytes are a stream of raw FUSE
//! requests (u16 length + bytes each) for the daemon's own request path over a temp tree.
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run requests` (stable toolchain); `scripts/fuzz-requests SECONDS` runs both fuzzers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(f) = strata_serve::fuzzing::run_bytes(data) {
        panic!("finding: {f:#?}");
    }
});
