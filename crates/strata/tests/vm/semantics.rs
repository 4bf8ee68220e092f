//! Guest file semantics that ordinary software relies on, in a Debian 6.1 guest booted on a
//! two-layer busybox rootfs served by `strata serve`, once with the layers on the one device,
//! once from the layer device (`--lower-socket`) and once merged by the daemon (`--union`, no
//! guest overlay): `guest/semantics.sh` opens lower, upper, new
//! files and symlinks with O_NOFOLLOW (plain and `openat`; apt, dpkg, useradd and Python's
//! tempfile do), creates under umasks, creates set-id files as a guest user, lists `.`/`..` of
//! an image-only directory, clears set-id bits on a user's write or truncate (not on root's),
//! makes device nodes and copies up an image's one, and passes the
//! other open flags through, and writes past 4 GiB. Afterwards the host checks owners, modes and the device node in the
//! upper dir.
//!
//! Needs root, qemu-system-x86_64 and busybox-static: `scripts/install-deps.sh`.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use strata_harness::env::{assert_guest_script_passed, Env};
use strata_harness::fixture::write;

const SEMANTICS_SH: &str = include_str!("guest/semantics.sh");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    OneDevice,
    LayerDevice,
    Union,
}

fn run(mode: Mode) {
    let layer_device = mode == Mode::LayerDevice;
    let _machine = crate::shared();
    let env = Env::new(&crate::strata(), &[("semantics.sh", SEMANTICS_SH)]);
    let data = env.bottom.join("data");
    write(&data.join("lower.txt"), "lower\n");
    write(&data.join("lower_rw.txt"), "rw\n");
    write(&data.join("lowerdir/inner"), "inner\n");
    std::os::unix::fs::symlink("lower.txt", data.join("sym")).unwrap();
    let perm = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    perm(&data.join("lower.txt"), 0o644);
    perm(&data.join("lower_rw.txt"), 0o640);
    perm(&data.join("lowerdir"), 0o755);
    nix::sys::stat::mknod(
        &data.join("devnull"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    // Data written by the top layer too, so /data is a merged dir.
    write(&env.top.join("data/top.txt"), "top\n");

    let lower_sock = env.root().join("layers.sock");
    let extra: Vec<String> = match mode {
        Mode::LayerDevice => vec![
            "--lower-socket".into(),
            lower_sock.display().to_string(),
            "--lower-tag".into(),
            "strata-lower".into(),
        ],
        Mode::Union => vec!["--union".into()],
        Mode::OneDevice => Vec::new(),
    };
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut daemon = env.serve(&[], &extra);
    let mut vm = env.vm("/bin/sh /semantics.sh", Duration::from_secs(400));
    if layer_device {
        vm.virtiofs
            .push((lower_sock.clone(), "strata-lower".into()));
    }
    let out = vm.run().expect("qemu runs");
    eprintln!(
        "---- guest ----\n{}\n---- end ({:?}) ----",
        out.console, out.elapsed
    );
    let _ = daemon.wait_exit(Duration::from_secs(30));
    eprintln!("serve log:\n{}", daemon.log_text());
    assert_guest_script_passed(&out, "summary:", "semantics.sh");
    if layer_device {
        assert!(
            out.console
                .contains("lowerdir=/run/strata/strata-lower.layers/lower"),
            "the layers did not come from the layer device"
        );
    }

    // The upper dir holds what the guest asked for.
    let up = env.upper.join("data");
    let meta = |n: &str| std::fs::symlink_metadata(up.join(n)).unwrap();
    let m = meta("shared/suid");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o6755));
    let modes: Vec<u32> = ["shared/w", "shared/wg", "shared/t", "shared/r"]
        .iter()
        .map(|n| meta(n).mode() & 0o7777)
        .collect();
    assert_eq!(
        modes,
        [0o777, 0o2766, 0o777, 0o6755],
        "set-id bits after writes"
    );
    assert_eq!(meta("m777").mode() & 0o7777, 0o777);
    assert_eq!(meta("d777").mode() & 0o7777, 0o777);
    let dev = meta("devnull");
    assert_eq!(
        (dev.mode() & libc::S_IFMT, dev.mode() & 0o7777, dev.rdev()),
        (libc::S_IFCHR, 0o600, nix::sys::stat::makedev(1, 3))
    );
    assert_eq!(meta("myloop").mode() & libc::S_IFMT, libc::S_IFBLK);
    // Sparse on the host too: 5001 MiB long, about 1 MiB allocated.
    let sparse = meta("sparse");
    assert_eq!(sparse.len(), 5001 << 20);
    assert!(
        sparse.blocks() * 512 < 64 << 20,
        "{} blocks",
        sparse.blocks()
    );
}

#[test]
fn guest_file_semantics_one_device() {
    run(Mode::OneDevice);
}

#[test]
fn guest_file_semantics_layer_device() {
    run(Mode::LayerDevice);
}

#[test]
fn guest_file_semantics_daemon_merged_root() {
    run(Mode::Union);
}
