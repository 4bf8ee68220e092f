//! `strata bench guest` (host: boot the same guest over three rootfs setups and time I/O
//! workloads) and `strata bench guest-io` (inside that guest: one timed workload).

use std::path::PathBuf;
use std::time::Duration;

use strata_lab::guest_bench::{
    self, GuestBenchConfig, GuestBenchReport, RootfsKind, Setup, Workload,
};
use strata_vm::kernel::KernelChoice;

use crate::args::{json_pretty, load_json, OutputArgs};
use crate::error::{Error, Kind, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Guest kernel: 6.1 or 6.12.
    #[arg(long, value_parser = str::parse::<KernelChoice>, default_value = "6.1")]
    kernel: KernelChoice,
    /// A setup to run; repeat to pick several (default: virtiofsd, strata, erofs,
    /// strata-erofs and strata-union).
    #[arg(long = "setup", value_enum)]
    setups: Vec<Setup>,
    /// A workload to time; repeat to pick several (default: read, walk, create, write and
    /// seqread; statfs, append and pjdfstest only when named).
    #[arg(long = "workload", value_enum)]
    workloads: Vec<Workload>,
    /// Boots per setup (interleaved); the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// The rootfs: debian (3 layers from Debian 12 packages, cached) or tiny (busybox, for
    /// smoke tests).
    #[arg(long, value_enum, default_value_t = RootfsKind::Debian)]
    rootfs: RootfsKind,
    /// Files created by the create workload.
    #[arg(long, default_value_t = 5000)]
    small: u64,
    /// MiB written by write and read back by seqread.
    #[arg(long, default_value_t = 256)]
    seq_mib: u64,
    /// Guest RAM in MiB (the same for every setup).
    #[arg(long, default_value_t = 1024)]
    mem_mib: u32,
    /// Also boot (b) once per workload to count the FUSE requests each one makes.
    #[arg(long)]
    opstats: bool,
    /// NAME=VALUE: also boot every setup that runs `strata serve` with this in the daemon's
    /// environment, in the same interleaved runs, reported as SETUP+NAME=VALUE (an A/B of a
    /// daemon setting, e.g. STRATA_SERVE_POLL_US=0).
    #[arg(long, value_name = "NAME=VALUE", value_parser = guest_bench::parse_vary)]
    vary: Option<(String, String)>,
    /// `--json`: the full result as JSON on stdout instead of the tables; `--output FILE`: also
    /// written to FILE.
    #[command(flatten)]
    out: OutputArgs,
    /// Draw the ratios to (a) as an SVG bar chart.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Longest one VM may run, in seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Working directory (default: a temp dir, removed afterwards).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Do not boot anything: re-print (and re-draw with --plot) a result saved with --output.
    #[arg(long)]
    from_json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct GuestIoArgs {
    #[arg(value_enum)]
    workload: Workload,
    /// The mounted rootfs.
    dir: PathBuf,
    #[arg(long, default_value_t = 5000)]
    small: u64,
    #[arg(long, default_value_t = 256)]
    seq_mib: u64,
}

/// Inside the bench guest: run one workload, print its `@result` line.
pub fn guest_io(a: GuestIoArgs) -> Result {
    let r = guest_bench::guest_io(a.workload, &a.dir, a.small, a.seq_mib)
        .map_err(|e| Error::failed(format!("{} {}: {e}", a.workload.name(), a.dir.display())))?;
    println!("{}", guest_bench::result_line(a.workload, &r));
    Ok(())
}

pub fn run(a: Args) -> Result {
    if let Some(p) = &a.from_json {
        let report: GuestBenchReport = load_json(p)?;
        return finish(&a, &report);
    }
    // strata serve (setup (b)) prints its FUSE request counts when the guest unmounts. Set
    // while this process is still single-threaded; the serve processes inherit it.
    std::env::set_var(guest_bench::OPSTATS_ENV, "1");
    // SIGINT/SIGTERM set the flag: the running VM is killed, and everything below is cleaned
    // up on the way out (host overlay unmounted, virtiofsd/strata serve stopped, workdir
    // removed). A second signal exits at once.
    let stop = strata_lab::bench::stop_on_signals()
        .map_err(|e| Error::failed(format!("cannot handle signals: {e}")))?;
    let mut tmp = None;
    let (strata, workdir) = super::binary_and_workdir("bench-guest", a.workdir.clone(), &mut tmp)?;
    let cfg = GuestBenchConfig {
        kernel: a.kernel,
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
        runs: a.runs as usize,
        rootfs: a.rootfs,
        small: a.small,
        seq_mib: a.seq_mib,
        mem_mib: a.mem_mib,
        cpus: 2,
        workdir,
        timeout: Duration::from_secs(a.timeout),
        opstats: a.opstats,
        vary: a.vary.clone(),
    };
    let mut progress = |s: &str| eprintln!("bench guest: {s}");
    // A given workdir keeps consoles and logs; the uppers and scratch disks went with the
    // bench's own filesystem.
    let result = guest_bench::run(&strata, &cfg, stop.clone(), &mut progress);
    drop(tmp);
    match result {
        Ok(report) => finish(&a, &report),
        Err(_) if stop.load(std::sync::atomic::Ordering::Relaxed) => {
            Err(Error::new(Kind::Interrupted, "interrupted; cleaned up"))
        }
        Err(e) => Err(Error::failed(e)),
    }
}

fn finish(a: &Args, report: &GuestBenchReport) -> Result {
    if a.out.json {
        println!("{}", json_pretty(report)?);
    } else {
        print!("{}", guest_bench::table(report));
        print!("{}", guest_bench::opstats_table(report));
    }
    if a.from_json.is_none() {
        a.out.write(report)?;
    }
    if let Some(p) = &a.plot {
        guest_bench::ratio_svg(report, p)
            .map_err(|e| Error::failed(format!("cannot draw {}: {e}", p.display())))?;
        eprintln!("bench guest: wrote {}", p.display());
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(Error::failed(report.errors.join("; ")))
    }
}
