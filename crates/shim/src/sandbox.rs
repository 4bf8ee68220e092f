//! The real [`Backend`]: each task one strata micro-VM ([`strata_runtime::Sandbox`]).
//!
//! Create reads the bundle's `config.json` ([`strata_runtime::oci::from_oci`]: host bind
//! mounts are refused, a terminal is the guest's), turns the request's rootfs into directories
//! ([`crate::rootfs`]), opens the stdio FIFOs and starts the sandbox paused: `strata serve`
//! (or a `strata daemon` session) serves the directories, qemu waits with `-S` until Start.
//!
//! Configuration comes from the environment containerd gives its shims (documented in
//! docs/containerd.md): `STRATA_KERNEL` (`6.1`, `6.12` or a path; default 6.1),
//! `STRATA_INITRAMFS`, `STRATA_MEM_MIB` (512), `STRATA_VCPUS` (2), `STRATA_ACCEL`
//! (`auto|kvm|tcg`), `STRATA_DAEMON` (the API socket of a running `strata daemon`; default: a
//! `strata serve` child per container), `STRATA_BIN` (the `strata` binary; default: next to
//! the shim, else on `PATH`), `STRATA_SHIM_STATE_DIR` (sockets; default `/run/strata/shim`),
//! `STRATA_EROFS` (`1`: the snapshot's layers as one EROFS image on a read-only virtio-blk
//! device, built at the first Create of a layer chain; default `0`) and `STRATA_EROFS_CACHE`
//! (those images; default `/var/cache/strata/erofs-dirs`), `STRATA_UNION` (`1`: the server
//! merges the snapshot's layers and upper itself and the guest mounts no overlay, as
//! `strata run --union`; default `0`; not with `STRATA_EROFS=1`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};
use strata_runtime::oci_spec::runtime::Spec;
use strata_runtime::{ExitStatus, Rootfs, Sandbox, SandboxConfig, Server, Stdio, VmSpec};

use crate::error::ShimError;
use crate::rootfs::{self, RootfsSource};
use crate::state::{remove_path, BundleState};
use crate::task::{Backend, CreateParams, Vm, VmExit};

/// Default directory of the sandboxes' sockets (short: unix socket paths have 108 bytes).
pub const DEFAULT_STATE_DIR: &str = "/run/strata/shim";

/// Sandboxes from strata-runtime.
pub struct StrataBackend;

impl StrataBackend {
    /// The backend; its configuration is read at each Create, so a bad setting is that
    /// Create's error.
    pub fn new() -> StrataBackend {
        StrataBackend
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parse_env<T: std::str::FromStr>(name: &str) -> Result<Option<T>, ShimError>
where
    T::Err: std::fmt::Display,
{
    env(name)
        .map(|v| {
            v.parse::<T>()
                .map_err(|e| ShimError::Sandbox(format!("{name}={v:?}: {e}")))
        })
        .transpose()
}

/// The VM and server settings from the environment.
fn settings() -> Result<(VmSpec, Server, Option<PathBuf>), ShimError> {
    let mut vm = VmSpec::default();
    if let Some(k) = env("STRATA_KERNEL") {
        vm.kernel = k
            .parse()
            .map_err(|e| ShimError::Sandbox(format!("STRATA_KERNEL: {e}")))?;
    }
    if let Some(p) = env("STRATA_INITRAMFS") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(ShimError::Sandbox(format!(
                "STRATA_INITRAMFS: {} is not a file",
                p.display()
            )));
        }
        vm.initramfs = Some(p);
    }
    if let Some(m) = parse_env("STRATA_MEM_MIB")? {
        vm.mem_mib = m;
    }
    if let Some(c) = parse_env("STRATA_VCPUS")? {
        vm.vcpus = c;
    }
    if let Some(a) = parse_env("STRATA_ACCEL")? {
        vm.accel = a;
    }
    vm.debug = env("STRATA_GUEST_DEBUG").is_some_and(|v| v == "1");
    let server = match env("STRATA_DAEMON") {
        Some(api) => Server::Daemon {
            api: PathBuf::from(api),
            socket_dir: None,
        },
        None => Server::Spawn,
    };
    Ok((vm, server, env("STRATA_BIN").map(PathBuf::from)))
}

/// `STRATA_EROFS`/`STRATA_EROFS_CACHE`: the EROFS image cache, if the layers go on a block
/// device.
fn erofs_settings() -> Result<Option<PathBuf>, ShimError> {
    let on = match env("STRATA_EROFS").as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(v) => {
            return Err(ShimError::Sandbox(format!(
                "STRATA_EROFS={v:?}: use 1 (layers as an EROFS image) or 0"
            )))
        }
    };
    Ok(on.then(|| {
        env("STRATA_EROFS_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(strata_runtime::DEFAULT_EROFS_CACHE))
    }))
}

/// `STRATA_UNION`: whether the server merges layers and upper itself.
fn union_setting() -> Result<bool, ShimError> {
    match env("STRATA_UNION").as_deref() {
        None | Some("0") => Ok(false),
        Some("1") if env("STRATA_EROFS").as_deref() == Some("1") => Err(ShimError::Sandbox(
            "STRATA_UNION=1 and STRATA_EROFS=1 are alternatives: the layers are either merged \
             by the server or read from an EROFS image"
                .into(),
        )),
        Some("1") => Ok(true),
        Some(v) => Err(ShimError::Sandbox(format!(
            "STRATA_UNION={v:?}: use 1 (merged by the server, no guest overlay) or 0"
        ))),
    }
}

/// The sandbox's id and socket directory: short and unique per containerd namespace and task.
fn sandbox_names(namespace: &str, id: &str) -> (String, PathBuf) {
    let digest = Sha256::digest(format!("{namespace}/{id}").as_bytes());
    let short: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let name = format!("{namespace}.{id}");
    let name = if name.len() <= 128 {
        name
    } else {
        short.clone()
    };
    let dir = env("STRATA_SHIM_STATE_DIR").unwrap_or_else(|| DEFAULT_STATE_DIR.to_string());
    (name, PathBuf::from(dir).join(short))
}

/// Removes what a failed Create made, unless disarmed.
struct Undo(Vec<PathBuf>);

impl Drop for Undo {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            remove_path(p);
        }
    }
}

impl Backend for StrataBackend {
    fn create(&self, p: &CreateParams) -> Result<Arc<dyn Vm>, ShimError> {
        let bundle = Path::new(&p.bundle);
        let config = bundle.join("config.json");
        let oci = Spec::load(&config)
            .map_err(|e| ShimError::Spec(format!("{}: {e}", config.display())))?;
        let spec =
            strata_runtime::oci::from_oci(&oci).map_err(|e| ShimError::Spec(e.to_string()))?;
        let root_path = oci
            .root()
            .as_ref()
            .map(|r| r.path().to_string_lossy().into_owned());
        let source = rootfs::parse(&p.rootfs, bundle, root_path.as_deref())?;
        let (vm, server, strata) = settings()?;
        let mut erofs = erofs_settings()?;
        let union = union_setting()?;

        let mut undo = Undo(Vec::new());
        let rootfs = match source {
            RootfsSource::Overlay {
                lowers,
                upper,
                work,
            } => Rootfs::Dirs {
                lowers,
                upper,
                work,
            },
            RootfsSource::Dir(dir) => {
                // A prepared directory may still change: an image keyed by its identity could
                // go stale, so it is served as it is.
                if erofs.take().is_some() {
                    log::warn!(
                        "task {}: STRATA_EROFS applies to snapshotter layers, not to a rootfs \
                         directory ({}); serving it over virtio-fs",
                        p.id,
                        dir.display()
                    );
                }
                // The prepared directory stays read-only; the container writes in the bundle.
                let upper = bundle.join("strata-upper");
                let work = bundle.join("strata-work");
                for d in [&upper, &work] {
                    std::fs::create_dir(d)
                        .map_err(|e| ShimError::io(format!("create {}", d.display()), e))?;
                    undo.0.push(d.clone());
                }
                Rootfs::Dirs {
                    lowers: vec![dir],
                    upper,
                    work,
                }
            }
        };
        let slot: StdinSlot = Arc::new(Mutex::new(SandboxSlot::Pending));
        let (stdio, stdin) = open_stdio(p, slot.clone())?;
        // Whatever happens below, the stdin thread must not wait for a sandbox that never was.
        let fail_slot = FailSlot(slot.clone());
        let (name, state_dir) = sandbox_names(&p.namespace, &p.id);
        if let Some(parent) = state_dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ShimError::io(format!("create {}", parent.display()), e))?;
        }
        let mut cfg = SandboxConfig::new(&name, vm, rootfs, spec);
        cfg.server = server;
        if let Some(s) = strata {
            cfg.strata = s;
        }
        cfg.state_dir = state_dir.clone();
        cfg.stdio = stdio;
        if let Some(cache) = erofs {
            cfg.erofs = true;
            cfg.erofs_cache = cache;
        }
        cfg.union = union;
        cfg.paused = true;
        let mut state = BundleState::new(&p.id);
        state.created = undo.0.clone();
        state.created.push(state_dir);
        // Written before the VMM exists: a shim killed during Create still leaves a state the
        // delete action can clean up from.
        state.save(bundle)?;
        undo.0.push(bundle.join(crate::state::STATE_FILE));
        let sandbox =
            Arc::new(Sandbox::create(cfg).map_err(|e| ShimError::Sandbox(e.to_string()))?);
        *slot.lock().unwrap_or_else(|e| e.into_inner()) =
            SandboxSlot::Ready(Arc::downgrade(&sandbox));
        drop(fail_slot);
        state.set_vmm(sandbox.pid());
        state.save(bundle)?;
        log::info!(
            "task {}: sandbox {} (qemu pid {}, -accel {})",
            p.id,
            name,
            sandbox.pid(),
            sandbox.accel()
        );
        let created = std::mem::take(&mut undo.0);
        Ok(Arc::new(StrataVm {
            pid: sandbox.pid(),
            sandbox: Mutex::new(Some(sandbox)),
            stdin,
            created,
        }))
    }
}

/// What the stdin thread knows of the sandbox its data goes to.
enum SandboxSlot {
    /// Being created.
    Pending,
    /// Created.
    Ready(Weak<Sandbox>),
    /// Create failed.
    Failed,
}

type StdinSlot = Arc<Mutex<SandboxSlot>>;

/// Marks the slot failed if Create returns before filling it.
struct FailSlot(StdinSlot);

impl Drop for FailSlot {
    fn drop(&mut self) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*s, SandboxSlot::Pending) {
            *s = SandboxSlot::Failed;
        }
    }
}

/// Blocks until the container process runs (its stdin port is open in the guest) or the
/// sandbox is gone: qemu drops what its socket chardev holds when the host side closes before
/// the guest opened the port, so stdin's EOF must not reach qemu earlier.
fn wait_container_started(slot: &StdinSlot) {
    loop {
        let s = match &*slot.lock().unwrap_or_else(|e| e.into_inner()) {
            SandboxSlot::Pending => None,
            SandboxSlot::Ready(w) => match w.upgrade() {
                Some(s) => Some(s),
                None => return,
            },
            SandboxSlot::Failed => return,
        };
        if let Some(s) = s {
            if s.container_pid().is_some() || s.try_wait().is_some() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The container's stdin on the host side: a pipe whose read end the sandbox copies to the
/// guest, fed from the request's FIFO by a thread.
struct StdinPipe {
    w: Mutex<Option<std::io::PipeWriter>>,
    /// The FIFO is open (the client opened its end).
    opened: AtomicBool,
    slot: StdinSlot,
}

impl StdinPipe {
    /// Ends the container's stdin, once the container runs ([`wait_container_started`]).
    fn close_when_started(&self) {
        wait_container_started(&self.slot);
        drop(self.w.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    fn copy_from(&self, path: &str) {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("stdin {path}: {e}");
                return;
            }
        };
        self.opened.store(true, Ordering::SeqCst);
        let mut buf = [0u8; 16384];
        loop {
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let mut w = self.w.lock().unwrap_or_else(|e| e.into_inner());
                    let written = w.as_mut().map(|w| w.write_all(&buf[..n]).is_ok());
                    if written != Some(true) {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("stdin {path}: {e}");
                    return;
                }
            }
        }
    }
}

/// The request's FIFOs as the sandbox's stdio.
///
/// stdout and stderr are opened read-write: that never blocks and never fails for want of a
/// reader (`ctr run -d` leaves none), and the reader still sees EOF once the sandbox closes its
/// end. stdin goes through a pipe: a thread opens the FIFO (blocking until the client opens its
/// end) and copies; the container sees EOF when the client closes the FIFO, or at CloseIO if
/// the client never opened it (ctr with an empty stdin closes before the rendezvous).
fn open_stdio(
    p: &CreateParams,
    slot: StdinSlot,
) -> Result<(Stdio, Option<Arc<StdinPipe>>), ShimError> {
    let out = |path: &str| -> Result<Option<OwnedFd>, ShimError> {
        if path.is_empty() {
            return Ok(None);
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| ShimError::Stdio {
                path: path.to_string(),
                source,
            })?;
        Ok(Some(OwnedFd::from(f)))
    };
    let stdout = out(&p.stdout)?;
    let stderr = out(&p.stderr)?;
    let (stdin, pipe) = if p.stdin.is_empty() {
        (None, None)
    } else {
        let (r, w) = std::io::pipe().map_err(|source| ShimError::Stdio {
            path: p.stdin.clone(),
            source,
        })?;
        let pipe = Arc::new(StdinPipe {
            w: Mutex::new(Some(w)),
            opened: AtomicBool::new(false),
            slot,
        });
        let path = p.stdin.clone();
        let pp = pipe.clone();
        std::thread::spawn(move || {
            pp.copy_from(&path);
            pp.close_when_started();
        });
        (Some(OwnedFd::from(r)), Some(pipe))
    };
    Ok((
        Stdio {
            stdin,
            stdout,
            stderr,
        },
        pipe,
    ))
}

/// One task's sandbox.
struct StrataVm {
    pid: u32,
    /// Taken (and dropped: VMM reaped, serving stopped, sockets removed) by [`Vm::destroy`].
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    /// The bundle's upper/work dirs (prepared-dir rootfs) and the state file.
    created: Vec<PathBuf>,
    stdin: Option<Arc<StdinPipe>>,
}

impl StrataVm {
    fn get(&self) -> Option<Arc<Sandbox>> {
        self.sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Vm for StrataVm {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn start(&self) -> Result<(), ShimError> {
        let s = self
            .get()
            .ok_or_else(|| ShimError::Sandbox("already deleted".into()))?;
        s.start().map_err(|e| ShimError::Sandbox(e.to_string()))
    }

    fn close_stdin(&self) {
        if let Some(p) = &self.stdin {
            if !p.opened.load(Ordering::SeqCst) {
                let p = p.clone();
                std::thread::spawn(move || p.close_when_started());
            }
        }
    }

    fn signal(&self, sig: i32) -> Result<(), ShimError> {
        let Some(s) = self.get() else {
            return Ok(());
        };
        if sig == libc::SIGKILL {
            // The container's SIGKILL is the VM's end.
            s.kill();
            return Ok(());
        }
        s.signal(sig).map_err(|e| ShimError::Sandbox(e.to_string()))
    }

    fn resize(&self, rows: u16, cols: u16) -> Result<(), ShimError> {
        let Some(s) = self.get() else {
            return Ok(());
        };
        s.resize(strata_runtime::ConsoleSize { rows, cols })
            .map_err(|e| ShimError::Sandbox(e.to_string()))
    }

    fn wait(&self) -> VmExit {
        let Some(s) = self.get() else {
            return VmExit::Failed("deleted".into());
        };
        match s.wait() {
            ExitStatus::Code(c) => VmExit::Code(c as u32),
            ExitStatus::Signal(n) => VmExit::Signal(n),
            ExitStatus::VmFailed(why) => VmExit::Failed(why),
        }
    }

    fn destroy(&self) {
        let s = self
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(s) = s {
            s.kill();
            drop(s);
        }
        for p in self.created.iter().rev() {
            remove_path(p);
        }
    }
}
