//! `strata bench requests`: each setup's FUSE requests per created file, replayed against the
//! real daemons by an in-process vhost-user frontend (no guest; see strata_lab::requests).

use std::path::PathBuf;

use clap::Args as ClapArgs;
use strata_lab::requests::{self, Config, Report, Setup, Workload};

use crate::args::{json_pretty, OutputArgs};
use crate::error::{Error, Result};

#[derive(ClapArgs)]
pub struct Args {
    /// Setups to run (repeatable; default all): virtiofsd (a), strata (b)/(d: the guest's
    /// overlay over the served upper), strata-union (f).
    #[arg(long = "setup", value_parser = Setup::parse)]
    setups: Vec<Setup>,
    /// Workloads (repeatable; default both): create (a new 1 KiB file), append (a 100-byte
    /// `write()` to an open file).
    #[arg(long = "workload", value_parser = Workload::parse)]
    workloads: Vec<Workload>,
    /// Files created per setup and run (appends: 4 times as many writes).
    #[arg(long, default_value_t = 5000)]
    files: usize,
    /// Bare round trips (GETATTR: one `fstat` on the server) timed per setup and run.
    #[arg(long, default_value_t = 5000)]
    round_trips: usize,
    /// Interleaved runs per setup (the table shows medians).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Directory to work in (default: a temp dir; uppers go on a loop-mounted ext4 in it).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// `--json`: the report as JSON on stdout instead of the table; `--output FILE`: also
    /// written to FILE.
    #[command(flatten)]
    out: OutputArgs,
    /// Draw each setup's time per item, request kind by request kind, as an SVG here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print (and plot) a report written earlier with `--output` instead of running.
    #[arg(long, value_name = "FILE")]
    from_json: Option<PathBuf>,
}

pub fn run(a: Args) -> Result {
    let report = match &a.from_json {
        Some(p) => crate::args::load_json(p)?,
        None => measure(&a)?,
    };
    if a.out.json {
        println!("{}", json_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    a.out.write(&report)?;
    if let Some(p) = &a.plot {
        requests::breakdown_svg(&report, p)
            .map_err(|e| Error::failed(format!("cannot draw {}: {e}", p.display())))?;
    }
    Ok(())
}

fn measure(a: &Args) -> Result<Report> {
    let strata = std::env::current_exe()
        .map_err(|e| Error::failed(format!("cannot find my own binary: {e}")))?;
    let cfg = Config {
        strata,
        setups: if a.setups.is_empty() {
            Setup::ALL.to_vec()
        } else {
            a.setups.clone()
        },
        workloads: if a.workloads.is_empty() {
            Workload::ALL.to_vec()
        } else {
            a.workloads.clone()
        },
        files: a.files.max(1),
        round_trips: a.round_trips,
        runs: a.runs.max(1),
        workdir: a.workdir.clone(),
    };
    requests::run(&cfg, &mut |line| eprintln!("{line}")).map_err(Error::failed)
}

/// The summary as a text table: per workload and setup, then each one's requests.
fn table(r: &Report) -> String {
    let mut s = format!(
        "{} files of 1 KiB (create) and {} writes of 100 bytes (append) per setup and run, \
         medians of {} runs (uppers on {})\n",
        r.files,
        r.files * 4,
        r.runs,
        r.data_fs
    );
    let mut workload = None;
    for x in &r.summary {
        if workload != Some(x.workload) {
            workload = Some(x.workload);
            s.push_str(&format!(
                "\n{:<30} {:>10} {:>9} {:>11} {:>8}\n",
                x.workload.name(),
                format!("µs/{}", x.workload.item()),
                "requests",
                "round trip",
                "ratio"
            ));
        }
        let ratio = x
            .ratio_to_virtiofsd
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<30} {:>10.1} {:>9} {:>8.1} µs {:>8}\n",
            x.setup.label(),
            x.per_item_us,
            x.requests_per_item,
            x.round_trip_us,
            ratio
        ));
    }
    s.push('\n');
    for x in &r.summary {
        let base = r
            .summary
            .iter()
            .find(|b| b.setup == Setup::Virtiofsd && b.workload == x.workload);
        if let (Some(us), Some(a)) = (x.break_even_guest_us, base) {
            s.push_str(&format!(
                "{} {}: {:.1} µs per {} ahead of (a) here, which its guest's own work for {} \
                 more requests (and its overlay) may spend: {us:.1} µs per request\n",
                x.setup.label(),
                x.workload.name(),
                a.per_item_us - x.per_item_us,
                x.workload.item(),
                x.requests_per_item - a.requests_per_item,
            ));
        }
    }
    for x in &r.summary {
        s.push_str(&format!("\n{} {}:\n", x.setup.label(), x.workload.name()));
        for (op, (n, us)) in &x.ops {
            s.push_str(&format!("  {op:<36} {n:>4.1} × {us:>7.1} µs\n"));
        }
    }
    s
}
