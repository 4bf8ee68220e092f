//! Extract one layer tar into a directory in the overlayfs on-disk format, refusing hostile
//! entries.
//!
//! Every path is created relative to a directory fd opened component by component with
//! `O_NOFOLLOW | O_DIRECTORY`, so a symlink from the archive is never followed: an entry
//! written "through" one is refused.
//!
//! A path that appears twice in one layer is resolved as tar, containerd and `umoci unpack`
//! do: the last entry wins (the earlier one is removed with `unlinkat` relative to its parent's
//! fd, a directory depth-first the same way, never through a symlink); a directory entry for an
//! existing directory only updates its metadata. A whiteout applies to the *lower* layers only
//! (OCI image spec), so `.wh.x` beside an `x` in the same layer keeps `x`, and if `x` is a
//! directory it becomes opaque (its lower contents were deleted).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{self, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{self, Gid, Uid};

use crate::digest::is_limit;
use crate::error::{EntryRule, Result, StoreError};
use crate::sys;

/// overlayfs: a directory with this xattr set to `y` hides the lower layers' contents.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// A PAX sparse file's real name and size (its data map is at the start of its data).
#[derive(Debug, Clone)]
struct Sparse {
    name: Vec<u8>,
    realsize: u64,
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// What [`Extractor::claim`] decided for an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Create it (the path is free).
    Create,
    /// Nothing to create.
    Skip,
    /// A whiteout for a directory of this layer: the directory becomes opaque.
    OpaqueDir,
}

/// What a path in the layer is, as far as later entries care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    /// Anything a hard link may point to.
    Linkable,
    Whiteout,
    Marker,
}

/// Counters shared by every layer of one import.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Decompressed tar bytes (counted by the reader chain).
    pub stream: Arc<AtomicU64>,
    /// File data bytes written (sparse files can expand beyond their stream size).
    pub written: Arc<AtomicU64>,
    pub limit: u64,
    pub files: Arc<AtomicU64>,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Budget {
            stream: Arc::default(),
            written: Arc::default(),
            limit,
            files: Arc::default(),
        }
    }
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

pub struct Extractor<'a> {
    layer: &'a str,
    root: OwnedFd,
    seen: HashMap<Vec<u8>, Kind>,
    implicit: HashSet<Vec<u8>>,
    /// Directories that replaced a whiteout of the same layer: opaque once created.
    opaque: HashSet<Vec<u8>>,
    /// The sparse headers of the entry being extracted, for [`Extractor::regular`].
    sparse: Option<Sparse>,
    dir_times: Vec<(Vec<u8>, TimeSpec)>,
    cache: Vec<(Vec<u8>, OwnedFd)>,
    budget: &'a Budget,
    last: String,
}

/// Where a (non-root, non-whiteout) entry goes: its archive path, its parent's components, its
/// name, and its key in [`Extractor`]'s `seen` map.
struct At<'p> {
    path: &'p [u8],
    parent: &'p [&'p [u8]],
    name: &'p [u8],
    key: Vec<u8>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Split an archive path into its components; `.` and empty components are dropped.
fn components(raw: &[u8]) -> std::result::Result<Vec<&[u8]>, EntryRule> {
    if raw.contains(&0) {
        return Err(EntryRule::BadName);
    }
    if raw.first() == Some(&b'/') {
        return Err(EntryRule::Absolute);
    }
    let comps: Vec<&[u8]> = raw
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    if comps.iter().any(|c| *c == b"..") {
        return Err(EntryRule::DotDot);
    }
    Ok(comps)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn proc_path(dir: RawFd, name: &[u8]) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{dir}"));
    p.push(std::ffi::OsStr::from_bytes(name));
    p
}

impl<'a> Extractor<'a> {
    /// Extract into `dest`, an existing empty directory.
    pub fn new(dest: &Path, layer: &'a str, budget: &'a Budget) -> Result<Self> {
        let root = sys::openat(
            libc::AT_FDCWD,
            dest.as_os_str().as_bytes(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| StoreError::Io {
            what: "cannot open layer directory",
            path: dest.to_owned(),
            source: errno_io(e),
        })?;
        Ok(Extractor {
            layer,
            root,
            seen: HashMap::new(),
            implicit: HashSet::new(),
            opaque: HashSet::new(),
            sparse: None,
            dir_times: Vec::new(),
            cache: Vec::new(),
            budget,
            last: String::new(),
        })
    }

    fn rule(&self, entry: &[u8], rule: EntryRule) -> StoreError {
        StoreError::Entry {
            layer: self.layer.to_string(),
            entry: lossy(entry),
            rule,
        }
    }

    fn eio(&self, entry: &[u8], what: &'static str) -> impl FnOnce(Errno) -> StoreError {
        let layer = self.layer.to_string();
        let entry = lossy(entry);
        move |e| StoreError::EntryIo {
            layer,
            entry,
            what,
            source: errno_io(e),
        }
    }

    /// The fd of directory `comps` (relative to the root), creating missing directories
    /// (recorded as implicit). Never follows a symlink.
    fn dir_fd(&mut self, entry: &[u8], comps: &[&[u8]], create: bool) -> Result<RawFd> {
        // The open directories of the last path walked: archives list entries in tree order,
        // so most walks reuse all or most of it.
        let keep = self
            .cache
            .iter()
            .zip(comps)
            .take_while(|((name, _), c)| name.as_slice() == **c)
            .count();
        self.cache.truncate(keep);
        for i in keep..comps.len() {
            let at = self
                .cache
                .last()
                .map_or(self.root.as_raw_fd(), |(_, f)| f.as_raw_fd());
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
            let opened = match sys::openat(at, comps[i], flags, Mode::empty()) {
                Err(Errno::ENOENT) if create => {
                    match stat::mkdirat(Some(at), comps[i], Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.eio(entry, "cannot create parent directory")(e)),
                    }
                    self.implicit.insert(join(&comps[..=i]));
                    self.seen.insert(join(&comps[..=i]), Kind::Dir);
                    sys::openat(at, comps[i], flags, Mode::empty())
                }
                r => r,
            };
            match opened {
                Ok(fd) => self.cache.push((comps[i].to_vec(), fd)),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(self.rule(
                        entry,
                        EntryRule::ThroughSymlink {
                            parent: lossy(&join(&comps[..=i])),
                        },
                    ))
                }
                Err(e) => return Err(self.eio(entry, "cannot open parent directory")(e)),
            }
        }
        Ok(self
            .cache
            .last()
            .map_or(self.root.as_raw_fd(), |(_, f)| f.as_raw_fd()))
    }

    fn meta(&self, entry: &mut tar::Entry<'_, impl Read>, path: &[u8]) -> Result<Meta> {
        let h = entry.header();
        // Empty numeric fields (some writers leave them NUL) read as 0.
        let mode = h.mode().unwrap_or(0) & 0o7777;
        let mut uid = h.uid().unwrap_or(0);
        let mut gid = h.gid().unwrap_or(0);
        let mut secs = h.mtime().unwrap_or(0) as i64;
        let mut nsecs = 0i64;
        let mut xattrs = Vec::new();
        let pax = entry.pax_extensions().map_err(|e| StoreError::EntryIo {
            layer: self.layer.to_string(),
            entry: lossy(path),
            what: "bad PAX header",
            source: e,
        })?;
        if let Some(pax) = pax {
            for ext in pax {
                let ext = ext.map_err(|e| StoreError::EntryIo {
                    layer: self.layer.to_string(),
                    entry: lossy(path),
                    what: "bad PAX header",
                    source: e,
                })?;
                let Ok(key) = ext.key() else { continue };
                let val = ext.value_bytes();
                let num = || std::str::from_utf8(val).ok();
                match key {
                    "uid" => uid = num().and_then(|v| v.parse().ok()).unwrap_or(uid),
                    "gid" => gid = num().and_then(|v| v.parse().ok()).unwrap_or(gid),
                    "mtime" => {
                        if let Some(v) = num() {
                            let (s, frac) = v.split_once('.').unwrap_or((v, ""));
                            if let Ok(s) = s.parse::<i64>() {
                                secs = s;
                                let digits: String =
                                    frac.chars().chain("000000000".chars()).take(9).collect();
                                nsecs = digits.parse().unwrap_or(0);
                            }
                        }
                    }
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            // overlayfs' own metadata (trusted.*, or user.* under
                            // `userxattr`) comes from whiteouts and markers, never from an
                            // image: a redirect or metacopy xattr would steer the guest's
                            // overlay.
                            if name.starts_with("trusted.overlay.")
                                || name.starts_with("user.overlay.")
                            {
                                return Err(self.rule(
                                    path,
                                    EntryRule::ReservedXattr {
                                        name: name.to_string(),
                                    },
                                ));
                            }
                            xattrs.push((name.to_string(), val.to_vec()));
                        }
                    }
                }
            }
        }
        Ok(Meta {
            mode,
            uid: uid as u32,
            gid: gid as u32,
            mtime: TimeSpec::new(secs, nsecs),
            xattrs,
        })
    }

    /// Extract every entry of `archive`.
    pub fn run<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<()> {
        let entries = archive.entries().map_err(|e| self.tar_err(e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.tar_err(e))?;
            let raw = entry.path_bytes().into_owned();
            self.last = lossy(&raw);
            // A PAX sparse file (GNU tar `--sparse --format=pax`) is stored under a made-up
            // name with its real name, size and data map in the PAX header and data.
            self.sparse = self.pax_sparse(&mut entry, &raw)?;
            let path = self.sparse.as_ref().map_or(raw, |s| s.name.clone());
            self.last = lossy(&path);
            self.entry(&mut entry, &path)?;
        }
        self.finish()
    }

    fn tar_err(&self, e: io::Error) -> StoreError {
        if is_limit(&e) {
            return StoreError::TooLarge {
                layer: self.layer.to_string(),
                entry: self.last.clone(),
                limit: self.budget.limit,
            };
        }
        StoreError::Tar {
            layer: self.layer.to_string(),
            after: self.last.clone(),
            source: e,
        }
    }

    /// Claim `key` for an entry of `kind`, making room if the layer had it already (the
    /// last entry wins; see the module docs). `Claim::Skip`: nothing to create.
    fn claim(&mut self, path: &[u8], key: Vec<u8>, kind: Kind) -> Result<Claim> {
        let Some(old) = self.seen.get(&key).copied() else {
            self.seen.insert(key, kind);
            return Ok(Claim::Create);
        };
        match (old, kind) {
            // A directory entry for a directory: its metadata applies.
            (Kind::Dir, Kind::Dir) => {
                self.implicit.remove(&key);
                Ok(Claim::Create)
            }
            // A second whiteout or opaque marker changes nothing.
            (Kind::Whiteout, Kind::Whiteout) | (Kind::Marker, Kind::Marker) => Ok(Claim::Skip),
            // A whiteout after the entry it names: the entry stays; a directory's lower
            // contents are hidden.
            (Kind::Dir, Kind::Whiteout) => Ok(Claim::OpaqueDir),
            (Kind::Linkable, Kind::Whiteout) => Ok(Claim::Skip),
            (old, kind) => {
                self.remove_entry(path, &key, old)?;
                if old == Kind::Whiteout && kind == Kind::Dir {
                    self.opaque.insert(key.clone());
                }
                self.seen.insert(key, kind);
                Ok(Claim::Create)
            }
        }
    }

    /// Remove what an earlier entry of this layer created at `key` (and forget everything
    /// under it), relative to the parent directory's fd, never following a symlink.
    fn remove_entry(&mut self, path: &[u8], key: &[u8], old: Kind) -> Result<()> {
        let comps: Vec<&[u8]> = key.split(|b| *b == b'/').collect();
        let Some((name, parent)) = comps.split_last() else {
            return Err(self.rule(path, EntryRule::BadName));
        };
        let dir = self.dir_fd(path, parent, false)?;
        if old == Kind::Dir {
            remove_tree(dir, name).map_err(self.eio(path, "cannot replace directory"))?;
        } else {
            unistd::unlinkat(Some(dir), *name, unistd::UnlinkatFlags::NoRemoveDir)
                .map_err(self.eio(path, "cannot replace earlier entry"))?;
        }
        let mut prefix = key.to_vec();
        prefix.push(b'/');
        self.seen.retain(|k, _| !k.starts_with(&prefix));
        self.implicit
            .retain(|k| k.as_slice() != key && !k.starts_with(&prefix));
        self.opaque
            .retain(|k| k.as_slice() != key && !k.starts_with(&prefix));
        self.dir_times
            .retain(|(k, _)| k.as_slice() != key && !k.starts_with(&prefix));
        // The cached open directories may include the removed one.
        self.cache.clear();
        Ok(())
    }

    /// One archive entry: skip the header-only kinds, split the path, then one function per
    /// kind of entry.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, path: &[u8]) -> Result<()> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let comps = components(path).map_err(|r| self.rule(path, r))?;
        let Some((name, parent)) = comps.split_last() else {
            return self.layer_root(entry, path, kind);
        };
        let name: &[u8] = name;
        if name == OPAQUE_MARKER {
            return self.opaque_marker(entry, path, &comps);
        }
        if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(entry, path, parent, target);
        }
        let at = At {
            path,
            parent,
            name,
            key: join(&comps),
        };
        match kind {
            T::Directory => self.directory(entry, at),
            T::Regular | T::Continuous | T::GNUSparse => self.regular(entry, at),
            T::Symlink => self.symlink(entry, at),
            T::Link => self.hard_link(entry, at),
            T::Char | T::Block | T::Fifo => self.device(entry, at, kind),
            other => Err(self.rule(
                path,
                EntryRule::UnsupportedType {
                    kind: other.as_byte(),
                },
            )),
        }
    }

    /// The layer root itself (`./`): only its metadata.
    fn layer_root<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &[u8],
        kind: tar::EntryType,
    ) -> Result<()> {
        if kind != tar::EntryType::Directory {
            return Err(self.rule(path, EntryRule::BadName));
        }
        let meta = self.meta(entry, path)?;
        let fd = self.root.try_clone().map_err(|e| StoreError::EntryIo {
            layer: self.layer.to_string(),
            entry: lossy(path),
            what: "cannot dup layer root",
            source: e,
        })?;
        self.apply_fd(path, fd, &meta, Some(Vec::new()))
    }

    /// `.wh..wh..opq`: the directory holding it is opaque (`trusted.overlay.opaque=y`).
    fn opaque_marker<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &[u8],
        comps: &[&[u8]],
    ) -> Result<()> {
        self.meta(entry, path)?;
        if self.claim(path, join(comps), Kind::Marker)? == Claim::Skip {
            return Ok(());
        }
        let parent = &comps[..comps.len().saturating_sub(1)];
        self.set_opaque(path, parent)
    }

    /// Mark directory `comps` opaque (`trusted.overlay.opaque=y`).
    fn set_opaque(&mut self, path: &[u8], comps: &[&[u8]]) -> Result<()> {
        let dir = self.dir_fd(path, comps, true)?;
        let f = File::from(
            sys::openat(
                dir,
                b".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .map_err(self.eio(path, "cannot open directory"))?,
        );
        xattr::FileExt::set_xattr(&f, OPAQUE_XATTR, b"y").map_err(|e| StoreError::EntryIo {
            layer: self.layer.to_string(),
            entry: lossy(path),
            what: "cannot set trusted.overlay.opaque (needs root and a filesystem with trusted xattrs)",
            source: e,
        })
    }

    /// `.wh.NAME`: NAME is deleted in this layer, a char 0:0 device in the overlayfs format.
    fn whiteout<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &[u8],
        parent: &[&[u8]],
        target: &[u8],
    ) -> Result<()> {
        self.meta(entry, path)?;
        if target.starts_with(WHITEOUT_PREFIX) {
            // aufs metadata (.wh..wh.plnk, .wh..wh.aufs): not part of the filesystem.
            tracing::debug!(entry = %lossy(path), "skipping aufs metadata");
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." {
            return Err(self.rule(path, EntryRule::BadWhiteout));
        }
        let mut key = join(parent);
        if !key.is_empty() {
            key.push(b'/');
        }
        key.extend_from_slice(target);
        match self.claim(path, key, Kind::Whiteout)? {
            Claim::Create => {}
            Claim::Skip => return Ok(()),
            Claim::OpaqueDir => {
                let mut comps = parent.to_vec();
                comps.push(target);
                return self.set_opaque(path, &comps);
            }
        }
        let dir = self.dir_fd(path, parent, true)?;
        match stat::mknodat(Some(dir), target, SFlag::S_IFCHR, Mode::empty(), 0) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => Err(self.rule(path, EntryRule::Duplicate)),
            Err(e) => Err(self
                .eio(path, "cannot create whiteout (char 0:0; needs root)")(
                e
            )),
        }
    }

    fn directory<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, at: At<'_>) -> Result<()> {
        let (path, parent, name) = (at.path, at.parent, at.name);
        self.claim(path, at.key.clone(), Kind::Dir)?;
        let meta = self.meta(entry, path)?;
        let dir = self.dir_fd(path, parent, true)?;
        match stat::mkdirat(Some(dir), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(self.eio(path, "cannot create directory")(e)),
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
        let fd = match sys::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(self.rule(path, EntryRule::Duplicate)),
            Err(e) => return Err(self.eio(path, "cannot open directory")(e)),
        };
        let opaque = self.opaque.remove(&at.key);
        self.apply_fd(path, fd, &meta, Some(at.key))?;
        if opaque {
            let comps: Vec<&[u8]> = parent.iter().copied().chain([name]).collect();
            self.set_opaque(path, &comps)?;
        }
        Ok(())
    }

    fn regular<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, at: At<'_>) -> Result<()> {
        let (path, parent, name) = (at.path, at.parent, at.name);
        self.claim(path, at.key, Kind::Linkable)?;
        let meta = self.meta(entry, path)?;
        let expected = entry.size();
        let dir = self.dir_fd(path, parent, true)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        let fd = match sys::openat(dir, name, flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => return Err(self.rule(path, EntryRule::Duplicate)),
            Err(e) => return Err(self.eio(path, "cannot create file")(e)),
        };
        let mut file = File::from(fd);
        if let Some(sparse) = self.sparse.take() {
            self.sparse_data(entry, &mut file, path, &sparse)?;
        } else {
            let got = self.copy(entry, &mut file, path)?;
            if got != expected {
                return Err(self.rule(path, EntryRule::Truncated { expected, got }));
            }
        }
        self.budget.files.fetch_add(1, Ordering::Relaxed);
        self.apply_fd(path, OwnedFd::from(file), &meta, None)
    }

    fn symlink<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, at: At<'_>) -> Result<()> {
        let (path, parent, name) = (at.path, at.parent, at.name);
        self.claim(path, at.key, Kind::Linkable)?;
        let meta = self.meta(entry, path)?;
        let target = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .filter(|t| !t.is_empty() && !t.contains(&0))
            .ok_or_else(|| self.rule(path, EntryRule::BadName))?;
        let dir = self.dir_fd(path, parent, true)?;
        match unistd::symlinkat(target.as_slice(), Some(dir), name) {
            Ok(()) => {}
            Err(Errno::EEXIST) => return Err(self.rule(path, EntryRule::Duplicate)),
            Err(e) => return Err(self.eio(path, "cannot create symlink")(e)),
        }
        self.budget.files.fetch_add(1, Ordering::Relaxed);
        self.apply_at(path, dir, name, &meta, false)
    }

    /// A hard link: only to a file (not a directory, whiteout or marker) extracted earlier in
    /// this layer.
    fn hard_link<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, at: At<'_>) -> Result<()> {
        let (path, parent, name) = (at.path, at.parent, at.name);
        let target = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let outside = || {
            self.rule(
                path,
                EntryRule::HardLinkOutside {
                    target: lossy(&target),
                },
            )
        };
        let tcomps = components(&target).map_err(|_| outside())?;
        let Some((tname, tparent)) = tcomps.split_last() else {
            return Err(outside());
        };
        if self.seen.get(&join(&tcomps)) != Some(&Kind::Linkable) {
            return Err(outside());
        }
        self.claim(path, at.key, Kind::Linkable)?;
        let tdir = self.dir_fd(path, tparent, false)?;
        // Keep the target's directory open while the cache moves to ours.
        let tdir = sys::openat(
            tdir,
            b".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .map_err(self.eio(path, "cannot open hard link target directory"))?;
        let dir = self.dir_fd(path, parent, true)?;
        match unistd::linkat(
            Some(tdir.as_raw_fd()),
            *tname,
            Some(dir),
            name,
            AtFlags::empty(),
        ) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => Err(self.rule(path, EntryRule::Duplicate)),
            Err(e) => Err(self.eio(path, "cannot create hard link")(e)),
        }
    }

    /// A character or block device or a fifo (never opened here).
    fn device<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        at: At<'_>,
        kind: tar::EntryType,
    ) -> Result<()> {
        let (path, parent, name) = (at.path, at.parent, at.name);
        self.claim(path, at.key, Kind::Linkable)?;
        let meta = self.meta(entry, path)?;
        let h = entry.header();
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        let (sflag, dev) = match kind {
            tar::EntryType::Char => (SFlag::S_IFCHR, stat::makedev(major.into(), minor.into())),
            tar::EntryType::Block => (SFlag::S_IFBLK, stat::makedev(major.into(), minor.into())),
            _ => (SFlag::S_IFIFO, 0),
        };
        let dir = self.dir_fd(path, parent, true)?;
        match stat::mknodat(Some(dir), name, sflag, Mode::from_bits_truncate(0o600), dev) {
            Ok(()) => {}
            Err(Errno::EEXIST) => return Err(self.rule(path, EntryRule::Duplicate)),
            Err(e) => {
                return Err(self
                    .eio(path, "cannot create device node or fifo (needs root)")(
                    e
                ))
            }
        }
        self.budget.files.fetch_add(1, Ordering::Relaxed);
        self.apply_at(path, dir, name, &meta, true)
    }

    /// The PAX sparse headers of `entry`, if it is a sparse file in PAX format 1.0 (the one
    /// GNU tar writes); the older 0.x PAX forms are refused by name.
    fn pax_sparse<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
    ) -> Result<Option<Sparse>> {
        let Ok(Some(pax)) = entry.pax_extensions() else {
            return Ok(None);
        };
        let (mut major, mut name, mut realsize, mut old) = (None, None, None, false);
        for ext in pax.flatten() {
            let Ok(key) = ext.key() else { continue };
            let val = ext.value_bytes();
            match key {
                "GNU.sparse.major" => major = Some(val.to_vec()),
                "GNU.sparse.name" => name = Some(val.to_vec()),
                "GNU.sparse.realsize" => {
                    realsize = std::str::from_utf8(val)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                }
                "GNU.sparse.map" | "GNU.sparse.offset" | "GNU.sparse.size" => old = true,
                _ => {}
            }
        }
        let bad = |why: &str| self.rule(raw, EntryRule::BadSparse(why.to_string()));
        match (major.as_deref(), old) {
            (None, false) => Ok(None),
            (Some(b"1"), _) => {
                let name = name.ok_or_else(|| bad("GNU.sparse.name is missing"))?;
                let realsize = realsize.ok_or_else(|| bad("GNU.sparse.realsize is missing"))?;
                if realsize > self.budget.limit {
                    return Err(StoreError::TooLarge {
                        layer: self.layer.to_string(),
                        entry: lossy(&name),
                        limit: self.budget.limit,
                    });
                }
                Ok(Some(Sparse { name, realsize }))
            }
            _ => Err(bad(
                "PAX sparse format 0.x is not supported (re-create the layer with GNU tar's \
                 default --sparse-version=1.0, or without --sparse)",
            )),
        }
    }

    /// Write a PAX 1.0 sparse file: the map (decimal lines: count, then offset and size pairs,
    /// padded to 512 bytes), then each data run at its offset; holes stay holes.
    fn sparse_data<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
        path: &[u8],
        sparse: &Sparse,
    ) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let bad = |why: String| self.rule(path, EntryRule::BadSparse(why));
        let stored = entry.size();
        let mut consumed = 0u64;
        let mut line = || -> Result<u64> {
            let mut digits = Vec::new();
            loop {
                let mut b = [0u8; 1];
                entry
                    .read_exact(&mut b)
                    .map_err(|_| bad("the sparse map ends early".into()))?;
                consumed += 1;
                match b[0] {
                    b'\n' => break,
                    d @ b'0'..=b'9' if digits.len() < 20 => digits.push(d),
                    _ => return Err(bad("the sparse map is not decimal lines".into())),
                }
            }
            std::str::from_utf8(&digits)
                .ok()
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| bad("the sparse map has an empty number".into()))
        };
        let count = line()?;
        if count > 1 << 20 {
            return Err(bad(format!("{count} data runs (at most {})", 1 << 20)));
        }
        let mut runs = Vec::with_capacity(count as usize);
        for _ in 0..count {
            runs.push((line()?, line()?));
        }
        let pad = (512 - consumed % 512) % 512;
        io::copy(&mut (&mut *entry).take(pad), &mut io::sink())
            .map_err(|_| bad("the sparse map ends early".into()))?;
        consumed += pad;
        let mut end = 0u64;
        let mut data = 0u64;
        for &(off, len) in &runs {
            if off < end || off.checked_add(len).is_none_or(|e| e > sparse.realsize) {
                return Err(bad(format!(
                    "data run at {off} (+{len}) overlaps another or ends past the real size {}",
                    sparse.realsize
                )));
            }
            end = off + len;
            data += len;
        }
        if consumed + data != stored {
            return Err(self.rule(
                path,
                EntryRule::Truncated {
                    expected: consumed + data,
                    got: stored,
                },
            ));
        }
        for (off, len) in runs {
            file.seek(SeekFrom::Start(off))
                .map_err(|e| self.eio(path, "cannot seek in sparse file")(errno_of(&e)))?;
            let got = self.copy(&mut (&mut *entry).take(len), file, path)?;
            if got != len {
                return Err(self.rule(path, EntryRule::Truncated { expected: len, got }));
            }
        }
        file.set_len(sparse.realsize)
            .map_err(|e| self.eio(path, "cannot size sparse file")(errno_of(&e)))
    }

    fn copy<R: Read>(&self, entry: &mut R, file: &mut File, path: &[u8]) -> Result<u64> {
        let mut buf = vec![0u8; 128 * 1024];
        let mut total = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_limit(&e) => {
                    return Err(StoreError::TooLarge {
                        layer: self.layer.to_string(),
                        entry: lossy(path),
                        limit: self.budget.limit,
                    })
                }
                Err(e) => {
                    return Err(StoreError::EntryIo {
                        layer: self.layer.to_string(),
                        entry: lossy(path),
                        what: "cannot read entry data",
                        source: e,
                    })
                }
            };
            let written = self.budget.written.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            if written > self.budget.limit {
                return Err(StoreError::TooLarge {
                    layer: self.layer.to_string(),
                    entry: lossy(path),
                    limit: self.budget.limit,
                });
            }
            file.write_all(&buf[..n]).map_err(|e| StoreError::EntryIo {
                layer: self.layer.to_string(),
                entry: lossy(path),
                what: "cannot write file",
                source: e,
            })?;
            total += n as u64;
        }
        Ok(total)
    }

    /// Ownership, mode, xattrs and (for files; directories later) times through an fd.
    /// `dir_key`: the directory's path (its times are set last), `None` for a file.
    fn apply_fd(
        &mut self,
        path: &[u8],
        fd: OwnedFd,
        meta: &Meta,
        dir_key: Option<Vec<u8>>,
    ) -> Result<()> {
        let raw = fd.as_raw_fd();
        unistd::fchown(
            raw,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(self.eio(path, "cannot chown"))?;
        stat::fchmod(raw, Mode::from_bits_truncate(meta.mode))
            .map_err(self.eio(path, "cannot chmod"))?;
        let file = File::from(fd);
        for (k, v) in &meta.xattrs {
            xattr::FileExt::set_xattr(&file, k, v).map_err(|e| StoreError::EntryIo {
                layer: self.layer.to_string(),
                entry: lossy(path),
                what: "cannot set xattr",
                source: e,
            })?;
        }
        if let Some(key) = dir_key {
            self.dir_times.push((key, meta.mtime));
        } else {
            stat::futimens(raw_of(&file), &meta.mtime, &meta.mtime)
                .map_err(self.eio(path, "cannot set times"))?;
        }
        Ok(())
    }

    /// The same through the parent directory fd, never following a symlink.
    fn apply_at(
        &self,
        path: &[u8],
        dir: RawFd,
        name: &[u8],
        meta: &Meta,
        chmod: bool,
    ) -> Result<()> {
        unistd::fchownat(
            Some(dir),
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(self.eio(path, "cannot chown"))?;
        if chmod {
            // Only for device nodes and fifos we just created (never a symlink).
            stat::fchmodat(
                Some(dir),
                name,
                Mode::from_bits_truncate(meta.mode),
                stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(self.eio(path, "cannot chmod"))?;
        }
        for (k, v) in &meta.xattrs {
            xattr::set(proc_path(dir, name), k, v).map_err(|e| StoreError::EntryIo {
                layer: self.layer.to_string(),
                entry: lossy(path),
                what: "cannot set xattr",
                source: e,
            })?;
        }
        stat::utimensat(
            Some(dir),
            name,
            &meta.mtime,
            &meta.mtime,
            stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(self.eio(path, "cannot set times"))?;
        Ok(())
    }

    /// Directory times last: creating children changed them.
    fn finish(&mut self) -> Result<()> {
        let mut times = std::mem::take(&mut self.dir_times);
        times.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, t) in times {
            let comps: Vec<&[u8]> = key
                .split(|b| *b == b'/')
                .filter(|c| !c.is_empty())
                .collect();
            let fd = self.dir_fd(&key, &comps, false)?;
            stat::futimens(fd, &t, &t).map_err(self.eio(&key, "cannot set times"))?;
        }
        self.cache.clear();
        Ok(())
    }
}

fn raw_of(f: &File) -> RawFd {
    f.as_raw_fd()
}

/// Remove directory `name` in `dir` and everything in it, depth-first, each step relative to
/// an fd opened with `O_NOFOLLOW` (a symlink inside is unlinked, never followed). Only for
/// what this layer's own earlier entries created, so the depth is bounded by the archive's
/// path lengths.
fn remove_tree(dir: RawFd, name: &[u8]) -> nix::Result<()> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
    let fd = sys::openat(dir, name, flags, Mode::empty())?;
    let mut children: Vec<(Vec<u8>, bool)> = Vec::new();
    {
        let mut d =
            nix::dir::Dir::from_fd(fd.try_clone().map_err(|_| Errno::EMFILE)?.into_raw_fd())?;
        for e in d.iter() {
            let e = e?;
            let n = e.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            let is_dir = matches!(e.file_type(), Some(nix::dir::Type::Directory));
            children.push((n.to_vec(), is_dir));
        }
    }
    for (n, is_dir) in children {
        if is_dir {
            remove_tree(fd.as_raw_fd(), &n)?;
        } else {
            unistd::unlinkat(
                Some(fd.as_raw_fd()),
                n.as_slice(),
                unistd::UnlinkatFlags::NoRemoveDir,
            )?;
        }
    }
    unistd::unlinkat(Some(dir), name, unistd::UnlinkatFlags::RemoveDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_rules() {
        assert_eq!(
            components(b"./a//b/./c").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert_eq!(components(b"/etc").unwrap_err(), EntryRule::Absolute);
        assert_eq!(components(b"a/../../x").unwrap_err(), EntryRule::DotDot);
        assert_eq!(components(b"a\0b").unwrap_err(), EntryRule::BadName);
        assert!(components(b"./").unwrap().is_empty());
    }
}
