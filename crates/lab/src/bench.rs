//! `strata bench create`: the host-side cost of one container start and end, per strategy.
//!
//! - [`Strategy::OverlayMount`]: what Kata-style runtimes do: mkdir upper/work/merged and mount an
//!   overlay of two small lower dirs; end: umount and remove the dirs.
//! - [`Strategy::TmpfsMount`]: the control, the smallest superblock: mkdir and mount a tmpfs; end:
//!   umount and rmdir.
//! - [`Strategy::Strata`]: strata's start without a VM: mkdir upper/work and everything
//!   `strata serve` does up to listening on its socket ([`strata_serve::prepare`], without the
//!   seccomp filter, which would forbid the other strategies' mounts); end: drop it all and
//!   remove the dirs.
//! - [`Strategy::StrataDaemon`]: the same start served by one long-lived `strata daemon` (spawned
//!   once, before the clock): mkdir upper/work and one `start` request over its API socket,
//!   answered once the session's socket listens; end: one `stop` request and remove the dirs.
//!   No process and no thread is created per start.
//!
//! Only syscalls, no external command (but `strata daemon`, the same binary): it runs from a
//! busybox rootfs inside a guest too.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};
use strata_serve::{CachePolicy, Prepared, ServeConfig, ServeError};

/// Untimed iterations run per strategy before the measured ones.
pub const WARMUP: usize = 5;

/// One way of giving a container its rootfs on start, and taking it away on end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// A host overlay mount per container (Kata-style runtimes).
    OverlayMount,
    /// A host tmpfs mount per container: the cheapest superblock, as a control.
    TmpfsMount,
    /// `strata serve` up to listening on its socket: no host mount.
    Strata,
    /// A session of a running `strata daemon`, over its API: no mount, no process.
    StrataDaemon,
}

impl Strategy {
    /// Every strategy, in the default order.
    pub const ALL: [Strategy; 4] = [
        Strategy::OverlayMount,
        Strategy::TmpfsMount,
        Strategy::Strata,
        Strategy::StrataDaemon,
    ];

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::OverlayMount => "overlay-mount",
            Strategy::TmpfsMount => "tmpfs-mount",
            Strategy::Strata => "strata",
            Strategy::StrataDaemon => "strata-daemon",
        }
    }
}

/// Which half of a container's life a sample measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Container start: make the rootfs available.
    Start,
    /// Container end: take it away and remove what start created.
    End,
}

impl Phase {
    /// `"start"` or `"end"`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::End => "end",
        }
    }
}

/// The distribution of one phase of one strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseStats {
    /// The strategy's name ([`Strategy::name`]).
    pub name: String,
    /// The phase measured.
    pub phase: Phase,
    /// Number of samples.
    pub n: usize,
    /// Median, nearest rank, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, nearest rank, in milliseconds.
    pub p99_ms: f64,
    /// 99.9th percentile, nearest rank, in milliseconds.
    pub p999_ms: f64,
    /// Slowest sample, in milliseconds.
    pub max_ms: f64,
    /// Mean, in milliseconds (1000 / mean_ms is the rate one client gets, in starts/s).
    #[serde(default)]
    pub mean_ms: f64,
    /// Every sample in milliseconds, ascending (for CDF plots); only serialized when kept
    /// (`strata bench create --samples`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples_ms: Vec<f64>,
}

impl PhaseStats {
    /// Column titles matching [`PhaseStats::row`].
    pub fn header() -> String {
        format!(
            "{:<14} {:<5} {:>7} {:>10} {:>10} {:>10} {:>10}",
            "strategy", "phase", "n", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
        )
    }

    /// One table row: strategy, phase, n and the percentiles in ms.
    pub fn row(&self) -> String {
        format!(
            "{:<14} {:<5} {:>7} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
            self.name,
            self.phase.name(),
            self.n,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms
        )
    }

    /// Summarize `samples` (any order; sorted in place). `None` when there are none.
    pub fn from_samples(name: &str, phase: Phase, samples: &mut [Duration]) -> Option<PhaseStats> {
        samples.sort_unstable();
        let ms = |per_mille| percentile(samples, per_mille).map(|d| d.as_secs_f64() * 1e3);
        Some(PhaseStats {
            name: name.to_owned(),
            phase,
            n: samples.len(),
            p50_ms: ms(500)?,
            p99_ms: ms(990)?,
            p999_ms: ms(999)?,
            max_ms: samples.last()?.as_secs_f64() * 1e3,
            mean_ms: samples.iter().map(|d| d.as_secs_f64()).sum::<f64>() * 1e3
                / samples.len() as f64,
            samples_ms: samples.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
        })
    }
}

/// Nearest-rank percentile of `sorted` (ascending): the smallest sample such that at least
/// `per_mille`/1000 of the samples are ≤ it, i.e. `sorted[ceil(p·n) − 1]`. `per_mille` is the
/// percentile in thousandths (500 = median, 999 = p99.9) and is clamped to 1..=1000.
/// `None` for no samples.
pub fn percentile(sorted: &[Duration], per_mille: u32) -> Option<Duration> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let p = per_mille.clamp(1, 1000) as usize;
    let rank = (p * n).div_ceil(1000).max(1);
    Some(sorted[rank - 1])
}

/// The result of a run: for each strategy, its start then its end phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// One entry per strategy and phase, in run order.
    pub strategies: Vec<PhaseStats>,
}

impl BenchReport {
    /// The report as one JSON object: `{"strategies": [{"name", "phase", "n", "p50_ms", ...}]}`.
    pub fn to_json(&self) -> String {
        // Strings and numbers cannot fail to serialize.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The same report without the raw samples (summary only).
    pub fn without_samples(mut self) -> Self {
        for s in &mut self.strategies {
            s.samples_ms.clear();
        }
        self
    }

    /// The report as a text table, one row per strategy and phase, times in ms.
    pub fn table(&self) -> String {
        let mut out = PhaseStats::header();
        out.push('\n');
        for s in &self.strategies {
            out.push_str(&s.row());
            out.push('\n');
        }
        for s in self.strategies.iter().filter(|s| s.phase == Phase::Start) {
            if s.mean_ms > 0.0 {
                out.push_str(&format!(
                    "{}: {:.0} starts/s from one client (mean start {:.3} ms)\n",
                    s.name,
                    1e3 / s.mean_ms,
                    s.mean_ms
                ));
            }
        }
        out
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Where everything is created (created if missing, left in place afterwards).
    pub dir: PathBuf,
    /// Timed iterations per strategy.
    pub n: usize,
    /// Strategies, in run order.
    pub strategies: Vec<Strategy>,
    /// Untimed iterations per strategy before the timed ones (normally [`WARMUP`]).
    pub warmup: usize,
    /// Untimed pause after each iteration (spreads a run over a window of time, as the lab
    /// does to sample while reclaim is going on). Zero by default.
    pub interval: Duration,
    /// Stop early, after at least one timed iteration, once this file exists: `n` is then the
    /// maximum. Lets the lab run a bench exactly as long as its pressure phase lasts.
    pub until: Option<PathBuf>,
    /// The `strata` binary to run `strata daemon` from (the `strata-daemon` strategy).
    pub strata_bin: Option<PathBuf>,
}

/// Where a run is, for a progress line.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The strategy running.
    pub strategy: Strategy,
    /// Iterations done, warm-up included.
    pub done: usize,
    /// Iterations to do, warm-up included.
    pub total: usize,
}

/// Why a run failed. Everything it created has been removed, unless the message says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A mount-family syscall failed.
    #[error("{what} on {path:?} failed: {errno}{hint}")]
    Mount {
        /// What was done (e.g. "mount overlay", "umount").
        what: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The error.
        errno: Errno,
        /// What to do about it.
        hint: &'static str,
    },
    /// A filesystem operation failed.
    #[error("{what} {path:?}: {source}{hint}")]
    Io {
        /// What was done (e.g. "cannot create directory").
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The `strata` strategy's start failed.
    #[error("strata start (strata serve's set-up, socket {socket:?}) failed: {source}")]
    Serve {
        /// The socket it was to listen on.
        socket: PathBuf,
        /// The error.
        source: ServeError,
    },
    /// The `strata-daemon` strategy's daemon refused or failed.
    #[error("strata daemon: {0}")]
    Daemon(String),
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// Stopped by SIGINT/SIGTERM.
    #[error("interrupted; everything created in the bench directory was removed")]
    Interrupted,
}

impl BenchError {
    /// Exit code for the CLI: 130 when interrupted, 2 for a configuration that cannot work, 1 else.
    pub fn exit_code(&self) -> u8 {
        match self {
            BenchError::Interrupted => 130,
            BenchError::Config(_) => 2,
            _ => 1,
        }
    }
}

fn mount_hint(fstype: &str, errno: Errno) -> &'static str {
    match errno {
        Errno::EPERM | Errno::EACCES => {
            " — run as root (mounting needs CAP_SYS_ADMIN in the initial user namespace)"
        }
        Errno::ENODEV if fstype == "overlay" => {
            " — this kernel has no overlay filesystem: load it (modprobe overlay / insmod overlay.ko)"
        }
        Errno::ENODEV => " — this kernel lacks the filesystem type",
        Errno::EINVAL if fstype == "overlay" => {
            " — the directory's filesystem cannot be an overlay upper (e.g. it is itself an overlay or lacks xattrs): pick a --dir on ext4, xfs, btrfs or tmpfs; dmesg says why"
        }
        _ => "",
    }
}

fn io_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AlreadyExists => {
            " — left over from an interrupted run? remove it (umount it first if it is a mount point) or pick an empty --dir"
        }
        io::ErrorKind::PermissionDenied => " — run as root, or pick a --dir you can write",
        _ => "",
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BenchError + 'a {
    move |source| {
        let hint = io_hint(&source);
        BenchError::Io {
            what,
            path: path.to_owned(),
            source,
            hint,
        }
    }
}

/// Set a flag on SIGINT and SIGTERM (a second one exits at once with status 130), so that a run
/// can stop between iterations and remove what it created. Pass the flag to [`run`].
pub fn stop_on_signals() -> io::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// What one iteration has created and not yet removed, so that it can be taken down in order
/// ([`Live::end`], timed) or after a failure ([`Live::abandon`], best effort).
#[derive(Default)]
struct Live {
    /// Directories in creation order; `true`: remove with its contents (upper, work).
    dirs: Vec<(PathBuf, bool)>,
    /// A mount on the last directory.
    mounted: Option<PathBuf>,
    /// A prepared strata daemon (its drop removes the socket and lock file).
    server: Option<Prepared>,
    /// A session started in the `strata daemon` (stopped over the API).
    session: Option<String>,
}

impl Live {
    fn mkdir(&mut self, path: &Path, tree: bool) -> Result<(), BenchError> {
        std::fs::create_dir(path).map_err(io_err("cannot create directory", path))?;
        self.dirs.push((path.to_owned(), tree));
        Ok(())
    }

    fn end(&mut self, daemon: Option<&mut Daemon>) -> Result<(), BenchError> {
        drop(self.server.take());
        if let (Some(id), Some(d)) = (self.session.take(), daemon) {
            d.stop(&id)?;
        }
        if let Some(m) = &self.mounted {
            umount2(m, MntFlags::empty()).map_err(|errno| BenchError::Mount {
                what: "umount",
                path: m.clone(),
                errno,
                hint: match errno {
                    Errno::EBUSY => " — something uses the mount (a shell's cwd?)",
                    e => mount_hint("", e),
                },
            })?;
            self.mounted = None;
        }
        while let Some((dir, tree)) = self.dirs.last() {
            if *tree {
                std::fs::remove_dir_all(dir).map_err(io_err("cannot remove", dir))?;
            } else {
                std::fs::remove_dir(dir).map_err(io_err("cannot remove", dir))?;
            }
            self.dirs.pop();
        }
        Ok(())
    }

    /// Undo what is left, ignoring errors; a mount point that stays mounted is not descended.
    fn abandon(mut self, daemon: Option<&mut Daemon>) {
        drop(self.server.take());
        if let (Some(id), Some(d)) = (self.session.take(), daemon) {
            let _ = d.stop(&id);
        }
        if let Some(m) = self.mounted.take() {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
        for (dir, tree) in self.dirs.drain(..).rev() {
            let _ = if tree {
                std::fs::remove_dir_all(&dir)
            } else {
                std::fs::remove_dir(&dir)
            };
        }
    }
}

/// The paths of iteration `i`, computed before the clock starts.
struct Paths {
    upper: PathBuf,
    work: PathBuf,
    merged: PathBuf,
    tmpfs: PathBuf,
    socket: PathBuf,
    overlay_opts: String,
}

impl Paths {
    fn new(dir: &Path, lowerdir: &str, i: usize) -> Paths {
        let upper = dir.join(format!("upper_{i}"));
        let work = dir.join(format!("work_{i}"));
        let overlay_opts = format!(
            "lowerdir={lowerdir},upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        Paths {
            merged: dir.join(format!("merged_{i}")),
            tmpfs: dir.join(format!("tmpfs_{i}")),
            socket: dir.join(format!("s_{i}.sock")),
            upper,
            work,
            overlay_opts,
        }
    }
}

/// The two lower dirs shared by all iterations: `lower0` (topmost) and `lower1`.
struct Lowers {
    dirs: Vec<PathBuf>,
    created: Vec<PathBuf>,
}

impl Lowers {
    fn create(dir: &Path) -> Result<Lowers, BenchError> {
        let mut l = Lowers {
            dirs: vec![dir.join("lower0"), dir.join("lower1")],
            created: Vec::new(),
        };
        let files: [&[(&str, &str)]; 2] = [
            &[("etc/hostname", "bench\n"), ("bin/sh", "#!/bin/true\n")],
            &[("etc/os-release", "ID=bench\n"), ("usr/lib/lib.so", "x\n")],
        ];
        for (d, files) in l.dirs.clone().iter().zip(files) {
            std::fs::create_dir(d).map_err(io_err("cannot create directory", d))?;
            l.created.push(d.clone());
            for (name, body) in files {
                let p = d.join(name);
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(io_err("cannot create directory", parent))?;
                }
                std::fs::write(&p, body).map_err(io_err("cannot write", &p))?;
            }
        }
        Ok(l)
    }

    fn remove(mut self) -> Result<(), BenchError> {
        while let Some(d) = self.created.pop() {
            std::fs::remove_dir_all(&d).map_err(io_err("cannot remove", &d))?;
        }
        Ok(())
    }
}

impl Drop for Lowers {
    fn drop(&mut self) {
        for d in self.created.drain(..) {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn start(
    strategy: Strategy,
    p: &Paths,
    lowers: &[PathBuf],
    live: &mut Live,
    daemon: Option<&mut Daemon>,
) -> Result<(), BenchError> {
    match strategy {
        Strategy::OverlayMount => {
            live.mkdir(&p.upper, true)?;
            live.mkdir(&p.work, true)?;
            live.mkdir(&p.merged, false)?;
            mount(
                Some("overlay"),
                &p.merged,
                Some("overlay"),
                MsFlags::empty(),
                Some(p.overlay_opts.as_str()),
            )
            .map_err(|errno| BenchError::Mount {
                what: "mount overlay",
                path: p.merged.clone(),
                errno,
                hint: mount_hint("overlay", errno),
            })?;
            live.mounted = Some(p.merged.clone());
        }
        Strategy::TmpfsMount => {
            live.mkdir(&p.tmpfs, false)?;
            mount(
                Some("tmpfs"),
                &p.tmpfs,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|errno| BenchError::Mount {
                what: "mount tmpfs",
                path: p.tmpfs.clone(),
                errno,
                hint: mount_hint("tmpfs", errno),
            })?;
            live.mounted = Some(p.tmpfs.clone());
        }
        Strategy::Strata => {
            live.mkdir(&p.upper, true)?;
            live.mkdir(&p.work, true)?;
            let cfg = ServeConfig {
                lowers: lowers.to_vec(),
                upper: p.upper.clone(),
                work: p.work.clone(),
                socket: p.socket.clone(),
                socket_fd: None,
                socket_perms: Default::default(),
                tag: strata_plan::DEFAULT_TAG.to_owned(),
                limits: strata_serve::Limits::default(),
                lower_device: None,
                lower_block: None,
                union: false,
            };
            let server = strata_serve::prepare(&cfg, CachePolicy::default()).map_err(|source| {
                BenchError::Serve {
                    socket: p.socket.clone(),
                    source,
                }
            })?;
            live.server = Some(server);
        }
        Strategy::StrataDaemon => {
            let d = daemon.ok_or_else(|| BenchError::Daemon("not running".into()))?;
            live.mkdir(&p.upper, true)?;
            live.mkdir(&p.work, true)?;
            let id = p
                .socket
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            d.start(&id, p, lowers)?;
            live.session = Some(id);
        }
    }
    Ok(())
}

/// The `strata daemon` the `strata-daemon` strategy talks to: spawned before any clock runs,
/// stopped (SIGTERM) when the run ends, its API socket in the bench directory.
struct Daemon {
    child: std::process::Child,
    client: strata_serve::api::Client,
    api: PathBuf,
}

impl Daemon {
    fn spawn(cfg: &BenchConfig, dir: &Path) -> Result<Daemon, BenchError> {
        use std::process::{Command, Stdio};
        let bin = cfg.strata_bin.clone().ok_or_else(|| {
            BenchError::Config(
                "the strata-daemon strategy runs `strata daemon`: no strata binary given".into(),
            )
        })?;
        let api = dir.join("api.sock");
        let mut cmd = Command::new(&bin);
        cmd.arg("daemon")
            .arg("--api")
            .arg(&api)
            .arg("--allow")
            .arg(dir)
            // Errors only: one info line per session start would be written for nothing, and
            // the open-files warning (default session limits above this host's hard limit)
            // is not what a start benchmark is about.
            .env("STRATA_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        strata_vm::cmd::kill_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| BenchError::Daemon(format!("cannot run {}: {e}", bin.display())))?;
        let t0 = Instant::now();
        let client = loop {
            match strata_serve::api::Client::connect(&api) {
                Ok(c) => break c,
                Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                    if let Ok(Some(st)) = child.try_wait() {
                        return Err(BenchError::Daemon(format!(
                            "exited ({st}) before listening on {}",
                            api.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(BenchError::Daemon(e.to_string()));
                }
            }
        };
        Ok(Daemon { child, client, api })
    }

    fn call(&mut self, req: strata_serve::api::Request) -> Result<(), BenchError> {
        use strata_serve::api::Response;
        match self.client.call(&req) {
            Ok(Response::Error { message, .. }) => Err(BenchError::Daemon(message)),
            Ok(_) => Ok(()),
            Err(e) => Err(BenchError::Daemon(e.to_string())),
        }
    }

    fn start(&mut self, id: &str, p: &Paths, lowers: &[PathBuf]) -> Result<(), BenchError> {
        self.call(strata_serve::api::Request::Start {
            id: id.to_owned(),
            socket: p.socket.clone(),
            dirs: Some(strata_serve::api::Dirs {
                lowers: lowers.to_vec(),
                upper: p.upper.clone(),
                work: p.work.clone(),
            }),
            tag: None,
            layer_device: None,
            lower_block: None,
            union: false,
        })
    }

    fn stop(&mut self, id: &str) -> Result<(), BenchError> {
        self.call(strata_serve::api::Request::Stop { id: id.to_owned() })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let t0 = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.api);
        let mut lock = self.api.clone().into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }
}

/// Run the benchmark: for each strategy, `cfg.warmup` untimed then `cfg.n` timed start/end
/// iterations, one after the other. Only the start and end work is inside the clock.
///
/// Everything created in `cfg.dir` is removed on success, on error and when `stop` is set (checked
/// between iterations); `cfg.dir` is created if missing and left in place. Mount strategies need
/// root; `strata` does not.
pub fn run(
    cfg: &BenchConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(Progress),
) -> Result<BenchReport, BenchError> {
    if cfg.n == 0 {
        return Err(BenchError::Config("--n must be at least 1".into()));
    }
    if cfg.strategies.is_empty() {
        return Err(BenchError::Config("no strategy to run".into()));
    }
    std::fs::create_dir_all(&cfg.dir).map_err(io_err("cannot create directory", &cfg.dir))?;
    let dir = std::fs::canonicalize(&cfg.dir).map_err(io_err("cannot resolve", &cfg.dir))?;
    if !matches!(dir.to_str(), Some(t) if !t.contains([',', ':', '\\'])) {
        return Err(BenchError::Config(format!(
            "--dir {dir:?}: overlay mount options cannot name it (a ',', ':' or '\\' or non-UTF-8 in the path): pick another directory"
        )));
    }
    let longest = dir.join(format!("s_{}.sock.lock", cfg.n + cfg.warmup));
    if longest.as_os_str().len() > 100 {
        return Err(BenchError::Config(format!(
            "--dir {dir:?} is too long for unix socket paths (at most ~90 bytes): pick a shorter one"
        )));
    }
    let mut daemon = if cfg.strategies.contains(&Strategy::StrataDaemon) {
        Some(Daemon::spawn(cfg, &dir)?)
    } else {
        None
    };
    let lowers = Lowers::create(&dir)?;
    let lowerdir = lowers
        .dirs
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");

    let mut report = BenchReport {
        strategies: Vec::new(),
    };
    let total = cfg.warmup + cfg.n;
    for &strategy in &cfg.strategies {
        let mut starts = Vec::with_capacity(cfg.n);
        let mut ends = Vec::with_capacity(cfg.n);
        for i in 0..total {
            if stop.load(Ordering::Relaxed) {
                return Err(BenchError::Interrupted);
            }
            let paths = Paths::new(&dir, &lowerdir, i);
            let mut live = Live::default();
            if let Some(d) = &daemon {
                // Whoever reniced this bench (the lab does, after starting it) meant its daemon
                // too: a daemon at a lower priority would measure starvation, not strata.
                let _ = crate::sys::share_nice_with(d.child.id());
            }

            let t0 = Instant::now();
            let started = start(strategy, &paths, &lowers.dirs, &mut live, daemon.as_mut());
            let t_start = t0.elapsed();
            if let Err(e) = started {
                live.abandon(daemon.as_mut());
                return Err(e);
            }

            let t1 = Instant::now();
            let ended = live.end(daemon.as_mut());
            let t_end = t1.elapsed();
            if let Err(e) = ended {
                live.abandon(daemon.as_mut());
                return Err(e);
            }

            if i >= cfg.warmup {
                starts.push(t_start);
                ends.push(t_end);
            }
            progress(Progress {
                strategy,
                done: i + 1,
                total,
            });
            if i >= cfg.warmup && cfg.until.as_deref().is_some_and(Path::exists) {
                break;
            }
            if !cfg.interval.is_zero() {
                std::thread::sleep(cfg.interval);
            }
        }
        for (phase, samples) in [(Phase::Start, &mut starts), (Phase::End, &mut ends)] {
            report
                .strategies
                .extend(PhaseStats::from_samples(strategy.name(), phase, samples));
        }
    }
    drop(daemon);
    lowers.remove()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 500), None);
        let one = ms(&[7]);
        for p in [1, 500, 990, 999, 1000] {
            assert_eq!(percentile(&one, p), Some(Duration::from_millis(7)));
        }
        // 1..=100: p50 is the 50th value, p99 the 99th, p99.9 and p100 the 100th.
        let hundred = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&hundred, 500), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&hundred, 990), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&hundred, 999), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&hundred, 1000), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&hundred, 1), Some(Duration::from_millis(1)));
        // Out-of-range percentiles clamp.
        assert_eq!(percentile(&hundred, 0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&hundred, 5000), Some(Duration::from_millis(100)));
        // Odd and small counts: ceil(p·n).
        let five = ms(&[10, 20, 30, 40, 50]);
        assert_eq!(percentile(&five, 500), Some(Duration::from_millis(30)));
        assert_eq!(percentile(&five, 990), Some(Duration::from_millis(50)));
        let four = ms(&[10, 20, 30, 40]);
        assert_eq!(percentile(&four, 500), Some(Duration::from_millis(20)));
        // 2000 samples: p99 is the 1980th, p99.9 the 1998th.
        let many = ms(&(1..=2000).collect::<Vec<_>>());
        assert_eq!(percentile(&many, 990), Some(Duration::from_millis(1980)));
        assert_eq!(percentile(&many, 999), Some(Duration::from_millis(1998)));
    }

    #[test]
    fn stats_sort_and_summarize() {
        let mut s = ms(&[5, 1, 4, 2, 3]);
        let st = PhaseStats::from_samples("x", Phase::End, &mut s).unwrap();
        assert_eq!(st.n, 5);
        assert_eq!(st.p50_ms, 3.0);
        assert_eq!(st.p99_ms, 5.0);
        assert_eq!(st.p999_ms, 5.0);
        assert_eq!(st.max_ms, 5.0);
        assert!(PhaseStats::from_samples("x", Phase::Start, &mut []).is_none());
        let r = BenchReport {
            strategies: vec![st],
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["strategies"][0]["phase"], "end");
        assert_eq!(v["strategies"][0]["p999_ms"], 5.0);
        assert!(r.table().contains("5.000"));
    }

    #[test]
    fn strategy_names_are_the_command_line_names() {
        use clap::ValueEnum;
        for s in Strategy::ALL {
            assert_eq!(Strategy::from_str(s.name(), false), Ok(s));
        }
        assert!(Strategy::from_str("overlay", false).is_err());
    }

    /// The strata strategy needs no root: run it for real and check it leaves nothing behind.
    #[test]
    fn strata_strategy_cleans_up() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("b");
        let cfg = BenchConfig {
            dir: dir.clone(),
            n: 3,
            strategies: vec![Strategy::Strata],
            warmup: 1,
            interval: Duration::ZERO,
            until: None,
            strata_bin: None,
        };
        let mut seen = 0;
        let r = run(&cfg, &AtomicBool::new(false), &mut |p| seen = p.done).unwrap();
        assert_eq!(seen, 4);
        assert_eq!(r.strategies.len(), 2);
        assert!(r.strategies.iter().all(|s| s.n == 3 && s.name == "strata"));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn stop_flag_interrupts_and_cleans_up() {
        let t = tempfile::tempdir().unwrap();
        let cfg = BenchConfig {
            dir: t.path().to_owned(),
            n: 3,
            strategies: vec![Strategy::Strata],
            warmup: 0,
            interval: Duration::ZERO,
            until: None,
            strata_bin: None,
        };
        let stop = AtomicBool::new(false);
        let e = run(&cfg, &stop, &mut |_| stop.store(true, Ordering::Relaxed)).unwrap_err();
        assert!(matches!(e, BenchError::Interrupted), "{e}");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }
}
