//! Before/after snapshots of a tree (metadata and contents), to show that nothing changed
//! where nothing may change.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every path under `root` with (type+mode, uid, gid, size, mtime, ctime, content hash for
/// files): compared before and after to show nothing changed there.
pub type Snapshot = BTreeMap<PathBuf, (u32, u32, u32, u64, i64, i64, u64)>;

pub fn snapshot(root: &Path, skip: &[&Path]) -> Snapshot {
    let mut out = Snapshot::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if skip.iter().any(|s| *s == p) {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let hash = if m.is_file() {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&p).unwrap_or_default().hash(&mut h);
            h.finish()
        } else {
            0
        };
        out.insert(
            p.clone(),
            (
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.mtime(),
                m.ctime(),
                hash,
            ),
        );
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    out
}

/// The differences between two snapshots, one line each.
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in after {
        match before.get(k) {
            None => d.push(format!("new {k:?}")),
            Some(b) if b != v => d.push(format!("changed {k:?}: {b:?} -> {v:?}")),
            _ => {}
        }
    }
    for k in before.keys() {
        if !after.contains_key(k) {
            d.push(format!("removed {k:?}"));
        }
    }
    d
}

/// md5 of a file, as the guest's `md5sum` prints it.
pub fn md5(path: &Path) -> String {
    let out = Command::new("md5sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
