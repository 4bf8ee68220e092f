//! Run the request-stream fuzzer for a fixed time: `cargo run --profile fuzz -p strata-serve
//! --features test-utils --example fuzz_requests -- [SECONDS] [FIRST_SEED]`. Prints executions/s and every finding
//! (seed, request index, hex bytes for a regression test; a run that hangs is one too, with
//! its seed); exits 1 if there was one.
//!
//! `... --example fuzz_requests -- corpus DIR [COUNT]` instead writes COUNT (default 16) request
//! streams recorded from structured runs into DIR: a seed corpus for the cargo-fuzz target.

use std::time::{Duration, Instant};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("corpus") {
        return write_corpus();
    }
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(60);
    let mut seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    const PER_SEED: u64 = 5000;
    let t0 = Instant::now();
    let (mut execs, mut runs, mut findings) = (0u64, 0u64, 0u64);
    let (mut ok, mut err, mut noreply, mut bad) = (0u64, 0u64, 0u64, 0u64);
    while t0.elapsed() < Duration::from_secs(secs) {
        // A request that blocks the daemon is a finding too: each run gets a watchdog.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(strata_serve::fuzzing::run_seed(seed, PER_SEED));
        });
        let Ok(result) = rx.recv_timeout(Duration::from_secs(60)) else {
            println!("FINDING: seed {seed}: a run of {PER_SEED} requests hung for 60 s");
            findings += 1;
            break;
        };
        match result {
            Ok(st) => {
                execs += st.requests;
                ok += st.replies_ok;
                err += st.replies_err;
                noreply += st.no_reply;
                bad += st.bad_chains;
            }
            Err(f) => {
                findings += 1;
                execs += f.request;
                println!("FINDING {f:#?}");
            }
        }
        runs += 1;
        seed += 1;
    }
    let el = t0.elapsed().as_secs_f64();
    println!(
        "{execs} requests in {el:.1} s ({:.0}/s), {runs} runs (seeds up to {}), {findings} findings; \
         replies ok {ok}, error {err}, none {noreply}; bad chains {bad}",
        execs as f64 / el,
        seed - 1
    );
    std::process::exit(if findings > 0 { 1 } else { 0 });
}

fn write_corpus() {
    let dir = std::path::PathBuf::from(std::env::args().nth(2).unwrap_or_else(|| {
        eprintln!("usage: fuzz_requests corpus DIR [COUNT]");
        std::process::exit(2)
    }));
    let count: u64 = std::env::args()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {dir:?}: {e}");
        std::process::exit(1);
    }
    for seed in 1..=count {
        // 150 requests: a few KiB, inside the libFuzzer -max_len of scripts/fuzz-requests.
        match strata_serve::fuzzing::stream_for_seed(seed, 150) {
            Ok(bytes) => {
                let p = dir.join(format!("seed-{seed}"));
                if let Err(e) = std::fs::write(&p, &bytes) {
                    eprintln!("cannot write {p:?}: {e}");
                    std::process::exit(1);
                }
            }
            Err(f) => {
                println!("FINDING while recording seed {seed}: {f:#?}");
                std::process::exit(1);
            }
        }
    }
    println!("{count} seed streams in {dir:?}");
}
