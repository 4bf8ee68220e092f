//! `strata bench`: host-side costs of a container start (`create`), the daemon's memory
//! (`sessions`, `soak`), guest I/O over three rootfs setups (`guest`; `guest-io` inside it).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::Subcommand;
use strata_lab::bench::{self, BenchConfig, BenchError, Progress, Strategy};

use crate::error::{Error, Kind, Result};

#[derive(Subcommand)]
pub enum Cmd {
    /// Time one container start and end per strategy: a host overlay mount (Kata-style), a
    /// tmpfs mount (control), and strata's set-up up to listening (no mount).
    Create(CreateArgs),
    /// Memory of one `strata daemon` with 1, 10, 100 connected sessions (vhost-user
    /// frontends doing real FUSE requests; no VM booted).
    Sessions(super::bench_soak::SessionsArgs),
    /// Sessions of mixed I/O against one `strata daemon` for a fixed time, its RSS, fds and
    /// threads sampled every second (flat is the goal).
    Soak(super::bench_soak::SoakArgs),
    /// Boot one guest kernel over (a) virtiofsd + host overlay, (b) strata, (c) EROFS images
    /// and time the same I/O workloads (ratios to (a)).
    Guest(super::bench_guest::Args),
    /// Replay the FUSE requests each setup's guest sends per created file against the real
    /// daemons, without a guest: the server's cost per file where round trips are cheap.
    Requests(super::bench_requests::Args),
    /// Inside the `bench guest` VM: run one timed workload.
    #[command(hide = true)]
    GuestIo(super::bench_guest::GuestIoArgs),
    /// Inside the trace overhead benchmark's VM: the page-fault loop (JSON on stdout).
    #[command(hide = true)]
    PageFaults(PageFaultsArgs),
}

impl Cmd {
    /// `bench VERB`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Create(_) => "bench create",
            Cmd::Sessions(_) => "bench sessions",
            Cmd::Soak(_) => "bench soak",
            Cmd::Guest(_) => "bench guest",
            Cmd::Requests(_) => "bench requests",
            Cmd::GuestIo(_) => "bench guest-io",
            Cmd::PageFaults(_) => "bench page-faults",
        }
    }
}

pub fn run(cmd: Cmd) -> Result {
    match cmd {
        Cmd::Create(a) => create(a),
        Cmd::Sessions(a) => super::bench_soak::sessions(a),
        Cmd::Soak(a) => super::bench_soak::soak(a),
        Cmd::Guest(a) => super::bench_guest::run(a),
        Cmd::Requests(a) => super::bench_requests::run(a),
        Cmd::GuestIo(a) => super::bench_guest::guest_io(a),
        Cmd::PageFaults(a) => page_faults(a),
    }
}

/// `strata bench page-faults`: the page-fault loop of the trace overhead benchmark
/// (scripts/bench-trace-overhead).
#[derive(clap::Args)]
pub struct PageFaultsArgs {
    /// Iterations of: map MIB fresh anonymous memory, touch every page, unmap.
    #[arg(long, default_value_t = 200)]
    n: u32,
    /// Size of each mapping.
    #[arg(long, default_value_t = 8)]
    mib: usize,
}

fn page_faults(a: PageFaultsArgs) -> Result {
    let r = strata_trace::workload::page_faults(a.n, a.mib).map_err(Error::failed)?;
    println!("{}", crate::args::json_line(&r)?);
    Ok(())
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Directory to work in (created if missing; everything created in it is removed).
    #[arg(long)]
    dir: PathBuf,
    /// Timed iterations per strategy (after 5 untimed warm-up iterations).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    n: u32,
    /// A strategy to time; repeat to pick several (default: all four, in this order).
    #[arg(long = "strategy", value_enum)]
    strategies: Vec<Strategy>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// With --json: include every sample (`samples_ms`, ascending) for latency plots.
    #[arg(long, requires = "json")]
    samples: bool,
    /// Untimed pause between iterations, in milliseconds.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Stop early (after at least one timed iteration) once this file exists; --n is then the
    /// maximum.
    #[arg(long)]
    until: Option<PathBuf>,
}

fn create(a: CreateArgs) -> Result {
    let mut strategies: Vec<Strategy> = Vec::new();
    for s in a.strategies {
        if !strategies.contains(&s) {
            strategies.push(s);
        }
    }
    if strategies.is_empty() {
        strategies = Strategy::ALL.to_vec();
    }
    let cfg = BenchConfig {
        dir: a.dir,
        n: a.n as usize,
        strategies,
        warmup: bench::WARMUP,
        interval: std::time::Duration::from_millis(a.interval_ms),
        until: a.until,
        strata_bin: std::env::current_exe().ok(),
    };
    let stop = bench::stop_on_signals()
        .map_err(|e| Error::failed(format!("cannot install signal handlers: {e}")))?;
    let tty = std::io::stderr().is_terminal();
    let mut last: Option<std::time::Instant> = None;
    let mut progress = |p: Progress| {
        let due = !matches!(last, Some(t) if t.elapsed().as_millis() < 200) || p.done == p.total;
        if tty && due {
            last = Some(std::time::Instant::now());
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K{}: {}/{}", p.strategy.name(), p.done, p.total);
            let _ = err.flush();
        }
    };
    let result = bench::run(&cfg, &stop, &mut progress);
    if tty {
        eprint!("\r\x1b[K");
    }
    let report = result.map_err(|e| {
        let kind = match &e {
            BenchError::Interrupted => Kind::Interrupted,
            BenchError::Config(_) => Kind::Refused,
            _ => Kind::Failed,
        };
        Error::new(kind, e)
    })?;
    if a.json {
        let report = if a.samples {
            report
        } else {
            report.without_samples()
        };
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
