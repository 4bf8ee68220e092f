//! The confinement really holds: after `sandbox::confine` the process keeps only the listed
//! capabilities, and Landlock lets it read layers, write upper/work, and touch nothing else,
//! the `/proc/self/fd` reopen of a held fd included. Irreversible, so it runs in a child
//! process: this test binary re-executes itself.

use std::os::unix::fs::OpenOptionsExt;

#[test]
fn confined_daemon_reaches_only_its_dirs() {
    if !strata_harness::needs("confined_daemon_reaches_only_its_dirs", true, &[]) {
        return;
    }
    if let Some(dir) = strata_harness::child::arg("confined_daemon_reaches_only_its_dirs") {
        return child(std::path::Path::new(&dir));
    }
    let d = tempfile::tempdir().unwrap();
    for sub in ["layer/etc", "upper", "work", "outside", "sock"] {
        std::fs::create_dir_all(d.path().join(sub)).unwrap();
    }
    std::fs::write(d.path().join("layer/etc/f"), b"layer").unwrap();
    std::fs::write(d.path().join("outside/secret"), b"secret").unwrap();
    strata_harness::child::run("confined_daemon_reaches_only_its_dirs", d.path());
}

fn child(d: &std::path::Path) {
    use std::fs::{File, OpenOptions};
    use std::os::fd::AsRawFd;
    // An O_PATH fd held from before, as the daemon's anchors are.
    let held = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(d.join("layer/etc/f"))
        .unwrap();
    // Capabilities are per thread, and Landlock hides procfs after confining: open this
    // thread's status before, read it after.
    let mut status_file = File::open("/proc/thread-self/status").unwrap();
    let mut c = strata_serve::sandbox::Confinement::new(
        &[d.join("layer")],
        &d.join("upper"),
        &d.join("work"),
    );
    c.add_socket(&d.join("sock/s"));
    let r = strata_serve::sandbox::confine(&c).expect("confine");
    eprintln!("{}", r.summary());
    let mut status = String::new();
    std::io::Read::read_to_string(&mut status_file, &mut status).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_string();
    // CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID, SETGID, SETUID, SYS_ADMIN, MKNOD,
    // SETFCAP.
    assert_eq!(eff, "00000000882000df", "effective capabilities");
    creates_as_the_guest_user(d);
    let denied = |r: std::io::Result<File>, what: &str| match r {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{what}: {e}"),
        Ok(_) => panic!("{what}: allowed"),
    };
    if r.landlock.is_some() {
        assert_eq!(std::fs::read(d.join("layer/etc/f")).unwrap(), b"layer");
        denied(
            OpenOptions::new().write(true).open(d.join("layer/etc/f")),
            "write into a layer",
        );
        denied(File::open(d.join("outside/secret")), "read outside");
        denied(File::open("/etc/hostname"), "read /etc");
        std::fs::write(d.join("upper/new"), b"x").unwrap();
        std::fs::rename(d.join("upper/new"), d.join("work/new")).unwrap();
        // The magic-link reopen the daemon uses: allowed for a held fd under a served dir.
        let p = format!("/proc/self/fd/{}", held.as_raw_fd());
        assert_eq!(std::fs::read(&p).unwrap(), b"layer");
        denied(
            OpenOptions::new().write(true).open(&p),
            "reopen a layer file for writing",
        );
    }
    println!("CHILD-OK");
}

/// Confined, a create by a guest user runs with that user's fsuid/fsgid and still has the
/// daemon's file capabilities: it works in a directory only root may write to (overlayfs' work
/// dir is one), and the new file has the user as owner and the set-id bits it asked for.
fn creates_as_the_guest_user(d: &std::path::Path) {
    use fuse_backend_rs::abi::fuse_abi::CreateIn;
    use fuse_backend_rs::api::filesystem::{Context, FileSystem};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(d.join("work"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let cfg = strata_serve::ServeConfig {
        lowers: vec![d.join("layer")],
        upper: d.join("upper"),
        work: d.join("work"),
        socket: d.join("sock/s"),
        socket_fd: None,
        socket_perms: Default::default(),
        tag: "t".into(),
        limits: strata_serve::Limits::DEFAULT,
        lower_device: None,
        lower_block: None,
        union: false,
    }
    .check()
    .unwrap();
    let fs = strata_serve::StrataFs::new(&cfg, strata_serve::CachePolicy::default()).unwrap();
    let root = Context::default();
    let work = fs.lookup(&root, 1, c"work").unwrap().inode;
    let user = Context {
        uid: 1000,
        gid: 1001,
        ..Context::default()
    };
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: libc::S_IFREG | 0o6777,
        umask: 0o022,
        fuse_flags: 0,
    };
    fs.create(&user, work, c"suid", args).unwrap();
    fs.mkdir(&user, work, c"dir", 0o2777, 0o002).unwrap();
    let m = std::fs::metadata(d.join("work/suid")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o6755));
    let m = std::fs::metadata(d.join("work/dir")).unwrap();
    // mkdir(2) ignores S_ISGID in the mode (a dir inherits it from its parent).
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o775));
}
