//! `strata serve` as an operator meets it: refused configurations exit 2 and create nothing,
//! a live socket is not stolen, SIGTERM stops the daemon and removes its socket.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use strata_harness::session::ServeProcess;

fn dirs(root: &Path) {
    for d in ["l0", "l1", "c/upper", "c/work"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
}

/// `serve --socket ROOT/SOCK --lower ROOT/L… --upper ROOT/UPPER --work ROOT/WORK`.
fn serve(root: &Path, lowers: &[&str], upper: &str, work: &str, sock: &str) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["serve".into(), "--socket".into(), root.join(sock).into()];
    for l in lowers {
        a.extend(["--lower".into(), root.join(l).into()]);
    }
    a.extend(["--upper".into(), root.join(upper).into()]);
    a.extend(["--work".into(), root.join(work).into()]);
    a
}

fn listing(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(root, root);
    v.sort();
    v
}

fn walk(base: &Path, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push(p.strip_prefix(base).unwrap().display().to_string());
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(base, &p));
        }
    }
    out
}

#[test]
fn refused_configurations_exit_2_and_create_nothing() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    dirs(r);
    std::fs::write(r.join("file"), b"").unwrap();
    std::fs::create_dir_all(r.join("l0/inside")).unwrap();
    let cases: [(&[&str], &str, &str, &str); 6] = [
        (&["missing"], "c/upper", "c/work", "layer"),
        (&["file"], "c/upper", "c/work", "not a directory"),
        (&["l0"], "c/nope", "c/work", "upper"),
        (&["l0", "l0"], "c/upper", "c/work", "twice"),
        (&["l0"], "l0/inside", "c/work", "inside"),
        (&["l0"], "c/upper", "c/upper", "twice"),
    ];
    let before = listing(r);
    for (lowers, upper, work, says) in cases {
        let out = crate::strata().run(serve(r, lowers, upper, work, "s.sock"));
        let err = &out.stderr;
        assert_eq!(out.code(), Some(2), "{lowers:?} {upper} {work}: {err}");
        assert!(
            err.contains(says),
            "{lowers:?} {upper} {work}: message {err:?} lacks {says:?}"
        );
        assert_eq!(listing(r), before, "a refused start created something");
    }
}

#[test]
fn socket_in_use_is_refused_and_sigterm_stops_cleanly() {
    if !strata_harness::needs(
        "socket_in_use_is_refused_and_sigterm_stops_cleanly",
        true,
        &[],
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    dirs(r);
    let mut argv = vec![crate::strata().path().as_os_str().to_owned()];
    argv.extend(serve(r, &["l0", "l1"], "c/upper", "c/work", "s.sock"));
    let log = t.path().join("first.log");
    let mut first = ServeProcess::spawn_argv(&argv, &[r.join("s.sock")], None, &log)
        .unwrap_or_else(|e| panic!("{e}"));

    let second = crate::strata().run(serve(r, &["l0"], "c/upper", "c/work", "s.sock"));
    assert_eq!(second.code(), Some(2));
    assert!(second.stderr.contains("in use"), "{}", second.stderr);

    // The refused second daemon did not disturb the first (it did not connect): still there.
    std::thread::sleep(Duration::from_millis(100));
    assert!(first.try_wait().is_none(), "first daemon was disturbed");
    assert!(r.join("s.sock").exists());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = first
        .wait_exit(Duration::from_secs(10))
        .expect("serve stops on SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(!r.join("s.sock").exists(), "socket left behind");
    assert!(!r.join("s.sock.lock").exists(), "lock file left behind");
}

/// `serve --fd 3` (and `--lower-fd 4`): the sockets a VMM manager bound and handed over are
/// served (a VMM connects and reads the tree), not claimed or removed by the daemon; a
/// bad number is refused before anything starts.
#[test]
fn serve_listens_on_inherited_sockets() {
    use std::os::fd::AsRawFd;
    if !strata_harness::needs("serve_listens_on_inherited_sockets", true, &[]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    dirs(r);
    std::fs::write(r.join("l0/hello"), b"from the layer").unwrap();
    let tree = std::os::unix::net::UnixListener::bind(r.join("tree.sock")).unwrap();
    let layers = std::os::unix::net::UnixListener::bind(r.join("layers.sock")).unwrap();
    let (tree_fd, layers_fd) = (tree.as_raw_fd(), layers.as_raw_fd());
    let mut cmd = crate::strata().cmd();
    cmd.args(["serve", "--fd", "3", "--lower-fd", "4", "--lower"])
        .arg(r.join("l0"))
        .arg("--upper")
        .arg(r.join("c/upper"))
        .arg("--work")
        .arg(r.join("c/work"))
        .stderr(std::fs::File::create(r.join("serve.log")).unwrap());
    strata_harness::child::pass_fds(&mut cmd, &[(tree_fd, 3), (layers_fd, 4)]);
    let mut child = cmd.spawn().unwrap();
    drop((tree, layers));
    let log = || std::fs::read_to_string(r.join("serve.log")).unwrap_or_default();
    let mut vm = strata_serve::frontend::TestVm::connect(&r.join("tree.sock"))
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", log()));
    let mut lower = strata_serve::frontend::TestVm::connect(&r.join("layers.sock"))
        .unwrap_or_else(|e| panic!("connect the layer device: {e}\n{}", log()));
    assert_eq!(vm.read_file("layers/0/hello").unwrap(), b"from the layer");
    assert!(vm.read_file("plan.json").is_ok());
    assert!(lower.list(1).is_ok(), "{}", log());
    drop((vm, lower));
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            panic!("serve did not end with its VMM\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}\n{}", log());
    assert!(log().contains("inherited fd 3"), "{}", log());
    // The sockets are their owner's: left where they were, and no lock file was made.
    assert!(r.join("tree.sock").exists() && r.join("layers.sock").exists());
    assert!(!r.join("tree.sock.lock").exists());

    let file = std::fs::File::open(r.join("l0/hello")).unwrap();
    for (fd, says) in [
        ("1", "standard stream"),
        ("987", "not open"),
        ("3", "not a socket"),
    ] {
        let mut cmd = crate::strata().cmd();
        cmd.args(["serve", "--fd", fd, "--lower"])
            .arg(r.join("l0"))
            .arg("--upper")
            .arg(r.join("c/upper"))
            .arg("--work")
            .arg(r.join("c/work"));
        strata_harness::child::pass_fds(&mut cmd, &[(file.as_raw_fd(), 3)]);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--fd {fd}: {err}");
        assert!(err.contains(says), "--fd {fd}: {err:?} lacks {says:?}");
    }
}

#[test]
fn print_sandbox_names_the_denied_syscalls() {
    let out = crate::strata()
        .cmd()
        .args([
            "serve",
            "--print-sandbox",
            "--socket",
            "/nonexistent/s",
            "--lower",
            "/",
            "--upper",
            "/",
            "--work",
            "/",
        ])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for name in [
        "mount",
        "umount2",
        "fsopen",
        "move_mount",
        "open_tree",
        "pivot_root",
        "CLONE_NEWNS",
        // the allow-list's argument filters
        "socket: domain AF_UNIX only",
        "clone: only with CLONE_THREAD",
        "tgkill: this process's own threads only",
        "prlimit64: this process only",
    ] {
        assert!(s.contains(name), "{s}");
    }
}
