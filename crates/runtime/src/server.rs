//! The server of the rootfs: a `strata serve` child (its own confinement: capabilities
//! dropped, Landlock, the no-mount seccomp filter) or a session of a running `strata daemon`.
//! Either way the host gets no mount. Dropping a [`Served`] ends the serving.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_serve::api::{Client, Dirs, LayerDevice, Request, Response};

use crate::error::{Result, RuntimeError};
use crate::{Rootfs, Server};

/// How long a server may take to listen.
const READY_WAIT: Duration = Duration::from_secs(20);

/// A rootfs being served.
pub(crate) struct Served {
    /// The tree device's socket (tag `strata`).
    pub socket: PathBuf,
    /// The layer device's socket (tag `strata-lower`), if any.
    pub lower_socket: Option<PathBuf>,
    /// The layers' merged EROFS image, for a read-only virtio-blk device, if the plan says so.
    pub erofs: Option<PathBuf>,
    how: How,
}

enum How {
    Child(Child),
    Daemon { api: PathBuf, id: String },
}

/// The layers, upper and work of `rootfs`.
pub(crate) fn dirs(rootfs: &Rootfs) -> Result<(Vec<PathBuf>, PathBuf, PathBuf)> {
    match rootfs {
        Rootfs::Store { store, id } => {
            let r = strata_store::Store::open_existing(store)?.rootfs(id)?;
            Ok((r.lowers, r.upper, r.work))
        }
        Rootfs::Dirs {
            lowers,
            upper,
            work,
        } => Ok((lowers.clone(), upper.clone(), work.clone())),
    }
}

/// Start serving `rootfs` for sandbox `id`.
pub(crate) fn serve(
    server: &Server,
    strata: &Path,
    id: &str,
    rootfs: &Rootfs,
    state_dir: &Path,
    layers: LayerMode<'_>,
) -> Result<Served> {
    match server {
        Server::Spawn => spawn(strata, rootfs, state_dir, layers),
        Server::Daemon { api, socket_dir } => {
            daemon(api, socket_dir.as_deref(), id, rootfs, layers)
        }
    }
}

/// How the guest gets the image's layers besides the served tree.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerMode<'a> {
    /// Also on the xattr-less layer device.
    pub layer_device: bool,
    /// As a merged EROFS image (built in this cache for plain directories).
    pub erofs: Option<&'a Path>,
    /// Merged with the upper by the server (`strata serve --union`): neither of the above.
    pub union: bool,
}

impl LayerMode<'_> {
    /// The EROFS image of `rootfs`'s layers if the guest reads them from one (built on first
    /// use); never with `union`.
    fn erofs_image(&self, rootfs: &Rootfs) -> Result<Option<PathBuf>> {
        match (self.union, self.erofs) {
            (false, Some(cache)) => erofs_image(rootfs, cache).map(Some),
            _ => Ok(None),
        }
    }
}

/// The merged EROFS image of `rootfs`'s layers, built on first use: the store's for a store
/// rootfs, one in `cache` keyed by the directories' identity for plain directories (the
/// overlayfs snapshotter's snapshots).
fn erofs_image(rootfs: &Rootfs, cache: &Path) -> Result<PathBuf> {
    match rootfs {
        Rootfs::Store { store, id } => Ok(strata_store::Store::open_existing(store)?
            .rootfs_erofs(id)?
            .path),
        Rootfs::Dirs { lowers, .. } => {
            Ok(strata_store::erofs_dirs::dirs_erofs_image(cache, lowers)?.path)
        }
    }
}

fn spawn(
    strata: &Path,
    rootfs: &Rootfs,
    state_dir: &Path,
    layers: LayerMode<'_>,
) -> Result<Served> {
    let (lowers, upper, work) = dirs(rootfs)?;
    let erofs = layers.erofs_image(rootfs)?;
    let socket = state_dir.join("fs.sock");
    // With the layers on a block device, or merged with the upper, the layer device has
    // nothing left to serve.
    let lower_socket = (layers.layer_device && erofs.is_none() && !layers.union)
        .then(|| state_dir.join("layers.sock"));
    let mut cmd = Command::new(strata);
    cmd.arg("serve").arg("--socket").arg(&socket);
    if layers.union {
        cmd.arg("--union");
    }
    if let Some(l) = &lower_socket {
        cmd.arg("--lower-socket").arg(l);
    }
    if erofs.is_some() {
        cmd.arg("--lower-block")
            .arg(strata_plan::DEFAULT_LOWER_SERIAL);
    }
    for l in &lowers {
        cmd.arg("--lower").arg(l);
    }
    cmd.arg("--upper").arg(&upper).arg("--work").arg(&work);
    // Its progress lines are not the container's output; warnings and errors still show.
    if std::env::var_os("STRATA_LOG").is_none() {
        cmd.env("STRATA_LOG", "error");
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    // A terminal's Ctrl-C is for the container (forwarded by the caller), not for the server.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| {
        RuntimeError::Serve(format!(
            "cannot run {} serve: {e} (set STRATA_BIN to the strata binary)",
            strata.display()
        ))
    })?;
    let deadline = Instant::now() + READY_WAIT;
    let ready = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    loop {
        if ready(&socket) && lower_socket.as_deref().is_none_or(ready) {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(RuntimeError::Serve(format!(
                "`strata serve` exited ({st}) before listening; its message is above"
            )));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RuntimeError::Serve(format!(
                "`strata serve` did not listen on {} within {} s",
                socket.display(),
                READY_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(Served {
        socket,
        lower_socket,
        erofs,
        how: How::Child(child),
    })
}

fn daemon(
    api: &Path,
    socket_dir: Option<&Path>,
    id: &str,
    rootfs: &Rootfs,
    layers: LayerMode<'_>,
) -> Result<Served> {
    // The image is built (or found) in this process's store; the daemon only writes the
    // device's serial into the session's plan, and the VMM opens the image read-only.
    let erofs = layers.erofs_image(rootfs)?;
    let layer_device = layers.layer_device && !layers.union;
    let socket_dir = socket_dir
        .map(Path::to_path_buf)
        .or_else(|| api.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let (session, dirs) = match rootfs {
        // The daemon resolves its own store's rootfs by id.
        Rootfs::Store { id, .. } => (id.clone(), None),
        Rootfs::Dirs {
            lowers,
            upper,
            work,
        } => (
            id.to_string(),
            Some(Dirs {
                lowers: lowers.clone(),
                upper: upper.clone(),
                work: work.clone(),
            }),
        ),
    };
    let socket = socket_dir.join(format!("{session}.sock"));
    let lower_socket = (layer_device && erofs.is_none())
        .then(|| socket_dir.join(format!("{session}.layers.sock")));
    let req = Request::Start {
        id: session.clone(),
        socket: socket.clone(),
        dirs,
        tag: None,
        layer_device: lower_socket.as_ref().map(|s| LayerDevice {
            socket: s.clone(),
            tag: None,
        }),
        lower_block: erofs
            .as_ref()
            .map(|_| strata_plan::LowerBlock::erofs(strata_plan::DEFAULT_LOWER_SERIAL)),
        union: layers.union,
    };
    let resp = Client::connect(api)
        .and_then(|mut c| c.call(&req))
        .map_err(|e| RuntimeError::Serve(e.to_string()))?;
    match resp {
        Response::Started { session: info } => Ok(Served {
            socket: info.socket,
            lower_socket: info.layer_device.or(lower_socket),
            erofs,
            how: How::Daemon {
                api: api.to_path_buf(),
                id: session,
            },
        }),
        Response::Error { kind, message } => Err(RuntimeError::Serve(format!(
            "strata daemon refused the session ({kind:?}): {message}"
        ))),
        other => Err(RuntimeError::Serve(format!(
            "unexpected answer from strata daemon: {other:?}"
        ))),
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        match &mut self.how {
            How::Child(child) => {
                // It ends by itself when the VMM hangs up; SIGTERM for the case it never
                // connected (it removes its sockets either way).
                if let Ok(None) = child.try_wait() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(child.id() as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                let _ = child.wait();
            }
            How::Daemon { api, id } => {
                let stop = Request::Stop { id: id.clone() };
                if let Err(e) = Client::connect(api).and_then(|mut c| c.call(&stop)) {
                    tracing::warn!("cannot stop strata daemon session {id}: {e}");
                }
            }
        }
    }
}
