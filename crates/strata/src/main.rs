//! `strata`: the one binary. On the host it serves VMs (`strata serve`) and runs the demo/lab;
//! inside a VM it is the initramfs' `/init` (`strata guest init`) or a mount helper.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "lab")]
mod bench_guest_cmd;
mod daemon_cmd;
mod image_cmd;
#[cfg(feature = "lab")]
mod lab_cmd;
#[cfg(feature = "lab")]
mod soak_cmd;
mod trace_cmd;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Container rootfs for micro-VMs, without host mounts"
)]
struct Cli {
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve one VM its rootfs over vhost-user-fs (virtio-fs): layers, upper, work, mount plan.
    Serve(ServeArgs),
    /// Serve many VMs from one process: rootfs sessions started and stopped over a local API
    /// (`strata rootfs start|stop|status`), no process or mount per start.
    Daemon(daemon_cmd::DaemonArgs),
    /// OCI images in the layer store: import, ls, inspect, rm.
    #[command(subcommand)]
    Image(image_cmd::ImageCmd),
    /// Container root filesystems: create and rm in the store; start, stop and status of their
    /// sessions in `strata daemon`.
    #[command(subcommand)]
    Rootfs(image_cmd::RootfsCmd),
    /// Remove layers no image or container rootfs references.
    Gc(image_cmd::GcArgs),
    /// Inside the VM: assemble the rootfs with the guest kernel.
    #[command(subcommand)]
    Guest(GuestCmd),
    /// Build a tiny image, serve it, boot a Debian 6.1 guest on it and show what happened.
    #[cfg(feature = "lab")]
    Demo(DemoArgs),
    /// Measure host-side costs (as root; no external commands, so it runs inside a guest too).
    #[cfg(feature = "lab")]
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Boot real Debian kernels (6.1 before, 6.12 after the shrinker fix), reproduce the
    /// shrinker_rwsem stall and measure every container-start strategy under it.
    #[cfg(feature = "lab")]
    Lab(lab_cmd::LabArgs),
    /// Diagnose mount stalls on shrinker_rwsem: `--check` says whether this kernel is exposed.
    Trace(trace_cmd::TraceArgs),
    /// Inside the lab's VM: pressure tools.
    #[cfg(feature = "lab")]
    #[command(subcommand, hide = true)]
    LabGuest(lab_cmd::LabGuestCmd),
}

#[cfg(feature = "lab")]
#[derive(Subcommand)]
enum BenchCmd {
    /// Time one container start and end per strategy: a host overlay mount (Kata-style), a
    /// tmpfs mount (control), and strata's set-up up to listening (no mount).
    Create(BenchCreateArgs),
    /// Memory of one `strata daemon` with 1, 10, 100 connected sessions (vhost-user
    /// frontends doing real FUSE requests; no VM booted).
    Sessions(soak_cmd::SessionsArgs),
    /// Sessions of mixed I/O against one `strata daemon` for a fixed time, its RSS, fds and
    /// threads sampled every second (flat is the goal).
    Soak(soak_cmd::SoakArgs),
    /// Boot one guest kernel over (a) virtiofsd + host overlay, (b) strata, (c) EROFS images
    /// and time the same I/O workloads (ratios to (a)).
    Guest(bench_guest_cmd::BenchGuestArgs),
    /// Inside the `bench guest` VM: run one timed workload.
    #[command(hide = true)]
    GuestIo(bench_guest_cmd::GuestIoArgs),
}

#[cfg(feature = "lab")]
#[derive(clap::Args)]
struct BenchCreateArgs {
    /// Directory to work in (created if missing; everything created in it is removed).
    #[arg(long)]
    dir: PathBuf,
    /// Timed iterations per strategy (after 5 untimed warm-up iterations).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    n: u32,
    /// overlay-mount, tmpfs-mount, strata or strata-daemon; repeat to pick several (default:
    /// all four, in that order).
    #[arg(long = "strategy", value_parser = str::parse::<strata_lab::bench::Strategy>)]
    strategies: Vec<strata_lab::bench::Strategy>,
    /// Print one JSON object instead of the table.
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

#[derive(clap::Args)]
struct ServeArgs {
    /// vhost-user socket for the VMM (qemu `-chardev socket,path=...`).
    #[arg(long)]
    socket: PathBuf,
    /// Read-only layer directory; repeat, topmost first (overlayfs lowerdir order).
    #[arg(long = "lower", required_unless_present = "rootfs")]
    lowers: Vec<PathBuf>,
    /// The container's writable directory.
    #[arg(long, required_unless_present = "rootfs")]
    upper: Option<PathBuf>,
    /// overlayfs work directory, on the same filesystem as --upper.
    #[arg(long, required_unless_present = "rootfs")]
    work: Option<PathBuf>,
    /// Serve the container rootfs ID from the store (`strata rootfs create`) instead of
    /// --lower/--upper/--work.
    #[arg(long, conflicts_with_all = ["lowers", "upper", "work"])]
    rootfs: Option<String>,
    /// The store of --rootfs (default /var/lib/strata).
    #[arg(long, requires = "rootfs")]
    store: Option<PathBuf>,
    /// virtio-fs tag the VMM gives the device.
    #[arg(long, default_value = strata_plan::DEFAULT_TAG)]
    tag: String,
    /// Also serve the layers on a second vhost-user socket (a second vhost-user-fs device),
    /// without xattrs: the guest's overlay then stops asking for overlay xattrs of every lower
    /// file. Used only if no layer has an xattr a container could read (the log says).
    #[arg(long)]
    lower_socket: Option<PathBuf>,
    /// virtio-fs tag the VMM gives the --lower-socket device.
    #[arg(long, default_value = strata_serve::DEFAULT_LOWER_TAG, requires = "lower_socket")]
    lower_tag: String,
    /// Most host inodes the guest may hold looked up at once; past it, ENFILE.
    #[arg(long, default_value_t = strata_serve::Limits::DEFAULT.max_nodes)]
    max_nodes: usize,
    /// Most files and directories the guest may hold open at once; past it, ENFILE.
    #[arg(long, default_value_t = strata_serve::Limits::DEFAULT.max_handles)]
    max_handles: usize,
    /// Print the sandbox that would be in force, and exit.
    #[arg(long)]
    print_sandbox: bool,
}

#[derive(Subcommand)]
enum GuestCmd {
    /// PID 1 of the initramfs: modules, virtio-fs, overlay, switch root, run `strata.cmd=`.
    Init,
    /// Mount the tag and assemble the overlay at --target (for guests with their own init).
    Mount {
        #[arg(long, default_value = strata_plan::DEFAULT_TAG)]
        tag: String,
        #[arg(long)]
        target: PathBuf,
    },
    /// File-operation probes for tests inside a busybox-only VM.
    #[command(subcommand, hide = true)]
    Probe(ProbeCmd),
}

#[derive(Subcommand)]
enum ProbeCmd {
    XattrSet {
        path: String,
        name: String,
        value: String,
    },
    XattrGet {
        path: String,
        name: String,
    },
    MmapWrite {
        path: String,
        offset: usize,
        data: String,
    },
}

#[cfg(feature = "lab")]
#[derive(clap::Args)]
struct DemoArgs {
    /// Working directory for the image, container dirs and VM files (default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the working directory afterwards.
    #[arg(long)]
    keep: bool,
}

fn init_logging(verbose: u8) {
    init_logging_quiet(verbose, "info")
}

/// Logging with `quiet` as the level when no `-v` is given.
fn init_logging_quiet(verbose: u8, quiet: &str) {
    let default = match verbose {
        0 => quiet,
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // Never evaluate `log::trace!` of dependencies: fuse-backend-rs 0.14's per-request trace
    // line builds `Opcode::from(opcode)`, a transmute that yields an invalid enum for the unused
    // opcodes a hostile guest can send (0, 7, 19), and then formats it.
    log::set_max_level(log::LevelFilter::Debug.min(log::max_level()));
}

fn main() -> ExitCode {
    // As the initramfs' /init the kernel runs us as PID 1, with no arguments we can rely on.
    if strata_guest::running_as_init() {
        strata_guest::init();
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Guest(GuestCmd::Init) => strata_guest::init(),
        Cmd::Guest(GuestCmd::Mount { tag, target }) => {
            match strata_guest::mount(&strata_guest::MountArgs { tag, target }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("strata guest mount: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Guest(GuestCmd::Probe(p)) => {
            use strata_guest::probe::Probe;
            let p = match p {
                ProbeCmd::XattrSet { path, name, value } => Probe::XattrSet { path, name, value },
                ProbeCmd::XattrGet { path, name } => Probe::XattrGet { path, name },
                ProbeCmd::MmapWrite { path, offset, data } => {
                    Probe::MmapWrite { path, offset, data }
                }
            };
            match strata_guest::probe::run(&p) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("strata guest probe: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Serve(a) => {
            init_logging(cli.verbose);
            if a.print_sandbox {
                println!("{}", strata_serve::sandbox::describe());
                return ExitCode::SUCCESS;
            }
            let (lowers, upper, work) = match a.rootfs {
                Some(id) => match image_cmd::rootfs_dirs(a.store, &id) {
                    Ok(dirs) => dirs,
                    Err(e) => {
                        eprintln!("strata serve: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => (
                    a.lowers,
                    a.upper.unwrap_or_default(),
                    a.work.unwrap_or_default(),
                ),
            };
            let cfg = strata_serve::ServeConfig {
                lowers,
                upper,
                work,
                socket: a.socket,
                tag: a.tag,
                limits: strata_serve::Limits {
                    max_nodes: a.max_nodes,
                    max_handles: a.max_handles,
                },
                lower_device: a.lower_socket.map(|socket| strata_serve::LowerDevice {
                    socket,
                    tag: a.lower_tag,
                }),
            };
            match strata_serve::serve(&cfg, strata_serve::CachePolicy::default()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("strata serve: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
        Cmd::Daemon(a) => {
            init_logging(cli.verbose);
            daemon_cmd::daemon(a)
        }
        Cmd::Image(c) => {
            init_logging_quiet(cli.verbose, "warn");
            image_cmd::image(c)
        }
        Cmd::Rootfs(c) => {
            init_logging_quiet(cli.verbose, "warn");
            image_cmd::rootfs(c)
        }
        Cmd::Gc(a) => {
            init_logging_quiet(cli.verbose, "warn");
            image_cmd::gc(a)
        }
        #[cfg(feature = "lab")]
        Cmd::Lab(a) => {
            init_logging(cli.verbose);
            lab_cmd::lab(a)
        }
        #[cfg(feature = "lab")]
        Cmd::LabGuest(c) => lab_cmd::lab_guest(c),
        Cmd::Trace(a) => trace_cmd::trace(a),
        #[cfg(feature = "lab")]
        Cmd::Demo(a) => {
            init_logging(cli.verbose);
            demo(a)
        }
        #[cfg(feature = "lab")]
        Cmd::Bench(BenchCmd::Guest(a)) => bench_guest_cmd::bench_guest(a),
        #[cfg(feature = "lab")]
        Cmd::Bench(BenchCmd::GuestIo(a)) => bench_guest_cmd::guest_io(a),
        #[cfg(feature = "lab")]
        Cmd::Bench(BenchCmd::Create(a)) => {
            init_logging_quiet(cli.verbose, "warn");
            bench_create(a)
        }
        #[cfg(feature = "lab")]
        Cmd::Bench(BenchCmd::Sessions(a)) => {
            init_logging_quiet(cli.verbose, "warn");
            soak_cmd::sessions(a)
        }
        #[cfg(feature = "lab")]
        Cmd::Bench(BenchCmd::Soak(a)) => {
            init_logging_quiet(cli.verbose, "warn");
            soak_cmd::soak(a)
        }
    }
}

#[cfg(feature = "lab")]
fn bench_create(a: BenchCreateArgs) -> ExitCode {
    use std::io::{IsTerminal, Write};
    use strata_lab::bench::{self, BenchConfig, Progress, Strategy};

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
    let stop = match bench::stop_on_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("strata bench create: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    match result {
        Ok(report) => {
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strata bench create: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// This `strata` binary (it goes into guests) and the working directory of a host-side job:
/// `given`, or a new temp dir kept alive by `tmp`. Errors are printed under `cmd`.
#[cfg(feature = "lab")]
fn binary_and_workdir(
    cmd: &str,
    given: Option<PathBuf>,
    tmp: &mut Option<tempfile::TempDir>,
) -> Option<(PathBuf, PathBuf)> {
    let strata = std::env::current_exe()
        .map_err(|e| eprintln!("strata {cmd}: cannot find my own binary: {e}"))
        .ok()?;
    let dir = match given {
        Some(d) => d,
        None => {
            let t = tempfile::Builder::new()
                .prefix(&format!("strata-{cmd}-"))
                .tempdir()
                .map_err(|e| eprintln!("strata {cmd}: cannot create a temp dir: {e}"))
                .ok()?;
            tmp.insert(t).path().to_owned()
        }
    };
    Some((strata, dir))
}

#[cfg(feature = "lab")]
fn demo(a: DemoArgs) -> ExitCode {
    let mut tmp = None;
    let Some((strata, dir)) = binary_and_workdir("demo", a.dir, &mut tmp) else {
        return ExitCode::FAILURE;
    };
    let result = strata_lab::demo::run(&strata, &dir);
    if a.keep {
        if let Some(t) = tmp.take() {
            let _ = t.keep();
        }
        eprintln!("kept {}", dir.display());
    }
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("strata demo: {e}");
            ExitCode::FAILURE
        }
    }
}
