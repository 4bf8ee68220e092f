//! `strata serve`: one VM's rootfs over vhost-user-fs, from explicit dirs or a store rootfs.

use std::path::{Path, PathBuf};

use crate::args::{LimitsArgs, SandboxArgs, StoreArg};
use crate::error::{Error, Kind, Result};

#[derive(clap::Args)]
pub struct Args {
    /// vhost-user socket for the VMM (qemu `-chardev socket,path=...`).
    #[arg(long, required_unless_present_any = ["fd", "print_sandbox"])]
    socket: Option<PathBuf>,
    /// Listen on this inherited file descriptor instead of binding --socket: a unix stream
    /// socket already bound and listening, handed over by a VMM manager (as virtiofsd's
    /// `--fd`) or systemd (a socket unit's first socket is fd 3). Its owner removes it.
    #[arg(long, value_name = "N", conflicts_with = "socket")]
    fd: Option<i32>,
    /// Mode of the sockets, octal (root's 0600 by default; e.g. 660 with --socket-group for
    /// a VMM that is not root but in that group).
    #[arg(long, value_name = "OCTAL", default_value = "600", value_parser = crate::args::parse_mode)]
    socket_mode: u32,
    /// Group of the sockets: a name or a numeric gid (default: root's).
    #[arg(long, value_name = "GROUP", value_parser = crate::args::parse_group)]
    socket_group: Option<u32>,
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
    #[arg(long, group = "lower_endpoint")]
    lower_socket: Option<PathBuf>,
    /// The layer device on this inherited listening socket instead of --lower-socket (as
    /// --fd).
    #[arg(long, value_name = "N", group = "lower_endpoint")]
    lower_fd: Option<i32>,
    /// virtio-fs tag the VMM gives the --lower-socket device.
    #[arg(long, default_value = strata_serve::DEFAULT_LOWER_TAG, requires = "lower_endpoint")]
    lower_tag: String,
    /// With --rootfs: have the guest read the layers from their merged EROFS image (built in
    /// the store on first use) on a read-only virtio-blk device the VMM attaches; the upper
    /// stays on virtio-fs. The qemu arguments for the device are printed on stderr.
    #[arg(long, requires = "rootfs")]
    erofs: bool,
    /// With --lower: the VMM also attaches the layers' merged EROFS image (as
    /// `strata image import --erofs` builds it, from these layers) read-only as the
    /// virtio-blk device with this serial number; the plan sends the guest there.
    #[arg(long, value_name = "SERIAL", conflicts_with_all = ["rootfs", "erofs"])]
    lower_block: Option<String>,
    /// Merge the upper dir and the layers in the daemon and serve them as `rootfs/`: the plan
    /// sends the guest there for its root, with no overlay of its own (a create is 6 FUSE
    /// round trips instead of 11). The upper dir keeps overlayfs' on-disk format. Directories
    /// with layer content cannot be renamed (EXDEV), as with overlayfs' redirect_dir=off.
    #[arg(long, conflicts_with_all = ["erofs", "lower_block", "lower_endpoint"])]
    union: bool,
    /// virtio-blk serial number of the --erofs device (qemu `serial=`).
    #[arg(long, default_value = strata_plan::DEFAULT_LOWER_SERIAL, requires = "erofs")]
    erofs_serial: String,
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
    let lower_block = match (&a.rootfs, a.erofs, &a.lower_block) {
        (Some(id), true, _) => Some(erofs_device(&a.store.store, id, &a.erofs_serial)?),
        (_, _, Some(serial)) => {
            check_serial(serial)?;
            Some(strata_plan::LowerBlock::erofs(serial))
        }
        _ => None,
    };
    let cfg = strata_serve::ServeConfig {
        lowers,
        upper,
        work,
        socket: a.socket.unwrap_or_default(),
        socket_fd: a.fd,
        socket_perms: strata_serve::SocketPerms {
            mode: a.socket_mode,
            gid: a.socket_group,
        },
        tag: a.tag,
        limits: a.limits.limits(),
        lower_device: (a.lower_socket.is_some() || a.lower_fd.is_some()).then(|| {
            strata_serve::LowerDevice {
                socket: a.lower_socket.unwrap_or_default(),
                socket_fd: a.lower_fd,
                tag: a.lower_tag,
            }
        }),
        lower_block,
        union: a.union,
    };
    strata_serve::serve(&cfg, strata_serve::CachePolicy::default())?;
    Ok(())
}

/// The EROFS image of rootfs `id` (built if missing) as the plan's layer device, with the
/// qemu arguments that attach it printed on stderr.
pub(crate) fn erofs_device(
    store: &Path,
    id: &str,
    serial: &str,
) -> Result<strata_plan::LowerBlock> {
    check_serial(serial)?;
    let img = strata_store::Store::open_existing(store)?.rootfs_erofs(id)?;
    if img.built {
        eprintln!(
            "built EROFS image {} ({} bytes) in {:.2} s",
            img.path.display(),
            img.bytes,
            img.build_secs
        );
    }
    eprintln!("{}", qemu_args(&img.path, serial));
    Ok(strata_plan::LowerBlock::erofs(serial))
}

/// The qemu arguments attaching `image` read-only as the virtio-blk device `serial`.
fn qemu_args(image: &Path, serial: &str) -> String {
    format!(
        "qemu: {}",
        strata_vm::qemu::read_only_disk_args(image, serial).join(" ")
    )
}

pub(crate) fn check_serial(serial: &str) -> Result<()> {
    match strata_plan::serial_problem(serial) {
        Some(reason) => Err(Error::new(
            Kind::Refused,
            format!("virtio-blk serial {serial:?}: {reason}"),
        )),
        None => Ok(()),
    }
}
