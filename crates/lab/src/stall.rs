//! `strata lab`: reproduce the `shrinker_rwsem` stall in a real guest kernel and measure every
//! container-start strategy side by side, idle and under reclaim.
//!
//! For each kernel: a rootfs (busybox + the static `strata` binary + `lab.sh`) is served by
//! `strata serve` over virtio-fs, a sparse ext4 scratch disk is attached as virtio-blk, and the
//! guest runs `lab.sh`: an idle baseline of `strata bench create` for each strategy, then the
//! scenario's pressure (millions of negative dentries, reclaimed by `drop_caches` or by page
//! cache pressure) while one bench process per strategy keeps starting and ending containers.
//! The guest prints `@bench`, `@vmstat` and `@psi` lines; the host turns them into a table, JSON
//! and a latency CDF plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bench::{BenchReport, Phase, PhaseStats};
use crate::Result;
use strata_harness::session::{ServeProcess, ServeSpec};
use strata_vm::kernel::KernelSpec;
use strata_vm::qemu::VmConfig;
use strata_vm::VmError;

const LAB_SH: &str = include_str!("lab_guest/lab.sh");

/// What pressure the guest is put under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Millions of negative dentries on ext4, reclaimed with `drop_caches=2` in cycles.
    Dentries,
    /// The dentries plus writes larger than guest RAM and a raised watermark_scale_factor.
    Pagecache,
    /// Eight cgroups with a 48 MiB `memory.max`, each filling it with dentries and page cache.
    Memcg,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Dentries => "dentries",
            Scenario::Pagecache => "pagecache",
            Scenario::Memcg => "memcg",
        }
    }
}

/// One lab run.
#[derive(Debug, Clone)]
pub struct LabConfig {
    pub kernels: Vec<KernelSpec>,
    pub scenario: Scenario,
    /// Container starts per strategy in the idle baseline.
    pub n: usize,
    /// Negative dentries to create.
    pub dentries: u64,
    /// Reclaim cycles during the pressure phase.
    pub cycles: u32,
    /// Pause between container starts of one strategy (ms).
    pub interval_ms: u64,
    pub mem_mib: u32,
    pub disk_gib: u64,
    /// Where images, disks and sockets live while it runs (removed afterwards unless kept).
    pub workdir: PathBuf,
    /// Longest one VM may run.
    pub timeout: Duration,
}

/// Counters from `/proc/vmstat` and `/proc/pressure/memory` over one phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reclaim {
    /// Deltas of pgscan/pgsteal (kswapd, direct), slabs_scanned and allocstall (summed).
    pub vmstat: BTreeMap<String, u64>,
    /// PSI memory "some"/"full" total stall time during the phase, in ms.
    pub psi_some_ms: f64,
    pub psi_full_ms: f64,
}

/// One phase (idle or pressure) of one kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabPhase {
    pub phase: String,
    pub strategies: Vec<PhaseStats>,
    pub reclaim: Reclaim,
}

/// Everything measured on one kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelRun {
    pub kernel: String,
    pub release: String,
    pub scenario: Scenario,
    pub phases: Vec<LabPhase>,
    pub vm_seconds: f64,
    /// Problems the guest reported (a bench that failed, ...).
    pub errors: Vec<String>,
}

/// The whole lab result (`--json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabReport {
    pub runs: Vec<KernelRun>,
}

/// Guest side: stat `count` absent names under `dir` so the kernel caches them as negative
/// dentries. Returns how long it took.
pub fn make_negative_dentries(dir: &Path, count: u64) -> std::io::Result<Duration> {
    std::fs::create_dir_all(dir)?;
    let t0 = Instant::now();
    let mut name = String::with_capacity(16);
    let mut path = dir.to_path_buf();
    for i in 0..count {
        name.clear();
        let _ = write!(name, "n{i}");
        path.push(&name);
        let _ = std::fs::symlink_metadata(&path);
        path.pop();
    }
    Ok(t0.elapsed())
}

fn parse_vmstat(fields: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    let mut it = fields.split_whitespace();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let Ok(v) = v.parse::<u64>() {
            let key = if k.starts_with("allocstall_") {
                "allocstall"
            } else {
                k
            };
            *m.entry(key.to_string()).or_insert(0) += v;
        }
    }
    m
}

fn parse_psi_totals(fields: &str) -> (f64, f64) {
    // "some avg10=0.00 avg60=0.00 avg300=0.00 total=123 full avg10=... total=45"
    let mut some = 0.0;
    let mut full = 0.0;
    let mut cur = "";
    for w in fields.split_whitespace() {
        match w {
            "some" | "full" => cur = if w == "some" { "some" } else { "full" },
            _ => {
                if let Some(t) = w.strip_prefix("total=") {
                    let v = t.parse::<f64>().unwrap_or(0.0) / 1000.0;
                    if cur == "some" {
                        some = v;
                    } else {
                        full = v;
                    }
                }
            }
        }
    }
    (some, full)
}

/// Turn the guest console into phases. Tolerates noise and partial output.
pub fn parse_console(console: &str) -> (Vec<LabPhase>, Vec<String>) {
    let mut benches: BTreeMap<String, Vec<PhaseStats>> = BTreeMap::new();
    let mut vm: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut psi: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut errors = Vec::new();
    for line in console.lines() {
        // A console line may carry noise before the marker.
        let Some(at) = line.find('@') else { continue };
        let line = &line[at..];
        let mut parts = line.splitn(3, ' ');
        let (Some(kind), Some(tag)) = (parts.next(), parts.next()) else {
            continue;
        };
        let rest = parts.next().unwrap_or("");
        match kind {
            "@bench" => {
                let json = rest.split_once(' ').map(|(_, j)| j).unwrap_or("");
                match serde_json::from_str::<BenchReport>(json) {
                    Ok(r) => benches
                        .entry(tag.to_string())
                        .or_default()
                        .extend(r.strategies),
                    Err(e) => errors.push(format!("{tag}: unreadable bench output: {e}")),
                }
            }
            "@vmstat" => {
                vm.insert(tag.to_string(), parse_vmstat(rest));
            }
            "@psi" => {
                psi.insert(tag.to_string(), parse_psi_totals(rest));
            }
            "@error" | "@fatal" => errors.push(format!("{tag} {rest}")),
            _ => {}
        }
    }
    let mut phases = Vec::new();
    for name in ["idle", "pressure"] {
        let Some(strategies) = benches.remove(name) else {
            continue;
        };
        let (s0, s1) = (format!("{name}-start"), format!("{name}-end"));
        let mut reclaim = Reclaim::default();
        if let (Some(a), Some(b)) = (vm.get(&s0), vm.get(&s1)) {
            for (k, v1) in b {
                let v0 = a.get(k).copied().unwrap_or(0);
                reclaim.vmstat.insert(k.clone(), v1.saturating_sub(v0));
            }
        }
        if let (Some(a), Some(b)) = (psi.get(&s0), psi.get(&s1)) {
            reclaim.psi_some_ms = (b.0 - a.0).max(0.0);
            reclaim.psi_full_ms = (b.1 - a.1).max(0.0);
        }
        phases.push(LabPhase {
            phase: name.to_string(),
            strategies,
            reclaim,
        });
    }
    (phases, errors)
}

fn run_cmd(cmd: &mut std::process::Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| VmError::Serve(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        return Err(VmError::Serve(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn write(path: &Path, data: &str) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(VmError::io("cannot create directory", p))?;
    }
    std::fs::write(path, data).map_err(VmError::io("cannot write", path))
}

/// Extra flags for the guest's `strata trace` (`STRATA_LAB_TRACE`, e.g. `--naive` for the
/// naive bpftrace comparison or `--detail`): flags and numbers only.
fn trace_args() -> Result<String> {
    let a = std::env::var("STRATA_LAB_TRACE").unwrap_or_default();
    if a.chars()
        .all(|c| c.is_ascii_alphanumeric() || " -.".contains(c))
    {
        Ok(a)
    } else {
        Err(VmError::Command {
            command: format!("STRATA_LAB_TRACE={a:?}"),
            detail: "it may hold only flags and numbers (letters, digits, ' ', '-', '.')".into(),
            hint: "e.g. STRATA_LAB_TRACE=--naive",
        })
    }
}

/// Run the lab on one kernel. `progress` gets one short line per step.
pub fn run_kernel(
    strata: &Path,
    cfg: &LabConfig,
    which: &KernelSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<KernelRun> {
    let label = which.short_name();
    let dir = cfg.workdir.join(&label);
    let _ = std::fs::remove_dir_all(&dir);
    progress(&format!("{label}: fetching kernel"));
    let kernel = which.fetch()?;
    let initrd = dir.join("initrd.cpio");
    std::fs::create_dir_all(&dir).map_err(VmError::io("cannot create directory", &dir))?;
    strata_vm::initramfs::guest_initramfs(strata, &kernel, &initrd)?;

    progress(&format!(
        "{}: building the lab rootfs and a {} GiB scratch disk",
        label, cfg.disk_gib
    ));
    let layer = dir.join("layer");
    strata_harness::fixture::busybox_rootfs(&layer)?;
    std::fs::copy(strata, layer.join("bin/strata"))
        .map_err(VmError::io("cannot copy strata into", &layer))?;
    write(&layer.join("lab.sh"), LAB_SH)?;
    write(&layer.join("lab-trace-args"), &trace_args()?)?;
    let (upper, work) = (dir.join("ctr/upper"), dir.join("ctr/work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(VmError::io("cannot create directory", d))?;
    }
    let disk = dir.join("scratch.img");
    let f = std::fs::File::create(&disk).map_err(VmError::io("cannot create", &disk))?;
    f.set_len(cfg.disk_gib << 30)
        .map_err(VmError::io("cannot size", &disk))?;
    drop(f);
    run_cmd(
        std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&disk),
        "mkfs.ext4 on the scratch disk (install e2fsprogs)",
    )?;

    let spec = ServeSpec {
        lowers: vec![layer.clone()],
        upper,
        work,
        socket: dir.join("lab.sock"),
        tag: "strata".into(),
        lower: None,
        union: false,
    };
    let serve = ServeProcess::spawn(strata, &spec, None, &dir.join("serve.log"))?;
    let vm = VmConfig {
        cmdline: format!(
            "strata.tag=strata strata.cmd=\"/bin/sh /lab.sh {} {} {} {} {}\"",
            cfg.scenario.name(),
            cfg.n,
            cfg.dentries,
            cfg.interval_ms,
            cfg.cycles
        ),
        mem_mib: cfg.mem_mib,
        cpus: 2,
        virtiofs: spec.devices(),
        disks: vec![disk.clone()],
        timeout: cfg.timeout,
        ..VmConfig::new(&kernel.vmlinuz, &initrd)
    };
    let name = kernel.name.clone();
    let t0 = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let handle = vm.spawn_with(move |line| {
        if let Some(p) = line.find("@phase ").map(|i| &line[i + 7..]) {
            let _ = tx.send(p.to_string());
        } else if line.contains("strata: FATAL") || line.contains("@fatal") {
            let _ = tx.send(line.to_string());
        }
    })?;
    let waiter = std::thread::spawn(move || handle.wait());
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(p) => progress(&format!(
                "{name}: {p} [{:.0} s]",
                t0.elapsed().as_secs_f64()
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if waiter.is_finished() {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let out = waiter
        .join()
        .map_err(|_| VmError::Serve("the VM watcher thread panicked".into()))??;
    let _ = serve.wait(Duration::from_secs(10));
    let _ = std::fs::remove_file(&disk);
    // The whole console (`@trace-report` lines: strata trace's report), kept with --workdir.
    let _ = std::fs::write(dir.join("console.log"), &out.console);
    let (phases, mut errors) = parse_console(&out.console);
    if out.timed_out {
        errors.push(format!("the VM ran past the {:?} timeout", cfg.timeout));
    }
    if out.status != Some(0) {
        errors.push(format!(
            "lab script status {:?}; last console lines:\n{}",
            out.status,
            out.console
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    Ok(KernelRun {
        kernel: kernel.name.clone(),
        release: kernel.release.clone(),
        scenario: cfg.scenario,
        phases,
        vm_seconds: out.elapsed.as_secs_f64(),
        errors,
    })
}

/// `drop_caches=2` until at least half of the `count` negative dentries made for the cycle
/// are gone (field 5 of `/proc/sys/fs/dentry-state`, counted from before the first write: the
/// host holds others), at most 10 more times; how many more it took. One write may leave them
/// all: before 6.7 `drop_slab` takes `shrinker_rwsem` with `down_read_trylock` and gives up
/// while a mount holds or waits for it (the benches mount all the time), and a pass only
/// rotates dentries referenced since they joined the LRU. The lab's guest script
/// (`lab_guest/lab.sh`) does the same.
fn drop_negative_dentries(count: u64) -> std::io::Result<u32> {
    let negative = || -> u64 {
        std::fs::read_to_string("/proc/sys/fs/dentry-state")
            .ok()
            .and_then(|s| s.split_whitespace().nth(4).and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    };
    let before = negative();
    let mut repeats = 0;
    loop {
        std::fs::write("/proc/sys/vm/drop_caches", "2")?;
        if before.saturating_sub(negative()) >= count / 2 || repeats >= 10 {
            return Ok(repeats);
        }
        repeats += 1;
    }
}

/// `strata lab --host`: the same scenario on this machine, no VM. The benches run as child
/// processes of `strata` (one per strategy), the pressure runs in this process, and the result
/// goes through the same line protocol as a guest's console. Only `dentries` is supported here:
/// it needs nothing but a directory and `/proc/sys/vm/drop_caches` (which affects the whole
/// host: the caller warns). Everything created lives under `dir`, removed at the end.
pub fn run_host(
    strata: &Path,
    cfg: &LabConfig,
    dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<KernelRun> {
    use std::process::{Command, Stdio};
    if cfg.scenario != Scenario::Dentries {
        return Err(VmError::Serve(
            "--host runs only the dentries scenario (pagecache and memcg would squeeze the whole host)".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(VmError::io("cannot create directory", dir))?;
    let t0 = Instant::now();
    let mut console = String::new();
    let snap = |tag: &str, out: &mut String| {
        let vm = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
        let keep: Vec<String> = vm
            .lines()
            .filter(|l| {
                l.starts_with("pgscan_")
                    || l.starts_with("pgsteal_")
                    || l.starts_with("slabs_scanned")
                    || l.starts_with("allocstall_")
            })
            .map(str::to_owned)
            .collect();
        let _ = writeln!(out, "@vmstat {tag} {}", keep.join(" "));
        let psi = std::fs::read_to_string("/proc/pressure/memory").unwrap_or_default();
        let _ = writeln!(out, "@psi {tag} {}", psi.replace('\n', " "));
    };
    let strategies = ["overlay-mount", "tmpfs-mount", "strata", "strata-daemon"];
    let spawn = |phase: &str,
                 max: usize,
                 until: Option<&Path>|
     -> Result<Vec<(String, std::process::Child)>> {
        let mut kids = Vec::new();
        for s in strategies {
            let mut c = Command::new(strata);
            c.args(["bench", "create", "--strategy", s, "--json", "--samples"])
                .arg("--dir")
                .arg(dir.join(format!("b-{phase}-{s}")))
                .arg("--n")
                .arg(max.to_string())
                .arg("--interval-ms")
                .arg(cfg.interval_ms.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(u) = until {
                c.arg("--until").arg(u);
            }
            let child = c
                .spawn()
                .map_err(|e| VmError::Serve(format!("cannot start strata bench create: {e}")))?;
            kids.push((s.to_string(), child));
        }
        Ok(kids)
    };
    let collect = |phase: &str, kids: Vec<(String, std::process::Child)>, out: &mut String| {
        for (s, k) in kids {
            match k.wait_with_output() {
                Ok(o) if o.status.success() => {
                    let _ = writeln!(
                        out,
                        "@bench {phase} {s} {}",
                        String::from_utf8_lossy(&o.stdout).trim()
                    );
                }
                Ok(o) => {
                    let _ = writeln!(
                        out,
                        "@error {phase} {s} {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "@error {phase} {s} {e}");
                }
            }
        }
    };
    progress(&format!(
        "host: idle baseline ({} starts per strategy)",
        cfg.n
    ));
    snap("idle-start", &mut console);
    let kids = spawn("idle", cfg.n, None)?;
    collect("idle", kids, &mut console);
    snap("idle-end", &mut console);

    let neg = dir.join("neg");
    progress(&format!(
        "host: creating {} negative dentries",
        cfg.dentries
    ));
    make_negative_dentries(&neg, cfg.dentries)
        .map_err(VmError::io("cannot stat names in", &neg))?;
    let stop = dir.join("stop");
    snap("pressure-start", &mut console);
    // The `strata` strategy keeps one fd per iteration (see bench.rs): stay under the usual
    // 20 000 hard limit of a host shell.
    let kids = spawn("pressure", 15_000, Some(&stop))?;
    for c in 1..=cfg.cycles {
        progress(&format!(
            "host: reclaim cycle {c}/{} (drop_caches=2, then {} dentries again) [{:.0} s]",
            cfg.cycles,
            cfg.dentries,
            t0.elapsed().as_secs_f64()
        ));
        let repeats = drop_negative_dentries(cfg.dentries).map_err(VmError::io(
            "cannot write",
            Path::new("/proc/sys/vm/drop_caches"),
        ))?;
        if repeats > 0 {
            progress(&format!(
                "host: drop_caches repeated {repeats} times until the dentries were gone"
            ));
        }
        make_negative_dentries(&neg, cfg.dentries)
            .map_err(VmError::io("cannot stat names in", &neg))?;
    }
    std::fs::write(&stop, b"").map_err(VmError::io("cannot create", &stop))?;
    collect("pressure", kids, &mut console);
    snap("pressure-end", &mut console);
    let _ = std::fs::remove_dir_all(dir);
    let (phases, errors) = parse_console(&console);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(KernelRun {
        kernel: "host".into(),
        release,
        scenario: cfg.scenario,
        phases,
        vm_seconds: t0.elapsed().as_secs_f64(),
        errors,
    })
}

/// The table people read: one row per strategy × phase, idle and pressure side by side.
pub fn table(report: &LabReport) -> String {
    let mut out = String::new();
    for run in &report.runs {
        let _ = writeln!(
            out,
            "kernel {} ({}), scenario {}, run {:.0} s",
            run.kernel,
            run.release,
            run.scenario.name(),
            run.vm_seconds
        );
        let _ = writeln!(out, "  {:<9} {}", "when", PhaseStats::header());
        for ph in &run.phases {
            for s in &ph.strategies {
                let _ = writeln!(out, "  {:<9} {}", ph.phase, s.row());
            }
            let v = &ph.reclaim.vmstat;
            let g = |k: &str| v.get(k).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "  {:<9} reclaim: pgscan kswapd {} direct {}, pgsteal kswapd {} direct {}, slabs_scanned {}, allocstall {}, PSI some {:.0} ms full {:.0} ms",
                ph.phase,
                g("pgscan_kswapd"),
                g("pgscan_direct"),
                g("pgsteal_kswapd"),
                g("pgsteal_direct"),
                g("slabs_scanned"),
                g("allocstall"),
                ph.reclaim.psi_some_ms,
                ph.reclaim.psi_full_ms
            );
        }
        for e in &run.errors {
            let _ = writeln!(out, "  ! {e}");
        }
    }
    out
}

/// Max start latency of `strategy` in `phase` of a run, if measured.
pub fn max_start_ms(run: &KernelRun, phase: &str, strategy: &str) -> Option<f64> {
    run.phases
        .iter()
        .find(|p| p.phase == phase)?
        .strategies
        .iter()
        .find(|s| s.name == strategy && s.phase == Phase::Start)
        .map(|s| s.max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_markers() {
        let console = "\
noise @vmstat idle-start pgscan_kswapd 10 slabs_scanned 5 allocstall_normal 1 allocstall_movable 2
@psi idle-start some avg10=0.00 avg60=0.00 avg300=0.00 total=1000 full avg10=0.00 avg60=0.00 avg300=0.00 total=500
@bench idle strata {\"strategies\":[{\"name\":\"strata\",\"phase\":\"start\",\"n\":2,\"p50_ms\":0.2,\"p99_ms\":0.3,\"p999_ms\":0.3,\"max_ms\":0.3,\"samples_ms\":[0.2,0.3]}]}
@vmstat idle-end pgscan_kswapd 15 slabs_scanned 9 allocstall_normal 4 allocstall_movable 2
@psi idle-end some avg10=0.00 avg60=0.00 avg300=0.00 total=3000 full avg10=0.00 avg60=0.00 avg300=0.00 total=1500
@error pressure overlay-mount boom
";
        let (phases, errors) = parse_console(console);
        assert_eq!(phases.len(), 1);
        let p = &phases[0];
        assert_eq!(p.strategies[0].samples_ms, vec![0.2, 0.3]);
        assert_eq!(p.reclaim.vmstat["pgscan_kswapd"], 5);
        assert_eq!(p.reclaim.vmstat["allocstall"], 3);
        assert_eq!(p.reclaim.psi_some_ms, 2.0);
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn negative_dentries_helper_creates_nothing() {
        let d = tempfile::tempdir().unwrap();
        make_negative_dentries(d.path(), 1000).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
