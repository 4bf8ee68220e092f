//! The EROFS layer device: a two-layer umoci image (a whiteout, an opaque directory, a
//! `user.*` xattr, a setuid file) imported into the store, served with
//! `strata serve --rootfs ID --erofs` under `strace -f`, and booted on Debian 6.1 with the
//! merged EROFS image on a read-only virtio-blk device. The guest sees what a host overlay of
//! the store's layers shows (the oracle), writes land in the container's upper dir (a copy-up
//! keeps the xattr the guest read from EROFS), the lower really is the EROFS mount, and the
//! daemon made no mount-family syscall.
//!
//! Needs root, umoci, tar, strace, qemu-system-x86_64, busybox-static and mkfs.erofs
//! (erofs-utils): `scripts/install-deps.sh`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use strata_harness::fixture::write;
use strata_harness::session::ServeProcess;
use strata_vm::kernel::{GuestKernel, KernelChoice};
use strata_vm::qemu::VmConfig;

/// Prints `data/…` below the current directory, one line per entry: path, raw mode, owner,
/// mtime and (not for directories: their sizes differ per filesystem) size. Run in the guest
/// at `/` and on the host in the oracle overlay.
const LISTING_SH: &str = r#"find data | LC_ALL=C sort | while read -r f; do
  if [ -d "$f" ] && [ ! -L "$f" ]; then stat -c '%n %f %u:%g %Y dir' "$f"
  else stat -c '%n %f %u:%g %Y %s' "$f"; fi
done
"#;

const CHECK_SH: &str = r#"set -e
cd /
echo listing-begin
sh /listing.sh
echo listing-end
grep -q ' / overlay .*lowerdir=/run/strata/strata.block/lower,' /proc/mounts ||
  { echo "FAIL lower not from the EROFS device: $(grep ' / ' /proc/mounts)"; exit 1; }
ro=
for d in /sys/block/vd*; do [ "$(cat "$d/serial")" = strata-lower ] && ro=$(cat "$d/ro"); done
test "$ro" = 1 || { echo "FAIL no read-only virtio-blk device strata-lower: ro=$ro"; exit 1; }
test "$(cat /data/top)" = top || { echo "FAIL top"; exit 1; }
echo written-in-vm > /data/new
touch /data/attr
echo "erofs: all checks passed"
"#;

fn run(cmd: &mut Command) {
    let st = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(st.success(), "{cmd:?}: {st}");
}

/// The two-layer image at `layout:app`; returns the layout path.
fn build_image(root: &Path) -> PathBuf {
    let layout = root.join("layout");
    let image = format!("{}:app", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    let b1 = root.join("b1");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&b1));
    let r = b1.join("rootfs");
    strata_harness::fixture::busybox_rootfs(&r).unwrap();
    write(&r.join("data/gone"), "x");
    write(&r.join("data/opq/a"), "a");
    write(&r.join("data/opq/sub/b"), "b");
    write(&r.join("data/keep/k"), "k");
    write(&r.join("data/attr"), "with xattr");
    write(&r.join("data/top"), "base");
    write(&r.join("data/suid"), "#!/bin/sh\n");
    std::fs::set_permissions(
        r.join("data/suid"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    xattr::set(r.join("data/attr"), "user.strata", b"kept").unwrap();
    write(&r.join("listing.sh"), LISTING_SH);
    write(&r.join("check.sh"), CHECK_SH);
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&b1));
    // Layer 2 by hand: a whiteout, an opaque marker (umoci never writes one), new files.
    let l2 = root.join("l2");
    write(&l2.join("data/.wh.gone"), "");
    write(&l2.join("data/opq/.wh..wh..opq"), "");
    write(&l2.join("data/opq/c"), "c");
    write(&l2.join("data/top"), "top");
    write(&l2.join("data/keep/k2"), "k2");
    let tar = root.join("l2.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&l2)
        .args(["--owner=0", "--group=0", "-cf"])
        .arg(&tar)
        .arg("data"));
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &image])
        .arg(&tar));
    layout
}

/// The listing of the layers `lowers` (topmost first) through a host overlay (the oracle).
fn host_listing(root: &Path, lowers: &[PathBuf]) -> String {
    let merged = root.join("oracle");
    std::fs::create_dir_all(&merged).unwrap();
    let lower: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}", lower.join(":")))
        .arg(&merged));
    let out = Command::new("sh")
        .arg("-c")
        .arg(LISTING_SH)
        .current_dir(&merged)
        .output()
        .unwrap();
    run(Command::new("umount").arg(&merged));
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn erofs_layer_device_matches_host_overlay() {
    let _machine = crate::shared();
    strata_harness::require(&[
        "umoci",
        "tar",
        "strace",
        "mkfs.erofs",
        "qemu-system-x86_64",
        "busybox",
    ]);
    let strata = crate::strata();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layout = build_image(root);
    let store = root.join("store");
    let st = store.to_str().unwrap();
    strata.ok(["image", "import", layout.to_str().unwrap(), "--store", st]);
    let rec: serde_json::Value = serde_json::from_str(&strata.ok([
        "rootfs", "create", "--image", "app", "--id", "vm1", "--json", "--store", st,
    ]))
    .unwrap();
    let path = |v: &serde_json::Value| PathBuf::from(v.as_str().unwrap());
    let lowers: Vec<PathBuf> = rec["lowers"].as_array().unwrap().iter().map(path).collect();
    assert_eq!(lowers.len(), 2);
    let upper = path(&rec["upper"]);
    let oracle = host_listing(root, &lowers);

    let kernel = GuestKernel::fetch(KernelChoice::Debian6_1).expect("guest kernel");
    let initrd = root.join("initrd.cpio");
    strata_vm::initramfs::guest_initramfs(strata.path(), &kernel, &initrd).unwrap();
    let socket = root.join("vfs.sock");
    let argv: Vec<OsString> = [
        strata.path().as_os_str(),
        "serve".as_ref(),
        "--socket".as_ref(),
        socket.as_os_str(),
        "--rootfs".as_ref(),
        "vm1".as_ref(),
        "--store".as_ref(),
        store.as_os_str(),
        "--erofs".as_ref(),
    ]
    .iter()
    .map(|s| s.to_os_string())
    .collect();
    let strace_log = root.join("serve.strace");
    let log = root.join("serve.log");
    let serve = ServeProcess::spawn_argv(
        &argv,
        std::slice::from_ref(&socket),
        Some(&strace_log),
        &log,
    )
    .expect("strata serve starts");
    let images: Vec<PathBuf> = std::fs::read_dir(store.join("erofs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    let logged = serve.log_text();
    assert!(
        logged.contains("-device virtio-blk-pci,drive=strata-lower,serial=strata-lower"),
        "{logged}"
    );
    let vm = VmConfig {
        cmdline: "strata.tag=strata strata.cmd=\"/bin/sh /check.sh\"".into(),
        virtiofs: vec![(socket.clone(), "strata".into())],
        extra_args: vec![
            "-drive".into(),
            format!(
                "file={},if=none,readonly=on,format=raw,id=l0",
                images[0].display()
            ),
            "-device".into(),
            "virtio-blk-pci,drive=l0,serial=strata-lower".into(),
        ],
        timeout: Duration::from_secs(400),
        ..VmConfig::new(&kernel.vmlinuz, &initrd)
    };
    let out = vm.run().expect("qemu runs");
    let outcome = serve.wait(Duration::from_secs(30)).unwrap();
    let console = &out.console;
    let shown = || format!("---- guest console ----\n{console}\n---- end ----");
    assert!(
        console.contains("erofs: all checks passed") && out.status == Some(0),
        "{}",
        shown()
    );
    let guest: String = console
        .lines()
        .skip_while(|l| *l != "listing-begin")
        .skip(1)
        .take_while(|l| *l != "listing-end")
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(oracle.contains("data/opq/c") && !oracle.contains("data/opq/a"));
    assert!(oracle.contains("data/keep/k ") && !oracle.contains("data/gone"));
    assert!(oracle.contains("data/suid 89ed "), "{oracle}");
    assert_eq!(guest, oracle, "guest listing vs host overlay\n{}", shown());
    // Writes landed in the upper; the copy-up kept the xattr read from the EROFS lower.
    assert_eq!(
        std::fs::read_to_string(upper.join("data/new")).unwrap(),
        "written-in-vm\n"
    );
    assert_eq!(
        xattr::get(upper.join("data/attr"), "user.strata").unwrap(),
        Some(b"kept".to_vec())
    );
    let calls = outcome.mount_syscalls.expect("strace log");
    assert!(calls.is_empty(), "serve made mount syscalls: {calls:#?}");
}
