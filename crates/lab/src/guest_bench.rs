//! `strata bench guest`: the same guest kernel, under qemu, running the same I/O workloads over
//! three ways of giving a micro-VM its container rootfs:
//!
//! - `virtiofsd` (a, the peer: what Kata-style runtimes do): a **host** `mount -t overlay` of
//!   the layers plus a host upper dir, shared by virtiofsd (`--cache=auto
//!   --thread-pool-size=1`, Kata's defaults) and mounted in the guest with `mount -t virtiofs`;
//! - `strata` (b): `strata serve` serves the layer dirs, upper and work; the guest assembles the
//!   overlay itself (`strata guest mount`);
//! - `erofs` (c): one EROFS image per layer (`mkfs.erofs`) on virtio-blk, and a guest overlay
//!   with its upper on a scratch ext4 disk (virtio-blk, a sparse file on the host).
//!
//! Every setup boots the same kernel with the same initramfs (busybox, the static `strata`
//! binary, [`BENCH_SH`] as `/init`), the same RAM and vCPUs; each run of each setup is a fresh
//! boot with fresh upper/work. Inside, `strata bench guest-io` runs each workload after
//! `sync` + `drop_caches=3` (so every workload starts with cold guest caches: page cache,
//! dentries and inodes) and prints one `@result` line. The host's page cache is warm for all
//! three setups (every layer file and image is read once before the first boot), so "cold"
//! means cold in the guest: what a container sees on its first start on a host that already
//! ran the image.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use strata_harness::session::{ServeProcess, ServeSpec};
use strata_vm::initramfs::{Contents, Initramfs};
use strata_vm::kernel::{GuestKernel, KernelChoice, GUEST_MODULES};
use strata_vm::qemu::VmConfig;
use strata_vm::{Result, VmError};

/// The guest script (`/init` of the bench initramfs).
pub const BENCH_SH: &str = include_str!("lab_guest/bench_guest.sh");
/// The environment variable that makes `strata serve` print its request counts when the guest
/// unmounts (FUSE DESTROY): `strata serve: opstats {json}` on stderr.
pub const OPSTATS_ENV: &str = strata_serve::tree::opstats::OPSTATS_ENV;
/// Overlay options of every guest (and host) overlay in the bench: strata's defaults.
pub const OVERLAY_OPTIONS: &str = "index=off,redirect_dir=off,metacopy=off";
/// Makes `strata serve` give the guest one overlay lower per layer instead of `/lower`.
pub const SEPARATE_LAYERS_ENV: &str = "STRATA_SERVE_SEPARATE_LAYERS";
/// The virtiofsd binary of setup (a) (`cargo install virtiofsd --locked`).
pub const VIRTIOFSD: &str = "virtiofsd";

/// One way of giving the guest its rootfs.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Setup {
    /// (a) virtiofsd sharing a host overlay mount.
    Virtiofsd,
    /// (b0) strata serve with one guest overlay lower per layer (`STRATA_SERVE_SEPARATE_LAYERS`),
    /// for comparing with the merged lower of (b); only when asked for.
    #[serde(rename = "strata-layers")]
    StrataLayers,
    /// (b) strata serve + guest overlay.
    Strata,
    /// (c) EROFS images on virtio-blk + guest overlay, upper on a scratch ext4 disk.
    Erofs,
    /// (d) strata serve for the upper, the layers as one merged EROFS image on virtio-blk.
    #[serde(rename = "strata-erofs")]
    StrataErofs,
    /// (e) strata serve as in (b), the workloads run in the served upper dir itself, with no
    /// guest overlay on their path: the bound for a daemon that served the merged read-write
    /// tree; create, write and seqread only, and only when asked for.
    #[serde(rename = "strata-upper")]
    StrataUpper,
    /// (f) strata serve --union: the daemon merges upper and layers itself and the guest mounts
    /// the result as its root, with no overlay of its own.
    #[serde(rename = "strata-union")]
    StrataUnion,
}

impl Setup {
    /// The default setups: (a), (b), (c), (d), (f).
    pub const ALL: [Setup; 5] = [
        Setup::Virtiofsd,
        Setup::Strata,
        Setup::Erofs,
        Setup::StrataErofs,
        Setup::StrataUnion,
    ];
    /// Every setup, in table order.
    pub const EVERY: [Setup; 7] = [
        Setup::Virtiofsd,
        Setup::StrataLayers,
        Setup::Strata,
        Setup::Erofs,
        Setup::StrataErofs,
        Setup::StrataUpper,
        Setup::StrataUnion,
    ];
    /// Whether the setup runs `strata serve` (what `--vary` changes).
    pub fn serves(self) -> bool {
        !matches!(self, Setup::Virtiofsd | Setup::Erofs)
    }
    /// The workloads a setup can time: (e) has no image under its root.
    pub fn times(self, w: Workload) -> bool {
        self != Setup::StrataUpper
            || matches!(w, Workload::Create | Workload::Write | Workload::Seqread)
    }
    pub fn name(self) -> &'static str {
        match self {
            Setup::Virtiofsd => "virtiofsd",
            Setup::StrataLayers => "strata-layers",
            Setup::Strata => "strata",
            Setup::Erofs => "erofs",
            Setup::StrataErofs => "strata-erofs",
            Setup::StrataUpper => "strata-upper",
            Setup::StrataUnion => "strata-union",
        }
    }
    /// The long label used in tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Setup::Virtiofsd => "(a) virtiofsd + host overlay",
            Setup::StrataLayers => "(b0) strata, one overlay lower per layer",
            Setup::Strata => "(b) strata serve + guest overlay",
            Setup::Erofs => "(c) EROFS on virtio-blk + guest overlay",
            Setup::StrataErofs => "(d) strata serve upper + merged EROFS lower on virtio-blk",
            Setup::StrataUpper => {
                "(e) strata serve, workloads in the served upper (no guest overlay)"
            }
            Setup::StrataUnion => {
                "(f) strata serve --union: merged by the daemon, no guest overlay"
            }
        }
    }
}

/// One timed workload.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Read every regular file of the rootfs to the end.
    Read,
    /// Walk the whole tree: readdir every directory, lstat every entry (find + stat).
    Walk,
    /// Create `--small` files of 1 KiB in a new directory (in the upper), then syncfs.
    Create,
    /// Write one `--seq-mib` MiB file sequentially in 1 MiB writes, then fsync.
    Write,
    /// Read that file back (after dropping caches); needs `write` first in the same boot.
    Seqread,
    /// Not timed I/O: the pjdfstest conformance suite, as root, chrooted into the rootfs, in a
    /// new directory on it (`--rootfs conformance`; `scripts/conformance` reads its `@pjd`
    /// lines). Never part of the default workloads.
    Pjdfstest,
    /// Not file I/O: `statfs` on the rootfs `--small` × 4 times. The kernel caches no statfs
    /// answer, so over virtio-fs every call is one FUSE STATFS round trip (the guest overlay
    /// asks its upper): the transport's latency, guest to server and back, with no work on
    /// the host beyond one `fstatfs`. Not a default workload.
    Statfs,
    /// Append `--small` × 4 lines of 100 bytes to one new file, one `write()` each (a log, a
    /// journal), then fsync: the cost of a small write to a file already open, which over
    /// virtio-fs is a WRITE each plus whatever the guest asks around it. Not a default
    /// workload.
    Append,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::Read,
        Workload::Walk,
        Workload::Create,
        Workload::Write,
        Workload::Seqread,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Walk => "walk",
            Workload::Create => "create",
            Workload::Write => "write",
            Workload::Seqread => "seqread",
            Workload::Pjdfstest => "pjdfstest",
            Workload::Statfs => "statfs",
            Workload::Append => "append",
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Workload::ALL
            .into_iter()
            .chain([Workload::Pjdfstest, Workload::Statfs, Workload::Append])
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown workload {s:?}: use read, walk, create, write, seqread, statfs, \
                     append or pjdfstest"
                )
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Guest side: `strata bench guest-io WORKLOAD DIR`.

/// What one guest workload did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IoResult {
    pub seconds: f64,
    /// Files read / entries stat'ed / files created / MiB written or read.
    pub count: u64,
    pub bytes: u64,
}

/// Where the write workloads put their files, below the rootfs (they land in the upper).
const SCRATCH_DIR: &str = "bench-io";

/// Guest side: `sync`, drop the guest's caches, then run and time `w` on the rootfs at `root`.
pub fn guest_io(w: Workload, root: &Path, small: u64, seq_mib: u64) -> std::io::Result<IoResult> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")?;
    let t0 = Instant::now();
    let (count, bytes) = match w {
        Workload::Read => {
            let mut buf = vec![0u8; 256 << 10];
            let mut n = (0u64, 0u64);
            walk(root, &mut |p, ft| {
                if ft.is_file() {
                    let mut f = std::fs::File::open(p)?;
                    loop {
                        let k = f.read(&mut buf)?;
                        if k == 0 {
                            break;
                        }
                        n.1 += k as u64;
                    }
                    n.0 += 1;
                }
                Ok(())
            })?;
            n
        }
        Workload::Walk => {
            let mut n = (0u64, 0u64);
            walk(root, &mut |p, _| {
                let m = std::fs::symlink_metadata(p)?;
                n.0 += 1;
                n.1 += std::os::unix::fs::MetadataExt::size(&m);
                Ok(())
            })?;
            n
        }
        Workload::Create => {
            let dir = root.join(SCRATCH_DIR).join("small");
            std::fs::create_dir_all(&dir)?;
            let data = [0x5au8; 1024];
            for i in 0..small {
                let mut f = std::fs::File::create(dir.join(format!("f{i}")))?;
                f.write_all(&data)?;
            }
            let d = std::fs::File::open(&dir)?;
            nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d))
                .map_err(std::io::Error::from)?;
            (small, small * 1024)
        }
        Workload::Write => {
            let dir = root.join(SCRATCH_DIR);
            std::fs::create_dir_all(&dir)?;
            let mut f = std::fs::File::create(dir.join("seq"))?;
            let block = vec![0xa5u8; 1 << 20];
            for _ in 0..seq_mib {
                f.write_all(&block)?;
            }
            f.sync_all()?;
            (seq_mib, seq_mib << 20)
        }
        Workload::Seqread => {
            let mut f = std::fs::File::open(root.join(SCRATCH_DIR).join("seq"))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut bytes = 0u64;
            loop {
                let k = f.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                bytes += k as u64;
            }
            (bytes >> 20, bytes)
        }
        Workload::Pjdfstest => (pjdfstest(root)?, 0),
        Workload::Append => {
            let dir = root.join(SCRATCH_DIR);
            std::fs::create_dir_all(&dir)?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("log"))?;
            let n = small * 4;
            let mut line = [b'.'; 100];
            line[99] = b'\n';
            for _ in 0..n {
                f.write_all(&line)?;
            }
            f.sync_all()?;
            (n, n * 100)
        }
        Workload::Statfs => {
            let n = small * 4;
            for _ in 0..n {
                nix::sys::statfs::statfs(root).map_err(std::io::Error::from)?;
            }
            (n, 0)
        }
    };
    Ok(IoResult {
        seconds: t0.elapsed().as_secs_f64(),
        count,
        bytes,
    })
}

/// Where the conformance rootfs keeps pjdfstest's configuration, and the optional test filter
/// (one pattern per line: a CI subset).
pub const PJDFSTEST_CONF: &str = "etc/pjdfstest.toml";
pub const PJDFSTEST_FILTER: &str = "etc/pjdfstest.filter";

/// Guest side of [`Workload::Pjdfstest`]: run the suite chrooted into `root` (with its /proc),
/// in a fresh directory on the rootfs, and print one `@pjd NAME ok|FAILED|skipped` line per
/// test case (plus `@pjd-why NAME TEXT` with a failure's first line). Returns the case count.
fn pjdfstest(root: &Path) -> std::io::Result<u64> {
    let proc = root.join("proc");
    let mounted = nix::mount::mount(
        Some("proc"),
        &proc,
        Some("proc"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .is_ok();
    let dir = root.join("pjdfstest-run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let filter = std::fs::read_to_string(root.join(PJDFSTEST_FILTER)).unwrap_or_default();
    let out = std::process::Command::new("chroot")
        .arg(root)
        .args(["/bin/pjdfstest", "-c"])
        .arg(format!("/{PJDFSTEST_CONF}"))
        .args(["-p", "/pjdfstest-run"])
        .args(filter.split_whitespace())
        .output();
    if mounted {
        let _ = nix::mount::umount(&proc);
    }
    let out = out?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut n = 0u64;
    let mut last_failed: Option<String> = None;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next(), f.next()) {
            (Some(name), Some(r @ ("ok" | "FAILED" | "skipped")), None) if name.contains("::") => {
                println!("@pjd {name} {r}");
                n += 1;
                last_failed = (r == "FAILED").then(|| name.to_string());
            }
            _ => {
                if let Some(name) = last_failed.take() {
                    println!("@pjd-why {name} {}", line.trim());
                }
            }
        }
    }
    if n == 0 {
        return Err(std::io::Error::other(format!(
            "pjdfstest ran no test ({}):\n{text}",
            out.status
        )));
    }
    Ok(n)
}

/// Depth-first walk below `dir` (not following symlinks, not crossing into [`SCRATCH_DIR`] at
/// the top), calling `f` for every entry.
fn walk(
    dir: &Path,
    f: &mut dyn FnMut(&Path, std::fs::FileType) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    let mut top = true;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if top && e.file_name() == SCRATCH_DIR {
                continue;
            }
            let p = e.path();
            let ft = e.file_type()?;
            f(&p, ft)?;
            if ft.is_dir() {
                stack.push(p);
            }
        }
        top = false;
    }
    Ok(())
}

/// The `@result` line for one workload.
pub fn result_line(w: Workload, r: &IoResult) -> String {
    format!(
        "@result {} {:.6} {} {}",
        w.name(),
        r.seconds,
        r.count,
        r.bytes
    )
}

// ---------------------------------------------------------------------------------------------
// Host side.

/// Which rootfs to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RootfsKind {
    /// Three layers unpacked from Debian 12 packages (thousands of files), cached.
    Debian,
    /// Two tiny layers (busybox and a few files): the CI smoke test.
    Tiny,
    /// The tiny layers plus pjdfstest (`$PJDFSTEST`, else on `$PATH` or in ~/.cargo/bin) with
    /// the glibc it links, its users and its configuration: for the `pjdfstest` workload.
    Conformance,
}

/// One `strata bench guest` run.
#[derive(Debug, Clone)]
pub struct GuestBenchConfig {
    pub kernel: KernelChoice,
    pub setups: Vec<Setup>,
    pub workloads: Vec<Workload>,
    /// Boots per setup (interleaved: a b c a b c ...).
    pub runs: usize,
    pub rootfs: RootfsKind,
    /// Files created by `create`.
    pub small: u64,
    /// MiB written by `write` and read by `seqread`.
    pub seq_mib: u64,
    pub mem_mib: u32,
    pub cpus: u32,
    /// Where sockets, uppers, disks and logs live (removed by the caller).
    pub workdir: PathBuf,
    pub timeout: Duration,
    /// Also boot (b) once per workload (and once with none) to get each workload's FUSE
    /// request counts.
    pub opstats: bool,
    /// `(NAME, VALUE)`: also boot every setup that runs `strata serve` with `NAME=VALUE` in
    /// its environment, in the same interleaved runs (an A/B of a daemon setting on one
    /// machine at one time). Those samples carry the variant `NAME=VALUE`.
    pub vary: Option<(String, String)>,
}

/// Parse `--vary NAME=VALUE`: an environment variable name (letters, digits, `_`) and a value.
pub fn parse_vary(s: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE, e.g. STRATA_SERVE_POLL_US=0"))?;
    let valid = !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!("{k:?} is not an environment variable name"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// One timed workload of one boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub setup: Setup,
    /// `NAME=VALUE` when the boot ran `strata serve` with `--vary`'s setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub workload: Workload,
    pub run: usize,
    pub seconds: f64,
    pub count: u64,
    pub bytes: u64,
}

/// The summary of one setup (and variant) × workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub setup: Setup,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub workload: Workload,
    pub n: usize,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    /// median / median of (a); `None` without (a).
    pub ratio_to_virtiofsd: Option<f64>,
    pub count: u64,
    pub bytes: u64,
}

impl Summary {
    /// The setup's name, with `+NAME=VALUE` for a `--vary` variant.
    pub fn label(&self) -> String {
        variant_label(self.setup, self.variant.as_deref())
    }
}

fn variant_label(setup: Setup, variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("{}+{v}", setup.name()),
        None => setup.name().to_string(),
    }
}

/// What the rootfs under test holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootfsInfo {
    pub kind: Option<RootfsKind>,
    pub layers: usize,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// The whole result (`--json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestBenchReport {
    pub kernel: String,
    pub release: String,
    pub mem_mib: u32,
    pub cpus: u32,
    pub runs: usize,
    pub small: u64,
    pub seq_mib: u64,
    pub rootfs: RootfsInfo,
    pub samples: Vec<Sample>,
    pub summary: Vec<Summary>,
    /// FUSE requests strata served, per boot label (`run1`, … for (b), `SETUP/run1`, … for the
    /// other strata setups, or the workload with `--opstats`, `boot` = mount and unmount only;
    /// (f)'s prefixed `strata-union/`), by operation: `{"lookup": 123, …}`; failed requests as
    /// `lookup!ENOENT`.
    #[serde(default)]
    pub opstats: BTreeMap<String, BTreeMap<String, u64>>,
    /// Setups skipped, with why.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// Where every setup's upper, work dir and scratch disk lived: a fresh journaled ext4 the
    /// bench loop-mounts, or the workdir's filesystem without loop devices.
    #[serde(default)]
    pub data_fs: String,
    pub errors: Vec<String>,
}

/// Build the rootfs layers (topmost first) for `kind`, cached for [`RootfsKind::Debian`].
pub fn rootfs_layers(kind: RootfsKind, workdir: &Path) -> Result<Vec<PathBuf>> {
    match kind {
        RootfsKind::Tiny => {
            let base = workdir.join("rootfs/layers/1");
            let top = workdir.join("rootfs/layers/0");
            let _ = std::fs::remove_dir_all(workdir.join("rootfs"));
            strata_harness::fixture::busybox_rootfs(&base)?;
            mkdir(&base.join("etc/old"))?;
            write(&base.join("etc/old/a"), "a\n")?;
            write(&base.join("etc/gone"), "gone\n")?;
            mkdir(&top.join("etc/old"))?;
            write(&top.join("etc/hostname"), "bench\n")?;
            write(&top.join("etc/old/b"), "b\n")?;
            strata_harness::fixture::set_opaque(&top.join("etc/old"))?;
            strata_harness::fixture::whiteout(&top.join("etc/gone"))?;
            Ok(vec![top, base])
        }
        RootfsKind::Debian => debian_layers(),
        RootfsKind::Conformance => {
            let layers = rootfs_layers(RootfsKind::Tiny, workdir)?;
            add_pjdfstest(&layers[1])?;
            Ok(layers)
        }
    }
}

/// The pjdfstest binary on this host: `$PJDFSTEST`, else `pjdfstest` on `$PATH`, else
/// `~/.cargo/bin/pjdfstest` (`cargo install pjdfstest`).
pub fn pjdfstest_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PJDFSTEST") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = strata_vm::qemu::find_in_path("pjdfstest") {
        return Ok(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = home.join(".cargo/bin/pjdfstest");
    if p.is_file() {
        return Ok(p);
    }
    Err(VmError::MissingTool {
        tool: "pjdfstest (cargo install pjdfstest; or set PJDFSTEST)",
    })
}

/// Put pjdfstest into the layer `base`: the binary, every library `ldd` lists for it (it links
/// glibc dynamically), the users and groups it switches to, and its configuration.
fn add_pjdfstest(base: &Path) -> Result<()> {
    let bin = pjdfstest_binary()?;
    let copy = |from: &Path, to: &Path| -> Result<()> {
        if let Some(d) = to.parent() {
            mkdir(d)?;
        }
        std::fs::copy(from, to).map_err(VmError::io("cannot copy to", to))?;
        Ok(())
    };
    copy(&bin, &base.join("bin/pjdfstest"))?;
    let ldd = strata_vm::cmd::run(Command::new("ldd").arg(&bin), "ldd", "install libc-bin")?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux… (0x…)"
        let Some(lib) = line.split_whitespace().find(|w| w.starts_with('/')) else {
            continue;
        };
        let lib = Path::new(lib);
        if let Ok(rel) = lib.strip_prefix("/") {
            copy(lib, &base.join(rel))?;
        }
    }
    let append = |rel: &str, text: &str| -> Result<()> {
        let p = base.join(rel);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .map_err(VmError::io("cannot open", &p))?;
        f.write_all(text.as_bytes())
            .map_err(VmError::io("cannot write", &p))
    };
    append(
        "etc/passwd",
        "nobody:x:65534:65534:nobody:/:/bin/false\ntests:x:1001:1001:tests:/:/bin/false\n",
    )?;
    append("etc/group", "nobody:x:65534:\ntests:x:1001:tests\n")?;
    // naptime above the host's timestamp granularity (a jiffy): the timestamp tests compare
    // times taken naptime apart.
    write(
        &base.join(PJDFSTEST_CONF),
        "[features]\nposix_fallocate = {}\n\n[settings]\nnaptime = 0.05\nallow_remount = false\n\n\
         [dummy_auth]\nentries = [[\"nobody\", \"nobody\"], [\"tests\", \"tests\"]]\n",
    )?;
    if let Some(f) = std::env::var_os("STRATA_PJDFSTEST_FILTER") {
        write(&base.join(PJDFSTEST_FILTER), f.to_string_lossy().as_ref())?;
    }
    Ok(())
}

/// Debian 12 packages per layer, bottom layer last (overlayfs lowerdir order).
const DEBIAN_LAYERS: &[&[&str]] = &[
    // 0 (top): perl modules, vim runtime files, man pages: many small files.
    &["perl-modules-5.36", "libperl5.36", "vim-runtime", "git-man"],
    // 1: python and ICU.
    &[
        "python3.11-minimal",
        "libpython3.11-minimal",
        "libpython3.11-stdlib",
        "libicu72",
    ],
    // 2 (base): libc, coreutils, shells, time zones, locales.
    &[
        "libc6",
        "coreutils",
        "bash",
        "perl-base",
        "libssl3",
        "libstdc++6",
        "tzdata",
        "locales",
    ],
];
/// Bump when the layer recipe changes (the cache key).
const DEBIAN_ROOTFS_VERSION: u32 = 1;

/// The Debian rootfs: `apt-get download` + `dpkg-deb -x` per layer, built once into
/// `$STRATA_CACHE/guest-bench/debian-vN/layers/{0,1,2}` (published by rename), plus what image
/// updates leave in an upper layer: the top layer deletes a base file (whiteout) and replaces a
/// base directory (opaque).
fn debian_layers() -> Result<Vec<PathBuf>> {
    let root = strata_vm::kernel::cache_dir()
        .join("guest-bench")
        .join(format!("debian-v{DEBIAN_ROOTFS_VERSION}"));
    let layers: Vec<PathBuf> = (0..DEBIAN_LAYERS.len())
        .map(|i| root.join("layers").join(i.to_string()))
        .collect();
    if root.join("complete").is_file() {
        return Ok(layers);
    }
    let tmp = root.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let debs = tmp.join("debs");
    mkdir(&debs)?;
    for (i, pkgs) in DEBIAN_LAYERS.iter().enumerate() {
        strata_vm::cmd::run(
            Command::new("apt-get")
                .arg("download")
                .args(*pkgs)
                .current_dir(&debs),
            "apt-get",
            "apt-get download of the bench rootfs packages failed; run apt-get update",
        )?;
        let layer = tmp.join("layers").join(i.to_string());
        mkdir(&layer)?;
        for p in *pkgs {
            let deb = std::fs::read_dir(&debs)
                .map_err(VmError::io("cannot list", &debs))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|d| {
                    d.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{p}_")) && n.ends_with(".deb"))
                })
                .ok_or_else(|| VmError::Serve(format!("apt-get download left no {p}_*.deb")))?;
            strata_vm::cmd::run(
                Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&layer),
                "dpkg-deb",
                "dpkg-deb -x failed",
            )?;
            let _ = std::fs::remove_file(&deb);
        }
    }
    // Image-update leftovers in the top layer: a deleted base file and a replaced base dir.
    let top = tmp.join("layers/0");
    mkdir(&top.join("usr/bin"))?;
    strata_harness::fixture::whiteout(&top.join("usr/bin/dir"))?;
    let replaced = top.join("usr/share/doc/coreutils");
    mkdir(&replaced)?;
    write(&replaced.join("README"), "replaced by the top layer\n")?;
    strata_harness::fixture::set_opaque(&replaced)?;
    let _ = std::fs::remove_dir_all(&debs);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&tmp, &root).map_err(VmError::io("cannot publish", &root))?;
    write(&root.join("complete"), "")?;
    Ok(layers)
}

/// Count what a set of layer dirs holds (all layers, duplicates counted per layer).
pub fn rootfs_info(kind: RootfsKind, layers: &[PathBuf]) -> RootfsInfo {
    let mut info = RootfsInfo {
        kind: Some(kind),
        layers: layers.len(),
        ..Default::default()
    };
    for l in layers {
        let _ = walk(l, &mut |p, ft| {
            if ft.is_file() {
                info.files += 1;
                info.bytes += std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0);
            } else if ft.is_dir() {
                info.dirs += 1;
            } else if ft.is_symlink() {
                info.symlinks += 1;
            }
            Ok(())
        });
    }
    info
}

/// One EROFS image per layer (`mkfs.erofs`, uncompressed, xattrs kept), next to the cached
/// layers or in the workdir; rebuilt when missing.
fn erofs_images(layers: &[PathBuf], dir: &Path) -> Result<Vec<PathBuf>> {
    mkdir(dir)?;
    let mut out = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let img = dir.join(format!("{i}.erofs"));
        if !img.is_file() {
            let tmp = dir.join(format!("{i}.erofs.tmp"));
            strata_vm::cmd::run(
                Command::new("mkfs.erofs").arg("--quiet").arg(&tmp).arg(l),
                "mkfs.erofs (erofs-utils)",
                "install erofs-utils (scripts/bench-guest installs it)",
            )?;
            std::fs::rename(&tmp, &img).map_err(VmError::io("cannot publish", &img))?;
        }
        out.push(img);
    }
    Ok(out)
}

/// `strata serve` of `layers`, `upper` and `work` on `socket`, tag `strata`, with `extra`
/// options.
fn serve_argv(
    strata: &Path,
    socket: &Path,
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    extra: &[&str],
) -> Vec<std::ffi::OsString> {
    let mut argv: Vec<std::ffi::OsString> = vec![
        strata.into(),
        "serve".into(),
        "--socket".into(),
        socket.into(),
        "--upper".into(),
        upper.into(),
        "--work".into(),
        work.into(),
        "--tag".into(),
        "strata".into(),
    ];
    argv.extend(extra.iter().map(Into::into));
    for l in layers {
        argv.extend(["--lower".into(), l.into()]);
    }
    argv
}

/// `strata serve` for the upper and work only, the layers on the EROFS disk `serial`
/// (`--lower-block`; the layers are still named, as the plan is made from them), tag `strata`.
pub(crate) fn serve_lower_block_argv(
    strata: &Path,
    socket: &Path,
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    serial: &str,
) -> Vec<std::ffi::OsString> {
    serve_argv(
        strata,
        socket,
        layers,
        upper,
        work,
        &["--lower-block", serial],
    )
}

/// `strata serve --union` of the layers, upper and work, tag `strata`: setup (f).
pub(crate) fn serve_union_argv(
    strata: &Path,
    socket: &Path,
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Vec<std::ffi::OsString> {
    serve_argv(strata, socket, layers, upper, work, &["--union"])
}

/// The layers' merged EROFS image as the store builds it (`strata image import --erofs`), in
/// `dir`; rebuilt when missing.
pub(crate) fn merged_erofs_image(layers: &[PathBuf], dir: &Path) -> Result<PathBuf> {
    mkdir(dir)?;
    let img = dir.join("merged.erofs");
    if img.is_file() {
        return Ok(img);
    }
    let scratch = tempfile::Builder::new()
        .prefix(".merged-erofs-")
        .tempdir_in(dir)
        .map_err(VmError::io("cannot create a directory in", dir))?;
    let tmp = dir.join("merged.erofs.tmp");
    strata_store::erofs::build_merged_image(layers, scratch.path(), &tmp)
        .map_err(|e| VmError::Serve(format!("merged EROFS image: {e}")))?;
    std::fs::rename(&tmp, &img).map_err(VmError::io("cannot publish", &img))?;
    Ok(img)
}

/// Read every file below `dir` (or `dir` itself if a file) once, so the host page cache is warm.
fn warm_host_cache(path: &Path) {
    let mut buf = vec![0u8; 1 << 20];
    let mut read_all = |p: &Path| {
        if let Ok(mut f) = std::fs::File::open(p) {
            while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
        }
    };
    if path.is_file() {
        read_all(path);
        return;
    }
    let _ = walk(path, &mut |p, ft| {
        if ft.is_file() {
            read_all(p);
        }
        Ok(())
    });
}

/// The bench initramfs: busybox (+ applet links), `strata` (stripped) as `/bin/strata`, [`BENCH_SH`] as
/// `/init`, the guest modules plus erofs (and its dependency) and their load order.
pub fn bench_initramfs(strata: &Path, kernel: &GuestKernel, out: &Path) -> Result<()> {
    strata_vm::elf::check_static(strata)?;
    let busybox = strata_harness::fixture::static_busybox()?;
    let list = strata_vm::cmd::run(
        Command::new(&busybox).arg("--list"),
        "busybox",
        "reinstall busybox-static (scripts/install-deps.sh)",
    )?;
    let mut cpio = Initramfs::new();
    for d in ["proc", "sys", "dev", "run", "mnt", "tmp", "lib/modules"] {
        cpio.dir(d, 0o755);
    }
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.file("init", 0o755, BENCH_SH.as_bytes());
    cpio.file("bin/busybox", 0o755, busybox.as_path());
    cpio.file(
        "bin/strata",
        0o755,
        Contents::StrippedElf(strata.to_path_buf()),
    );
    for a in String::from_utf8_lossy(&list.stdout).lines().map(str::trim) {
        if !a.is_empty() && !a.contains('/') && a != "busybox" {
            cpio.symlink(&format!("bin/{a}"), "busybox");
        }
    }
    // GUEST_MODULES has erofs (and libcrc32c) for EROFS layer devices.
    let names: Vec<&str> = GUEST_MODULES.to_vec();
    let mut order = String::new();
    for m in kernel.modules(&names)? {
        let Some(name) = m.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        cpio.file(&format!("lib/modules/{name}"), 0o644, m.as_path());
        order.push_str(&name);
        order.push('\n');
    }
    cpio.file("lib/modules/order", 0o644, order.into_bytes());
    cpio.write_to(out)
}

/// A host `mount -t overlay` for setup (a), unmounted (lazily, if busy) when dropped.
pub(crate) struct HostOverlay {
    merged: PathBuf,
}

impl HostOverlay {
    pub(crate) fn mount(
        layers: &[PathBuf],
        upper: &Path,
        work: &Path,
        merged: &Path,
    ) -> Result<Self> {
        let lower: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={},{OVERLAY_OPTIONS}",
            lower.join(":"),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| VmError::Io {
            what: "cannot mount the host overlay of setup (a) (needs root)",
            path: merged.to_path_buf(),
            source: e.into(),
        })?;
        Ok(HostOverlay {
            merged: merged.to_path_buf(),
        })
    }
}

impl Drop for HostOverlay {
    fn drop(&mut self) {
        if nix::mount::umount(&self.merged).is_err() {
            let _ = nix::mount::umount2(&self.merged, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Where every setup's upper, work dir, host overlay and scratch disk live: a fresh journaled
/// ext4 in a sparse file under the workdir, loop-mounted, unmounted and deleted when dropped.
///
/// Why not the workdir itself: creates on the host's filesystem then depend on what it did
/// before. On an ext4 without a journal (this project's CI machine) the kernel skips inodes
/// freed within the last 60-360 s when it allocates one (`recently_deleted` in
/// fs/ext4/ialloc.c): 5000 creates near earlier deletions took 2-10x as long, by the order
/// of the setups. A journaled ext4, as on a production host, does not do that, and a fresh
/// one is the same for every setup and run. Without loop devices the workdir is used.
pub(crate) struct DataFs {
    pub(crate) dir: PathBuf,
    img: Option<PathBuf>,
    pub(crate) what: String,
}

impl DataFs {
    /// Size of the sparse image: one boot's data at a time (the 256 MiB write, a scratch disk).
    const SIZE: &'static str = "8G";

    pub(crate) fn new(workdir: &Path) -> DataFs {
        let dir = workdir.join("data");
        let img = workdir.join("data.ext4");
        match Self::mount(&dir, &img) {
            Ok(()) => DataFs {
                dir,
                img: Some(img),
                what: format!(
                    "a fresh journaled ext4 ({} sparse file, loop-mounted)",
                    Self::SIZE
                ),
            },
            Err(e) => {
                let _ = std::fs::remove_file(&img);
                let _ = std::fs::create_dir_all(&dir);
                DataFs {
                    dir,
                    img: None,
                    what: format!("the workdir's filesystem (no loop-mounted ext4: {e})"),
                }
            }
        }
    }

    fn mount(dir: &Path, img: &Path) -> Result<()> {
        mkdir(dir)?;
        let _ = std::fs::remove_file(img);
        strata_vm::cmd::run(
            Command::new("truncate").args(["-s", Self::SIZE]).arg(img),
            "truncate",
            "install coreutils",
        )?;
        // Inode tables and journal written now: no ext4lazyinit thread writing during the runs.
        strata_vm::cmd::run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
                .arg(img),
            "mkfs.ext4",
            "install e2fsprogs",
        )?;
        strata_vm::cmd::run(
            Command::new("mount").args(["-o", "loop"]).arg(img).arg(dir),
            "mount -o loop",
            "needs root and loop devices (/dev/loop-control)",
        )?;
        Ok(())
    }
}

impl Drop for DataFs {
    fn drop(&mut self) {
        if let Some(img) = &self.img {
            if nix::mount::umount(&self.dir).is_err() {
                let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
            }
            let _ = std::fs::remove_file(img);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running virtiofsd; killed when dropped.
pub(crate) struct Virtiofsd(Child);

impl Virtiofsd {
    pub(crate) fn spawn(shared: &Path, socket: &Path, log: &Path) -> Result<Self> {
        let logf = std::fs::File::create(log).map_err(VmError::io("cannot create", log))?;
        let logf2 = logf
            .try_clone()
            .map_err(VmError::io("cannot duplicate", log))?;
        let mut cmd = Command::new(VIRTIOFSD);
        cmd.arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(shared)
            .args(["--cache=auto", "--thread-pool-size=1"])
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(logf2);
        strata_vm::cmd::kill_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| VmError::Command {
            command: strata_vm::cmd::describe(&cmd),
            detail: e.to_string(),
            hint: "install it: scripts/bench-guest (cargo install virtiofsd --locked)",
        })?;
        let mut v = Virtiofsd(child);
        let t0 = Instant::now();
        while !std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
            if let Ok(Some(st)) = v.0.try_wait() {
                return Err(VmError::Serve(format!(
                    "virtiofsd exited ({st}) before listening:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )));
            }
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(VmError::Serve(
                    "virtiofsd did not listen within 20 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(v)
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Is virtiofsd installed? `Err` says what to do.
pub fn virtiofsd_available() -> std::result::Result<(), String> {
    match strata_vm::qemu::find_in_path(VIRTIOFSD) {
        Some(_) => Ok(()),
        None => Err(format!(
            "{VIRTIOFSD} not found in PATH: setup (a) skipped; install it with scripts/bench-guest \
             (cargo install virtiofsd --locked; needs libseccomp-dev and libcap-ng-dev)"
        )),
    }
}

/// What one boot returned.
struct Boot {
    results: Vec<(Workload, IoResult)>,
    opstats: Option<BTreeMap<String, u64>>,
    errors: Vec<String>,
}

/// Context shared by every boot of a run.
struct Ctx<'a> {
    strata: &'a Path,
    cfg: &'a GuestBenchConfig,
    kernel: &'a GuestKernel,
    initrd: PathBuf,
    layers: Vec<PathBuf>,
    images: Vec<PathBuf>,
    /// The layers' merged EROFS image, for (d).
    merged: Option<PathBuf>,
    /// Where each boot's upper, work dir, host overlay and scratch disk go ([`DataFs`]).
    data: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Ctx<'_> {
    /// The data dir of the boot whose sockets and logs are in `dir`.
    fn data_dir(&self, dir: &Path) -> PathBuf {
        self.data.join(dir.file_name().unwrap_or_default())
    }
}

fn kernel_cmdline(
    setup: Setup,
    workloads: &[Workload],
    cfg: &GuestBenchConfig,
    n: usize,
) -> String {
    let w: Vec<&str> = workloads.iter().map(|w| w.name()).collect();
    format!(
        // no_timer_check: on a loaded host a TCG guest can fail the IO-APIC timer check and
        // panic at boot ("IO-APIC + timer doesn't work!"); seen while others' VMs ran.
        "no_timer_check bench.setup={} bench.workloads={} bench.layers={n} bench.small={} bench.seq_mib={}",
        setup.name(),
        if w.is_empty() {
            "none".to_string()
        } else {
            w.join(",")
        },
        cfg.small,
        cfg.seq_mib
    )
}

/// Boot one VM for `setup` in a fresh directory `dir` and run `workloads`.
fn boot(
    ctx: &Ctx<'_>,
    setup: Setup,
    workloads: &[Workload],
    dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Boot> {
    let _ = std::fs::remove_dir_all(dir);
    mkdir(dir)?;
    // Sockets, logs and the console stay in `dir`; what the guest writes goes to `data`.
    let data = ctx.data_dir(dir);
    let _ = std::fs::remove_dir_all(&data);
    mkdir(&data)?;
    let cfg = ctx.cfg;
    let mut vm = VmConfig {
        cmdline: kernel_cmdline(setup, workloads, cfg, ctx.layers.len()),
        mem_mib: cfg.mem_mib,
        cpus: cfg.cpus,
        timeout: cfg.timeout,
        ..VmConfig::new(&ctx.kernel.vmlinuz, &ctx.initrd)
    };
    let (upper, work) = (data.join("upper"), data.join("work"));
    let socket = dir.join("vm.sock");
    // Keep these alive for the whole boot; dropping them cleans up (also on errors).
    let mut _overlay = None;
    let mut _virtiofsd = None;
    let mut serve = None;
    match setup {
        Setup::Virtiofsd => {
            let merged = data.join("merged");
            for d in [&upper, &work, &merged] {
                mkdir(d)?;
            }
            _overlay = Some(HostOverlay::mount(&ctx.layers, &upper, &work, &merged)?);
            _virtiofsd = Some(Virtiofsd::spawn(
                &merged,
                &socket,
                &dir.join("virtiofsd.log"),
            )?);
            vm.virtiofs = vec![(socket.clone(), "bench".into())];
        }
        Setup::Strata | Setup::StrataLayers | Setup::StrataUpper => {
            for d in [&upper, &work] {
                mkdir(d)?;
            }
            // The daemon reads it at start; no other thread of ours runs between boots.
            if setup == Setup::StrataLayers {
                std::env::set_var(SEPARATE_LAYERS_ENV, "1");
            } else {
                std::env::remove_var(SEPARATE_LAYERS_ENV);
            }
            let spec = ServeSpec {
                lowers: ctx.layers.clone(),
                upper: upper.clone(),
                work: work.clone(),
                socket: socket.clone(),
                tag: "strata".into(),
                // (b) gets its layers from the layer device (no xattrs); (b0) keeps one
                // device, as before the merged lower existed.
                lower: (setup != Setup::StrataLayers).then(|| {
                    (
                        dir.join("layers.sock"),
                        strata_serve::DEFAULT_LOWER_TAG.into(),
                    )
                }),
                union: false,
            };
            serve = Some(ServeProcess::spawn(
                ctx.strata,
                &spec,
                None,
                &dir.join("serve.log"),
            )?);
            vm.virtiofs = spec.devices();
        }
        Setup::StrataUnion | Setup::StrataErofs => {
            for d in [&upper, &work] {
                mkdir(d)?;
            }
            std::env::remove_var(SEPARATE_LAYERS_ENV);
            let (argv, disk) = if setup == Setup::StrataUnion {
                let argv = serve_union_argv(ctx.strata, &socket, &ctx.layers, &upper, &work);
                (argv, Vec::new())
            } else {
                let image = ctx.merged.as_ref().ok_or_else(|| {
                    VmError::Serve("setup (d) needs the merged EROFS image".into())
                })?;
                let serial = strata_plan::DEFAULT_LOWER_SERIAL;
                let argv =
                    serve_lower_block_argv(ctx.strata, &socket, &ctx.layers, &upper, &work, serial);
                let disk = strata_vm::qemu::read_only_disk_args(image, serial).to_vec();
                (argv, disk)
            };
            serve = Some(ServeProcess::spawn_argv(
                &argv,
                std::slice::from_ref(&socket),
                None,
                &dir.join("serve.log"),
            )?);
            vm.virtiofs = vec![(socket.clone(), "strata".into())];
            vm.extra_args = disk;
        }
        Setup::Erofs => {
            let scratch = data.join("scratch.img");
            let f =
                std::fs::File::create(&scratch).map_err(VmError::io("cannot create", &scratch))?;
            f.set_len((cfg.seq_mib + 512) << 20)
                .map_err(VmError::io("cannot size", &scratch))?;
            drop(f);
            strata_vm::cmd::run(
                Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&scratch),
                "mkfs.ext4",
                "install e2fsprogs",
            )?;
            vm.disks = ctx.images.clone();
            vm.disks.push(scratch);
        }
    }
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let handle = vm.spawn_with(move |line| {
        if let Some(i) = line.find("@phase ") {
            let _ = tx.send(line[i + 7..].to_string());
        }
    })?;
    let pid = nix::unistd::Pid::from_raw(handle.pid() as i32);
    let waiter = std::thread::spawn(move || handle.wait());
    let t0 = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(p) => progress(&format!("  {p} [{:.1} s]", t0.elapsed().as_secs_f64())),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if waiter.is_finished() {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if ctx.stop.load(Ordering::Relaxed) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let out = waiter
        .join()
        .map_err(|_| VmError::Serve("the VM watcher thread panicked".into()))?;
    if ctx.stop.load(Ordering::Relaxed) {
        return Err(VmError::Serve("interrupted".into()));
    }
    let out = out?;
    let _ = std::fs::write(dir.join("console.log"), &out.console);
    let mut errors = Vec::new();
    let mut results = Vec::new();
    for line in out.console.lines() {
        let Some(at) = line.find('@') else { continue };
        let mut it = line[at..].split_whitespace();
        match it.next() {
            Some("@result") => {
                let f: Vec<&str> = it.collect();
                let parsed = (|| {
                    Some((
                        f.first()?.parse::<Workload>().ok()?,
                        IoResult {
                            seconds: f.get(1)?.parse().ok()?,
                            count: f.get(2)?.parse().ok()?,
                            bytes: f.get(3)?.parse().ok()?,
                        },
                    ))
                })();
                match parsed {
                    Some(r) => results.push(r),
                    None => errors.push(format!("{}: unreadable line {line:?}", setup.name())),
                }
            }
            Some("@fatal") => errors.push(format!("{}: {}", setup.name(), &line[at..])),
            _ => {}
        }
    }
    if out.timed_out {
        errors.push(format!("{}: VM ran past {:?}", setup.name(), cfg.timeout));
    }
    if out.status != Some(0) && errors.is_empty() {
        let last: Vec<&str> = out.console.lines().rev().take(12).collect();
        errors.push(format!(
            "{}: guest status {:?}; last console lines:\n{}",
            setup.name(),
            out.status,
            last.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    let mut opstats = None;
    if let Some(s) = serve.take() {
        let _ = s.wait(Duration::from_secs(10));
        let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
        opstats = parse_opstats(&log);
    }
    Ok(Boot {
        results,
        opstats,
        errors,
    })
}

/// The `strata serve: opstats {json}` lines of a serve log, summed: one per device the guest
/// unmounted (the tree, and the layer device if it had one).
pub fn parse_opstats(log: &str) -> Option<BTreeMap<String, u64>> {
    let mut sum: Option<BTreeMap<String, u64>> = None;
    for l in log.lines() {
        let Some(at) = l.find("opstats {") else {
            continue;
        };
        let Ok(counts) = serde_json::from_str::<BTreeMap<String, u64>>(&l[at + 8..]) else {
            continue;
        };
        let total = sum.get_or_insert_with(BTreeMap::new);
        for (op, n) in counts {
            *total.entry(op).or_default() += n;
        }
    }
    sum
}

/// Run the whole bench. `progress` gets one line per step.
pub fn run(
    strata: &Path,
    cfg: &GuestBenchConfig,
    stop: Arc<AtomicBool>,
    progress: &mut dyn FnMut(&str),
) -> Result<GuestBenchReport> {
    for &setup in &cfg.setups {
        if let Some(w) = cfg.workloads.iter().find(|w| !setup.times(**w)) {
            return Err(VmError::Serve(format!(
                "setup {} runs its workloads in an empty upper dir: it times create, write \
                 and seqread, not {}",
                setup.name(),
                w.name()
            )));
        }
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(VmError::Serve(
            "strata bench guest needs root (the host overlay mount of setup (a), whiteouts and \
             trusted xattrs in the rootfs layers)"
                .into(),
        ));
    }
    mkdir(&cfg.workdir)?;
    progress(&format!("fetching the {} guest kernel", cfg.kernel.name()));
    let kernel = GuestKernel::fetch(cfg.kernel)?;
    let initrd = cfg.workdir.join("bench-initrd.cpio");
    bench_initramfs(strata, &kernel, &initrd)?;
    let mut report = GuestBenchReport {
        kernel: cfg.kernel.name().into(),
        release: kernel.release.clone(),
        mem_mib: cfg.mem_mib,
        cpus: cfg.cpus,
        runs: cfg.runs,
        small: cfg.small,
        seq_mib: cfg.seq_mib,
        rootfs: RootfsInfo::default(),
        samples: Vec::new(),
        summary: Vec::new(),
        opstats: BTreeMap::new(),
        skipped: Vec::new(),
        data_fs: String::new(),
        errors: Vec::new(),
    };
    let mut setups = cfg.setups.clone();
    if setups.contains(&Setup::Virtiofsd) {
        if let Err(why) = virtiofsd_available() {
            progress(&why);
            report.skipped.push(why);
            setups.retain(|s| *s != Setup::Virtiofsd);
        }
    }
    progress(&format!("building the {:?} rootfs", cfg.rootfs));
    let layers = rootfs_layers(cfg.rootfs, &cfg.workdir)?;
    report.rootfs = rootfs_info(cfg.rootfs, &layers);
    progress(&format!(
        "rootfs: {} layers, {} files, {} dirs, {} symlinks, {:.1} MiB",
        report.rootfs.layers,
        report.rootfs.files,
        report.rootfs.dirs,
        report.rootfs.symlinks,
        report.rootfs.bytes as f64 / (1 << 20) as f64
    ));
    let erofs_dir = match cfg.rootfs {
        RootfsKind::Debian => layers[0]
            .parent()
            .and_then(Path::parent)
            .map(|p| p.join("erofs"))
            .unwrap_or_else(|| cfg.workdir.join("erofs")),
        RootfsKind::Tiny | RootfsKind::Conformance => cfg.workdir.join("erofs"),
    };
    let images = if setups.contains(&Setup::Erofs) {
        progress("building EROFS images (mkfs.erofs)");
        erofs_images(&layers, &erofs_dir)?
    } else {
        Vec::new()
    };
    let merged = if setups.contains(&Setup::StrataErofs) {
        progress("building the merged EROFS image (mkfs.erofs)");
        Some(merged_erofs_image(&layers, &erofs_dir)?)
    } else {
        None
    };
    progress("warming the host page cache (layer files and images)");
    for p in layers.iter().chain(&images).chain(&merged) {
        warm_host_cache(p);
    }
    let data_fs = DataFs::new(&cfg.workdir);
    report.data_fs = data_fs.what.clone();
    progress(&format!("uppers and scratch disks on {}", data_fs.what));
    let ctx = Ctx {
        strata,
        cfg,
        kernel: &kernel,
        initrd,
        layers,
        images,
        merged,
        data: data_fs.dir.clone(),
        stop: stop.clone(),
    };
    let workloads = canonical(&cfg.workloads);
    // Each setup, then (with --vary) each setup that runs strata serve again with the setting.
    let variant = cfg.vary.as_ref().map(|(k, v)| format!("{k}={v}"));
    let mut slots: Vec<(Setup, Option<&str>)> = setups.iter().map(|&s| (s, None)).collect();
    if let Some(v) = &variant {
        slots.extend(
            setups
                .iter()
                .filter(|s| s.serves())
                .map(|&s| (s, Some(v.as_str()))),
        );
    }
    let original = cfg.vary.as_ref().map(|(k, _)| std::env::var_os(k));
    for run in 1..=cfg.runs {
        for &(setup, variant) in &slots {
            let label = variant_label(setup, variant);
            progress(&format!("run {run}/{}: {}", cfg.runs, setup.label()));
            if let Some(v) = variant {
                progress(&format!("  with {v} for strata serve"));
            }
            let dir = cfg.workdir.join(format!("{label}-{run}"));
            // strata serve reads it at start; no other thread of ours runs between boots.
            if let (Some((k, v)), Some(_)) = (&cfg.vary, variant) {
                std::env::set_var(k, v);
            }
            let b = boot(&ctx, setup, &workloads, &dir, progress);
            if let (Some((k, _)), Some(_), Some(orig)) = (&cfg.vary, variant, &original) {
                match orig {
                    Some(o) => std::env::set_var(k, o),
                    None => std::env::remove_var(k),
                }
            }
            let b = b?;
            let _ = std::fs::remove_dir_all(ctx.data_dir(&dir));
            // Nothing a boot left dirty on the host is written back during the next one (the
            // guest's syncfs and fsync reach the host's filesystem).
            nix::unistd::sync();
            for (w, r) in b.results {
                progress(&format!(
                    "  {label} {}: {:.3} s ({} items, {:.1} MiB)",
                    w.name(),
                    r.seconds,
                    r.count,
                    r.bytes as f64 / (1 << 20) as f64
                ));
                report.samples.push(Sample {
                    setup,
                    variant: variant.map(str::to_string),
                    workload: w,
                    run,
                    seconds: r.seconds,
                    count: r.count,
                    bytes: r.bytes,
                });
            }
            if let Some(o) = b.opstats {
                // (b)'s keep their plain names; every other strata setup's are prefixed.
                let key = match (setup, variant) {
                    (Setup::Strata, None) => format!("run{run}"),
                    _ => format!("{label}/run{run}"),
                };
                report.opstats.insert(key, o);
            }
            report.errors.extend(b.errors);
        }
    }
    for opsetup in [Setup::Strata, Setup::StrataUnion] {
        if !cfg.opstats || !setups.contains(&opsetup) {
            continue;
        }
        // (b)'s counts keep their plain names; (f)'s are prefixed with its name.
        let prefix = match opsetup {
            Setup::Strata => String::new(),
            s => format!("{}/", s.name()),
        };
        // One boot with no workload (mount + unmount), then one per workload; the difference
        // is the workload's requests.
        let mut per: Vec<(String, Vec<Workload>)> = vec![("boot".into(), vec![])];
        for &w in &workloads {
            let ws = if w == Workload::Seqread {
                vec![Workload::Write, Workload::Seqread]
            } else {
                vec![w]
            };
            per.push((w.name().into(), ws));
        }
        let mut base: BTreeMap<String, u64> = BTreeMap::new();
        let mut write_only: BTreeMap<String, u64> = BTreeMap::new();
        for (label, ws) in per {
            progress(&format!("opstats: {}, {label}", opsetup.name()));
            let dir = cfg
                .workdir
                .join(format!("opstats-{}-{label}", opsetup.name()));
            let b = boot(&ctx, opsetup, &ws, &dir, progress)?;
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_dir_all(ctx.data_dir(&dir));
            report.errors.extend(b.errors);
            let Some(o) = b.opstats else {
                report
                    .errors
                    .push(format!("opstats {label}: strata serve printed no counts"));
                continue;
            };
            let sub = if label == "seqread" {
                &write_only
            } else {
                &base
            };
            let d = diff(&o, sub);
            if label == "boot" {
                base = o.clone();
            }
            if label == "write" {
                write_only = o.clone();
            }
            report.opstats.insert(
                format!("{prefix}{label}"),
                if label == "boot" { o } else { d },
            );
        }
    }
    report.summary = summarize(&report.samples);
    Ok(report)
}

fn diff(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    a.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(b.get(k).copied().unwrap_or(0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Workloads in run order (`seqread` needs `write` first), each once.
pub fn canonical(ws: &[Workload]) -> Vec<Workload> {
    let mut v: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| ws.contains(w))
        .collect();
    if v.contains(&Workload::Seqread) && !v.contains(&Workload::Write) {
        v.insert(v.len() - 1, Workload::Write);
    }
    for extra in [Workload::Statfs, Workload::Append, Workload::Pjdfstest] {
        if ws.contains(&extra) {
            v.push(extra);
        }
    }
    v
}

/// Medians per setup × workload, and ratios to (a).
pub fn summarize(samples: &[Sample]) -> Vec<Summary> {
    let mut groups: BTreeMap<(Workload, Setup, Option<&str>), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        groups
            .entry((s.workload, s.setup, s.variant.as_deref()))
            .or_default()
            .push(s);
    }
    let median = |v: &[&Sample]| {
        let mut t: Vec<f64> = v.iter().map(|s| s.seconds).collect();
        t.sort_by(f64::total_cmp);
        let n = t.len();
        if n % 2 == 1 {
            t[n / 2]
        } else {
            (t[n / 2 - 1] + t[n / 2]) / 2.0
        }
    };
    let mut out = Vec::new();
    for ((w, setup, variant), v) in &groups {
        let m = median(v);
        let base = groups
            .get(&(*w, Setup::Virtiofsd, None))
            .map(|b| median(b))
            .filter(|b| *b > 0.0);
        out.push(Summary {
            setup: *setup,
            variant: variant.map(str::to_string),
            workload: *w,
            n: v.len(),
            median_s: m,
            min_s: v.iter().map(|s| s.seconds).fold(f64::MAX, f64::min),
            max_s: v.iter().map(|s| s.seconds).fold(0.0, f64::max),
            ratio_to_virtiofsd: base.map(|b| m / b),
            count: v[0].count,
            bytes: v[0].bytes,
        });
    }
    out
}

/// The text table: one row per workload × setup, with median/min/max and the ratio to (a).
pub fn table(r: &GuestBenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "guest {} ({}), {} MiB, {} vCPUs, qemu TCG; rootfs {:?}: {} layers, {} files, {} dirs, {:.1} MiB; {} run(s), medians",
        r.kernel,
        r.release,
        r.mem_mib,
        r.cpus,
        r.rootfs.kind.unwrap_or(RootfsKind::Tiny),
        r.rootfs.layers,
        r.rootfs.files,
        r.rootfs.dirs,
        r.rootfs.bytes as f64 / (1 << 20) as f64,
        r.runs
    );
    let width = r
        .summary
        .iter()
        .map(|x| x.label().len())
        .max()
        .unwrap_or(0)
        .max(13);
    let _ = writeln!(
        s,
        "{:<8} {:<width$} {:>10} {:>10} {:>10} {:>9}  items",
        "workload", "setup", "median s", "min s", "max s", "× (a)"
    );
    for x in &r.summary {
        let _ = writeln!(
            s,
            "{:<8} {:<width$} {:>10.3} {:>10.3} {:>10.3} {:>9}  {}",
            x.workload.name(),
            x.label(),
            x.median_s,
            x.min_s,
            x.max_s,
            x.ratio_to_virtiofsd
                .map_or("-".to_string(), |v| format!("{v:.2}")),
            x.count
        );
    }
    for k in &r.skipped {
        let _ = writeln!(s, "skipped: {k}");
    }
    for e in &r.errors {
        let _ = writeln!(s, "error: {e}");
    }
    s
}

/// The request histogram table (`--opstats`): one column per label, one row per operation.
pub fn opstats_table(r: &GuestBenchReport) -> String {
    if r.opstats.is_empty() {
        return String::new();
    }
    let mut ops: Vec<&String> = r.opstats.values().flat_map(|m| m.keys()).collect();
    ops.sort();
    ops.dedup();
    let labels: Vec<&String> = r.opstats.keys().collect();
    let mut s = String::from("FUSE requests served by strata (per boot label)\n");
    let _ = write!(s, "{:<24}", "op");
    for l in &labels {
        let _ = write!(s, " {:>10}", l);
    }
    s.push('\n');
    for op in ops {
        let _ = write!(s, "{op:<24}");
        for l in &labels {
            let v = r.opstats[*l].get(op).copied().unwrap_or(0);
            let _ = write!(s, " {v:>10}");
        }
        s.push('\n');
    }
    s
}

/// Grouped bars: one group per workload, one bar per setup, height = ratio to (a).
pub fn ratio_svg(r: &GuestBenchReport, out: &Path) -> std::result::Result<(), String> {
    use plotters::prelude::*;
    let workloads: Vec<Workload> =
        canonical(&r.summary.iter().map(|s| s.workload).collect::<Vec<_>>());
    // Every setup in table order, each followed by its --vary variant.
    let mut setups: Vec<(Setup, Option<&str>)> = Vec::new();
    for s in Setup::EVERY {
        let mut here: Vec<Option<&str>> = r
            .summary
            .iter()
            .filter(|x| x.setup == s)
            .map(|x| x.variant.as_deref())
            .collect();
        here.sort();
        here.dedup();
        setups.extend(here.into_iter().map(|v| (s, v)));
    }
    // Headroom for the legend, one line per series, above the tallest bar.
    let ymax = r
        .summary
        .iter()
        .filter_map(|s| s.ratio_to_virtiofsd)
        .fold(1.5f64, f64::max)
        * (1.0 + 0.09 * setups.len() as f64);
    let colors = [
        RGBColor(120, 120, 120),
        RGBColor(240, 150, 150),
        RGBColor(200, 40, 40),
        RGBColor(40, 90, 200),
        RGBColor(40, 160, 90),
    ];
    let root = SVGBackend::new(out, (760, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let n = workloads.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "guest I/O time relative to (a) virtiofsd + host overlay ({} guest, {} files)",
                r.kernel, r.rootfs.files
            ),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..n, 0.0..ymax)
        .map_err(|e| e.to_string())?;
    let names: Vec<&'static str> = workloads.iter().map(|w| w.name()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(workloads.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                names.get(i).copied().unwrap_or("").to_string()
            } else {
                String::new()
            }
        })
        .y_desc("time / time of (a) (lower is faster)")
        .draw()
        .map_err(|e| e.to_string())?;
    let width = 0.8 / setups.len().max(1) as f64;
    for (si, &(setup, variant)) in setups.iter().enumerate() {
        let base =
            colors[Setup::EVERY.iter().position(|s| *s == setup).unwrap_or(0) % colors.len()];
        // A variant: its setup's colour, lighter.
        let color = match variant {
            None => base,
            Some(_) => RGBColor(base.0 / 2 + 128, base.1 / 2 + 128, base.2 / 2 + 128),
        };
        let bars: Vec<Rectangle<(f64, f64)>> = workloads
            .iter()
            .enumerate()
            .filter_map(|(wi, w)| {
                let s = r.summary.iter().find(|x| {
                    x.setup == setup && x.variant.as_deref() == variant && x.workload == *w
                })?;
                let x0 = wi as f64 + 0.1 + si as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.92, s.ratio_to_virtiofsd?)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(|e| e.to_string())?
            .label(match variant {
                None => setup.label().to_string(),
                Some(v) => format!("{} + {v}", setup.label()),
            })
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, 1.0), (n, 1.0)],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| e.to_string())?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(VmError::io("cannot create directory", p))
}

fn write(p: &Path, data: &str) -> Result<()> {
    if let Some(d) = p.parent() {
        mkdir(d)?;
    }
    std::fs::write(p, data).map_err(VmError::io("cannot write", p))
}

#[cfg(test)]
mod tests {
    #[test]
    fn setup_and_workload_names_are_the_command_line_names() {
        use clap::ValueEnum;
        for s in super::Setup::EVERY {
            assert_eq!(super::Setup::from_str(s.name(), false), Ok(s));
        }
        for w in super::Workload::ALL.into_iter().chain([
            super::Workload::Statfs,
            super::Workload::Append,
            super::Workload::Pjdfstest,
        ]) {
            assert_eq!(super::Workload::from_str(w.name(), false), Ok(w));
            assert_eq!(w.name().parse::<super::Workload>(), Ok(w));
        }
    }

    use super::*;

    #[test]
    fn canonical_order_adds_write_before_seqread() {
        assert_eq!(
            canonical(&[Workload::Seqread, Workload::Read]),
            [Workload::Read, Workload::Write, Workload::Seqread]
        );
    }

    #[test]
    fn summary_ratios_to_virtiofsd() {
        let s = |setup, seconds| Sample {
            setup,
            variant: None,
            workload: Workload::Walk,
            run: 1,
            seconds,
            count: 1,
            bytes: 0,
        };
        let sum = summarize(&[
            s(Setup::Virtiofsd, 2.0),
            s(Setup::Strata, 3.0),
            s(Setup::Strata, 1.0),
        ]);
        let b = sum.iter().find(|x| x.setup == Setup::Strata).unwrap();
        assert_eq!(b.median_s, 2.0);
        assert_eq!(b.ratio_to_virtiofsd, Some(1.0));
    }

    #[test]
    fn a_variant_is_summarized_apart_and_compared_with_plain_virtiofsd() {
        let s = |setup, variant: Option<&str>, seconds| Sample {
            setup,
            variant: variant.map(str::to_string),
            workload: Workload::Create,
            run: 1,
            seconds,
            count: 1,
            bytes: 0,
        };
        let v = Some("STRATA_SERVE_POLL_US=0");
        let sum = summarize(&[
            s(Setup::Virtiofsd, None, 2.0),
            s(Setup::StrataErofs, None, 3.0),
            s(Setup::StrataErofs, v, 4.0),
        ]);
        assert_eq!(sum.len(), 3);
        let plain = sum.iter().find(|x| x.label() == "strata-erofs").unwrap();
        let varied = sum
            .iter()
            .find(|x| x.label() == "strata-erofs+STRATA_SERVE_POLL_US=0")
            .unwrap();
        assert_eq!(plain.ratio_to_virtiofsd, Some(1.5));
        assert_eq!(varied.ratio_to_virtiofsd, Some(2.0));
        // Old results (no variant field) still load.
        let old =
            r#"{"setup":"strata","workload":"walk","run":1,"seconds":1.0,"count":1,"bytes":0}"#;
        assert_eq!(serde_json::from_str::<Sample>(old).unwrap().variant, None);
    }

    #[test]
    fn vary_takes_an_environment_name_and_a_value() {
        assert_eq!(
            parse_vary("STRATA_SERVE_POLL_US=0"),
            Ok(("STRATA_SERVE_POLL_US".into(), "0".into()))
        );
        assert_eq!(parse_vary("A=b=c"), Ok(("A".into(), "b=c".into())));
        for bad in ["", "NOEQUALS", "=1", "1A=2", "A B=1", "A-B=1"] {
            assert!(parse_vary(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn opstats_line() {
        let log = "x\nstrata serve: opstats {\"lookup\":3,\"getxattr!ENODATA\":2}\n";
        let m = parse_opstats(log).unwrap();
        assert_eq!(m["lookup"], 3);
        assert_eq!(m["getxattr!ENODATA"], 2);
        // The tree and the layer device each print theirs: summed.
        let log = format!("{log}strata serve: opstats {{\"lookup\":1,\"readdirplus\":4}}\n");
        let m = parse_opstats(&log).unwrap();
        assert_eq!((m["lookup"], m["readdirplus"]), (4, 4));
        assert_eq!(parse_opstats("nothing"), None);
    }
}
