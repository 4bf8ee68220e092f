//! One container in one VM: serve the rootfs, boot qemu (optionally paused), hand the guest
//! its [`ContainerSpec`], copy stdio, forward signals, report how the process ended, clean up.
//!
//! Host side of the transport ([`strata_plan::control`]): a `virtio-serial-pci` device with four
//! ports (`strata.control`, `strata.stdin`, `strata.stdout`, `strata.stderr`), each a qemu
//! socket chardev connecting to a unix socket this process listens on in
//! [`SandboxConfig::state_dir`]; the QMP monitor (resume of a paused VM) likewise. The serial
//! console stays init's log ([`Sandbox::console`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use strata_plan::container::ContainerSpec;
use strata_plan::control::{
    self, ExitReport, GuestMessage, HostMessage, CONTROL_PORT, STDERR_PORT, STDIN_PORT, STDOUT_PORT,
};
use strata_vm::VmConfig;

use crate::error::{Result, RuntimeError};
use crate::server::{self, Served};
use crate::{initramfs, qmp, Accel, Rootfs, Server, VmSpec};

/// Where sandboxes keep their sockets unless told otherwise (`<dir>/<id>/`).
pub const DEFAULT_STATE_DIR: &str = "/run/strata/sandboxes";

/// How the container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It never ran or its end was not reported: the VM could not start, the guest refused the
    /// spec, or the VMM died. The message says which (with the end of the console).
    VmFailed(String),
}

impl ExitStatus {
    /// The shell's convention: the code, 128+N for signal N, 125 (strata's own failure, as
    /// `docker run`) when the VM failed.
    pub fn code(&self) -> i32 {
        match self {
            ExitStatus::Code(c) => *c,
            ExitStatus::Signal(n) => 128 + n,
            ExitStatus::VmFailed(_) => 125,
        }
    }
}

/// The container's stdio on the host: `None` is `/dev/null` (stdin: EOF at once; output:
/// read and dropped).
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Everything [`Sandbox::create`] needs.
#[derive(Debug)]
pub struct SandboxConfig {
    /// Names the sandbox: its state directory, its daemon session, logs.
    /// `[A-Za-z0-9_.-]`, 1–128 bytes.
    pub id: String,
    pub vm: VmSpec,
    pub rootfs: Rootfs,
    pub spec: ContainerSpec,
    pub server: Server,
    /// The static `strata` binary: the guest's `/init` (initramfs) and the `strata serve`
    /// child. Default: [`default_strata_binary`].
    pub strata: PathBuf,
    /// Directory for this sandbox's sockets; created, removed on drop. Default
    /// `DEFAULT_STATE_DIR/<id>`.
    pub state_dir: PathBuf,
    pub stdio: Stdio,
    /// Create the VMM stopped (qemu `-S`): the guest runs from [`Sandbox::start`] (the shim's
    /// Create/Start split). Otherwise it runs at once.
    pub paused: bool,
    /// Also serve the layers on the xattr-less layer device (faster lookups; default on).
    pub layer_device: bool,
    /// Give the guest the layers as one merged EROFS image on a read-only virtio-blk device
    /// (built on first use) instead of over virtio-fs; the upper stays served (default off).
    /// A store rootfs uses the store's image; plain directories one in [`Self::erofs_cache`].
    pub erofs: bool,
    /// Where the EROFS images of plain layer directories are kept
    /// (default [`DEFAULT_EROFS_CACHE`]); a build removes the images whose directories are gone.
    pub erofs_cache: PathBuf,
    /// Have the server merge the upper and the layers itself (`strata serve --union`): the
    /// guest mounts no overlay, a create is 6 FUSE round trips instead of 11 (default off;
    /// not with [`Self::erofs`], and the layer device is then not used).
    pub union: bool,
}

/// Default cache of the EROFS images of plain layer directories: on disk, not under `/run`.
pub const DEFAULT_EROFS_CACHE: &str = "/var/cache/strata/erofs-dirs";

impl SandboxConfig {
    /// A config with the defaults: spawned server, this strata binary, state dir under
    /// [`DEFAULT_STATE_DIR`], no stdio, running at once, layer device on.
    pub fn new(id: &str, vm: VmSpec, rootfs: Rootfs, spec: ContainerSpec) -> SandboxConfig {
        SandboxConfig {
            id: id.to_string(),
            vm,
            rootfs,
            spec,
            server: Server::Spawn,
            strata: default_strata_binary(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR).join(id),
            stdio: Stdio::default(),
            paused: false,
            layer_device: true,
            erofs: false,
            erofs_cache: PathBuf::from(DEFAULT_EROFS_CACHE),
            union: false,
        }
    }
}

/// The `strata` binary to use: `$STRATA_BIN` if set, else this process's own executable if it
/// is named `strata`, else `strata` next to it, else `strata` on `PATH`.
pub fn default_strata_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATA_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        if exe.file_name().is_some_and(|n| n == "strata") {
            return exe;
        }
        if let Some(beside) = exe.parent().map(|d| d.join("strata")) {
            if beside.is_file() {
                return beside;
            }
        }
    }
    strata_vm::qemu::find_in_path("strata").unwrap_or_else(|| PathBuf::from("strata"))
}

/// A running (or paused, or finished) container VM. Every method takes `&self`: share it
/// (`Arc<Sandbox>`) between a waiting thread and the ones that signal or kill. Dropping it
/// kills the VMM if it still runs, stops serving the rootfs and removes the state directory.
pub struct Sandbox {
    id: String,
    pid: u32,
    accel: String,
    accel_fallback: Option<String>,
    shared: Arc<Shared>,
    /// The control connection's write side (spec, signals, release).
    control: Arc<Mutex<UnixStream>>,
    /// The QMP connection of a paused VM, until [`Sandbox::start`].
    qmp: Mutex<Option<UnixStream>>,
    monitor: Mutex<Option<JoinHandle<()>>>,
    served: Mutex<Option<Served>>,
    state_dir: PathBuf,
    _lock: Option<Flock<File>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish()
    }
}

/// What the threads of a sandbox learn, under one lock.
#[derive(Default)]
struct State {
    container_pid: Option<u32>,
    report: Option<ExitReport>,
    guest_error: Option<String>,
    /// qemu is gone: `Ok` for a normal exit, `Err` for how it failed.
    vm_end: Option<std::result::Result<(), String>>,
    stdout: u64,
    stderr: u64,
    stdout_closed: bool,
    stderr_closed: bool,
    /// The last lines of the serial console.
    console: VecDeque<String>,
    console_bytes: usize,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }
}

const CONSOLE_KEEP: usize = 64 * 1024;
/// How long qemu may take to connect its chardevs.
const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// qemu's own timeout (strata_vm kills it then): effectively none.
const NO_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// A listening socket in the state dir, for one qemu chardev.
struct Listening {
    path: PathBuf,
    listener: UnixListener,
}

fn listen(dir: &Path, name: &str) -> Result<Listening> {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).map_err(RuntimeError::io("cannot listen on", &path))?;
    listener
        .set_nonblocking(true)
        .map_err(RuntimeError::io("cannot set non-blocking", &path))?;
    Ok(Listening { path, listener })
}

/// Accept qemu's connection on `l`, giving up if qemu ends first (`ended`) or after
/// [`CONNECT_WAIT`].
fn accept(l: &Listening, shared: &Shared) -> Result<UnixStream> {
    let deadline = Instant::now() + CONNECT_WAIT;
    loop {
        match l.listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(RuntimeError::io("cannot set blocking", &l.path))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(RuntimeError::io("cannot accept on", &l.path)(e)),
        }
        if let Some(end) = shared.lock().vm_end.clone() {
            return Err(RuntimeError::State(format!(
                "qemu ended before connecting to {}: {}",
                l.path.display(),
                end.err().unwrap_or_else(|| "it exited".into())
            )));
        }
        if Instant::now() >= deadline {
            return Err(RuntimeError::State(format!(
                "qemu did not connect to {} within {} s",
                l.path.display(),
                CONNECT_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Take the state directory: create it (0700) and hold its lock; a directory left by a dead
/// sandbox is cleared, one of a live sandbox refused.
fn claim_state_dir(dir: &Path, id: &str) -> Result<Flock<File>> {
    if dir.to_string_lossy().contains(',') {
        return Err(RuntimeError::Invalid(format!(
            "state directory {} contains a ',' (qemu option syntax): choose another",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(RuntimeError::io("cannot create", dir))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let lock_path = dir.join("lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(RuntimeError::io("cannot open", &lock_path))?;
    let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|_| {
        RuntimeError::State(format!(
            "a sandbox named {id} is running (its state directory {} is locked)",
            dir.display()
        ))
    })?;
    // Anything else in there is a dead sandbox's.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name() != "lock" {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(lock)
}

/// The `-accel` value, and for [`Accel::Auto`] falling back to TCG, why.
fn accel_for(a: Accel, vmlinuz: &Path) -> Result<(String, Option<String>)> {
    let tcg = strata_vm::qemu::TCG.to_string();
    match a {
        // An explicit STRATA_ACCEL (not `auto`) is the user's choice, taken as given.
        Accel::Auto
            if std::env::var("STRATA_ACCEL").is_ok_and(|v| !matches!(v.trim(), "" | "auto")) =>
        {
            Ok((strata_vm::qemu::detect_accel(), None))
        }
        Accel::Auto => match crate::kvm::usable(vmlinuz) {
            Ok(()) => Ok(("kvm".into(), None)),
            Err(why) => Ok((tcg, Some(why))),
        },
        Accel::Tcg => Ok((tcg, None)),
        Accel::Kvm => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(|_| ("kvm".to_string(), None))
            .map_err(|e| RuntimeError::NoKvm(e.to_string())),
    }
}

impl Sandbox {
    /// Serve the rootfs, start qemu (stopped if [`SandboxConfig::paused`]) and give the guest
    /// its spec. Nothing is left behind on error.
    pub fn create(cfg: SandboxConfig) -> Result<Sandbox> {
        strata_serve::api::check_id(&cfg.id).map_err(RuntimeError::Invalid)?;
        cfg.spec.validate()?;
        let lock = claim_state_dir(&cfg.state_dir, &cfg.id)?;
        let r = Self::create_locked(cfg, lock);
        r.map_err(|(e, dir)| {
            if let Some(dir) = dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            e
        })
    }

    #[allow(clippy::type_complexity)]
    fn create_locked(
        cfg: SandboxConfig,
        lock: Flock<File>,
    ) -> std::result::Result<Sandbox, (RuntimeError, Option<PathBuf>)> {
        let dir = cfg.state_dir.clone();
        let fail = |e: RuntimeError| (e, Some(dir.clone()));
        let kernel = cfg.vm.kernel.fetch().map_err(|e| fail(e.into()))?;
        let initrd = match &cfg.vm.initramfs {
            Some(p) => p.clone(),
            None => initramfs::cached(&cfg.strata, &kernel).map_err(fail)?,
        };
        let (accel, accel_fallback) = accel_for(cfg.vm.accel, &kernel.vmlinuz).map_err(fail)?;
        let served = server::serve(
            &cfg.server,
            &cfg.strata,
            &cfg.id,
            &cfg.rootfs,
            &dir,
            server::LayerMode {
                layer_device: cfg.layer_device,
                erofs: cfg.erofs.then_some(cfg.erofs_cache.as_path()),
                union: cfg.union,
            },
        )
        .map_err(fail)?;
        let ports = [CONTROL_PORT, STDIN_PORT, STDOUT_PORT, STDERR_PORT];
        let listening = ports
            .iter()
            .map(|p| listen(&dir, &format!("{p}.sock")))
            .collect::<Result<Vec<_>>>()
            .map_err(fail)?;
        let qmp_listening = if cfg.paused {
            Some(listen(&dir, "qmp.sock").map_err(fail)?)
        } else {
            None
        };

        let mut vm = VmConfig::new(&kernel.vmlinuz, &initrd);
        vm.mem_mib = cfg.vm.mem_mib;
        vm.cpus = cfg.vm.vcpus;
        vm.accel = accel.clone();
        vm.own_process_group = true;
        vm.timeout = NO_TIMEOUT;
        vm.cmdline = format!(
            "{}=1 strata.tag={}{}",
            control::CMDLINE_PARAM,
            strata_plan::DEFAULT_TAG,
            if cfg.vm.debug { " strata.debug=1" } else { "" }
        );
        vm.virtiofs
            .push((served.socket.clone(), strata_plan::DEFAULT_TAG.into()));
        if let Some(l) = &served.lower_socket {
            vm.virtiofs
                .push((l.clone(), strata_serve::DEFAULT_LOWER_TAG.into()));
        }
        if let Some(img) = &served.erofs {
            vm.extra_args.extend(strata_vm::qemu::read_only_disk_args(
                img,
                strata_plan::DEFAULT_LOWER_SERIAL,
            ));
        }
        vm.extra_args
            .extend(["-device".into(), "virtio-serial-pci,id=vser0".into()]);
        for (i, (name, l)) in ports.iter().zip(&listening).enumerate() {
            vm.extra_args.extend([
                "-chardev".into(),
                format!("socket,id=port{i},path={}", l.path.display()),
                "-device".into(),
                format!("virtserialport,bus=vser0.0,chardev=port{i},name={name}"),
            ]);
        }
        if let Some(q) = &qmp_listening {
            vm.extra_args.extend([
                "-S".into(),
                "-chardev".into(),
                format!("socket,id=qmp,path={}", q.path.display()),
                "-mon".into(),
                "chardev=qmp,mode=control".into(),
            ]);
        }

        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let (pid_tx, pid_rx) = mpsc::channel();
        let monitor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("vmm-{}", cfg.id))
                .spawn(move || monitor_vm(vm, shared, pid_tx))
                .map_err(|e| fail(RuntimeError::State(format!("cannot start a thread: {e}"))))?
        };
        let pid = match pid_rx.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => {
                let _ = monitor.join();
                return Err(fail(e));
            }
            Err(_) => {
                let _ = monitor.join();
                return Err(fail(RuntimeError::State("the VMM thread died".into())));
            }
        };
        let sandbox = Sandbox {
            id: cfg.id.clone(),
            pid,
            accel,
            accel_fallback,
            shared: shared.clone(),
            control: Arc::new(Mutex::new(
                // Replaced below once qemu connected; a placeholder pair until then.
                match UnixStream::pair() {
                    Ok((a, _)) => a,
                    Err(e) => return Err(fail(RuntimeError::io("socketpair", &dir)(e))),
                },
            )),
            qmp: Mutex::new(None),
            monitor: Mutex::new(Some(monitor)),
            served: Mutex::new(Some(served)),
            state_dir: dir.clone(),
            _lock: Some(lock),
        };
        // From here on dropping `sandbox` cleans up (kills qemu, stops serving, removes dir).
        let connect = || -> Result<()> {
            let mut streams = Vec::new();
            for l in &listening {
                streams.push(accept(l, &shared)?);
            }
            if let Some(q) = &qmp_listening {
                *lock_ignore(&sandbox.qmp) = Some(accept(q, &shared)?);
            }
            let mut it = streams.into_iter();
            let (Some(ctl), Some(stdin), Some(stdout), Some(stderr)) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(RuntimeError::State("missing port connection".into()));
            };
            let reader = ctl
                .try_clone()
                .map_err(RuntimeError::io("cannot clone the control socket", &dir))?;
            {
                let mut w = lock_ignore(&sandbox.control);
                *w = ctl;
                w.write_all(&control::encode(&HostMessage::Spec(Box::new(
                    cfg.spec.clone(),
                ))))
                .map_err(RuntimeError::io("cannot send the spec on", &dir))?;
            }
            let Stdio {
                stdin: user_stdin,
                stdout: user_stdout,
                stderr: user_stderr,
            } = cfg.stdio;
            spawn_thread("stdin", move || pump_stdin(user_stdin, stdin))?;
            let sh = shared.clone();
            spawn_thread("stdout", move || {
                pump_output(stdout, user_stdout, &sh, true)
            })?;
            let sh = shared.clone();
            spawn_thread("stderr", move || {
                pump_output(stderr, user_stderr, &sh, false)
            })?;
            let sh = shared.clone();
            let w = sandbox.control.clone();
            spawn_thread("control", move || read_control(reader, w, &sh))?;
            Ok(())
        };
        connect().map_err(|e| (e, None))?;
        Ok(sandbox)
    }

    /// Let a paused VM run (QMP `cont`); nothing for one that runs already.
    pub fn start(&self) -> Result<()> {
        let Some(q) = lock_ignore(&self.qmp).take() else {
            return Ok(());
        };
        qmp::resume(&q).map_err(RuntimeError::State)
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The VMM's (qemu's) pid on the host.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The container process's pid inside the guest, once it started.
    pub fn container_pid(&self) -> Option<u32> {
        self.shared.lock().container_pid
    }

    /// The `-accel` qemu runs with (`kvm` or `tcg,thread=multi`).
    pub fn accel(&self) -> &str {
        &self.accel
    }

    /// With [`Accel::Auto`] on a host where KVM is not usable: why the VM runs under TCG
    /// (callers say it once).
    pub fn accel_fallback(&self) -> Option<&str> {
        self.accel_fallback.as_deref()
    }

    /// Send signal `sig` to the container process (forwarded over the control port).
    pub fn signal(&self, sig: i32) -> Result<()> {
        self.send(&HostMessage::Signal(sig), "cannot send a signal on")
    }

    /// The container's terminal (a spec with `terminal`) is now `size`: the guest resizes its
    /// pseudo-terminal and the process gets SIGWINCH. Without a terminal the guest ignores it.
    pub fn resize(&self, size: strata_plan::container::ConsoleSize) -> Result<()> {
        self.send(&HostMessage::Resize(size), "cannot send a resize on")
    }

    /// One control message to a running guest (`failure` says what failed, for the error).
    fn send(&self, msg: &HostMessage, failure: &'static str) -> Result<()> {
        if self.shared.lock().vm_end.is_some() {
            return Err(RuntimeError::State(format!(
                "sandbox {} is not running",
                self.id
            )));
        }
        lock_ignore(&self.control)
            .write_all(&control::encode(msg))
            .map_err(RuntimeError::io(failure, &self.state_dir))
    }

    /// Kill the VMM now (SIGKILL): the container ends with [`ExitStatus::VmFailed`] unless it
    /// had already reported its exit.
    pub fn kill(&self) {
        let st = self.shared.lock();
        if st.vm_end.is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Wait until the container ended and the VMM is gone.
    pub fn wait(&self) -> ExitStatus {
        let mut st = self.shared.lock();
        while st.vm_end.is_none() {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        status_of(&st)
    }

    /// [`wait`](Self::wait) for at most `timeout`; `None` if it still runs.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while st.vm_end.is_none() {
            let left = deadline.checked_duration_since(Instant::now())?;
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Some(status_of(&st))
    }

    /// How it ended, if it has.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        let st = self.shared.lock();
        st.vm_end.is_some().then(|| status_of(&st))
    }

    /// The guest's serial console so far (init's log; the last 64 KiB).
    pub fn console(&self) -> String {
        let st = self.shared.lock();
        let mut s = String::new();
        for l in &st.console {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill();
        if let Some(h) = lock_ignore(&self.monitor).take() {
            let _ = h.join();
        }
        drop(lock_ignore(&self.served).take());
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn lock_ignore<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(format!("sandbox-{name}"))
        .spawn(f)
        .map(drop)
        .map_err(|e| RuntimeError::State(format!("cannot start a thread: {e}")))
}

/// How the container ended, from what is known once qemu is gone.
fn status_of(st: &State) -> ExitStatus {
    if let Some(r) = &st.report {
        if let Some(sig) = r.signal {
            return ExitStatus::Signal(sig);
        }
        return ExitStatus::Code(r.code.unwrap_or(0));
    }
    if let Some(e) = &st.guest_error {
        return ExitStatus::VmFailed(e.clone());
    }
    let why = match &st.vm_end {
        Some(Err(e)) => e.clone(),
        _ => "the VM stopped without reporting the container's exit".into(),
    };
    let tail: Vec<&str> = st
        .console
        .iter()
        .rev()
        .take(15)
        .map(String::as_str)
        .collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    if tail.is_empty() {
        ExitStatus::VmFailed(why)
    } else {
        ExitStatus::VmFailed(format!(
            "{why}; the guest console ended with:\n{}",
            tail.join("\n")
        ))
    }
}

/// The thread that owns qemu (strata_vm kills qemu when the thread that started it ends).
fn monitor_vm(vm: VmConfig, shared: Arc<Shared>, pid_tx: mpsc::Sender<Result<u32>>) {
    let sh = shared.clone();
    let spawned = vm.spawn_with(move |line| {
        sh.update(|st| {
            st.console_bytes += line.len() + 1;
            st.console.push_back(line.to_string());
            while st.console_bytes > CONSOLE_KEEP {
                match st.console.pop_front() {
                    Some(l) => st.console_bytes -= l.len() + 1,
                    None => break,
                }
            }
        })
    });
    let vm = match spawned {
        Ok(vm) => vm,
        Err(e) => {
            let msg = e.to_string();
            shared.update(|st| st.vm_end = Some(Err(msg)));
            let _ = pid_tx.send(Err(e.into()));
            return;
        }
    };
    let _ = pid_tx.send(Ok(vm.pid()));
    let end = match vm.wait() {
        Ok(out) if out.timed_out => Err("the VM ran past its time limit".to_string()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("qemu failed: {e}")),
    };
    shared.update(|st| st.vm_end = Some(end));
}

/// Copy the user's stdin to the stdin port, then half-close it: qemu reads everything queued
/// before it sees the end (a full close would be a hang-up, and qemu drops unread data on one),
/// and the guest then reads EOF. The socket stays open until qemu goes away.
fn pump_stdin(from: Option<OwnedFd>, mut to: UnixStream) {
    if let Some(fd) = from {
        let mut from = File::from(fd);
        let _ = std::io::copy(&mut from, &mut to);
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 512];
    while matches!(to.read(&mut sink), Ok(n) if n > 0) {}
}

/// Copy an output port to the user's fd (or nowhere), counting bytes for the exit report.
fn pump_output(mut from: UnixStream, to: Option<OwnedFd>, shared: &Shared, stdout: bool) {
    let mut to = to.map(File::from);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if let Some(t) = to.as_mut() {
            if t.write_all(&buf[..n]).is_err() {
                // A reader that went away (a closed pipe): keep draining, drop the data.
                to = None;
            }
        }
        shared.update(|st| {
            if stdout {
                st.stdout += n as u64;
            } else {
                st.stderr += n as u64;
            }
        });
    }
    shared.update(|st| {
        if stdout {
            st.stdout_closed = true;
        } else {
            st.stderr_closed = true;
        }
    });
}

/// Read the guest's messages; after its exit report, wait for all counted output, then
/// release the guest.
fn read_control(from: UnixStream, to: Arc<Mutex<UnixStream>>, shared: &Shared) {
    let mut r = BufReader::new(from);
    loop {
        let mut line = Vec::new();
        match (&mut r)
            .take(control::MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let msg = match GuestMessage::decode(line.trim_ascii_end()) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("sandbox: bad message from the guest: {e}");
                continue;
            }
        };
        match msg {
            GuestMessage::Started(pid) => shared.update(|st| st.container_pid = Some(pid)),
            GuestMessage::Exit(report) => {
                shared.update(|st| st.report = Some(report));
                let mut st = shared.lock();
                while !((st.stdout >= report.stdout || st.stdout_closed)
                    && (st.stderr >= report.stderr || st.stderr_closed))
                {
                    st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                drop(st);
                let _ = lock_ignore(&to).write_all(&control::encode(&HostMessage::Release {}));
            }
            GuestMessage::Error(e) => {
                shared.update(|st| st.guest_error = Some(e));
                let _ = lock_ignore(&to).write_all(&control::encode(&HostMessage::Release {}));
            }
        }
    }
}
