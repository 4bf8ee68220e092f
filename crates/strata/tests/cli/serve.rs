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
