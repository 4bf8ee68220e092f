//! `strata run` and `strata initramfs` refusals: usage errors exit 64 (clap), everything that
//! stops `strata run` before the container runs exits 125 (as `docker run`) with a message
//! and leaves no rootfs behind. The runs themselves boot VMs: tests/vm/run.rs.

use std::path::Path;

use crate::image::common::{self, Comp, RawTar};
use strata_harness::Run;

fn strata(args: &[&str]) -> Run {
    crate::strata().run(args)
}

fn containers(store: &Path) -> usize {
    std::fs::read_dir(store.join("containers")).map_or(0, |d| d.count())
}

#[test]
fn run_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("store");
    let st = st.to_str().unwrap();
    let o = strata(&["run"]);
    assert_eq!(o.code(), Some(64), "{}", o.text());
    let o = strata(&["run", "--accel", "warp", "img"]);
    assert_eq!(o.code(), Some(64), "{}", o.text());
    assert!(o.text().contains("auto, kvm or tcg"), "{}", o.text());
    let o = strata(&["initramfs"]);
    assert_eq!(o.code(), Some(64), "{}", o.text());
    let o = strata(&["run", "--store", st, "nope", "--", "true"]);
    assert_eq!(o.code(), Some(125), "{}", o.text());
    assert!(
        o.stderr.contains("strata run:") && o.stderr.contains("nope"),
        "{}",
        o.text()
    );
    assert!(!Path::new(st).exists(), "a failed run created the store");
}

#[test]
fn run_refuses_before_booting() {
    // Importing writes layer dirs with their owners: root.
    if !strata_harness::needs("run_refuses_before_booting", true, &[]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let st = store.to_str().unwrap();
    let layout = tmp.path().join("img");
    let tar = RawTar::default().dir("bin/").file("bin/x", b"x").finish();
    common::oci_layout(&layout, &[tar], Comp::Gzip, "img:1");
    crate::strata().ok(["image", "import", layout.to_str().unwrap(), "--store", st]);
    let o = strata(&["image", "inspect", "img:1", "--store", st]);
    assert!(o.stdout.contains("platform: linux/amd64"), "{}", o.text());
    assert!(o.stdout.contains("cmd: (none)"), "{}", o.text());

    for (args, says) in [
        (&["img:1"][..], "no Entrypoint or Cmd"),
        (&["-e", "=x", "img:1", "--", "true"][..], "has no name"),
        (
            &["-w", "relative", "img:1", "--", "true"][..],
            "working directory",
        ),
        (&["-u", "a:b:c", "img:1", "--", "true"][..], "user"),
        (
            &["--tmpfs", "rel", "img:1", "--", "true"][..],
            "mount destination",
        ),
    ] {
        let mut a = vec!["run", "--store", st];
        a.extend_from_slice(args);
        let o = strata(&a);
        assert_eq!(o.code(), Some(125), "{args:?}: {}", o.text());
        assert!(o.stderr.contains(says), "{args:?}: {}", o.text());
    }

    // An image recorded by an older strata (no config): said, not guessed.
    let images = store.join("images");
    let rec = std::fs::read_dir(&images)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&rec).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("config");
    std::fs::write(&rec, serde_json::to_vec(&v).unwrap()).unwrap();
    let o = strata(&["run", "--store", st, "img:1"]);
    assert_eq!(o.code(), Some(125), "{}", o.text());
    assert!(o.stderr.contains("older strata"), "{}", o.text());
    let o = strata(&["image", "inspect", "img:1", "--store", st]);
    assert!(o.ok() && o.stdout.contains("not kept"), "{}", o.text());
    assert_eq!(containers(&store), 0);
}
