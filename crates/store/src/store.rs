//! The store: import, image records, container rootfs records, gc.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::fcntl::{renameat2, FlockArg, RenameFlags};
use serde::{Deserialize, Serialize};

use crate::digest::{is_limit, HashReader, LimitReader, Sha256};
use crate::error::{Result, StoreError};
use crate::source::{self, LayerSpec, Source};
use crate::unpack::{Budget, Extractor};
use crate::walk;

/// Where `strata` keeps its store unless told otherwise.
pub const DEFAULT_STORE: &str = "/var/lib/strata";
/// Default limit on bytes unpacked by one import (decompressed tar streams; file data).
pub const DEFAULT_MAX_UNPACKED: u64 = 8 << 30;

/// One layer of an image, as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as distributed (compressed or not).
    pub digest: String,
    /// Digest of the uncompressed tar: the layer's identity in the store.
    pub diff_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The unpacked layer directory.
    pub path: PathBuf,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    /// Manifest digest (OCI sources; absent for docker save archives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    pub config_digest: String,
    /// Bottom-first, as in the OCI config.
    pub layers: Vec<LayerRecord>,
    /// Entrypoint, Cmd, Env, User, WorkingDir, platform and labels from the image config;
    /// absent for images imported by a strata that did not keep them (import them again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<crate::config::ImageConfig>,
}

/// A container's root filesystem: its layers (topmost first) and writable dirs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsRecord {
    pub id: String,
    pub image: String,
    pub config_digest: String,
    /// Layer directories, topmost first (overlayfs `lowerdir` order).
    pub lowers: Vec<PathBuf>,
    /// The layers' diff_ids, topmost first.
    pub diff_ids: Vec<String>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Name to record, normalised (default: the name in the source, else the digest).
    pub name: Option<String>,
    /// The image to take from a source that holds several (its ref name or tag); default:
    /// `name`, else the only one.
    pub select: Option<String>,
    /// Limit on unpacked bytes for this import.
    pub max_unpacked: u64,
    /// Show a progress bar on stderr (callers pass `stderr().is_terminal()`).
    pub progress: bool,
    /// `syncfs` the store before new layers become visible, so that after a crash a layer
    /// is whole or absent (default). Off only for measurements.
    pub durable: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            name: None,
            select: None,
            max_unpacked: DEFAULT_MAX_UNPACKED,
            progress: false,
            durable: true,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    pub image: ImageRecord,
    /// Layers unpacked by this import.
    pub unpacked: usize,
    /// Layers already in the store (or unpacked concurrently by another import).
    pub reused: usize,
    /// Decompressed tar bytes read.
    pub bytes: u64,
    /// Non-directory entries created.
    pub files: u64,
}

/// What gc removed, and what it could not (it goes on past a failing item).
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub layers_removed: Vec<String>,
    pub tmp_removed: usize,
    /// One line per item gc could not remove: what, and why.
    pub failed: Vec<String>,
    /// EROFS images (`erofs/<key>.img`) of stacks no image or rootfs has any more.
    pub erofs_removed: Vec<String>,
}

/// The store's directories and the most each may grant. Like containerd's root, the store's
/// root only lets other users traverse it (0711) and everything inside is its owner's alone
/// (0700): setuid and file-capability binaries, device nodes and world-writable directories
/// of images, and whatever guests write into their upper dirs, are unreachable for every
/// other local user.
const SKELETON: [(&str, u32); 8] = [
    ("", 0o711),
    ("layers", 0o700),
    ("layers/sha256", 0o700),
    ("layers/sealed", 0o700),
    ("images", 0o700),
    ("containers", 0o700),
    ("tmp", 0o700),
    ("erofs", 0o700),
];

/// The checks of [`Store::open`] on an existing store, changing nothing: a store directory
/// other users can reach, owned by another user or replaced by a symlink is refused.
fn check_existing(root: &Path) -> Result<()> {
    for (sub, max) in SKELETON {
        let p = root.join(sub);
        let meta = if sub.is_empty() {
            fs::metadata(&p)
        } else {
            fs::symlink_metadata(&p)
        };
        let meta = match meta {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io("cannot stat", &p)(e)),
        };
        if check_dir(&p, &meta, max)? {
            return Err(StoreError::Insecure {
                path: p,
                reason: format!(
                    "mode {:o} lets other users in (at most {max:o}): `strata gc` (or any \
                     command that writes the store) as its owner narrows it",
                    meta.mode() & 0o7777
                ),
            });
        }
    }
    Ok(())
}

/// Check one store directory (`meta` of `path`): a directory owned by whoever runs this,
/// granting nothing beyond `max`. `Ok(true)`: its mode must be narrowed to `max`.
pub(crate) fn check_dir(path: &Path, meta: &fs::Metadata, max: u32) -> Result<bool> {
    let insecure = |reason: String| StoreError::Insecure {
        path: path.to_owned(),
        reason,
    };
    if !meta.is_dir() {
        return Err(insecure("not a directory (a symlink?)".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(insecure(format!(
            "owned by uid {}, not by uid {me} who runs strata (another user could change \
             layers and rootfs): chown it, or use a store of your own",
            meta.uid()
        )));
    }
    Ok(meta.mode() & 0o7777 & !max != 0)
}

/// A store rooted at a directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A held flock on STORE/lock (released on drop).
pub(crate) struct Lock(#[allow(dead_code)] nix::fcntl::Flock<File>);

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 255 && n.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// A file name for an image name: `[A-Za-z0-9_.-]` kept (but a leading `.`), the rest `%XX`.
fn escape(name: &str) -> String {
    let mut s = String::new();
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn write_json_atomic(tmp_dir: &Path, dest: &Path, value: &impl Serialize) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::BadJson {
        what: "record".into(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    write_atomic(tmp_dir, dest, &bytes)
}

fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir)
        .map_err(StoreError::io("cannot create temp file in", tmp_dir))?;
    std::io::Write::write_all(&mut tmp, bytes)
        .map_err(StoreError::io("cannot write", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(StoreError::io("cannot sync", tmp.path()))?;
    tmp.persist(dest).map_err(|e| StoreError::Io {
        what: "cannot write",
        path: dest.to_owned(),
        source: e.error,
    })?;
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(StoreError::io("cannot read", path))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::BadRecord {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn rename_noreplace(from: &Path, to: &Path) -> std::result::Result<(), Errno> {
    renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE)
}

/// The decompressor for a layer blob, by its first bytes (gzip, zstd, else plain tar).
enum Decoder<R: BufRead> {
    Plain(R),
    Gzip(flate2::bufread::MultiGzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

impl<R: BufRead> Decoder<R> {
    fn new(mut r: R) -> std::io::Result<Self> {
        let head = r.fill_buf()?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(r))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(r)?)
        } else {
            Decoder::Plain(r)
        })
    }

    fn into_inner(self) -> R {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(g) => g.into_inner(),
            Decoder::Zstd(z) => z.finish(),
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(g) => g.read(buf),
            Decoder::Zstd(z) => z.read(buf),
        }
    }
}

/// The name an import records: the one asked for, else the source's (both normalised:
/// `debian` is stored as `docker.io/library/debian:latest`), else its digest.
fn image_name(opts: &ImportOptions, spec: &source::ImageSpec) -> Result<String> {
    let name = match (&opts.name, &spec.name) {
        (Some(n), _) => crate::reference::normalize(n)
            .map_err(|why| StoreError::BadName(format!("{n}: {why}")))?,
        // An OCI ref.name without a repository is a bare tag (umoci and skopeo write
        // "latest" for `layout:latest`): kept as it is, as is a name that is no reference,
        // rather than inventing `docker.io/library/latest` or refusing the image.
        (None, Some(n)) if !n.contains(['/', ':']) => n.clone(),
        (None, Some(n)) => crate::reference::normalize(n).unwrap_or_else(|_| n.clone()),
        (None, None) => spec
            .manifest_digest
            .as_ref()
            .unwrap_or(&spec.config_digest)
            .to_string(),
    };
    if !valid_name(&name) {
        return Err(StoreError::BadName(name));
    }
    Ok(name)
}

/// A progress bar over the image's blob bytes on stderr, or a hidden one.
fn progress_bar(show: bool, spec: &source::ImageSpec) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let total: u64 = spec.layers.iter().filter_map(|l| l.size).sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}

fn read_err(lname: &str) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Tar {
        layer: lname.to_string(),
        after: String::new(),
        source: e,
    }
}

/// Check a layer blob's size against the manifest and, when the manifest gives one, its
/// digest, before anything decompresses it. The digest, when there was one to check.
fn verify_blob(
    source: &Source,
    l: &LayerSpec,
    lname: &str,
    bar: indicatif::ProgressBar,
) -> Result<Option<Sha256>> {
    let (reader, len) = source.open_member(&l.blob)?;
    if let Some(size) = l.size {
        if len != size {
            return Err(StoreError::Truncated {
                what: format!("layer blob {lname}"),
                expected: size,
                actual: len,
            });
        }
    }
    let Some(want) = &l.digest else {
        return Ok(None);
    };
    let mut blob = HashReader::new(Progress { inner: reader, bar });
    let (d, n) = blob.finish().map_err(read_err(lname))?;
    if n != len {
        return Err(StoreError::Truncated {
            what: format!("layer blob {lname}"),
            expected: len,
            actual: n,
        });
    }
    if *want != d {
        return Err(StoreError::DigestMismatch {
            what: format!("layer blob {lname}"),
            expected: want.to_string(),
            actual: d.to_string(),
        });
    }
    Ok(Some(d))
}

/// Unpack a layer blob into `dest` (created here) and check its uncompressed tar against the
/// diff_id. With `hash_blob`, also the blob's digest (the manifest gave none to check first).
fn unpack_blob(
    source: &Source,
    l: &LayerSpec,
    lname: &str,
    dest: &Path,
    hash_blob: bool,
    budget: &Budget,
    bar: &indicatif::ProgressBar,
) -> Result<Option<Sha256>> {
    let (reader, _) = source.open_member(&l.blob)?;
    let progress = Progress {
        inner: reader,
        bar: bar.clone(),
    };
    let blob = if hash_blob {
        HashReader::new(progress)
    } else {
        HashReader::counting(progress)
    };
    fs::create_dir(dest).map_err(StoreError::io("cannot create", dest))?;
    let buffered = BufReader::with_capacity(256 * 1024, blob);
    let decoder = Decoder::new(buffered).map_err(read_err(lname))?;
    let limited = LimitReader::new(decoder, budget.stream.clone(), budget.limit);
    let mut archive = tar::Archive::new(HashReader::new(limited));
    Extractor::new(dest, lname, budget)?.run(&mut archive)?;
    let mut tar_stream = archive.into_inner();
    let (diff, _) = tar_stream.finish().map_err(|e| {
        if is_limit(&e) {
            StoreError::TooLarge {
                layer: lname.to_string(),
                entry: "(data after the end of the archive)".into(),
                limit: budget.limit,
            }
        } else {
            read_err(lname)(e)
        }
    })?;
    if diff != l.diff_id {
        return Err(StoreError::DigestMismatch {
            what: format!("layer {lname}: uncompressed tar (diff_id)"),
            expected: l.diff_id.to_string(),
            actual: diff.to_string(),
        });
    }
    if !hash_blob {
        return Ok(None);
    }
    let mut blob = tar_stream
        .into_inner()
        .into_inner()
        .into_inner()
        .into_inner();
    let (d, _) = blob.finish().map_err(read_err(lname))?;
    Ok(Some(d))
}

/// Counts read bytes into a progress bar.
struct Progress<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// A staging directory in the store ([`Store::staging`]).
pub struct Staging {
    dir: tempfile::TempDir,
    _lock: Lock,
}

impl Staging {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Store {
    /// Open the store at `root`, creating its skeleton if needed, and check and repair it: every
    /// store directory owned by this user (else refused) and no more open than the store's
    /// skeleton allows (0711 root, 0700 inside; narrowed, with a warning, if it is).
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        if !root.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&root)
                .map_err(StoreError::io("cannot create store directory", &root))?;
        }
        for (sub, max) in SKELETON {
            let p = root.join(sub);
            if !sub.is_empty() {
                match fs::DirBuilder::new().mode(max).create(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(StoreError::io("cannot create store directory", &p)(e))
                    }
                    _ => {}
                }
            }
            // The root may be a symlink the operator made; nothing inside may be one.
            let nofollow = if sub.is_empty() { 0 } else { libc::O_NOFOLLOW };
            let dir = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | nofollow)
                .open(&p)
                .map_err(StoreError::io("cannot open store directory", &p))?;
            let meta = dir.metadata().map_err(StoreError::io("cannot stat", &p))?;
            if check_dir(&p, &meta, max)? {
                dir.set_permissions(fs::Permissions::from_mode(max))
                    .map_err(StoreError::io("cannot narrow the mode of", &p))?;
                tracing::warn!(
                    "store directory {} was mode {:o}: narrowed to {max:o}",
                    p.display(),
                    meta.mode() & 0o7777
                );
            }
        }
        Ok(Store { root })
    }

    /// The store at `root` if there is one, else `None`: for read-only commands (`image ls`,
    /// `image inspect`, `rootfs ls`), which create nothing on a host without a store. A store
    /// other users can reach is refused, as by [`Store::open_existing`].
    pub fn find(root: impl Into<PathBuf>) -> Result<Option<Store>> {
        let root = root.into();
        match std::fs::symlink_metadata(root.join("images")) {
            Ok(m) if m.is_dir() => {
                check_existing(&root)?;
                Ok(Some(Store { root }))
            }
            Ok(_) => Err(StoreError::BadRecord {
                path: root.join("images"),
                reason: "not a directory".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io {
                what: "cannot open the store",
                path: root,
                source: e,
            }),
        }
    }

    /// Open an existing store without creating or changing anything (for readers such as
    /// `strata serve --rootfs` and the daemon's rootfs lookups, which may run confined), after
    /// the checks [`Store::open`] makes: a store other users can reach is refused.
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        let containers = root.join("containers");
        if !containers.is_dir() {
            return Err(StoreError::RootfsNotFound(format!(
                "(no store at {}: `strata image import` creates one)",
                root.display()
            )));
        }
        check_existing(&root)?;
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh directory in the store's `tmp/` (0700, on the store's filesystem) for a source
    /// fetched before it is imported (`strata image pull`), with the store's shared lock held
    /// so that `gc` cannot remove it meanwhile. Removed when dropped.
    pub fn staging(&self, prefix: &str) -> Result<Staging> {
        let lock = self.lock(false)?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.tmp())
            .map_err(StoreError::io("cannot create temp dir in", self.tmp()))?;
        Ok(Staging { dir, _lock: lock })
    }

    /// The directory of the layer with this diff_id.
    pub fn layer_path(&self, diff_id: &Sha256) -> PathBuf {
        self.root.join("layers/sha256").join(diff_id.hex())
    }

    /// The seal of the layer with this diff_id (see [`walk::seal`]), written when it was
    /// published.
    fn seal_path(&self, diff_id: &Sha256) -> PathBuf {
        self.root.join("layers/sealed").join(diff_id.hex())
    }

    /// Whether the layer with this diff_id is in the store exactly as it was unpacked: a
    /// directory whose seal matches. A layer without a seal (unpacked before seals existed,
    /// or published by an import that died before writing it) or with a broken one is not
    /// reused: the import unpacks it again and replaces it.
    fn layer_intact(&self, diff_id: &Sha256) -> bool {
        let p = self.layer_path(diff_id);
        if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            return false;
        }
        let want = match fs::read_to_string(self.seal_path(diff_id)) {
            Ok(w) => w,
            Err(_) => {
                tracing::warn!("layer {diff_id} has no seal: unpacking it again");
                return false;
            }
        };
        match walk::seal(&p) {
            Ok(got) if got.hex() == want.trim() => true,
            Ok(_) => {
                tracing::warn!("layer {diff_id} changed since it was unpacked: unpacking it again");
                false
            }
            Err(e) => {
                tracing::warn!("layer {diff_id} cannot be checked ({e}): unpacking it again");
                false
            }
        }
    }

    fn image_path(&self, name: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", escape(name)))
    }

    fn container_path(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    pub(crate) fn lock(&self, exclusive: bool) -> Result<Lock> {
        self.lock_file("lock", exclusive)
    }

    /// Flock on `STORE/name` (created 0600, never through a symlink).
    fn lock_file(&self, name: &str, exclusive: bool) -> Result<Lock> {
        let p = self.root.join(name);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
            .map_err(StoreError::io("cannot open store lock", &p))?;
        let mode = f
            .metadata()
            .map_err(StoreError::io("cannot stat", &p))?
            .mode();
        if mode & 0o077 != 0 {
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(StoreError::io("cannot narrow the mode of", &p))?;
        }
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        let held = nix::fcntl::Flock::lock(f, arg).map_err(|(_, e)| StoreError::Io {
            what: "cannot lock store",
            path: p.clone(),
            source: std::io::Error::from_raw_os_error(e as i32),
        })?;
        Ok(Lock(held))
    }

    /// Import an image from `src` (OCI layout dir, OCI archive tar or docker save tar).
    ///
    /// New layers are unpacked into `tmp/` and only moved into `layers/` (atomically, never
    /// replacing) once every layer and digest checked out; on any error nothing in the store
    /// changes.
    pub fn import(&self, src: &Path, opts: &ImportOptions) -> Result<ImportReport> {
        let _lock = self.lock(false)?;
        let source = Source::open(src)?;
        let spec = source::resolve(&source, opts.select.as_deref().or(opts.name.as_deref()))?;
        let name = image_name(opts, &spec)?;
        let work = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(self.tmp())
            .map_err(StoreError::io("cannot create temp dir in", self.tmp()))?;
        let bar = progress_bar(opts.progress, &spec);
        let budget = Budget::new(opts.max_unpacked);
        // Which layers to unpack (the first occurrence of a diff_id not in the store).
        let mut fresh: Vec<Sha256> = Vec::new();
        let mut unpack_here = Vec::new();
        for l in &spec.layers {
            let new = !fresh.contains(&l.diff_id) && !self.layer_intact(&l.diff_id);
            if new {
                fresh.push(l.diff_id.clone());
            }
            unpack_here.push(new);
        }
        bar.set_message(format!(
            "{name}: {} of {} layers to unpack",
            fresh.len(),
            spec.layers.len()
        ));
        let records =
            self.unpack_layers(&source, &spec, &unpack_here, work.path(), &budget, &bar)?;
        bar.finish_and_clear();
        let (unpacked, raced) = self.publish_layers(work.path(), &fresh, opts.durable)?;
        let image = ImageRecord {
            name: name.clone(),
            manifest_digest: spec.manifest_digest.as_ref().map(|d| d.to_string()),
            config_digest: spec.config_digest.to_string(),
            layers: records,
            config: Some(spec.config.clone()),
        };
        write_json_atomic(&self.tmp(), &self.image_path(&name), &image)?;
        drop(work);
        Ok(ImportReport {
            image,
            unpacked,
            reused: spec.layers.len() - fresh.len() + raced,
            bytes: budget.stream.load(Ordering::Relaxed),
            files: budget.files.load(Ordering::Relaxed),
        })
    }

    /// Verify every layer of `spec`, unpacking those marked in `unpack_here` into `work`, in
    /// parallel (layers are independent); the first error stops the others. The records, in
    /// the image's order.
    fn unpack_layers(
        &self,
        source: &Source,
        spec: &source::ImageSpec,
        unpack_here: &[bool],
        work: &Path,
        budget: &Budget,
        bar: &indicatif::ProgressBar,
    ) -> Result<Vec<LayerRecord>> {
        let n = spec.layers.len();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let results: Vec<std::sync::Mutex<Option<Result<Sha256>>>> =
            (0..n).map(|_| std::sync::Mutex::new(None)).collect();
        let workers = std::thread::available_parallelism()
            .map_or(1, |p| p.get())
            .min(n)
            .max(1);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let l = &spec.layers[i];
                    let staged = work.join(l.diff_id.hex());
                    let dest = unpack_here[i].then_some(staged.as_path());
                    let r = self.layer(source, l, dest, budget, bar);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                });
            }
        });
        let mut records = Vec::new();
        let mut first_err = None;
        for (l, slot) in spec.layers.iter().zip(results) {
            match slot.into_inner().ok().flatten() {
                Some(Ok(digest)) => records.push(LayerRecord {
                    digest: digest.to_string(),
                    diff_id: l.diff_id.to_string(),
                    media_type: l.media_type.clone(),
                    path: self.layer_path(&l.diff_id),
                }),
                Some(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                None => {}
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if records.len() != n {
            return Err(StoreError::Unsupported(
                "an import worker stopped without a result".into(),
            ));
        }
        Ok(records)
    }

    /// Commit the layers unpacked into `work`: durable (`syncfs`, when asked), then visible
    /// (renamed into `layers/`, never replacing). Returns (moved, already there): a concurrent
    /// import of the same layer that got there first keeps its copy.
    fn publish_layers(
        &self,
        work: &Path,
        fresh: &[Sha256],
        durable: bool,
    ) -> Result<(usize, usize)> {
        if !fresh.is_empty() && durable {
            let f = File::open(work).map_err(StoreError::io("cannot open", work))?;
            nix::unistd::syncfs(f.as_raw_fd()).map_err(|e| StoreError::Io {
                what: "cannot sync",
                path: work.to_owned(),
                source: std::io::Error::from_raw_os_error(e as i32),
            })?;
        }
        let seals = fresh
            .iter()
            .map(|d| {
                let staged = work.join(d.hex());
                walk::seal(&staged).map_err(StoreError::io("cannot seal layer", &staged))
            })
            .collect::<Result<Vec<_>>>()?;
        // Moving a layer into place and writing its seal is one step for concurrent imports.
        let _publishing = self.lock_file("layers/publish.lock", true)?;
        let (mut moved, mut raced) = (0, 0);
        for (d, seal) in fresh.iter().zip(seals) {
            let dest = self.layer_path(d);
            let staged = work.join(d.hex());
            let io_err = |e: Errno| StoreError::Io {
                what: "cannot move layer into place",
                path: dest.clone(),
                source: std::io::Error::from_raw_os_error(e as i32),
            };
            match rename_noreplace(&staged, &dest) {
                Ok(()) => moved += 1,
                // A concurrent import of the same layer got there first: keep its copy.
                Err(Errno::EEXIST | Errno::ENOTEMPTY) if self.layer_intact(d) => {
                    raced += 1;
                    continue;
                }
                // An unsealed or changed copy: ours takes its place; the old one is left in
                // `work` (removed with it, or by gc).
                Err(Errno::EEXIST | Errno::ENOTEMPTY) => {
                    renameat2(None, &staged, None, &dest, RenameFlags::RENAME_EXCHANGE)
                        .map_err(io_err)?;
                    moved += 1;
                }
                Err(e) => return Err(io_err(e)),
            }
            let mut text = seal.hex().to_string();
            text.push('\n');
            write_atomic(&self.tmp(), &self.seal_path(d), text.as_bytes())?;
        }
        Ok((moved, raced))
    }

    /// Read one layer blob, verifying its digest, size and (when unpacking into `dest`) its
    /// diff_id. Returns the blob digest.
    fn layer(
        &self,
        source: &Source,
        l: &LayerSpec,
        dest: Option<&Path>,
        budget: &Budget,
        bar: &indicatif::ProgressBar,
    ) -> Result<Sha256> {
        let lname = l
            .digest
            .as_ref()
            .map_or_else(|| l.blob.clone(), |d| d.to_string());
        // Check the blob before a decompressor or the tar reader sees a byte of it.
        let checked_bar = match dest {
            None => bar.clone(),
            Some(_) => indicatif::ProgressBar::hidden(),
        };
        let digest = verify_blob(source, l, &lname, checked_bar)?;
        let Some(dest) = dest else {
            return match digest {
                Some(d) => Ok(d),
                None => {
                    let (reader, _) = source.open_member(&l.blob)?;
                    let (d, _) = HashReader::new(Progress {
                        inner: reader,
                        bar: bar.clone(),
                    })
                    .finish()
                    .map_err(read_err(&lname))?;
                    Ok(d)
                }
            };
        };
        let unpacked = unpack_blob(source, l, &lname, dest, digest.is_none(), budget, bar)?;
        // Verified before unpacking, or hashed while unpacking.
        digest.or(unpacked).ok_or_else(|| {
            StoreError::Unsupported(format!("layer {lname}: no digest was computed"))
        })
    }

    /// Import an image archive (OCI archive or docker save tar) read from `r` (standard
    /// input): spooled to a file in the store's `tmp/` (the archive is read by offset), removed
    /// afterwards.
    pub fn import_stream(&self, r: &mut impl Read, opts: &ImportOptions) -> Result<ImportReport> {
        let mut spool = tempfile::Builder::new()
            .prefix("stdin-")
            .suffix(".tar")
            .tempfile_in(self.tmp())
            .map_err(StoreError::io("cannot create temp file in", self.tmp()))?;
        std::io::copy(r, spool.as_file_mut()).map_err(StoreError::io(
            "cannot read the archive from standard input into",
            spool.path(),
        ))?;
        self.import(spool.path(), opts)
    }

    /// Every image, sorted by name.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(StoreError::io("cannot list", &dir))? {
            let e = e.map_err(StoreError::io("cannot list", &dir))?;
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                out.push(read_json::<ImageRecord>(&p)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// An image by name (as stored, or normalised: `debian` finds
    /// `docker.io/library/debian:latest`), by manifest or config digest, or by a unique prefix
    /// of at least 4 hex digits of its config digest (the IMAGE ID `image ls` shows).
    pub fn image(&self, reference: &str) -> Result<ImageRecord> {
        let normalized = crate::reference::normalize(reference).ok();
        for name in std::iter::once(reference).chain(normalized.as_deref()) {
            if valid_name(name) {
                let p = self.image_path(name);
                if p.is_file() {
                    return read_json(&p);
                }
            }
        }
        let all = self.images()?;
        if let Some(i) = all.iter().find(|i| {
            i.manifest_digest.as_deref() == Some(reference) || i.config_digest == reference
        }) {
            return Ok(i.clone());
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() >= 4 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            let id = |i: &ImageRecord| {
                i.config_digest
                    .strip_prefix("sha256:")
                    .is_some_and(|h| h.starts_with(hex))
            };
            let mut hits = all.iter().filter(|i| id(i));
            if let Some(first) = hits.next() {
                // Several names for one image are one image; several images are ambiguous.
                let others: Vec<&str> = hits
                    .filter(|i| i.config_digest != first.config_digest)
                    .map(|i| i.name.as_str())
                    .collect();
                if !others.is_empty() {
                    return Err(StoreError::Ambiguous {
                        reference: reference.to_string(),
                        names: std::iter::once(first.name.clone())
                            .chain(others.iter().map(|s| s.to_string()))
                            .collect(),
                    });
                }
                return Ok(first.clone());
            }
        }
        Err(StoreError::ImageNotFound(reference.to_string()))
    }

    /// Forget an image (its layers stay until `gc`).
    /// By digest or IMAGE ID, only when a single name has it: removing one of several names
    /// at random would be a surprise, so that is refused with the names (remove by name).
    pub fn remove_image(&self, reference: &str) -> Result<ImageRecord> {
        let _lock = self.lock(false)?;
        let img = self.image(reference)?;
        let by_name = img.name == reference
            || crate::reference::normalize(reference).is_ok_and(|n| n == img.name);
        if !by_name {
            let names: Vec<String> = self
                .images()?
                .into_iter()
                .filter(|i| i.config_digest == img.config_digest)
                .map(|i| i.name)
                .collect();
            if names.len() > 1 {
                return Err(StoreError::Ambiguous {
                    reference: reference.to_string(),
                    names,
                });
            }
        }
        let p = self.image_path(&img.name);
        fs::remove_file(&p).map_err(StoreError::io("cannot remove", &p))?;
        Ok(img)
    }

    /// Every container rootfs, sorted by id.
    pub fn rootfs_list(&self) -> Result<Vec<RootfsRecord>> {
        let dir = self.root.join("containers");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(StoreError::io("cannot list", &dir))? {
            let e = e.map_err(StoreError::io("cannot list", &dir))?;
            let p = e.path().join("rootfs.json");
            if p.is_file() {
                out.push(read_json::<RootfsRecord>(&p)?);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Remove layers no image or container references, their EROFS images, and leftovers of
    /// interrupted imports.
    pub fn gc(&self) -> Result<GcReport> {
        let _lock = self.lock(true)?;
        let mut keep: HashSet<String> = HashSet::new();
        let mut stacks: Vec<Vec<String>> = Vec::new();
        for i in self.images()? {
            keep.extend(i.layers.iter().map(|l| l.diff_id.clone()));
            stacks.push(i.layers.iter().rev().map(|l| l.diff_id.clone()).collect());
        }
        for r in self.rootfs_list()? {
            keep.extend(r.diff_ids.iter().cloned());
            stacks.push(r.diff_ids.clone());
        }
        let (erofs_removed, failed) = self.gc_erofs(&stacks);
        let mut report = GcReport {
            erofs_removed,
            failed,
            ..GcReport::default()
        };
        // No import runs while we hold the lock exclusively: everything in tmp/ is stale.
        // One item that cannot be removed is reported, and the others still are.
        let tmp = self.tmp();
        for e in fs::read_dir(&tmp).map_err(StoreError::io("cannot list", &tmp))? {
            let p = e.map_err(StoreError::io("cannot list", &tmp))?.path();
            match remove_any(&p) {
                Ok(()) => report.tmp_removed += 1,
                Err(e) => report.failed.push(e.to_string()),
            }
        }
        let layers = self.root.join("layers/sha256");
        for e in fs::read_dir(&layers).map_err(StoreError::io("cannot list", &layers))? {
            let e = e.map_err(StoreError::io("cannot list", &layers))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if keep.contains(&format!("sha256:{name}")) {
                continue;
            }
            // Out of sight first (atomic), then delete.
            let doomed = tmp.join(format!("gc-{name}"));
            if let Err(err) = fs::rename(e.path(), &doomed) {
                report
                    .failed
                    .push(StoreError::io("cannot remove layer", e.path())(err).to_string());
                continue;
            }
            report.layers_removed.push(format!("sha256:{name}"));
            if let Err(e) = remove_any(&doomed) {
                report.failed.push(e.to_string());
            }
        }
        // Seals of layers no longer in the store.
        let sealed = self.root.join("layers/sealed");
        if let Ok(list) = fs::read_dir(&sealed) {
            for e in list.flatten() {
                if !layers.join(e.file_name()).exists() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        report.layers_removed.sort();
        Ok(report)
    }

    /// Create container `id`'s rootfs from an image: upper and work dirs and its layer list.
    pub fn create_rootfs(&self, image: &str, id: &str) -> Result<RootfsRecord> {
        if !valid_id(id) {
            return Err(StoreError::BadId(id.to_string()));
        }
        let _lock = self.lock(false)?;
        let img = self.image(image)?;
        let dest = self.container_path(id);
        if dest.exists() {
            return Err(StoreError::RootfsExists(id.to_string()));
        }
        let mut lowers = Vec::new();
        let mut diff_ids = Vec::new();
        for l in img.layers.iter().rev() {
            let d = Sha256::parse(&l.diff_id, "diff_id")?;
            let p = self.layer_path(&d);
            if !p.is_dir() {
                return Err(StoreError::LayerMissing(l.diff_id.clone()));
            }
            lowers.push(p);
            diff_ids.push(l.diff_id.clone());
        }
        let stage = tempfile::Builder::new()
            .prefix("rootfs-")
            .tempdir_in(self.tmp())
            .map_err(StoreError::io("cannot create temp dir in", self.tmp()))?;
        for d in ["upper", "work"] {
            let p = stage.path().join(d);
            fs::create_dir(&p).map_err(StoreError::io("cannot create", &p))?;
        }
        // The container's dir is its owner's alone: the guest's device nodes and set-id files
        // live in its upper (which keeps the image's root mode: it is the container's `/`).
        fs::set_permissions(stage.path(), fs::Permissions::from_mode(0o700))
            .map_err(StoreError::io("cannot set the mode of", stage.path()))?;
        let rec = RootfsRecord {
            id: id.to_string(),
            image: img.name.clone(),
            config_digest: img.config_digest.clone(),
            lowers,
            diff_ids,
            upper: dest.join("upper"),
            work: dest.join("work"),
        };
        write_json_atomic(stage.path(), &stage.path().join("rootfs.json"), &rec)?;
        match rename_noreplace(stage.path(), &dest) {
            Ok(()) => {
                let _ = stage.keep();
                Ok(rec)
            }
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => Err(StoreError::RootfsExists(id.to_string())),
            Err(e) => Err(StoreError::Io {
                what: "cannot create",
                path: dest,
                source: std::io::Error::from_raw_os_error(e as i32),
            }),
        }
    }

    /// A container rootfs by id.
    pub fn rootfs(&self, id: &str) -> Result<RootfsRecord> {
        if !valid_id(id) {
            return Err(StoreError::BadId(id.to_string()));
        }
        let p = self.container_path(id).join("rootfs.json");
        if !p.is_file() {
            return Err(StoreError::RootfsNotFound(id.to_string()));
        }
        read_json(&p)
    }

    /// The pid serving container `id`'s rootfs (holding its upper's lock), if any.
    pub fn rootfs_holder(&self, id: &str) -> Result<Option<u32>> {
        let rec = self.rootfs(id)?;
        crate::held::holder(&rec.upper)
            .map_err(StoreError::io("cannot check who serves", &rec.upper))
    }

    /// Remove a container rootfs (upper, work and record). Refused while a server or daemon
    /// session serves it, unless `force`.
    pub fn remove_rootfs(&self, id: &str, force: bool) -> Result<()> {
        let _lock = self.lock(false)?;
        self.rootfs(id)?;
        if !force {
            if let Some(pid) = self.rootfs_holder(id)? {
                return Err(StoreError::RootfsInUse {
                    id: id.to_string(),
                    pid,
                });
            }
        }
        let src = self.container_path(id);
        let doomed = tempfile::Builder::new()
            .prefix("rm-")
            .tempdir_in(self.tmp())
            .map_err(StoreError::io("cannot create temp dir in", self.tmp()))?;
        let target = doomed.path().join(id);
        fs::rename(&src, &target).map_err(StoreError::io("cannot remove", &src))?;
        remove_any(doomed.path())?;
        let _ = doomed.keep();
        Ok(())
    }
}

/// Remove a file or a whole tree, however deep (see [`walk::remove_tree`]).
fn remove_any(p: &Path) -> Result<()> {
    walk::remove_tree(p).map_err(StoreError::io("cannot remove", p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert_eq!(escape("busybox:latest"), "busybox%3Alatest");
        assert_eq!(escape(".x/y"), "%2Ex%2Fy");
        assert!(valid_id("ctr-1.a_b"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(".x"));
        assert!(!valid_name("a b"));
    }
}
