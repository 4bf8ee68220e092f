//! An OCI image built with umoci, imported with `strata image import`, given to a container with
//! `strata rootfs create`, served from the store and booted: a Debian 6.1 guest under qemu sees
//! the image (modified file, deleted file, replaced directory, hard link, symlink), read from the
//! layer device (a second virtio-fs device without xattrs), and writes land in the container's
//! upper dir in the store.
//!
//! Needs root, umoci, qemu-system-x86_64 and busybox-static: `scripts/install-deps.sh`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use strata_harness::fixture::write;
use strata_harness::session::{ServeProcess, ServeSpec};
use strata_vm::kernel::{GuestKernel, KernelChoice};
use strata_vm::qemu::VmConfig;

const CHECK_SH: &str = r#"set -e
test "$(cat /etc/motd)" = top || { echo "FAIL motd: $(cat /etc/motd)"; exit 1; }
test ! -e /data/gone || { echo "FAIL whiteout"; exit 1; }
test ! -e /data/dir/a || { echo "FAIL replaced dir still has a"; exit 1; }
test "$(cat /data/dir/c)" = c || { echo "FAIL new file in replaced dir"; exit 1; }
test "$(stat -c %i /data/hl1)" = "$(stat -c %i /data/hl2)" || { echo "FAIL hard link"; exit 1; }
test "$(readlink /data/sym)" = ../etc/motd || { echo "FAIL symlink"; exit 1; }
test "$(cat /data/sym)" = top || { echo "FAIL symlink target"; exit 1; }
grep -q ' / overlay .*lowerdir=/run/strata/strata-lower.layers/lower,' /proc/mounts ||
  { echo "FAIL layers not from the layer device: $(grep ' / ' /proc/mounts)"; exit 1; }
echo written-in-vm > /data/new
echo "image: all checks passed"
"#;

fn umoci(args: &[&str]) {
    let st = Command::new("umoci").args(args).status().unwrap();
    assert!(st.success(), "umoci {args:?}");
}

#[test]
fn umoci_image_boots_from_the_store() {
    let _machine = crate::shared();
    strata_harness::require(&["umoci", "qemu-system-x86_64", "busybox"]);
    let strata = crate::strata();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layout = root.join("layout");
    let image = format!("{}:app", layout.display());
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &image]);
    let b1 = root.join("b1");
    umoci(&["unpack", "--image", &image, b1.to_str().unwrap()]);
    let r = b1.join("rootfs");
    strata_harness::fixture::busybox_rootfs(&r).unwrap();
    write(&r.join("etc/motd"), "base");
    write(&r.join("data/gone"), "x");
    write(&r.join("data/dir/a"), "a");
    write(&r.join("data/hl1"), "linked");
    std::fs::hard_link(r.join("data/hl1"), r.join("data/hl2")).unwrap();
    std::os::unix::fs::symlink("../etc/motd", r.join("data/sym")).unwrap();
    umoci(&["repack", "--image", &image, b1.to_str().unwrap()]);
    let b2 = root.join("b2");
    umoci(&["unpack", "--image", &image, b2.to_str().unwrap()]);
    let r = b2.join("rootfs");
    write(&r.join("etc/motd"), "top");
    std::fs::remove_file(r.join("data/gone")).unwrap();
    std::fs::remove_dir_all(r.join("data/dir")).unwrap();
    write(&r.join("data/dir/c"), "c");
    write(&r.join("check.sh"), CHECK_SH);
    umoci(&["repack", "--image", &image, b2.to_str().unwrap()]);

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

    let kernel = GuestKernel::fetch(KernelChoice::Debian6_1).expect("guest kernel");
    let initrd = root.join("initrd.cpio");
    strata_vm::initramfs::guest_initramfs(strata.path(), &kernel, &initrd).unwrap();
    // What `strata serve --rootfs vm1 --store STORE` serves (the CLI tests' `image` module checks that
    // resolution); spawned with the dirs so the lab's process helper can wait for readiness.
    let spec = ServeSpec {
        lowers,
        upper: upper.clone(),
        work: path(&rec["work"]),
        socket: root.join("vfs.sock"),
        tag: "strata".into(),
        // The image has no xattrs but overlayfs' own: its layers come from the layer device.
        lower: Some((root.join("layers.sock"), "strata-lower".into())),
        union: false,
    };
    let serve = ServeProcess::spawn(strata.path(), &spec, None, &root.join("serve.log"))
        .expect("strata serve starts");
    let vm = VmConfig {
        cmdline: "strata.tag=strata strata.cmd=\"/bin/sh /check.sh\"".into(),
        virtiofs: spec.devices(),
        timeout: Duration::from_secs(300),
        ..VmConfig::new(&kernel.vmlinuz, &initrd)
    };
    let out = vm.run().expect("qemu runs");
    let _ = serve.wait(Duration::from_secs(30));
    let console = &out.console;
    assert!(
        console.contains("image: all checks passed") && out.status == Some(0),
        "---- guest console ----\n{console}\n---- end ({:?}) ----",
        out.status
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("data/new")).unwrap(),
        "written-in-vm\n"
    );
}
