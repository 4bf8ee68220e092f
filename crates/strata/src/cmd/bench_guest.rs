//! `strata bench guest` (host: boot the same guest over three rootfs setups and time I/O
//! workloads) and `strata bench guest-io` (inside that guest: one timed workload).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use strata_lab::guest_bench::{
    self, GuestBenchConfig, GuestBenchReport, RootfsKind, Setup, Workload,
};
use strata_vm::kernel::KernelChoice;

#[derive(clap::Args)]
pub struct BenchGuestArgs {
    /// Guest kernel: 6.1 or 6.12.
    #[arg(long, value_parser = str::parse::<KernelChoice>, default_value = "6.1")]
    kernel: KernelChoice,
    /// virtiofsd (a), strata (b) or erofs (c); repeat to pick several (default: all three).
    #[arg(long = "setup", value_parser = str::parse::<Setup>)]
    setups: Vec<Setup>,
    /// read, walk, create, write or seqread; repeat to pick several (default: all).
    #[arg(long = "workload", value_parser = str::parse::<Workload>)]
    workloads: Vec<Workload>,
    /// Boots per setup (interleaved); the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// The rootfs: debian (3 layers from Debian 12 packages, cached) or tiny (busybox, for
    /// smoke tests).
    #[arg(long, default_value = "debian", value_parser = parse_rootfs)]
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
    /// Write the full result as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the ratios to (a) as an SVG bar chart.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Longest one VM may run, in seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Working directory (default: a temp dir, removed afterwards).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Do not boot anything: re-print (and re-draw with --plot) a result saved with --json.
    #[arg(long)]
    from_json: Option<PathBuf>,
}

fn parse_rootfs(s: &str) -> Result<RootfsKind, String> {
    match s {
        "debian" => Ok(RootfsKind::Debian),
        "tiny" => Ok(RootfsKind::Tiny),
        o => Err(format!("unknown rootfs {o:?}: use debian or tiny")),
    }
}

#[derive(clap::Args)]
pub struct GuestIoArgs {
    #[arg(value_parser = str::parse::<Workload>)]
    workload: Workload,
    /// The mounted rootfs.
    dir: PathBuf,
    #[arg(long, default_value_t = 5000)]
    small: u64,
    #[arg(long, default_value_t = 256)]
    seq_mib: u64,
}

/// Inside the bench guest: run one workload, print its `@result` line.
pub fn guest_io(a: GuestIoArgs) -> ExitCode {
    match guest_bench::guest_io(a.workload, &a.dir, a.small, a.seq_mib) {
        Ok(r) => {
            println!("{}", guest_bench::result_line(a.workload, &r));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "strata bench guest-io {} {}: {e}",
                a.workload.name(),
                a.dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

pub fn bench_guest(a: BenchGuestArgs) -> ExitCode {
    if let Some(p) = &a.from_json {
        let report: GuestBenchReport = match std::fs::read(p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("strata bench guest: cannot load {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        };
        return finish(&a, &report);
    }
    // SIGINT/SIGTERM set the flag: the running VM is killed, and everything below is cleaned
    // up on the way out (host overlay unmounted, virtiofsd/strata serve stopped, workdir
    // removed). A second signal exits at once.
    // strata serve (setup (b)) prints its FUSE request counts when the guest unmounts. Set
    // while this process is still single-threaded; the serve processes inherit it.
    std::env::set_var(guest_bench::OPSTATS_ENV, "1");
    let stop = match strata_lab::bench::stop_on_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("strata bench guest: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut tmp = None;
    let Some((strata, workdir)) =
        crate::binary_and_workdir("bench-guest", a.workdir.clone(), &mut tmp)
    else {
        return ExitCode::FAILURE;
    };
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
        workdir: workdir.clone(),
        timeout: Duration::from_secs(a.timeout),
        opstats: a.opstats,
    };
    let mut progress = |s: &str| eprintln!("bench guest: {s}");
    let result = guest_bench::run(&strata, &cfg, stop.clone(), &mut progress);
    if a.workdir.is_some() {
        // A given workdir keeps consoles and logs; drop only the big per-boot files.
        for e in std::fs::read_dir(&workdir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(e.path().join("scratch.img"));
            let _ = std::fs::remove_dir_all(e.path().join("upper"));
        }
    }
    drop(tmp);
    match result {
        Ok(report) => finish(&a, &report),
        Err(e) => {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                eprintln!("strata bench guest: interrupted; cleaned up");
                return ExitCode::from(130);
            }
            eprintln!("strata bench guest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn finish(a: &BenchGuestArgs, report: &GuestBenchReport) -> ExitCode {
    print!("{}", guest_bench::table(report));
    print!("{}", guest_bench::opstats_table(report));
    if let (Some(p), None) = (&a.json, &a.from_json) {
        let v = serde_json::to_vec_pretty(report).unwrap_or_default();
        if let Err(e) = std::fs::write(p, v) {
            eprintln!("strata bench guest: cannot write {}: {e}", p.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(p) = &a.plot {
        if let Err(e) = guest_bench::ratio_svg(report, p) {
            eprintln!("strata bench guest: cannot draw {}: {e}", p.display());
            return ExitCode::FAILURE;
        }
        eprintln!("bench guest: wrote {}", p.display());
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
