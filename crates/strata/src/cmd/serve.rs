//! `strata serve`: one VM's rootfs over vhost-user-fs, from explicit dirs or a store rootfs.

use std::path::PathBuf;

use crate::args::{LimitsArgs, SandboxArgs, StoreArg};
use crate::error::Result;

#[derive(clap::Args)]
pub struct Args {
    /// vhost-user socket for the VMM (qemu `-chardev socket,path=...`).
    #[arg(long)]
    socket: PathBuf,
    /// Read-only layer directory; repeat, topmost first (overlayfs lowerdir order).
    #[arg(long = "lower", required_unless_present_any = ["rootfs", "print_sandbox"])]
    lowers: Vec<PathBuf>,
    /// The container's writable directory.
    #[arg(long, required_unless_present_any = ["rootfs", "print_sandbox"])]
    upper: Option<PathBuf>,
    /// overlayfs work directory, on the same filesystem as --upper.
    #[arg(long, required_unless_present_any = ["rootfs", "print_sandbox"])]
    work: Option<PathBuf>,
    /// Serve the container rootfs ID from the store (`strata rootfs create`) instead of
    /// --lower/--upper/--work.
    #[arg(long, conflicts_with_all = ["lowers", "upper", "work"])]
    rootfs: Option<String>,
    #[command(flatten)]
    store: StoreArg,
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
    #[command(flatten)]
    limits: LimitsArgs,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

pub fn run(a: Args) -> Result {
    if a.sandbox.printed() {
        return Ok(());
    }
    let (lowers, upper, work) = match &a.rootfs {
        Some(id) => super::rootfs::dirs(&a.store.store, id)?,
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
        limits: a.limits.limits(),
        lower_device: a.lower_socket.map(|socket| strata_serve::LowerDevice {
            socket,
            tag: a.lower_tag,
        }),
    };
    strata_serve::serve(&cfg, strata_serve::CachePolicy::default())?;
    Ok(())
}
