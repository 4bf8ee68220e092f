//! Test fixtures: a busybox rootfs layer and overlayfs-format layer helpers.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use strata_vm::{Result, VmError};

/// The xattr that marks an overlayfs directory opaque (hides lower layers' contents).
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Where busybox-static installs busybox.
const BUSYBOX_PATHS: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

/// The host's static busybox (from the busybox-static package), checked to be static.
pub fn static_busybox() -> Result<PathBuf> {
    let Some(p) = BUSYBOX_PATHS.iter().map(Path::new).find(|p| p.is_file()) else {
        return Err(VmError::MissingTool {
            tool: "busybox (busybox-static)",
        });
    };
    strata_vm::elf::check_static(p)?;
    Ok(p.to_path_buf())
}

/// Create a minimal busybox root filesystem layer in `dir` (created if missing).
///
/// `bin/busybox` (static) with a `bin/<applet>` symlink for every applet it has,
/// `sbin/init -> ../bin/busybox`, the directories `proc sys dev tmp(1777) etc root(0700) run`,
/// and `etc/passwd` / `etc/group` with root.
pub fn busybox_rootfs(dir: &Path) -> Result<()> {
    let busybox = static_busybox()?;
    let out = strata_vm::cmd::run(
        Command::new(&busybox).arg("--list"),
        "busybox",
        "reinstall busybox-static (scripts/install-deps.sh)",
    )?;
    let applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
        .map(str::to_string)
        .collect();

    for (d, mode) in [
        ("", 0o755),
        ("bin", 0o755),
        ("sbin", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("etc", 0o755),
        ("root", 0o700),
        ("run", 0o755),
    ] {
        let p = dir.join(d);
        fs::create_dir_all(&p).map_err(VmError::io("cannot create directory", &p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(VmError::io("cannot chmod", &p))?;
    }
    let bb = dir.join("bin/busybox");
    fs::copy(&busybox, &bb).map_err(VmError::io("cannot copy busybox to", &bb))?;
    fs::set_permissions(&bb, fs::Permissions::from_mode(0o755))
        .map_err(VmError::io("cannot chmod", &bb))?;
    for a in &applets {
        replace_symlink("busybox", &dir.join("bin").join(a))?;
    }
    replace_symlink("../bin/busybox", &dir.join("sbin/init"))?;
    for (f, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
    ] {
        let p = dir.join(f);
        fs::write(&p, text).map_err(VmError::io("cannot write", &p))?;
    }
    tracing::debug!(?dir, applets = applets.len(), "busybox rootfs created");
    Ok(())
}

fn replace_symlink(target: &str, link: &Path) -> Result<()> {
    match fs::symlink_metadata(link) {
        Ok(_) => fs::remove_file(link).map_err(VmError::io("cannot replace", link))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(VmError::Io {
                what: "cannot stat",
                path: link.to_path_buf(),
                source: e,
            })
        }
    }
    symlink(target, link).map_err(VmError::io("cannot create symlink", link))
}

/// A Debian bookworm `debootstrap --variant=minbase` tree with the extra packages `include`,
/// built once per machine and kept under the strata cache (`$STRATA_CACHE` or
/// /var/cache/strata, `debootstrap/bookworm-minbase[+PKG…]`), under an exclusive `flock` so
/// concurrent tests and CI jobs build it once. The mirror is the first `URIs:` of the host's
/// apt sources (else deb.debian.org). Needs root, debootstrap and the network the first time.
pub fn debootstrap_bookworm(include: &[&str]) -> Result<PathBuf> {
    use nix::fcntl::{Flock, FlockArg};
    let mut key = String::from("bookworm-minbase");
    for p in include {
        key.push('+');
        key.push_str(p);
    }
    let cache = strata_vm::kernel::cache_dir().join("debootstrap");
    fs::create_dir_all(&cache).map_err(VmError::io("cannot create", &cache))?;
    let dir = cache.join(&key);
    let done = cache.join(format!("{key}.complete"));
    if done.is_file() {
        return Ok(dir);
    }
    let lock_path = cache.join(".lock");
    let lock_file = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(VmError::io("cannot open lock file", &lock_path))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| VmError::Io {
        what: "cannot lock",
        path: lock_path.clone(),
        source: e.into(),
    })?;
    if done.is_file() {
        return Ok(dir);
    }
    let tmp = cache.join(format!("{key}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_dir_all(&dir);
    let mirror = fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("URIs:").map(|u| u.trim().to_string()))
        })
        .and_then(|u| u.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "http://deb.debian.org/debian".into());
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase");
    if !include.is_empty() {
        cmd.arg(format!("--include={}", include.join(",")));
    }
    cmd.arg("bookworm").arg(&tmp).arg(&mirror);
    strata_vm::cmd::run(
        &mut cmd,
        "debootstrap",
        "debootstrap failed: install it (scripts/install-deps.sh) and check the network/mirror",
    )?;
    fs::rename(&tmp, &dir).map_err(VmError::io("cannot publish", &dir))?;
    fs::write(&done, key.as_bytes()).map_err(VmError::io("cannot write", &done))?;
    Ok(dir)
}

/// Write `data` to `path`, creating its parent directories; panics on failure (for tests).
pub fn write(path: &Path, data: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("cannot create {parent:?}: {e}"));
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("cannot write {path:?}: {e}"));
}

/// Create an overlayfs whiteout at `path`: a character device 0:0 (needs CAP_MKNOD).
pub fn whiteout(path: &Path) -> Result<()> {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(|e| VmError::Io {
        what: "cannot create whiteout (char 0:0; needs root)",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Mark `dir` opaque for overlayfs (`trusted.overlay.opaque = "y"`; needs CAP_SYS_ADMIN).
pub fn set_opaque(dir: &Path) -> Result<()> {
    xattr::set(dir, OPAQUE_XATTR, b"y").map_err(|e| VmError::Io {
        what: "cannot set trusted.overlay.opaque (needs root and a filesystem with trusted xattrs)",
        path: dir.to_path_buf(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn busybox_rootfs_works() {
        if !crate::needs("busybox_rootfs_works", false, &["busybox"]) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        busybox_rootfs(d.path()).unwrap();
        // Idempotent.
        busybox_rootfs(d.path()).unwrap();
        for a in [
            "sh",
            "ls",
            "cat",
            "find",
            "md5sum",
            "sha256sum",
            "dd",
            "stat",
            "ln",
            "mv",
        ] {
            assert_eq!(
                fs::read_link(d.path().join("bin").join(a)).unwrap(),
                Path::new("busybox"),
                "{a}"
            );
        }
        assert_eq!(
            fs::read_link(d.path().join("sbin/init")).unwrap(),
            Path::new("../bin/busybox")
        );
        let m = fs::metadata(d.path().join("tmp")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o1777);
        let out = Command::new(d.path().join("bin/sh"))
            .args(["-c", "echo ok"])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"ok\n");
    }

    #[test]
    fn whiteout_and_opaque() {
        if !crate::needs("whiteout_and_opaque", true, &[]) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let w = d.path().join("gone");
        whiteout(&w).unwrap();
        let m = fs::symlink_metadata(&w).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(std::os::unix::fs::MetadataExt::rdev(&m), 0);
        let o = d.path().join("dir");
        fs::create_dir(&o).unwrap();
        match set_opaque(&o) {
            Ok(()) => {}
            // tmpfs before 6.6 has no trusted xattrs.
            Err(VmError::Io { source, .. }) if source.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                eprintln!("SKIP: no trusted xattrs on {:?}", d.path())
            }
            Err(e) => panic!("{e}"),
        }
    }
}
