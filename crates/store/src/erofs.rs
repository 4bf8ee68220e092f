//! EROFS images of a container's read-only layers, for a guest that reads them from a
//! virtio-blk device instead of over virtio-fs.
//!
//! One image per layer *stack* (not per layer): a VM gets at most two block devices whatever the
//! layer count, and the guest overlay looks names up in one lower. The layers are merged the
//! way overlayfs shows them (whiteouts and opaque directories applied, the topmost entry wins,
//! a directory's metadata and xattrs from the topmost layer that has it) into a staging tree
//! under `STORE/tmp` — copies (`copy_file_range`) with owner, mode, xattrs and times, mounting
//! nothing; not hard links, which would change the link count and ctime that a layer's seal
//! covers — and `mkfs.erofs` (erofs-utils) writes the image from that tree, uncompressed, with
//! per-file mtimes and every xattr but overlayfs' own `trusted.overlay.*`. Files linked within
//! a layer stay linked (erofs-utils counts links inside the tree).
//!
//! The image's root holds one directory, [`EROFS_LOWER_DIR`], the merged lower: a mount plan
//! names it as a plain relative path. Images are content-addressed by the layer stack
//! ([`erofs_key`]), built once (`strata image import --erofs`, or on first use by
//! `strata serve --rootfs ID --erofs`), and removed by `gc` once no image or container rootfs
//! has that stack.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::digest::Sha256;
use crate::error::{Result, StoreError};
use crate::unpack::OPAQUE_XATTR;
use crate::Store;

/// Directory of the store holding the images (`<key hex>.img`).
pub const EROFS_DIR: &str = "erofs";
/// The one directory at the root of every image: the merged lower (the mount plan's lower).
pub const EROFS_LOWER_DIR: &str = "lower";
/// Bumped when the image layout changes: old images then stop matching and `gc` drops them.
const FORMAT: &str = "strata-erofs-1";

/// The key of the image of a layer stack, given as diff_ids (`sha256:…`) topmost first.
pub fn erofs_key(diff_ids_topmost_first: &[String]) -> Sha256 {
    let mut s = String::from(FORMAT);
    for d in diff_ids_topmost_first {
        s.push('\n');
        s.push_str(d);
    }
    Sha256::of(s.as_bytes())
}

/// An EROFS image in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct ErofsImage {
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Built by this call (false: it was there).
    pub built: bool,
    /// Time spent merging and running `mkfs.erofs` (0 if not built).
    pub build_secs: f64,
}

impl ErofsImage {
    /// The image at `path`, if one is there (already built).
    pub(crate) fn existing(path: &Path) -> Option<ErofsImage> {
        let m = fs::metadata(path).ok()?;
        Some(ErofsImage {
            path: path.to_path_buf(),
            bytes: m.len(),
            built: false,
            build_secs: 0.0,
        })
    }
}

impl Store {
    /// Where the image of the stack with key `key` lives.
    pub fn erofs_path(&self, key: &Sha256) -> PathBuf {
        self.root()
            .join(EROFS_DIR)
            .join(format!("{}.img", key.hex()))
    }

    /// The EROFS image of image `reference`'s layers (built if missing).
    pub fn image_erofs(&self, reference: &str) -> Result<ErofsImage> {
        let img = self.image(reference)?;
        let lowers: Vec<PathBuf> = img.layers.iter().rev().map(|l| l.path.clone()).collect();
        let ids: Vec<String> = img.layers.iter().rev().map(|l| l.diff_id.clone()).collect();
        self.erofs_image(&lowers, &ids)
    }

    /// The EROFS image of container rootfs `id`'s layers (built if missing).
    pub fn rootfs_erofs(&self, id: &str) -> Result<ErofsImage> {
        let r = self.rootfs(id)?;
        self.erofs_image(&r.lowers, &r.diff_ids)
    }

    /// The EROFS image of the layer directories `lowers` (topmost first, with their diff_ids
    /// `diff_ids`), built if missing. Concurrent builders of one stack each build and the
    /// first rename wins; `gc` waits (the store lock is held shared meanwhile).
    pub fn erofs_image(&self, lowers: &[PathBuf], diff_ids: &[String]) -> Result<ErofsImage> {
        let key = erofs_key(diff_ids);
        let path = self.erofs_path(&key);
        if let Some(found) = ErofsImage::existing(&path) {
            return Ok(found);
        }
        let _lock = self.lock(false)?;
        let dir = self.root().join(EROFS_DIR);
        fs::create_dir_all(&dir).map_err(StoreError::io("cannot create", &dir))?;
        build_and_publish(lowers, &self.root().join("tmp"), path)
    }

    /// Remove the images whose stack no image or container rootfs has: the file names
    /// removed, and one line per image that could not be (gc goes on past it). Called by
    /// [`Store::gc`] with the store lock held exclusively.
    pub(crate) fn gc_erofs(&self, stacks: &[Vec<String>]) -> (Vec<String>, Vec<String>) {
        let keep: std::collections::HashSet<String> = stacks
            .iter()
            .map(|s| format!("{}.img", erofs_key(s).hex()))
            .collect();
        let dir = self.root().join(EROFS_DIR);
        let (mut removed, mut failed) = (Vec::new(), Vec::new());
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (removed, failed),
            Err(e) => {
                failed.push(StoreError::io("cannot list", &dir)(e).to_string());
                return (removed, failed);
            }
        };
        for e in entries {
            let e = match e {
                Ok(e) => e,
                Err(e) => {
                    failed.push(StoreError::io("cannot list", &dir)(e).to_string());
                    break;
                }
            };
            let name = e.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            match fs::remove_file(e.path()) {
                Ok(()) => removed.push(name),
                Err(err) => failed.push(StoreError::io("cannot remove", e.path())(err).to_string()),
            }
        }
        removed.sort();
        (removed, failed)
    }
}

/// Build the merged image of `lowers` in a temporary directory under `tmp` and publish it at
/// `path` (never replacing: an image that is there is the same image, from a concurrent
/// builder).
pub(crate) fn build_and_publish(
    lowers: &[PathBuf],
    tmp: &Path,
    path: PathBuf,
) -> Result<ErofsImage> {
    let t0 = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("erofs-")
        .tempdir_in(tmp)
        .map_err(StoreError::io("cannot create a directory in", tmp))?;
    let out = work.path().join("image.img");
    build_merged_image(lowers, work.path(), &out)?;
    let bytes = fs::metadata(&out)
        .map_err(StoreError::io("cannot stat", &out))?
        .len();
    match nix::fcntl::renameat2(
        None,
        &out,
        None,
        &path,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => {
            return Err(StoreError::Io {
                what: "cannot publish",
                path,
                source: e.into(),
            })
        }
    }
    Ok(ErofsImage {
        path,
        bytes,
        built: true,
        build_secs: t0.elapsed().as_secs_f64(),
    })
}

/// Write the merged EROFS image of layer directories `lowers` (topmost first) to `out`,
/// staging the merged tree (a copy) in `scratch`, an empty directory the caller removes.
pub fn build_merged_image(lowers: &[PathBuf], scratch: &Path, out: &Path) -> Result<()> {
    let stage = scratch.join("tree");
    let lower = stage.join(EROFS_LOWER_DIR);
    fs::create_dir_all(&lower).map_err(StoreError::io("cannot create", &lower))?;
    for l in lowers.iter().rev() {
        merge_layer(l, &lower).map_err(StoreError::io("cannot stage layer", l))?;
    }
    mkfs_erofs(out, &stage)
}

/// Run `mkfs.erofs` on `tree`, writing `out`.
fn mkfs_erofs(out: &Path, tree: &Path) -> Result<()> {
    let res = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg("--preserve-mtime")
        .arg(out)
        .arg(tree)
        .stdin(std::process::Stdio::null())
        .output();
    match res {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(StoreError::Tool {
            tool: "mkfs.erofs",
            reason: format!(
                "{}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::Tool {
            tool: "mkfs.erofs",
            reason: "not installed (install erofs-utils: scripts/install-deps.sh)".into(),
        }),
        Err(e) => Err(StoreError::Tool {
            tool: "mkfs.erofs",
            reason: e.to_string(),
        }),
    }
}

/// Whether `meta` is an overlayfs whiteout (a character device 0:0).
fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn remove_entry(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Lay layer directory `src` over the staged tree `dst` (an existing directory), as overlayfs
/// would show `src` above what `dst` holds.
fn merge_layer(src: &Path, dst: &Path) -> io::Result<()> {
    merge_dir(src, dst, &mut HashMap::new())
}

/// [`merge_layer`] of one directory; `links` maps the (device, inode) of this layer's files
/// with several links that are staged already to their staged copy.
fn merge_dir(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    for e in fs::read_dir(src)? {
        let e = e?;
        let (s, d) = (e.path(), dst.join(e.file_name()));
        let meta = fs::symlink_metadata(&s)?;
        if is_whiteout(&meta) {
            remove_entry(&d)?;
        } else if meta.is_dir() {
            let opaque = xattr::get(&s, OPAQUE_XATTR)?.is_some_and(|v| v == b"y");
            let merge_into = !opaque && fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir());
            if !merge_into {
                remove_entry(&d)?;
                fs::create_dir(&d)?;
            }
            merge_dir(&s, &d, links)?;
        } else {
            remove_entry(&d)?;
            stage_entry(&s, &d, &meta, links)?;
        }
    }
    copy_metadata(src, dst, &fs::symlink_metadata(src)?)
}

/// Stage the non-directory `s` (`meta`) as a copy at `d`: the layer's own files are never
/// linked to or changed (their link count and ctime are part of the layer's seal). Files with
/// several links in the layer are copied once and linked to in the staging tree.
fn stage_entry(
    s: &Path,
    d: &Path,
    meta: &fs::Metadata,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let ft = meta.file_type();
    let key = (meta.dev(), meta.ino());
    if ft.is_file() && meta.nlink() > 1 {
        if let Some(first) = links.get(&key) {
            return fs::hard_link(first, d);
        }
    }
    if ft.is_file() {
        fs::copy(s, d)?;
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(s)?, d)?;
    } else {
        let kind = if ft.is_char_device() {
            SFlag::S_IFCHR
        } else if ft.is_block_device() {
            SFlag::S_IFBLK
        } else if ft.is_fifo() {
            SFlag::S_IFIFO
        } else {
            SFlag::S_IFSOCK
        };
        mknod(d, kind, Mode::from_bits_truncate(0o600), meta.rdev())?;
    }
    copy_metadata(s, d, meta)?;
    if ft.is_file() && meta.nlink() > 1 {
        links.insert(key, d.to_path_buf());
    }
    Ok(())
}

/// Give `dst` the owner, mode, xattrs (but `trusted.overlay.*`) and times of `src` (`meta`);
/// for a directory, after its entries are in place (adding them changes the mtime).
fn copy_metadata(src: &Path, dst: &Path, meta: &fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    if !meta.file_type().is_symlink() {
        // After the chown, which clears set-id bits.
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    for name in xattr::list(dst)? {
        xattr::remove(dst, &name)?;
    }
    for name in xattr::list(src)? {
        if name.to_string_lossy().starts_with("trusted.overlay.") {
            continue;
        }
        if let Some(v) = xattr::get(src, &name)? {
            xattr::set(dst, &name, &v)?;
        }
    }
    utimensat(
        None,
        dst,
        &TimeSpec::new(meta.atime(), meta.atime_nsec()),
        &TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn keys_depend_on_the_stack_and_its_order() {
        let a = "sha256:".to_string() + &"a".repeat(64);
        let b = "sha256:".to_string() + &"b".repeat(64);
        let ab = erofs_key(&[a.clone(), b.clone()]);
        assert_eq!(ab, erofs_key(&[a.clone(), b.clone()]));
        assert_ne!(ab, erofs_key(&[b.clone(), a.clone()]));
        assert_ne!(ab, erofs_key(std::slice::from_ref(&a)));
    }

    /// The merge as overlayfs shows it (whiteouts as the root-only char 0:0 device are
    /// covered by the VM test; here: replacement, opaque-less dir merge, file over dir).
    #[test]
    fn merge_applies_the_topmost_entry() {
        let t = tempfile::tempdir().unwrap();
        let (l0, l1, out) = (t.path().join("l0"), t.path().join("l1"), t.path().join("o"));
        for d in [&l0, &l1, &out] {
            fs::create_dir_all(d).unwrap();
        }
        fs::create_dir_all(l0.join("d")).unwrap();
        fs::write(l0.join("d/a"), "a0").unwrap();
        fs::write(l0.join("d/b"), "b0").unwrap();
        fs::create_dir_all(l0.join("x/deep")).unwrap();
        fs::create_dir_all(l1.join("d")).unwrap();
        fs::write(l1.join("d/a"), "a1").unwrap();
        fs::write(l1.join("x"), "file now").unwrap();
        symlink("d/a", l1.join("s")).unwrap();
        fs::set_permissions(l1.join("d"), fs::Permissions::from_mode(0o701)).unwrap();
        fs::write(l1.join("suid"), "s").unwrap();
        fs::set_permissions(l1.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(l1.join("suid"), l1.join("suid2")).unwrap();
        merge_layer(&l0, &out).unwrap();
        merge_layer(&l1, &out).unwrap();
        assert_eq!(fs::read_to_string(out.join("d/a")).unwrap(), "a1");
        assert_eq!(fs::read_to_string(out.join("d/b")).unwrap(), "b0");
        assert_eq!(fs::read_to_string(out.join("x")).unwrap(), "file now");
        assert_eq!(fs::read_link(out.join("s")).unwrap(), Path::new("d/a"));
        let mode = fs::metadata(out.join("d")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o701);
        // Copies: the layers' files keep their link count.
        assert_ne!(
            fs::metadata(out.join("d/a")).unwrap().ino(),
            fs::metadata(l1.join("d/a")).unwrap().ino()
        );
        assert_eq!(fs::metadata(l1.join("d/a")).unwrap().nlink(), 1);
        // Links within a layer stay links; set-id bits survive.
        let (m1, m2) = (
            fs::metadata(out.join("suid")).unwrap(),
            fs::metadata(out.join("suid2")).unwrap(),
        );
        assert_eq!((m1.ino(), m1.mode() & 0o7777), (m2.ino(), 0o4755));
        assert_eq!(fs::metadata(l1.join("suid")).unwrap().nlink(), 2);
    }
}
