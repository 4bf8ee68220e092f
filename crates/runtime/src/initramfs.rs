//! The guest initramfs for a kernel: `/init` = the stripped static `strata` binary plus the
//! kernel's modules in load order ([`strata_vm::guest_initramfs`]), built once per (strata
//! binary, kernel release) and cached.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use strata_vm::GuestKernel;

use crate::error::{Result, RuntimeError};

/// Write the initramfs for `kernel` with `strata` as `/init` to `out`.
pub fn build(strata: &Path, kernel: &GuestKernel, out: &Path) -> Result<()> {
    strata_vm::guest_initramfs(strata, kernel, out)?;
    Ok(())
}

/// The initramfs for `kernel` and this `strata` binary from the cache
/// (`$STRATA_CACHE/initramfs/`), built first if needed. The key is the kernel release and the
/// binary's size, mtime and inode, so a rebuilt strata gets a new initramfs.
pub fn cached(strata: &Path, kernel: &GuestKernel) -> Result<PathBuf> {
    let meta = std::fs::metadata(strata).map_err(RuntimeError::io("cannot stat", strata))?;
    let dir = strata_vm::cache_dir().join("initramfs");
    let name = format!(
        "{}-{:x}-{:x}-{:x}.cpio",
        kernel.release,
        meta.len(),
        meta.mtime(),
        meta.ino()
    );
    let out = dir.join(name);
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).map_err(RuntimeError::io("cannot create", &dir))?;
    // Build beside it and rename: a concurrent run never sees half an archive.
    let tmp = dir.join(format!(".{}.{}", std::process::id(), unique()));
    let r = build(strata, kernel, &tmp).and_then(|()| {
        std::fs::rename(&tmp, &out).map_err(RuntimeError::io("cannot rename to", &out))
    });
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map(|()| out)
}

/// A process-unique number for temporary names.
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
