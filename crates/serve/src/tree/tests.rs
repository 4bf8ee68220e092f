//! The served tree over temp dirs, without a VM: fast feedback on the rules a hostile guest
//! runs into. (The VM tests in crates/strata/tests drive the same code through real virtio-fs.)

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{Context, GetxattrReply, ListxattrReply};

use super::*;
use crate::config::ServeConfig;

struct Sandbox {
    dir: tempfile::TempDir,
    fs: StrataFs,
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn sandbox() -> Sandbox {
    sandbox_with(Limits::default())
}

fn sandbox_with(limits: Limits) -> Sandbox {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for d in [
        "l0/etc",
        "l1/etc",
        "l1/usr/bin",
        "c/upper",
        "c/work",
        "outside",
    ] {
        std::fs::create_dir_all(p.join(d)).unwrap();
    }
    std::fs::write(p.join("l0/etc/top"), b"top").unwrap();
    std::fs::write(p.join("l1/etc/base"), b"base").unwrap();
    std::fs::write(p.join("outside/secret"), b"secret").unwrap();
    std::os::unix::fs::symlink("/", p.join("l1/rootlink")).unwrap();
    std::os::unix::fs::symlink("../../outside/secret", p.join("l1/etc/up")).unwrap();
    let fs = StrataFs::new(&config(p, limits), CachePolicy::default()).unwrap();
    Sandbox { dir, fs }
}

/// The checked configuration of a sandbox's directories.
fn config(p: &Path, limits: Limits) -> crate::config::Checked {
    ServeConfig {
        lowers: vec![p.join("l0"), p.join("l1")],
        upper: p.join("c/upper"),
        work: p.join("c/work"),
        socket: p.join("sock"),
        socket_fd: None,
        socket_perms: Default::default(),
        tag: "t".into(),
        limits,
        lower_device: None,
        lower_block: None,
        union: false,
    }
    .check()
    .unwrap()
}

impl Sandbox {
    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }
    /// Walk a path from the root of the served tree, as the guest kernel would.
    fn walk(&self, path: &str) -> io::Result<u64> {
        let mut id = ROOT;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            id = self.fs.do_lookup(id, &c(comp))?.inode;
            if id == 0 {
                // A negative entry (missing name in a layer): what the guest sees as ENOENT.
                return Err(err(libc::ENOENT));
            }
        }
        Ok(id)
    }
}

fn errno(r: io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

#[test]
fn root_has_plan_layers_upper_work() {
    let s = sandbox();
    let plan = s.walk("plan.json").unwrap();
    assert_eq!(plan, PLAN);
    let parsed = strata_plan::MountPlan::from_json(s.fs.plan_bytes()).unwrap();
    assert_eq!(parsed.lowers, ["lower"], "two layers: merged");
    assert!(s.walk("layers/0/etc/top").is_ok());
    assert!(s.walk("lower/etc/top").is_ok());
    assert!(s.walk("lower/etc/base").is_ok());
    assert!(s.walk("layers/1/etc/base").is_ok());
    assert_eq!(errno(s.walk("layers/2")), libc::ENOENT);
    assert_eq!(errno(s.walk("layers/01")), libc::ENOENT);
    assert!(s.walk("upper").is_ok());
    assert!(s.walk("work").is_ok());
    assert_eq!(errno(s.walk("nothing")), libc::ENOENT);
}

#[test]
fn dotdot_stays_inside() {
    let s = sandbox();
    // `..` at the root is the root; below it `..` is refused rather than resolved on the host.
    assert_eq!(s.fs.do_lookup(ROOT, c"..").unwrap().inode, ROOT);
    let l0 = s.walk("layers/0").unwrap();
    assert_eq!(errno(s.fs.do_lookup(l0, c"..")), libc::EINVAL);
    let up = s.walk("upper").unwrap();
    assert_eq!(errno(s.fs.do_lookup(up, c"..")), libc::EINVAL);
    assert_eq!(errno(s.fs.do_lookup(up, c"a/b")), libc::EINVAL);
}

#[test]
fn symlinks_are_never_followed() {
    let s = sandbox();
    let link = s.walk("layers/1/rootlink").unwrap();
    assert_eq!(s.fs.do_readlink(link).unwrap(), b"/");
    // Looking up through a symlink is ENOTDIR: it is not a directory on our side.
    assert_eq!(errno(s.fs.do_lookup(link, c"etc")), libc::ENOTDIR);
    let up = s.walk("layers/1/etc/up").unwrap();
    assert_eq!(errno(s.fs.do_open(up, libc::O_RDONLY as u32)), libc::EACCES);
}

#[test]
fn layers_are_read_only() {
    let s = sandbox();
    let ctx = Context::default();
    let etc = s.walk("layers/0/etc").unwrap();
    let top = s.walk("layers/0/etc/top").unwrap();
    assert_eq!(errno(s.fs.do_mkdir(&ctx, etc, c"x", 0o755, 0)), libc::EROFS);
    assert_eq!(errno(s.fs.do_unlink(etc, c"top", 0)), libc::EROFS);
    assert_eq!(errno(s.fs.do_open(top, libc::O_WRONLY as u32)), libc::EROFS);
    assert_eq!(
        errno(s.fs.do_open(top, (libc::O_RDONLY | libc::O_TRUNC) as u32)),
        libc::EROFS
    );
    let args = CreateIn {
        flags: libc::O_WRONLY as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    assert_eq!(errno(s.fs.do_create(&ctx, etc, c"new", args)), libc::EROFS);
    assert_eq!(
        errno(s.fs.do_setxattr(top, c"user.x", b"1", 0)),
        libc::EROFS
    );
    // The virtual part is read-only too.
    assert_eq!(
        errno(s.fs.do_mkdir(&ctx, ROOT, c"x", 0o755, 0)),
        libc::EROFS
    );
    assert_eq!(errno(s.fs.do_open(PLAN, libc::O_RDWR as u32)), libc::EROFS);
    assert!(s.fs.do_open(top, libc::O_RDONLY as u32).is_ok());
    assert_eq!(std::fs::read(s.path("l0/etc/top")).unwrap(), b"top");
}

#[test]
fn layer_device_serves_the_layers_only_and_no_xattrs() {
    use fuse_backend_rs::api::filesystem::FileSystem;
    let s = sandbox();
    let fs = StrataFs::with_role(
        &config(s.dir.path(), Limits::default()),
        CachePolicy::default(),
        Role::Layers,
    )
    .unwrap();
    for hidden in ["upper", "work", "plan.json"] {
        assert_eq!(
            errno(fs.do_lookup(ROOT, &c(hidden))),
            libc::ENOENT,
            "{hidden}"
        );
    }
    let lower = fs.do_lookup(ROOT, c"lower").unwrap().inode;
    let etc = fs.do_lookup(lower, c"etc").unwrap().inode;
    let top = fs.do_lookup(etc, c"top").unwrap().inode;
    assert!(fs.do_lookup(etc, c"base").unwrap().inode != 0);
    assert!(fs.do_lookup(ROOT, c"layers").is_ok());
    let ctx = Context::default();
    // GETXATTR: ENOSYS, not ENODATA: the guest kernel stops sending it to this device (the
    // overlay's per-lookup probes). LISTXATTR: an empty list, as a filesystem without xattrs
    // answers (overlayfs lists only on copy-up; programs list to copy or show xattrs).
    let probe = fs.getxattr(&ctx, top, c"trusted.overlay.metacopy", 0);
    assert_eq!(errno(probe), libc::ENOSYS);
    assert!(matches!(
        fs.listxattr(&ctx, top, 0),
        Ok(ListxattrReply::Count(0))
    ));
    assert!(matches!(
        fs.listxattr(&ctx, top, 64),
        Ok(ListxattrReply::Names(n)) if n.is_empty()
    ));
    assert_eq!(errno(fs.do_setxattr(top, c"user.x", b"1", 0)), libc::EROFS);
    let mut names = Vec::new();
    fs.do_readdir(ROOT, 0, 4096, 0, &mut |d| {
        names.push(String::from_utf8_lossy(d.name).into_owned());
        Ok(1)
    })
    .unwrap();
    assert_eq!(names, [".", "..", "layers", "lower"]);
    // The whole tree still has xattrs.
    assert_eq!(
        errno(s.fs.getxattr(&ctx, s.walk("lower/etc/top").unwrap(), c"user.x", 0)),
        libc::ENODATA
    );
}

#[test]
fn a_second_tree_on_a_served_upper_is_refused() {
    let s = sandbox();
    let second = StrataFs::new(
        &config(s.dir.path(), Limits::default()),
        CachePolicy::default(),
    );
    assert!(
        matches!(
            second,
            Err(crate::ServeError::Config(crate::ConfigError::RootfsInUse(
                _
            )))
        ),
        "a second tree on the same upper was not refused"
    );
    drop(s.fs);
    StrataFs::new(
        &config(s.dir.path(), Limits::default()),
        CachePolicy::default(),
    )
    .unwrap();
}

#[test]
fn plan_names_the_layer_device_only_when_no_layer_has_xattrs() {
    let plan = |fs: &StrataFs| strata_plan::MountPlan::from_json(fs.plan_bytes()).unwrap();
    // The tree with a layer device replaces the sandbox's own tree: one upper, one server.
    let tree = |s: Sandbox| {
        let dir = s.dir;
        drop(s.fs);
        let fs = StrataFs::with_role(
            &config(dir.path(), Limits::default()),
            CachePolicy::default(),
            Role::Tree {
                lower_tag: Some("strata-lower".into()),
            },
        )
        .unwrap();
        (dir, fs)
    };
    let s = sandbox();
    assert_eq!(plan(&s.fs).lower_tag, None);
    let (_first, fs) = tree(s);
    let p = plan(&fs);
    assert_eq!(p.lower_tag.as_deref(), Some("strata-lower"));
    assert_eq!(p.lowers, ["lower"]);
    // A file capability (here: any readable xattr) in a layer keeps the layers on the tree.
    // (A fresh sandbox: each layer directory is listed once per process. The first one is
    // gone first, so its layer directories' inode numbers may be reused: still listed anew.)
    drop(fs);
    drop(_first);
    let s2 = sandbox();
    crate::sys::xattr::set_path(&s2.path("l1/etc/base"), c"user.cap", b"x").unwrap();
    assert_eq!(plan(&tree(s2).1).lower_tag, None);
}

#[test]
fn work_to_upper_rename_and_link_work_but_not_from_layers() {
    let s = sandbox();
    let ctx = Context::default();
    let work = s.walk("work").unwrap();
    let upper = s.walk("upper").unwrap();
    s.fs.do_mknod(&ctx, work, c"wh", libc::S_IFCHR, 0, 0)
        .unwrap();
    s.fs.do_rename(work, c"wh", upper, c"gone", 0).unwrap();
    let m = std::fs::symlink_metadata(s.path("c/upper/gone")).unwrap();
    assert_eq!(m.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(m.rdev(), 0);
    let gone = s.walk("upper/gone").unwrap();
    s.fs.do_link(gone, work, c"again").unwrap();
    // A layer file may not be linked into the upper dir (it would become writable).
    let top = s.walk("layers/0/etc/top").unwrap();
    assert_eq!(errno(s.fs.do_link(top, upper, c"stolen")), libc::EXDEV);
    let l0 = s.walk("layers/0/etc").unwrap();
    assert_eq!(
        errno(s.fs.do_rename(l0, c"top", upper, c"x", 0)),
        libc::EROFS
    );
    assert_eq!(
        errno(s.fs.do_rename(upper, c"gone", ROOT, c"x", 0)),
        libc::EROFS
    );
    assert_eq!(
        errno(s.fs.do_rename(upper, c"gone", upper, c"x", 0x80)),
        libc::EINVAL
    );
}

#[test]
fn device_nodes_are_made_only_if_allowed_and_never_opened() {
    let s = sandbox_with(Limits {
        device_nodes: false,
        ..Limits::DEFAULT
    });
    let ctx = Context::default();
    let upper = s.walk("upper").unwrap();
    let sda = libc::makedev(8, 0) as u32;
    assert_eq!(
        errno(s.fs.do_mknod(&ctx, upper, c"sda", libc::S_IFBLK | 0o600, sda, 0)),
        libc::EPERM
    );
    let null = libc::makedev(1, 3) as u32;
    assert_eq!(
        errno(s.fs.do_mknod(&ctx, upper, c"null", libc::S_IFCHR | 0o600, null, 0)),
        libc::EPERM
    );
    if strata_harness::needs("device_nodes_are_made_only_if_allowed", true, &[]) {
        // By default (as Docker and Kata-style runtimes do) the guest's root may make them;
        // the daemon still never opens one.
        let s = sandbox();
        let upper = s.walk("upper").unwrap();
        let e =
            s.fs.do_mknod(&ctx, upper, c"null", libc::S_IFCHR | 0o666, null, 0)
                .unwrap();
        let m = std::fs::symlink_metadata(s.path("c/upper/null")).unwrap();
        assert_eq!(
            (m.mode() & libc::S_IFMT, m.rdev()),
            (libc::S_IFCHR, null as u64)
        );
        assert_eq!(
            errno(s.fs.do_open(e.inode, libc::O_RDONLY as u32)),
            libc::EACCES
        );
        s.fs.do_mknod(&ctx, upper, c"sda", libc::S_IFBLK | 0o600, sda, 0)
            .unwrap();
    }
    s.fs.do_mknod(&ctx, upper, c"fifo", libc::S_IFIFO | 0o600, 0, 0)
        .unwrap();
    let fifo = s.walk("upper/fifo").unwrap();
    assert_eq!(
        errno(s.fs.do_open(fifo, libc::O_RDONLY as u32)),
        libc::EACCES
    );
}

/// Regression (request fuzzer, seed 1 of the timed run): CREATE without O_EXCL on an existing
/// fifo opened it and blocked the daemon forever. Now it fails at once; an existing regular
/// file is still opened (and truncated when asked), not re-owned.
#[test]
fn create_over_an_existing_fifo_or_whiteout_does_not_open_it() {
    if !strata_harness::needs(
        "create_over_an_existing_fifo_or_whiteout_does_not_open_it",
        true,
        &[],
    ) {
        return;
    }
    let s = sandbox();
    let ctx = Context::default();
    let upper = s.walk("upper").unwrap();
    s.fs.do_mknod(&ctx, upper, c"fifo", libc::S_IFIFO | 0o600, 0, 0)
        .unwrap();
    s.fs.do_mknod(&ctx, upper, c"wh", libc::S_IFCHR, 0, 0)
        .unwrap();
    let fs = std::sync::Arc::new(s.fs);
    let (tx, rx) = std::sync::mpsc::channel();
    let fs2 = fs.clone();
    std::thread::spawn(move || {
        let args = |flags: i32| CreateIn {
            flags: flags as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        let ctx = Context::default();
        let r = [c"fifo", c"wh"].map(|n| {
            [libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR]
                .map(|f| errno(fs2.do_create(&ctx, upper, n, args(f))))
        });
        let _ = tx.send(r);
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("CREATE over an existing fifo blocked the daemon");
    assert_eq!(r, [[libc::EACCES; 3]; 2]);
    std::fs::write(s.dir.path().join("c/upper/f"), b"old").unwrap();
    let args = CreateIn {
        flags: (libc::O_RDWR | libc::O_TRUNC) as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let me = Context {
        uid: 1000,
        gid: 1000,
        ..Context::default()
    };
    fs.do_create(&me, upper, c"f", args).unwrap();
    let m = std::fs::metadata(s.dir.path().join("c/upper/f")).unwrap();
    assert_eq!((m.len(), m.uid()), (0, 0));
}

#[test]
fn created_files_belong_to_the_caller() {
    if !strata_harness::needs("created_files_belong_to_the_caller", true, &[]) {
        return;
    }
    let s = sandbox();
    let ctx = Context {
        uid: 1234,
        gid: 5678,
        pid: 1,
    };
    let upper = s.walk("upper").unwrap();
    let args = CreateIn {
        flags: libc::O_WRONLY as u32,
        mode: 0o666,
        umask: 0o022,
        fuse_flags: 0,
    };
    s.fs.do_create(&ctx, upper, c"f", args).unwrap();
    s.fs.do_mkdir(&ctx, upper, c"d", 0o777, 0o022).unwrap();
    s.fs.do_symlink(&ctx, c"/etc/passwd", upper, c"l").unwrap();
    for (name, mode) in [("f", 0o644), ("d", 0o755)] {
        let m = std::fs::symlink_metadata(s.path(&format!("c/upper/{name}"))).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678), "{name}");
        assert_eq!(m.permissions().mode() & 0o777, mode, "{name}");
    }
    let l = std::fs::symlink_metadata(s.path("c/upper/l")).unwrap();
    assert_eq!((l.uid(), l.gid()), (1234, 5678));
}

#[test]
fn xattr_namespaces() {
    if !strata_harness::needs("xattr_namespaces", true, &[]) {
        return;
    }
    let s = sandbox();
    let ctx = Context::default();
    let upper = s.walk("upper").unwrap();
    s.fs.do_mkdir(&ctx, upper, c"d", 0o755, 0).unwrap();
    let d = s.walk("upper/d").unwrap();
    s.fs.do_setxattr(d, c"user.note", b"hi", 0).unwrap();
    s.fs.do_setxattr(d, c"trusted.overlay.opaque", b"y", 0)
        .unwrap();
    assert_eq!(
        errno(s.fs.do_setxattr(d, c"trusted.evil", b"1", 0)),
        libc::EPERM
    );
    match s.fs.do_getxattr(d, c"trusted.overlay.opaque", 16).unwrap() {
        GetxattrReply::Value(v) => assert_eq!(v, b"y"),
        GetxattrReply::Count(_) => panic!("asked for the value"),
    }
    s.fs.do_removexattr(d, c"user.note").unwrap();
}

#[test]
fn forget_releases_host_fds() {
    let s = sandbox();
    let before = s.fs.live_nodes();
    let e1 = s.fs.do_lookup(ROOT, c"upper").unwrap();
    let e2 = s.fs.do_lookup(ROOT, c"upper").unwrap();
    assert_eq!(e1.inode, e2.inode, "one node per host inode");
    assert_eq!(s.fs.live_nodes(), before + 1);
    s.fs.forget_node(e1.inode, 2);
    assert_eq!(s.fs.live_nodes(), before);
    // Forgetting unknown or virtual nodes is harmless.
    s.fs.forget_node(ROOT, 5);
    s.fs.forget_node(999_999, 1);
}

#[test]
fn bad_names_are_refused() {
    let s = sandbox();
    let ctx = Context::default();
    let upper = s.walk("upper").unwrap();
    for bad in [".", "..", "a/b", ""] {
        assert_eq!(
            errno(s.fs.do_mkdir(&ctx, upper, &c(bad), 0o755, 0)),
            libc::EINVAL,
            "{bad:?}"
        );
    }
    let long = "x".repeat(300);
    assert_eq!(
        errno(s.fs.do_mkdir(&ctx, upper, &c(&long), 0o755, 0)),
        libc::ENAMETOOLONG
    );
    assert!(!Path::new(&s.path("c/upper/a")).exists());
    // Unknown node ids and handles are errors, not panics.
    assert_eq!(errno(s.fs.do_getattr(123_456)), libc::EBADF);
    assert_eq!(errno(s.fs.do_fsync(upper, 777, false)), libc::EBADF);
    // Handle 0 names the inode: unknown inodes and directories are refused.
    assert_eq!(errno(s.fs.do_fsync(123_456, 0, false)), libc::EBADF);
    assert_eq!(errno(s.fs.io_file(upper, 0, true).map(drop)), libc::EISDIR);
    assert_eq!(errno(s.fs.io_file(PLAN, 0, true).map(drop)), libc::EROFS);
}

/// A guest that looks up or opens everything and never forgets cannot grow the daemon's fds:
/// past the session limits every request that would hold one more gets ENFILE and creates
/// nothing on the host; FORGET and RELEASE give the slots back.
#[test]
fn node_and_handle_limits_refuse_with_enfile_and_come_back() {
    let s = sandbox_with(Limits {
        max_nodes: 6,
        max_handles: 3,
        ..Limits::DEFAULT
    });
    let ctx = Context::default();
    let upper = s.walk("upper").unwrap();
    for i in 0..10 {
        std::fs::write(s.path(&format!("c/upper/f{i}")), b"x").unwrap();
    }
    // upper + f0..f4 = 6 nodes: the limit.
    let ids: Vec<u64> = (0..5)
        .map(|i| s.fs.do_lookup(upper, &c(&format!("f{i}"))).unwrap().inode)
        .collect();
    assert_eq!(s.fs.live_nodes(), 6);
    assert_eq!(errno(s.fs.do_lookup(upper, c"f5")), libc::ENFILE);
    // A node already held can be looked up again (one more reference, no new fd).
    assert_eq!(s.fs.do_lookup(upper, c"f0").unwrap().inode, ids[0]);
    // Nothing that would need a node is made on the host.
    assert_eq!(
        errno(s.fs.do_mkdir(&ctx, upper, c"d", 0o755, 0)),
        libc::ENFILE
    );
    assert_eq!(
        errno(s.fs.do_symlink(&ctx, c"x", upper, c"l")),
        libc::ENFILE
    );
    assert_eq!(
        errno(s.fs.do_mknod(&ctx, upper, c"p", libc::S_IFIFO | 0o600, 0, 0)),
        libc::ENFILE
    );
    assert_eq!(errno(s.fs.do_link(ids[1], upper, c"hl")), libc::ENFILE);
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    assert_eq!(
        errno(s.fs.do_create(&ctx, upper, c"new", args)),
        libc::ENFILE
    );
    for name in ["d", "l", "p", "hl", "new"] {
        assert!(
            std::fs::symlink_metadata(s.path(&format!("c/upper/{name}"))).is_err(),
            "{name} was created past the node limit"
        );
    }
    // Handles: three opens, then ENFILE, and an O_TRUNC open past the limit truncates nothing.
    let fhs: Vec<u64> = ids[1..4]
        .iter()
        .map(|&id| s.fs.do_open(id, libc::O_RDONLY as u32).unwrap().0.unwrap())
        .collect();
    assert_eq!(s.fs.open_handles(), 3);
    assert_eq!(
        errno(s.fs.do_open(ids[0], (libc::O_RDWR | libc::O_TRUNC) as u32)),
        libc::ENFILE
    );
    assert_eq!(std::fs::read(s.path("c/upper/f0")).unwrap(), b"x");
    assert_eq!(errno(s.fs.do_opendir(upper)), libc::ENFILE);
    // RELEASE gives a handle back; FORGET a node.
    s.fs.drop_handle(fhs[0]);
    assert!(s.fs.do_opendir(upper).is_ok());
    s.fs.forget_node(ids[4], 1);
    assert_eq!(s.fs.live_nodes(), 5);
    assert!(s.fs.do_lookup(upper, c"f5").is_ok());
    assert_eq!(errno(s.fs.do_lookup(upper, c"f6")), libc::ENFILE);
    // Forgetting a node with an open handle on it frees the node slot; the handle stays.
    s.fs.forget_node(ids[1], 1);
    assert_eq!(s.fs.live_nodes(), 5);
    assert!(s.fs.do_lookup(upper, c"f6").is_ok());
}

#[test]
fn zero_limits_are_refused_at_start() {
    let d = tempfile::tempdir().unwrap();
    for p in ["l0", "upper", "work"] {
        std::fs::create_dir_all(d.path().join(p)).unwrap();
    }
    let cfg = ServeConfig {
        lowers: vec![d.path().join("l0")],
        upper: d.path().join("upper"),
        work: d.path().join("work"),
        socket: d.path().join("sock"),
        socket_fd: None,
        socket_perms: Default::default(),
        tag: "t".into(),
        limits: Limits {
            max_nodes: 0,
            max_handles: 1,
            ..Limits::DEFAULT
        },
        lower_device: None,
        lower_block: None,
        union: false,
    };
    let e = cfg.check().unwrap_err().to_string();
    assert!(e.contains("--max-nodes"), "{e}");
}

#[test]
fn missing_names_are_cached_negative_entries() {
    let s = sandbox();
    let etc = s.walk("layers/0/etc").unwrap();
    let e = s.fs.do_lookup(etc, c"base").unwrap();
    assert_eq!(e.inode, 0, "node 0: a negative entry");
    assert_eq!(e.entry_timeout, CachePolicy::default().layer);
    // In the writable area too, with its short timeout.
    let upper = s.walk("upper").unwrap();
    let e = s.fs.do_lookup(upper, c"nothing").unwrap();
    assert_eq!(e.inode, 0);
    assert_eq!(e.entry_timeout, CachePolicy::default().rw);
    // The virtual part of the tree has no such names.
    assert_eq!(errno(s.fs.do_lookup(ROOT, c"nothing")), libc::ENOENT);
    // Other errors stay errors.
    let top = s.walk("layers/0/etc/top").unwrap();
    assert_eq!(errno(s.fs.do_lookup(top, c"x")), libc::ENOTDIR);
}

#[test]
fn readdirplus_lists_with_lookups_and_keeps_counts_balanced() {
    let s = sandbox();
    let etc = s.walk("layers/1/etc").unwrap();
    let before = s.fs.live_nodes();
    let h = s.fs.do_opendir(etc).unwrap().unwrap();
    let mut seen = Vec::new();
    s.fs.do_readdirplus(etc, h, 4096, 0, &mut |d, e| {
        seen.push((
            String::from_utf8_lossy(d.name).into_owned(),
            e.inode,
            e.attr.st_size,
        ));
        Ok(1)
    })
    .unwrap();
    seen.sort();
    let names: Vec<&str> = seen.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(names, [".", "..", "base", "up"]);
    for (name, node, size) in &seen {
        match name.as_str() {
            "." | ".." => assert_eq!(*node, 0),
            "base" => {
                assert_eq!(*size, 4);
                assert_eq!(*node, s.fs.do_lookup(etc, c"base").unwrap().inode);
            }
            _ => assert_ne!(*node, 0),
        }
    }
    assert_eq!(s.fs.live_nodes(), before + 2);
    // A full buffer: the entry that did not fit is not counted as looked up.
    let mut n = 0;
    s.fs.do_readdirplus(etc, h, 4096, 0, &mut |_, _| {
        n += 1;
        Ok(0)
    })
    .unwrap();
    assert_eq!(n, 1);
    assert_eq!(s.fs.live_nodes(), before + 2);
    // Virtual directories list without lookups.
    s.fs.do_readdirplus(ROOT, 0, 4096, 0, &mut |_, e| {
        assert_eq!(e.inode, 0);
        Ok(1)
    })
    .unwrap();
    s.fs.drop_handle(h);
}

/// Lists a directory of the served tree through opendir + readdir (plus: readdirplus).
/// The names of directory `dir` (sorted, without `.` and `..`), read through an opened handle.
pub(super) fn list(fs: &StrataFs, dir: u64, plus: bool) -> Vec<String> {
    let h = fs.do_opendir(dir).unwrap().unwrap_or(0);
    let mut names = Vec::new();
    let mut add = |name: &[u8]| {
        let n = String::from_utf8_lossy(name).into_owned();
        if n != "." && n != ".." {
            names.push(n);
        }
    };
    if plus {
        fs.do_readdirplus(dir, h, 4096, 0, &mut |d, e| {
            let dot = d.name == b"." || d.name == b"..";
            assert!(
                dot || e.inode != 0,
                "{:?} listed without its lookup",
                d.name
            );
            add(d.name);
            Ok(1)
        })
        .unwrap();
    } else {
        fs.do_readdir(dir, h, 4096, 0, &mut |d| {
            add(d.name);
            Ok(1)
        })
        .unwrap();
    }
    fs.drop_handle(h);
    names.sort();
    names
}

#[test]
fn merged_lower_applies_whiteouts_and_opaque_dirs() {
    if !strata_harness::needs("merged_lower_applies_whiteouts_and_opaque_dirs", true, &[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let mk = |d: &str| std::fs::create_dir_all(p.join(d)).unwrap();
    let file = |f: &str, data: &str| std::fs::write(p.join(f), data).unwrap();
    let whiteout = |f: &str| {
        nix::sys::stat::mknod(
            &p.join(f),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap()
    };
    for d in [
        "l0/etc/opq",
        "l0/usr",
        "l0/dir2file",
        "l1/etc/opq",
        "l1/usr/lib",
        "l2/etc",
    ] {
        mk(d);
    }
    for d in [
        "l1/file2dir",
        "l2/etc/opq",
        "l2/usr/share",
        "c/upper",
        "c/work",
    ] {
        mk(d);
    }
    file("l0/etc/top", "top");
    file("l0/etc/opq/new", "new");
    file("l0/file2dir", "file over dir");
    file("l1/etc/base", "mid");
    file("l1/etc/opq/hidden", "hidden by opaque");
    file("l1/usr/lib/x", "x");
    file("l1/dir2file", "a dir above hides me");
    file("l2/etc/base", "hidden by l1");
    file("l2/etc/gone", "whited out");
    file("l2/etc/opq/deep", "hidden by opaque");
    file("l2/usr/share/y", "y");
    file("l1/file2dir/inner", "under a file");
    whiteout("l0/etc/gone");
    whiteout("l1/usr/share");
    // l0/etc/opq is opaque: l1's and l2's etc/opq are hidden.
    let opq = crate::sys::open_anchor(&p.join("l0/etc/opq")).unwrap();
    crate::sys::xattr::set(opq.as_fd(), c"trusted.overlay.opaque", b"y", 0).unwrap();
    let cfg = ServeConfig {
        lowers: vec![p.join("l0"), p.join("l1"), p.join("l2")],
        upper: p.join("c/upper"),
        work: p.join("c/work"),
        socket: p.join("sock"),
        socket_fd: None,
        socket_perms: Default::default(),
        tag: "t".into(),
        limits: Limits::default(),
        lower_device: None,
        lower_block: None,
        union: false,
    };
    let fs = StrataFs::new(&cfg.check().unwrap(), CachePolicy::default()).unwrap();
    let s = Sandbox { dir, fs };
    let lower = s.walk("lower").unwrap();
    for plus in [false, true] {
        assert_eq!(
            list(&s.fs, lower, plus),
            ["dir2file", "etc", "file2dir", "usr"],
            "plus={plus}"
        );
        let etc = s.walk("lower/etc").unwrap();
        assert_eq!(
            list(&s.fs, etc, plus),
            ["base", "opq", "top"],
            "plus={plus}"
        );
        let opq = s.walk("lower/etc/opq").unwrap();
        assert_eq!(list(&s.fs, opq, plus), ["new"], "plus={plus}");
        let usr = s.walk("lower/usr").unwrap();
        assert_eq!(list(&s.fs, usr, plus), ["lib"], "plus={plus}");
    }
    let read = |path: &str| {
        let id = s.walk(path).unwrap();
        let (h, _) = s.fs.do_open(id, libc::O_RDONLY as u32).unwrap();
        let Handle::File { file, .. } = &*s.fs.handle(h.unwrap()).unwrap() else {
            panic!("not a file")
        };
        let mut out = String::new();
        std::io::Read::read_to_string(&mut &*file, &mut out).unwrap();
        out
    };
    assert_eq!(read("lower/etc/base"), "mid");
    assert_eq!(read("lower/etc/top"), "top");
    assert_eq!(read("lower/file2dir"), "file over dir");
    assert_eq!(read("lower/usr/lib/x"), "x");
    for gone in [
        "lower/etc/gone",
        "lower/etc/opq/hidden",
        "lower/etc/opq/deep",
        "lower/usr/share",
        "lower/nothing",
    ] {
        assert_eq!(errno(s.walk(gone)), libc::ENOENT, "{gone}");
    }
    // A file above a dir: the file wins.
    assert_eq!(errno(s.walk("lower/file2dir/inner")), libc::ENOTDIR);
    // A dir above a file: the dir wins, and it is a merged dir of one layer.
    let d = s.walk("lower/dir2file").unwrap();
    assert!(s.fs.do_getattr(d).unwrap().0.st_mode & libc::S_IFMT == libc::S_IFDIR);
    // The same host file is one node, whichever path reaches it.
    assert_eq!(
        s.walk("lower/etc/top").unwrap(),
        s.walk("layers/0/etc/top").unwrap()
    );
    // Read-only.
    let ctx = Context::default();
    assert_eq!(
        errno(s.fs.do_mkdir(&ctx, lower, &c("x"), 0o755, 0)),
        libc::EROFS
    );
    let etc = s.walk("lower/etc").unwrap();
    assert_eq!(errno(s.fs.do_unlink(etc, &c("top"), 0)), libc::EROFS);
}

/// Flags that only steer the guest's side never reach the host open.
#[test]
fn host_flags_drop_creation_and_direct_io() {
    let f = super::file::host_flags(
        (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_DIRECT | libc::O_APPEND) as u32,
    );
    assert_eq!(f, libc::O_RDWR | libc::O_APPEND);
}

/// The guest's kernel masks the mode with the guest's umask and sends the umask too; the
/// daemon's own umask (022 here, as inherited from a shell) must not mask it again.
#[test]
fn modes_are_masked_by_the_guest_umask_only() {
    let s = sandbox();
    let ctx = Context::default();
    let upper = s.walk("upper").unwrap();
    // The test thread's umask, as the daemon's would be.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let args = CreateIn {
        flags: (libc::O_RDWR) as u32,
        mode: libc::S_IFREG | 0o777,
        umask: 0,
        fuse_flags: 0,
    };
    s.fs.do_create(&ctx, upper, c"f", args).unwrap();
    s.fs.do_mkdir(&ctx, upper, c"d", 0o777, 0).unwrap();
    s.fs.do_mkdir(&ctx, upper, c"d2", 0o777, 0o027).unwrap();
    s.fs.do_mknod(&ctx, upper, c"p", libc::S_IFIFO | 0o666, 0, 0)
        .unwrap();
    nix::sys::stat::umask(old);
    let mode = |n: &str| std::fs::symlink_metadata(s.path(n)).unwrap().mode() & 0o7777;
    assert_eq!(mode("c/upper/f"), 0o777);
    assert_eq!(mode("c/upper/d"), 0o777);
    assert_eq!(mode("c/upper/d2"), 0o750);
    assert_eq!(mode("c/upper/p"), 0o666);
}

/// A non-root guest user creating a file with set-id bits keeps them (overlayfs' own copy-up
/// does this too): created with the caller's owner, not chowned afterwards, which clears them.
#[test]
fn set_id_bits_survive_a_create_by_a_guest_user() {
    if !strata_harness::needs("set_id_bits_survive_a_create_by_a_guest_user", true, &[]) {
        return;
    }
    let s = sandbox();
    let ctx = Context {
        uid: 1000,
        gid: 1000,
        ..Context::default()
    };
    let upper = s.walk("upper").unwrap();
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: libc::S_IFREG | 0o6755,
        umask: 0o022,
        fuse_flags: 0,
    };
    s.fs.do_create(&ctx, upper, c"suid", args).unwrap();
    // The guest's overlay creates regular files with MKNOD (made with an exclusive open).
    s.fs.do_mknod(&ctx, upper, c"suid2", libc::S_IFREG | 0o6755, 0, 0o022)
        .unwrap();
    assert_eq!(
        errno(s.fs.do_mknod(&ctx, upper, c"suid2", libc::S_IFREG | 0o644, 0, 0)),
        libc::EEXIST
    );
    s.fs.do_mkdir(&ctx, upper, c"sgid", libc::S_ISGID | 0o775, 0o002)
        .unwrap();
    for f in ["c/upper/suid", "c/upper/suid2"] {
        let m = std::fs::metadata(s.path(f)).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (1000, 1000, 0o6755),
            "{f}"
        );
    }
    let m = std::fs::metadata(s.path("c/upper/sgid")).unwrap();
    // mkdir(2) ignores S_ISGID in the mode (a dir inherits it from its parent).
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o775));
}

/// `.` and `..` of a merged (`/lower`) directory carry real inode numbers: glibc skips inode 0.
#[test]
fn merged_listing_has_real_dot_and_dotdot() {
    let s = sandbox();
    let etc = s.walk("lower/etc").unwrap();
    let h = s.fs.do_opendir(etc).unwrap().unwrap();
    let mut got = Vec::new();
    s.fs.do_readdir(etc, h, 4096, 0, &mut |d| {
        got.push((String::from_utf8_lossy(d.name).into_owned(), d.ino));
        Ok(1)
    })
    .unwrap();
    s.fs.drop_handle(h);
    let ino = |p: &str| std::fs::metadata(s.path(p)).unwrap().ino();
    assert_eq!(got[0], (".".to_string(), ino("l0/etc")));
    assert_eq!(got[1], ("..".to_string(), ino("l0")));
    assert!(got.iter().all(|(_, i)| *i != 0), "{got:?}");
}

/// Write `data` at `offset` of node `id` as a WRITE with handle 0 does.
fn write_at(fs: &StrataFs, id: u64, offset: u64, data: &[u8]) -> io::Result<()> {
    let f = fs.io_file(id, 0, true)?;
    std::os::unix::fs::FileExt::write_all_at(f.file()?, data, offset)
}

/// Read `len` bytes of node `id` as a READ with handle 0 does.
fn read_at(fs: &StrataFs, id: u64, len: usize) -> io::Result<Vec<u8>> {
    let f = fs.io_file(id, 0, false)?;
    let mut buf = vec![0u8; len];
    let n = std::os::unix::fs::FileExt::read_at(f.file()?, &mut buf, 0)?;
    buf.truncate(n);
    Ok(buf)
}

#[test]
fn kept_files_stay_within_their_cap_and_close_with_their_node() {
    let mut s = sandbox();
    s.fs.io_cache = file::IoCache::new(2);
    let ctx = Context::default();
    let upper = s.walk("upper").unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        let name = c(&format!("f{i}"));
        let e =
            s.fs.do_mknod(&ctx, upper, &name, libc::S_IFREG | 0o600, 0, 0)
                .unwrap();
        // MKNOD's own open file is kept: the write that follows opens nothing.
        write_at(&s.fs, e.inode, 0, format!("file {i}").as_bytes()).unwrap();
        assert!(s.fs.io_cache.held() <= 2, "{} kept", s.fs.io_cache.held());
        ids.push(e.inode);
    }
    for (i, id) in ids.iter().enumerate() {
        // Pushed out or not, every node reads what was written, as the host sees it.
        assert_eq!(
            read_at(&s.fs, *id, 64).unwrap(),
            format!("file {i}").as_bytes()
        );
        let host = std::fs::read(s.path(&format!("c/upper/f{i}"))).unwrap();
        assert_eq!(host, format!("file {i}").as_bytes());
        let m = std::fs::metadata(s.path(&format!("c/upper/f{i}"))).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
    }
    assert_eq!(s.fs.io_cache.held(), 2);
    for id in ids {
        s.fs.forget_node(id, 1);
    }
    assert_eq!(s.fs.io_cache.held(), 0, "forgotten nodes close their files");
}

#[test]
fn a_kept_file_answers_reads_writes_and_xattrs_of_its_node_only_as_allowed() {
    if !strata_harness::needs("a_kept_file_answers_reads_writes_and_xattrs", true, &[]) {
        return;
    }
    let s = sandbox();
    let ctx = Context::default();
    let upper = s.walk("upper").unwrap();
    let e =
        s.fs.do_mknod(&ctx, upper, c"f", libc::S_IFREG | 0o444, 0, 0)
            .unwrap();
    assert_eq!(s.fs.io_cache.held(), 1);
    // A read-only mode binds the guest's callers (its kernel checks), not the daemon.
    write_at(&s.fs, e.inode, 0, b"0123456789").unwrap();
    write_at(&s.fs, e.inode, 4, b"ab").unwrap();
    assert_eq!(read_at(&s.fs, e.inode, 64).unwrap(), b"0123ab6789");
    s.fs.do_setxattr(e.inode, c"user.k", b"v", 0).unwrap();
    match s.fs.do_getxattr(e.inode, c"user.k", 0).unwrap() {
        GetxattrReply::Count(n) => assert_eq!(n, 1),
        GetxattrReply::Value(_) => panic!("asked for the length"),
    }
    assert_eq!(
        errno(s.fs.do_getxattr(e.inode, c"security.capability", 0)),
        libc::ENODATA
    );
    // A layer file is kept read-only, and writes to it are still refused.
    let top = s.walk("layers/0/etc/top").unwrap();
    assert_eq!(read_at(&s.fs, top, 64).unwrap(), b"top");
    assert_eq!(errno(write_at(&s.fs, top, 0, b"x")), libc::EROFS);
    assert_eq!(std::fs::read(s.path("l0/etc/top")).unwrap(), b"top");
}

#[test]
fn without_the_cache_nothing_is_kept() {
    let mut s = sandbox();
    s.fs.io_cache = file::IoCache::new(0);
    let ctx = Context::default();
    let upper = s.walk("upper").unwrap();
    let e =
        s.fs.do_mknod(&ctx, upper, c"f", libc::S_IFREG | 0o644, 0, 0)
            .unwrap();
    write_at(&s.fs, e.inode, 0, b"data").unwrap();
    assert_eq!(read_at(&s.fs, e.inode, 64).unwrap(), b"data");
    assert_eq!(s.fs.io_cache.held(), 0);
}
