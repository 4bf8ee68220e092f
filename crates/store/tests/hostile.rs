//! Hostile images: each is refused with an error naming the entry and the rule, and the store
//! is exactly as before.

mod common;

use std::fs;
use std::path::Path;

use common::{Comp, RawTar};
use strata_store::{ImportOptions, Store, StoreError};

/// A store holding one good image.
fn store(dir: &Path) -> Store {
    let s = Store::open(dir.join("store")).unwrap();
    let good = RawTar::default().dir("etc/").file("etc/ok", b"ok").finish();
    common::oci_layout(&dir.join("good"), &[good], Comp::Gzip, "good");
    s.import(&dir.join("good"), &ImportOptions::default())
        .unwrap();
    s
}

/// Import `tars` as one image; it must fail with an error containing every `needle`.
fn refused_with(tars: &[Vec<u8>], comp: Comp, opts: ImportOptions, needles: &[&str]) -> StoreError {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let before = common::listing(s.root());
    let l = tmp.path().join("bad");
    common::oci_layout(&l, tars, comp, "bad");
    let err = s.import(&l, &opts).unwrap_err();
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
    assert_eq!(
        common::listing(s.root()),
        before,
        "store changed after: {msg}"
    );
    err
}

fn refused(tar: Vec<u8>, needles: &[&str]) -> StoreError {
    refused_with(&[tar], Comp::Gzip, ImportOptions::default(), needles)
}

#[test]
fn dotdot_and_absolute_paths() {
    if !strata_harness::needs("dotdot_and_absolute_paths", true, &[]) {
        return;
    }
    refused(
        RawTar::default().file("../evil", b"x").finish(),
        &["\"../evil\"", "'..'"],
    );
    refused(
        RawTar::default()
            .dir("a/")
            .file("a/../../evil", b"x")
            .finish(),
        &["a/../../evil", "'..'"],
    );
    refused(
        RawTar::default().file("/etc/evil", b"x").finish(),
        &["\"/etc/evil\"", "absolute"],
    );
}

#[test]
fn writes_through_symlinks() {
    if !strata_harness::needs("writes_through_symlinks", true, &[]) {
        return;
    }
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path().display().to_string();
    let e = refused(
        RawTar::default()
            .symlink("lnk", &o)
            .file("lnk/pwned", b"x")
            .finish(),
        &["lnk/pwned", "symlink", "\"lnk\""],
    );
    assert!(matches!(e, StoreError::Entry { .. }));
    refused(
        RawTar::default()
            .symlink("lnk", &o)
            .dir("lnk/sub/")
            .finish(),
        &["lnk/sub/", "symlink"],
    );
    refused(
        RawTar::default()
            .symlink("d", ".")
            .symlink("d/x", "/")
            .finish(),
        &["d/x", "symlink"],
    );
    // Through a symlink in an earlier layer of the same image is fine for the store (layers
    // are separate directories), but within a layer a whiteout through it is refused too.
    refused(
        RawTar::default()
            .symlink("lnk", &o)
            .file("lnk/.wh.x", b"")
            .finish(),
        &["lnk/.wh.x", "symlink"],
    );
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "wrote outside the layer"
    );
}

#[test]
fn hard_links_outside_the_layer() {
    if !strata_harness::needs("hard_links_outside_the_layer", true, &[]) {
        return;
    }
    refused(
        RawTar::default().hardlink("h", "../../etc/passwd").finish(),
        &["\"h\"", "hard link", "../../etc/passwd"],
    );
    refused(
        RawTar::default().hardlink("h", "/etc/passwd").finish(),
        &["\"h\"", "hard link", "/etc/passwd"],
    );
    refused(
        RawTar::default().hardlink("h", "absent").finish(),
        &["\"h\"", "hard link", "absent"],
    );
    refused(
        RawTar::default()
            .hardlink("h", "later")
            .file("later", b"x")
            .finish(),
        &["\"h\"", "hard link", "later"],
    );
    refused(
        RawTar::default().dir("d/").hardlink("h", "d").finish(),
        &["\"h\"", "hard link"],
    );
}

#[test]
fn whiteouts_for_dot_and_dotdot() {
    if !strata_harness::needs("whiteouts_for_dot_and_dotdot", true, &[]) {
        return;
    }
    refused(
        RawTar::default().dir("a/").file("a/.wh...", b"").finish(),
        &["a/.wh...", "whiteout"],
    );
    refused(
        RawTar::default().file(".wh..", b"").finish(),
        &[".wh..", "whiteout"],
    );
    refused(
        RawTar::default().file(".wh.", b"").finish(),
        &[".wh.", "whiteout"],
    );
}

// Duplicate entries are valid (the last wins): import_umoci.rs
// same_layer_duplicates_and_whiteouts_match_umoci, which also checks that replacing a symlink
// never writes through it.

#[test]
fn decompression_bomb() {
    if !strata_harness::needs("decompression_bomb", true, &[]) {
        return;
    }
    let zeros = vec![0u8; 64 << 20];
    let tar = RawTar::default().file("zeros", &zeros).finish();
    let opts = ImportOptions {
        max_unpacked: 8 << 20,
        ..Default::default()
    };
    let e = refused_with(
        &[tar],
        Comp::Gzip,
        opts,
        &["\"zeros\"", "limit", "--max-unpacked"],
    );
    assert!(matches!(e, StoreError::TooLarge { .. }));
}

#[test]
fn reserved_xattrs() {
    if !strata_harness::needs("reserved_xattrs", true, &[]) {
        return;
    }
    refused(
        RawTar::default()
            .dir("d/")
            .pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
            .dir("d/e/")
            .finish(),
        &["d/e/", "trusted.overlay.redirect", "reserved"],
    );
    refused(
        RawTar::default()
            .pax(&[("SCHILY.xattr.user.overlay.opaque", b"y")])
            .dir("u/")
            .finish(),
        &["u/", "user.overlay.opaque", "reserved"],
    );
}

#[test]
fn digest_mismatch_and_truncation() {
    if !strata_harness::needs("digest_mismatch_and_truncation", true, &[]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let before = common::listing(s.root());
    let tar = RawTar::default().file("f", &vec![7u8; 100_000]).finish();

    // A flipped byte in a layer blob (same size).
    for comp in [Comp::Plain, Comp::Gzip] {
        let l = tmp.path().join(format!("flip-{comp:?}"));
        let d = common::oci_layout(&l, std::slice::from_ref(&tar), comp, "x");
        let p = common::blob_path(&l, &d[0].to_string());
        let mut b = fs::read(&p).unwrap();
        let n = b.len();
        b[n / 2] ^= 0x55;
        fs::write(&p, &b).unwrap();
        let msg = s
            .import(&l, &ImportOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("mismatch") || msg.contains("corrupt") || msg.contains("invalid"),
            "{msg}"
        );
        assert!(msg.contains(d[0].hex()), "{msg}");
        assert_eq!(common::listing(s.root()), before);
    }

    // A truncated layer blob.
    let l = tmp.path().join("trunc");
    let d = common::oci_layout(&l, std::slice::from_ref(&tar), Comp::Gzip, "x");
    let p = common::blob_path(&l, &d[0].to_string());
    let b = fs::read(&p).unwrap();
    fs::write(&p, &b[..b.len() / 2]).unwrap();
    let msg = s
        .import(&l, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("truncated") && msg.contains(d[0].hex()),
        "{msg}"
    );
    assert_eq!(common::listing(s.root()), before);

    // A tampered config.
    let l = tmp.path().join("cfg");
    common::oci_layout(&l, std::slice::from_ref(&tar), Comp::Gzip, "x");
    let (_, m) = common::read_manifest(&l);
    let cd = m["config"]["digest"].as_str().unwrap().to_string();
    let p = common::blob_path(&l, &cd);
    let mut b = fs::read(&p).unwrap();
    b[0] = b' ';
    fs::write(&p, &b).unwrap();
    let msg = s
        .import(&l, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("digest mismatch") && msg.contains(&cd),
        "{msg}"
    );
    assert_eq!(common::listing(s.root()), before);
}

#[test]
fn truncated_tar_with_matching_digests() {
    if !strata_harness::needs("truncated_tar_with_matching_digests", true, &[]) {
        return;
    }
    // The tar itself ends inside a file's data; digests describe the truncated bytes.
    let full = RawTar::default()
        .file("a", b"a")
        .file("big", &vec![1u8; 10_000])
        .finish();
    let cut = full[..512 * 3 + 2000].to_vec();
    refused(cut, &["\"big\"", "truncated"]);
}

#[test]
fn failed_second_layer_leaves_no_first_layer() {
    if !strata_harness::needs("failed_second_layer_leaves_no_first_layer", true, &[]) {
        return;
    }
    let good = RawTar::default().file("fine", b"fine").finish();
    let bad = RawTar::default().file("../evil", b"x").finish();
    refused_with(
        &[good, bad],
        Comp::Zstd,
        ImportOptions::default(),
        &["../evil"],
    );
}

/// Random corruption of a tar full of links, whiteouts and PAX headers (digests recomputed, so
/// the bytes reach the extractor): no panic, nothing outside the store, a failed import leaves
/// the store as it was. `STRATA_MUTATIONS=N` runs more.
#[test]
fn mutated_tars_never_panic_or_escape() {
    if !strata_harness::needs("mutated_tars_never_panic_or_escape", true, &[]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let o = outside.display().to_string();
    let base = RawTar::default()
        .dir("d/")
        .file("d/f", b"data")
        .symlink("d/s", &o)
        .symlink("up", "../../..")
        .hardlink("d/h", "d/f")
        .pax(&[("SCHILY.xattr.user.x", b"v"), ("path", b"d/long-name")])
        .file("d/ignored", b"pax")
        .file("d/.wh.gone", b"")
        .dir("e/")
        .file("e/.wh..wh..opq", b"")
        .file("e/g", b"g")
        .finish();
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut ok = 0;
    let n: usize = std::env::var("STRATA_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    for i in 0..n {
        let mut t = base.clone();
        for _ in 0..(1 + rnd() % 4) {
            let pos = (rnd() as usize) % t.len();
            t[pos] = match rnd() % 4 {
                0 => b'/',
                1 => b'.',
                2 => 0,
                _ => rnd() as u8,
            };
        }
        let before = common::listing(s.root());
        let l = tmp.path().join(format!("m{i}"));
        common::oci_layout(&l, &[t], Comp::Plain, "m");
        match s.import(&l, &ImportOptions::default()) {
            Ok(_) => ok += 1,
            Err(_) => assert_eq!(common::listing(s.root()), before, "mutation {i}"),
        }
        fs::remove_dir_all(&l).unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "mutation {i}");
    }
    let top: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut top = top;
    top.sort();
    assert_eq!(top, ["good", "outside", "store"]);
    eprintln!("{ok} of {n} mutated layers imported");
}

/// PAX sparse files: a real size past the import limit (a sparse "bomb") and a map whose runs
/// overlap are refused; nothing is written.
#[test]
fn hostile_sparse_files() {
    if !strata_harness::needs("hostile_sparse_files", true, &[]) {
        return;
    }
    let sparse = |realsize: &str, map: &[u8]| {
        let mut data = map.to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"abcdabcd");
        RawTar::default()
            .pax(&[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.name", b"big.img"),
                ("GNU.sparse.realsize", realsize.as_bytes()),
            ])
            .file("GNUSparseFile.1/big.img", &data)
            .finish()
    };
    refused(
        sparse("1152921504606846976", b"1\n0\n8\n"),
        &["big.img", "limit"],
    );
    refused(
        sparse("100", b"2\n0\n8\n4\n0\n"),
        &["big.img", "sparse file", "overlaps"],
    );
}

/// An OCI directory whose blobs are symlinks: the config to `/dev/zero` (which once made the
/// import read without end), a layer to a host file. Both are refused before anything is read
/// through them, and the store is unchanged.
#[test]
fn symlinked_blobs_in_a_layout_dir_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let before = common::listing(s.root());
    let l = tmp.path().join("bad");
    let layer = RawTar::default().file("f", b"f").finish();
    let digests = common::oci_layout(&l, std::slice::from_ref(&layer), Comp::Plain, "bad");
    let blobs = l.join("blobs/sha256");
    // The config blob: the one that is neither the layer nor the manifest the index names.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(l.join("index.json")).unwrap()).unwrap();
    let manifest_hex = index["manifests"][0]["digest"].as_str().unwrap()[7..].to_string();
    let config_hex = fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| *n != manifest_hex && *n != digests[0].hex())
        .unwrap();
    fs::remove_file(blobs.join(&config_hex)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", blobs.join(&config_hex)).unwrap();
    let msg = s
        .import(&l, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("symlink") || msg.contains(&config_hex),
        "{msg}"
    );
    assert_eq!(common::listing(s.root()), before, "{msg}");

    // A layer blob symlinked to a copy of itself outside the layout.
    let l2 = tmp.path().join("bad2");
    let digests = common::oci_layout(&l2, &[layer], Comp::Plain, "bad2");
    let blob = l2.join("blobs/sha256").join(digests[0].hex());
    let outside = tmp.path().join("outside-blob");
    fs::rename(&blob, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &blob).unwrap();
    let msg = s
        .import(&l2, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("symlink"), "{msg}");
    assert_eq!(common::listing(s.root()), before, "{msg}");
}
