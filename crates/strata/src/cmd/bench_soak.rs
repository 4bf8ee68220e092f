//! `strata bench sessions` and `strata bench soak`: many VM sessions against one real
//! `strata daemon`, driven by vhost-user frontends (no VMs booted; see strata_lab::soak).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use strata_lab::soak;

use crate::args::{json_line, json_pretty, JsonArg, OutputArgs};
use crate::error::{Error, Result};

#[derive(Args)]
pub struct SessionsArgs {
    /// Connected session counts to measure at (repeatable; default 1, 10, 100).
    #[arg(long = "sessions")]
    counts: Vec<usize>,
    /// Print the samples as JSON (one per count, then one after every session ended).
    #[command(flatten)]
    json: JsonArg,
}

#[derive(Args)]
pub struct SoakArgs {
    /// Sessions doing I/O at once.
    #[arg(long, default_value_t = 8)]
    sessions: usize,
    /// How long, in seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Sampling interval of the daemon's RSS/fds/threads, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Pause of each session between rounds of I/O, in milliseconds (0: as fast as it goes).
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// `--json`: every sample and the summary as JSON on stdout instead of the summary;
    /// `--output FILE`: also written to FILE.
    #[command(flatten)]
    out: OutputArgs,
    /// Draw RSS and open fds over time as an SVG here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn me() -> Result<PathBuf> {
    std::env::current_exe()
        .map_err(|e| Error::failed(format!("cannot find my own binary (/proc/self/exe): {e}")))
}

pub fn sessions(a: SessionsArgs) -> Result {
    let counts = if a.counts.is_empty() {
        vec![1, 10, 100]
    } else {
        a.counts
    };
    let samples =
        soak::sessions(&me()?, &counts, &mut |line| eprintln!("{line}")).map_err(Error::failed)?;
    if a.json.json {
        println!("{}", json_line(&samples)?);
        return Ok(());
    }
    println!(
        "{:>9} {:>10} {:>10} {:>11} {:>8} {:>6}",
        "sessions", "RSS KiB", "anon KiB", "shared KiB", "threads", "fds"
    );
    for (i, s) in samples.iter().enumerate() {
        let label = match i {
            0 => "0 (idle)".to_string(),
            i if i + 1 == samples.len() => "0 (after)".to_string(),
            _ => s.sessions.to_string(),
        };
        println!(
            "{:>9} {:>10} {:>10} {:>11} {:>8} {:>6}",
            label, s.rss_kib, s.anon_kib, s.shared_kib, s.threads, s.fds
        );
    }
    let connected: Vec<&soak::ProcSample> = samples.iter().filter(|s| s.sessions > 0).collect();
    if let (Some(first), Some(last)) = (connected.first(), connected.last()) {
        if last.sessions > first.sessions {
            let per = |f: fn(&soak::ProcSample) -> u64| {
                (f(last) as f64 - f(first) as f64) / (last.sessions - first.sessions) as f64
            };
            println!(
                "per additional session ({} -> {}): RSS {:.0} KiB, anon {:.0} KiB, {:.1} threads, {:.1} fds",
                first.sessions,
                last.sessions,
                per(|s| s.rss_kib),
                per(|s| s.anon_kib),
                per(|s| s.threads),
                per(|s| s.fds)
            );
        }
    }
    Ok(())
}

pub fn soak(a: SoakArgs) -> Result {
    let report = soak::soak(
        &me()?,
        a.sessions.max(1),
        Duration::from_secs(a.seconds),
        Duration::from_millis(a.interval_ms.max(50)),
        Duration::from_millis(a.pause_ms),
        &mut |s, reqs| {
            eprintln!(
                "t={:>6.1}s  RSS {:>7} KiB  anon {:>7} KiB  fds {:>4}  threads {:>3}  requests {}",
                s.t_s, s.rss_kib, s.anon_kib, s.fds, s.threads, reqs
            )
        },
    )
    .map_err(Error::failed)?;
    if a.out.json {
        println!("{}", json_pretty(&report)?);
    } else {
        println!("{}", report.summary());
    }
    a.out.write(&report)?;
    if let Some(p) = &a.plot {
        soak::soak_svg(&report, p)
            .map_err(|e| Error::failed(format!("cannot draw {}: {e}", p.display())))?;
    }
    if report.errors > 0 {
        return Err(Error::failed(format!(
            "{} errors in {} FUSE requests",
            report.errors, report.requests
        )));
    }
    Ok(())
}
