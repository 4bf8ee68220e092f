//! Images, container rootfs records and gc; concurrent imports.

mod common;

use std::fs;

use common::{Comp, RawTar};
use strata_store::{ImportOptions, Store, StoreError};

fn named(n: &str) -> ImportOptions {
    ImportOptions {
        name: Some(n.into()),
        ..Default::default()
    }
}

#[test]
fn ls_inspect_rm_rootfs_gc() {
    if !strata_harness::needs("ls_inspect_rm_rootfs_gc", true, &[]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = Store::open(tmp.path().join("store")).unwrap();
    let base = RawTar::default()
        .dir("etc/")
        .file("etc/base", b"base")
        .finish();
    let top_a = RawTar::default().file("a", b"a").finish();
    let top_b = RawTar::default().file("b", b"b").finish();
    common::oci_layout(
        &tmp.path().join("a"),
        &[base.clone(), top_a],
        Comp::Gzip,
        "x",
    );
    common::oci_layout(&tmp.path().join("b"), &[base, top_b], Comp::Zstd, "y");
    let a = s
        .import(&tmp.path().join("a"), &named("reg.example/app:a"))
        .unwrap();
    let b = s
        .import(&tmp.path().join("b"), &ImportOptions::default())
        .unwrap();
    assert_eq!(b.image.name, "y");
    assert_eq!((b.unpacked, b.reused), (1, 1));

    let names: Vec<String> = s.images().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["reg.example/app:a", "y"]);
    // The short reference finds the normalised name.
    assert_eq!(s.image("y").unwrap(), b.image);
    // A second name for the same image: rm by digest would have to pick one, so it refuses.
    let b2 = s.import(&tmp.path().join("b"), &named("y2")).unwrap();
    let e = s.remove_image(&b2.image.config_digest).unwrap_err();
    assert!(matches!(e, StoreError::Ambiguous { .. }), "{e}");
    s.remove_image("y2").unwrap();
    let ia = s.image("reg.example/app:a").unwrap();
    assert_eq!(ia, a.image);
    // Also by manifest digest.
    assert_eq!(s.image(ia.manifest_digest.as_deref().unwrap()).unwrap(), ia);
    assert!(matches!(s.image("nope"), Err(StoreError::ImageNotFound(_))));
    // Layers bottom-first, each a directory in the store.
    assert_eq!(ia.layers.len(), 2);
    assert!(ia.layers[0].path.join("etc/base").is_file());
    assert!(ia.layers[1].path.join("a").is_file());

    // A rootfs lists the layers topmost-first.
    let r = s.create_rootfs("reg.example/app:a", "c1").unwrap();
    assert_eq!(
        r.lowers,
        vec![ia.layers[1].path.clone(), ia.layers[0].path.clone()]
    );
    assert!(r.upper.is_dir() && r.work.is_dir());
    // Only the owner reaches the upper (device nodes and set-id files a guest makes live there).
    let ctr = r.upper.parent().unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(ctr).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "{}", ctr.display());
    assert_eq!(s.rootfs("c1").unwrap(), r);
    assert!(matches!(
        s.create_rootfs("reg.example/app:a", "c1"),
        Err(StoreError::RootfsExists(_))
    ));
    assert!(matches!(
        s.create_rootfs("y", "../x"),
        Err(StoreError::BadId(_))
    ));

    // rm image a: its layers stay while container c1 uses them.
    s.remove_image("reg.example/app:a").unwrap();
    let g = s.gc().unwrap();
    assert!(g.layers_removed.is_empty(), "{g:?}");
    assert!(r.lowers.iter().all(|l| l.is_dir()));
    // rm c1: a's top layer goes, the shared base stays (image y).
    s.remove_rootfs("c1", false).unwrap();
    assert!(matches!(s.rootfs("c1"), Err(StoreError::RootfsNotFound(_))));
    let g = s.gc().unwrap();
    assert_eq!(g.layers_removed, vec![ia.layers[1].diff_id.clone()]);
    assert!(ia.layers[0].path.is_dir());
    s.remove_image("y").unwrap();
    assert_eq!(s.gc().unwrap().layers_removed.len(), 2);
    assert_eq!(
        fs::read_dir(s.root().join("layers/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn gc_removes_leftovers_of_a_crashed_import() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Store::open(tmp.path().join("store")).unwrap();
    fs::create_dir_all(s.root().join("tmp/import-crashed/abc/deep")).unwrap();
    let g = s.gc().unwrap();
    assert_eq!(g.tmp_removed, 1);
    assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn concurrent_imports_of_the_same_layers() {
    if !strata_harness::needs("concurrent_imports_of_the_same_layers", true, &[]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = Store::open(tmp.path().join("store")).unwrap();
    let mut t = RawTar::default().dir("d/");
    for i in 0..500 {
        t = t.file(&format!("d/f{i}"), format!("{i}").as_bytes());
    }
    let tar = t.finish();
    let other = RawTar::default().file("x", b"x").finish();
    common::oci_layout(&tmp.path().join("l"), &[tar, other], Comp::Gzip, "x");
    let reports: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let s = s.clone();
                let l = tmp.path().join("l");
                sc.spawn(move || s.import(&l, &named(&format!("img{i}"))).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every import succeeded; each layer is in the store once, whole.
    assert_eq!(
        fs::read_dir(s.root().join("layers/sha256"))
            .unwrap()
            .count(),
        2
    );
    let unpacked: usize = reports.iter().map(|r| r.unpacked).sum();
    assert_eq!(unpacked, 2, "each layer becomes visible exactly once");
    let layer = &reports[0].image.layers[0].path;
    assert_eq!(fs::read_dir(layer.join("d")).unwrap().count(), 500);
    assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    assert_eq!(s.images().unwrap().len(), 4);
}
