//! `strata daemon`: one long-lived process serving many VMs, one vhost-user socket each,
//! started and stopped over the local API ([`crate::api`]).
//!
//! Starting a rootfs is the work `strata serve` does before a VMM connects (check the dirs,
//! claim the socket, open the tree, bind) and nothing else: no process, no thread, no mount.
//! One accept thread watches every listening socket with epoll; when a VMM connects, the
//! session gets its threads (the vhost-user protocol thread and one virtqueue worker, from
//! vhost-user-backend, plus one that waits for the end and cleans up).
//!
//! Isolation: each session has its own tree, inode table, handles, guest memory mapping and
//! threads. A panic in one session's request path revokes that session only (see
//! [`FsBackend::revoke`]); the others keep serving. The whole process runs confined like
//! `strata serve` (capabilities, Landlock, seccomp: no mount is possible), set up once at
//! start while it is single-threaded.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vhost::vhost_user::Listener;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::api::{self, Dirs, ErrorKind, Request, Response, SessionInfo, SessionState};
use crate::backend::FsBackend;
use crate::config::{AllowedDirs, ServeConfig};
use crate::daemon::{claim_socket, listen, run_device, SocketGuard};
use crate::error::ServeError;
use crate::sandbox;
use crate::tree::{CachePolicy, Role, StrataFs};

/// How `strata daemon` is set up.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The API socket.
    pub api: PathBuf,
    /// Session sockets must be inside this directory (Landlock lets the daemon create
    /// sockets nowhere else). Default: the API socket's directory.
    pub socket_dir: PathBuf,
    /// Directories explicit `dirs` of a start request may come from.
    pub allow: Vec<PathBuf>,
    /// Read-only for the daemon (the store's layers and records).
    pub read_only: Vec<PathBuf>,
    /// Read-write for the daemon (the store's container dirs).
    pub read_write: Vec<PathBuf>,
    pub cache: CachePolicy,
    /// What each session's guest may hold at once (nodes, open handles).
    pub limits: crate::tree::Limits,
    /// Confine the process (capabilities, Landlock, seccomp). Off only for in-process tests.
    pub confine: bool,
    /// Mode of the API and session sockets (default [`crate::socket::DEFAULT_SOCKET_MODE`]).
    pub socket_mode: u32,
    /// Group of the API and session sockets (with a mode that lets the group in, a VMM running
    /// as a member connects without root); `None`: root's group.
    pub socket_gid: Option<u32>,
    /// Besides root, the uids whose processes may use the API (checked with SO_PEERCRED).
    pub api_uids: Vec<u32>,
    /// Serve even if the kernel cannot enforce Landlock (file access then is limited only by
    /// the served tree's own checks). Off: the daemon refuses to start without it.
    pub allow_no_landlock: bool,
}

/// Finds the dirs of a store rootfs by id (the CLI gives one over `strata-store`).
pub type Resolver = Box<dyn Fn(&str) -> Result<Dirs, (ErrorKind, String)> + Send + Sync>;

struct Session {
    id: String,
    socket: PathBuf,
    layers: usize,
    startup: Duration,
    created: Instant,
    backend: Arc<FsBackend>,
    stage: Stage,
    /// Removes the socket and its lock file when dropped (at stop, or when the session ends).
    guard: Option<SocketGuard>,
    /// The session's layer device: its own entry (token), with its socket. Listed and
    /// stopped with the session; a layer device entry has `None` here and `part_of` set.
    layer_device: Option<(u64, PathBuf)>,
    /// For a layer device entry: the token of its session.
    part_of: Option<u64>,
}

enum Stage {
    Listening(Listener),
    Connected,
    Stopping,
}

impl Session {
    /// A session (or a session's layer device) listening for its VMM.
    fn listening(
        id: &str,
        socket: PathBuf,
        layers: usize,
        backend: Arc<FsBackend>,
        listener: Listener,
        guard: SocketGuard,
    ) -> Session {
        Session {
            id: id.to_string(),
            socket,
            layers,
            startup: Duration::ZERO,
            created: Instant::now(),
            backend,
            stage: Stage::Listening(listener),
            guard: Some(guard),
            layer_device: None,
            part_of: None,
        }
    }

    fn info(&self, state: Option<SessionState>) -> SessionInfo {
        let (nodes, handles) = self.backend.held();
        let state = state.unwrap_or(match self.stage {
            Stage::Listening(_) => SessionState::Listening,
            Stage::Connected if self.backend.revoked() => SessionState::Stopping,
            Stage::Connected => SessionState::Connected,
            Stage::Stopping => SessionState::Stopping,
        });
        SessionInfo {
            id: self.id.clone(),
            socket: self.socket.clone(),
            state,
            layers: self.layers,
            startup_us: self.startup.as_micros() as u64,
            age_ms: self.created.elapsed().as_millis() as u64,
            requests: self.backend.stats.requests.load(Ordering::Relaxed),
            nodes,
            handles,
            layer_device: self.layer_device.as_ref().map(|(_, p)| p.clone()),
        }
    }
}

impl Sessions {
    /// Whether entry `x` is listed as a session: a session's own entry, or its layer device
    /// once the session's entry is gone (the two devices' connections end independently, and
    /// the session is over, its sockets removed, only when both have).
    fn stands_for_session(&self, x: &Session) -> bool {
        x.part_of
            .is_none_or(|main| !self.by_token.contains_key(&main))
    }
}

#[derive(Default)]
struct Sessions {
    by_token: HashMap<u64, Session>,
    by_id: HashMap<String, u64>,
}

/// Where a session's guest finds its layers besides the tree: a second virtio-fs device, or
/// a read-only block device (a start request has at most one of them).
struct Layers {
    device: Option<api::LayerDevice>,
    block: Option<strata_plan::LowerBlock>,
    /// The daemon merges them with the upper (`rootfs/`): no second device.
    union: bool,
}

impl Layers {
    fn check(&self) -> Result<(), String> {
        if self.union && (self.device.is_some() || self.block.is_some()) {
            return Err(
                "union serves the layers merged with the upper on the one device: not with \
                 layer_device or lower_block"
                    .into(),
            );
        }
        let Some(b) = &self.block else {
            return Ok(());
        };
        if self.device.is_some() {
            return Err(
                "layer_device and lower_block are alternatives: the guest reads its layers \
                 from one of them"
                    .into(),
            );
        }
        strata_plan::MountPlan::merged()
            .with_lower_block(b.clone())
            .validate()
            .map_err(|e| e.to_string())
    }
}

/// The daemon's state, shared by the accept loop, API connections and session threads.
pub struct Supervisor {
    cfg: DaemonConfig,
    /// `cfg.allow`, held open: explicit dirs are opened below them.
    allowed: AllowedDirs,
    resolver: Resolver,
    sessions: Mutex<Sessions>,
    epoll: Epoll,
    next_token: AtomicU64,
    /// Failed accepts on the API socket (out of fds, say), for logs and tests.
    accept_failures: AtomicU64,
}

/// Failed accepts on the API socket (one per wakeup while out of fds).
static ACCEPT_LOG: crate::ratelog::RateLog =
    crate::ratelog::RateLog::new(3, Duration::from_secs(10));

/// Refused API peers (a local user can connect in a loop if the socket's mode lets them).
static PEER_LOG: crate::ratelog::RateLog = crate::ratelog::RateLog::new(3, Duration::from_secs(10));

/// epoll token of the API listener; sessions count up from 1.
const API_TOKEN: u64 = 0;

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

/// `path` made absolute and canonical as far as it exists (a socket does not exist yet).
fn canonical_parent(path: &Path) -> Option<PathBuf> {
    let parent = path.parent()?;
    let name = path.file_name()?;
    Some(parent.canonicalize().ok()?.join(name))
}

impl Supervisor {
    pub fn new(cfg: DaemonConfig, resolver: Resolver) -> io::Result<Arc<Supervisor>> {
        let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
        let cfg = DaemonConfig {
            socket_dir: canon(&cfg.socket_dir),
            allow: cfg.allow.iter().map(|p| canon(p)).collect(),
            ..cfg
        };
        Ok(Arc::new(Supervisor {
            allowed: AllowedDirs::open(&cfg.allow),
            cfg,
            resolver,
            sessions: Mutex::new(Sessions::default()),
            epoll: Epoll::new()?,
            next_token: AtomicU64::new(API_TOKEN + 1),
            accept_failures: AtomicU64::new(0),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Sessions> {
        // A panic while holding this lock can only come from a bug in this file; the map
        // itself stays consistent (every change is a single insert/remove), so keep going.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answer one request.
    pub fn handle(self: &Arc<Self>, req: Request) -> Response {
        match req {
            Request::Start {
                id,
                socket,
                dirs,
                tag,
                layer_device,
                lower_block,
                union,
            } => self.start(
                id,
                socket,
                dirs,
                tag,
                Layers {
                    device: layer_device,
                    block: lower_block,
                    union,
                },
            ),
            Request::Stop { id } => self.stop(&id),
            Request::Status { id } => {
                let s = self.lock();
                let mut sessions: Vec<SessionInfo> = s
                    .by_token
                    .values()
                    .filter(|x| s.stands_for_session(x))
                    .filter(|x| id.as_ref().is_none_or(|i| *i == x.id))
                    .map(|x| match x.part_of {
                        None => x.info(None),
                        Some(_) => x.info(Some(SessionState::Stopping)),
                    })
                    .collect();
                if let (Some(id), true) = (&id, sessions.is_empty()) {
                    return error(ErrorKind::NotFound, format!("no session {id:?}"));
                }
                sessions.sort_by(|a, b| a.id.cmp(&b.id));
                Response::Status { sessions }
            }
        }
    }

    fn start(
        self: &Arc<Self>,
        id: String,
        socket: PathBuf,
        dirs: Option<Dirs>,
        tag: Option<String>,
        layers: Layers,
    ) -> Response {
        let t0 = Instant::now();
        if let Err(m) = api::check_id(&id) {
            return error(ErrorKind::BadRequest, m);
        }
        if let Err(m) = layers.check() {
            return error(ErrorKind::BadRequest, m);
        }
        let Layers {
            device: layer_device,
            block: lower_block,
            union,
        } = layers;
        if self.lock().by_id.contains_key(&id) {
            return error(
                ErrorKind::Exists,
                format!("session {id:?} exists: stop it first (`strata rootfs stop {id}`)"),
            );
        }
        let in_socket_dir = |socket: &Path| match canonical_parent(socket) {
            Some(s) if s.starts_with(&self.cfg.socket_dir) => Ok(s),
            _ => Err(format!(
                "socket {} must be in {} (the daemon's socket directory, --socket-dir)",
                socket.display(),
                self.cfg.socket_dir.display()
            )),
        };
        let sock = match in_socket_dir(&socket) {
            Ok(s) => s,
            Err(m) => return error(ErrorKind::BadRequest, m),
        };
        let layer_device = match layer_device {
            None => None,
            Some(d) => {
                let socket = match in_socket_dir(&d.socket) {
                    Ok(s) => s,
                    Err(m) => return error(ErrorKind::BadRequest, m),
                };
                if socket == sock {
                    return error(
                        ErrorKind::BadRequest,
                        "the layer device needs a socket of its own",
                    );
                }
                let tag = d
                    .tag
                    .unwrap_or_else(|| crate::config::DEFAULT_LOWER_TAG.to_string());
                if let Some(reason) = strata_plan::tag_problem(&tag) {
                    return error(
                        ErrorKind::BadRequest,
                        format!("layer device tag {tag:?} is not usable: {reason}"),
                    );
                }
                Some(crate::config::LowerDevice {
                    socket,
                    socket_fd: None,
                    tag,
                })
            }
        };
        let explicit = dirs.is_some();
        let dirs = match dirs {
            Some(d) => d,
            None => match (self.resolver)(&id) {
                Ok(d) => d,
                Err((kind, m)) => return error(kind, m),
            },
        };
        let cfg = ServeConfig {
            lowers: dirs.lowers,
            upper: dirs.upper,
            work: dirs.work,
            socket: sock.clone(),
            socket_fd: None,
            socket_perms: crate::config::SocketPerms {
                mode: self.cfg.socket_mode,
                gid: self.cfg.socket_gid,
            },
            tag: tag.unwrap_or_else(|| strata_plan::DEFAULT_TAG.to_string()),
            limits: self.cfg.limits,
            lower_device: layer_device,
            lower_block,
            union,
        };
        // Explicit dirs must come from an allowed directory: each is opened below the one it
        // is in, following no symlink, and the tree is served from those very fds.
        if explicit {
            let outside = cfg
                .lowers
                .iter()
                .chain([&cfg.upper, &cfg.work])
                .find(|p| !self.allowed.contains(p));
            if let Some(p) = outside {
                return error(
                    ErrorKind::BadRequest,
                    format!(
                        "{} is outside every directory the daemon allows ({}): serve store \
                         rootfs by id, or start the daemon with --allow DIR (give absolute, \
                         symlink-free paths)",
                        p.display(),
                        if self.cfg.allow.is_empty() {
                            "none given".to_string()
                        } else {
                            format!("{:?}", self.allowed.paths())
                        }
                    ),
                );
            }
        }
        let checked = match if explicit {
            cfg.check_allowed(&self.allowed)
        } else {
            cfg.check()
        } {
            Ok(c) => c,
            Err(e) => return error(ErrorKind::Config, e.to_string()),
        };
        // And where the kernel says they are is inside too.
        if explicit {
            let outside = checked
                .lowers
                .iter()
                .chain([&checked.upper, &checked.work])
                .find(|p| !self.cfg.allow.iter().any(|a| p.starts_with(a)));
            if let Some(p) = outside {
                return error(
                    ErrorKind::BadRequest,
                    format!(
                        "{} is outside every directory the daemon allows ({}): serve store \
                         rootfs by id, or start the daemon with --allow DIR",
                        p.display(),
                        if self.cfg.allow.is_empty() {
                            "none given".to_string()
                        } else {
                            format!("{:?}", self.cfg.allow)
                        }
                    ),
                );
            }
        }
        let cache = self.cfg.cache;
        let prepared = (|| -> Result<_, ServeError> {
            let guard = claim_socket(&cfg.socket)?;
            let layer_guard = match &cfg.lower_device {
                Some(d) => Some(claim_socket(&d.socket)?),
                None => None,
            };
            let role = Role::Tree {
                lower_tag: cfg.lower_device.as_ref().map(|d| d.tag.clone()),
            };
            let fs = Arc::new(StrataFs::with_role(&checked, cache, role)?);
            let listener = listen(&cfg.socket, self.cfg.socket_mode, self.cfg.socket_gid)?;
            let layers = match (&cfg.lower_device, layer_guard) {
                (Some(d), Some(g)) => Some((
                    Arc::new(StrataFs::with_role(&checked, cache, Role::Layers)?),
                    listen(&d.socket, self.cfg.socket_mode, self.cfg.socket_gid)?,
                    g,
                    d.socket.clone(),
                )),
                _ => None,
            };
            Ok((guard, fs, listener, layers))
        })();
        let (guard, fs, listener, layers) = match prepared {
            Ok(p) => p,
            Err(ServeError::Config(e)) => return error(ErrorKind::Config, e.to_string()),
            Err(e) => return error(ErrorKind::Failed, e.to_string()),
        };
        let backend = Arc::new(FsBackend::new(fs));
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let listen_fd = listener.as_raw_fd();
        let layer_entry = layers.map(|(fs, listener, guard, socket)| {
            let t = self.next_token.fetch_add(1, Ordering::Relaxed);
            let fd = listener.as_raw_fd();
            let entry = Session {
                part_of: Some(token),
                ..Session::listening(
                    &id,
                    socket.clone(),
                    checked.lowers.len(),
                    Arc::new(FsBackend::new(fs)),
                    listener,
                    guard,
                )
            };
            (t, fd, socket, entry)
        });
        let session = Session {
            layer_device: layer_entry.as_ref().map(|(t, _, p, _)| (*t, p.clone())),
            ..Session::listening(&id, sock, checked.lowers.len(), backend, listener, guard)
        };
        let mut s = self.lock();
        if s.by_id.contains_key(&id) {
            // Lost a race with a concurrent start of the same id: ours goes away unused.
            return error(ErrorKind::Exists, format!("session {id:?} exists"));
        }
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            listen_fd,
            EpollEvent::new(EventSet::IN, token),
        ) {
            return error(ErrorKind::Failed, format!("cannot watch the socket: {e}"));
        }
        if let Some((t, fd, _, entry)) = layer_entry {
            if let Err(e) =
                self.epoll
                    .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, t))
            {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, listen_fd, EpollEvent::default());
                return error(ErrorKind::Failed, format!("cannot watch the socket: {e}"));
            }
            s.by_token.insert(t, entry);
        }
        let mut session = session;
        session.startup = t0.elapsed();
        let info = session.info(None);
        s.by_id.insert(id, token);
        s.by_token.insert(token, session);
        drop(s);
        tracing::info!(
            session = %info.id,
            socket = ?info.socket,
            layers = info.layers,
            "started in {} us",
            info.startup_us
        );
        Response::Started { session: info }
    }

    fn stop(&self, id: &str) -> Response {
        let mut s = self.lock();
        let Some(&token) = s.by_id.get(id) else {
            return error(ErrorKind::NotFound, format!("no session {id:?}"));
        };
        let layer_token = s
            .by_token
            .get(&token)
            .and_then(|x| x.layer_device.as_ref().map(|(t, _)| *t));
        if let Some(t) = layer_token {
            self.stop_entry(&mut s, t);
        }
        match self.stop_entry(&mut s, token) {
            Some(info) => Response::Stopped { session: info },
            None => error(ErrorKind::NotFound, format!("no session {id:?}")),
        }
    }

    /// Stop one entry (a session or its layer device); its info as of the stop.
    fn stop_entry(&self, s: &mut Sessions, token: u64) -> Option<SessionInfo> {
        let session = s.by_token.get_mut(&token)?;
        let id = session.id.clone();
        let main = session.part_of.is_none();
        match &session.stage {
            Stage::Listening(l) => {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    l.as_raw_fd(),
                    EpollEvent::default(),
                );
                let info = session.info(Some(SessionState::Ended));
                if main {
                    s.by_id.remove(&id);
                }
                s.by_token.remove(&token); // drops listener, tree, socket and lock file
                if main {
                    tracing::info!(session = %id, "stopped before any VMM connected");
                }
                Some(info)
            }
            Stage::Connected | Stage::Stopping => {
                session.backend.revoke();
                session.guard = None;
                session.stage = Stage::Stopping;
                if main {
                    tracing::info!(session = %id, "stopped while connected: waiting for the VMM to hang up");
                }
                Some(session.info(None))
            }
        }
    }

    /// A listening socket became readable: a VMM is connecting. Hand the session to a thread
    /// of its own; never block here.
    fn connect(self: &Arc<Self>, token: u64) {
        let mut s = self.lock();
        let Some(session) = s.by_token.get_mut(&token) else {
            return;
        };
        let Stage::Listening(_) = session.stage else {
            return;
        };
        let Stage::Listening(listener) = std::mem::replace(&mut session.stage, Stage::Connected)
        else {
            return;
        };
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            listener.as_raw_fd(),
            EpollEvent::default(),
        );
        let backend = session.backend.clone();
        let id = session.id.clone();
        drop(s);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vm-{}", id.chars().take(12).collect::<String>()))
            .spawn(move || me.run_session(token, id, listener, backend));
        if let Err(e) = spawned {
            tracing::error!("cannot start a session thread: {e}");
            self.finish(token);
        }
    }

    /// One connected session, from accept to cleanup.
    fn run_session(
        self: Arc<Self>,
        token: u64,
        id: String,
        mut listener: Listener,
        backend: Arc<FsBackend>,
    ) {
        let end = run_device(
            &format!("strata-vm-{id}"),
            backend.clone(),
            &mut listener,
            || tracing::info!(session = %id, "VMM connected"),
        );
        drop(listener);
        match end {
            Ok(()) => tracing::info!(
                session = %id,
                requests = backend.stats.requests.load(Ordering::Relaxed),
                "VMM disconnected; session over"
            ),
            Err(e) => tracing::warn!(session = %id, "session ended: {e}"),
        }
        backend.revoke();
        self.finish(token);
    }

    fn finish(&self, token: u64) {
        let mut s = self.lock();
        if let Some(session) = s.by_token.remove(&token) {
            if s.by_id.get(&session.id) == Some(&token) {
                s.by_id.remove(&session.id);
            }
            // The session is over: a layer device its VMM never connected to goes with it.
            if let Some((t, _)) = session.layer_device {
                if matches!(
                    s.by_token.get(&t).map(|x| &x.stage),
                    Some(Stage::Listening(_))
                ) {
                    self.stop_entry(&mut s, t);
                }
            }
        }
    }

    /// Remove every socket and lock file (on SIGTERM/SIGINT, before exiting).
    pub fn shutdown(&self) {
        let mut s = self.lock();
        for session in s.by_token.values_mut() {
            session.backend.revoke();
            session.guard = None;
        }
    }

    /// Fault injection for tests: session `id` panics in its request path on its next request.
    /// Only with the `fault-injection` feature (debug builds only).
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self, id: &str) -> bool {
        let s = self.lock();
        let Some(session) = s.by_id.get(id).and_then(|t| s.by_token.get(t)) else {
            return false;
        };
        session.backend.panic_on_next_request();
        true
    }

    /// Number of sessions (any state; a session's layer device is part of it, and keeps it
    /// alive until its own VMM connection ends too).
    pub fn len(&self) -> usize {
        let s = self.lock();
        s.by_token
            .values()
            .filter(|x| s.stands_for_session(x))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many accepts on the API socket have failed so far.
    pub fn api_accept_failures(&self) -> u64 {
        self.accept_failures.load(Ordering::Relaxed)
    }

    /// Watch the API listener and every session socket; never returns unless epoll fails.
    pub fn accept_loop(self: &Arc<Self>, api: UnixListener) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            api.as_raw_fd(),
            EpollEvent::new(EventSet::IN, API_TOKEN),
        )?;
        let mut events = vec![EpollEvent::default(); 64];
        // Out of fds, accept fails while the client stays queued (the socket stays readable):
        // wait before trying again instead of spinning, and log a few lines, not millions.
        const FIRST_BACKOFF: Duration = Duration::from_millis(10);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for ev in &events[..n] {
                if ev.data() == API_TOKEN {
                    match api.accept() {
                        Ok((conn, _)) => {
                            backoff = FIRST_BACKOFF;
                            let me = self.clone();
                            if let Err(e) = std::thread::Builder::new()
                                .name("strata-api".into())
                                .spawn(move || me.serve_client(conn))
                            {
                                tracing::warn!("cannot serve an API client: {e}");
                            }
                        }
                        Err(e) => {
                            self.accept_failures.fetch_add(1, Ordering::Relaxed);
                            crate::ratelog_warn!(ACCEPT_LOG, "API accept failed: {e}");
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                            ) {
                                std::thread::sleep(backoff);
                                backoff = (backoff * 2).min(Duration::from_secs(1));
                                continue;
                            }
                        }
                    }
                } else {
                    self.connect(ev.data());
                }
            }
        }
    }

    /// Answer one API connection's requests, in order, until it closes. A peer that is not
    /// root (or an `--api-uid`) gets one error line and the connection is closed.
    pub fn serve_client(self: Arc<Self>, conn: UnixStream) {
        if let Err(m) = crate::socket::peer_allowed(&conn, &self.cfg.api_uids) {
            crate::ratelog_warn!(PEER_LOG, "API connection refused: {m}");
            // Take the first request (briefly, boundedly) so the client reads the answer
            // instead of a broken pipe; it is not looked at.
            let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = BufReader::new((&conn).take(api::MAX_LINE as u64))
                .read_until(b'\n', &mut Vec::new());
            let mut out = serde_json::to_vec(&error(ErrorKind::BadRequest, m)).unwrap_or_default();
            out.push(b'\n');
            let _ = (&conn).write_all(&out);
            return;
        }
        let Ok(writer) = conn.try_clone() else { return };
        let mut writer = writer;
        let mut reader = BufReader::new(conn);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut reader)
                .take(api::MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let too_long = line.len() > api::MAX_LINE;
            let resp = if too_long {
                error(
                    ErrorKind::BadRequest,
                    format!("request longer than {} bytes", api::MAX_LINE),
                )
            } else {
                match serde_json::from_slice::<Request>(&line) {
                    Ok(req) => self.handle(req),
                    Err(e) => error(ErrorKind::BadRequest, format!("not a request: {e}")),
                }
            };
            let mut out = match serde_json::to_vec(&resp) {
                Ok(v) => v,
                Err(_) => return,
            };
            out.push(b'\n');
            if writer.write_all(&out).is_err() || too_long {
                return;
            }
        }
    }
}

/// Run `strata daemon` until SIGTERM/SIGINT: claim and bind the API socket, confine the
/// process, then serve the API and every session.
pub fn run(cfg: DaemonConfig, resolver: Resolver) -> Result<(), ServeError> {
    let t0 = Instant::now();
    if cfg.confine && !cfg.allow_no_landlock && crate::sys::landlock_abi() <= 0 {
        return Err(ServeError::Seccomp(
            "this kernel cannot enforce Landlock, so file access would be limited only by the \
             served trees' own checks: refusing to start (enable Landlock: lsm=...,landlock; \
             or start with --allow-no-landlock to accept that)"
                .into(),
        ));
    }
    std::fs::create_dir_all(&cfg.socket_dir).map_err(|source| ServeError::Listen {
        path: cfg.socket_dir.clone(),
        source,
    })?;
    let api_guard = claim_socket(&cfg.api)?;
    let api = crate::socket::bind_private(&cfg.api, cfg.socket_mode, cfg.socket_gid).map_err(
        |source| ServeError::Listen {
            path: cfg.api.clone(),
            source,
        },
    )?;
    // Connected before confinement; READY=1 once the API listens under the full sandbox.
    let notifier = crate::notify::Notifier::from_env().map(Arc::new);
    let mut confined = None;
    if cfg.confine {
        // Every session's fds come out of one process limit: raise it while the process may
        // (CAP_SYS_RESOURCE goes with the confinement) and keep a budget below it.
        match crate::fdbudget::raise_and_set(crate::fdbudget::system_max()) {
            Ok(cap) => tracing::info!("fd budget for all sessions: {cap}"),
            Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
        }
        let existing =
            |v: &[PathBuf]| -> Vec<PathBuf> { v.iter().filter(|p| p.exists()).cloned().collect() };
        let mut rw = existing(&cfg.read_write);
        rw.extend(existing(&cfg.allow));
        rw.push(cfg.socket_dir.clone());
        let c = sandbox::Confinement {
            layers: existing(&cfg.read_only),
            rw,
            socket_dirs: vec![cfg.socket_dir.clone()],
        };
        let report = sandbox::confine(&c)?;
        if report.landlock.is_none() && !cfg.allow_no_landlock {
            return Err(ServeError::Seccomp(
                "Landlock is not enforced on this kernel: refusing to serve (start with \
                 --allow-no-landlock to accept that)"
                    .into(),
            ));
        }
        confined = Some(report);
    }
    let sup =
        Supervisor::new(cfg.clone(), resolver).map_err(|e| ServeError::Session(e.to_string()))?;
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
            .map_err(|e| ServeError::Session(e.to_string()))?;
        let stopping = notifier.clone();
        let sup = sup.clone();
        let api_path = cfg.api.clone();
        std::thread::Builder::new()
            .name("strata-signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    tracing::info!("signal {sig}: stopping {} sessions", sup.len());
                    if let Some(n) = &stopping {
                        n.send("STOPPING=1");
                    }
                    sup.shutdown();
                    let _ = std::fs::remove_file(&api_path);
                    let mut lock = api_path.into_os_string();
                    lock.push(".lock");
                    let _ = std::fs::remove_file(lock);
                    std::process::exit(0);
                }
            })
            .map_err(|e| ServeError::Session(e.to_string()))?;
    }
    if cfg.confine {
        sandbox::forbid_mounts()?;
        sandbox::allow_only_known()?;
    }
    tracing::info!(
        api = ?cfg.api,
        socket_dir = ?cfg.socket_dir,
        "strata daemon ready in {:.2} ms; {}",
        t0.elapsed().as_secs_f64() * 1e3,
        sandbox::describe_with(confined.as_ref()).replace('\n', "; ")
    );
    if let Some(n) = &notifier {
        n.send(&format!(
            "READY=1\nSTATUS=serving; API {}",
            cfg.api.display()
        ));
    }
    let r = sup.accept_loop(api);
    drop(api_guard);
    r.map_err(|e| ServeError::Session(format!("accept loop: {e}")))
}
