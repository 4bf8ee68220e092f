//! A short run of the request-stream fuzzer (`strata_serve::fuzzing`): structured-random FUSE
//! requests through the daemon's own request path over a temp tree. No panic, nothing outside
//! upper/work changed, no fd left behind. `examples/fuzz_requests.rs` runs it for longer.

use std::sync::Mutex;
use std::time::Instant;

/// The fuzzer counts this process's open fds: its tests must not run side by side.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn random_request_streams_fail_cleanly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
                let tight = strata_serve::fuzzing::limits_for(seed).max_nodes < 100;
                assert!(
                    !tight || st.enfile > 0,
                    "the tight session limits were never hit: {st:?}"
                );
                total += st.requests;
            }
            Err(f) => panic!("finding: {f:#?}"),
        }
    }
    eprintln!("{total} requests in {:?}", t.elapsed());
}

/// The seccomp allow-list covers every syscall the request path makes: the fuzzer runs under
/// it with a trap (SIGSYS kills the process) instead of the daemon's ENOSYS for anything else.
/// Irreversible, so in a child process: this test binary re-executes itself.
#[test]
fn request_path_stays_inside_the_seccomp_allow_list() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const CHILD: &str = "STRATA_FUZZ_ALLOW_LIST_CHILD";
    if let Some(seed) = std::env::var(CHILD)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        let st = strata_serve::fuzzing::run_seed_with(seed, 5000, || {
            strata_serve::sandbox::forbid_mounts().map_err(|e| e.to_string())?;
            let f = strata_serve::sandbox::allow_list_filter(seccompiler::SeccompAction::Trap)
                .map_err(|e| e.to_string())?;
            seccompiler::apply_filter_all_threads(&f).map_err(|e| e.to_string())
        })
        .unwrap_or_else(|f| panic!("finding: {f:#?}"));
        println!("CHILD-OK {st:?}");
        return;
    }
    // Seed 11 serves the tree; seed 14 `/rootfs` too (copy-ups, whiteouts).
    for seed in [11u64, 14] {
        assert_eq!(strata_serve::fuzzing::union_for(seed), seed == 14);
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "request_path_stays_inside_the_seccomp_allow_list",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, seed.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("CHILD-OK"),
            "seed {seed}: child under the allow-list failed ({}):\n{text}",
            out.status
        );
    }
}

/// The coverage-guided target's entry point (`fuzz/fuzz_targets/requests.rs` is one call to
/// `run_bytes`) in CI without building libFuzzer: streams recorded from structured runs (the
/// seed corpus `scripts/fuzz-requests` gives cargo-fuzz), random bytes, and every input kept
/// in `fuzz/regressions/requests/` (crashes cargo-fuzz found, fixed since) replay cleanly.
#[test]
fn libfuzzer_entry_point_replays_streams_and_regressions() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for seed in [1u64, 3] {
        let stream = strata_serve::fuzzing::stream_for_seed(seed, 1500)
            .unwrap_or_else(|f| panic!("finding while recording: {f:#?}"));
        assert!(stream.len() > 10_000, "stream of seed {seed} too short");
        if let Err(f) = strata_serve::fuzzing::run_bytes(&stream) {
            panic!("finding replaying the stream of seed {seed}: {f:#?}");
        }
    }
    let mut rng = strata_serve::fuzzing::Rng::new(99);
    for _ in 0..20 {
        let len = rng.below(4096) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if let Err(f) = strata_serve::fuzzing::run_bytes(&bytes) {
            panic!("finding on random bytes: {f:#?}");
        }
    }
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/requests");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let bytes = std::fs::read(e.path()).unwrap();
        if let Err(f) = strata_serve::fuzzing::run_bytes(&bytes) {
            panic!("regression {:?} fails again: {f:#?}", e.path());
        }
        n += 1;
    }
    eprintln!("{n} regression inputs replayed from {dir:?}");
}
