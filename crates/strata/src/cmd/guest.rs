//! `strata guest`: inside the VM. `init` is PID 1 of the initramfs (also when the binary runs as
//! `/init`); `mount` assembles the rootfs for guests with their own init; `probe` runs the file
//! operations the tests' busybox guests have no tool for.

use std::path::PathBuf;

use clap::Subcommand;

use crate::error::{Error, Result};

#[derive(Subcommand)]
pub enum Cmd {
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
pub enum ProbeCmd {
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
    /// open(2) with FLAGS (comma-separated names); prints `ok MODE` or the errno name.
    Open {
        flags: String,
        path: String,
        /// Mode for O_CREAT / O_TMPFILE (octal).
        #[arg(default_value = "644", value_parser = parse_octal)]
        mode: u32,
        /// openat(2) relative to this directory.
        #[arg(long)]
        at: Option<String>,
        /// Drop to UID:GID (no supplementary groups) first.
        #[arg(long = "as", value_parser = parse_ids)]
        as_user: Option<(u32, u32)>,
        /// Set this umask (octal) first.
        #[arg(long, value_parser = parse_octal)]
        umask: Option<u32>,
        /// Then write DATA through the new fd (the printed mode is the one after the write).
        #[arg(long)]
        write: Option<String>,
    },
}

fn parse_octal(s: &str) -> std::result::Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("{s:?}: not an octal mode: {e}"))
}

fn parse_ids(s: &str) -> std::result::Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').ok_or("expected UID:GID")?;
    let n = |x: &str| x.parse::<u32>().map_err(|e| format!("{x:?}: {e}"));
    Ok((n(u)?, n(g)?))
}

impl Cmd {
    /// `guest VERB`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Init => "guest init",
            Cmd::Mount { .. } => "guest mount",
            Cmd::Probe(_) => "guest probe",
        }
    }
}

pub fn run(cmd: Cmd) -> Result {
    match cmd {
        Cmd::Init => strata_guest::init(),
        Cmd::Mount { tag, target } => {
            strata_guest::mount(&strata_guest::MountArgs { tag, target }).map_err(Error::failed)
        }
        Cmd::Probe(p) => {
            use strata_guest::probe::Probe;
            let p = match p {
                ProbeCmd::XattrSet { path, name, value } => Probe::XattrSet { path, name, value },
                ProbeCmd::XattrGet { path, name } => Probe::XattrGet { path, name },
                ProbeCmd::MmapWrite { path, offset, data } => {
                    Probe::MmapWrite { path, offset, data }
                }
                ProbeCmd::Open {
                    flags,
                    path,
                    mode,
                    at,
                    as_user,
                    umask,
                    write,
                } => Probe::Open {
                    path,
                    flags,
                    mode,
                    at,
                    as_user,
                    umask,
                    write,
                },
            };
            strata_guest::probe::run(&p).map_err(Error::failed)
        }
    }
}
