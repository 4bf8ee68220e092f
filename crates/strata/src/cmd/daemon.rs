//! `strata daemon`: many VMs from one process, their rootfs sessions started and stopped over a
//! local API (`strata rootfs start|stop|status`).

use std::path::PathBuf;

use strata_serve::api::{self, Dirs, ErrorKind};
use strata_serve::supervisor::{self, DaemonConfig};

use crate::args::{LimitsArgs, SandboxArgs, StoreArg};
use crate::error::Result;

#[derive(clap::Args)]
pub struct Args {
    /// The API socket (`strata rootfs start|stop|status --api`).
    #[arg(long, default_value = api::DEFAULT_API_SOCKET)]
    api: PathBuf,
    /// Session sockets must be inside this directory (default: the API socket's directory).
    #[arg(long)]
    socket_dir: Option<PathBuf>,
    /// The store whose rootfs IDs `start` serves.
    #[command(flatten)]
    store: StoreArg,
    /// Also serve explicit layer/upper/work dirs from inside DIR (repeatable; for benchmarks
    /// and runtimes with their own layer store).
    #[arg(long = "allow")]
    allow: Vec<PathBuf>,
    /// Mode of the API and session sockets, octal (they are root's; e.g. 660 with
    /// --socket-group to let a VMM that runs as a member of that group connect).
    #[arg(long, value_name = "OCTAL", default_value = "600", value_parser = crate::args::parse_mode)]
    socket_mode: u32,
    /// Group of the API and session sockets: a name or a numeric gid (default: root's).
    #[arg(long, value_name = "GROUP", value_parser = crate::args::parse_group)]
    socket_group: Option<u32>,
    /// Also let processes of this uid use the API (repeatable; root always may).
    #[arg(long = "api-uid", value_name = "UID")]
    api_uids: Vec<u32>,
    /// Serve even on a kernel without Landlock (file access is then limited only by the
    /// served trees' own checks); without it the daemon refuses to start there.
    #[arg(long)]
    allow_no_landlock: bool,
    #[command(flatten)]
    limits: LimitsArgs,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

pub fn run(a: Args) -> Result {
    if a.sandbox.printed() {
        return Ok(());
    }
    let store = a.store.store;
    let socket_dir = a.socket_dir.clone().unwrap_or_else(|| {
        a.api
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| p.to_owned())
            .unwrap_or_else(|| PathBuf::from("."))
    });
    let resolver_store = store.clone();
    let resolver: supervisor::Resolver =
        Box::new(
            move |id: &str| match super::rootfs::dirs(&resolver_store, id) {
                Ok((lowers, upper, work)) => Ok(Dirs {
                    lowers,
                    upper,
                    work,
                }),
                Err(e) if e.kind == crate::error::Kind::NotFound => Err((
                    ErrorKind::NotFound,
                    format!("{e}: create it with `strata rootfs create`"),
                )),
                Err(e) => Err((ErrorKind::Failed, e.to_string())),
            },
        );
    let cfg = DaemonConfig {
        api: a.api,
        socket_dir,
        allow: a.allow,
        read_only: vec![store.clone()],
        read_write: vec![store.join("containers")],
        cache: strata_serve::CachePolicy::default(),
        limits: a.limits.limits(),
        confine: true,
        socket_mode: a.socket_mode,
        socket_gid: a.socket_group,
        api_uids: a.api_uids,
        allow_no_landlock: a.allow_no_landlock,
    };
    supervisor::run(cfg, resolver)?;
    Ok(())
}
