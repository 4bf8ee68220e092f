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

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn store_dirs_are_private_and_repaired_at_open() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let s = Store::open(&root).unwrap();
    assert_eq!(mode(&root), 0o711);
    for d in ["layers", "layers/sha256", "images", "containers", "tmp"] {
        assert_eq!(mode(&root.join(d)), 0o700, "{d}");
    }
    // A store left open to everyone (as before this check existed): readers refuse it,
    // writers narrow it.
    fs::set_permissions(root.join("containers"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
    let e = Store::open_existing(&root).unwrap_err();
    assert!(matches!(e, StoreError::Insecure { .. }), "{e}");
    assert!(matches!(
        Store::find(&root),
        Err(StoreError::Insecure { .. })
    ));
    Store::open(&root).unwrap();
    assert_eq!(mode(&root), 0o711);
    assert_eq!(mode(&root.join("containers")), 0o700);
    Store::open_existing(&root).unwrap();
    // A symlink in place of a store directory is refused, never followed.
    fs::rename(root.join("images"), tmp.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("elsewhere"), root.join("images")).unwrap();
    assert!(Store::open(&root).is_err());
    drop(s);
}

#[test]
fn store_owned_by_another_user_is_refused() {
    if !strata_harness::needs("store_owned_by_another_user_is_refused", true, &[]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    Store::open(&root).unwrap();
    std::os::unix::fs::chown(root.join("layers"), Some(65534), None).unwrap();
    let e = Store::open(&root).unwrap_err().to_string();
    assert!(e.contains("owned by uid 65534"), "{e}");
    assert!(Store::open_existing(&root).is_err());
}

#[test]
fn changed_or_unsealed_layers_are_unpacked_again() {
    if !strata_harness::needs("changed_or_unsealed_layers_are_unpacked_again", true, &[]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = Store::open(tmp.path().join("store")).unwrap();
    let layer = RawTar::default()
        .dir("bin/")
        .file("bin/tool", b"genuine")
        .finish();
    common::oci_layout(&tmp.path().join("l"), &[layer], Comp::Gzip, "x");
    let first = s.import(&tmp.path().join("l"), &named("a")).unwrap();
    assert_eq!((first.unpacked, first.reused), (1, 0));
    let tool = first.image.layers[0].path.join("bin/tool");
    // The same image again: the layer is intact and reused.
    let again = s.import(&tmp.path().join("l"), &named("a")).unwrap();
    assert_eq!((again.unpacked, again.reused), (0, 1));
    // Rewritten in place (what a local user could do when layers were world-reachable, with
    // the same size and mtime): a later import of the same diff_id unpacks it again.
    let mtime = fs::metadata(&tool).unwrap().modified().unwrap();
    fs::write(&tool, b"evil!!!").unwrap();
    fs::File::options()
        .write(true)
        .open(&tool)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let r = s.import(&tmp.path().join("l"), &named("a")).unwrap();
    assert_eq!((r.unpacked, r.reused), (1, 0));
    assert_eq!(fs::read(&tool).unwrap(), b"genuine");
    // A layer without a seal (unpacked before seals existed) is not trusted either.
    let hex = first.image.layers[0].diff_id.trim_start_matches("sha256:");
    fs::remove_file(s.root().join("layers/sealed").join(hex)).unwrap();
    let r = s.import(&tmp.path().join("l"), &named("a")).unwrap();
    assert_eq!((r.unpacked, r.reused), (1, 0));
    let r = s.import(&tmp.path().join("l"), &named("a")).unwrap();
    assert_eq!((r.unpacked, r.reused), (0, 1));
    // gc leaves nothing of the replaced copies behind.
    s.gc().unwrap();
    assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn deep_upper_is_removed_and_gc_goes_on_past_a_failure() {
    if !strata_harness::needs(
        "deep_upper_is_removed_and_gc_goes_on_past_a_failure",
        true,
        &["chattr"],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = Store::open(tmp.path().join("store")).unwrap();
    common::oci_layout(
        &tmp.path().join("l"),
        &[RawTar::default().file("a", b"a").finish()],
        Comp::Gzip,
        "x",
    );
    s.import(&tmp.path().join("l"), &named("a")).unwrap();
    let r = s.create_rootfs("a", "deep").unwrap();
    assert_eq!(mode(&s.root().join("containers/deep")), 0o700);
    // 20,000 levels, as a guest can make them: far beyond PATH_MAX, and beyond what a
    // recursive removal with one fd per level could hold open.
    let mut dir = fs::File::open(&r.upper).unwrap();
    for _ in 0..20_000 {
        let next = format!("/proc/self/fd/{}/d", std::os::fd::AsRawFd::as_raw_fd(&dir));
        fs::create_dir(&next).unwrap();
        dir = fs::File::open(&next).unwrap();
    }
    drop(dir);
    s.remove_rootfs("deep", false).unwrap();
    assert!(s.rootfs_list().unwrap().is_empty());

    // Two leftovers in tmp/, one of them immutable: gc removes the other and says which one
    // it could not remove.
    let stuck = s.root().join("tmp/import-stuck");
    fs::create_dir_all(&stuck).unwrap();
    fs::write(stuck.join("f"), b"").unwrap();
    fs::create_dir_all(s.root().join("tmp/import-other/x")).unwrap();
    common::run(
        std::process::Command::new("chattr")
            .arg("+i")
            .arg(stuck.join("f")),
    );
    let g = s.gc().unwrap();
    common::run(
        std::process::Command::new("chattr")
            .arg("-i")
            .arg(stuck.join("f")),
    );
    assert_eq!(g.tmp_removed, 1);
    assert_eq!(g.failed.len(), 1, "{:?}", g.failed);
    assert!(g.failed[0].contains("import-stuck"), "{:?}", g.failed);
    assert_eq!(s.gc().unwrap().failed, Vec::<String>::new());
}
