//! Run the request-stream fuzzer for a fixed time: `cargo run --release -p strata-serve
//! --example fuzz_requests -- [SECONDS] [FIRST_SEED]`. Prints executions/s and every finding
//! (seed, request index, hex bytes for a regression test; a run that hangs is one too, with
//! its seed); exits 1 if there was one.

use std::time::{Duration, Instant};

fn main() {
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
