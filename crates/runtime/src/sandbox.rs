//! One container in one VM: serve the rootfs, boot qemu (optionally paused), hand the guest
//! its [`ContainerSpec`], copy stdio, forward signals, report how the process ended, clean up.
//!
//! Host side of the transport ([`strata_plan::control`]): a `virtio-serial-pci` device with four
//! ports (`strata.control`, `strata.stdin`, `strata.stdout`, `strata.stderr`), each a qemu
//! socket chardev connecting to a unix socket this process listens on in
//! [`SandboxConfig::state_dir`]; the QMP monitor (resume of a paused VM) likewise. The serial
//! console stays init's log ([`Sandbox::console`]).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use strata_plan::container::ContainerSpec;

use crate::error::{Result, RuntimeError};
use crate::{Rootfs, Server, VmSpec};

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
}

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
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("id", &self.id).finish()
    }
}

impl Sandbox {
    /// Serve the rootfs, start qemu (stopped if [`SandboxConfig::paused`]) and give the guest
    /// its spec. Nothing is left behind on error.
    pub fn create(cfg: SandboxConfig) -> Result<Sandbox> {
        let _ = cfg;
        Err(RuntimeError::State(
            "Sandbox::create: not yet implemented".into(),
        ))
    }

    /// Let a paused VM run (QMP `cont`); nothing for one that runs already.
    pub fn start(&self) -> Result<()> {
        Err(RuntimeError::State(
            "Sandbox::start: not yet implemented".into(),
        ))
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The VMM's (qemu's) pid on the host.
    pub fn pid(&self) -> u32 {
        0
    }

    /// The container process's pid inside the guest, once it started.
    pub fn container_pid(&self) -> Option<u32> {
        None
    }

    /// The `-accel` qemu runs with (`kvm` or `tcg,thread=multi`).
    pub fn accel(&self) -> &str {
        ""
    }

    /// Send signal `sig` to the container process (forwarded over the control port).
    pub fn signal(&self, sig: i32) -> Result<()> {
        let _ = sig;
        Err(RuntimeError::State(
            "Sandbox::signal: not yet implemented".into(),
        ))
    }

    /// Kill the VMM now (SIGKILL): the container ends with [`ExitStatus::VmFailed`] unless it
    /// had already reported its exit.
    pub fn kill(&self) {}

    /// Wait until the container ended and the VMM is gone.
    pub fn wait(&self) -> ExitStatus {
        ExitStatus::VmFailed("not yet implemented".into())
    }

    /// [`wait`](Self::wait) for at most `timeout`; `None` if it still runs.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let _ = timeout;
        None
    }

    /// How it ended, if it has.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        None
    }

    /// The guest's serial console so far (init's log; the last 64 KiB).
    pub fn console(&self) -> String {
        String::new()
    }
}
