//! Who serves a container rootfs right now.
//!
//! `strata serve` and every `strata daemon` session hold an exclusive `flock` on the upper
//! directory they serve, for as long as they serve it (the kernel drops it when the server
//! stops or dies): one rootfs, one VM. The store reads the holder from `/proc/locks` without
//! touching the lock itself, so asking never makes a concurrent start fail.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The pid holding the serving lock on directory `dir`, if any.
pub fn holder(dir: &Path) -> std::io::Result<Option<u32>> {
    let meta = std::fs::symlink_metadata(dir)?;
    let locks = std::fs::read_to_string("/proc/locks")?;
    Ok(find(&locks, meta.dev(), meta.ino()))
}

/// The holder of a FLOCK write lock on (`dev`, `ino`) in a `/proc/locks` text.
fn find(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    locks.lines().find_map(|line| {
        // "12: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF"; waiters have a "->" field.
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] == "->" || f[1] != "FLOCK" || f[3] != "WRITE" {
            return None;
        }
        let mut id = f[5].split(':');
        let maj = u64::from_str_radix(id.next()?, 16).ok()?;
        let min = u64::from_str_radix(id.next()?, 16).ok()?;
        let i: u64 = id.next()?.parse().ok()?;
        (maj == major && min == minor && i == ino)
            .then(|| f[4].parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_locks() {
        let dev = nix::sys::stat::makedev(0xfd, 1);
        let text = "1: POSIX  ADVISORY  WRITE 10 fd:01:77 0 EOF\n\
                    2: FLOCK  ADVISORY  READ 11 fd:01:77 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 4242 fd:01:77 0 EOF\n\
                    3: -> FLOCK  ADVISORY  WRITE 4343 fd:01:77 0 EOF\n";
        assert_eq!(find(text, dev, 77), Some(4242));
        assert_eq!(find(text, dev, 78), None);
        assert_eq!(find(text, nix::sys::stat::makedev(0xfd, 2), 77), None);
    }

    #[test]
    fn sees_a_real_flock() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(holder(t.path()).unwrap(), None);
        let f = std::fs::File::open(t.path()).unwrap();
        f.try_lock().unwrap();
        assert_eq!(holder(t.path()).unwrap(), Some(std::process::id()));
        drop(f);
        assert_eq!(holder(t.path()).unwrap(), None);
    }
}
