//! What an operator wires `strata` into: shell completion and man pages generated from the real
//! flags, and log lines a collector can read (plain text without escape codes off a terminal,
//! or one JSON object per line).

use std::time::Duration;

use strata_harness::session::ServeProcess;

#[test]
fn completion_scripts_name_the_verbs() {
    for shell in ["bash", "zsh", "fish"] {
        let out = crate::strata().ok(["completion", shell]);
        for verb in ["serve", "daemon", "image", "rootfs", "trace"] {
            assert!(out.contains(verb), "{shell} completion lacks {verb}");
        }
    }
    // A usage error: exit 64, apart from a refused configuration (2).
    let bad = crate::strata().run(["completion", "tcsh"]);
    assert_eq!(bad.code(), Some(64), "{}", bad.stderr);
    let help = crate::strata().run(["--help"]);
    assert_eq!(help.code(), Some(0));
    assert!(help.stdout.contains("64 usage error"), "{}", help.stdout);
    assert_eq!(crate::strata().run(["image", "--bogus"]).code(), Some(64));
}

#[test]
fn man_pages_cover_every_verb() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("man1");
    crate::strata().ok(["man", "--dir", dir.to_str().unwrap()]);
    for page in [
        "strata.1",
        "strata-serve.1",
        "strata-image-import.1",
        "strata-rootfs-start.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is not roff"
        );
    }
    // Hidden verbs (the lab's guest helpers) get no page.
    assert!(!dir.join("strata-lab-guest.1").exists());
}

/// `serve` started with `--log-format json`, then `text`, writing to a file: every line is a
/// JSON object with a level and a message, or plain text without ANSI escapes.
#[test]
fn logs_to_a_file_are_plain_or_json() {
    if !strata_harness::needs("logs_to_a_file_are_plain_or_json", true, &[]) {
        return;
    }
    for format in ["json", "text"] {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["l0", "c2/upper", "c2/work"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        let argv: Vec<std::ffi::OsString> = vec![
            crate::strata().path().into(),
            "--log-format".into(),
            format.into(),
            "serve".into(),
            "--socket".into(),
            r.join("s.sock").into(),
            "--lower".into(),
            r.join("l0").into(),
            "--upper".into(),
            r.join("c2/upper").into(),
            "--work".into(),
            r.join("c2/work").into(),
        ];
        let log = r.join("serve.log");
        let mut p = ServeProcess::spawn_argv(&argv, &[r.join("s.sock")], None, &log)
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        p.wait_exit(Duration::from_secs(10))
            .expect("serve stops on SIGTERM");
        let text = p.log_text();
        assert!(text.contains("ready in"), "{text}");
        assert!(
            !text.contains('\x1b'),
            "escape codes in a log file:\n{text}"
        );
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if format == "json" {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(
                    v["level"].is_string() && v["fields"]["message"].is_string(),
                    "{line}"
                );
            } else {
                assert!(!line.starts_with('{'), "{line}");
            }
        }
    }
}

/// Read-only commands on a host without a store create nothing.
#[test]
fn reading_an_absent_store_creates_nothing() {
    let t = tempfile::tempdir().unwrap();
    let st = t.path().join("store");
    let s = st.to_str().unwrap();
    let o = crate::strata().run(["image", "ls", "--store", s]);
    assert!(o.ok(), "{}", o.stderr);
    let o = crate::strata().run(["rootfs", "ls", "--json", "--store", s]);
    assert!(
        o.ok() && o.stdout.trim() == "[]",
        "{} {}",
        o.stdout,
        o.stderr
    );
    let o = crate::strata().run(["image", "inspect", "debian", "--store", s]);
    assert_eq!(o.code(), Some(3), "{}", o.stderr);
    assert!(!st.exists(), "a read-only command created the store");
}

/// The configuration file sets flag defaults; a typo in it is refused (exit 2) naming the file.
#[test]
fn the_configuration_file_sets_defaults() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("config.toml");
    let st = t.path().join("store");
    std::fs::write(&cfg, format!("store = {:?}\n", st.display().to_string())).unwrap();
    let run = |args: &[&str]| {
        let out = crate::strata()
            .cmd()
            .env("STRATA_CONFIG", &cfg)
            .env_remove("STRATA_STORE")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // `image import` of a bad source fails after opening the configured store.
    let (code, err) = run(&["image", "import", "/nonexistent"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        st.join("images").is_dir(),
        "the configured store was not used: {err}"
    );
    std::fs::write(&cfg, "[daemon]\nmax_node = 1\n").unwrap();
    let (code, err) = run(&["image", "ls"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("config.toml") && err.contains("max-node"),
        "{err}"
    );
}

/// The example configuration the installer ships is accepted by this binary.
#[test]
fn the_shipped_configuration_is_valid() {
    let cfg = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/config.toml");
    let t = tempfile::tempdir().unwrap();
    let out = crate::strata()
        .cmd()
        .env("STRATA_CONFIG", &cfg)
        .env("STRATA_STORE", t.path())
        .args(["rootfs", "ls", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Under a service manager (`Type=notify`): `strata daemon` says READY=1 once its API listens
/// confined, and STOPPING=1 when SIGTERM stops it.
#[test]
fn the_daemon_tells_systemd_it_is_ready() {
    if !strata_harness::needs("the_daemon_tells_systemd_it_is_ready", true, &[]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let manager_path = t.path().join("notify");
    let manager = std::os::unix::net::UnixDatagram::bind(&manager_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let api = t.path().join("run/api.sock");
    let mut child = crate::strata()
        .cmd()
        .env("NOTIFY_SOCKET", &manager_path)
        .env("STRATA_CONFIG", "")
        .args(["daemon", "--api"])
        .arg(&api)
        .arg("--store")
        .arg(t.path().join("store"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = manager.recv(&mut buf).expect("READY=1 within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.starts_with("READY=1"), "{msg}");
    assert!(
        std::os::unix::net::UnixStream::connect(&api).is_ok(),
        "READY before the API listens"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = manager.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
}

/// A VMM running as a user of a group connects to the daemon's and `strata serve`'s sockets
/// made for that group (`--socket-mode 660 --socket-group G`); other users still cannot.
#[test]
fn sockets_for_a_vmm_group() {
    if !strata_harness::needs("sockets_for_a_vmm_group", true, &["setpriv"]) {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let run = t.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o711)).unwrap();
    for d in ["l0", "c1/upper", "c1/work", "c2/upper", "c2/work"] {
        std::fs::create_dir_all(t.path().join(d)).unwrap();
    }
    let api = run.join("api.sock");
    let d = strata_harness::session::DaemonProcess::spawn(
        crate::strata().path(),
        &api,
        &[
            "--socket-mode".as_ref(),
            "660".as_ref(),
            "--socket-group".as_ref(),
            "nogroup".as_ref(),
            "--allow".as_ref(),
            t.path().as_os_str(),
            "--store".as_ref(),
            t.path().join("store").as_os_str(),
        ],
        None,
        &t.path().join("daemon.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    let m = std::fs::metadata(&api).unwrap();
    assert_eq!((m.mode() & 0o777, m.gid()), (0o660, nogroup));
    let may_write = |sock: &std::path::Path, group: &str| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=nobody",
                &format!("--regid={group}"),
                "--clear-groups",
            ])
            .args(["test", "-w"])
            .arg(sock)
            .status()
            .unwrap()
            .success()
    };
    assert!(
        may_write(&api, "nogroup"),
        "a member of the group cannot connect"
    );
    assert!(
        !may_write(&api, "12345"),
        "a user of another group can connect"
    );
    // A session's socket, bound once the daemon is confined, the same.
    let dir = |d: &str| t.path().join(d).to_str().unwrap().to_owned();
    let session = run.join("s1.sock");
    crate::strata().ok([
        "rootfs",
        "start",
        "s1",
        "--socket",
        session.to_str().unwrap(),
        "--lower",
        &dir("l0"),
        "--upper",
        &dir("c1/upper"),
        "--work",
        &dir("c1/work"),
        "--api",
        api.to_str().unwrap(),
    ]);
    let m = std::fs::metadata(&session).unwrap();
    assert_eq!((m.mode() & 0o777, m.gid()), (0o660, nogroup));
    assert!(may_write(&session, "nogroup"));
    assert!(!may_write(&session, "12345"));
    let (clean, _) = d.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(clean);

    // `strata serve` binds its sockets the same way.
    let sock = run.join("vm.sock");
    let mut argv: Vec<std::ffi::OsString> = vec![
        crate::strata().path().into(),
        "serve".into(),
        "--socket".into(),
        sock.clone().into(),
        "--socket-mode".into(),
        "660".into(),
        "--socket-group".into(),
        "nogroup".into(),
    ];
    for (flag, dir) in [
        ("--lower", "l0"),
        ("--upper", "c2/upper"),
        ("--work", "c2/work"),
    ] {
        argv.extend([flag.into(), t.path().join(dir).into()]);
    }
    let mut serve = ServeProcess::spawn_argv(
        &argv,
        std::slice::from_ref(&sock),
        None,
        &t.path().join("serve.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let m = std::fs::metadata(&sock).unwrap();
    assert_eq!((m.mode() & 0o777, m.gid()), (0o660, nogroup));
    assert!(
        may_write(&sock, "nogroup"),
        "a member of the group cannot connect"
    );
    assert!(
        !may_write(&sock, "12345"),
        "a user of another group can connect"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(serve
        .wait_exit(Duration::from_secs(10))
        .expect("serve stops on SIGTERM")
        .success());
}

/// On a kernel without Landlock the daemon refuses to start, and starts with
/// `--allow-no-landlock`. This kernel has Landlock, so the test takes it away from a child of
/// its own: a seccomp filter makes every `landlock_*` syscall fail with ENOSYS (what a kernel
/// built without it answers), inherited by the daemons that child starts.
#[test]
fn without_landlock_the_daemon_refuses_unless_told() {
    // The full test path: the child is this test binary run with `--exact NAME`.
    const NAME: &str = "ops::without_landlock_the_daemon_refuses_unless_told";
    if let Some(dir) = strata_harness::child::arg(NAME) {
        return daemon_without_landlock(std::path::Path::new(&dir));
    }
    if !strata_harness::needs(NAME, true, &[]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    strata_harness::child::run(NAME, t.path());
}

fn daemon_without_landlock(dir: &std::path::Path) {
    use seccompiler::{SeccompAction, SeccompFilter, TargetArch};
    let rules = [
        libc::SYS_landlock_create_ruleset,
        libc::SYS_landlock_add_rule,
        libc::SYS_landlock_restrict_self,
    ]
    .into_iter()
    .map(|nr| (nr, vec![]))
    .collect();
    let filter: seccompiler::BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .unwrap()
    .try_into()
    .unwrap();
    seccompiler::apply_filter(&filter).unwrap();

    let daemon = |extra: &[&str]| {
        let notify = dir.join(format!("notify{}", extra.len()));
        let manager = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let child = crate::strata()
            .cmd()
            .env("NOTIFY_SOCKET", &notify)
            .env("STRATA_CONFIG", "")
            .args(["daemon", "--api"])
            .arg(dir.join("run/api.sock"))
            .arg("--store")
            .arg(dir.join("store"))
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (child, manager)
    };
    let (refused, _m) = daemon(&[]);
    let out = refused.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without Landlock: {err}");
    assert!(
        err.contains("Landlock") && err.contains("--allow-no-landlock"),
        "{err}"
    );
    assert!(
        !dir.join("run/api.sock").exists(),
        "a refused daemon bound its API"
    );

    let (mut started, manager) = daemon(&["--allow-no-landlock"]);
    let mut buf = [0u8; 256];
    let ready = manager.recv(&mut buf);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(started.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = started.wait().unwrap();
    let mut err = String::new();
    if let Some(mut e) = started.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let n = ready.unwrap_or_else(|e| panic!("no READY=1 with --allow-no-landlock ({e}): {err}"));
    assert!(buf[..n].starts_with(b"READY=1"), "{err}");
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.contains("Landlock"),
        "the log does not say Landlock is off: {err}"
    );
    println!("CHILD-OK");
}
