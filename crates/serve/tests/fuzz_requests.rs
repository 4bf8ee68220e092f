//! A short run of the request-stream fuzzer (`strata_serve::fuzzing`): structured-random FUSE
//! requests through the daemon's own request path over a temp tree. No panic, nothing outside
//! upper/work changed, no fd left behind. `examples/fuzz_requests.rs` runs it for longer.

use std::time::Instant;

#[test]
fn random_request_streams_fail_cleanly() {
    let t = Instant::now();
    let mut total = 0;
    for seed in 1..=4u64 {
        match strata_serve::fuzzing::run_seed(seed, 5000) {
            Ok(st) => {
                eprintln!("seed {seed}: {st:?}");
                assert!(st.replies_ok > 300, "too few requests got through: {st:?}");
                assert!(
                    st.max_live_nodes > 3,
                    "the fuzzer never got past the root: {st:?}"
                );
                total += st.requests;
            }
            Err(f) => panic!("finding: {f:#?}"),
        }
    }
    eprintln!("{total} requests in {:?}", t.elapsed());
}
