//! `strata daemon` against local attackers and hostile guests that go after the process as a
//! whole, in process (no confinement): a symlink swapped under an `--allow` dir while sessions
//! start.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use strata_serve::api::{Client, Dirs, ErrorKind, Request, Response};
use strata_serve::supervisor::{DaemonConfig, Supervisor};
use strata_serve::CachePolicy;

/// These tests look at the process's fds: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn daemon(p: &Path, allow: PathBuf, limits: strata_serve::Limits) -> (Arc<Supervisor>, PathBuf) {
    std::fs::create_dir_all(p.join("run")).unwrap();
    let api = p.join("run/api.sock");
    let sup = Supervisor::new(
        DaemonConfig {
            api: api.clone(),
            socket_dir: p.join("run"),
            allow: vec![allow],
            read_only: vec![],
            read_write: vec![],
            cache: CachePolicy::default(),
            limits,
            confine: false,
        },
        Box::new(|id| Err((ErrorKind::NotFound, format!("no store rootfs {id}")))),
    )
    .unwrap();
    let listener = UnixListener::bind(&api).unwrap();
    let s = sup.clone();
    std::thread::spawn(move || s.accept_loop(listener));
    (sup, api)
}

/// Every fd of this process that points below `dir`.
fn fds_below(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|l| l.starts_with(dir))
        .collect()
}

/// The daemon checked an `--allow`ed path, then opened it again following symlinks: a local
/// user who swaps a directory below the allowed one for a symlink between the two gets a
/// session on a directory outside (the attacker won within 540 tries). Now each path is
/// opened once with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` below the held allowed dir:
/// in 1,500 starts against a swapping thread the daemon never holds an fd outside.
#[test]
fn symlink_swapped_under_an_allowed_dir_never_leads_outside() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    let allowed = p.join("allowed");
    let outside = p.join("outside");
    for base in [allowed.join("x"), outside.clone()] {
        for d in ["l", "upper", "work"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
    }
    std::os::unix::fs::symlink(&outside, allowed.join("y")).unwrap();
    let (_sup, api) = daemon(p, allowed.clone(), strata_serve::Limits::default());
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let (x, y) = (allowed.join("x"), allowed.join("y"));
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                nix::fcntl::renameat2(None, &x, None, &y, nix::fcntl::RenameFlags::RENAME_EXCHANGE)
                    .unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let mut client = Client::connect(&api).unwrap();
    let x = allowed.join("x");
    let (mut started, mut refused) = (0, 0);
    let mut escaped = Vec::new();
    for i in 0..1500 {
        let id = format!("s{i}");
        let r = client
            .call(&Request::Start {
                id: id.clone(),
                socket: p.join("run").join(format!("{id}.sock")),
                dirs: Some(Dirs {
                    lowers: vec![x.join("l")],
                    upper: x.join("upper"),
                    work: x.join("work"),
                }),
                tag: None,
                layer_device: None,
            })
            .unwrap();
        match r {
            Response::Started { .. } => {
                started += 1;
                escaped.extend(fds_below(&outside));
                client.call(&Request::Stop { id }).unwrap();
            }
            _ => refused += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    println!("{started} started, {refused} refused, {swaps} swaps");
    assert!(
        escaped.is_empty(),
        "the daemon held fds outside --allow: {escaped:?}"
    );
    assert!(started > 0, "no start succeeded at all ({refused} refused)");
}

/// A symlink below an allowed directory is refused even when it stays inside it: paths a
/// request names must be symlink-free.
#[test]
fn symlinks_below_an_allowed_dir_are_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    let allowed = p.join("allowed");
    for d in ["real/l", "real/upper", "real/work"] {
        std::fs::create_dir_all(allowed.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("real", allowed.join("link")).unwrap();
    let (_sup, api) = daemon(p, allowed.clone(), strata_serve::Limits::default());
    let mut client = Client::connect(&api).unwrap();
    let start = |client: &mut Client, base: &str| {
        let b = allowed.join(base);
        client
            .call(&Request::Start {
                id: base.into(),
                socket: p.join("run").join(format!("{base}.sock")),
                dirs: Some(Dirs {
                    lowers: vec![b.join("l")],
                    upper: b.join("upper"),
                    work: b.join("work"),
                }),
                tag: None,
                layer_device: None,
            })
            .unwrap()
    };
    match start(&mut client, "link") {
        Response::Error { message, .. } => assert!(message.contains("symlink"), "{message}"),
        r => panic!("started through a symlink: {r:?}"),
    }
    assert!(matches!(
        start(&mut client, "real"),
        Response::Started { .. }
    ));
}
