//! EROFS images of layer directories the store does not own: the overlayfs snapshotter's
//! snapshots that containerd hands the shim (`lowerdir=…`), for a guest that reads them from a
//! virtio-blk device.
//!
//! Such directories have no diff_ids, so an image is keyed by the identity of each lower
//! directory, topmost first: its path, device, inode and change time. A committed snapshot
//! never changes, and containerd never reuses a snapshot's directory for another one, so the
//! same chain gets the same image and a new chain a new one. Images live in a cache directory
//! (`<key hex>.img`, beside `<key hex>.lowers`, the chain's paths and inodes as JSON); each
//! build also removes the images whose chain is gone (a lower directory missing or another
//! inode), so removing an image's snapshots in containerd frees its EROFS image at the next
//! build. A VM still running on a removed image keeps it open: unlinking is safe.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::digest::Sha256;
use crate::erofs::{build_and_publish, ErofsImage};
use crate::error::{Result, StoreError};
use crate::store::check_dir;

/// Bumped when the image layout or the key changes.
const FORMAT: &str = "strata-erofs-dirs-1";
/// Where builds stage their merged tree, inside the cache directory.
const TMP_DIR: &str = "tmp";

/// One lower directory as the key sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Lower {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// The `<key>.lowers` record.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    format: String,
    lowers: Vec<Lower>,
}

fn identity(path: &Path) -> Result<(Lower, (i64, i64))> {
    let m = fs::metadata(path).map_err(StoreError::io("cannot stat lower directory", path))?;
    if !m.is_dir() {
        return Err(StoreError::BadSource {
            src: path.to_path_buf(),
            reason: "a lower layer must be a directory".into(),
        });
    }
    Ok((
        Lower {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        },
        (m.ctime(), m.ctime_nsec()),
    ))
}

/// The key of the chain `lowers` (topmost first).
fn key(lowers: &[PathBuf]) -> Result<(Sha256, Vec<Lower>)> {
    let mut s = String::from(FORMAT);
    let mut ids = Vec::with_capacity(lowers.len());
    for l in lowers {
        let (id, (sec, nsec)) = identity(l)?;
        s.push_str(&format!(
            "\n{}\0{}\0{}\0{sec}.{nsec}",
            l.display(),
            id.dev,
            id.ino
        ));
        ids.push(id);
    }
    Ok((Sha256::of(s.as_bytes()), ids))
}

/// Create `dir` (and its parents) 0700 if missing, and refuse it unless it is a directory of
/// ours that no other user may enter: the images hold whatever the layers hold (shadow files,
/// keys), and their names are predictable, so a cache another user could write into would let
/// them plant the rootfs of the next container.
fn private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(StoreError::io("cannot create", dir))?;
    let meta = fs::symlink_metadata(dir).map_err(StoreError::io("cannot stat", dir))?;
    let narrow = check_dir(dir, &meta, 0o700).map_err(|e| match e {
        StoreError::Insecure { path, reason } => StoreError::InsecureCache { path, reason },
        other => other,
    })?;
    if narrow {
        return Err(StoreError::InsecureCache {
            path: dir.to_path_buf(),
            reason: format!(
                "mode {:o} lets other users in (at most 700): chmod 700 it",
                meta.mode() & 0o7777
            ),
        });
    }
    Ok(())
}

/// The merged EROFS image of the layer directories `lowers` (topmost first) in `cache`,
/// built if missing. Concurrent builders of one chain each build and the first rename wins.
pub fn dirs_erofs_image(cache: &Path, lowers: &[PathBuf]) -> Result<ErofsImage> {
    if lowers.is_empty() {
        return Err(StoreError::BadSource {
            src: cache.to_path_buf(),
            reason: "no lower directory to build an EROFS image of".into(),
        });
    }
    let (key, ids) = key(lowers)?;
    private_dir(cache)?;
    let path = cache.join(format!("{}.img", key.hex()));
    if let Some(found) = ErofsImage::existing(&path) {
        return Ok(found);
    }
    let tmp = cache.join(TMP_DIR);
    private_dir(&tmp)?;
    // The record first: a sweep that finds an image finds what it was made of.
    let record = cache.join(format!("{}.lowers", key.hex()));
    let json = serde_json::to_vec(&Record {
        format: FORMAT.into(),
        lowers: ids,
    })
    .map_err(|e| StoreError::io("cannot encode", &record)(io::Error::other(e)))?;
    let staged = tmp.join(format!("{}.lowers.{}", key.hex(), std::process::id()));
    fs::write(&staged, json).map_err(StoreError::io("cannot write", &staged))?;
    fs::rename(&staged, &record).map_err(StoreError::io("cannot publish", &record))?;
    let image = build_and_publish(lowers, &tmp, path)?;
    // Best effort: a sweep that fails leaves disk used, never a wrong image.
    let _ = sweep(cache);
    Ok(image)
}

/// How old an unfinished build's staging must be before a sweep takes it for dead: far longer
/// than any build (mkfs.erofs writes about 0.1 GiB/s here, see docs/erofs.md).
pub const STALE_STAGING: Duration = Duration::from_secs(6 * 3600);

/// Remove the entries of `tmp` last modified more than `age` ago (a builder killed mid-build
/// leaves its staging tree or record there); the names removed. Best effort.
fn sweep_staging(tmp: &Path, age: Duration) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(tmp) else {
        return removed;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|d| d > age));
        if !old {
            continue;
        }
        let p = e.path();
        let gone = if p.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        if gone.is_ok() {
            removed.push(format!("{TMP_DIR}/{}", e.file_name().to_string_lossy()));
        }
    }
    removed
}

/// Is this recorded chain still on disk, directory for directory?
fn chain_exists(r: &Record) -> bool {
    r.format == FORMAT
        && r.lowers.iter().all(|l| {
            fs::metadata(&l.path).is_ok_and(|m| m.is_dir() && m.dev() == l.dev && m.ino() == l.ino)
        })
}

/// Remove the images (and records) of `cache` whose chain is gone, and staging left by
/// builders that died more than [`STALE_STAGING`] ago; the names removed.
pub fn sweep(cache: &Path) -> Result<Vec<String>> {
    let mut removed = sweep_staging(&cache.join(TMP_DIR), STALE_STAGING);
    let entries = fs::read_dir(cache).map_err(StoreError::io("cannot list", cache))?;
    for e in entries {
        let e = e.map_err(StoreError::io("cannot list", cache))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(hex) = name.strip_suffix(".lowers") else {
            continue;
        };
        let keep = fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
            .is_some_and(|r| chain_exists(&r));
        if keep {
            continue;
        }
        let img = cache.join(format!("{hex}.img"));
        match fs::remove_file(&img) {
            Ok(()) => removed.push(format!("{hex}.img")),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(StoreError::io("cannot remove", &img)(err)),
        }
        fs::remove_file(e.path()).map_err(StoreError::io("cannot remove", e.path()))?;
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Same chain, same image; a new chain, a new image; a chain whose directory is gone loses
    /// its image at the next build.
    #[test]
    fn images_follow_their_chain() {
        if !strata_harness::needs("images_follow_their_chain", false, &["mkfs.erofs"]) {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let cache = t.path().join("cache");
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for (d, f) in [(&a, "top"), (&b, "base")] {
            fs::create_dir_all(d.join("etc")).unwrap();
            fs::write(d.join("etc").join(f), f).unwrap();
        }
        let first = dirs_erofs_image(&cache, &[a.clone(), b.clone()]).unwrap();
        assert!(first.built && first.bytes > 0);
        let mode = fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the cache is private like the store");
        let again = dirs_erofs_image(&cache, &[a.clone(), b.clone()]).unwrap();
        assert_eq!(
            (again.path.clone(), again.built),
            (first.path.clone(), false)
        );
        // Only b: another chain, another image; the first stays (its chain is still there).
        let only_b = dirs_erofs_image(&cache, std::slice::from_ref(&b)).unwrap();
        assert_ne!(only_b.path, first.path);
        assert!(first.path.exists());
        // a goes (containerd removed that snapshot): the next build sweeps its image.
        fs::remove_dir_all(&a).unwrap();
        let c = t.path().join("c");
        fs::create_dir_all(&c).unwrap();
        dirs_erofs_image(&cache, &[c, b.clone()]).unwrap();
        assert!(!first.path.exists(), "the image of a gone chain stayed");
        assert!(only_b.path.exists());
        let left: Vec<_> = fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".img") || n.ends_with(".lowers"))
            .collect();
        assert_eq!(left.len(), 4, "{left:?}");
    }

    /// A builder killed mid-build leaves staging; only old staging is taken for dead.
    #[test]
    fn dead_builders_staging_goes_live_ones_stays() {
        let t = tempfile::tempdir().unwrap();
        let tmp = t.path().join(TMP_DIR);
        fs::create_dir_all(tmp.join("erofs-dead/tree")).unwrap();
        fs::create_dir_all(tmp.join("erofs-live")).unwrap();
        let old = std::time::SystemTime::now() - STALE_STAGING - Duration::from_secs(60);
        let dead = fs::File::open(tmp.join("erofs-dead")).unwrap();
        dead.set_modified(old).unwrap();
        let removed = sweep(t.path()).unwrap();
        assert_eq!(removed, ["tmp/erofs-dead"]);
        assert!(tmp.join("erofs-live").exists());
    }

    /// A cache other users may write into is refused before any image in it is trusted.
    #[test]
    fn a_cache_others_can_enter_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (cache, lower) = (t.path().join("cache"), t.path().join("l"));
        fs::create_dir_all(&lower).unwrap();
        fs::create_dir_all(&cache).unwrap();
        fs::set_permissions(&cache, fs::Permissions::from_mode(0o777)).unwrap();
        let e = dirs_erofs_image(&cache, std::slice::from_ref(&lower)).unwrap_err();
        assert!(matches!(e, StoreError::InsecureCache { .. }), "{e}");
        assert!(e.to_string().contains("chmod 700"), "{e}");
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&cache, &link).unwrap();
        let e = dirs_erofs_image(&link, &[lower]).unwrap_err();
        assert!(matches!(e, StoreError::InsecureCache { .. }), "{e}");
    }

    #[test]
    fn a_missing_lower_is_an_error_not_an_image() {
        let t = tempfile::tempdir().unwrap();
        let e = dirs_erofs_image(t.path(), &[t.path().join("gone")]).unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
        assert!(dirs_erofs_image(t.path(), &[]).is_err());
    }
}
