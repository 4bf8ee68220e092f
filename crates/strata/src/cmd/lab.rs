//! `strata lab` (host) and `strata lab-guest` (inside the lab's VM).

use std::path::PathBuf;
use std::time::Duration;

use strata_lab::stall::{self, LabConfig, LabReport, Scenario};
use strata_vm::kernel::KernelSpec;

use crate::args::{json_pretty, load_json, OutputArgs};
use crate::error::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Guest kernel: 6.1 (rwsem shrinkers), 6.12 (lockless), or PATH of your own kernel (an
    /// unpacked package root with boot/vmlinuz-RELEASE and lib/modules/RELEASE, or a
    /// linux-image .deb); repeat for a side-by-side run.
    #[arg(long = "kernel", value_parser = str::parse::<KernelSpec>, default_value = "6.1")]
    kernels: Vec<KernelSpec>,
    /// Pressure scenario.
    #[arg(long, value_enum, default_value_t = Scenario::Dentries)]
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
    /// `--json`: the full result (every sample) as JSON on stdout instead of the table;
    /// `--output FILE`: also written to FILE.
    #[command(flatten)]
    out: OutputArgs,
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
    /// Do not boot anything: load a result written earlier with --output, print its table and
    /// (with --plot) draw it again.
    #[arg(long)]
    from_json: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum GuestCmd {
    /// Stat COUNT absent names in DIR, leaving that many negative dentries in the dcache.
    Dentries { dir: PathBuf, count: u64 },
}

/// `strata lab-guest`, inside the lab's VM.
pub fn guest(cmd: GuestCmd) -> Result {
    match cmd {
        GuestCmd::Dentries { dir, count } => {
            let d = stall::make_negative_dentries(&dir, count)
                .map_err(Error::io("cannot make negative dentries in", &dir))?;
            println!(
                "@phase {count} negative dentries in {:.1} s ({:.0}/s)",
                d.as_secs_f64(),
                count as f64 / d.as_secs_f64().max(1e-9)
            );
            Ok(())
        }
    }
}

pub fn run(a: Args) -> Result {
    if let Some(p) = &a.from_json {
        let report: LabReport = load_json(p)?;
        return finish(&a, report);
    }
    let mut tmp = None;
    let (strata, workdir) = super::binary_and_workdir("lab", a.workdir.clone(), &mut tmp)?;
    remove_on_signal(&a, &workdir, tmp.is_some());
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
    let mut progress = |s: &str| eprintln!("lab: {s}");
    if a.host {
        eprintln!(
            "lab: WARNING: --host runs the pressure on THIS machine: {} negative dentries, and \
             drop_caches=2 {} times, which empties the dentry and inode caches of the whole host. \
             Everything it creates lives in {} and is removed at the end.",
            cfg.dentries,
            cfg.cycles,
            cfg.workdir.display()
        );
        let run = stall::run_host(&strata, &cfg, &cfg.workdir.join("host"), &mut progress);
        let run = run.map_err(|e| {
            let _ = std::fs::remove_dir_all(cfg.workdir.join("host"));
            Error::failed(format!("--host: {e}"))
        })?;
        report.runs.push(run);
        return finish(&a, report);
    }
    for k in &cfg.kernels {
        let run = stall::run_kernel(&strata, &cfg, k, &mut progress)
            .map_err(|e| Error::failed(format!("{k}: {e}")))?;
        report.runs.push(run);
    }
    finish(&a, report)
}

/// Ctrl-C / SIGTERM: remove everything the lab created (disk images are GBs), then exit; qemu
/// and strata serve die with this process (PR_SET_PDEATHSIG).
fn remove_on_signal(a: &Args, workdir: &std::path::Path, owned: bool) {
    let workdir = workdir.to_owned();
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

/// Print, save and draw a finished report.
fn finish(a: &Args, report: LabReport) -> Result {
    if a.out.json {
        println!("{}", json_pretty(&report)?);
    } else {
        print!("{}", stall::table(&report));
    }
    if a.from_json.is_none() {
        a.out.write(&report)?;
    }
    if let Some(p) = &a.plot {
        strata_lab::plot::cdf_svg(&report, p)
            .map_err(|e| Error::failed(format!("cannot draw {}: {e}", p.display())))?;
        eprintln!("lab: wrote {}", p.display());
    }
    match report.runs.iter().find(|r| !r.errors.is_empty()) {
        Some(r) => Err(Error::failed(format!(
            "kernel {}: {}",
            r.kernel,
            r.errors.join("; ")
        ))),
        None => Ok(()),
    }
}
