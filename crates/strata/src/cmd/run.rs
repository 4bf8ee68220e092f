//! `strata run`: run an image's command in a micro-VM, like `docker run`: the rootfs created
//! in the store and served without a host mount, the guest booted (KVM when it works, else TCG),
//! stdin/stdout/stderr wired to this process's, SIGINT/SIGTERM/SIGHUP/SIGQUIT forwarded to the
//! container (with `-t`: a terminal in the guest, ours in raw mode), and the container's exit
//! status as ours (128+N for signal N; 125 when strata itself failed; 126/127 from the guest
//! when the command cannot run or is not found).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use strata_runtime::spec::{container_spec, Overrides};
use strata_runtime::{
    Accel, ExitStatus, KernelSpec, Rootfs, Sandbox, SandboxConfig, Server, Stdio, VmSpec,
};
use strata_store::Store;

use crate::args::StoreArg;
use crate::error::{Error, Kind, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Guest kernel: 6.1 or 6.12 (Debian cloud kernels, fetched with apt and cached), or a path
    /// (unpacked kernel package or linux-image .deb).
    #[arg(long, default_value = "6.1")]
    kernel: KernelSpec,
    /// A guest initramfs from `strata initramfs` (default: built for the kernel from this
    /// binary, once, and cached).
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Remove the container's rootfs (upper and work dirs) when it ends.
    #[arg(long)]
    rm: bool,
    /// Set an environment variable: KEY=VALUE, or KEY to pass this process's value.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// User: name, name:group, uid or uid:gid (resolved in the container's /etc/passwd).
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Container (rootfs) id (default: generated).
    #[arg(long)]
    name: Option<String>,
    /// Hostname of the guest (default: the container id).
    #[arg(long)]
    hostname: Option<String>,
    /// Replace the image's Entrypoint ("" clears it).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Mount a tmpfs at DIR in the container (repeatable).
    #[arg(long, value_name = "DIR")]
    tmpfs: Vec<String>,
    /// Give the container a terminal (a pseudo-terminal in the guest, sized like ours): its
    /// output comes as one stream on stdout; our terminal is in raw mode meanwhile, so Ctrl-C
    /// and every other key go to the container's terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Keep stdin attached: it always is (accepted so that docker's `-it` works as typed).
    #[arg(short = 'i', long)]
    interactive: bool,
    /// qemu accelerator: auto (KVM when a guest really boots under it, else TCG), kvm, tcg.
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// Guest memory in MiB.
    #[arg(short = 'm', long, default_value_t = 512)]
    memory: u32,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Serve the rootfs through the `strata daemon` listening on this API socket (its store
    /// must be --store). Default: the daemon at /run/strata/api.sock if one answers there and
    /// --store is the default store, else a `strata serve` child.
    #[arg(long, value_name = "SOCK")]
    api: Option<PathBuf>,
    /// Give the guest the image's layers as the store's merged EROFS image on a read-only
    /// virtio-blk device (built on first use, `image import --erofs` builds it ahead) instead
    /// of over virtio-fs; the container's upper is still served (by the daemon or a child).
    #[arg(long)]
    erofs: bool,
    /// Have the server merge the container's upper dir and the image's layers itself and give
    /// the guest the result as its root, with no overlay in the guest: creates and lookups
    /// cost fewer round trips (docs/union.md). Directories the image has cannot be renamed
    /// (EXDEV, as overlayfs without redirect_dir: `mv` copies them).
    #[arg(long, conflicts_with = "erofs")]
    union: bool,
    /// Log every step of the guest's init on its console (`strata.debug=1`); with
    /// STRATA_VM_CONSOLE=1 the console is echoed on stderr.
    #[arg(long, hide = true)]
    guest_debug: bool,
    #[command(flatten)]
    store: StoreArg,
    /// The image (name or digest in the store).
    image: String,
    /// The command and its arguments (default: the image's Entrypoint and Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

fn run_failed(e: impl std::fmt::Display) -> Error {
    Error::new(Kind::RunFailed, e)
}

/// A container id nobody else picked: `run-` and 12 hex digits from the clock and pid.
fn generated_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mix = (nanos as u64) ^ (u64::from(std::process::id()) << 40);
    format!("run-{:012x}", mix & 0xffff_ffff_ffff)
}

pub fn run(a: Args) -> Result {
    let store = Store::find(&a.store.store)
        .map_err(run_failed)?
        .ok_or_else(|| {
            run_failed(format!(
                "image {} not found: there is no store at {} (strata image import first)",
                a.image,
                a.store.store.display()
            ))
        })?;
    let image = store.image(&a.image).map_err(run_failed)?;
    if image.config.is_none() && a.cmd.is_empty() {
        return Err(run_failed(format!(
            "image {} was imported by an older strata, which did not keep its config: give a \
             command after `--`, or import the image again",
            image.name
        )));
    }
    let id = a.name.clone().unwrap_or_else(generated_id);
    let overrides = Overrides {
        entrypoint: a.entrypoint.as_ref().map(|e| {
            if e.is_empty() {
                Vec::new()
            } else {
                vec![e.clone()]
            }
        }),
        cmd: a.cmd.clone(),
        env: a.env.clone(),
        cwd: a.workdir.clone(),
        user: a.user.clone(),
        hostname: Some(a.hostname.clone().unwrap_or_else(|| {
            let mut h = id.clone();
            h.truncate(strata_plan::container::MAX_HOSTNAME);
            h
        })),
        tmpfs: a.tmpfs.clone(),
    };
    let mut spec = container_spec(image.config.as_ref(), &overrides, |k| std::env::var(k).ok())
        .map_err(run_failed)?;
    if a.tty {
        spec.terminal = true;
        spec.console_size = strata_runtime::terminal::size(std::io::stdout().as_fd());
        if spec.env_get("TERM").is_none() {
            let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
            spec.env_set("TERM", &term);
        }
    }
    store.create_rootfs(&a.image, &id).map_err(run_failed)?;
    let status = boot(&a, &id, spec);
    if a.rm {
        remove_rootfs(&store, &id);
    }
    match status? {
        ExitStatus::VmFailed(msg) => Err(run_failed(msg)),
        st => Err(Error::new(Kind::Container((st.code() & 0xff) as u8), "")),
    }
}

/// `--rm`: the server is gone by now, but a daemon session may take a moment to let go of the
/// upper's lock after its VMM hung up.
fn remove_rootfs(store: &Store, id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match store.remove_rootfs(id, false) {
            Ok(()) => return,
            Err(strata_store::StoreError::RootfsInUse { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => {
                eprintln!("strata run: cannot remove rootfs {id}: {e}");
                return;
            }
        }
    }
}

/// Without `--api`: the `strata daemon` at the default API socket, if one answers there and
/// `--store` is the default store (the daemon's own).
fn running_daemon(a: &Args) -> Option<PathBuf> {
    use strata_serve::api::{Client, Request, Response, DEFAULT_API_SOCKET};
    if a.store.store != std::path::Path::new(strata_store::DEFAULT_STORE) {
        return None;
    }
    let api = PathBuf::from(DEFAULT_API_SOCKET);
    let mut c = Client::connect(&api).ok()?;
    match c.call(&Request::Status { id: None }) {
        Ok(Response::Status { .. }) => Some(api),
        _ => None,
    }
}

/// Boot the container and wait for it; the sandbox is gone when this returns.
fn boot(a: &Args, id: &str, spec: strata_runtime::ContainerSpec) -> Result<ExitStatus> {
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().ok();
    let vm = VmSpec {
        kernel: a.kernel.clone(),
        initramfs: a.initramfs.clone(),
        mem_mib: a.memory,
        vcpus: a.cpus,
        accel: a.accel,
        debug: a.guest_debug,
    };
    let rootfs = Rootfs::Store {
        store: a.store.store.clone(),
        id: id.to_string(),
    };
    let strata = std::env::current_exe()
        .map_err(|e| run_failed(format!("cannot find my own binary: {e}")))?;
    let config = |server: Server| {
        let mut cfg = SandboxConfig::new(id, vm.clone(), rootfs.clone(), spec.clone());
        cfg.strata = strata.clone();
        cfg.server = server;
        cfg.erofs = a.erofs;
        cfg.union = a.union;
        cfg.stdio = Stdio {
            stdin: dup(std::io::stdin().as_fd()),
            stdout: dup(std::io::stdout().as_fd()),
            stderr: dup(std::io::stderr().as_fd()),
        };
        cfg
    };
    let daemon = |api: PathBuf| Server::Daemon {
        api,
        socket_dir: None,
    };
    let sandbox = match (&a.api, running_daemon(a)) {
        (Some(api), _) => Sandbox::create(config(daemon(api.clone()))),
        (None, Some(api)) => match Sandbox::create(config(daemon(api.clone()))) {
            // A daemon with another store, or one that refuses: serve it ourselves.
            Err(strata_runtime::RuntimeError::Serve(e)) => {
                tracing::info!(
                    "strata daemon at {}: {e}; serving in-process",
                    api.display()
                );
                Sandbox::create(config(Server::Spawn))
            }
            other => other,
        },
        (None, None) => Sandbox::create(config(Server::Spawn)),
    };
    let sandbox = Arc::new(sandbox.map_err(run_failed)?);
    if let Some(why) = sandbox.accel_fallback() {
        eprintln!("strata run: KVM is not usable ({why}): running the VM under TCG emulation");
    }
    forward_signals(&sandbox);
    // Keys for the container's terminal, not ours: raw until the container is gone.
    let raw = a
        .tty
        .then(|| strata_runtime::terminal::RawMode::enter(std::io::stdin().as_fd()))
        .flatten();
    if a.tty {
        forward_resizes(&sandbox);
    }
    let status = sandbox.wait();
    drop(raw);
    drop(sandbox);
    Ok(status)
}

/// With `-t`: our terminal's new size (SIGWINCH) goes to the container's.
fn forward_resizes(sandbox: &Arc<Sandbox>) {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([signal_hook::consts::SIGWINCH])
    else {
        return;
    };
    let weak = Arc::downgrade(sandbox);
    let _ = std::thread::Builder::new()
        .name("resize".into())
        .spawn(move || {
            for _ in signals.forever() {
                let Some(s) = weak.upgrade() else { return };
                if let Some(size) = strata_runtime::terminal::size(std::io::stdout().as_fd()) {
                    let _ = s.resize(size);
                }
            }
        });
}

/// SIGINT, SIGTERM, SIGHUP and SIGQUIT go to the container; a third one kills the VM.
fn forward_signals(sandbox: &Arc<Sandbox>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
    else {
        return;
    };
    let weak = Arc::downgrade(sandbox);
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for (n, sig) in signals.forever().enumerate() {
                let Some(s) = weak.upgrade() else { return };
                if n >= 2 {
                    eprintln!("strata run: killing the VM");
                    s.kill();
                } else if s.signal(sig).is_err() {
                    s.kill();
                }
            }
        });
}
