//! `strata image import/ls/inspect/rm`, `strata rootfs create/rm`, `strata gc` and
//! `strata serve --rootfs` through the binary.

#[path = "../../store/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Comp, RawTar};

fn strata(args: &[&str], store: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .arg("--store")
        .arg(store)
        .output()
        .unwrap()
}

/// A child process killed if the test panics before it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn image_rootfs_serve_gc_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("store");
    let good = tmp.path().join("good");
    let tar = RawTar::default()
        .dir("bin/")
        .file("bin/hello", b"hi")
        .finish();
    common::oci_layout(&good, &[tar], Comp::Gzip, "good:1");

    let o = strata(&["image", "import", good.to_str().unwrap()], &st);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("imported good:1"), "{}", text(&o));

    let o = strata(&["image", "ls"], &st);
    assert!(
        o.status.success() && text(&o).contains("good:1"),
        "{}",
        text(&o)
    );
    let o = strata(&["image", "inspect", "good:1", "--json"], &st);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
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
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
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
    assert!(o.status.success(), "{}", text(&o));
    let sock = tmp.path().join("c1.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--rootfs", "c1", "--socket"])
        .arg(&sock)
        .arg("--store")
        .arg(&st)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sock.exists(), "serve --rootfs did not listen");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());

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
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("nope"), "{}", text(&o));

    // The same rootfs as a session of `strata daemon`, which resolves store ids itself.
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let api = run.join("api.sock");
    let mut daemon = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["daemon", "--api"])
            .arg(&api)
            .arg("--store")
            .arg(&st)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&api).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "strata daemon did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(args)
            .arg("--api")
            .arg(&api)
            .output()
            .unwrap()
    };
    let csock = run.join("c1.sock");
    let o = client(&["rootfs", "start", "c1", "--socket", csock.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
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
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("nope") && text(&o).contains("rootfs create"),
        "{}",
        text(&o)
    );
    let o = client(&["rootfs", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sessions"][0]["id"], "c1", "{v}");
    let o = client(&["rootfs", "stop", "c1"]);
    assert!(
        o.status.success() && text(&o).contains("ended"),
        "{}",
        text(&o)
    );
    assert!(!csock.exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.0.wait().unwrap().success());
    assert!(!api.exists());

    // rm image: the layer stays while c1 uses it; after rootfs rm, gc removes it.
    assert!(strata(&["image", "rm", "good:1"], &st).status.success());
    let o = strata(&["gc"], &st);
    assert!(text(&o).contains("0 layers removed"), "{}", text(&o));
    assert!(layer.is_dir());
    assert!(strata(&["rootfs", "rm", "c1"], &st).status.success());
    let o = strata(&["gc"], &st);
    assert!(text(&o).contains("1 layers removed"), "{}", text(&o));
    assert!(!layer.exists());
}
