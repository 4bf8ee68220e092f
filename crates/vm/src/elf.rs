//! Just enough ELF to tell whether a binary can run in a guest without a dynamic loader.

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
}
