//! What `strata serve` is asked to serve, and the checks made before anything is created.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::ConfigError;
use crate::tree::Limits;

/// One VM's rootfs as the operator gives it: layers (topmost first), upper and work.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Read-only layer directories, topmost first (overlayfs `lowerdir` order).
    pub lowers: Vec<PathBuf>,
    /// The container's writable directory.
    pub upper: PathBuf,
    /// The overlayfs work directory: must be on the same filesystem as `upper`.
    pub work: PathBuf,
    /// The vhost-user socket the VMM connects to.
    pub socket: PathBuf,
    /// A listening unix socket this process inherited (`strata serve --fd N`, from a VMM
    /// manager or systemd), used instead of binding `socket`: its owner made it and removes
    /// it, so `socket` is neither claimed nor removed (and may be empty).
    pub socket_fd: Option<std::os::fd::RawFd>,
    /// Mode and group the sockets this process binds get (not an inherited one).
    pub socket_perms: SocketPerms,
    /// virtio-fs tag (informational: the VMM sets the tag; it goes into logs).
    pub tag: String,
    /// What the guest may hold at once (nodes, open handles).
    pub limits: Limits,
    /// A second vhost-user-fs device for the layers, served without xattrs (see
    /// [`LowerDevice`]); `None`: the layers come from the one device.
    pub lower_device: Option<LowerDevice>,
    /// The layers as a merged EROFS image on a read-only virtio-blk device the VMM attaches
    /// (`strata serve --erofs`): the plan sends the guest there for its lower; the layers are
    /// still served (unused by a guest that follows the plan).
    pub lower_block: Option<strata_plan::LowerBlock>,
    /// Serve `/rootfs`, the upper dir and the layers merged by the daemon, and send the guest
    /// there for its root instead of its own overlay (`strata serve --union`).
    pub union: bool,
}

/// Mode and group of the vhost-user sockets `strata serve` binds (`--socket-mode`,
/// `--socket-group`): root's 0600 by default; e.g. 0660 and the VMM's group for a VMM that is
/// not root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketPerms {
    pub mode: u32,
    pub gid: Option<u32>,
}

impl Default for SocketPerms {
    fn default() -> Self {
        SocketPerms {
            mode: crate::socket::DEFAULT_SOCKET_MODE,
            gid: None,
        }
    }
}

/// The layer device: the same layers on a second vhost-user socket, served read-only and
/// without extended attributes, so that the guest's overlayfs stops asking for
/// `trusted.overlay.metacopy` of every lower file it looks up (FUSE caches no xattrs; a device
/// that answers one GETXATTR with ENOSYS is never asked again). The plan sends the guest there
/// only when no layer has an xattr a container could read (file capabilities, ACLs, `user.*`):
/// otherwise the device is served but unused, and the log says which file kept it so.
#[derive(Debug, Clone)]
pub struct LowerDevice {
    /// Its vhost-user socket (qemu: a second `vhost-user-fs-pci` device).
    pub socket: PathBuf,
    /// An inherited listening socket used instead of binding `socket` (`--lower-fd`).
    pub socket_fd: Option<std::os::fd::RawFd>,
    /// The tag the VMM gives it (written into the plan for the guest).
    pub tag: String,
}

/// Default tag of the layer device.
pub const DEFAULT_LOWER_TAG: &str = "strata-lower";

/// The first entry of `lowers` (searched in order, depth first, symlinks not followed) that
/// carries an extended attribute a container could read, with that attribute's name.
/// `trusted.overlay.*` attributes are overlayfs' own bookkeeping: skipped when `merged` (the
/// daemon has applied them in `/lower`) or with a single layer (nothing below it to hide).
pub fn first_layer_xattr(
    lowers: &[PathBuf],
    merged: bool,
) -> std::io::Result<Option<(PathBuf, String)>> {
    first_hit(lowers, merged, layer_xattr)
}

/// The first layer of `lowers` for which `per_layer` finds an xattr (see [`first_layer_xattr`]
/// for which ones count).
fn first_hit(
    lowers: &[PathBuf],
    merged: bool,
    mut per_layer: impl FnMut(&Path, bool) -> std::io::Result<Option<(PathBuf, String)>>,
) -> std::io::Result<Option<(PathBuf, String)>> {
    let skip_overlay = merged || lowers.len() == 1;
    for l in lowers {
        if let Some(hit) = per_layer(l, skip_overlay)? {
            return Ok(Some(hit));
        }
    }
    Ok(None)
}

/// [`first_layer_xattr`], each layer directory listed once per process: layers are immutable
/// (a store's are content-addressed), and `strata daemon` starts many sessions on the same
/// ones. Keyed by the layer directory's path, device, inode and change time: a layer removed
/// by `gc` and another unpacked later may get the same inode number, and must be listed again.
pub fn first_layer_xattr_cached(
    lowers: &[PathBuf],
    merged: bool,
) -> std::io::Result<Option<(PathBuf, String)>> {
    type Key = (PathBuf, u64, u64, i64, i64, bool);
    type Seen = std::collections::HashMap<Key, Option<(PathBuf, String)>>;
    static SEEN: std::sync::Mutex<Option<Seen>> = std::sync::Mutex::new(None);
    first_hit(lowers, merged, |l, skip_overlay| {
        let m = std::fs::metadata(l)?;
        let key = (
            l.to_path_buf(),
            m.dev(),
            m.ino(),
            m.ctime(),
            m.ctime_nsec(),
            skip_overlay,
        );
        let known = SEEN
            .lock()
            .map(|g| g.as_ref().and_then(|c| c.get(&key).cloned()))
            .unwrap_or(None);
        if let Some(hit) = known {
            return Ok(hit);
        }
        let hit = layer_xattr(l, skip_overlay)?;
        if let Ok(mut g) = SEEN.lock() {
            g.get_or_insert_with(Default::default)
                .insert(key, hit.clone());
        }
        Ok(hit)
    })
}

/// The first entry under `layer` with an xattr (but overlayfs' own, if `skip_overlay`).
fn layer_xattr(layer: &Path, skip_overlay: bool) -> std::io::Result<Option<(PathBuf, String)>> {
    let mut stack = vec![layer.to_path_buf()];
    while let Some(p) = stack.pop() {
        let names = crate::sys::xattr::list_path(&p)?;
        for n in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            if skip_overlay && n.starts_with(b"trusted.overlay.") {
                continue;
            }
            return Ok(Some((p, String::from_utf8_lossy(n).into_owned())));
        }
        if std::fs::symlink_metadata(&p)?.is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(&p)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            children.sort();
            stack.extend(children.into_iter().rev());
        }
    }
    Ok(None)
}

/// Whether a host user other than the owner could reach `dir`: every directory from `/` down to
/// it lets others search it (`o+x`). Device nodes the guest makes in an upper dir others can
/// reach would be host device nodes those users could open; the store's container dirs are 0700.
pub fn reachable_by_others(dir: &Path) -> bool {
    dir.ancestors().all(|d| {
        std::fs::metadata(d)
            .map(|m| m.mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

/// A configuration that passed every check: each directory opened once (`O_PATH`), every check
/// made on those fds, and the served tree opened from them, never from the paths again (so a
/// symlink swapped in after the check changes nothing). The paths are where the kernel says the
/// fds are.
#[derive(Debug, Clone)]
pub struct Checked {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub limits: Limits,
    /// The held directories: `lowers` in order, then upper, then work.
    pub(crate) fds: Vec<Arc<OwnedFd>>,
    pub lower_block: Option<strata_plan::LowerBlock>,
    pub union: bool,
}

impl Checked {
    /// A new fd on the held directory of layer `i` (`None`: upper, then work after the
    /// layers), for the served tree.
    pub(crate) fn layer_fd(&self, i: usize) -> std::io::Result<OwnedFd> {
        self.held(i)
    }

    pub(crate) fn upper_fd(&self) -> std::io::Result<OwnedFd> {
        self.held(self.lowers.len())
    }

    pub(crate) fn work_fd(&self) -> std::io::Result<OwnedFd> {
        self.held(self.lowers.len() + 1)
    }

    fn held(&self, i: usize) -> std::io::Result<OwnedFd> {
        self.fds
            .get(i)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF))?
            .try_clone()
    }
}

/// Open one directory the way the caller says, then check it on the fd: a directory, with the
/// path the kernel has for it.
fn dir(
    path: &Path,
    role: &'static str,
    open: &dyn Fn(&Path) -> std::io::Result<OwnedFd>,
) -> Result<(PathBuf, std::fs::Metadata, OwnedFd), ConfigError> {
    let missing = |source| ConfigError::Missing {
        role,
        path: path.to_owned(),
        source,
    };
    let fd = open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTDIR) && path.exists() && !path.is_dir() {
            ConfigError::NotADirectory {
                role,
                path: path.to_owned(),
            }
        } else {
            missing(e)
        }
    })?;
    let meta = std::fs::File::from(fd.try_clone().map_err(missing)?)
        .metadata()
        .map_err(missing)?;
    if !meta.is_dir() {
        return Err(ConfigError::NotADirectory {
            role,
            path: path.to_owned(),
        });
    }
    let canon = crate::sys::fd_path(fd.as_fd()).map_err(missing)?;
    Ok((canon, meta, fd))
}

/// Directories a request may name (`strata daemon --allow`), each held open: a path is opened
/// below the one it is in with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_MAGICLINKS)`, so no symlink (swapped in or not) leads outside.
#[derive(Debug, Clone, Default)]
pub struct AllowedDirs(Vec<(PathBuf, Arc<OwnedFd>)>);

impl AllowedDirs {
    /// Open each of `dirs` (canonical, absolute); one that cannot be opened is left out, with a
    /// warning.
    pub fn open(dirs: &[PathBuf]) -> AllowedDirs {
        let mut v = Vec::new();
        for d in dirs {
            match crate::sys::open_anchor(d) {
                Ok(fd) => v.push((d.clone(), Arc::new(fd))),
                Err(e) => tracing::warn!("--allow {}: {e}: not allowed", d.display()),
            }
        }
        AllowedDirs(v)
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.0.iter().map(|(p, _)| p.clone()).collect()
    }

    /// Open `path` below the allowed directory it is in. ENOENT-like errors for a path that
    /// exists nowhere allowed: EACCES (outside every allowed dir), ELOOP (through a symlink),
    /// EXDEV (`..` out of it).
    pub fn open_dir(&self, path: &Path) -> std::io::Result<OwnedFd> {
        if !path.is_absolute() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not an absolute path",
            ));
        }
        for (a, fd) in &self.0 {
            if let Ok(rel) = path.strip_prefix(a) {
                return crate::sys::open_dir_beneath(fd.as_fd(), rel).map_err(|e| {
                    match e.raw_os_error() {
                        Some(libc::ELOOP) => std::io::Error::new(
                            e.kind(),
                            format!(
                                "a symlink on the way below --allow {} (refused: paths below \
                                 an allowed directory must be symlink-free)",
                                a.display()
                            ),
                        ),
                        Some(libc::EXDEV) => std::io::Error::new(
                            e.kind(),
                            format!("leads out of --allow {}", a.display()),
                        ),
                        _ => e,
                    }
                });
            }
        }
        Err(std::io::Error::from_raw_os_error(libc::EACCES))
    }

    /// Whether `path` is (lexically) inside one of the allowed directories.
    pub fn contains(&self, path: &Path) -> bool {
        self.0.iter().any(|(a, _)| path.starts_with(a))
    }
}

impl ServeConfig {
    /// Check the directories without creating or changing anything. Paths are the operator's:
    /// symlinks in them are followed, once, when each is opened.
    pub fn check(&self) -> Result<Checked, ConfigError> {
        self.check_with(&|p| crate::sys::open_anchor(p))
    }

    /// [`ServeConfig::check`] for directories a request named: each opened below an allowed
    /// directory without following any symlink ([`AllowedDirs::open_dir`]).
    pub fn check_allowed(&self, allowed: &AllowedDirs) -> Result<Checked, ConfigError> {
        self.check_with(&|p| allowed.open_dir(p))
    }

    fn check_with(
        &self,
        open: &dyn Fn(&Path) -> std::io::Result<OwnedFd>,
    ) -> Result<Checked, ConfigError> {
        if self.lowers.is_empty() {
            return Err(ConfigError::NoLayers);
        }
        if self.limits.max_nodes == 0 || self.limits.max_handles == 0 {
            return Err(ConfigError::ZeroLimit);
        }
        if self.lowers.len() > crate::tree::MAX_LAYERS {
            return Err(ConfigError::TooManyLayers {
                count: self.lowers.len(),
                max: crate::tree::MAX_LAYERS,
            });
        }
        let mut all: Vec<(&'static str, PathBuf, std::fs::Metadata)> = Vec::new();
        let mut fds = Vec::new();
        for l in &self.lowers {
            let (p, m, fd) = dir(l, "layer", open)?;
            all.push(("layer", p, m));
            fds.push(Arc::new(fd));
        }
        let (upper, um, ufd) = dir(&self.upper, "upper", open)?;
        let (work, wm, wfd) = dir(&self.work, "work", open)?;
        if um.dev() != wm.dev() {
            return Err(ConfigError::DifferentFilesystems { upper, work });
        }
        fds.push(Arc::new(ufd));
        fds.push(Arc::new(wfd));
        all.push(("upper", upper.clone(), um));
        all.push(("work", work.clone(), wm));

        for (i, (ra, pa, ma)) in all.iter().enumerate() {
            for (rb, pb, mb) in &all[i + 1..] {
                if (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()) {
                    return Err(ConfigError::SameDirectory {
                        first: (*ra, pa.clone()),
                        second: (*rb, pb.clone()),
                    });
                }
                // A writable dir inside a layer (or a layer inside a writable dir) would let
                // the guest change a layer that other containers share.
                let writable = |r: &str| r == "upper" || r == "work";
                if writable(ra) || writable(rb) {
                    let (inner, outer) = if pa.starts_with(pb) {
                        ((*ra, pa), (*rb, pb))
                    } else if pb.starts_with(pa) {
                        ((*rb, pb), (*ra, pa))
                    } else {
                        continue;
                    };
                    return Err(ConfigError::Nested {
                        inner: (inner.0, inner.1.clone()),
                        outer: (outer.0, outer.1.clone()),
                    });
                }
            }
        }
        let lowers = all
            .iter()
            .filter(|(r, _, _)| *r == "layer")
            .map(|(_, p, _)| p.clone())
            .collect();
        Ok(Checked {
            lowers,
            upper,
            work,
            limits: self.limits,
            fds,
            lower_block: self.lower_block.clone(),
            union: self.union,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(root: &Path, lowers: &[&str], upper: &str, work: &str) -> ServeConfig {
        ServeConfig {
            lowers: lowers.iter().map(|l| root.join(l)).collect(),
            upper: root.join(upper),
            work: root.join(work),
            socket: root.join("sock"),
            socket_fd: None,
            socket_perms: Default::default(),
            tag: "strata".into(),
            limits: Limits::default(),
            lower_device: None,
            lower_block: None,
            union: false,
        }
    }

    #[test]
    fn reachable_by_others_needs_search_on_every_parent() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let up = d.path().join("ctr/upper");
        std::fs::create_dir_all(&up).unwrap();
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        // A 0700 parent: nobody else gets in, whatever is below.
        mode(d.path(), 0o700);
        mode(&d.path().join("ctr"), 0o755);
        mode(&up, 0o755);
        assert!(!reachable_by_others(&up));
        mode(d.path(), 0o755);
        // Only if every parent up to / lets others search (the temp dir's parent usually does).
        let parents_open = d
            .path()
            .ancestors()
            .all(|a| std::fs::metadata(a).unwrap().mode() & 0o001 != 0);
        assert_eq!(reachable_by_others(&up), parents_open);
        mode(&d.path().join("ctr"), 0o700);
        assert!(!reachable_by_others(&up));
    }

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for p in ["l0", "l1", "c/upper", "c/work"] {
            std::fs::create_dir_all(d.path().join(p)).unwrap();
        }
        std::fs::write(d.path().join("file"), b"").unwrap();
        d
    }

    #[test]
    fn good_config_passes() {
        let d = tree();
        let c = cfg(d.path(), &["l0", "l1"], "c/upper", "c/work")
            .check()
            .unwrap();
        assert_eq!(c.lowers.len(), 2);
        assert!(c.lowers[0].ends_with("l0"));
    }

    #[test]
    fn each_bad_config_is_named() {
        let d = tree();
        let p = d.path();
        let err = |c: ServeConfig| c.check().unwrap_err().to_string();
        assert!(err(cfg(p, &["nope"], "c/upper", "c/work")).contains("layer"));
        assert!(err(cfg(p, &["file"], "c/upper", "c/work")).contains("not a directory"));
        assert!(err(cfg(p, &["l0"], "c/missing", "c/work")).contains("upper"));
        assert!(err(cfg(p, &["l0", "l0"], "c/upper", "c/work")).contains("twice"));
        assert!(err(cfg(p, &["l0"], "c/upper", "c/upper")).contains("twice"));
        std::fs::create_dir_all(p.join("l0/inner")).unwrap();
        assert!(err(cfg(p, &["l0"], "l0/inner", "c/work")).contains("inside"));
        assert!(err(cfg(p, &[], "c/upper", "c/work")).contains("layer"));
    }

    #[test]
    fn layer_xattrs_are_found_and_overlay_ones_skipped_when_merged() {
        let d = tree();
        let p = d.path();
        std::fs::create_dir_all(p.join("l1/usr/bin")).unwrap();
        std::fs::write(p.join("l1/usr/bin/ping"), b"").unwrap();
        let lowers = [p.join("l0"), p.join("l1")];
        assert_eq!(first_layer_xattr(&lowers, true).unwrap(), None);
        if crate::sys::xattr::set_path(&p.join("l0"), c"trusted.overlay.opaque", b"y").is_ok() {
            assert_eq!(first_layer_xattr(&lowers, true).unwrap(), None);
            let (at, name) = first_layer_xattr(&lowers, false).unwrap().unwrap();
            assert_eq!(
                (at, name.as_str()),
                (p.join("l0"), "trusted.overlay.opaque")
            );
        }
        crate::sys::xattr::set_path(&p.join("l1/usr/bin/ping"), c"user.cap", b"x").unwrap();
        let (at, name) = first_layer_xattr(&lowers, true).unwrap().unwrap();
        assert_eq!((at, name.as_str()), (p.join("l1/usr/bin/ping"), "user.cap"));
    }

    #[test]
    fn different_filesystems_are_refused() {
        // /dev/shm (tmpfs) vs a temp dir on the root filesystem, where both exist.
        let shm = Path::new("/dev/shm");
        let d = tree();
        let on_disk = std::fs::metadata(d.path()).unwrap().dev();
        if !shm.is_dir() || std::fs::metadata(shm).unwrap().dev() == on_disk {
            eprintln!("skipped: no second filesystem to compare with");
            return;
        }
        let w = tempfile::tempdir_in(shm).unwrap();
        let mut c = cfg(d.path(), &["l0"], "c/upper", "c/work");
        c.work = w.path().to_owned();
        assert!(matches!(
            c.check(),
            Err(ConfigError::DifferentFilesystems { .. })
        ));
    }
}
