//! `/lower`: the layers merged into one read-only tree, with overlayfs' rules for read-only
//! layers applied by the daemon, so the guest overlay has one lower layer instead of N.
//!
//! A directory of the merged tree is a *stack* of host directories of the same path, topmost
//! layer first: it ends below the first opaque one (`trusted.overlay.opaque=y`) and at the
//! first layer where the name is a whiteout (char 0:0) or a non-directory. A name looked up
//! in a merged directory is the topmost layer's entry; a whiteout there hides it (the guest
//! gets a negative entry); a directory becomes a merged directory; anything else is the host
//! inode of that layer, served exactly like `/layers/N/…` (same node, read-only, cached long).
//! A listing is the union of the stack's entries, topmost first, without whiteouts and the
//! names they hide. These are overlayfs' lookup and readdir rules for lower layers
//! (fs/overlayfs/namei.c, readdir.c), so an overlay over `/lower` shows the tree an overlay
//! over the separate layers shows. Not supported in layers (the layer store never writes them):
//! `trusted.overlay.redirect` and `metacopy` xattrs, which only overlays mounted with
//! `redirect_dir=on` or `metacopy=on` create in their upper dirs.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::{DirEntry, Entry};

use super::{err, Area, HostNode, StrataFs};
use crate::sys;

/// overlayfs' opaque-directory mark.
pub(crate) const OPAQUE: &CStr = c"trusted.overlay.opaque";

/// One name of a merged listing.
pub(crate) struct MergedEntry {
    pub name: Vec<u8>,
    pub kind: u8,
    pub ino: u64,
}

/// What a name is in one layer directory.
pub(crate) enum Found {
    Missing,
    Whiteout,
    Dir(OwnedFd),
    Other(OwnedFd),
}

fn is_whiteout(st: &sys::stat64) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

pub(crate) fn find(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Found> {
    let fd = match sys::open_path_at(dir, name) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Found::Missing),
        Err(e) => return Err(e),
    };
    let st = sys::stat_fd(fd.as_fd())?;
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Found::Dir(fd),
        _ if is_whiteout(&st) => Found::Whiteout,
        _ => Found::Other(fd),
    })
}

/// What a name is in a stack of layer directories (topmost first), by overlayfs' rules.
pub(crate) enum LowerFound {
    Missing,
    /// A non-directory, in the topmost layer that has the name.
    File(u16, OwnedFd),
    /// Directories, topmost first, down to the first opaque one, whiteout or non-directory.
    Dirs(Vec<(u16, OwnedFd)>),
}

/// Look `name` up in the layer directories `stack` (topmost first).
pub(crate) fn lower_find<'a>(
    stack: impl Iterator<Item = (u16, BorrowedFd<'a>)>,
    name: &CStr,
) -> io::Result<LowerFound> {
    let mut dirs: Vec<(u16, OwnedFd)> = Vec::new();
    for (layer, fd) in stack {
        match find(fd, name)? {
            Found::Missing => continue,
            Found::Whiteout => break,
            Found::Other(f) => {
                if dirs.is_empty() {
                    return Ok(LowerFound::File(layer, f));
                }
                break;
            }
            Found::Dir(d) => {
                let opaque = is_opaque(d.as_fd());
                dirs.push((layer, d));
                if opaque {
                    break;
                }
            }
        }
    }
    Ok(if dirs.is_empty() {
        LowerFound::Missing
    } else {
        LowerFound::Dirs(dirs)
    })
}

/// The listing of the directories `stack` merged (topmost first): `.`, `..`, then the union
/// of their entries without whiteouts and the names they hide. `.` and `..` carry the topmost
/// directory's inode numbers (as its own listing has them): glibc's readdir skips entries with
/// inode 0, so `ls -a` would miss them.
pub(crate) fn listing<'a>(
    stack: impl Iterator<Item = BorrowedFd<'a>>,
) -> io::Result<Vec<MergedEntry>> {
    let mut out = vec![
        MergedEntry {
            name: b".".to_vec(),
            kind: libc::DT_DIR,
            ino: 0,
        },
        MergedEntry {
            name: b"..".to_vec(),
            kind: libc::DT_DIR,
            ino: 0,
        },
    ];
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut buf = vec![0u8; 64 * 1024];
    for (depth, fd) in stack.enumerate() {
        let f = sys::reopen(fd, libc::O_RDONLY | libc::O_DIRECTORY)?;
        loop {
            let n = sys::getdents(&f, &mut buf)?;
            if n == 0 {
                break;
            }
            for d in super::dir::dirents(&buf[..n]) {
                if depth == 0 && (d.name == b"." || d.name == b"..") {
                    out[d.name.len() - 1].ino = d.ino;
                    continue;
                }
                if d.name == b"." || d.name == b".." || !seen.insert(d.name.to_vec()) {
                    continue;
                }
                if d.kind == libc::DT_CHR || d.kind == libc::DT_UNKNOWN {
                    let c = CString::new(d.name).map_err(|_| err(libc::EIO))?;
                    if matches!(find(fd, &c)?, Found::Whiteout) {
                        continue; // hides the name below, and is not listed itself
                    }
                }
                out.push(MergedEntry {
                    name: d.name.to_vec(),
                    kind: d.kind,
                    ino: d.ino,
                });
            }
        }
    }
    Ok(out)
}

/// overlayfs' test: the xattr is exactly `y`.
pub(crate) fn is_opaque(dir: BorrowedFd<'_>) -> bool {
    matches!(sys::xattr::get(dir, OPAQUE, 16), Ok(v) if v == b"y")
}

impl StrataFs {
    /// The merged root: every layer's root, topmost first.
    pub(crate) fn merged_root(&self) -> io::Result<Entry> {
        let mut stack = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            stack.push((i as u16, sys::open_path_at(l.as_fd(), c".")?));
        }
        self.register_merged(stack)
    }

    /// Look `name` up in the merged directory `dir`.
    pub(crate) fn merged_lookup(&self, dir: &HostNode, name: &CStr) -> io::Result<Entry> {
        match lower_find(dir.stack(), name)? {
            LowerFound::Missing => Ok(Entry {
                entry_timeout: self.cache.layer,
                ..Entry::default()
            }),
            LowerFound::File(layer, f) => self.register(f, Area::Layer(layer)),
            LowerFound::Dirs(dirs) => self.register_merged(dirs),
        }
    }

    /// The listing of merged directory `dir`, made once per node and shared by every handle
    /// (the layers never change): a guest opening a large directory N times holds one copy.
    pub(crate) fn merged_listing_shared(
        &self,
        dir: &HostNode,
    ) -> io::Result<Arc<Vec<MergedEntry>>> {
        if let Some(l) = dir.listing.get() {
            return Ok(l.clone());
        }
        let made = Arc::new(self.merged_listing(dir)?);
        // Two first OPENDIRs at once: one listing wins, the other is dropped.
        Ok(dir.listing.get_or_init(|| made).clone())
    }

    /// The listing of merged directory `dir` ([`listing`] of its stack).
    pub(crate) fn merged_listing(&self, dir: &HostNode) -> io::Result<Vec<MergedEntry>> {
        listing(dir.stack().map(|(_, fd)| fd))
    }

    /// The lookup READDIRPLUS gives with each name of a listed directory.
    fn lookup_in_listed(&self, dir: &Arc<HostNode>, name: &CStr) -> io::Result<Entry> {
        if dir.area == Area::Union {
            self.union_lookup(dir, name)
        } else {
            self.merged_lookup(dir, name)
        }
    }

    /// READDIR(PLUS) of a merged listing from `offset` (entry index).
    pub(crate) fn merged_readdir(
        &self,
        dir: &Arc<HostNode>,
        entries: &[MergedEntry],
        offset: u64,
        plus: bool,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, m) in entries.iter().enumerate().skip(start) {
            let e = DirEntry {
                ino: m.ino,
                offset: i as u64 + 1,
                type_: m.kind as u32,
                name: &m.name,
            };
            let entry = if plus && i >= 2 {
                CString::new(m.name.as_slice())
                    .ok()
                    .and_then(|c| self.lookup_in_listed(dir, &c).ok())
                    .unwrap_or_default()
            } else {
                Entry::default()
            };
            let node = entry.inode;
            if add_entry(e, entry)? == 0 {
                if node != 0 {
                    self.forget_node(node, 1);
                }
                return Ok(());
            }
        }
        Ok(())
    }
}
