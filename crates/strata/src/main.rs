//! `strata`: the one binary. On the host it serves VMs (`strata serve`) and runs the demo/lab;
//! inside a VM it is the initramfs' `/init` (`strata guest init`) or a mount helper.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Inside the VM: assemble the rootfs with the guest kernel.
    #[command(subcommand)]
    Guest(GuestCmd),
    /// Build a tiny image, serve it, boot a Debian 6.1 guest on it and show what happened.
    Demo(DemoArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// vhost-user socket for the VMM (qemu `-chardev socket,path=...`).
    #[arg(long)]
    socket: PathBuf,
    /// Read-only layer directory; repeat, topmost first (overlayfs lowerdir order).
    #[arg(long = "lower", required = true)]
    lowers: Vec<PathBuf>,
    /// The container's writable directory.
    #[arg(long)]
    upper: PathBuf,
    /// overlayfs work directory, on the same filesystem as --upper.
    #[arg(long)]
    work: PathBuf,
    /// virtio-fs tag the VMM gives the device.
    #[arg(long, default_value = strata_plan::DEFAULT_TAG)]
    tag: String,
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
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
            let cfg = strata_serve::ServeConfig {
                lowers: a.lowers,
                upper: a.upper,
                work: a.work,
                socket: a.socket,
                tag: a.tag,
            };
            match strata_serve::serve(&cfg, strata_serve::CachePolicy::default()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("strata serve: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
        Cmd::Demo(a) => {
            init_logging(cli.verbose);
            demo(a)
        }
    }
}

fn demo(a: DemoArgs) -> ExitCode {
    let strata = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("strata demo: cannot find my own binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut tmp = None;
    let dir = match a.dir {
        Some(d) => d,
        None => match tempfile::Builder::new().prefix("strata-demo-").tempdir() {
            Ok(t) => tmp.insert(t).path().to_owned(),
            Err(e) => {
                eprintln!("strata demo: cannot create a temp dir: {e}");
                return ExitCode::FAILURE;
            }
        },
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
