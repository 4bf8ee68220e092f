//! Import real OCI images made by umoci; the oracle is a host overlay mount of the imported
//! layers, which must equal `umoci unpack` of the same image.

mod common;

use std::fs;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_same_tree, run, Overlay, Umoci};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use strata_store::{ImportOptions, Store};

fn write(root: &Path, rel: &str, data: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(root: &Path, rel: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A four-layer image: base; modify + delete; replace directories; a hand-made opaque layer.
fn build_image(dir: &Path) -> Umoci {
    let mut u = Umoci::init(&dir.join("layout"), dir, "t");
    u.layer(|r| {
        mkdir(r, "etc", 0o755);
        mkdir(r, "tmp", 0o1777);
        mkdir(r, "root", 0o700);
        write(r, "etc/hostname", "base\n", 0o644);
        write(r, "etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644);
        write(r, "usr/bin/tool", "#!/bin/sh\necho tool\n", 0o755);
        write(r, "usr/bin/suid", "suid", 0o4755);
        fs::hard_link(r.join("usr/bin/tool"), r.join("usr/bin/tool2")).unwrap();
        symlink("tool", r.join("usr/bin/link")).unwrap();
        symlink("/etc/hostname", r.join("etc/abs")).unwrap();
        symlink("/nonexistent/target", r.join("dangling")).unwrap();
        write(r, "var/lib/app/state", "secret", 0o600);
        chown(r.join("var/lib/app"), Some(1000), Some(1000)).unwrap();
        chown(r.join("var/lib/app/state"), Some(1000), Some(1001)).unwrap();
        write(r, "opt/data/a", "a", 0o644);
        write(r, "opt/data/sub/c", "c", 0o644);
        write(r, "opt/keep/old", "old", 0o644);
        write(r, "del/me", "bye", 0o644);
        write(r, "deldir/x/y", "y", 0o644);
        mkdir(r, "dev", 0o755);
        mknod(
            &r.join("dev/null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        )
        .unwrap();
        mknod(
            &r.join("dev/loop9"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            makedev(7, 9),
        )
        .unwrap();
        nix::unistd::mkfifo(&r.join("tmp/fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        write(r, "etc/xattr-file", "x", 0o644);
        xattr::set(r.join("etc/xattr-file"), "user.strata", b"yes").unwrap();
        for i in 0..300 {
            write(
                r,
                &format!("gen/d{}/f{i}", i % 10),
                &"x".repeat(i * 7),
                0o644,
            );
        }
    });
    u.layer(|r| {
        write(r, "etc/hostname", "modified\n", 0o644);
        fs::set_permissions(r.join("usr/bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
        chown(r.join("etc/passwd"), Some(10), Some(20)).unwrap();
        fs::remove_file(r.join("del/me")).unwrap();
        fs::remove_dir_all(r.join("deldir")).unwrap();
        write(r, "new/file", "new", 0o640);
        write(r, "new/file2", "two", 0o644);
        fs::hard_link(r.join("new/file2"), r.join("new/hl")).unwrap();
        fs::remove_file(r.join("etc/abs")).unwrap();
        symlink("../usr/bin/tool", r.join("etc/abs")).unwrap();
        fs::remove_file(r.join("gen/d3/f3")).unwrap();
    });
    u.layer(|r| {
        fs::remove_dir_all(r.join("opt/data")).unwrap();
        write(r, "opt/data/new", "replaced", 0o644);
        fs::remove_file(r.join("usr/bin/link")).unwrap();
        write(r, "usr/bin/link/inside", "file replaced by dir", 0o644);
        fs::remove_file(r.join("etc/passwd")).unwrap();
        symlink("hostname", r.join("etc/passwd")).unwrap();
    });
    // umoci writes per-file whiteouts; an opaque directory needs a hand-made layer.
    let t = common::RawTar::default()
        .dir("opt/")
        .dir("opt/keep/")
        .file("opt/keep/.wh..wh..opq", b"")
        .file("opt/keep/only", b"only this\n")
        .file(".wh.dangling", b"")
        .finish();
    u.raw_layer(&t);
    u
}

fn lowers(store: &Store, name: &str) -> Vec<PathBuf> {
    let img = store.image(name).unwrap();
    img.layers.iter().rev().map(|l| l.path.clone()).collect()
}

#[test]
fn umoci_image_matches_overlay_of_imported_layers() {
    need_umoci!("umoci_image_matches_overlay_of_imported_layers");
    let tmp = tempfile::tempdir().unwrap();
    let u = build_image(tmp.path());
    let store = Store::open(tmp.path().join("store")).unwrap();
    let rep = store.import(&u.layout, &ImportOptions::default()).unwrap();
    assert_eq!(rep.image.name, "t");
    assert_eq!(rep.image.layers.len(), 4);
    assert_eq!((rep.unpacked, rep.reused), (4, 0));

    let want = u.unpack(&tmp.path().join("oracle"));
    let ls = lowers(&store, "t");
    let m = Overlay::mount(&ls, &tmp.path().join("merged"));
    assert_same_tree(&m.0, &want);
    // The oracle saw every kind of change.
    for gone in [
        "del/me",
        "deldir",
        "opt/keep/old",
        "opt/data/a",
        "dangling",
        "gen/d3/f3",
    ] {
        assert!(fs::symlink_metadata(want.join(gone)).is_err(), "{gone}");
    }
    assert_eq!(
        fs::read_to_string(want.join("opt/keep/only")).unwrap(),
        "only this\n"
    );
    assert_eq!(
        fs::read_to_string(want.join("usr/bin/link/inside")).unwrap(),
        "file replaced by dir"
    );
    assert_eq!(
        fs::read_to_string(m.0.join("etc/hostname")).unwrap(),
        "modified\n"
    );

    // The on-disk format, layer by layer.
    let top = &ls[0];
    assert_eq!(
        xattr::get(top.join("opt/keep"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    let wh = fs::symlink_metadata(top.join("dangling")).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    let l1 = &ls[2];
    assert!(fs::symlink_metadata(l1.join("del/me"))
        .unwrap()
        .file_type()
        .is_char_device());
    let base = &ls[3];
    assert_eq!(
        fs::metadata(base.join("usr/bin/tool")).unwrap().ino(),
        fs::metadata(base.join("usr/bin/tool2")).unwrap().ino()
    );
    assert_eq!(
        xattr::get(m.0.join("etc/xattr-file"), "user.strata")
            .unwrap()
            .as_deref(),
        Some(&b"yes"[..])
    );
    drop(m);

    // Importing again unpacks nothing.
    let again = store.import(&u.layout, &ImportOptions::default()).unwrap();
    assert_eq!((again.unpacked, again.reused), (0, 4));
    assert_eq!(again.image, rep.image);

    // The same layout as an OCI archive tar, under another name: same layers, none unpacked.
    let archive = tmp.path().join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&u.layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    let opts = ImportOptions {
        name: Some("archived".into()),
        ..Default::default()
    };
    let ar = store.import(&archive, &opts).unwrap();
    assert_eq!((ar.unpacked, ar.reused), (0, 4));
    assert_eq!(ar.image.layers, rep.image.layers);
    assert_eq!(
        fs::read_dir(store.root().join("layers/sha256"))
            .unwrap()
            .count(),
        4
    );
}

#[test]
fn zstd_plain_and_docker_save_give_the_same_layers() {
    need_umoci!("zstd_plain_and_docker_save_give_the_same_layers");
    let tmp = tempfile::tempdir().unwrap();
    let u = build_image(tmp.path());
    let tars = common::layer_tars(&u.layout);
    let store = Store::open(tmp.path().join("store")).unwrap();
    let gz = store.import(&u.layout, &ImportOptions::default()).unwrap();
    let want = u.unpack(&tmp.path().join("oracle"));

    for (i, comp) in [common::Comp::Zstd, common::Comp::Plain]
        .into_iter()
        .enumerate()
    {
        let s2 = Store::open(tmp.path().join(format!("store{i}"))).unwrap();
        let l = tmp.path().join(format!("layout-{comp:?}"));
        common::oci_layout(&l, &tars, comp, "re");
        let r = s2.import(&l, &ImportOptions::default()).unwrap();
        let diffs: Vec<_> = r.image.layers.iter().map(|l| l.diff_id.clone()).collect();
        let want_diffs: Vec<_> = gz.image.layers.iter().map(|l| l.diff_id.clone()).collect();
        assert_eq!(diffs, want_diffs);
        let m = Overlay::mount(&lowers(&s2, "re"), &tmp.path().join(format!("m{i}")));
        assert_same_tree(&m.0, &want);
    }

    // docker save: manifest.json + uncompressed layer tars + config.
    let d = tmp.path().join("docker");
    fs::create_dir_all(&d).unwrap();
    let (config, _) = common::read_manifest(&u.layout);
    let cbytes = serde_json::to_vec(&config).unwrap();
    let cd = strata_store::digest::Sha256::of(&cbytes);
    fs::write(d.join(format!("{}.json", cd.hex())), &cbytes).unwrap();
    let mut layers = Vec::new();
    for (i, t) in tars.iter().enumerate() {
        fs::create_dir_all(d.join(format!("l{i}"))).unwrap();
        // Older docker save links repeated layers to one copy: resolve symlinks in the archive.
        let hex = strata_store::digest::Sha256::of(t).hex().to_string();
        fs::create_dir_all(d.join("blobs/sha256")).unwrap();
        fs::write(d.join("blobs/sha256").join(&hex), t).unwrap();
        symlink(
            format!("../blobs/sha256/{hex}"),
            d.join(format!("l{i}/layer.tar")),
        )
        .unwrap();
        layers.push(format!("l{i}/layer.tar"));
    }
    let manifest = serde_json::json!([{"Config": format!("{}.json", cd.hex()), "RepoTags": ["example/app:1"], "Layers": layers}]);
    fs::write(
        d.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let save = tmp.path().join("save.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&d)
        .arg("-cf")
        .arg(&save)
        .arg("."));
    let s3 = Store::open(tmp.path().join("store-docker")).unwrap();
    let r = s3.import(&save, &ImportOptions::default()).unwrap();
    assert_eq!(r.image.name, "docker.io/example/app:1");
    assert_eq!(r.image.manifest_digest, None);
    let m = Overlay::mount(&lowers(&s3, "example/app:1"), &tmp.path().join("md"));
    assert_same_tree(&m.0, &want);
}

#[test]
fn images_sharing_a_base_unpack_it_once() {
    need_umoci!("images_sharing_a_base_unpack_it_once");
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Umoci::init(&tmp.path().join("a"), tmp.path(), "a");
    a.layer(|r| {
        for i in 0..50 {
            write(r, &format!("base/f{i}"), "base", 0o644);
        }
    });
    // Same base layer: copy the layout, then add a different top layer to each.
    run(Command::new("cp")
        .arg("-a")
        .arg(tmp.path().join("a"))
        .arg(tmp.path().join("b")));
    a.layer(|r| write(r, "top", "a", 0o644));
    let mut b = Umoci::open(&tmp.path().join("b"), tmp.path(), "a");
    b.layer(|r| write(r, "top", "b", 0o644));

    let store = Store::open(tmp.path().join("store")).unwrap();
    let ra = store
        .import(
            &a.layout,
            &ImportOptions {
                name: Some("img-a".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let rb = store
        .import(
            &b.layout,
            &ImportOptions {
                name: Some("img-b".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((ra.unpacked, ra.reused), (2, 0));
    assert_eq!((rb.unpacked, rb.reused), (1, 1));
    assert_eq!(ra.image.layers[0], rb.image.layers[0]);
    assert_ne!(ra.image.layers[1].diff_id, rb.image.layers[1].diff_id);
    assert_eq!(
        fs::read_dir(store.root().join("layers/sha256"))
            .unwrap()
            .count(),
        3
    );
}

/// OCI conformance: a layer that names a path twice, or a path and its whiteout, is valid
/// (tools emit both when a path changes type). The last entry wins, a whiteout hides only the
/// lower layers (a directory beside its own whiteout is opaque), a hard link keeps the content
/// it was made to; imported layers under a host overlay equal `umoci unpack`.
#[test]
fn same_layer_duplicates_and_whiteouts_match_umoci() {
    need_umoci!("same_layer_duplicates_and_whiteouts_match_umoci");
    let tmp = tempfile::tempdir().unwrap();
    let mut u = Umoci::init(&tmp.path().join("layout"), tmp.path(), "dup");
    u.layer(|r| {
        write(r, "x", "base x\n", 0o644);
        write(r, "y", "base y\n", 0o644);
        write(r, "d/old", "old\n", 0o644);
        write(r, "keep/k", "k\n", 0o644);
    });
    let outside = tempfile::tempdir().unwrap();
    let t = common::RawTar::default()
        .file("a", b"first\n")
        .file("a", b"second\n")
        .file(".wh.x", b"")
        .file("x", b"new x\n")
        .file(".wh.d", b"")
        .dir("d/")
        .file("d/new", b"new\n")
        .file("y", b"layer y\n")
        .file(".wh.y", b"")
        .symlink("p", &outside.path().display().to_string())
        .dir("p/")
        .file("p/inside", b"inside\n")
        .file("h", b"linked\n")
        .hardlink("hl", "h")
        .file("h", b"replaced\n")
        .dir("e/")
        .dir("e/")
        .file("e/f", b"f\n")
        .file("keep", b"file over dir\n")
        .finish();
    u.raw_layer(&t);
    let store = Store::open(tmp.path().join("store")).unwrap();
    store.import(&u.layout, &ImportOptions::default()).unwrap();
    let want = u.unpack(&tmp.path().join("oracle"));
    let m = Overlay::mount(&lowers(&store, "dup"), &tmp.path().join("merged"));
    assert_same_tree(&m.0, &want);
    let read = |p: &str| fs::read_to_string(m.0.join(p)).unwrap();
    assert_eq!(read("a"), "second\n");
    assert_eq!(read("x"), "new x\n");
    assert_eq!(read("y"), "layer y\n");
    assert_eq!(read("hl"), "linked\n");
    assert_eq!(read("h"), "replaced\n");
    assert_eq!(read("keep"), "file over dir\n");
    assert!(
        fs::symlink_metadata(m.0.join("d/old")).is_err(),
        "d is not opaque"
    );
    assert!(m.0.join("p").is_dir() && !m.0.join("p").is_symlink());
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "wrote outside"
    );
}

/// The corpus real tools write: GNU tar's GNU format (long names and link targets) and its PAX
/// format (sparse map, `security.capability` and `user.*` xattrs), imported and compared with
/// `umoci unpack` of the same image.
#[test]
fn gnu_and_pax_tar_corpus_matches_umoci() {
    need_umoci!("gnu_and_pax_tar_corpus_matches_umoci");
    if !strata_harness::needs(
        "gnu_and_pax_tar_corpus_matches_umoci",
        true,
        &["tar", "setcap"],
    ) {
        return;
    }
    use std::io::{Seek, SeekFrom, Write};
    let tmp = tempfile::tempdir().unwrap();
    let mut u = Umoci::init(&tmp.path().join("layout"), tmp.path(), "corpus");
    let tree = |name: &str| {
        let r = tmp.path().join(name);
        let long = "d".repeat(120);
        mkdir(&r, &format!("{long}/{long}"), 0o755);
        write(
            &r,
            &format!("{long}/{long}/{}", "f".repeat(200)),
            "deep\n",
            0o644,
        );
        symlink(format!("/{long}/{long}/target"), r.join("longlink")).unwrap();
        let mut f = fs::File::create(r.join("sparse.img")).unwrap();
        f.set_len(64 << 20).unwrap();
        for (off, data) in [
            (0u64, &b"head"[..]),
            (32 << 20, b"mid"),
            ((64 << 20) - 4, b"tail"),
        ] {
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(data).unwrap();
        }
        write(&r, "bin/ping", "#!/bin/sh\n", 0o755);
        run(Command::new("setcap")
            .arg("cap_net_raw+ep")
            .arg(r.join("bin/ping")));
        xattr::set(r.join("bin/ping"), "user.origin", b"corpus").unwrap();
        fs::hard_link(r.join("bin/ping"), r.join("bin/ping6")).unwrap();
        r
    };
    for (name, format) in [("gnu", "--format=gnu"), ("pax", "--format=pax")] {
        let r = tree(name);
        let t = tmp.path().join(format!("{name}.tar"));
        let mut cmd = Command::new("tar");
        cmd.args(["--numeric-owner", format, "-C"]).arg(&r);
        if name == "pax" {
            // umoci (Go's archive/tar) reads PAX sparse maps but not GNU's 'S' entries.
            cmd.args(["--sparse", "--xattrs", "--xattrs-include=*"]);
        }
        run(cmd.arg("-cf").arg(&t).arg("."));
        u.raw_layer(&fs::read(&t).unwrap());
    }
    let store = Store::open(tmp.path().join("store")).unwrap();
    store.import(&u.layout, &ImportOptions::default()).unwrap();
    let want = u.unpack(&tmp.path().join("oracle"));
    let ls = lowers(&store, "corpus");
    let m = Overlay::mount(&ls, &tmp.path().join("merged"));
    assert_same_tree(&m.0, &want);
    let sparse = fs::read(m.0.join("sparse.img")).unwrap();
    assert_eq!(&sparse[(32 << 20)..(32 << 20) + 3], b"mid");
    // The top layer (PAX) carried the xattrs; both names of the hard link have them.
    for p in ["bin/ping", "bin/ping6"] {
        assert!(
            xattr::get(m.0.join(p), "security.capability")
                .unwrap()
                .is_some(),
            "{p}"
        );
        assert_eq!(
            xattr::get(m.0.join(p), "user.origin").unwrap().as_deref(),
            Some(&b"corpus"[..])
        );
    }
    // Sparse files stay sparse in the store.
    let blocks =
        std::os::unix::fs::MetadataExt::blocks(&fs::metadata(ls[0].join("sparse.img")).unwrap());
    assert!(
        blocks * 512 < 8 << 20,
        "sparse.img takes {} bytes on disk",
        blocks * 512
    );
}
