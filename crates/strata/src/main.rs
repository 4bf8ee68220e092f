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
    // As the initramfs' /init the kernel gives us no arguments: act as `strata guest init`.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some("init".as_ref()) {
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
            let _ = (a.dir, a.keep);
            eprintln!("strata demo: not yet");
            ExitCode::FAILURE
        }
    }
}
