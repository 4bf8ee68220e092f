//! Many VM sessions against one real `strata daemon` process, without booting VMs: each
//! session is driven by a vhost-user frontend ([`strata_serve::frontend::TestVm`]) that does
//! what qemu does on the socket and sends real FUSE requests through a real virtqueue.
//!
//! - [`sessions`] (`strata bench sessions`): daemon memory with 1, 10, 100… connected sessions,
//!   and after they all end.
//! - [`soak`] (`strata bench soak`): sessions doing mixed I/O (reads across layers, creates,
//!   writes, fsyncs, unlinks, directory listings) for a fixed time, reconnecting now and then,
//!   with the daemon's RSS, open fds and threads sampled every second: flat is the goal. Its
//!   CPU time too: per request under load, and with every session connected but idle (the
//!   request workers poll adaptively before sleeping; idle they must cost nothing).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strata_serve::api::{Client, Dirs, Request, Response};
use strata_serve::frontend::TestVm;

use strata_harness::session::DaemonProcess;
use strata_vm::VmError;

/// One look at the daemon process.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProcSample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Sessions connected at that moment.
    pub sessions: usize,
    pub rss_kib: u64,
    /// Private memory: heap, stacks, page tables' worth of the daemon's own state.
    pub anon_kib: u64,
    /// Guest memory pages the daemon touched (shared with the VMM: counted once per host).
    pub shared_kib: u64,
    pub threads: u64,
    pub fds: u64,
    /// CPU time the daemon used since it started (user + system), ms.
    #[serde(default)]
    pub cpu_ms: u64,
}

fn status_field(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of a process so far, ms (`/proc/PID/stat` fields 14 and 15, in
/// clock ticks of 1/100 s: Linux's fixed USER_HZ on every architecture strata builds for).
pub fn cpu_ms(pid: u32) -> u64 {
    const TICK_MS: u64 = 10;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11) // fields 3..=13
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() * TICK_MS
}

/// Read `/proc/PID/status`, `/proc/PID/stat` and `/proc/PID/fd` of the daemon.
pub fn sample(pid: u32, t0: Instant, sessions: usize) -> ProcSample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    ProcSample {
        t_s: t0.elapsed().as_secs_f64(),
        sessions,
        rss_kib: status_field(&status, "VmRSS:"),
        anon_kib: status_field(&status, "RssAnon:"),
        shared_kib: status_field(&status, "RssFile:") + status_field(&status, "RssShmem:"),
        threads: status_field(&status, "Threads:"),
        fds,
        cpu_ms: cpu_ms(pid),
    }
}

/// A small layered tree to serve: two layers with a few hundred files, and a directory per
/// container for upper/work.
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    lowers: Vec<PathBuf>,
}

fn io(what: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    VmError::io(what, p)
}

impl Tree {
    fn new(parent: Option<&Path>) -> Result<Tree, VmError> {
        let dir = match parent {
            Some(p) => tempfile::tempdir_in(p),
            None => tempfile::Builder::new().prefix("strata-soak").tempdir(),
        }
        .map_err(io("cannot create a temp dir", Path::new("/tmp")))?;
        let root = dir.path().to_owned();
        let lowers = vec![root.join("l0"), root.join("l1")];
        for (i, l) in lowers.iter().enumerate() {
            for d in 0..10 {
                let p = l.join(format!("d{d}"));
                std::fs::create_dir_all(&p).map_err(io("cannot create", &p))?;
                for f in 0..20 {
                    let file = p.join(format!("f{f}"));
                    let body = format!("layer {i} dir {d} file {f}\n").repeat(40 + 40 * f);
                    std::fs::write(&file, body).map_err(io("cannot write", &file))?;
                }
            }
        }
        std::fs::create_dir_all(root.join("run")).map_err(io("cannot create", &root))?;
        Ok(Tree {
            _dir: dir,
            root,
            lowers,
        })
    }

    fn api(&self) -> PathBuf {
        self.root.join("run/api.sock")
    }

    /// Create (or recreate empty) the upper/work of `id` and ask the daemon to serve them.
    fn start(&self, client: &mut Client, id: &str) -> Result<PathBuf, VmError> {
        let c = self.root.join("c").join(id);
        let _ = std::fs::remove_dir_all(&c);
        for d in ["upper", "work"] {
            std::fs::create_dir_all(c.join(d)).map_err(io("cannot create", &c))?;
        }
        let socket = self.root.join("run").join(format!("{id}.sock"));
        let r = client
            .call(&Request::Start {
                id: id.to_owned(),
                socket: socket.clone(),
                dirs: Some(Dirs {
                    lowers: self.lowers.clone(),
                    upper: c.join("upper"),
                    work: c.join("work"),
                }),
                tag: None,
                layer_device: None,
                lower_block: None,
                union: false,
            })
            .map_err(|e| VmError::Serve(format!("daemon API: {e}")))?;
        match r {
            Response::Started { .. } => Ok(socket),
            r => Err(VmError::Serve(format!("start {id}: {r:?}"))),
        }
    }
}

fn spawn_daemon(strata: &Path, tree: &Tree) -> Result<DaemonProcess, VmError> {
    DaemonProcess::spawn(
        strata,
        &tree.api(),
        &["--allow".as_ref(), tree.root.as_os_str()],
        None,
        &tree.root.join("daemon.log"),
    )
}

fn connect(tree: &Tree, client: &mut Client, id: &str) -> Result<TestVm, VmError> {
    let socket = tree.start(client, id)?;
    // EVENT_IDX, as qemu negotiates it: the daemon polls and suppresses kicks as with a VM.
    TestVm::connect_event_idx(&socket).map_err(|e| VmError::Serve(format!("connect {id}: {e}")))
}

/// A small deterministic random source (xorshift), so runs are repeatable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// One round of mixed guest I/O; returns the number of FUSE requests it made.
fn io_round(vm: &mut TestVm, rng: &mut Rng, round: u64) -> std::io::Result<u64> {
    let mut n = 0;
    // Reads across both layers.
    for _ in 0..4 {
        let path = format!(
            "layers/{}/d{}/f{}",
            rng.below(2),
            rng.below(10),
            rng.below(20)
        );
        let data = vm.read_file(&path)?;
        if data.is_empty() {
            return Err(std::io::Error::other(format!("{path} read empty")));
        }
        n += 8;
    }
    let dir = vm.walk("layers/0/d3")?.node;
    let names = vm.list(dir)?;
    if names.len() < 20 {
        return Err(std::io::Error::other("layer dir listing short"));
    }
    // Writes in the upper: create, write, fsync, read back, unlink, forget.
    let upper = vm.walk("upper")?.node;
    let name = format!("w{round}");
    let (e, fh) = vm.create(upper, &name, 0o644)?;
    let body = vec![b'x'; 4096 * (1 + rng.below(16) as usize)];
    vm.write(e.node, fh, 0, &body)?;
    vm.fsync(e.node, fh)?;
    let back = vm.read(e.node, fh, 0, body.len() as u32)?;
    if back != body {
        return Err(std::io::Error::other("upper read-back differs"));
    }
    vm.release(e.node, fh, false)?;
    if rng.below(4) == 0 {
        let d = vm.mkdir(upper, &format!("d{round}"), 0o755)?;
        vm.rmdir(upper, &format!("d{round}"))?;
        vm.forget(d.node, 1)?;
        n += 3;
    }
    vm.unlink(upper, &name)?;
    vm.forget(e.node, 1)?;
    Ok(n + 16)
}

/// `strata bench sessions`: the daemon's memory with each count of connected sessions.
pub fn sessions(
    strata: &Path,
    counts: &[usize],
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<ProcSample>, VmError> {
    let tree = Tree::new(None)?;
    let daemon = spawn_daemon(strata, &tree)?;
    let mut client =
        Client::connect(&tree.api()).map_err(|e| VmError::Serve(format!("daemon API: {e}")))?;
    // One answered request first: the daemon is then fully up (signal thread, this client's
    // API thread), so the idle sample is comparable with the one after the sessions end.
    client
        .call(&Request::Status { id: None })
        .map_err(|e| VmError::Serve(format!("daemon API: {e}")))?;
    let t0 = Instant::now();
    let mut rng = Rng(0x5eed);
    let mut out = vec![sample(daemon.pid(), t0, 0)];
    let mut vms: Vec<TestVm> = Vec::new();
    let mut sorted: Vec<usize> = counts.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    for &n in &sorted {
        while vms.len() < n {
            let id = format!("s{}", vms.len());
            vms.push(connect(&tree, &mut client, &id)?);
        }
        for (i, vm) in vms.iter_mut().enumerate() {
            io_round(vm, &mut rng, i as u64)
                .map_err(|e| VmError::Serve(format!("session s{i}: {e}")))?;
        }
        std::thread::sleep(Duration::from_millis(300));
        let s = sample(daemon.pid(), t0, n);
        progress(&format!(
            "{n} sessions: RSS {} KiB (anon {} KiB), {} threads, {} fds",
            s.rss_kib, s.anon_kib, s.threads, s.fds
        ));
        out.push(s);
    }
    vms.clear();
    let t = Instant::now();
    loop {
        match client.call(&Request::Status { id: None }) {
            Ok(Response::Status { sessions }) if sessions.is_empty() => break,
            _ if t.elapsed() > Duration::from_secs(30) => {
                return Err(VmError::Serve("sessions did not end within 30 s".into()))
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    out.push(sample(daemon.pid(), t0, 0));
    drop(client);
    let _ = daemon.stop();
    Ok(out)
}

/// What a soak run saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakReport {
    pub sessions: usize,
    pub seconds: f64,
    /// FUSE requests made by all sessions.
    pub requests: u64,
    /// Sessions ended and started again (VMM hang-up + new start) during the run.
    pub reconnects: u64,
    /// Failed rounds (should be 0).
    pub errors: u64,
    pub first_error: Option<String>,
    pub samples: Vec<ProcSample>,
    /// Daemon CPU time over the loaded run, s.
    #[serde(default)]
    pub cpu_s: f64,
    /// Daemon CPU with every session still connected but idle, in % of one core (measured
    /// over [`IDLE_WINDOW`] after the load stops).
    #[serde(default)]
    pub idle_cpu_pct: f64,
}

/// How long a soak watches the daemon's CPU with its sessions connected and idle.
pub const IDLE_WINDOW: Duration = Duration::from_secs(3);

impl SoakReport {
    /// Mean of `f` over the first and last fifth of the samples: (start, end).
    pub fn drift(&self, f: impl Fn(&ProcSample) -> u64) -> (f64, f64) {
        let n = self.samples.len();
        let k = (n / 5).max(1);
        let mean = |s: &[ProcSample]| s.iter().map(&f).sum::<u64>() as f64 / s.len().max(1) as f64;
        if n == 0 {
            return (0.0, 0.0);
        }
        (
            mean(&self.samples[..k.min(n)]),
            mean(&self.samples[n - k.min(n)..]),
        )
    }

    pub fn summary(&self) -> String {
        let (r0, r1) = self.drift(|s| s.rss_kib);
        let (f0, f1) = self.drift(|s| s.fds);
        let (t0, t1) = self.drift(|s| s.threads);
        format!(
            "soak: {} sessions, {:.0} s, {} FUSE requests ({:.0}/s), {} reconnects, {} errors\n\
             daemon RSS  first fifth {:.0} KiB -> last fifth {:.0} KiB ({:+.1} %)\n\
             daemon fds  first fifth {:.1} -> last fifth {:.1}\n\
             threads     first fifth {:.1} -> last fifth {:.1}\n\
             daemon CPU  {:.1} s under load ({:.1} µs per request); {:.2} % of a core with \
             {} sessions connected and idle{}",
            self.sessions,
            self.seconds,
            self.requests,
            self.requests as f64 / self.seconds.max(1e-9),
            self.reconnects,
            self.errors,
            r0,
            r1,
            if r0 > 0.0 {
                (r1 - r0) / r0 * 100.0
            } else {
                0.0
            },
            f0,
            f1,
            t0,
            t1,
            self.cpu_s,
            self.cpu_s * 1e6 / (self.requests.max(1) as f64),
            self.idle_cpu_pct,
            self.sessions,
            self.first_error
                .as_ref()
                .map(|e| format!("\nfirst error: {e}"))
                .unwrap_or_default()
        )
    }
}

/// `strata bench soak`: `n` sessions of mixed I/O for `duration` (each pausing `pause`
/// between rounds, and reconnecting every 200 rounds), the daemon sampled every `interval`.
pub fn soak(
    strata: &Path,
    n: usize,
    duration: Duration,
    interval: Duration,
    pause: Duration,
    progress: &mut dyn FnMut(&ProcSample, u64),
) -> Result<SoakReport, VmError> {
    const RECONNECT_EVERY: u64 = 200;
    let tree = Arc::new(Tree::new(None)?);
    let daemon = spawn_daemon(strata, &tree)?;
    let pid = daemon.pid();
    let requests = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let stop = Arc::new(AtomicBool::new(false));
    // Workers that stopped their I/O but keep their session until `release`.
    let parked = Arc::new(AtomicU64::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let cpu0 = cpu_ms(pid);
    let mut workers = Vec::new();
    for w in 0..n {
        let (tree, requests, reconnects, errors, first_error, stop, parked, release) = (
            tree.clone(),
            requests.clone(),
            reconnects.clone(),
            errors.clone(),
            first_error.clone(),
            stop.clone(),
            parked.clone(),
            release.clone(),
        );
        workers.push(std::thread::spawn(move || -> Result<(), VmError> {
            let mut client = Client::connect(&tree.api())
                .map_err(|e| VmError::Serve(format!("daemon API: {e}")))?;
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1));
            let mut generation = 0;
            let mut vm = connect(&tree, &mut client, &format!("w{w}g0"))?;
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match io_round(&mut vm, &mut rng, round) {
                    Ok(k) => {
                        requests.fetch_add(k, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let mut fe = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        fe.get_or_insert_with(|| format!("worker {w} round {round}: {e}"));
                    }
                }
                round += 1;
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
                if round.is_multiple_of(RECONNECT_EVERY) {
                    // The VMM quits (hang-up), the runtime stops the rootfs and starts a new
                    // one: the old session must give everything back.
                    drop(vm);
                    let old = format!("w{w}g{generation}");
                    let t = Instant::now();
                    loop {
                        match client.call(&Request::Status {
                            id: Some(old.clone()),
                        }) {
                            Ok(Response::Error { .. }) => break,
                            _ if t.elapsed() > Duration::from_secs(10) => {
                                let _ = client.call(&Request::Stop { id: old.clone() });
                                break;
                            }
                            _ => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                    generation += 1;
                    vm = connect(&tree, &mut client, &format!("w{w}g{generation}"))?;
                    reconnects.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Connected and idle until the daemon's idle CPU is measured.
            parked.fetch_add(1, Ordering::Relaxed);
            while !release.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            drop(vm);
            Ok(())
        }));
    }
    let mut samples = Vec::new();
    while t0.elapsed() < duration {
        std::thread::sleep(interval.min(duration.saturating_sub(t0.elapsed())));
        let s = sample(pid, t0, n);
        progress(&s, requests.load(Ordering::Relaxed));
        samples.push(s);
        if workers.iter().all(|w| w.is_finished()) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let loaded_s = t0.elapsed().as_secs_f64();
    let t = Instant::now();
    while parked.load(Ordering::Relaxed) < n as u64
        && !workers.iter().any(|w| w.is_finished())
        && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu_s = cpu_ms(pid).saturating_sub(cpu0) as f64 / 1000.0;
    // Let the poll windows run down, then watch the idle daemon.
    std::thread::sleep(Duration::from_millis(200));
    let (c0, i0) = (cpu_ms(pid), Instant::now());
    std::thread::sleep(IDLE_WINDOW);
    let idle_cpu_pct =
        cpu_ms(pid).saturating_sub(c0) as f64 / 10.0 / i0.elapsed().as_secs_f64().max(1e-3);
    release.store(true, Ordering::Relaxed);
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(VmError::Serve("a soak worker panicked".into())),
        }
    }
    let report = SoakReport {
        sessions: n,
        seconds: loaded_s,
        cpu_s,
        idle_cpu_pct,
        requests: requests.load(Ordering::Relaxed),
        reconnects: reconnects.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error.lock().ok().and_then(|g| g.clone()),
        samples,
    };
    let _ = daemon.stop();
    Ok(report)
}

/// RSS (MiB) and open fds of the daemon over a soak run, as an SVG.
pub fn soak_svg(report: &SoakReport, out: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let root = SVGBackend::new(out, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(450);
    let t_max = report.samples.last().map(|s| s.t_s).unwrap_or(1.0).max(1.0);
    type Series = Box<dyn Fn(&ProcSample) -> f64>;
    let panels: [(
        &str,
        &DrawingArea<SVGBackend, plotters::coord::Shift>,
        Series,
    ); 2] = [
        (
            "daemon RSS (MiB)",
            &left,
            Box::new(|s: &ProcSample| s.rss_kib as f64 / 1024.0),
        ),
        (
            "daemon open fds",
            &right,
            Box::new(|s: &ProcSample| s.fds as f64),
        ),
    ];
    for (title, area, f) in panels.iter() {
        let y_max = report.samples.iter().map(f).fold(1.0f64, f64::max) * 1.25;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{title}, {} sessions of mixed I/O", report.sessions),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(
                report.samples.iter().map(|s| (s.t_s, f(s))),
                RGBColor(200, 40, 40).stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
