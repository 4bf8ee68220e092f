//! `strata bench requests`: what one created file, or one small write, costs the file server,
//! without a guest.
//!
//! A guest kernel turns `open(O_CREAT) + write(1 KiB) + close` into a fixed series of FUSE
//! requests, and which series depends on the setup (`strata bench guest --opstats` counts
//! them; docs/benchmarks.md#the-uppers-round-trips says where each comes from):
//!
//! - (a) `virtiofsd` over a host overlay mount, the guest seeing a plain FUSE mount: LOOKUP
//!   (negative), CREATE, WRITE, FLUSH, RELEASE;
//! - (b)/(d) `strata`, the guest's overlayfs over the served upper: LOOKUP (negative) twice,
//!   MKNOD, GETXATTR `trusted.overlay.protattr`, GETATTR of the directory, GETXATTR
//!   `security.capability` twice, WRITE by inode;
//! - (f) `strata-union`, the daemon merging: LOOKUP (negative), CREATE, GETATTR of the
//!   directory, GETXATTR `security.capability`, WRITE by inode.
//!
//! A `write()` to a file already open (`append`) is a WRITE for (a) and (f), and GETXATTR
//! `security.capability` twice, then WRITE, for (b)/(d).
//!
//! Here a vhost-user frontend in this process ([`TestVm`]) sends exactly those series through
//! a real virtqueue to the real daemons, one request at a time as a guest's FUSE client does,
//! and waits for each reply as a KVM guest does (polling briefly, then sleeping until the call
//! eventfd, its interrupt, fires). No guest
//! runs: what is timed is the server's work and the host's notification path, which on a KVM
//! host is most of a guest's round trip, and none of the TCG emulation that dominates
//! `strata bench guest` on machines without working KVM. It answers "would the guest bench's
//! ratios hold where round trips are cheap?", in seconds instead of a VM boot per sample.
//!
//! Every setup starts from the same fresh upper on the same filesystem (the loop-mounted ext4
//! `strata bench guest` uses, if it can be made), runs are interleaved, and a run of bare
//! GETATTR requests (one `fstat` on the server) gives each setup's round trip alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strata_harness::session::{ServeProcess, ServeSpec};
use strata_serve::frontend::TestVm;

use crate::guest_bench::{DataFs, HostOverlay, Virtiofsd};
use crate::{Result, VmError};

/// Which server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    /// (a) virtiofsd over a host overlay mount.
    Virtiofsd,
    /// (b)/(d): `strata serve`, the guest's overlay over the served upper.
    Strata,
    /// (f): `strata serve --union`.
    StrataUnion,
}

impl Setup {
    pub const ALL: [Setup; 3] = [Setup::Virtiofsd, Setup::Strata, Setup::StrataUnion];

    pub fn name(self) -> &'static str {
        match self {
            Setup::Virtiofsd => "virtiofsd",
            Setup::Strata => "strata",
            Setup::StrataUnion => "strata-union",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Setup::Virtiofsd => "(a) virtiofsd + host overlay",
            Setup::Strata => "(b)/(d) strata, guest overlay",
            Setup::StrataUnion => "(f) strata --union",
        }
    }

    pub fn parse(s: &str) -> std::result::Result<Setup, String> {
        Setup::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Setup::ALL.iter().map(|x| x.name()).collect();
                format!("unknown setup {s:?} (one of: {})", names.join(", "))
            })
    }
}

/// What each setup's guest does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// `open(O_CREAT)`, a 1 KiB `write()`, `close()` of `--files` new files (as
    /// `strata bench guest --workload create`).
    Create,
    /// `--files` × 4 `write()`s of 100 bytes to one open file (as `--workload append`).
    Append,
}

impl Workload {
    pub const ALL: [Workload; 2] = [Workload::Create, Workload::Append];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Create => "create",
            Workload::Append => "append",
        }
    }

    /// What one item is.
    pub fn item(self) -> &'static str {
        match self {
            Workload::Create => "file",
            Workload::Append => "write",
        }
    }

    pub fn parse(s: &str) -> std::result::Result<Workload, String> {
        Workload::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown workload {s:?} (one of: create, append)"))
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `strata` binary for `strata serve`.
    pub strata: PathBuf,
    pub setups: Vec<Setup>,
    pub workloads: Vec<Workload>,
    /// Files created per setup and run (and a quarter of the appends).
    pub files: usize,
    /// Bare round trips (GETATTR of the directory: one `fstat` on the server) timed per setup
    /// and run.
    pub round_trips: usize,
    pub runs: usize,
    /// Where uppers, sockets and the data filesystem go (a temp dir if `None`).
    pub workdir: Option<PathBuf>,
}

/// One setup's run of one workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub setup: Setup,
    pub workload: Workload,
    pub run: usize,
    /// Wall time per item (created file, or write), µs.
    pub per_item_us: f64,
    /// One bare round trip (GETATTR of the directory), µs.
    pub round_trip_us: f64,
    /// Requests per item.
    pub requests_per_item: usize,
    /// Per request kind (`LOOKUP`, `GETXATTR security.capability`, …): how many per item and
    /// the mean time of one, µs.
    pub ops: BTreeMap<String, (f64, f64)>,
}

/// Medians over the runs of one setup and workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub setup: Setup,
    pub workload: Workload,
    pub per_item_us: f64,
    pub round_trip_us: f64,
    pub requests_per_item: usize,
    /// `per_item_us` over (a)'s for the same workload, if (a) ran.
    pub ratio_to_virtiofsd: Option<f64>,
    /// For a setup faster than (a) per item here but with more requests per item: what a
    /// guest's own share of each round trip (its exit, interrupt and FUSE client, none of which
    /// runs here) may cost before the setup is slower than (a), µs. `None` if that never
    /// happens (no more requests than (a)) or the setup is slower already.
    #[serde(default)]
    pub break_even_guest_us: Option<f64>,
    /// Per request kind: per file, median µs each.
    pub ops: BTreeMap<String, (f64, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub files: usize,
    pub runs: usize,
    /// Where the uppers were (`DataFs`).
    pub data_fs: String,
    pub samples: Vec<Sample>,
    pub summary: Vec<Summary>,
}

/// How long the frontend polls for a reply before it sleeps: what KVM does for a halted vCPU
/// (host `halt_poll_ns`, 200 µs by default on x86; guests' `cpuidle-haltpoll` the same), so a
/// reply within it wakes nothing. Without it each reply would also time waking this thread on
/// an idle CPU, which on a nested VM like this project's CI machine costs 15-50 µs and swings
/// with whatever else runs.
const REPLY_POLL: Duration = Duration::from_micros(200);

/// The 1 KiB each created file gets (the guest bench's create workload writes 1 KiB too).
const BODY: [u8; 1024] = [b's'; 1024];

/// Times per request kind within one run.
#[derive(Default)]
struct Clock {
    ops: BTreeMap<&'static str, (u64, Duration)>,
}

impl Clock {
    /// Send one request through `f`, timed as `what`. `want_err`: the errno the series expects
    /// (a negative LOOKUP, an xattr the file does not have); anything else is a failure.
    fn time<T>(
        &mut self,
        what: &'static str,
        want_err: Option<i32>,
        f: impl FnOnce() -> std::io::Result<T>,
    ) -> Result<Option<T>> {
        let t = Instant::now();
        let r = f();
        let dt = t.elapsed();
        let e = self.ops.entry(what).or_default();
        e.0 += 1;
        e.1 += dt;
        match (r, want_err) {
            (Ok(v), None) => Ok(Some(v)),
            (Err(e), Some(errno)) if e.raw_os_error() == Some(errno) => Ok(None),
            (Ok(_), Some(errno)) => Err(VmError::Serve(format!(
                "{what}: expected errno {errno}, the server answered with success"
            ))),
            (Err(e), _) => Err(VmError::Serve(format!("{what}: {e}"))),
        }
    }
}

/// The series of one setup for file `n` in directory `dir`.
/// LOOKUP of a name that must not exist: ENOENT, or a negative entry (node 0: strata's answer,
/// which the guest may cache).
fn lookup_absent(vm: &mut TestVm, dir: u64, n: &str) -> std::io::Result<()> {
    match vm.lookup(dir, n) {
        Ok(e) if e.node == 0 => Err(std::io::Error::from_raw_os_error(libc::ENOENT)),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

fn create_one(setup: Setup, vm: &mut TestVm, clock: &mut Clock, dir: u64, n: &str) -> Result<()> {
    let absent = Some(libc::ENOENT);
    let no_xattr = Some(libc::ENODATA);
    // What `open(O_WRONLY|O_CREAT|O_TRUNC)` asks for (Python's `open(p, "w")`).
    let flags = (libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC) as u32;
    let created = |e: Option<(strata_serve::frontend::Entry, u64)>| {
        e.ok_or_else(|| VmError::Serve("CREATE returned nothing".into()))
    };
    match setup {
        Setup::Virtiofsd => {
            clock.time("LOOKUP", absent, || lookup_absent(vm, dir, n))?;
            let (e, fh) =
                created(clock.time("CREATE", None, || vm.create_flags(dir, n, 0o644, flags))?)?;
            clock.time("WRITE", None, || vm.write(e.node, fh, 0, &BODY))?;
            clock.time("FLUSH", None, || vm.flush(e.node, fh))?;
            clock.time("RELEASE", None, || vm.release(e.node, fh, false))?;
        }
        Setup::Strata => {
            clock.time("LOOKUP", absent, || lookup_absent(vm, dir, n))?;
            clock.time("LOOKUP", absent, || lookup_absent(vm, dir, n))?;
            let e = clock
                .time("MKNOD", None, || vm.mknod(dir, n, 0o644))?
                .ok_or_else(|| VmError::Serve("MKNOD returned nothing".into()))?;
            clock.time("GETXATTR trusted.overlay.protattr", no_xattr, || {
                vm.getxattr_len(e.node, "trusted.overlay.protattr")
            })?;
            clock.time("GETATTR", None, || vm.getattr(dir))?;
            for _ in 0..2 {
                clock.time("GETXATTR security.capability", no_xattr, || {
                    vm.getxattr_len(e.node, "security.capability")
                })?;
            }
            clock.time("WRITE", None, || vm.write(e.node, 0, 0, &BODY))?;
        }
        Setup::StrataUnion => {
            clock.time("LOOKUP", absent, || lookup_absent(vm, dir, n))?;
            let (e, fh) =
                created(clock.time("CREATE", None, || vm.create_flags(dir, n, 0o644, flags))?)?;
            clock.time("GETATTR", None, || vm.getattr(dir))?;
            clock.time("GETXATTR security.capability", no_xattr, || {
                vm.getxattr_len(e.node, "security.capability")
            })?;
            clock.time("WRITE", None, || vm.write(e.node, fh, 0, &BODY))?;
            if fh != 0 {
                clock.time("RELEASE", None, || vm.release(e.node, fh, false))?;
            }
        }
    }
    Ok(())
}

/// Before the appends: the file, opened for appending as each setup's guest has it. Returns
/// its node and handle.
fn append_open(setup: Setup, vm: &mut TestVm, dir: u64) -> std::io::Result<(u64, u64)> {
    let flags = (libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC) as u32;
    match setup {
        Setup::Virtiofsd | Setup::StrataUnion => {
            let (e, fh) = vm.create_flags(dir, "log", 0o644, flags)?;
            Ok((e.node, fh))
        }
        Setup::Strata => Ok((vm.mknod(dir, "log", 0o644)?.node, 0)),
    }
}

/// One `write()` of 100 bytes at `offset` (the end: the guest kernel knows its size).
fn append_one(
    setup: Setup,
    vm: &mut TestVm,
    clock: &mut Clock,
    (node, fh): (u64, u64),
    offset: u64,
) -> Result<()> {
    const LINE: [u8; 100] = [b'.'; 100];
    if setup == Setup::Strata {
        // The guest overlay's file_remove_privs, then FUSE's own under it: FUSE never marks
        // an inode S_NOSEC, so both ask on every write.
        for _ in 0..2 {
            clock.time("GETXATTR security.capability", Some(libc::ENODATA), || {
                vm.getxattr_len(node, "security.capability")
            })?;
        }
    }
    clock.time("WRITE", None, || vm.write(node, fh, offset, &LINE))?;
    Ok(())
}

fn io(what: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    VmError::io(what, p)
}

fn mkdirs(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(io("cannot create", p))
}

/// A small image: two layers of a few directories, enough for overlayfs and the daemon to
/// have lowers under the directory the files are created in.
fn make_layers(root: &Path) -> Result<Vec<PathBuf>> {
    let layers = vec![root.join("layers/l0"), root.join("layers/l1")];
    for (i, l) in layers.iter().enumerate() {
        for d in ["etc", "usr/bin", "bench"] {
            mkdirs(&l.join(d))?;
        }
        let f = l.join(format!("etc/layer{i}"));
        std::fs::write(&f, b"layer\n").map_err(io("cannot write", &f))?;
    }
    Ok(layers)
}

/// One setup's server, running; fields drop in order (virtiofsd before its overlay mount).
struct Server {
    _virtiofsd: Option<Virtiofsd>,
    _overlay: Option<HostOverlay>,
    _serve: Option<ServeProcess>,
}

fn one_run(
    cfg: &Config,
    setup: Setup,
    run: usize,
    base: &Path,
    layers: &[PathBuf],
) -> Result<Vec<Sample>> {
    let dir = base.join(format!("{}-{run}", setup.name()));
    let _ = std::fs::remove_dir_all(&dir);
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for p in [&upper, &work, &merged] {
        mkdirs(p)?;
    }
    let socket = dir.join("fs.sock");
    let log = dir.join("server.log");
    let server = match setup {
        Setup::Virtiofsd => {
            let ovl = HostOverlay::mount(layers, &upper, &work, &merged)?;
            Server {
                _virtiofsd: Some(Virtiofsd::spawn(&merged, &socket, &log)?),
                _overlay: Some(ovl),
                _serve: None,
            }
        }
        Setup::Strata | Setup::StrataUnion => {
            let spec = ServeSpec {
                lowers: layers.to_vec(),
                upper: upper.clone(),
                work: work.clone(),
                socket: socket.clone(),
                tag: "strata".into(),
                lower: None,
                union: setup == Setup::StrataUnion,
            };
            Server {
                _virtiofsd: None,
                _overlay: None,
                _serve: Some(ServeProcess::spawn(&cfg.strata, &spec, None, &log)?),
            }
        }
    };
    let fail = |e: std::io::Error| {
        VmError::Serve(format!(
            "{}: {e}\n{}",
            setup.name(),
            std::fs::read_to_string(&log).unwrap_or_default()
        ))
    };
    let mut vm = TestVm::connect_event_idx(&socket).map_err(fail)?;
    vm.set_reply_poll(REPLY_POLL);
    // The directory the files go to: "bench", present in the layers (as a container's
    // directories are), its path in each server's tree.
    let path = match setup {
        Setup::Virtiofsd => "bench",
        Setup::Strata => "upper/bench",
        Setup::StrataUnion => "rootfs/bench",
    };
    let bench = match setup {
        // The guest overlay copies the directory up before creating in it.
        Setup::Strata => {
            let up = vm.walk("upper").map_err(fail)?;
            vm.mkdir(up.node, "bench", 0o755).map_err(fail)?
        }
        _ => vm.walk(path).map_err(fail)?,
    };
    let t = Instant::now();
    for _ in 0..cfg.round_trips {
        vm.getattr(bench.node).map_err(fail)?;
    }
    let round_trip_us = t.elapsed().as_secs_f64() * 1e6 / cfg.round_trips.max(1) as f64;
    let mut samples = Vec::new();
    for &workload in &cfg.workloads {
        let mut clock = Clock::default();
        let items = match workload {
            Workload::Create => cfg.files,
            Workload::Append => cfg.files * 4,
        };
        let t;
        match workload {
            Workload::Create => {
                t = Instant::now();
                for i in 0..items {
                    create_one(setup, &mut vm, &mut clock, bench.node, &format!("f{i}"))?;
                }
            }
            Workload::Append => {
                let file = append_open(setup, &mut vm, bench.node).map_err(fail)?;
                t = Instant::now();
                for i in 0..items {
                    append_one(setup, &mut vm, &mut clock, file, i as u64 * 100)?;
                }
            }
        }
        let per_item_us = t.elapsed().as_secs_f64() * 1e6 / items.max(1) as f64;
        let n = items.max(1) as f64;
        let ops: BTreeMap<String, (f64, f64)> = clock
            .ops
            .iter()
            .map(|(k, (count, d))| {
                (
                    (*k).to_string(),
                    (
                        *count as f64 / n,
                        d.as_secs_f64() * 1e6 / (*count).max(1) as f64,
                    ),
                )
            })
            .collect();
        let requests_per_item =
            clock.ops.values().map(|(c, _)| *c).sum::<u64>() as usize / items.max(1);
        samples.push(Sample {
            setup,
            workload,
            run,
            per_item_us,
            round_trip_us,
            requests_per_item,
            ops,
        });
    }
    drop(vm);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(samples)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Medians per workload and setup, in the order of `workloads` and `setups`.
pub fn summarize(workloads: &[Workload], setups: &[Setup], samples: &[Sample]) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    for &workload in workloads {
        let first_here = out.len();
        for &setup in setups {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.setup == setup && s.workload == workload)
                .collect();
            let Some(first) = mine.first() else {
                continue;
            };
            let mut ops = BTreeMap::new();
            for (k, (per_item, _)) in &first.ops {
                let each = median(
                    mine.iter()
                        .filter_map(|s| s.ops.get(k).map(|o| o.1))
                        .collect(),
                );
                ops.insert(k.clone(), (*per_item, each));
            }
            out.push(Summary {
                setup,
                workload,
                per_item_us: median(mine.iter().map(|s| s.per_item_us).collect()),
                round_trip_us: median(mine.iter().map(|s| s.round_trip_us).collect()),
                requests_per_item: first.requests_per_item,
                ratio_to_virtiofsd: None,
                break_even_guest_us: None,
                ops,
            });
        }
        let here = &mut out[first_here..];
        let base = here
            .iter()
            .find(|s| s.setup == Setup::Virtiofsd)
            .map(|s| (s.per_item_us, s.requests_per_item));
        let Some((us, reqs)) = base else {
            continue;
        };
        for s in here {
            s.ratio_to_virtiofsd = Some(s.per_item_us / us);
            if s.requests_per_item > reqs && s.per_item_us < us {
                s.break_even_guest_us =
                    Some((us - s.per_item_us) / (s.requests_per_item - reqs) as f64);
            }
        }
    }
    out
}

/// Run every setup `cfg.runs` times, interleaved; `progress` gets one line per run.
pub fn run(cfg: &Config, progress: &mut dyn FnMut(&str)) -> Result<Report> {
    let mut setups = cfg.setups.clone();
    if setups.contains(&Setup::Virtiofsd) {
        if let Err(why) = crate::guest_bench::virtiofsd_available() {
            if setups.len() == 1 {
                return Err(VmError::Serve(why));
            }
            // As `strata bench guest`: the rest still runs, without ratios.
            progress(&format!("skipped: {why}"));
            setups.retain(|s| *s != Setup::Virtiofsd);
        }
    }
    let tmp;
    let workdir = match &cfg.workdir {
        Some(w) => {
            mkdirs(w)?;
            w.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("strata-bench-requests")
                .tempdir()
                .map_err(io("cannot create a temp dir", Path::new("/tmp")))?;
            tmp.path().to_owned()
        }
    };
    let data = DataFs::new(&workdir);
    progress(&format!("uppers on {}", data.what));
    let layers = make_layers(&data.dir.join("image"))?;
    let mut samples = Vec::new();
    for run in 1..=cfg.runs {
        for &setup in &setups {
            for s in one_run(cfg, setup, run, &data.dir, &layers)? {
                progress(&format!(
                    "run {run}/{}: {:<13} {:<7} {:>7.1} µs per {} ({} requests), round trip \
                     {:.1} µs",
                    cfg.runs,
                    setup.name(),
                    s.workload.name(),
                    s.per_item_us,
                    s.workload.item(),
                    s.requests_per_item,
                    s.round_trip_us
                ));
                samples.push(s);
            }
            nix::unistd::sync();
        }
    }
    let summary = summarize(&cfg.workloads, &setups, &samples);
    Ok(Report {
        files: cfg.files,
        runs: cfg.runs,
        data_fs: data.what.clone(),
        samples,
        summary,
    })
}

/// Draw where each setup's time per item goes, request kind by request kind: one panel per
/// workload, one stacked bar per setup (µs per item = requests per item × µs each).
pub fn breakdown_svg(r: &Report, out: &Path) -> std::result::Result<(), String> {
    use plotters::prelude::*;
    let mut workloads: Vec<Workload> = r.summary.iter().map(|s| s.workload).collect();
    workloads.dedup();
    let mut kinds: Vec<&str> = r
        .summary
        .iter()
        .flat_map(|s| s.ops.keys().map(String::as_str))
        .collect();
    kinds.sort();
    kinds.dedup();
    let palette = [
        RGBColor(40, 90, 200),
        RGBColor(200, 40, 40),
        RGBColor(40, 160, 90),
        RGBColor(230, 150, 30),
        RGBColor(140, 70, 170),
        RGBColor(90, 180, 200),
        RGBColor(120, 120, 120),
        RGBColor(200, 110, 160),
        RGBColor(150, 120, 60),
        RGBColor(20, 20, 20),
    ];
    let color = |k: &str| palette[kinds.iter().position(|x| *x == k).unwrap_or(0) % palette.len()];
    let panels = workloads.len().max(1);
    let root = SVGBackend::new(out, (520 * panels as u32, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    for (area, &w) in root.split_evenly((1, panels)).iter().zip(&workloads) {
        let rows: Vec<&Summary> = r.summary.iter().filter(|s| s.workload == w).collect();
        let stack = |s: &Summary| s.ops.values().map(|(n, us)| n * us).sum::<f64>();
        // Headroom for the legend.
        let ymax = rows.iter().map(|s| stack(s)).fold(1.0f64, f64::max) * 1.6;
        let n = rows.len().max(1) as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{}: server side per {}, no guest", w.name(), w.item()),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..n, 0.0..ymax)
            .map_err(|e| e.to_string())?;
        let names: Vec<&str> = rows.iter().map(|s| s.setup.name()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(rows.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.01 {
                    names.get(i).copied().unwrap_or("").to_string()
                } else {
                    String::new()
                }
            })
            .y_desc(format!("µs per {}", w.item()))
            .draw()
            .map_err(|e| e.to_string())?;
        for &k in &kinds {
            let mut bars = Vec::new();
            for (i, s) in rows.iter().enumerate() {
                let Some((count, us)) = s.ops.get(k) else {
                    continue;
                };
                // Below it: the kinds before it in `kinds`.
                let below: f64 = kinds
                    .iter()
                    .take_while(|x| **x != k)
                    .filter_map(|x| s.ops.get(*x).map(|(n, us)| n * us))
                    .sum();
                let x0 = i as f64 + 0.2;
                bars.push(Rectangle::new(
                    [(x0, below), (x0 + 0.6, below + count * us)],
                    color(k).filled(),
                ));
            }
            if bars.is_empty() {
                continue;
            }
            let c = color(k);
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(k.to_string())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(setup: Setup, workload: Workload, run: usize, us: f64) -> Sample {
        Sample {
            setup,
            workload,
            run,
            per_item_us: us,
            round_trip_us: 10.0,
            requests_per_item: 5,
            ops: BTreeMap::from([("LOOKUP".to_string(), (1.0, us / 5.0))]),
        }
    }

    #[test]
    fn summary_is_the_median_and_its_ratio_to_virtiofsd_per_workload() {
        let (c, a) = (Workload::Create, Workload::Append);
        let samples = vec![
            sample(Setup::Virtiofsd, c, 1, 100.0),
            sample(Setup::Strata, c, 1, 300.0),
            sample(Setup::Virtiofsd, c, 2, 120.0),
            sample(Setup::Strata, c, 2, 150.0),
            sample(Setup::Virtiofsd, c, 3, 110.0),
            sample(Setup::Strata, c, 3, 165.0),
            sample(Setup::Virtiofsd, a, 1, 20.0),
            sample(Setup::Strata, a, 1, 10.0),
        ];
        let s = summarize(&Workload::ALL, &[Setup::Virtiofsd, Setup::Strata], &samples);
        assert_eq!(s.len(), 4);
        assert_eq!((s[0].workload, s[0].per_item_us), (c, 110.0));
        assert_eq!(s[0].ratio_to_virtiofsd, Some(1.0));
        assert_eq!(s[1].per_item_us, 165.0);
        assert_eq!(s[1].ratio_to_virtiofsd, Some(1.5));
        assert_eq!(s[1].ops["LOOKUP"], (1.0, 33.0));
        assert_eq!(s[1].break_even_guest_us, None, "slower already");
        assert_eq!((s[3].workload, s[3].ratio_to_virtiofsd), (a, Some(0.5)));
    }

    #[test]
    fn break_even_is_the_lead_over_the_extra_requests() {
        let c = Workload::Create;
        let mut d = sample(Setup::Strata, c, 1, 200.0);
        d.requests_per_item = 8;
        let mut f = sample(Setup::StrataUnion, c, 1, 150.0);
        f.requests_per_item = 5;
        let samples = vec![sample(Setup::Virtiofsd, c, 1, 260.0), d, f];
        let s = summarize(&[c], &Setup::ALL, &samples);
        // 60 µs ahead with 3 requests more: each may cost a guest 20 µs.
        assert_eq!(s[1].break_even_guest_us, Some(20.0));
        // As many requests as (a): ahead whatever a round trip costs the guest.
        assert_eq!(s[2].break_even_guest_us, None);
    }

    #[test]
    fn setups_and_workloads_parse_by_name() {
        for s in Setup::ALL {
            assert_eq!(Setup::parse(s.name()), Ok(s));
        }
        assert!(Setup::parse("kata").unwrap_err().contains("virtiofsd"));
        for w in Workload::ALL {
            assert_eq!(Workload::parse(w.name()), Ok(w));
        }
    }
}
