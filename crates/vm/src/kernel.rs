//! Debian guest kernels: fetch with apt, cache, and hand out the modules the guest needs.
//!
//! Kernels come from Debian's `linux-image-*-cloud-amd64` packages (small, virtio-centric).
//! They are downloaded with `apt-get download` and unpacked with `dpkg-deb -x` into
//! `$STRATA_CACHE/kernels/<release>/` (default cache: `/var/cache/strata`), once. A marker file
//! `kernels/current-<choice>` names the release in use, so later fetches make no apt calls;
//! delete it to move to a newer kernel.
//!
//! Fetching is safe across threads and processes: it runs under an exclusive `flock` on
//! `kernels/.lock`, and a kernel directory is published by renaming a fully extracted temporary
//! directory, so a half-extracted kernel is never seen.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use nix::fcntl::{Flock, FlockArg};

use crate::cmd;
use crate::error::{Result, VmError};

/// The kernel modules the strata guest needs, in a working load order (dependencies first).
///
/// Names that a kernel has built in are simply absent from [`GuestKernel::modules`]' result.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "fuse",
    "virtiofs",
    "overlay",
    // EROFS layer images on virtio-blk (a plan's `lower_block`); erofs needs libcrc32c.
    "libcrc32c",
    "erofs",
];

const APT_HINT: &str =
    "run scripts/install-deps.sh and check the apt sources (/etc/apt/sources.list*) reach Debian";

/// Which Debian guest kernel to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelChoice {
    /// Debian 12's own 6.1 kernel: newest `linux-image-6.1.0-NN-cloud-amd64`.
    Debian6_1,
    /// The 6.12 kernel for Debian 12 (lockless shrinkers): newest
    /// `linux-image-6.12.N+deb12-cloud-amd64` (bookworm security/main) or `+bpo` (backports).
    Debian6_12,
}

impl KernelChoice {
    /// Every choice, oldest first.
    pub const ALL: [KernelChoice; 2] = [KernelChoice::Debian6_1, KernelChoice::Debian6_12];

    /// Short name: `6.1` or `6.12`.
    pub fn name(self) -> &'static str {
        match self {
            KernelChoice::Debian6_1 => "6.1",
            KernelChoice::Debian6_12 => "6.12",
        }
    }

    /// Human-readable package pattern, for messages.
    fn pattern(self) -> &'static str {
        match self {
            KernelChoice::Debian6_1 => "linux-image-6.1.0-NN-cloud-amd64",
            KernelChoice::Debian6_12 => "linux-image-6.12.N+deb12-cloud-amd64 (or +bpo)",
        }
    }

    /// POSIX regex for `apt-cache search --names-only`.
    fn search_regex(self) -> &'static str {
        match self {
            KernelChoice::Debian6_1 => r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$",
            KernelChoice::Debian6_12 => r"^linux-image-6\.12\.[0-9]+\+(deb12|bpo)-cloud-amd64$",
        }
    }

    /// Sort key of a matching package name (higher = newer), or `None` if it does not match
    /// exactly (e.g. `-unsigned`, `-dbg`).
    fn version_key(self, package: &str) -> Option<(u64, u8)> {
        let (prefix, rest) = match self {
            KernelChoice::Debian6_1 => ("linux-image-6.1.0-", "-cloud-amd64"),
            KernelChoice::Debian6_12 => ("linux-image-6.12.", "-cloud-amd64"),
        };
        let mid = package.strip_prefix(prefix)?.strip_suffix(rest)?;
        match self {
            KernelChoice::Debian6_1 => {
                let n = parse_digits(mid)?;
                Some((n, 0))
            }
            KernelChoice::Debian6_12 => {
                let (n, flavour) = mid.split_once('+')?;
                let rank = match flavour {
                    "deb12" => 1,
                    "bpo" => 0,
                    _ => return None,
                };
                Some((parse_digits(n)?, rank))
            }
        }
    }
}

fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KernelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "6.1" => Ok(KernelChoice::Debian6_1),
            "6.12" => Ok(KernelChoice::Debian6_12),
            _ => Err(format!("unknown kernel {s:?}: expected 6.1 or 6.12")),
        }
    }
}

/// A guest kernel as a person names it: a Debian line (fetched with apt) or a path to a
/// kernel of their own: an unpacked package root (`boot/vmlinuz-RELEASE` and
/// `lib/modules/RELEASE/`) or a `linux-image-*.deb`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KernelSpec {
    Debian(KernelChoice),
    Path(PathBuf),
}

impl FromStr for KernelSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(c) = s.parse::<KernelChoice>() {
            return Ok(KernelSpec::Debian(c));
        }
        let p = PathBuf::from(s);
        if p.exists() {
            Ok(KernelSpec::Path(p))
        } else {
            Err(format!(
                "kernel {s:?}: expected 6.1, 6.12, or the path of an unpacked kernel package                  (boot/vmlinuz-RELEASE + lib/modules/RELEASE) or of a linux-image .deb"
            ))
        }
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSpec::Debian(c) => f.write_str(c.name()),
            KernelSpec::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

impl KernelSpec {
    /// Get the kernel: fetch a Debian line (cached), or open/unpack the path.
    pub fn fetch(&self) -> Result<GuestKernel> {
        match self {
            KernelSpec::Debian(c) => GuestKernel::fetch(*c),
            KernelSpec::Path(p) => GuestKernel::from_path(p),
        }
    }

    /// A name safe for a directory, known before fetching: `6.1`, `6.12`, or the path's
    /// file name.
    pub fn short_name(&self) -> String {
        match self {
            KernelSpec::Debian(c) => c.name().to_string(),
            KernelSpec::Path(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().replace(['/', ' '], "_"))
                .unwrap_or_else(|| "kernel".into()),
        }
    }
}

impl GuestKernel {
    /// A kernel given by path: an unpacked package root, or a `linux-image-*.deb` (unpacked
    /// once into the cache, like the Debian lines).
    pub fn from_path(path: &Path) -> Result<GuestKernel> {
        let bad = |detail: String| VmError::BadKernelPackage {
            package: path.display().to_string(),
            detail,
            dir: path.to_owned(),
        };
        if path.is_file() && path.extension().is_some_and(|e| e == "deb") {
            let out = Command::new("dpkg-deb")
                .args(["-f"])
                .arg(path)
                .arg("Package")
                .output()
                .map_err(|e| bad(format!("cannot run dpkg-deb: {e}")))?;
            let package = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let Some(release) = package.strip_prefix("linux-image-").map(str::to_owned) else {
                return Err(bad(format!(
                    "package {package:?} is not a linux-image-RELEASE package"
                )));
            };
            let kernels = cache_dir().join("kernels");
            fs::create_dir_all(&kernels)
                .map_err(VmError::io("cannot create the kernel cache", &kernels))?;
            let dest = kernels.join(&release);
            if !dest
                .join("boot")
                .join(format!("vmlinuz-{release}"))
                .is_file()
            {
                let tmp = tempfile::Builder::new()
                    .prefix(".fetch-")
                    .tempdir_in(&kernels)
                    .map_err(VmError::io("cannot create temp dir in", &kernels))?;
                extract_deb(path, &package, &release, tmp.path(), &kernels)?;
            }
            return GuestKernel::from_path(&dest);
        }
        if !path.is_dir() {
            return Err(bad(
                "not a directory (an unpacked kernel package) nor a .deb file".into(),
            ));
        }
        let boot = path.join("boot");
        let mut found: Vec<String> = fs::read_dir(&boot)
            .map_err(VmError::io("cannot read", &boot))?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("vmlinuz-"))
                    .map(str::to_owned)
            })
            .collect();
        found.sort();
        let release = match found.as_slice() {
            [one] => one.clone(),
            [] => return Err(bad("no boot/vmlinuz-RELEASE in it".into())),
            many => {
                return Err(bad(format!(
                    "several kernels in boot/ ({}): give a directory with one",
                    many.join(", ")
                )))
            }
        };
        if !path.join("lib/modules").join(&release).is_dir() {
            tracing::warn!(
                %release,
                "no lib/modules/{release} next to the kernel: the guest gets only what is built in"
            );
        }
        let dir = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        Ok(GuestKernel {
            name: release.clone(),
            vmlinuz: dir.join("boot").join(format!("vmlinuz-{release}")),
            release,
            dir,
        })
    }
}

/// The strata cache directory: `$STRATA_CACHE`, or `/var/cache/strata`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("STRATA_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/var/cache/strata"),
    }
}

/// An unpacked Debian guest kernel in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    /// Short name for reports and directories: `6.1`, `6.12`, or the release of a kernel
    /// given by path.
    pub name: String,
    /// The bootable kernel image (`boot/vmlinuz-<release>`), for qemu `-kernel`.
    pub vmlinuz: PathBuf,
    /// The kernel release, e.g. `6.1.0-41-cloud-amd64` (`uname -r` in the guest).
    pub release: String,
    /// The unpacked package root (`kernels/<release>/` in the cache).
    pub dir: PathBuf,
}

impl GuestKernel {
    /// Fetch (once) and return the newest kernel of the given line.
    ///
    /// The first call downloads the package with apt (running `apt-get update` if nothing is
    /// found, and adding bookworm-backports for 6.12 only if that still finds nothing); later
    /// calls read the cache marker and make no apt calls.
    pub fn fetch(which: KernelChoice) -> Result<GuestKernel> {
        let kernels = cache_dir().join("kernels");
        if let Some(k) = Self::cached(which, &kernels) {
            return Ok(k);
        }
        fs::create_dir_all(&kernels).map_err(|e| VmError::Io {
            what: "cannot create the kernel cache (set STRATA_CACHE to a writable directory)",
            path: kernels.clone(),
            source: e,
        })?;
        let lock_path = kernels.join(".lock");
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(VmError::io("cannot open lock file", &lock_path))?;
        tracing::debug!(?lock_path, "taking the kernel cache lock");
        let _lock =
            Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| VmError::Io {
                what: "cannot lock",
                path: lock_path.clone(),
                source: e.into(),
            })?;
        // Someone else may have fetched it while we waited.
        if let Some(k) = Self::cached(which, &kernels) {
            return Ok(k);
        }
        remove_stale_temp_dirs(&kernels);

        let package = newest_package(which)?;
        let release = package.trim_start_matches("linux-image-").to_string();
        let dir = kernels.join(&release);
        if !dir
            .join("boot")
            .join(format!("vmlinuz-{release}"))
            .is_file()
        {
            download_and_extract(&package, &release, &kernels)?;
        }
        write_marker(&kernels, which, &release)?;
        Self::cached(which, &kernels).ok_or_else(|| VmError::BadKernelPackage {
            package,
            detail: "no boot/vmlinuz after extraction".into(),
            dir,
        })
    }

    /// The kernel named by the cache marker, if it is fully there.
    fn cached(which: KernelChoice, kernels: &Path) -> Option<GuestKernel> {
        let marker = kernels.join(format!("current-{}", which.name()));
        let release = fs::read_to_string(marker).ok()?.trim().to_string();
        if release.is_empty() || release.contains('/') {
            return None;
        }
        let dir = kernels.join(&release);
        let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
        if !vmlinuz.is_file() {
            return None;
        }
        tracing::debug!(%release, "using cached guest kernel");
        Some(GuestKernel {
            name: which.name().to_string(),
            vmlinuz,
            release,
            dir,
        })
    }

    /// `lib/modules/<release>` inside the unpacked package.
    pub fn modules_dir(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.release)
    }

    /// Plain `.ko` files for the given module base names (e.g. `virtio_pci`), in a load order:
    /// the given order, except that a module comes after the other requested modules it
    /// depends on (its `.modinfo` `depends=`), so `insmod` in the returned order works.
    ///
    /// `.ko.xz` modules are decompressed (with `xz`) into the cache on first use. Names the
    /// kernel has built in (or does not have at all) are skipped and logged.
    pub fn modules(&self, names: &[&str]) -> Result<Vec<PathBuf>> {
        let index = self.module_index()?;
        let builtin =
            fs::read_to_string(self.modules_dir().join("modules.builtin")).unwrap_or_default();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let key = normalize(name);
            let Some(src) = index.get(&key) else {
                let is_builtin = builtin
                    .lines()
                    .filter_map(|l| l.rsplit('/').next())
                    .any(|f| normalize(f.trim_end_matches(".ko")) == key);
                if is_builtin {
                    tracing::debug!(module = name, release = %self.release, "built into the kernel");
                } else {
                    tracing::warn!(module = name, release = %self.release, "module not found (and not listed as built in); skipping");
                }
                continue;
            };
            let file = src
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let ko = if file.ends_with(".ko") {
                src.clone()
            } else {
                self.decompress(name, src)?
            };
            let bytes = fs::read(&ko).map_err(VmError::io("cannot read module", &ko))?;
            out.push((key, modinfo_depends(&bytes), ko));
        }
        Ok(dependency_order(out))
    }

    /// Map of normalized module name -> file, for every `.ko` / `.ko.xz` of the kernel.
    fn module_index(&self) -> Result<HashMap<String, PathBuf>> {
        let root = self.modules_dir().join("kernel");
        let mut index = HashMap::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            let entries =
                fs::read_dir(&d).map_err(VmError::io("cannot read module directory", &d))?;
            for e in entries {
                let e = e.map_err(VmError::io("cannot read module directory", &d))?;
                let path = e.path();
                let ft = e.file_type().map_err(VmError::io("cannot stat", &path))?;
                if ft.is_dir() {
                    stack.push(path);
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                let base = name
                    .strip_suffix(".ko")
                    .or_else(|| name.strip_suffix(".ko.xz"));
                if let Some(base) = base {
                    index.insert(normalize(base), path);
                }
            }
        }
        Ok(index)
    }

    /// Decompress a `.ko.xz` into `<dir>/strata-ko/<name>.ko` once (atomically).
    fn decompress(&self, name: &str, src: &Path) -> Result<PathBuf> {
        let out_dir = self.dir.join("strata-ko");
        let out = out_dir.join(format!("{}.ko", normalize(name)));
        if out.is_file() {
            return Ok(out);
        }
        fs::create_dir_all(&out_dir).map_err(VmError::io("cannot create directory", &out_dir))?;
        let tmp = tempfile::NamedTempFile::new_in(&out_dir)
            .map_err(VmError::io("cannot create temp file in", &out_dir))?;
        let stdout = tmp
            .reopen()
            .map_err(VmError::io("cannot reopen temp file", tmp.path()))?;
        let mut c = Command::new("xz");
        c.arg("-dc").arg(src).stdout(Stdio::from(stdout));
        let command = cmd::describe(&c);
        let status = c.status().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                VmError::MissingTool { tool: "xz" }
            } else {
                VmError::Command {
                    command: command.clone(),
                    detail: e.to_string(),
                    hint: "check the xz-utils install",
                }
            }
        })?;
        if !status.success() {
            return Err(VmError::Command {
                command,
                detail: status.to_string(),
                hint: "the cached module may be corrupt: delete the kernel's cache directory and retry",
            });
        }
        publish(tmp, &out)?;
        tracing::debug!(module = name, ?out, "decompressed module");
        Ok(out)
    }
}

/// The `depends=` list from a module's `.modinfo` strings (NUL-separated `key=value`).
fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[at + KEY.len()..];
    let value = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
    String::from_utf8_lossy(value)
        .split(',')
        .filter(|d| !d.is_empty())
        .map(normalize)
        .collect()
}

/// Stable topological order: each module after the listed modules it depends on.
fn dependency_order(mut pending: Vec<(String, Vec<String>, PathBuf)>) -> Vec<PathBuf> {
    let mut done: Vec<String> = Vec::new();
    let mut out = Vec::new();
    while !pending.is_empty() {
        let ready = pending.iter().position(|(_, deps, _)| {
            deps.iter()
                .all(|d| done.contains(d) || !pending.iter().any(|(k, _, _)| k == d))
        });
        // A cycle cannot happen with real modules; keep the given order if it does.
        let (key, _, path) = pending.remove(ready.unwrap_or(0));
        done.push(key);
        out.push(path);
    }
    out
}

/// Module names use `-` and `_` interchangeably.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Leftovers of fetches that died half-way (we hold the lock, so nobody is using them).
fn remove_stale_temp_dirs(kernels: &Path) {
    let Ok(entries) = fs::read_dir(kernels) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(".fetch-") {
            tracing::debug!(path = ?e.path(), "removing a stale partial kernel fetch");
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn write_marker(kernels: &Path, which: KernelChoice, release: &str) -> Result<()> {
    let marker = kernels.join(format!("current-{}", which.name()));
    let mut tmp = tempfile::NamedTempFile::new_in(kernels)
        .map_err(VmError::io("cannot create temp file in", kernels))?;
    std::io::Write::write_all(&mut tmp, format!("{release}\n").as_bytes())
        .map_err(VmError::io("cannot write", tmp.path()))?;
    publish(tmp, &marker)
}

/// Make a finished temp file world-readable and rename it to `dest`.
fn publish(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(VmError::io("cannot chmod", tmp.path()))?;
    tmp.persist(dest).map_err(|e| VmError::Io {
        what: "cannot write",
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Names matching `which` in the apt lists, newest first.
fn search(which: KernelChoice) -> Result<Vec<String>> {
    let out = cmd::run(
        Command::new("apt-cache").args(["search", "--names-only", which.search_regex()]),
        "apt-cache",
        APT_HINT,
    )?;
    let mut found: Vec<(u64, u8, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            which
                .version_key(name)
                .map(|(n, r)| (n, r, name.to_string()))
        })
        .collect();
    found.sort();
    Ok(found.into_iter().rev().map(|(_, _, n)| n).collect())
}

fn apt_update() -> Result<()> {
    tracing::info!("running apt-get update");
    cmd::run(
        Command::new("apt-get").args(["-q", "update"]),
        "apt-get",
        APT_HINT,
    )?;
    Ok(())
}

/// The newest package name for `which`, updating apt lists (and adding backports) only if needed.
fn newest_package(which: KernelChoice) -> Result<String> {
    if let Some(p) = search(which)?.into_iter().next() {
        return Ok(p);
    }
    apt_update()?;
    if let Some(p) = search(which)?.into_iter().next() {
        return Ok(p);
    }
    if which == KernelChoice::Debian6_12 && ensure_backports()? {
        apt_update()?;
        if let Some(p) = search(which)?.into_iter().next() {
            return Ok(p);
        }
    }
    Err(VmError::KernelNotFound {
        pattern: which.pattern(),
        hint: "check that the apt sources include Debian bookworm (and bookworm-security or bookworm-backports for 6.12)",
    })
}

/// Add `bookworm-backports` to the apt sources if apt does not know it. Returns whether added.
fn ensure_backports() -> Result<bool> {
    let policy = cmd::run(
        Command::new("apt-cache").arg("policy"),
        "apt-cache",
        APT_HINT,
    )?;
    let suite = format!("{}-backports", codename());
    if String::from_utf8_lossy(&policy.stdout).contains(&suite) {
        return Ok(false);
    }
    let uri = debian_mirror().unwrap_or_else(|| "http://deb.debian.org/debian".to_string());
    let path = Path::new("/etc/apt/sources.list.d/strata-backports.list");
    tracing::warn!(?path, %uri, %suite, "adding Debian backports to the apt sources for the 6.12 kernel");
    fs::write(path, format!("deb {uri} {suite} main\n")).map_err(|e| VmError::Io {
        what: "cannot add backports to apt sources (run as root, or add it by hand)",
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(true)
}

/// The distribution codename (`bookworm` unless /etc/os-release says otherwise).
fn codename() -> String {
    fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VERSION_CODENAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "bookworm".to_string())
}

/// The mirror URI already used for the main Debian suite, in either sources format.
fn debian_mirror() -> Option<String> {
    let codename = codename();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "sources" {
            for para in text.split("\n\n") {
                let field = |k: &str| {
                    para.lines()
                        .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                };
                let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else {
                    continue;
                };
                if suites.split_whitespace().any(|s| s == codename) {
                    return uris.split_whitespace().next().map(str::to_string);
                }
            }
        } else if ext == "list" || f.file_name().is_some_and(|n| n == "sources.list") {
            for l in text.lines() {
                let words: Vec<&str> = l
                    .split_whitespace()
                    .filter(|w| !w.starts_with('['))
                    .collect();
                if words.len() >= 3 && words[0] == "deb" && words[2] == codename {
                    return Some(words[1].to_string());
                }
            }
        }
    }
    None
}

/// Download `package`, unpack it, and publish it as `kernels/<release>` by rename.
fn download_and_extract(package: &str, release: &str, kernels: &Path) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(kernels)
        .map_err(VmError::io("cannot create temp dir in", kernels))?;
    tracing::info!(%package, "downloading guest kernel");
    let download = |tmp: &Path| {
        let mut c = Command::new("apt-get");
        if nix::unistd::geteuid().is_root() {
            // The sandbox user cannot write into our private temp dir; avoid the warning.
            c.args(["-o", "APT::Sandbox::User=root"]);
        }
        c.args(["-q", "download", package]).current_dir(tmp);
        cmd::run(&mut c, "apt-get", APT_HINT)
    };
    if let Err(e) = download(tmp.path()) {
        // Stale lists name versions the mirror no longer has: refresh once and retry.
        tracing::warn!(error = %e, "apt-get download failed; running apt-get update and retrying");
        apt_update()?;
        download(tmp.path())?;
    }
    let deb = fs::read_dir(tmp.path())
        .map_err(VmError::io("cannot read", tmp.path()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| VmError::Command {
            command: format!("apt-get download {package}"),
            detail: "no .deb file was produced".into(),
            hint: APT_HINT,
        })?;
    extract_deb(&deb, package, release, tmp.path(), kernels)?;
    let _ = fs::remove_file(&deb);
    Ok(())
}

/// Unpack `deb` into `tmp/root`, check it holds `boot/vmlinuz-RELEASE` and its modules, and
/// publish it as `kernels/RELEASE` (a rename: never half there).
fn extract_deb(deb: &Path, package: &str, release: &str, tmp: &Path, kernels: &Path) -> Result<()> {
    let root = tmp.join("root");
    cmd::run(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root),
        "dpkg-deb",
        "the download may be corrupt: retry; check free space in the cache (STRATA_CACHE)",
    )?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() || !root.join("lib/modules").join(release).is_dir() {
        return Err(VmError::BadKernelPackage {
            package: package.to_string(),
            detail: format!("expected boot/vmlinuz-{release} and lib/modules/{release}"),
            dir: root,
        });
    }
    let dest = kernels.join(release);
    fs::rename(&root, &dest).map_err(VmError::io("cannot publish kernel to", &dest))?;
    tracing::info!(%release, ?dest, "guest kernel cached");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_exact_names_and_numeric_order() {
        let k = KernelChoice::Debian6_1;
        assert_eq!(
            k.version_key("linux-image-6.1.0-56-cloud-amd64"),
            Some((56, 0))
        );
        assert_eq!(
            k.version_key("linux-image-6.1.0-9-cloud-amd64"),
            Some((9, 0))
        );
        assert!(
            k.version_key("linux-image-6.1.0-9-cloud-amd64")
                < k.version_key("linux-image-6.1.0-10-cloud-amd64")
        );
        assert_eq!(
            k.version_key("linux-image-6.1.0-56-cloud-amd64-unsigned"),
            None
        );
        assert_eq!(k.version_key("linux-image-6.1.0-56-cloud-amd64-dbg"), None);
        assert_eq!(k.version_key("linux-image-6.1.0-56-amd64"), None);
        let k = KernelChoice::Debian6_12;
        assert_eq!(
            k.version_key("linux-image-6.12.117+deb12-cloud-amd64"),
            Some((117, 1))
        );
        assert_eq!(
            k.version_key("linux-image-6.12.38+bpo-cloud-amd64"),
            Some((38, 0))
        );
        assert_eq!(k.version_key("linux-image-6.12-cloud-amd64"), None);
        assert_eq!(
            k.version_key("linux-image-6.12.117+deb12-cloud-amd64-unsigned"),
            None
        );
        assert!(
            k.version_key("linux-image-6.12.99+deb12-cloud-amd64")
                < k.version_key("linux-image-6.12.100+deb12-cloud-amd64")
        );
    }

    #[test]
    fn orders_dependencies_first() {
        let m = |k: &str, deps: &[&str]| {
            let deps = deps.iter().map(|d| d.to_string()).collect();
            (k.to_string(), deps, PathBuf::from(k))
        };
        let order = dependency_order(vec![
            m("virtio", &["virtio_ring"]),
            m("virtio_ring", &[]),
            m("virtio_blk", &["virtio", "virtio_ring", "builtin_thing"]),
            m("fuse", &[]),
        ]);
        assert_eq!(
            order,
            ["virtio_ring", "virtio", "virtio_blk", "fuse"].map(PathBuf::from)
        );
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring\0intree=Y\0";
        assert_eq!(modinfo_depends(ko), ["virtio", "virtio_ring"]);
        assert!(modinfo_depends(b"\0depends=\0").is_empty());
    }

    #[test]
    fn a_kernel_by_path_is_an_unpacked_package_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("k");
        assert!(
            format!("{}", GuestKernel::from_path(&root).unwrap_err()).contains("not a directory")
        );
        fs::create_dir_all(root.join("boot")).unwrap();
        assert!(format!("{}", GuestKernel::from_path(&root).unwrap_err()).contains("vmlinuz"));
        fs::write(root.join("boot/vmlinuz-9.9.9-test"), b"").unwrap();
        fs::create_dir_all(root.join("lib/modules/9.9.9-test")).unwrap();
        let k = GuestKernel::from_path(&root).unwrap();
        assert_eq!(k.release, "9.9.9-test");
        assert_eq!(k.name, "9.9.9-test");
        assert!(k.vmlinuz.ends_with("boot/vmlinuz-9.9.9-test"));
        let spec: KernelSpec = root.to_str().unwrap().parse().unwrap();
        assert_eq!(spec, KernelSpec::Path(root.clone()));
        assert_eq!(spec.short_name(), "k");
        assert_eq!(
            "6.12".parse::<KernelSpec>(),
            Ok(KernelSpec::Debian(KernelChoice::Debian6_12))
        );
        assert!("/no/such/kernel".parse::<KernelSpec>().is_err());
        fs::write(root.join("boot/vmlinuz-9.9.10-test"), b"").unwrap();
        assert!(format!("{}", GuestKernel::from_path(&root).unwrap_err()).contains("several"));
    }

    #[test]
    fn choice_round_trips() {
        for c in KernelChoice::ALL {
            assert_eq!(c.name().parse::<KernelChoice>(), Ok(c));
        }
        assert!("5.10".parse::<KernelChoice>().is_err());
    }
}
