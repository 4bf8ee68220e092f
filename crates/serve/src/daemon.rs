//! Start-up and lifetime of one `strata serve` process: check, open, forbid mounts, listen,
//! serve one VMM connection, clean up.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::{FsBackend, Stats};
use crate::config::{Checked, ServeConfig};
use crate::error::{ConfigError, ServeError};
use crate::sandbox;
use crate::tree::{CachePolicy, Role, StrataFs};

/// What happened during one session, for logs and tests.
#[derive(Debug, Clone)]
pub struct SessionReport {
    /// From `serve()` being called to the socket accepting connections.
    pub startup: Duration,
    /// FUSE requests served.
    pub requests: u64,
    /// Descriptor chains that could not even be parsed.
    pub bad_chains: u64,
}

/// The lock file that marks a socket as owned by a live `strata serve`.
fn lock_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Refuse a socket path a live server uses; clear a stale socket left by a dead one.
///
/// A live strata daemon holds an flock on `SOCKET.lock` for its lifetime, so it is detected
/// without connecting (a connection would be taken as the VMM's and end its session). Another
/// kind of server on the path is detected by connecting, and a socket is only removed when
/// that connect proves nobody listens (ECONNREFUSED): any other answer, a sandbox's ENOSYS
/// included, leaves it alone and refuses the path.
pub(crate) fn claim_socket(path: &Path) -> Result<SocketGuard, ConfigError> {
    let meta = std::fs::symlink_metadata(path).ok();
    if let Some(m) = &meta {
        if !m.file_type().is_socket() {
            return Err(ConfigError::SocketPathTaken(path.to_owned()));
        }
    }
    let lock_path = lock_path(path);
    let lock_opts = || {
        let mut o = std::fs::OpenOptions::new();
        o.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        o
    };
    if let Ok(f) = lock_opts().read(true).open(&lock_path) {
        if matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)) {
            return Err(ConfigError::SocketInUse(path.to_owned()));
        }
    }
    if meta.is_some() {
        match UnixStream::connect(path) {
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                tracing::info!("removing stale socket {path:?}");
                let _ = std::fs::remove_file(path);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Ok(_) => return Err(ConfigError::SocketInUse(path.to_owned())),
            Err(e) => {
                tracing::warn!(
                    "cannot tell whether socket {path:?} is in use ({e}): left alone; remove \
                     it by hand if it is stale"
                );
                return Err(ConfigError::SocketInUse(path.to_owned()));
            }
        }
    }
    let lock = lock_opts()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .and_then(|f| {
            // An older lock file may be wider: narrow it (it is ours, we hold its name).
            if f.metadata()?.mode() & 0o077 != 0 {
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            f.try_lock().map(|()| f).map_err(io::Error::from)
        })
        .map_err(|_| ConfigError::SocketInUse(path.to_owned()))?;
    Ok(SocketGuard {
        socket: path.to_owned(),
        lock_path,
        _lock: lock,
    })
}

/// Owns the socket path for the session: removes socket and lock file however it ends.
pub(crate) struct SocketGuard {
    socket: PathBuf,
    lock_path: PathBuf,
    _lock: std::fs::File,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Stop on SIGTERM/SIGINT: remove the socket and exit. Every guest write has already gone to
/// the host file by the time it was acknowledged, so there is nothing to flush.
fn stop_on_signals(socket: Option<PathBuf>) -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("strata-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                match &socket {
                    Some(socket) => {
                        tracing::info!("signal {sig}: stopping, removing {socket:?}");
                        let _ = std::fs::remove_file(socket);
                        let _ = std::fs::remove_file(lock_path(socket));
                    }
                    None => tracing::info!("signal {sig}: stopping"),
                }
                std::process::exit(0);
            }
        })?;
    Ok(())
}

/// Closes the fds vhost-user-backend leaks, when dropped after the daemon.
pub(crate) struct CloseLeaked(pub(crate) Arc<crate::backend::LeakedFds>);

impl Drop for CloseLeaked {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A daemon made ready up to listening on its socket, not yet accepting a VMM: the configuration
/// checked, the socket claimed (lock file held), the served tree open and the socket bound.
/// The vhost-user daemon and its worker thread come when a VMM connects (as in `strata
/// daemon`): a start creates no thread.
///
/// Dropping it undoes all of that: the socket and its lock file are removed. [`serve`] is
/// [`prepare`] plus signal handling, the seccomp filter and one VMM session; `strata bench
/// create` times [`prepare`] and the drop.
pub struct Prepared {
    // Field order is drop order: close the listener, then release the path.
    /// The layer device, if configured: its own tree, listener and socket.
    lower: Option<Device>,
    backend: Arc<FsBackend>,
    listener: Listener,
    stats: Arc<Stats>,
    checked: Checked,
    startup: Duration,
    /// The claimed socket path; `None` for an inherited socket (`--fd`).
    guard: Option<SocketGuard>,
}

impl Prepared {
    /// The socket path the daemon listens on; `None` when it inherited its socket.
    pub fn socket(&self) -> Option<&Path> {
        self.guard.as_ref().map(|g| g.socket.as_path())
    }

    /// From the start of preparation to the socket listening.
    pub fn startup(&self) -> Duration {
        self.startup
    }
}

/// One more vhost-user device of the session (the layer device): dropped in field order, as
/// [`Prepared`] is.
struct Device {
    backend: Arc<FsBackend>,
    listener: Listener,
    tag: String,
    _guard: Option<SocketGuard>,
}

/// Accept the VMM on `listener` and serve it until it hangs up: the vhost-user daemon and its
/// worker thread exist from here on, and the fds vhost-user-backend leaks are closed after it.
pub(crate) fn run_device(
    name: &str,
    backend: Arc<FsBackend>,
    listener: &mut Listener,
    connected: impl FnOnce(),
) -> Result<(), ServeError> {
    let leaked = CloseLeaked(backend.leaked_fds());
    let mut daemon = vhost_daemon(name, backend.clone())?;
    daemon
        .start(listener)
        .map_err(|e| ServeError::Session(e.to_string()))?;
    connected();
    // The guest reads the plan once it has booted: decide it now, off the start path.
    backend.warm_plan();
    let end = daemon.wait();
    drop(daemon);
    drop(leaked);
    match end {
        Ok(()) => Ok(()),
        // A VMM that quits simply hangs up: that is the normal end of a session.
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(ServeError::Session(e.to_string())),
    }
}

/// Bind and listen on a vhost-user socket (the path was claimed first), with `mode` from the
/// first moment it exists ([`crate::socket::bind_private`]).
pub(crate) fn listen(socket: &Path, mode: u32, gid: Option<u32>) -> Result<Listener, ServeError> {
    crate::socket::bind_private(socket, mode, gid)
        .map(Listener::from)
        .map_err(|source| ServeError::Listen {
            path: socket.to_owned(),
            source,
        })
}

fn vhost_daemon(
    name: &str,
    backend: Arc<FsBackend>,
) -> Result<VhostUserDaemon<Arc<FsBackend>>, ServeError> {
    VhostUserDaemon::new(
        name.into(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| ServeError::Session(e.to_string()))
}

/// Set up a daemon up to listening on `cfg.socket` (see [`Prepared`]), without installing signal
/// handlers or the seccomp filter and without accepting a connection.
///
/// Refuses what [`serve`] refuses, with the same errors, before creating anything.
pub fn prepare(cfg: &ServeConfig, cache: CachePolicy) -> Result<Prepared, ServeError> {
    prepare_with(cfg, cache, |_| Ok(()))
}

/// The one start-up path of [`prepare`] and [`serve`]: `before_listen` runs once the served tree
/// is open, while this process still has a single thread, and before the socket is bound, so that [`serve`] has its confinement,
/// signal handler and seccomp filter in force on every thread before a VMM can see the socket.
fn prepare_with(
    cfg: &ServeConfig,
    cache: CachePolicy,
    before_listen: impl FnOnce(&Checked) -> Result<(), ServeError>,
) -> Result<Prepared, ServeError> {
    let t0 = Instant::now();
    let checked = cfg.check()?;
    if let (Some(fd), Some(lower)) = (cfg.socket_fd, &cfg.lower_device) {
        if lower.socket_fd == Some(fd) {
            return Err(ConfigError::InheritedSocket(format!(
                "the tree and the layer device cannot share fd {fd}: each device needs its own socket"
            ))
            .into());
        }
    }
    let main = Endpoint::claim(&cfg.socket, cfg.socket_fd)?;
    let lower_end = match &cfg.lower_device {
        Some(d) => {
            if let Some(reason) = strata_plan::tag_problem(&d.tag) {
                return Err(ServeError::Session(format!(
                    "layer device tag {:?} is not usable: {reason}",
                    d.tag
                )));
            }
            Some(Endpoint::claim(&d.socket, d.socket_fd)?)
        }
        None => None,
    };
    let role = Role::Tree {
        lower_tag: cfg.lower_device.as_ref().map(|d| d.tag.clone()),
    };
    let fs = Arc::new(StrataFs::with_role(&checked, cache, role)?);
    let backend = Arc::new(FsBackend::new(fs));
    let stats = backend.stats.clone();
    let lower_backend = match &cfg.lower_device {
        Some(_) => Some(Arc::new(FsBackend::new(Arc::new(StrataFs::with_role(
            &checked,
            cache,
            Role::Layers,
        )?)))),
        None => None,
    };
    before_listen(&checked)?;
    let perms = cfg.socket_perms;
    let (listener, guard) = main.listen(perms)?;
    let lower = match (&cfg.lower_device, lower_backend, lower_end) {
        (Some(d), Some(backend), Some(end)) => {
            let (listener, guard) = end.listen(perms)?;
            Some(Device {
                backend,
                listener,
                tag: d.tag.clone(),
                _guard: guard,
            })
        }
        _ => None,
    };
    Ok(Prepared {
        lower,
        backend,
        listener,
        stats,
        checked,
        startup: t0.elapsed(),
        guard,
    })
}

/// Where one device listens, between claiming it and listening: a socket path this process
/// binds (claimed first, removed when the session ends), or a listening socket it inherited
/// (`--fd`), whose owner made it and removes it.
enum Endpoint {
    Path(PathBuf, SocketGuard),
    Inherited(std::os::unix::net::UnixListener),
}

impl Endpoint {
    fn claim(path: &Path, fd: Option<std::os::fd::RawFd>) -> Result<Endpoint, ConfigError> {
        match fd {
            Some(fd) => crate::sys::inherited_listener(fd)
                .map(Endpoint::Inherited)
                .map_err(ConfigError::InheritedSocket),
            None => Ok(Endpoint::Path(path.to_owned(), claim_socket(path)?)),
        }
    }

    fn listen(
        self,
        perms: crate::config::SocketPerms,
    ) -> Result<(Listener, Option<SocketGuard>), ServeError> {
        match self {
            Endpoint::Path(path, guard) => Ok((listen(&path, perms.mode, perms.gid)?, Some(guard))),
            Endpoint::Inherited(l) => Ok((Listener::from(l), None)),
        }
    }
}

/// Serve one VM: returns when the VMM disconnects.
pub fn serve(cfg: &ServeConfig, cache: CachePolicy) -> Result<SessionReport, ServeError> {
    let mut confined = None;
    let prepared = prepare_with(cfg, cache, |checked| {
        // Raise the open-files limit while CAP_SYS_RESOURCE is still there, and budget the fds
        // the guest may make this process hold below it.
        // A merged `/lower` directory holds one fd per layer.
        let layers = checked.lowers.len() as u64;
        let needed = checked.limits.fds_needed(checked.lowers.len())
            + checked.limits.max_nodes as u64 * layers.saturating_sub(1);
        let wanted = (needed + needed / 7 + 1024).min(crate::fdbudget::system_max());
        if let Err(e) = crate::fdbudget::raise_and_set(wanted) {
            tracing::warn!("cannot raise the open-files limit: {e}");
        }
        // Capabilities and Landlock are per thread: confine the only one, before any other
        // (signals, vhost-user workers) exists, so that they all inherit it.
        // An inherited socket (`--fd`) needs no directory: it exists, and is its owner's.
        let mut c = sandbox::Confinement::new(&checked.lowers, &checked.upper, &checked.work);
        if cfg.socket_fd.is_none() {
            c.add_socket(&cfg.socket);
        }
        if let Some(d) = cfg.lower_device.as_ref().filter(|d| d.socket_fd.is_none()) {
            c.add_socket(&d.socket);
        }
        confined = Some(sandbox::confine(&c)?);
        let owned = cfg.socket_fd.is_none().then(|| cfg.socket.clone());
        stop_on_signals(owned).map_err(|e| ServeError::Session(e.to_string()))?;
        // From here on no thread of this process can mount anything, nor make a syscall the
        // daemon does not need.
        sandbox::forbid_mounts()?;
        sandbox::allow_only_known()
    })?;
    // Its sockets listen: it binds, listens and connects no more.
    sandbox::forbid_new_sockets()?;
    let Prepared {
        lower,
        backend,
        mut listener,
        stats,
        checked,
        startup,
        guard,
    } = prepared;
    let socket = match cfg.socket_fd {
        Some(fd) => format!("inherited fd {fd}"),
        None => format!("{:?}", cfg.socket),
    };
    tracing::info!(
        socket = %socket,
        tag = %cfg.tag,
        layers = checked.lowers.len(),
        upper = ?checked.upper,
        max_nodes = checked.limits.max_nodes,
        max_handles = checked.limits.max_handles,
        "ready in {:.2} ms; {}",
        startup.as_secs_f64() * 1e3,
        sandbox::describe_with(confined.as_ref()).replace('\n', "; ")
    );

    // The layer device is accepted and served on a thread of its own: a VMM configured without
    // it (the plan then names a device the guest cannot find, and says so) still gets its tree,
    // and the session ends with the tree device's connection either way.
    let lower_thread = match lower {
        Some(mut d) => {
            let tag = d.tag.clone();
            Some(
                std::thread::Builder::new()
                    .name("strata-layers".into())
                    .spawn(move || {
                        let r = run_device(
                            "strata-serve-layers",
                            d.backend.clone(),
                            &mut d.listener,
                            || tracing::info!("VMM connected to the layer device {tag}"),
                        );
                        if let Err(e) = r {
                            tracing::warn!("layer device {tag}: {e}");
                        }
                        drop(d);
                    })
                    .map_err(|e| ServeError::Session(e.to_string()))?,
            )
        }
        None => None,
    };
    let end = run_device("strata-serve", backend, &mut listener, || {
        tracing::info!("VMM connected")
    });
    drop(listener);
    drop(guard);
    // The VMM hung up the layer device too (it went away); give that thread a moment to
    // remove its socket.
    if let Some(t) = lower_thread {
        let until = Instant::now() + Duration::from_secs(1);
        while !t.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
    let report = SessionReport {
        startup,
        requests: stats.requests.load(std::sync::atomic::Ordering::Relaxed),
        bad_chains: stats.bad_chains.load(std::sync::atomic::Ordering::Relaxed),
    };
    end?;
    tracing::info!(
        requests = report.requests,
        bad_chains = report.bad_chains,
        "VMM disconnected; session over"
    );
    Ok(report)
}
