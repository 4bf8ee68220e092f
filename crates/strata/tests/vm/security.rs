//! Local attacks on the host side, as user `nobody` (`setpriv`): the store keeps everything an
//! image or a guest put in it (setuid and file-capability binaries, device nodes, world-writable
//! directories, a guest's setuid file in its upper dir) out of every other local user's reach;
//! `strata daemon`'s sockets are root's alone whatever the umask, and another service's live
//! socket is never taken over.
//!
//! Needs root, umoci, setpriv, setcap and busybox-static: `scripts/install-deps.sh`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn umoci(args: &[&str]) {
    let st = Command::new("umoci").args(args).status().unwrap();
    assert!(st.success(), "umoci {args:?}");
}

/// Run `argv` as nobody:nogroup with no supplementary groups; (success, output).
///
/// Through `sh -c 'exec "$@"'`: setpriv's own execve of its command still resolves the path
/// with root's capabilities (it reaches a 0700 root dir), while the shell it starts is nobody
/// through and through (no capability in any set).
fn as_nobody(argv: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args(["sh", "-c", r#"exec "$@""#, "sh"])
        .args(argv)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn nothing_in_the_store_is_reachable_by_other_users() {
    use std::os::unix::fs::MetadataExt;
    strata_harness::require(&["umoci", "setpriv", "setcap", "busybox"]);
    let strata = crate::strata();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Everything above the store is open to nobody: only the store's own modes protect it.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let busybox = strata_harness::fixture::static_busybox().unwrap();

    let layout = root.join("layout");
    let image = format!("{}:evil", layout.display());
    umoci(&["init", "--layout", s(&layout)]);
    umoci(&["new", "--image", &image]);
    let b = root.join("b");
    umoci(&["unpack", "--image", &image, s(&b)]);
    let r = b.join("rootfs");
    for d in ["bin", "dev", "open"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::copy(&busybox, r.join("bin/suid")).unwrap();
    std::fs::set_permissions(r.join("bin/suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::copy(&busybox, r.join("bin/capped")).unwrap();
    let st = Command::new("setcap")
        .args(["cap_setuid,cap_dac_override+ep", s(&r.join("bin/capped"))])
        .status()
        .unwrap();
    assert!(st.success(), "setcap");
    nix::sys::stat::mknod(
        &r.join("dev/kmsg"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 11),
    )
    .unwrap();
    std::fs::set_permissions(r.join("dev/kmsg"), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::write(r.join("open/f"), "immutable").unwrap();
    std::fs::set_permissions(r.join("open/f"), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(r.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    umoci(&["repack", "--image", &image, s(&b)]);

    let store = root.join("store");
    strata.ok(["image", "import", s(&layout), "--store", s(&store)]);
    let rec: serde_json::Value = serde_json::from_str(&strata.ok([
        "rootfs",
        "create",
        "--image",
        "evil",
        "--id",
        "c1",
        "--json",
        "--store",
        s(&store),
    ]))
    .unwrap();
    let layer = PathBuf::from(rec["lowers"][0].as_str().unwrap());
    let upper = PathBuf::from(rec["upper"].as_str().unwrap());
    // A hostile guest, through the request path of a real (confined) `strata serve --rootfs`:
    // it creates a setuid-root shell in its upper dir, which the daemon makes as asked.
    let sock = root.join("c1.sock");
    let argv: Vec<std::ffi::OsString> = vec![
        strata.path().into(),
        "serve".into(),
        "--rootfs".into(),
        "c1".into(),
        "--store".into(),
        store.clone().into(),
        "--socket".into(),
        sock.clone().into(),
    ];
    let mut serve = strata_harness::session::ServeProcess::spawn_argv(
        &argv,
        std::slice::from_ref(&sock),
        None,
        &root.join("serve.log"),
    )
    .expect("strata serve starts");
    {
        let mut guest = strata_serve::frontend::TestVm::connect(&sock).unwrap();
        let up = guest.walk("upper").unwrap();
        let (f, fh) = guest.create(up.node, "guest-suid", 0o4755).unwrap();
        let bytes = std::fs::read(&busybox).unwrap();
        for (i, chunk) in bytes.chunks(64 << 10).enumerate() {
            guest
                .write(f.node, fh, (i * (64 << 10)) as u64, chunk)
                .unwrap();
        }
        guest.fsync(f.node, fh).unwrap();
        guest.release(f.node, fh, false).unwrap();
    }
    assert!(
        serve.wait_exit(Duration::from_secs(30)).is_some(),
        "{}",
        serve.log_text()
    );
    assert_eq!(
        std::fs::metadata(upper.join("guest-suid")).unwrap().mode() & 0o7777,
        0o4755,
        "the guest's file is setuid on the host"
    );
    // The image's files are in the store as the image has them (root sees them).
    assert_eq!(
        std::fs::metadata(layer.join("bin/suid")).unwrap().mode() & 0o7777,
        0o4755
    );

    let attempts: Vec<(&str, Vec<String>)> = vec![
        (
            "run the image's setuid binary",
            vec![s(&layer.join("bin/suid")).into(), "id".into(), "-u".into()],
        ),
        (
            "run the image's cap_setuid binary",
            vec![
                s(&layer.join("bin/capped")).into(),
                "id".into(),
                "-u".into(),
            ],
        ),
        (
            "run the guest's setuid file",
            vec![
                s(&upper.join("guest-suid")).into(),
                "id".into(),
                "-u".into(),
            ],
        ),
        (
            "write the image's device node",
            vec![
                "sh".into(),
                "-c".into(),
                format!("echo x > {}", s(&layer.join("dev/kmsg"))),
            ],
        ),
        (
            "rewrite a layer file in a 0777 dir",
            vec![
                "sh".into(),
                "-c".into(),
                format!("echo evil > {}", s(&layer.join("open/f"))),
            ],
        ),
        (
            "create a file in a layer's 0777 dir",
            vec![
                "sh".into(),
                "-c".into(),
                format!("echo evil > {}", s(&layer.join("open/new"))),
            ],
        ),
        (
            "list the layers",
            vec!["ls".into(), s(&store.join("layers/sha256")).into()],
        ),
        (
            "list the containers",
            vec!["ls".into(), s(&store.join("containers")).into()],
        ),
        (
            "take the store lock",
            vec![
                "sh".into(),
                "-c".into(),
                format!("cat < {}", s(&store.join("lock"))),
            ],
        ),
    ];
    for (what, argv) in &attempts {
        let argv: Vec<&str> = argv.iter().map(|a| a.as_str()).collect();
        let (ok, out) = as_nobody(&argv);
        assert!(!ok, "nobody could {what}: {argv:?} said {out}");
        assert!(
            out.contains("ermission denied"),
            "{what}: expected EACCES, got {out}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(layer.join("open/f")).unwrap(),
        "immutable"
    );
    // The same binary outside the store does run for nobody (the attempts above failed for the
    // store's modes, not for the binary).
    let (ok, out) = as_nobody(&[s(&busybox), "id", "-u"]);
    assert!(ok && out.trim() == "65534", "{out}");
    // And root still gets everything back out: `strata rootfs rm` and gc.
    strata.ok(["rootfs", "rm", "c1", "--store", s(&store)]);
    strata.ok(["image", "rm", "evil", "--store", s(&store)]);
    strata.ok(["gc", "--store", s(&store)]);
}

/// The daemon's sockets against local users, started with umask 000 (the worst case the
/// issue found): the API socket, every session socket and their lock files are 0600 from the
/// moment they exist; an API connection from nobody (even through a socket opened up by hand)
/// is refused by its SO_PEERCRED uid; and a live socket of another service at a session's
/// socket path is left alone (the confined daemon's liveness probe once got ENOSYS from its own
/// seccomp filter, took the socket for stale and bound over it).
#[test]
fn daemon_sockets_are_private_and_live_sockets_survive() {
    use std::os::unix::fs::MetadataExt;
    use strata_harness::session::ServeProcess;
    strata_harness::require(&["setpriv"]);
    let strata = crate::strata();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = root.join("run");
    let allowed = root.join("allowed");
    for d in ["l", "upper", "work"] {
        std::fs::create_dir_all(allowed.join(d)).unwrap();
    }
    std::fs::create_dir_all(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    // nobody runs its own copy of the client (the build dir may not be reachable).
    let client = root.join("strata-client");
    std::fs::copy(strata.path(), &client).unwrap();
    // Another service's live socket where a session socket will be asked for.
    let foreign = run.join("foreign.sock");
    let foreign_listener = std::os::unix::net::UnixListener::bind(&foreign).unwrap();

    let api = run.join("api.sock");
    let argv: Vec<std::ffi::OsString> = vec![
        "sh".into(),
        "-c".into(),
        r#"umask 000; exec "$0" "$@""#.into(),
        strata.path().into(),
        "daemon".into(),
        "--api".into(),
        api.clone().into(),
        "--allow".into(),
        allowed.clone().into(),
        "--store".into(),
        root.join("store").into(),
    ];
    let mut daemon =
        ServeProcess::spawn_argv(&argv, std::slice::from_ref(&api), None, &root.join("d.log"))
            .expect("strata daemon starts");
    let a = |p: &Path| s(p).to_string();
    let start = |id: &str, socket: &Path| {
        strata.run([
            "rootfs",
            "start",
            id,
            "--socket",
            &a(socket),
            "--lower",
            &a(&allowed.join("l")),
            "--upper",
            &a(&allowed.join("upper")),
            "--work",
            &a(&allowed.join("work")),
            "--api",
            &a(&api),
        ])
    };
    let r = start("s1", &run.join("s1.sock"));
    assert!(r.ok(), "{}\n{}", r.text(), daemon.log_text());
    let r = start("s2", &foreign);
    assert!(!r.ok(), "bound over a live socket: {}", r.text());
    assert!(r.text().contains("in use"), "{}", r.text());
    // The foreign socket is still there and still its owner's.
    let c = std::os::unix::net::UnixStream::connect(&foreign).expect("foreign socket alive");
    drop(c);
    assert!(foreign_listener.accept().is_ok());

    // Binding leaves nothing behind in the socket directory (the confined daemon cannot list
    // it, so it removes its private bind directories name by name).
    let left: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".strata-bind-"))
        .collect();
    assert!(left.is_empty(), "left in the socket dir: {left:?}");
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o777;
    for p in [
        api.clone(),
        run.join("api.sock.lock"),
        run.join("s1.sock"),
        run.join("s1.sock.lock"),
    ] {
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    let (ok, out) = as_nobody(&[s(&client), "rootfs", "status", "--api", s(&api)]);
    assert!(!ok && out.contains("ermission denied"), "{out}");
    // Opened up by hand (a wrong --socket-mode, a chmod): the daemon still refuses nobody.
    std::fs::set_permissions(&api, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, out) = as_nobody(&[s(&client), "rootfs", "status", "--api", s(&api)]);
    assert!(
        !ok && out.contains("uid 65534 may not use this API"),
        "{out}"
    );
    let (ok, out) = as_nobody(&[s(&client), "rootfs", "stop", "s1", "--api", s(&api)]);
    assert!(!ok, "{out}");
    // Root still can, and the session nobody tried to stop is there.
    let st = strata.ok(["rootfs", "status", "--api", s(&api)]);
    assert!(st.contains("s1"), "{st}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.wait_exit(Duration::from_secs(20)).is_some());
    assert!(foreign.exists());
}
