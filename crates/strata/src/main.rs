//! `strata`: the one binary. On the host it serves VMs (`strata serve`, `strata daemon`) and
//! manages the layer store; inside a VM it is the initramfs' `/init` (`strata guest init`) or a
//! mount helper. Built with the `lab` feature it also runs the lab and the benchmarks.
//!
//! `main` parses the command line, sets up logging once, runs one verb (a module of [`cmd`])
//! and turns its [`error::Error`] into a message and a documented exit code.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod args;
mod cmd;
mod config;
mod error;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Container rootfs for micro-VMs, without host mounts",
    after_help = "Exit codes: 0 success, 1 failed while running, 2 refused (a configuration \
                  that cannot work; nothing was done), 3 not found, 4 already exists, 5 `trace \
                  --check --exit-code`: kernel exposed, 64 usage error, 130 interrupted."
)]
struct Cli {
    /// More logging (-v debug, -vv trace); STRATA_LOG (a tracing filter) overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log line format on stderr: `text` (colour only on a terminal) or `json` (one object per
    /// line, for log collectors).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "STRATA_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an image's command in a micro-VM: rootfs served without host mounts, stdio wired,
    /// the container's exit status as strata's.
    Run(cmd::run::Args),
    /// Write the guest initramfs for a kernel (/init = this binary, stripped, plus modules).
    Initramfs(cmd::initramfs::Args),
    /// Serve one VM its rootfs over vhost-user-fs (virtio-fs): layers, upper, work, mount plan.
    Serve(cmd::serve::Args),
    /// Serve many VMs from one process: rootfs sessions started and stopped over a local API
    /// (`strata rootfs start|stop|status`), no process or mount per start.
    Daemon(cmd::daemon::Args),
    /// OCI images in the layer store: import, ls, inspect, rm.
    #[command(subcommand)]
    Image(cmd::image::Cmd),
    /// Container root filesystems: create and rm in the store; start, stop and status of their
    /// sessions in `strata daemon`.
    #[command(subcommand)]
    Rootfs(cmd::rootfs::Cmd),
    /// Remove layers no image or container rootfs references.
    Gc(cmd::gc::Args),
    /// Inside the VM: assemble the rootfs with the guest kernel.
    #[command(subcommand)]
    Guest(cmd::guest::Cmd),
    /// Diagnose mount stalls on shrinker_rwsem: `--check` says whether this kernel is exposed.
    Trace(cmd::trace::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completion(cmd::completion::Args),
    /// Write man pages (strata.1 and one per verb) into a directory.
    Man(cmd::man::Args),
    /// Build a tiny image, serve it, boot a Debian 6.1 guest on it and show what happened.
    #[cfg(feature = "lab")]
    Demo(cmd::demo::Args),
    /// Measure host-side costs and guest I/O.
    #[cfg(feature = "lab")]
    #[command(subcommand)]
    Bench(cmd::bench::Cmd),
    /// Boot real Debian kernels (6.1 before, 6.12 after the shrinker fix), reproduce the
    /// shrinker_rwsem stall and measure every container-start strategy under it.
    #[cfg(feature = "lab")]
    Lab(cmd::lab::Args),
    /// Inside the lab's VM: pressure tools.
    #[cfg(feature = "lab")]
    #[command(subcommand, hide = true)]
    LabGuest(cmd::lab::GuestCmd),
}

impl Cmd {
    /// The verb, as messages name it (`image import`, `serve`, …).
    fn name(&self) -> &'static str {
        match self {
            Cmd::Run(_) => "run",
            Cmd::Initramfs(_) => "initramfs",
            Cmd::Serve(_) => "serve",
            Cmd::Daemon(_) => "daemon",
            Cmd::Image(c) => c.name(),
            Cmd::Rootfs(c) => c.name(),
            Cmd::Gc(_) => "gc",
            Cmd::Guest(c) => c.name(),
            Cmd::Trace(_) => "trace",
            Cmd::Completion(_) => "completion",
            Cmd::Man(_) => "man",
            #[cfg(feature = "lab")]
            Cmd::Demo(_) => "demo",
            #[cfg(feature = "lab")]
            Cmd::Bench(c) => c.name(),
            #[cfg(feature = "lab")]
            Cmd::Lab(_) => "lab",
            #[cfg(feature = "lab")]
            Cmd::LabGuest(_) => "lab-guest",
        }
    }

    /// The log level without `-v`: progress of long-running commands, warnings only for the
    /// one-shot ones (their output is the result).
    fn quiet_level(&self) -> &'static str {
        match self {
            Cmd::Serve(_) | Cmd::Daemon(_) => "info",
            #[cfg(feature = "lab")]
            Cmd::Demo(_) | Cmd::Lab(_) => "info",
            _ => "warn",
        }
    }

    fn run(self) -> error::Result {
        match self {
            Cmd::Run(a) => cmd::run::run(a),
            Cmd::Initramfs(a) => cmd::initramfs::run(a),
            Cmd::Serve(a) => cmd::serve::run(a),
            Cmd::Daemon(a) => cmd::daemon::run(a),
            Cmd::Image(c) => cmd::image::run(c),
            Cmd::Rootfs(c) => cmd::rootfs::run(c),
            Cmd::Gc(a) => cmd::gc::run(a),
            Cmd::Guest(c) => cmd::guest::run(c),
            Cmd::Trace(a) => cmd::trace::run(a),
            Cmd::Completion(a) => cmd::completion::run(a),
            Cmd::Man(a) => cmd::man::run(a),
            #[cfg(feature = "lab")]
            Cmd::Demo(a) => cmd::demo::run(a),
            #[cfg(feature = "lab")]
            Cmd::Bench(c) => cmd::bench::run(c),
            #[cfg(feature = "lab")]
            Cmd::Lab(a) => cmd::lab::run(a),
            #[cfg(feature = "lab")]
            Cmd::LabGuest(c) => cmd::lab::guest(c),
        }
    }
}

/// Logs on stderr: `quiet` without `-v`, debug with `-v`, trace with `-vv`; `STRATA_LOG` (a
/// tracing env-filter) overrides both. Text lines carry ANSI colour only when stderr is a
/// terminal (a log file or journald gets plain text); `json` writes one object per line.
fn init_logging(verbose: u8, quiet: &str, format: LogFormat) {
    let default = match verbose {
        0 => quiet,
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
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
    let command = match config::apply_file(Cli::command()) {
        Ok(c) => c,
        Err(e) => return e.report("config"),
    };
    let parsed = command
        .try_get_matches()
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print and succeed; a usage error has its own exit code (64,
            // EX_USAGE), apart from a refused configuration (2).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(error::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.verbose, cli.cmd.quiet_level(), cli.log_format);
    let verb = cli.cmd.name();
    match cli.cmd.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(verb),
    }
}
