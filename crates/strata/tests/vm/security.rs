//! Local attacks on the host side, as user `nobody` (`setpriv`): the store keeps everything an
//! image or a guest put in it (setuid and file-capability binaries, device nodes, world-writable
//! directories, a guest's setuid file in its upper dir) out of every other local user's reach.
//!
//! Needs root, umoci, setpriv, setcap and busybox-static: `scripts/install-deps.sh`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    // What a guest writes lands in its upper dir as it asked (the daemon creates it as root):
    // a setuid-root shell.
    std::fs::copy(&busybox, upper.join("guest-suid")).unwrap();
    std::fs::set_permissions(
        upper.join("guest-suid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    // The image's files are in the store as the image has them (root sees them).
    use std::os::unix::fs::MetadataExt;
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
