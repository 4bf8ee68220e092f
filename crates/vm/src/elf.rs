//! Just enough ELF to tell whether a binary can run in a guest without a dynamic loader, and to
//! strip one for an initramfs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Result, VmError};

const PT_INTERP: u32 = 3;

/// Check that `path` is a 64-bit little-endian ELF executable with no `PT_INTERP` program header
/// (i.e. statically linked, including static-pie).
pub fn check_static(path: &Path) -> Result<()> {
    let not_static = |detail: &str| VmError::NotStatic {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let mut f = File::open(path).map_err(VmError::io("cannot open", path))?;
    let mut h = [0u8; 64];
    f.read_exact(&mut h)
        .map_err(|_| not_static("is not an ELF file (too short)"))?;
    if &h[..4] != b"\x7fELF" {
        return Err(not_static("is not an ELF file"));
    }
    if h[4] != 2 || h[5] != 1 {
        return Err(not_static("is not a 64-bit little-endian ELF file"));
    }
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    let phoff = u64::from_le_bytes(h[0x20..0x28].try_into().unwrap_or_default());
    let phentsize = u64::from(u16_at(0x36));
    let phnum = u64::from(u16_at(0x38));
    if phentsize < 4 || phnum == 0 {
        return Err(not_static("has no program headers (not an executable)"));
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.seek(SeekFrom::Start(phoff))
        .and_then(|_| f.read_exact(&mut ph))
        .map_err(|_| not_static("has truncated program headers"))?;
    for entry in ph.chunks_exact(phentsize as usize) {
        let p_type = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
        if p_type == PT_INTERP {
            return Err(not_static("is dynamically linked (has an ELF interpreter)"));
        }
    }
    Ok(())
}

/// The bytes of the static 64-bit ELF executable at `path` as the kernel needs them: everything
/// up to the end of the last program segment (and of the program header table), with the
/// section header fields of the ELF header zeroed. What lies beyond, and what the section
/// headers described, is what no segment loads: symbols, debug info, the section headers
/// themselves. It is what `strip --strip-all` removes and a little more, without the tool: a
/// static executable needs only its program headers to run.
pub fn stripped(path: &Path) -> Result<Vec<u8>> {
    check_static(path)?;
    let bad = |detail: &str| VmError::NotStatic {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let mut f = File::open(path).map_err(VmError::io("cannot open", path))?;
    let mut h = [0u8; 64];
    f.read_exact(&mut h)
        .map_err(|_| bad("is not an ELF file (too short)"))?;
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([h[o], h[o + 1]]));
    let u64_at = |b: &[u8], o: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(v)
    };
    let (phoff, phentsize, phnum) = (u64_at(&h, 0x20), u16_at(0x36), u16_at(0x38));
    if phentsize < 0x38 {
        return Err(bad("has program headers too small for ELF64"));
    }
    let table_end = phoff + phentsize * phnum;
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.seek(SeekFrom::Start(phoff))
        .and_then(|_| f.read_exact(&mut ph))
        .map_err(|_| bad("has truncated program headers"))?;
    let end = ph
        .chunks_exact(phentsize as usize)
        .map(|e| u64_at(e, 0x08).saturating_add(u64_at(e, 0x20)))
        .fold(table_end, u64::max);
    let len = f
        .metadata()
        .map_err(VmError::io("cannot stat", path))?
        .len();
    if end > len {
        return Err(bad("has a segment past the end of the file"));
    }
    let mut out = Vec::with_capacity(end as usize);
    f.seek(SeekFrom::Start(0))
        .and_then(|_| (&mut f).take(end).read_to_end(&mut out))
        .map_err(VmError::io("cannot read", path))?;
    if out.len() as u64 != end {
        return Err(VmError::FileChanged {
            path: path.to_path_buf(),
            expected: end,
        });
    }
    // e_shoff, e_shnum, e_shstrndx: no section headers.
    out[0x28..0x30].fill(0);
    out[0x3c..0x40].fill(0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_dynamic_and_non_elf() {
        // /bin/sh on Debian is dynamically linked dash.
        if Path::new("/bin/sh").exists() {
            assert!(matches!(
                check_static(Path::new("/bin/sh")),
                Err(VmError::NotStatic { .. })
            ));
        }
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), b"#!/bin/sh\necho hi\n").unwrap();
        assert!(matches!(
            check_static(t.path()),
            Err(VmError::NotStatic { .. })
        ));
        // The test binary itself is built with crt-static by the workspace config.
        let me = std::env::current_exe().unwrap();
        check_static(&me).unwrap();
    }

    #[test]
    fn a_stripped_binary_still_runs_and_is_smaller() {
        // The test binary itself: static, with symbols and debug info.
        let me = std::env::current_exe().unwrap();
        let bytes = stripped(&me).unwrap();
        let before = std::fs::metadata(&me).unwrap().len();
        assert!((bytes.len() as u64) < before, "{} >= {before}", bytes.len());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("stripped");
        std::fs::write(&p, &bytes).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        check_static(&p).unwrap();
        // It runs: list this test by name (the harness needs no symbols for that). Another test
        // thread that forks while our write fd is open gives its child a copy of that fd until
        // the child execs: exec of the new file fails with ETXTBSY meanwhile, so retry.
        let run = || {
            std::process::Command::new(&p)
                .args(["--list", "a_stripped_binary_still_runs"])
                .output()
        };
        let mut out = run();
        for _ in 0..100 {
            match &out {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    out = run();
                }
                _ => break,
            }
        }
        let out = out.unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("a_stripped_binary_still_runs"));
        let not_elf = d.path().join("script");
        std::fs::write(&not_elf, b"#!/bin/sh\n").unwrap();
        assert!(matches!(stripped(&not_elf), Err(VmError::NotStatic { .. })));
    }
}
