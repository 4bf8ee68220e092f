//! `strata lab` (host) and `strata lab-guest` (inside the lab's VM).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use strata_lab::stall::{self, LabConfig, LabReport, Scenario};
use strata_vm::kernel::KernelSpec;

#[derive(clap::Args)]
pub struct LabArgs {
    /// Guest kernel: 6.1 (rwsem shrinkers), 6.12 (lockless), or PATH of your own kernel (an
    /// unpacked package root with boot/vmlinuz-RELEASE and lib/modules/RELEASE, or a
    /// linux-image .deb); repeat for a side-by-side run.
    #[arg(long = "kernel", value_parser = str::parse::<KernelSpec>, default_value = "6.1")]
    kernels: Vec<KernelSpec>,
    /// Pressure scenario: dentries, pagecache or memcg.
    #[arg(long, value_parser = str::parse::<Scenario>, default_value = "dentries")]
    scenario: Scenario,
    /// Container starts per strategy in the idle baseline.
    #[arg(long, default_value_t = 200)]
    n: usize,
    /// Negative dentries to create in the guest.
    #[arg(long, default_value_t = 2_500_000)]
    dentries: u64,
    /// Reclaim cycles while measuring under pressure.
    #[arg(long, default_value_t = 3)]
    cycles: u32,
    /// Pause between starts of one strategy, in ms.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 1024)]
    mem_mib: u32,
    /// Write the full result (every sample) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the start-latency CDF (SVG, log-scale x).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Longest one VM may run, in seconds.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Working directory (default: a temp dir, removed afterwards).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Run the scenario on this machine instead of in VMs (dentries only; drops the host's
    /// dentry cache, so the host's own workloads feel it).
    #[arg(long)]
    host: bool,
    /// Do not boot anything: load a result written earlier with --json, print its table and
    /// (with --plot) draw it again.
    #[arg(long)]
    from_json: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum LabGuestCmd {
    /// Stat COUNT absent names in DIR, leaving that many negative dentries in the dcache.
    Dentries { dir: PathBuf, count: u64 },
}

pub fn lab_guest(cmd: LabGuestCmd) -> ExitCode {
    match cmd {
        LabGuestCmd::Dentries { dir, count } => match stall::make_negative_dentries(&dir, count) {
            Ok(d) => {
                println!(
                    "@phase {count} negative dentries in {:.1} s ({:.0}/s)",
                    d.as_secs_f64(),
                    count as f64 / d.as_secs_f64().max(1e-9)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("strata lab-guest dentries {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
    }
}

pub fn lab(a: LabArgs) -> ExitCode {
    if let Some(p) = &a.from_json {
        let report: LabReport = match std::fs::read(p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("strata lab: cannot load {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        };
        return finish(&a, report);
    }
    let mut tmp = None;
    let Some((strata, workdir)) = crate::binary_and_workdir("lab", a.workdir.clone(), &mut tmp)
    else {
        return ExitCode::FAILURE;
    };
    // Ctrl-C / SIGTERM: remove everything the lab created (disk images are GBs), then exit;
    // qemu and strata serve die with this process (PR_SET_PDEATHSIG).
    {
        let workdir = workdir.clone();
        let owned = tmp.is_some();
        let mut subdirs: Vec<String> = a.kernels.iter().map(|k| k.short_name()).collect();
        subdirs.push("host".into());
        if let Ok(mut signals) = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ]) {
            std::thread::spawn(move || {
                if signals.forever().next().is_some() {
                    eprintln!("\nlab: interrupted; removing {}", workdir.display());
                    if owned {
                        let _ = std::fs::remove_dir_all(&workdir);
                    } else {
                        for k in &subdirs {
                            let _ = std::fs::remove_dir_all(workdir.join(k));
                        }
                    }
                    std::process::exit(130);
                }
            });
        }
    }
    let cfg = LabConfig {
        kernels: a.kernels.clone(),
        scenario: a.scenario,
        n: a.n,
        dentries: a.dentries,
        cycles: a.cycles,
        interval_ms: a.interval_ms,
        mem_mib: a.mem_mib,
        disk_gib: 6,
        workdir,
        timeout: Duration::from_secs(a.timeout),
    };
    let mut report = LabReport { runs: Vec::new() };
    if a.host {
        eprintln!(
            "lab: WARNING: --host runs the pressure on THIS machine: {} negative dentries, and \
             drop_caches=2 {} times, which empties the dentry and inode caches of the whole host. \
             Everything it creates lives in {} and is removed at the end.",
            cfg.dentries,
            cfg.cycles,
            cfg.workdir.display()
        );
        let mut progress = |s: &str| eprintln!("lab: {s}");
        match stall::run_host(&strata, &cfg, &cfg.workdir.join("host"), &mut progress) {
            Ok(run) => report.runs.push(run),
            Err(e) => {
                eprintln!("strata lab --host: {e}");
                let _ = std::fs::remove_dir_all(cfg.workdir.join("host"));
                return ExitCode::FAILURE;
            }
        }
        return finish(&a, report);
    }
    for k in &cfg.kernels {
        let mut progress = |s: &str| eprintln!("lab: {s}");
        match stall::run_kernel(&strata, &cfg, k, &mut progress) {
            Ok(run) => report.runs.push(run),
            Err(e) => {
                eprintln!("strata lab: {k}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    finish(&a, report)
}

/// Print, save and draw a finished report.
fn finish(a: &LabArgs, report: LabReport) -> ExitCode {
    print!("{}", stall::table(&report));
    if let (Some(p), None) = (&a.json, &a.from_json) {
        match serde_json::to_vec_pretty(&report) {
            Ok(v) => {
                if let Err(e) = std::fs::write(p, v) {
                    eprintln!("strata lab: cannot write {}: {e}", p.display());
                    return ExitCode::FAILURE;
                }
            }
            Err(e) => eprintln!("strata lab: cannot serialize the report: {e}"),
        }
    }
    if let Some(p) = &a.plot {
        if let Err(e) = strata_lab::plot::cdf_svg(&report, p) {
            eprintln!("strata lab: cannot draw {}: {e}", p.display());
            return ExitCode::FAILURE;
        }
        eprintln!("lab: wrote {}", p.display());
    }
    let failed = report.runs.iter().any(|r| !r.errors.is_empty());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
