//! The heart of strata, end to end: a real Debian 6.1 guest kernel under qemu (TCG) boots from
//! an initramfs whose /init is the static `strata` binary, mounts the rootfs served by
//! `strata serve` over real virtio-fs (vhost-user), assembles the overlay with its own kernel and
//! runs a script exercising the overlay semantics, then a hostile script against the raw tree.
//!
//! Afterwards the host checks the upper directory and compares what the guest saw with a host
//! `mount -t overlay` of the same layers + upper (the oracle), and that the daemon made zero
//! mount-family syscalls (strace -f) during the whole VM session.
//!
//! Needs root, qemu-system-x86_64, strace and busybox-static: `scripts/install-deps.sh`.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use strata_harness::fixture::{self, write};
use strata_harness::session::{host_mount_count, ServeProcess, ServeSpec};
use strata_vm::kernel::{GuestKernel, KernelChoice};
use strata_vm::qemu::VmConfig;

const ROOTFS_SH: &str = include_str!("guest/rootfs.sh");
const HOSTILE_SH: &str = include_str!("guest/hostile.sh");
const MANIFEST_SH: &str = include_str!("guest/manifest.sh");

/// Two layers in the kernel overlayfs on-disk format, covering what the guest script checks.
fn build_layers(root: &Path) -> (PathBuf, PathBuf) {
    let bottom = root.join("layers/bottom");
    let top = root.join("layers/top");
    fixture::busybox_rootfs(&bottom).unwrap();
    let d = bottom.join("data");
    write(&d.join("base.txt"), "base\n");
    write(&d.join("both.txt"), "bottom-version\n");
    write(&d.join("deleted_by_top"), "you should not see me\n");
    write(&d.join("opq/old"), "old\n");
    write(&d.join("append.txt"), "first\n");
    write(&d.join("todelete"), "bye\n");
    write(&d.join("replaceme/a"), "a\n");
    write(&d.join("replaceme/b"), "b\n");
    write(&d.join("rename_me"), "r\n");
    write(&d.join("dir_to_move/inner"), "inner\n");
    write(&d.join("hl_a"), "linked\n");
    std::fs::hard_link(d.join("hl_a"), d.join("hl_b")).unwrap();
    // Layer-over-layer cases the daemon's merged lower (`/lower`) must resolve like overlayfs:
    // a file over a dir, a dir over a file, a whited-out dir.
    write(&d.join("becomes_file/inner"), "under a file\n");
    write(&d.join("becomes_dir"), "under a dir\n");
    write(&d.join("gone_dir/f"), "under a whiteout\n");
    write(&d.join("chmod_me"), "c\n");
    write(&d.join("chown_me"), "c\n");
    write(&d.join("trunc_me"), "abcdef\n");
    write(&d.join("hl2_a"), "shared\n");
    std::fs::hard_link(d.join("hl2_a"), d.join("hl2_b")).unwrap();
    std::os::unix::fs::symlink("base.txt", d.join("sym")).unwrap();
    // A device node shipped in an image: the guest must not reach the host device through it.
    nix::sys::stat::mknod(
        &d.join("devnull"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    // The strata binary inside the container, for the xattr and mmap probes.
    std::fs::copy(crate::strata().path(), bottom.join("bin/strata")).unwrap();

    let t = top.join("data");
    write(&t.join("top.txt"), "top\n");
    write(&t.join("both.txt"), "top-version\n");
    fixture::whiteout(&t.join("deleted_by_top")).unwrap();
    write(&t.join("opq/new"), "new\n");
    fixture::set_opaque(&t.join("opq")).unwrap();
    write(&t.join("becomes_file"), "file over a dir\n");
    write(&t.join("becomes_dir/x"), "dir over a file\n");
    fixture::whiteout(&t.join("gone_dir")).unwrap();
    write(&top.join("rootfs.sh"), ROOTFS_SH);
    write(&top.join("hostile.sh"), HOSTILE_SH);
    write(&top.join("manifest.sh"), MANIFEST_SH);
    (top, bottom)
}

fn manifest_lines(text: &str) -> BTreeSet<String> {
    text.lines()
        .skip_while(|l| *l != "manifest-begin")
        .take_while(|l| *l != "manifest-end")
        .filter(|l| l.starts_with("M "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn guest_rootfs_over_virtio_fs_matches_host_overlay() {
    let _machine = crate::shared();
    strata_harness::require(&["qemu-system-x86_64", "strace", "busybox"]);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (top, bottom) = build_layers(root);
    let upper = root.join("ctr/upper");
    let work = root.join("ctr/work");
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();

    let kernel = GuestKernel::fetch(KernelChoice::Debian6_1).expect("guest kernel");
    let initrd = root.join("initrd.cpio");
    strata_vm::initramfs::guest_initramfs(crate::strata().path(), &kernel, &initrd).unwrap();

    let spec = ServeSpec {
        lowers: vec![top.clone(), bottom.clone()],
        upper: upper.clone(),
        work: work.clone(),
        socket: root.join("vfs.sock"),
        tag: "strata".into(),
        // The layers carry no xattrs but overlayfs' own: the guest reads them from the layer
        // device (no xattrs), and everything below must still match the host overlay.
        lower: Some((root.join("layers.sock"), "strata-lower".into())),
        union: false,
    };
    let mounts_before = host_mount_count();
    let strace_log = root.join("serve.strace");
    let serve = ServeProcess::spawn(
        crate::strata().path(),
        &spec,
        Some(&strace_log),
        &root.join("serve.log"),
    )
    .expect("strata serve starts");
    eprintln!(
        "strata serve (under strace) ready after {:?}",
        serve.ready_after
    );

    let vm = VmConfig {
        cmdline: "strata.tag=strata strata.cmd=\"/bin/sh -c 'sh /rootfs.sh; a=$?; sh /hostile.sh; b=$?; exit $((a|b))'\"".into(),
        virtiofs: spec.devices(),
        timeout: Duration::from_secs(600),
        ..VmConfig::new(&kernel.vmlinuz, &initrd)
    };
    let out = vm.run().expect("qemu runs");
    let outcome = serve.wait(Duration::from_secs(30)).unwrap();
    let mounts_after = host_mount_count();
    let console = &out.console;
    eprintln!(
        "---- guest console ----\n{console}\n---- end ({:?}) ----",
        out.elapsed
    );
    eprintln!(
        "serve log:\n{}",
        std::fs::read_to_string(root.join("serve.log")).unwrap_or_default()
    );

    // The guest ran every check and they all passed.
    assert!(!out.timed_out, "VM timed out");
    let failed: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("not ok"))
        .collect();
    assert!(failed.is_empty(), "guest checks failed: {failed:#?}");
    assert!(
        console.contains("ok - 64 MiB written"),
        "guest script did not run"
    );
    assert!(
        console.contains("ok - follow an upper symlink"),
        "hostile script did not run"
    );
    assert_eq!(out.status, Some(0), "container command exit status");

    // Zero host mounts: the daemon attempted none, and the host mount table did not change.
    let calls = outcome.mount_syscalls.expect("strace log");
    assert!(
        calls.is_empty(),
        "daemon made mount-family syscalls: {calls:#?}"
    );
    assert_eq!(
        mounts_before, mounts_after,
        "host mount table changed during the VM session"
    );
    assert!(
        outcome.exited_cleanly,
        "strata serve did not exit 0 after the VMM disconnected"
    );

    // The upper dir holds the kernel overlayfs format.
    let wh = std::fs::symlink_metadata(upper.join("data/todelete")).unwrap();
    assert_eq!(
        wh.mode() & libc::S_IFMT,
        libc::S_IFCHR,
        "whiteout is a char device"
    );
    assert_eq!(wh.rdev(), 0, "whiteout is 0:0");
    let opaque = xattr_get(&upper.join("data/replaceme"), "trusted.overlay.opaque");
    assert_eq!(
        opaque.as_deref(),
        Some(&b"y"[..]),
        "recreated dir is opaque"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("data/append.txt")).unwrap(),
        "first\nmore\n"
    );
    let chown = std::fs::metadata(upper.join("data/chown_me")).unwrap();
    assert_eq!((chown.uid(), chown.gid()), (1000, 1000));
    let chmod = std::fs::metadata(upper.join("data/chmod_me")).unwrap();
    assert_eq!(chmod.permissions().mode() & 0o777, 0o600);
    let big_md5 = console
        .lines()
        .find_map(|l| l.strip_prefix("big-md5 "))
        .expect("guest printed the big file's md5")
        .trim()
        .to_string();
    let host_md5 = Command::new("md5sum")
        .arg(upper.join("data/big"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&host_md5.stdout).starts_with(&big_md5));
    // Layers are untouched by the guest.
    assert_eq!(
        std::fs::read_to_string(bottom.join("data/base.txt")).unwrap(),
        "base\n"
    );
    assert!(!bottom.join("newfile").exists() && !top.join("newfile").exists());

    // The oracle: a host overlay mount of the same layers and upper shows what the guest saw.
    let guest_view = manifest_lines(console);
    assert!(
        guest_view.len() > 20,
        "guest manifest too short: {guest_view:#?}"
    );
    let merged = root.join("oracle");
    let oracle_work = root.join("ctr/oracle-work");
    std::fs::create_dir_all(&merged).unwrap();
    std::fs::create_dir_all(&oracle_work).unwrap();
    // nosuid,nodev: what an image or the guest put there means nothing on the host.
    let opts = format!(
        "nosuid,nodev,lowerdir={}:{},upperdir={},workdir={}",
        top.display(),
        bottom.display(),
        upper.display(),
        oracle_work.display()
    );
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(st.success(), "host overlay mount (the oracle) failed");
    let host = Command::new("busybox")
        .args(["sh", "-c", MANIFEST_SH, "manifest"])
        .arg(merged.join("data"))
        .arg("many")
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(&merged).status();
    let host_view = manifest_lines(&format!(
        "manifest-begin\n{}manifest-end\n",
        String::from_utf8_lossy(&host.stdout)
    ));
    let only_guest: Vec<_> = guest_view.difference(&host_view).collect();
    let only_host: Vec<_> = host_view.difference(&guest_view).collect();
    assert!(
        only_guest.is_empty() && only_host.is_empty(),
        "guest and host overlay disagree\nonly in guest: {only_guest:#?}\nonly on host: {only_host:#?}"
    );
    let many = std::fs::read_dir(upper.join("data/many")).unwrap().count();
    assert_eq!(many, 1000);
}

fn xattr_get(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(path, name).ok().flatten()
}
