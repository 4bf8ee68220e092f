//! A small, deterministic writer for `newc` cpio archives: the Linux initramfs format.
//!
//! Entries are written sorted by path (parents before children), with inode numbers assigned in
//! that order, uid/gid 0 and mtime 0, so the same inputs always give the same bytes. The archive
//! is uncompressed, which the kernel accepts as is.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, VmError};
use crate::kernel::{GuestKernel, GUEST_MODULES};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const TRAILER: &str = "TRAILER!!!";

/// The contents of a regular file in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// These bytes.
    Bytes(Vec<u8>),
    /// The contents of this host file, read when the archive is written.
    Path(PathBuf),
    /// This host file, a static ELF executable, stripped when the archive is written (see
    /// [`elf::stripped`](crate::elf::stripped)): how the `strata` binary goes into a guest.
    StrippedElf(PathBuf),
}

impl From<Vec<u8>> for Contents {
    fn from(b: Vec<u8>) -> Self {
        Contents::Bytes(b)
    }
}
impl From<&[u8]> for Contents {
    fn from(b: &[u8]) -> Self {
        Contents::Bytes(b.to_vec())
    }
}
impl<const N: usize> From<&[u8; N]> for Contents {
    fn from(b: &[u8; N]) -> Self {
        Contents::Bytes(b.to_vec())
    }
}
impl From<&Path> for Contents {
    fn from(p: &Path) -> Self {
        Contents::Path(p.to_path_buf())
    }
}
impl From<PathBuf> for Contents {
    fn from(p: PathBuf) -> Self {
        Contents::Path(p)
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Contents),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
struct Entry {
    perm: u32,
    kind: Kind,
}

/// An initramfs being assembled. Paths are relative to the guest's `/` (a leading `/` is
/// ignored); missing parent directories are added with mode 0755.
///
/// ```
/// # fn main() -> Result<(), strata_vm::VmError> {
/// # let dir = tempfile::tempdir().unwrap();
/// let mut cpio = strata_vm::Initramfs::new();
/// cpio.file("/init", 0o755, b"#!/bin/busybox sh\n")
///     .symlink("/bin/sh", "busybox")
///     .char_dev("/dev/console", 0o600, 5, 1);
/// cpio.write_to(&dir.path().join("initrd.cpio"))?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
    error: Option<String>,
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a directory with permission bits `mode` (e.g. `0o755`, `0o1777`).
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.add(path, mode, Kind::Dir)
    }

    /// Add a regular file with permission bits `mode` and the given contents.
    pub fn file(&mut self, path: &str, mode: u32, contents: impl Into<Contents>) -> &mut Self {
        self.add(path, mode, Kind::File(contents.into()))
    }

    /// Add a symbolic link `path` -> `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.add(path, 0o777, Kind::Symlink(target.to_string()))
    }

    /// Add a character device node (e.g. `/dev/console` is 5:1).
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        self.add(path, mode, Kind::CharDev { major, minor })
    }

    /// Whether an entry exists at `path`.
    pub fn contains(&self, path: &str) -> bool {
        normalize(path).is_some_and(|p| self.entries.contains_key(&p))
    }

    fn add(&mut self, path: &str, mode: u32, kind: Kind) -> &mut Self {
        let Some(p) = normalize(path) else {
            self.error.get_or_insert_with(|| path.to_string());
            return self;
        };
        let mut parent = String::new();
        for comp in p
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, init)| init)
            .unwrap_or(&[])
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            self.entries.entry(parent.clone()).or_insert(Entry {
                perm: 0o755,
                kind: Kind::Dir,
            });
        }
        self.entries.insert(
            p,
            Entry {
                perm: mode & 0o7777,
                kind,
            },
        );
        self
    }

    /// Write the archive to `out` (atomically: a temporary file renamed into place).
    pub fn write_to(&self, out: &Path) -> Result<()> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::NamedTempFile::new_in(parent)
            .map_err(VmError::io("cannot create temp file in", parent))?;
        let mut w = BufWriter::new(tmp.as_file());
        self.write(&mut w)?;
        w.flush().map_err(VmError::io("cannot write", out))?;
        drop(w);
        tmp.persist(out).map_err(|e| VmError::Io {
            what: "cannot write",
            path: out.to_path_buf(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Write the archive to any writer.
    pub fn write(&self, w: &mut impl Write) -> Result<()> {
        if let Some(bad) = &self.error {
            return Err(VmError::BadEntryPath(bad.clone()));
        }
        let mut cw = CountingWriter { inner: w, count: 0 };
        let werr = |e: io::Error| VmError::Io {
            what: "cannot write initramfs",
            path: PathBuf::from("(output)"),
            source: e,
        };
        for (ino, (name, e)) in self.entries.iter().enumerate() {
            let ino = ino as u32 + 1;
            match &e.kind {
                Kind::Dir => {
                    header(&mut cw, ino, S_IFDIR | e.perm, 2, 0, (0, 0), name).map_err(werr)?;
                }
                Kind::Symlink(target) => {
                    let h = Header::data_len(target.len())?;
                    header(&mut cw, ino, S_IFLNK | e.perm, 1, h, (0, 0), name).map_err(werr)?;
                    cw.write_all(target.as_bytes()).map_err(werr)?;
                    pad(&mut cw).map_err(werr)?;
                }
                Kind::CharDev { major, minor } => {
                    header(&mut cw, ino, S_IFCHR | e.perm, 1, 0, (*major, *minor), name)
                        .map_err(werr)?;
                }
                Kind::File(Contents::Bytes(b)) => {
                    let h = Header::data_len(b.len())?;
                    header(&mut cw, ino, S_IFREG | e.perm, 1, h, (0, 0), name).map_err(werr)?;
                    cw.write_all(b).map_err(werr)?;
                    pad(&mut cw).map_err(werr)?;
                }
                Kind::File(Contents::StrippedElf(src)) => {
                    let b = crate::elf::stripped(src)?;
                    let h = Header::data_len(b.len())?;
                    header(&mut cw, ino, S_IFREG | e.perm, 1, h, (0, 0), name).map_err(werr)?;
                    cw.write_all(&b).map_err(werr)?;
                    pad(&mut cw).map_err(werr)?;
                }
                Kind::File(Contents::Path(src)) => {
                    let f = File::open(src).map_err(VmError::io("cannot open", src))?;
                    let len = f.metadata().map_err(VmError::io("cannot stat", src))?.len();
                    let h = u32::try_from(len).map_err(|_| Header::too_big(len))?;
                    header(&mut cw, ino, S_IFREG | e.perm, 1, h, (0, 0), name).map_err(werr)?;
                    let copied = io::copy(&mut f.take(len), &mut cw)
                        .map_err(VmError::io("cannot copy", src))?;
                    if copied != len {
                        return Err(VmError::FileChanged {
                            path: src.clone(),
                            expected: len,
                        });
                    }
                    pad(&mut cw).map_err(werr)?;
                }
            }
        }
        header(&mut cw, 0, 0, 1, 0, (0, 0), TRAILER).map_err(werr)?;
        // The kernel reads the archive in 512-byte blocks like cpio(1) writes them; pad to that.
        let rem = (cw.count % 512) as usize;
        if rem != 0 {
            cw.write_all(&vec![0u8; 512 - rem]).map_err(werr)?;
        }
        Ok(())
    }
}

struct Header;
impl Header {
    fn data_len(n: usize) -> Result<u32> {
        u32::try_from(n).map_err(|_| Self::too_big(n as u64))
    }
    fn too_big(n: u64) -> VmError {
        VmError::Io {
            what: "file too large for a newc cpio archive",
            path: PathBuf::from(format!("({n} bytes)")),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        }
    }
}

/// A path without leading `/`, with only plain components; `None` if it is not one.
fn normalize(path: &str) -> Option<String> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    let ok = !p.is_empty()
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    ok.then(|| p.to_string())
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn pad<W: Write>(w: &mut CountingWriter<'_, W>) -> io::Result<()> {
    let rem = (w.count % 4) as usize;
    if rem != 0 {
        w.write_all(&[0u8; 4][..4 - rem])?;
    }
    Ok(())
}

fn header<W: Write>(
    w: &mut CountingWriter<'_, W>,
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<()> {
    let namesize = name.len() as u32 + 1;
    let fields = [
        ino, mode, 0, 0, nlink, 0, filesize, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    let mut h = String::with_capacity(110);
    h.push_str("070701");
    for f in fields {
        h.push_str(&format!("{f:08X}"));
    }
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w)
}

/// Build the strata guest initramfs at `out`.
///
/// Contents: `/init` = `strata_bin` (mode 0755, must be static; stripped, see
/// [`Contents::StrippedElf`]), `/lib/modules/NN/<name>.ko` for
/// each of [`GUEST_MODULES`] that `kernel` has as a module (`NN` = its place in a dependency
/// order, which the guest follows: it loads in path order), the directories `/proc /sys /dev
/// /run /newroot /tmp`, and the `/dev/console` character device (5:1) the kernel opens for
/// init's stdio.
pub fn guest_initramfs(strata_bin: &Path, kernel: &GuestKernel, out: &Path) -> Result<()> {
    crate::elf::check_static(strata_bin)?;
    let mut cpio = Initramfs::new();
    for d in ["proc", "sys", "dev", "run", "newroot"] {
        cpio.dir(d, 0o755);
    }
    cpio.dir("tmp", 0o1777);
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.file(
        "init",
        0o755,
        Contents::StrippedElf(strata_bin.to_path_buf()),
    );
    cpio.dir("lib/modules", 0o755);
    // One numbered directory per module: the guest loads in path order, so the dependency
    // order holds and every module loads at the first try (no "Unknown symbol" retries).
    for (i, m) in kernel.modules(GUEST_MODULES)?.iter().enumerate() {
        let Some(name) = m.file_name() else { continue };
        let dir = format!("lib/modules/{i:02}");
        cpio.dir(&dir, 0o755);
        cpio.file(
            &format!("{dir}/{}", name.to_string_lossy()),
            0o644,
            m.as_path(),
        );
    }
    cpio.write_to(out)?;
    tracing::debug!(?out, release = %kernel.release, "guest initramfs written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    /// (name, mode, rdev, data)
    type Parsed = (String, u32, (u32, u32), Vec<u8>);

    /// Parse a newc archive back, trailer excluded.
    fn parse(mut b: &[u8]) -> Vec<Parsed> {
        let total = b.len();
        let mut out = Vec::new();
        loop {
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name = std::str::from_utf8(&b[110..110 + namesize as usize - 1])
                .unwrap()
                .to_string();
            assert_eq!(b[110 + namesize as usize - 1], 0);
            let data_start = (110 + namesize as usize).next_multiple_of(4);
            let data = b[data_start..data_start + size as usize].to_vec();
            let next = (data_start + size as usize).next_multiple_of(4);
            assert_eq!((total - b.len() + next) % 4, 0);
            b = &b[next..];
            if name == TRAILER {
                assert!(b.iter().all(|&x| x == 0));
                assert_eq!(total % 512, 0);
                return out;
            }
            out.push((name, mode, (rmaj, rmin), data));
        }
    }

    fn sample() -> Initramfs {
        let mut c = Initramfs::new();
        c.file("/init", 0o755, b"#!/bin/sh\n")
            .file("bin/x", 0o644, Vec::from(&b"abcde"[..]))
            .symlink("bin/sh", "busybox")
            .dir("tmp", 0o1777)
            .char_dev("dev/console", 0o600, 5, 1)
            .file("a/b/c/d", 0o600, &b""[..]);
        c
    }

    #[test]
    fn round_trips_and_is_deterministic() {
        let mut a = Vec::new();
        sample().write(&mut a).unwrap();
        let mut b = Vec::new();
        sample().write(&mut b).unwrap();
        assert_eq!(a, b);
        let entries = parse(&a);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "a",
                "a/b",
                "a/b/c",
                "a/b/c/d",
                "bin",
                "bin/sh",
                "bin/x",
                "dev",
                "dev/console",
                "init",
                "tmp"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(get("bin/x").1, S_IFREG | 0o644);
        assert_eq!(get("bin/x").3, b"abcde");
        assert_eq!(get("bin/sh").1, S_IFLNK | 0o777);
        assert_eq!(get("bin/sh").3, b"busybox");
        assert_eq!(get("tmp").1, S_IFDIR | 0o1777);
        assert_eq!(get("dev").1, S_IFDIR | 0o755);
        assert_eq!(get("dev/console").1, S_IFCHR | 0o600);
        assert_eq!(get("dev/console").2, (5, 1));
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in ["", "/", "a/../b", "./a", "a//b"] {
            let mut c = Initramfs::new();
            c.dir(bad, 0o755);
            assert!(
                matches!(c.write(&mut Vec::new()), Err(VmError::BadEntryPath(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn file_from_host_path() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, b"hello world").unwrap();
        let mut c = Initramfs::new();
        c.file("etc/greeting", 0o644, src.as_path());
        let mut out = Vec::new();
        c.write(&mut out).unwrap();
        let e = parse(&out);
        assert_eq!(e[1].0, "etc/greeting");
        assert_eq!(e[1].3, b"hello world");
        let mut c = Initramfs::new();
        c.file("x", 0o644, dir.path().join("missing"));
        assert!(matches!(c.write(&mut Vec::new()), Err(VmError::Io { .. })));
    }

    /// GNU cpio (as used by people inspecting images) agrees with our format.
    #[test]
    fn gnu_cpio_extracts_it() {
        // As root: the archive holds a character device.
        if !strata_harness::needs("gnu_cpio_extracts_it", true, &["cpio"]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("initrd.cpio");
        sample().write_to(&archive).unwrap();
        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let st = std::process::Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&archive)
            .current_dir(&x)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read(x.join("bin/x")).unwrap(), b"abcde");
        assert_eq!(
            std::fs::read_link(x.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let tmp = std::fs::metadata(x.join("tmp")).unwrap();
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
        let con = std::fs::symlink_metadata(x.join("dev/console")).unwrap();
        assert!(con.file_type().is_char_device());
    }
}
