//! Real software on a real image: Debian bookworm (debootstrap minbase + python3-minimal, cached
//! once per machine) as the bottom layer of an OCI image built with umoci, a second layer with a
//! local .deb, a tarball of hard links and symlinks and the guest script; imported with
//! `strata image import`, given a rootfs with `strata rootfs create`, served with the layer
//! device, booted in a Debian 6.1 guest. `guest/workloads.sh` runs `apt-get check`, `dpkg -i`
//! and `dpkg -r`, `useradd`/`userdel`, Python's `tempfile.mkstemp` (as root and as a user) and
//! `tar x`: each opens files with O_NOFOLLOW or creates what the fixes of issue #18 are about.
//! After the VM stops, a host overlay mount of the same layers and upper (the oracle) must show
//! what the guest saw in every directory the workloads changed. Twice: with the guest's own
//! overlay, and with `strata serve --union` (the daemon merges; its upper dir must read back
//! the same under the host's overlayfs).
//!
//! Needs root, debootstrap (and the network the first time), umoci, qemu-system-x86_64 and
//! busybox-static: `scripts/install-deps.sh`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use strata_harness::fixture::write;
use strata_harness::session::{ServeProcess, ServeSpec};
use strata_vm::kernel::{GuestKernel, KernelChoice};
use strata_vm::qemu::VmConfig;

const WORKLOADS_SH: &str = include_str!("guest/workloads.sh");
const MANIFEST_SH: &str = include_str!("guest/manifest.sh");
/// Directories whose manifests the guest and the oracle must agree on.
const CHANGED: &[&str] = &[
    "/etc",
    "/srv",
    "/home",
    "/usr/share/hello-strata",
    "/var/lib/dpkg",
];

fn run(cmd: &mut Command) {
    let st = cmd.status().unwrap();
    assert!(st.success(), "{cmd:?}: {st}");
}

/// A tiny package: /usr/share/hello-strata/hello.txt.
fn build_deb(dir: &Path) -> PathBuf {
    let pkg = dir.join("hello-strata");
    write(
        &pkg.join("DEBIAN/control"),
        "Package: hello-strata\nVersion: 1.0\nArchitecture: all\nMaintainer: strata tests \
         <tests@strata.invalid>\nDescription: strata VM test package\n",
    );
    write(&pkg.join("usr/share/hello-strata/hello.txt"), "hello");
    let deb = dir.join("hello-strata.deb");
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&pkg)
        .arg(&deb));
    deb
}

/// A tarball with a hard link (in another dir) and a symlink.
fn build_tar(dir: &Path) -> PathBuf {
    let t = dir.join("tarsrc/t");
    write(&t.join("a"), "linked");
    std::fs::create_dir_all(t.join("sub")).unwrap();
    std::fs::hard_link(t.join("a"), t.join("sub/b")).unwrap();
    std::os::unix::fs::symlink("a", t.join("c")).unwrap();
    let tar = dir.join("links.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(dir.join("tarsrc"))
        .arg("t"));
    tar
}

fn manifest(text: &str) -> BTreeSet<String> {
    text.lines()
        .skip_while(|l| *l != "manifest-begin")
        .take_while(|l| *l != "manifest-end")
        .filter(|l| l.starts_with("M "))
        // Files that legitimately differ between a running system and a mount of it.
        .filter(|l| !l.starts_with("M /etc/mtab|"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn debian_workloads_run_and_match_the_host_overlay() {
    workloads(false);
}

#[test]
fn debian_workloads_run_on_the_daemon_merged_root_and_match_the_host_overlay() {
    workloads(true);
}

fn workloads(union: bool) {
    let _machine = crate::shared();
    strata_harness::require(&[
        "debootstrap",
        "umoci",
        "dpkg-deb",
        "qemu-system-x86_64",
        "busybox",
    ]);
    let debian = strata_harness::fixture::debootstrap_bookworm(&["python3-minimal"])
        .unwrap_or_else(|e| panic!("{e}"));
    let strata = crate::strata();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layout = root.join("layout");
    let image = format!("{}:debian", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    let b1 = root.join("b1");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&b1));
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", debian.display()))
        .arg(b1.join("rootfs")));
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&b1));
    let b2 = root.join("b2");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&b2));
    let r = b2.join("rootfs");
    std::fs::copy(build_deb(root), r.join("root/hello-strata.deb")).unwrap();
    std::fs::copy(build_tar(root), r.join("root/links.tar")).unwrap();
    std::fs::copy(
        strata_harness::fixture::static_busybox().unwrap(),
        r.join("bin/busybox"),
    )
    .unwrap();
    write(&r.join("workloads.sh"), WORKLOADS_SH);
    write(&r.join("manifest.sh"), MANIFEST_SH);
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&b2));

    let store = root.join("store");
    let st = store.to_str().unwrap();
    strata.ok(["image", "import", layout.to_str().unwrap(), "--store", st]);
    let rec: serde_json::Value = serde_json::from_str(&strata.ok([
        "rootfs", "create", "--image", "debian", "--id", "w1", "--json", "--store", st,
    ]))
    .unwrap();
    let path = |v: &serde_json::Value| PathBuf::from(v.as_str().unwrap());
    let lowers: Vec<PathBuf> = rec["lowers"].as_array().unwrap().iter().map(path).collect();
    let upper = path(&rec["upper"]);

    let kernel = GuestKernel::fetch(KernelChoice::Debian6_1).expect("guest kernel");
    let initrd = root.join("initrd.cpio");
    strata_vm::initramfs::guest_initramfs(strata.path(), &kernel, &initrd).unwrap();
    let spec = ServeSpec {
        lowers: lowers.clone(),
        upper: upper.clone(),
        work: path(&rec["work"]),
        socket: root.join("vfs.sock"),
        tag: "strata".into(),
        lower: (!union).then(|| (root.join("layers.sock"), "strata-lower".into())),
        union,
    };
    let serve = ServeProcess::spawn(strata.path(), &spec, None, &root.join("serve.log"))
        .expect("strata serve starts");
    let vm = VmConfig {
        cmdline: "no_timer_check strata.tag=strata strata.cmd=\"/bin/sh /workloads.sh\"".into(),
        virtiofs: spec.devices(),
        timeout: Duration::from_secs(900),
        mem_mib: 1024,
        ..VmConfig::new(&kernel.vmlinuz, &initrd)
    };
    let out = vm.run().expect("qemu runs");
    let _ = serve.wait(Duration::from_secs(30));
    let console = &out.console;
    eprintln!(
        "---- guest console ----\n{console}\n---- end ({:?}) ----",
        out.elapsed
    );
    strata_harness::env::assert_guest_script_passed(&out, "summary:", "workloads.sh");
    if union {
        assert!(
            !console.contains("lowerdir="),
            "the guest mounted an overlay of its own"
        );
    }

    // The oracle: a host overlay of the same layers and upper shows what the guest saw.
    let guest_view = manifest(console);
    assert!(guest_view.len() > 100, "guest manifest too short");
    let merged = root.join("oracle");
    let work = root.join("oracle-work");
    std::fs::create_dir_all(&merged).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let lowerdir: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged));
    let mut host = String::from("manifest-begin\n");
    for d in CHANGED {
        let out = Command::new("busybox")
            .args(["sh", "-c", MANIFEST_SH, "manifest"])
            .arg(merged.join(d.trim_start_matches('/')))
            .arg("info")
            .output()
            .unwrap();
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            host.push_str(&l.replacen("M .", &format!("M {d}"), 1));
            host.push('\n');
        }
    }
    host.push_str("manifest-end\n");
    let _ = Command::new("umount").arg(&merged).status();
    let host_view = manifest(&host);
    let only_guest: Vec<_> = guest_view.difference(&host_view).collect();
    let only_host: Vec<_> = host_view.difference(&guest_view).collect();
    assert!(
        only_guest.is_empty() && only_host.is_empty(),
        "guest and host overlay disagree\nonly in guest: {only_guest:#?}\nonly on host: {only_host:#?}"
    );
}
