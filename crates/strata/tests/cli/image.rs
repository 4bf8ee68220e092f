//! `strata image import/ls/inspect/rm`, `strata rootfs create/rm`, `strata gc` and
//! `strata serve --rootfs` through the binary.

#[path = "../../../store/tests/common/mod.rs"]
pub(crate) mod common;

use std::path::Path;
use std::time::Duration;

use common::{Comp, RawTar};
use strata_harness::session::{DaemonProcess, ServeProcess};
use strata_harness::Run;

/// `strata ARGS… --store STORE`.
fn strata(args: &[&str], store: &Path) -> Run {
    let mut a: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    a.extend(["--store".as_ref(), store.as_os_str()]);
    crate::strata().run(a)
}

fn text(r: &Run) -> String {
    r.text()
}

#[test]
fn image_rootfs_serve_gc_round_trip() {
    if !strata_harness::needs("image_rootfs_serve_gc_round_trip", true, &[]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("store");
    let good = tmp.path().join("good");
    let tar = RawTar::default()
        .dir("bin/")
        .file("bin/hello", b"hi")
        .finish();
    common::oci_layout(&good, &[tar], Comp::Gzip, "good:1");

    let o = strata(&["image", "import", good.to_str().unwrap()], &st);
    assert!(o.ok(), "{}", text(&o));
    // Stored under the normalised reference; found by the short one, the full one and the
    // IMAGE ID (a config digest prefix).
    assert!(
        text(&o).contains("imported docker.io/library/good:1"),
        "{}",
        text(&o)
    );
    for r in ["good:1", "docker.io/library/good:1", "library/good:1"] {
        let o = strata(&["image", "inspect", r, "--json"], &st);
        assert!(o.ok(), "{r}: {}", text(&o));
    }
    let o = strata(&["image", "inspect", "good:1", "--json"], &st);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let id = &v["config_digest"].as_str().unwrap()["sha256:".len()..][..8];
    assert!(strata(&["image", "inspect", id], &st).ok());
    let o = strata(&["image", "inspect", "good"], &st);
    assert_eq!(o.code(), Some(3), "good is good:latest: {}", text(&o));
    let o = strata(
        &[
            "image",
            "import",
            good.to_str().unwrap(),
            "--name",
            "Bad Name",
        ],
        &st,
    );
    assert_eq!(o.code(), Some(2), "{}", text(&o));

    let o = strata(&["image", "ls"], &st);
    assert!(o.ok() && text(&o).contains("good:1"), "{}", text(&o));
    let o = strata(&["image", "inspect", "good:1", "--json"], &st);
    assert!(o.ok(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let layer = Path::new(v["layers"][0]["path"].as_str().unwrap()).to_owned();
    assert!(layer.join("bin/hello").is_file());
    assert!(v["layers"][0]["diff_id"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));

    // A hostile image: refused, exit 1, the entry and the rule named, the store unchanged.
    let before = common::listing(&st);
    let bad = tmp.path().join("bad");
    common::oci_layout(
        &bad,
        &[RawTar::default().file("../../evil", b"x").finish()],
        Comp::Gzip,
        "bad",
    );
    let o = strata(&["image", "import", bad.to_str().unwrap()], &st);
    assert_eq!(o.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("\"../../evil\"") && text(&o).contains("'..'"),
        "{}",
        text(&o)
    );
    assert_eq!(common::listing(&st), before);

    // A rootfs, served by id.
    let o = strata(
        &["rootfs", "create", "--image", "good:1", "--id", "c1"],
        &st,
    );
    assert!(o.ok(), "{}", text(&o));
    let sock = tmp.path().join("c1.sock");
    let serve_args = ["serve", "--rootfs", "c1", "--socket"].map(std::ffi::OsString::from);
    let mut argv = vec![crate::strata().path().as_os_str().to_owned()];
    argv.extend(serve_args);
    argv.extend([sock.clone().into(), "--store".into(), st.clone().into()]);
    let mut serve = ServeProcess::spawn_argv(
        &argv,
        std::slice::from_ref(&sock),
        None,
        &tmp.path().join("serve.log"),
    )
    .unwrap_or_else(|e| panic!("serve --rootfs: {e}"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st_serve = serve.wait_exit(Duration::from_secs(20));
    assert!(
        st_serve.is_some_and(|s| s.success()),
        "{}",
        serve.log_text()
    );

    let o = strata(
        &[
            "serve",
            "--rootfs",
            "nope",
            "--socket",
            sock.to_str().unwrap(),
        ],
        &st,
    );
    // Not found: exit 3, as for images and daemon sessions; an existing id: 4.
    assert_eq!(o.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("nope"), "{}", text(&o));
    let o = strata(&["image", "inspect", "nope"], &st);
    assert_eq!(o.code(), Some(3), "{}", text(&o));
    let o = strata(
        &["rootfs", "create", "--image", "good:1", "--id", "c1"],
        &st,
    );
    assert_eq!(o.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("already exists"), "{}", text(&o));

    // The same rootfs as a session of `strata daemon`, which resolves store ids itself.
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let api = run.join("api.sock");
    let daemon = DaemonProcess::spawn(
        crate::strata().path(),
        &api,
        &["--store".as_ref(), st.as_os_str()],
        None,
        &tmp.path().join("daemon.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let client = |args: &[&str]| {
        let mut a: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        a.extend(["--api".as_ref(), api.as_os_str()]);
        crate::strata().run(a)
    };
    let csock = run.join("c1.sock");
    let o = client(&["rootfs", "start", "c1", "--socket", csock.to_str().unwrap()]);
    assert!(o.ok(), "{}", text(&o));
    assert!(
        text(&o).contains("listening") && text(&o).contains("layers=1"),
        "{}",
        text(&o)
    );
    assert!(csock.exists());
    let o = client(&[
        "rootfs",
        "start",
        "nope",
        "--socket",
        run.join("n.sock").to_str().unwrap(),
    ]);
    assert_eq!(o.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("nope") && text(&o).contains("rootfs create"),
        "{}",
        text(&o)
    );
    let o = client(&["rootfs", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["sessions"][0]["id"], "c1", "{v}");
    let o = client(&["rootfs", "stop", "c1"]);
    assert!(o.ok() && text(&o).contains("ended"), "{}", text(&o));
    assert!(!csock.exists());
    let log = daemon.log_text();
    let (clean, _) = daemon.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(clean, "strata daemon did not exit 0 on SIGTERM:\n{log}");
    assert!(!api.exists());

    // rm image: the layer stays while c1 uses it; after rootfs rm, gc removes it.
    assert!(strata(&["image", "rm", "good:1"], &st).ok());
    let o = strata(&["gc"], &st);
    assert!(text(&o).contains("0 layers removed"), "{}", text(&o));
    assert!(layer.is_dir());
    assert!(strata(&["rootfs", "rm", "c1"], &st).ok());
    let o = strata(&["gc"], &st);
    assert!(text(&o).contains("1 layers removed"), "{}", text(&o));
    assert!(!layer.exists());
}

/// One rootfs, one VM: while `serve` or a daemon session serves a rootfs, a second `serve`, a
/// session in any daemon and `rootfs rm` are refused (exit 2) and `rootfs ls` names the pid;
/// the lock goes with the server.
#[test]
fn a_served_rootfs_is_exclusive() {
    if !strata_harness::needs("a_served_rootfs_is_exclusive", true, &[]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("store");
    let img = tmp.path().join("img");
    let tar = RawTar::default().file("hello", b"hi").finish();
    common::oci_layout(&img, &[tar], Comp::Gzip, "img:1");
    assert!(strata(&["image", "import", img.to_str().unwrap()], &st).ok());
    let o = strata(&["rootfs", "create", "--image", "img:1", "--id", "c1"], &st);
    assert!(o.ok(), "{}", text(&o));
    let o = strata(&["rootfs", "ls", "--json"], &st);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v[0]["state"], "idle", "{v}");

    let serve_argv = |sock: &Path| -> Vec<std::ffi::OsString> {
        vec![
            crate::strata().path().into(),
            "serve".into(),
            "--rootfs".into(),
            "c1".into(),
            "--socket".into(),
            sock.into(),
            "--store".into(),
            st.clone().into(),
        ]
    };
    let s1 = tmp.path().join("s1.sock");
    let mut first = ServeProcess::spawn_argv(
        &serve_argv(&s1),
        std::slice::from_ref(&s1),
        None,
        &tmp.path().join("s1.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let pid = first.pid();

    // serve + serve.
    let s2 = tmp.path().join("s2.sock");
    let o = strata(
        &["serve", "--rootfs", "c1", "--socket", s2.to_str().unwrap()],
        &st,
    );
    assert_eq!(o.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("already being served"), "{}", text(&o));
    assert!(!s2.exists(), "the refused server left its socket");
    // ls names the holder; rm is refused, the rootfs untouched.
    let o = strata(&["rootfs", "ls", "--json"], &st);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        (v[0]["state"].as_str(), v[0]["pid"].as_u64()),
        (Some("served"), Some(pid as u64)),
        "{v}"
    );
    let o = strata(&["rootfs", "rm", "c1"], &st);
    assert_eq!(o.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains(&format!("pid {pid}")), "{}", text(&o));
    assert!(st.join("containers/c1/upper").is_dir());

    // serve + daemon.
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let daemon = |name: &str| {
        let api = run.join(format!("{name}.sock"));
        let d = DaemonProcess::spawn(
            crate::strata().path(),
            &api,
            &["--store".as_ref(), st.as_os_str()],
            None,
            &tmp.path().join(format!("{name}.log")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (d, api)
    };
    let start = |api: &Path, sock: &str| {
        crate::strata().run([
            "rootfs".as_ref(),
            "start".as_ref(),
            "c1".as_ref(),
            "--socket".as_ref(),
            run.join(sock).as_os_str(),
            "--api".as_ref(),
            api.as_os_str(),
        ])
    };
    let (d1, api1) = daemon("d1");
    let o = start(&api1, "c1-a.sock");
    assert_eq!(o.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("already being served"), "{}", text(&o));

    // The lock goes with the server: then daemon + serve and daemon + daemon are refused.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(first
        .wait_exit(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    let o = start(&api1, "c1-a.sock");
    assert!(o.ok(), "{}", text(&o));
    let o = strata(
        &["serve", "--rootfs", "c1", "--socket", s2.to_str().unwrap()],
        &st,
    );
    assert_eq!(o.code(), Some(2), "{}", text(&o));
    let (d2, api2) = daemon("d2");
    let o = start(&api2, "c1-b.sock");
    assert_eq!(o.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("already being served"), "{}", text(&o));
    for d in [d1, d2] {
        let (clean, _) = d.stop().unwrap_or_else(|e| panic!("{e}"));
        assert!(clean);
    }
    // Nobody serves it any more: rm works.
    let o = strata(&["rootfs", "rm", "c1"], &st);
    assert!(o.ok(), "{}", text(&o));
}

/// Bad sources get messages that say what is wrong, never the file's own bytes: a text file,
/// a truncated OCI archive.
#[test]
fn bad_sources_are_named_not_echoed() {
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("store");
    let text_file = tmp.path().join("passwd");
    std::fs::write(
        &text_file,
        "root:x:0:0:secret-content:/root:/bin/bash\n".repeat(20),
    )
    .unwrap();
    let o = strata(&["image", "import", text_file.to_str().unwrap()], &st);
    assert_eq!(o.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a tar archive"), "{}", text(&o));
    assert!(!text(&o).contains("secret-content"), "{}", text(&o));

    let layout = tmp.path().join("layout");
    let tar = RawTar::default().file("hello", &[7u8; 4096]).finish();
    common::oci_layout(&layout, &[tar], Comp::Gzip, "t:1");
    let mut b = ::tar::Builder::new(Vec::new());
    b.append_dir_all(".", &layout).unwrap();
    let full = b.into_inner().unwrap();
    let cut = tmp.path().join("cut.tar");
    std::fs::write(&cut, &full[..full.len() / 2 + 100]).unwrap();
    let o = strata(&["image", "import", cut.to_str().unwrap()], &st);
    assert_eq!(o.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("truncated"), "{}", text(&o));
}

/// Sources as skopeo spells them (`oci:DIR:REF`, `oci-archive:FILE`), and `-` for an archive
/// on standard input; a transport that does not match the path is refused before anything.
#[test]
fn transports_and_stdin() {
    if !strata_harness::needs("transports_and_stdin", true, &[]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("store");
    let layout = tmp.path().join("layout");
    common::oci_layout(
        &layout,
        &[RawTar::default().file("f", b"x").finish()],
        Comp::Gzip,
        "app:2",
    );
    let src = format!("oci:{}:app:2", layout.display());
    let o = strata(&["image", "import", &src, "--name", "ex/app:2"], &st);
    assert!(o.ok(), "{}", text(&o));
    assert!(text(&o).contains("docker.io/ex/app:2"), "{}", text(&o));
    let o = strata(
        &[
            "image",
            "import",
            &format!("oci-archive:{}", layout.display()),
        ],
        &st,
    );
    assert_eq!(o.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("oci:DIR"), "{}", text(&o));
    let o = strata(&["image", "import", "docker://debian"], &st);
    assert_eq!(o.code(), Some(2), "{}", text(&o));

    let mut b = ::tar::Builder::new(Vec::new());
    b.append_dir_all(".", &layout).unwrap();
    let archive = b.into_inner().unwrap();
    let mut child = crate::strata()
        .cmd()
        .args(["image", "import", "-", "--name", "piped", "--store"])
        .arg(&st)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &archive).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(strata(&["image", "inspect", "piped"], &st).ok());
    // The spool file is gone.
    assert_eq!(std::fs::read_dir(st.join("tmp")).unwrap().count(), 0);
}

/// A member the importing user may not read is reported as such, not as missing.
#[test]
fn an_unreadable_source_says_permission_denied() {
    if !strata_harness::needs(
        "an_unreadable_source_says_permission_denied",
        true,
        &["setpriv"],
    ) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = tmp.path().join("layout");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("index.json"), "{}").unwrap();
    std::fs::set_permissions(
        src.join("index.json"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let home = tmp.path().join("nobody");
    std::fs::create_dir(&home).unwrap();
    nix::unistd::chown(&home, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(crate::strata().path())
        .args(["image", "import"])
        .arg(&src)
        .arg("--store")
        .arg(home.join("store"))
        .env("STRATA_CONFIG", "")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("Permission denied") && !err.contains("missing"),
        "{err}"
    );
}

/// `image import --erofs` builds the merged EROFS image of the layers once (a second import
/// reuses it), `gc` keeps it while the image or a rootfs has that layer stack and removes it
/// after.
#[test]
fn erofs_images_are_built_once_and_collected() {
    if !strata_harness::needs(
        "erofs_images_are_built_once_and_collected",
        true,
        &["mkfs.erofs", "dump.erofs"],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("store");
    let img = tmp.path().join("img");
    let l0 = RawTar::default()
        .dir("d/")
        .file("d/gone", b"x")
        .file("d/keep", b"k")
        .finish();
    let l1 = RawTar::default()
        .dir("d/")
        .file("d/.wh.gone", b"")
        .file("d/new", b"n")
        .finish();
    common::oci_layout(&img, &[l0, l1], Comp::Gzip, "img:1");
    let o = strata(&["image", "import", "--erofs", img.to_str().unwrap()], &st);
    assert!(o.ok() && text(&o).contains("built in"), "{}", text(&o));
    let images: Vec<_> = std::fs::read_dir(st.join("erofs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(images.len(), 1);
    // The whiteout is applied: the merged lower has keep and new, not gone.
    let ls = std::process::Command::new("dump.erofs")
        .arg("--path=/lower/d")
        .arg("--ls")
        .arg(&images[0])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(
        listing.contains("keep") && listing.contains("new") && !listing.contains("gone"),
        "{listing}"
    );
    let o = strata(&["image", "import", "--erofs", img.to_str().unwrap()], &st);
    // The build left the layers as they were sealed: the second import reuses both.
    assert!(
        text(&o).contains("already built") && text(&o).contains("2 already in the store"),
        "{}",
        text(&o)
    );
    assert!(strata(&["rootfs", "create", "--image", "img:1", "--id", "c1"], &st).ok());
    assert!(strata(&["image", "rm", "img:1"], &st).ok());
    let o = strata(&["gc"], &st);
    assert!(!text(&o).contains("EROFS"), "{}", text(&o));
    assert!(images[0].exists());
    assert!(strata(&["rootfs", "rm", "c1"], &st).ok());
    let o = strata(&["gc"], &st);
    assert!(text(&o).contains("removed EROFS image"), "{}", text(&o));
    assert!(!images[0].exists());
}

/// A registry of the test's own (Debian's docker-registry, on loopback) holding `test/bb:1`
/// pushed by skopeo from an OCI layout; stopped when dropped.
struct Registry {
    child: std::process::Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        // A port the kernel just handed out and took back: free unless something grabs it in
        // between, which the wait below would notice.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("registry").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let mut r = Registry { child, addr };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&r.addr).is_err() {
            assert!(
                r.child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline,
                "docker-registry did not listen on {}: {}",
                r.addr,
                std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// `skopeo copy` the OCI layout `layout` (tag `tag`) to `REGISTRY/name`.
    fn push(&self, layout: &Path, tag: &str, name: &str) {
        let st = std::process::Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}", self.addr))
            .status()
            .unwrap();
        assert!(st.success(), "skopeo push of {name}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `strata image pull` from a real registry (on loopback): the image arrives under its
/// normalised reference with its config, a second pull reuses every layer, a missing image is
/// "not found" (exit 3), and a registry without TLS needs --insecure.
#[test]
fn pull_from_a_registry() {
    if !strata_harness::needs(
        "pull_from_a_registry",
        true,
        &["docker-registry", "skopeo", "umoci"],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("store");
    let layout = tmp.path().join("layout");
    let tar = RawTar::default()
        .dir("bin/")
        .file("bin/hello", b"hi from the registry")
        .finish();
    common::oci_layout(&layout, &[tar], Comp::Gzip, "1");
    let umoci = |args: &[&str]| {
        let ok = std::process::Command::new("umoci")
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "umoci {args:?}");
    };
    let image = format!("{}:1", layout.display());
    umoci(&[
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/hello",
        "--config.env",
        "FROM=registry",
    ]);
    let reg = Registry::start(tmp.path());
    reg.push(&layout, "1", "test/bb:1");
    let reference = format!("{}/test/bb:1", reg.addr);

    let o = strata(&["image", "pull", &reference], &st);
    assert!(!o.ok(), "pulled over plain HTTP without --insecure");
    assert!(text(&o).contains("--insecure"), "{}", text(&o));

    let o = strata(&["image", "pull", "--insecure", &reference], &st);
    assert!(o.ok(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("imported {reference}")),
        "{}",
        text(&o)
    );
    let o = strata(&["image", "inspect", &reference, "--json"], &st);
    assert!(o.ok(), "{}", text(&o));
    assert!(o.stdout.contains("FROM=registry"), "{}", o.stdout);
    let layer = st.join("layers/sha256");
    let hello = std::fs::read_dir(&layer)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("bin/hello"))
        .find(|p| p.exists())
        .expect("the layer is in the store");
    assert_eq!(std::fs::read(hello).unwrap(), b"hi from the registry");

    let o = strata(&["image", "pull", "--insecure", &reference], &st);
    assert!(o.ok(), "{}", text(&o));
    assert!(text(&o).contains("1 already in the store"), "{}", text(&o));

    let o = strata(
        &[
            "image",
            "pull",
            "--insecure",
            &format!("{}/test/nope:1", reg.addr),
        ],
        &st,
    );
    assert_eq!(o.code(), Some(3), "{}", text(&o));
    // Nothing staged is left behind.
    assert_eq!(std::fs::read_dir(st.join("tmp")).unwrap().count(), 0);
}
