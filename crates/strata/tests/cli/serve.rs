//! `strata serve` as an operator meets it: refused configurations exit 2 and create nothing,
//! a live socket is not stolen, SIGTERM stops the daemon and removes its socket.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn strata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata"))
}

fn dirs(root: &Path) {
    for d in ["l0", "l1", "c/upper", "c/work"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
}

fn serve(root: &Path, lowers: &[&str], upper: &str, work: &str, sock: &str) -> Command {
    let mut c = strata();
    c.arg("serve").arg("--socket").arg(root.join(sock));
    for l in lowers {
        c.arg("--lower").arg(root.join(l));
    }
    c.arg("--upper")
        .arg(root.join(upper))
        .arg("--work")
        .arg(root.join(work));
    c
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
        let out = serve(r, lowers, upper, work, "s.sock").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{lowers:?} {upper} {work}: {err}"
        );
        assert!(
            err.contains(says),
            "{lowers:?} {upper} {work}: message {err:?} lacks {says:?}"
        );
        assert_eq!(listing(r), before, "a refused start created something");
    }
}

fn wait_for(path: &Path) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{path:?} never appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn socket_in_use_is_refused_and_sigterm_stops_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    dirs(r);
    let mut first = serve(r, &["l0", "l1"], "c/upper", "c/work", "s.sock")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&r.join("s.sock"));

    let second = serve(r, &["l0"], "c/upper", "c/work", "s.sock")
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use"));

    // The refused second daemon did not disturb the first (it did not connect): still there.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        first.try_wait().unwrap().is_none(),
        "first daemon was disturbed"
    );
    assert!(r.join("s.sock").exists());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = first.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit status {status}");
    assert!(!r.join("s.sock").exists(), "socket left behind");
    assert!(!r.join("s.sock.lock").exists(), "lock file left behind");
}

#[test]
fn print_sandbox_names_the_denied_syscalls() {
    let out = strata()
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
    ] {
        assert!(s.contains(name), "{s}");
    }
}
