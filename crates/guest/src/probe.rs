//! `strata guest probe`: tiny file-operation probes for tests inside a VM whose rootfs has only
//! busybox (which has no xattr tools and no way to write through a shared mapping).

use std::path::Path;

/// One probe operation.
#[derive(Debug, Clone)]
pub enum Probe {
    /// Set an extended attribute (value as text).
    XattrSet {
        path: String,
        name: String,
        value: String,
    },
    /// Print an extended attribute's value.
    XattrGet { path: String, name: String },
    /// Write `data` at `offset` through a `MAP_SHARED` mapping, then msync.
    MmapWrite {
        path: String,
        offset: usize,
        data: String,
    },
}

/// Run a probe; errors are returned as text for the caller to print.
pub fn run(p: &Probe) -> Result<(), String> {
    match p {
        Probe::XattrSet { path, name, value } => xattr::set(path, name, value.as_bytes())
            .map_err(|e| format!("setxattr {path} {name}: {e}")),
        Probe::XattrGet { path, name } => match xattr::get(path, name) {
            Ok(Some(v)) => {
                println!("{}", String::from_utf8_lossy(&v));
                Ok(())
            }
            Ok(None) => Err(format!("{path}: no attribute {name}")),
            Err(e) => Err(format!("getxattr {path} {name}: {e}")),
        },
        Probe::MmapWrite { path, offset, data } => {
            mmap_write(Path::new(path), *offset, data.as_bytes())
        }
    }
}

fn mmap_write(path: &Path, offset: usize, data: &[u8]) -> Result<(), String> {
    use std::num::NonZeroUsize;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
    let end = offset.checked_add(data.len()).filter(|&e| e <= len);
    let (Some(_), Some(nz)) = (end, NonZeroUsize::new(len)) else {
        return Err(format!(
            "{}: write past the end of the file",
            path.display()
        ));
    };
    crate::sys::with_shared_mapping(&f, nz, |map| {
        map[offset..offset + data.len()].copy_from_slice(data);
    })
    .map_err(|e| format!("mmap {}: {e}", path.display()))?;
    Ok(())
}
