//! `/rootfs` against the kernel's overlayfs, the oracle: the same changes made through the
//! served tree and through a real `mount -t overlay` of the same layers must give the same
//! tree, with the same errors, and the upper dir the daemon wrote must read back the same
//! under a real overlay mount (the on-disk format is overlayfs').

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use fuse_backend_rs::abi::fuse_abi::{stat64, CreateIn, SetattrValid};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, FileSystem, GetxattrReply, ListxattrReply,
};

use super::*;
use crate::config::ServeConfig;

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// A change, made the same way on both sides.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Open O_WRONLY|O_TRUNC and write.
    Write(&'static str, &'static str),
    /// Open O_WRONLY|O_APPEND and write.
    Append(&'static str, &'static str),
    /// O_CREAT|O_EXCL, mode 0644.
    Create(&'static str, &'static str),
    Mkdir(&'static str),
    Unlink(&'static str),
    Rmdir(&'static str),
    Rename(&'static str, &'static str),
    RenameNoReplace(&'static str, &'static str),
    Link(&'static str, &'static str),
    Symlink(&'static str, &'static str),
    Chmod(&'static str, u32),
    Chown(&'static str, u32, u32),
    Truncate(&'static str, u64),
    SetXattr(&'static str, &'static str, &'static str),
    RemoveXattr(&'static str, &'static str),
    Mkfifo(&'static str),
}

fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

/// Build the two layers (as root: owners, set-id bits, whiteouts, trusted xattrs).
fn layers(p: &Path) {
    let w = |rel: &str, data: &str| {
        let f = p.join(rel);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, data).unwrap();
    };
    // l1: the bottom layer.
    w("l1/etc/base", "base");
    w("l1/etc/passwd", "root:x:0:0");
    w("l1/etc/sub/deep/file", "deep");
    w("l1/usr/bin/tool", "tool");
    w("l1/usr/lib/a", "a");
    w("l1/usr/lib/b", "b");
    w("l1/data/x", "xattr");
    w("l1/data/hl1", "linked");
    w("l1/gone/f", "hidden by a whiteout above");
    w("l1/opq/below", "hidden by an opaque dir above");
    w("l1/dirA/f1", "f1");
    w("l1/owned/f", "owned");
    std::fs::create_dir_all(p.join("l1/var/log")).unwrap();
    std::fs::hard_link(p.join("l1/data/hl1"), p.join("l1/data/hl2")).unwrap();
    std::os::unix::fs::symlink("etc/base", p.join("l1/link")).unwrap();
    let tool = p.join("l1/usr/bin/tool");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(p.join("l1/owned"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(p.join("l1/owned/f"), Some(1000), Some(100)).unwrap();
    sys::xattr::set_path(&p.join("l1/data/x"), c"user.k", b"v").unwrap();
    // l0: the top layer.
    w("l0/etc/top", "top");
    w("l0/opq/above", "above");
    w("l0/usr/bin/tool2", "tool2");
    sys::xattr::set_path(&p.join("l0/opq"), c"trusted.overlay.opaque", b"y").unwrap();
    let st = nix::sys::stat::SFlag::S_IFCHR;
    nix::sys::stat::mknod(&p.join("l0/gone"), st, nix::sys::stat::Mode::empty(), 0).unwrap();
}

/// The served tree with `/rootfs`.
fn union_fs(p: &Path) -> StrataFs {
    for d in ["c/upper", "c/work"] {
        std::fs::create_dir_all(p.join(d)).unwrap();
    }
    let cfg = ServeConfig {
        lowers: vec![p.join("l0"), p.join("l1")],
        upper: p.join("c/upper"),
        work: p.join("c/work"),
        socket: p.join("sock"),
        socket_fd: None,
        socket_perms: Default::default(),
        tag: "t".into(),
        limits: Limits::default(),
        lower_device: None,
        lower_block: None,
        union: true,
    }
    .check()
    .unwrap();
    StrataFs::new(&cfg, CachePolicy::default()).unwrap()
}

/// A real overlay of the layers over `upper`, unmounted on drop.
struct KernelOverlay(PathBuf);

impl KernelOverlay {
    fn mount(p: &Path, upper: &Path, work: &Path, at: &Path) -> KernelOverlay {
        for d in [upper, work, at] {
            std::fs::create_dir_all(d).unwrap();
        }
        let opts = format!(
            "lowerdir={}:{},upperdir={},workdir={},index=off,redirect_dir=off,metacopy=off,\
             xino=off",
            p.join("l0").display(),
            p.join("l1").display(),
            upper.display(),
            work.display()
        );
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t overlay failed");
        KernelOverlay(at.to_path_buf())
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Apply `op` to the kernel overlay mounted at `root`.
fn kernel_apply(root: &Path, op: Op) -> i32 {
    use std::io::Write;
    let j = |s: &str| root.join(s);
    let r: std::io::Result<()> = match op {
        Op::Write(f, d) => std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(j(f))
            .and_then(|mut h| h.write_all(d.as_bytes())),
        Op::Append(f, d) => std::fs::OpenOptions::new()
            .append(true)
            .open(j(f))
            .and_then(|mut h| h.write_all(d.as_bytes())),
        Op::Create(f, d) => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(j(f))
            .and_then(|mut h| h.write_all(d.as_bytes())),
        Op::Mkdir(d) => std::fs::DirBuilder::new().mode(0o755).create(j(d)),
        Op::Unlink(f) => std::fs::remove_file(j(f)),
        Op::Rmdir(d) => std::fs::remove_dir(j(d)),
        Op::Rename(a, b) => std::fs::rename(j(a), j(b)),
        Op::RenameNoReplace(a, b) => nix::fcntl::renameat2(
            None,
            &j(a),
            None,
            &j(b),
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(std::io::Error::from),
        Op::Link(a, b) => std::fs::hard_link(j(a), j(b)),
        Op::Symlink(t, l) => std::os::unix::fs::symlink(t, j(l)),
        Op::Chmod(f, m) => std::fs::set_permissions(j(f), std::fs::Permissions::from_mode(m)),
        Op::Chown(f, u, g) => std::os::unix::fs::lchown(j(f), Some(u), Some(g)),
        Op::Truncate(f, n) => std::fs::OpenOptions::new()
            .write(true)
            .open(j(f))
            .and_then(|h| h.set_len(n)),
        Op::SetXattr(f, n, v) => sys::xattr::set_path(&j(f), &c(n), v.as_bytes()),
        Op::RemoveXattr(f, n) => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(j(f))
            .and_then(|h| sys::xattr::remove(h.as_fd(), &c(n))),
        Op::Mkfifo(f) => {
            nix::unistd::mkfifo(&j(f), nix::sys::stat::Mode::from_bits_truncate(0o644))
                .map_err(std::io::Error::from)
        }
    };
    r.map_or_else(|e| errno_of(&e), |()| 0)
}

/// Walk `path` below `/rootfs` as the guest kernel would.
fn walk(fs: &StrataFs, path: &str) -> io::Result<u64> {
    let mut id = fs.do_lookup(ROOT, c"rootfs")?.inode;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        id = fs.do_lookup(id, &c(comp))?.inode;
        if id == 0 {
            return Err(err(libc::ENOENT));
        }
    }
    Ok(id)
}

fn write_handle(fs: &StrataFs, h: u64, data: &str) {
    let Handle::File { file, .. } = &*fs.handle(h).unwrap() else {
        panic!("not a file")
    };
    std::io::Write::write_all(&mut &*file, data.as_bytes()).unwrap();
    fs.drop_handle(h);
}

/// Write `data` at `offset` of node `id` as the guest kernel does once OPEN is answered ENOSYS:
/// a WRITE with handle 0.
fn write_inode(fs: &StrataFs, id: u64, offset: u64, data: &str) -> io::Result<()> {
    let f = fs.io_file(id, 0, true)?;
    std::os::unix::fs::FileExt::write_all_at(f.file()?, data.as_bytes(), offset)
}

/// `open(f, O_WRONLY | extra)` and a write of `data`, as the guest kernel sends them: with
/// handles, an OPEN and a WRITE through its handle; without, `O_TRUNC` as a SETATTR of the size
/// (no ATOMIC_O_TRUNC then), `O_APPEND` as the offset the kernel knows (the size), and a WRITE
/// with handle 0.
fn open_write(fs: &StrataFs, id: u64, extra: i32, data: &str) -> io::Result<()> {
    if fs.file_handles() {
        let (h, _) = fs.do_open(id, (libc::O_WRONLY | extra) as u32)?;
        write_handle(fs, h.ok_or_else(|| err(libc::EIO))?, data);
        return Ok(());
    }
    let mut st: stat64 = Entry::default().attr;
    if extra & libc::O_TRUNC != 0 {
        st.st_size = 0;
        fs.do_setattr(id, st, None, SetattrValid::SIZE)?;
    }
    let at = if extra & libc::O_APPEND != 0 {
        fs.do_getattr(id)?.0.st_size as u64
    } else {
        0
    };
    write_inode(fs, id, at, data)
}

/// Apply `op` through the served tree.
fn union_apply(fs: &StrataFs, op: Op) -> i32 {
    let ctx = Context::default();
    let in_dir = |path: &'static str| -> io::Result<(u64, CString)> {
        let (d, n) = split(path);
        Ok((walk(fs, d)?, c(n)))
    };
    let setattr = |f: &'static str, st: stat64, valid: SetattrValid| -> io::Result<()> {
        fs.do_setattr(walk(fs, f)?, st, None, valid).map(drop)
    };
    let mut st: stat64 = Entry::default().attr;
    let r: io::Result<()> = match op {
        Op::Write(f, d) => walk(fs, f).and_then(|id| open_write(fs, id, libc::O_TRUNC, d)),
        Op::Append(f, d) => walk(fs, f).and_then(|id| open_write(fs, id, libc::O_APPEND, d)),
        Op::Create(f, d) => in_dir(f).and_then(|(dir, n)| {
            let args = CreateIn {
                flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32,
                mode: 0o644,
                umask: 0,
                fuse_flags: 0,
            };
            // Through the dispatcher: without handles it keeps none open.
            let (e, h, _, _) = FileSystem::create(fs, &ctx, dir, &n, args)?;
            match h {
                Some(h) => {
                    write_handle(fs, h, d);
                    Ok(())
                }
                None => write_inode(fs, e.inode, 0, d),
            }
        }),
        Op::Mkdir(d) => {
            in_dir(d).and_then(|(dir, n)| fs.do_mkdir(&ctx, dir, &n, 0o755, 0).map(drop))
        }
        Op::Unlink(f) => in_dir(f).and_then(|(dir, n)| fs.do_unlink(dir, &n, 0)),
        Op::Rmdir(f) => in_dir(f).and_then(|(dir, n)| fs.do_unlink(dir, &n, libc::AT_REMOVEDIR)),
        Op::Rename(a, b) | Op::RenameNoReplace(a, b) => {
            let flags = match op {
                Op::RenameNoReplace(..) => libc::RENAME_NOREPLACE,
                _ => 0,
            };
            in_dir(a).and_then(|(da, na)| {
                let (db, nb) = in_dir(b)?;
                fs.do_rename(da, &na, db, &nb, flags)
            })
        }
        Op::Link(a, b) => walk(fs, a).and_then(|src| {
            let (db, nb) = in_dir(b)?;
            fs.do_link(src, db, &nb).map(drop)
        }),
        Op::Symlink(t, l) => {
            in_dir(l).and_then(|(dir, n)| fs.do_symlink(&ctx, &c(t), dir, &n).map(drop))
        }
        Op::Chmod(f, m) => {
            st.st_mode = m;
            setattr(f, st, SetattrValid::MODE)
        }
        Op::Chown(f, u, g) => {
            st.st_uid = u;
            st.st_gid = g;
            setattr(f, st, SetattrValid::UID | SetattrValid::GID)
        }
        Op::Truncate(f, n) => {
            st.st_size = n as i64;
            setattr(f, st, SetattrValid::SIZE)
        }
        Op::SetXattr(f, n, v) => {
            walk(fs, f).and_then(|id| fs.do_setxattr(id, &c(n), v.as_bytes(), 0))
        }
        Op::RemoveXattr(f, n) => walk(fs, f).and_then(|id| fs.do_removexattr(id, &c(n))),
        Op::Mkfifo(f) => in_dir(f).and_then(|(dir, n)| {
            fs.do_mknod(&ctx, dir, &n, libc::S_IFIFO | 0o644, 0, 0)
                .map(drop)
        }),
    };
    r.map_or_else(|e| errno_of(&e), |()| 0)
}

/// What the tests compare of one name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Desc {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    content: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn host_tree(root: &Path) -> BTreeMap<String, Desc> {
    fn go(root: &Path, rel: &str, out: &mut BTreeMap<String, Desc>) {
        let p = root.join(rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let kind = m.mode() & libc::S_IFMT;
        let content = match kind {
            libc::S_IFREG => std::fs::read(&p).unwrap(),
            libc::S_IFLNK => std::fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes(),
            _ => Vec::new(),
        };
        let mut xattrs = BTreeMap::new();
        if kind != libc::S_IFLNK {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
                .open(&p)
                .unwrap();
            let names = sys::xattr::list(f.as_fd(), 65536).unwrap();
            for n in names.split(|&b| b == 0).filter(|n| n.starts_with(b"user.")) {
                let v = sys::xattr::get(f.as_fd(), &CString::new(n).unwrap(), 65536).unwrap();
                xattrs.insert(String::from_utf8_lossy(n).into_owned(), v);
            }
        }
        out.insert(
            rel.to_string(),
            Desc {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                content,
                xattrs,
            },
        );
        if kind == libc::S_IFDIR {
            for e in std::fs::read_dir(&p).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                go(root, &child, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, "", &mut out);
    out
}

fn union_tree(fs: &StrataFs) -> BTreeMap<String, Desc> {
    fn go(fs: &StrataFs, id: u64, rel: &str, out: &mut BTreeMap<String, Desc>) {
        let (st, _) = fs.do_getattr(id).unwrap();
        let kind = st.st_mode & libc::S_IFMT;
        let content = match kind {
            libc::S_IFREG => {
                let (h, _) = fs.do_open(id, libc::O_RDONLY as u32).unwrap();
                let h = h.unwrap();
                let Handle::File { file, .. } = &*fs.handle(h).unwrap() else {
                    panic!("not a file")
                };
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut &*file, &mut v).unwrap();
                fs.drop_handle(h);
                v
            }
            libc::S_IFLNK => fs.do_readlink(id).unwrap(),
            _ => Vec::new(),
        };
        let mut xattrs = BTreeMap::new();
        if kind != libc::S_IFLNK {
            let ListxattrReply::Names(names) = fs.do_listxattr(id, 65536).unwrap() else {
                panic!("no names")
            };
            for n in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
                assert!(
                    !n.starts_with(b"trusted.overlay."),
                    "{rel}: private xattr listed"
                );
                if !n.starts_with(b"user.") {
                    continue;
                }
                let GetxattrReply::Value(v) = fs
                    .do_getxattr(id, &CString::new(n).unwrap(), 65536)
                    .unwrap()
                else {
                    panic!("no value")
                };
                xattrs.insert(String::from_utf8_lossy(n).into_owned(), v);
            }
        }
        out.insert(
            rel.to_string(),
            Desc {
                kind,
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
                content,
                xattrs,
            },
        );
        if kind == libc::S_IFDIR {
            for name in super::tests::list(fs, id, false) {
                let e = fs.do_lookup(id, &c(&name)).unwrap();
                assert_ne!(e.inode, 0, "{rel}/{name} listed but not found");
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                go(fs, e.inode, &child, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(fs, walk(fs, "").unwrap(), "", &mut out);
    out
}

/// Every difference between two trees, one line each.
fn diff(a: &BTreeMap<String, Desc>, b: &BTreeMap<String, Desc>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("{k:?}: only in the kernel overlay")),
            Some(w) if w != v => out.push(format!("{k:?}: kernel {v:?} vs {w:?}")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.push(format!("{k:?}: missing from the kernel overlay"));
    }
    out
}

const OPS: &[Op] = &[
    Op::Write("etc/base", "changed"),
    Op::Create("etc/sub/deep/new", "new"),
    Op::Append("etc/sub/deep/file", "+more"),
    Op::Unlink("etc/passwd"),
    Op::Unlink("etc/top"),
    Op::Unlink("etc/passwd"),
    Op::Rmdir("usr/lib"),
    Op::Unlink("usr/lib/a"),
    Op::Unlink("usr/lib/b"),
    Op::Rmdir("usr/lib"),
    Op::Mkdir("usr/lib"),
    Op::Create("usr/lib/c", "c"),
    Op::Rename("dirA", "dirB"),
    Op::Mkdir("newdir"),
    Op::Create("newdir/f", "f"),
    Op::Rename("newdir", "renamed"),
    Op::Rename("renamed", "var/log"),
    Op::Rename("var", "etc"),
    Op::Link("data/hl1", "data/hl3"),
    Op::Write("data/hl2", "hl2 alone"),
    Op::Chmod("usr/bin/tool", 0o4711),
    Op::Chown("owned/f", 0, 0),
    Op::Chown("owned", 1001, 1001),
    Op::SetXattr("data/x", "user.k2", "v2"),
    Op::RemoveXattr("data/x", "user.k"),
    Op::Unlink("link"),
    Op::Symlink("etc/top", "link"),
    Op::Rename("etc/base", "etc/base.moved"),
    Op::Rename("usr/bin/tool2", "usr/bin/tool3"),
    Op::RenameNoReplace("usr/bin/tool3", "usr/bin/tool"),
    Op::Write("opq/above", "x"),
    Op::Mkdir("gone"),
    Op::Create("gone/g", "g"),
    Op::Create("etc/top", "recreated"),
    Op::Mkdir("etc/passwd"),
    Op::Truncate("etc/sub/deep/file", 2),
    Op::Mkfifo("dirA/fifo"),
    Op::Rename("dirA/f1", "dirA/fifo"),
    Op::Create("data/hl1", "exists"),
    Op::Rmdir("etc/sub"),
    Op::Unlink("etc/sub/deep/new"),
    Op::Unlink("etc/sub/deep/file"),
    Op::Rmdir("etc/sub/deep"),
    Op::Rmdir("etc/sub"),
    Op::Mkdir("etc/sub"),
    Op::Rename("etc/base.moved", "etc/sub/base"),
];

#[test]
fn rootfs_changes_match_the_kernel_overlay() {
    if !strata_harness::needs("rootfs_changes_match_the_kernel_overlay", true, &["mount"]) {
        return;
    }
    match_the_kernel_overlay(false);
}

/// The same with OPEN answered with handles (`STRATA_SERVE_OPEN=1`).
#[test]
fn rootfs_changes_through_open_handles_match_the_kernel_overlay() {
    if !strata_harness::needs("rootfs_changes_through_open_handles", true, &["mount"]) {
        return;
    }
    match_the_kernel_overlay(true);
}

fn match_the_kernel_overlay(file_handles: bool) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    layers(p);
    let mut fs = union_fs(p);
    fs.set_file_handles(file_handles);
    let k = KernelOverlay::mount(
        p,
        &p.join("k/upper"),
        &p.join("k/work"),
        &p.join("k/merged"),
    );
    assert!(
        diff(&host_tree(&k.0), &union_tree(&fs)).is_empty(),
        "before any change"
    );
    for (i, op) in OPS.iter().enumerate() {
        let want = kernel_apply(&k.0, *op);
        let got = union_apply(&fs, *op);
        assert_eq!(
            got, want,
            "op {i} {op:?}: errno through /rootfs vs the kernel overlay"
        );
        let d = diff(&host_tree(&k.0), &union_tree(&fs));
        assert!(d.is_empty(), "after op {i} {op:?}:\n{}", d.join("\n"));
    }
    // The upper dir the daemon wrote, under a real overlay: the same tree.
    drop(fs);
    let again = KernelOverlay::mount(p, &p.join("c/upper"), &p.join("c/work2"), &p.join("m"));
    let d = diff(&host_tree(&k.0), &host_tree(&again.0));
    assert!(
        d.is_empty(),
        "the daemon's upper under a kernel overlay:\n{}",
        d.join("\n")
    );
}

#[test]
fn plan_sends_the_guest_to_rootfs_and_the_root_lists_it() {
    if !strata_harness::needs("plan_sends_the_guest_to_rootfs", true, &[]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    layers(t.path());
    let fs = union_fs(t.path());
    let plan = strata_plan::MountPlan::from_json(fs.plan_bytes()).unwrap();
    assert_eq!(plan.rootfs.as_deref(), Some("rootfs"));
    assert!(walk(&fs, "etc/base").is_ok());
    // overlayfs' own attributes are the daemon's: hidden and refused.
    let opq = walk(&fs, "opq").unwrap();
    assert!(matches!(
        fs.do_getxattr(opq, c"trusted.overlay.opaque", 64),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA)
    ));
    assert!(matches!(
        fs.do_setxattr(opq, c"trusted.overlay.opaque", b"y", 0),
        Err(e) if e.raw_os_error() == Some(libc::EPERM)
    ));
    // A whiteout cannot be made by the guest.
    let ctx = Context::default();
    let root = walk(&fs, "").unwrap();
    assert!(matches!(
        fs.do_mknod(&ctx, root, c"wh", libc::S_IFCHR, 0, 0),
        Err(e) if e.raw_os_error() == Some(libc::EPERM)
    ));
    // A copy-up keeps the node id the guest holds.
    let base = walk(&fs, "etc/base").unwrap();
    let (h, _) = fs.do_open(base, libc::O_WRONLY as u32).unwrap();
    fs.drop_handle(h.unwrap());
    assert_eq!(walk(&fs, "etc/base").unwrap(), base);
    assert!(t.path().join("c/upper/etc/base").is_file());
    assert_eq!(
        std::fs::read(t.path().join("l1/etc/base")).unwrap(),
        b"base"
    );
}

#[test]
fn a_copy_up_thousands_of_directories_deep_needs_no_deep_stack() {
    if !strata_harness::needs("a_copy_up_thousands_deep", true, &[]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    layers(p);
    let deep: String = "d/".repeat(1900);
    std::fs::create_dir_all(p.join("l1").join(&deep)).unwrap();
    let fs = union_fs(p);
    // A worker thread's stack, not the test harness's: 256 KiB would not hold 1900 frames of a
    // recursive copy-up.
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            assert_eq!(union_apply(&fs, Op::Mkdir("d/x")), 0);
            let mut id = walk(&fs, "").unwrap();
            for _ in 0..1900 {
                id = fs.do_lookup(id, c"d").unwrap().inode;
            }
            let ctx = Context::default();
            fs.do_mkdir(&ctx, id, c"bottom", 0o755, 0).unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(p.join("c/upper").join(&deep).join("bottom").is_dir());
}

/// Every name of directory `id`, read without a handle (as the guest does once OPENDIR is
/// answered ENOSYS) three entries per request, each request from the last one's offset.
fn list_unopened(fs: &StrataFs, id: u64, plus: bool) -> Vec<String> {
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let mut got = 0;
        let mut next = offset;
        let mut add = |d: DirEntry, e: Entry| -> io::Result<usize> {
            if got == 3 {
                if e.inode != 0 {
                    fs.forget_node(e.inode, 1);
                }
                return Ok(0);
            }
            got += 1;
            next = d.offset;
            if d.name != b"." && d.name != b".." {
                names.push(String::from_utf8(d.name.to_vec()).unwrap());
                assert!(!plus || e.inode != 0, "{:?} without its lookup", d.name);
            }
            Ok(1)
        };
        if plus {
            fs.do_readdirplus(id, 0, 4096, offset, &mut add).unwrap();
        } else {
            fs.do_readdir(id, 0, 4096, offset, &mut |d| add(d, Entry::default()))
                .unwrap();
        }
        if got == 0 {
            break;
        }
        offset = next;
    }
    names.sort();
    names
}

#[test]
fn directories_read_without_a_handle_list_what_an_opened_one_lists() {
    if !strata_harness::needs("directories_read_without_a_handle", true, &[]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    layers(p);
    for i in 0..20 {
        std::fs::write(p.join(format!("l1/usr/lib/f{i}")), "x").unwrap();
    }
    let fs = union_fs(p);
    let opened = |id: u64| super::tests::list(&fs, id, false);
    let lookup = |path: &str| -> u64 {
        let mut id = ROOT;
        for comp in path.split('/') {
            id = fs.do_lookup(id, &c(comp)).unwrap().inode;
        }
        id
    };
    // `/rootfs`, `/lower` (merged), a layer and the upper dir.
    assert_eq!(union_apply(&fs, Op::Create("usr/lib/new", "n")), 0);
    assert_eq!(union_apply(&fs, Op::Unlink("usr/lib/f3")), 0);
    for path in [
        "rootfs/usr/lib",
        "lower/usr/lib",
        "layers/1/usr/lib",
        "upper/usr/lib",
    ] {
        let id = lookup(path);
        let want = opened(id);
        assert!(!want.is_empty(), "{path}: {want:?}");
        for plus in [false, true] {
            assert_eq!(list_unopened(&fs, id, plus), want, "{path} plus={plus}");
        }
    }
    // A change made between two readings shows in the second.
    let lib = lookup("rootfs/usr/lib");
    let before = list_unopened(&fs, lib, true);
    assert_eq!(union_apply(&fs, Op::Unlink("usr/lib/f4")), 0);
    let after = list_unopened(&fs, lib, true);
    assert_eq!(before.len(), after.len() + 1);
    assert!(!after.contains(&"f4".to_string()));
}

#[test]
fn a_removed_layer_file_held_by_the_guest_never_changes_its_successor() {
    if !strata_harness::needs("a_removed_layer_file_held", true, &[]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    layers(p);
    let fs = union_fs(p);
    // The guest holds etc/passwd (an open file keeps its node), removes the name and makes a
    // new file there; writing through the old node must not reach the new file.
    let old = walk(&fs, "etc/passwd").unwrap();
    assert_eq!(union_apply(&fs, Op::Unlink("etc/passwd")), 0);
    assert_eq!(union_apply(&fs, Op::Create("etc/passwd", "new")), 0);
    let r = fs.do_open(old, libc::O_WRONLY as u32);
    assert_eq!(r.err().and_then(|e| e.raw_os_error()), Some(libc::ESTALE));
    // A WRITE with handle 0 (OPEN answered ENOSYS: the copy-up comes with the first write).
    let r = fs.io_file(old, 0, true).map(drop);
    assert_eq!(r.err().and_then(|e| e.raw_os_error()), Some(libc::ESTALE));
    // Reading it still reads what the guest opened.
    let f = fs.io_file(old, 0, false).unwrap();
    assert_eq!(
        std::io::read_to_string(f.file().unwrap()).unwrap(),
        "root:x:0:0"
    );
    assert_eq!(std::fs::read(p.join("c/upper/etc/passwd")).unwrap(), b"new");
    assert_eq!(
        std::fs::read(p.join("l1/etc/passwd")).unwrap(),
        b"root:x:0:0"
    );
}
