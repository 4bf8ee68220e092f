//! Smoke tests of strata-vm: boot the Debian 6.1 and 6.12 cloud kernels with a busybox-only
//! initramfs under qemu, load the guest modules, and kill qemu on timeout and drop.
//!
//! Needs qemu-system-x86_64, busybox-static and apt access (the first run downloads the kernel
//! into `$STRATA_CACHE` or /var/cache/strata). Set `STRATA_VM_CONSOLE=1` to watch the console.

use std::time::Duration;

use strata_harness::fixture;
use strata_vm::{qemu, GuestKernel, Initramfs, KernelChoice, VmConfig};

/// qemu and a static busybox (a failure when either is missing).
fn prerequisites() -> std::path::PathBuf {
    strata_harness::require(&[qemu::QEMU]);
    fixture::static_busybox().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn boots_debian_6_1_busybox_initramfs() {
    let _machine = crate::shared();
    let busybox = prerequisites();
    let kernel = GuestKernel::fetch(KernelChoice::Debian6_1).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("guest kernel {} ({:?})", kernel.release, kernel.vmlinuz);

    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    let mut cpio = Initramfs::new();
    cpio.file("bin/busybox", 0o755, busybox.as_path())
        .char_dev("dev/console", 0o600, 5, 1)
        .file(
            "init",
            0o755,
            &b"#!/bin/busybox sh\n\
               /bin/busybox echo hello from guest\n\
               /bin/busybox echo \"strata: command exited with status 0\"\n\
               /bin/busybox poweroff -f\n"[..],
        );
    cpio.write_to(&initrd).unwrap();

    let mut vm = VmConfig::new(&kernel.vmlinuz, &initrd);
    vm.timeout = Duration::from_secs(90);
    let out = vm.run().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "boot to poweroff: {:.2?} (timed out: {})",
        out.elapsed, out.timed_out
    );
    assert!(!out.timed_out, "VM timed out; console:\n{}", out.console);
    // Not `==`: bytes the firmware wrote just before the kernel resets the UART can end up on
    // the same console line.
    assert!(
        out.console.lines().any(|l| l.ends_with("hello from guest")),
        "no hello line; console:\n{}",
        out.console
    );
    assert_eq!(out.status, Some(0), "console:\n{}", out.console);
    assert!(out.succeeded());
}

/// Boot `choice` with the guest modules and a raw disk; check the modules load in
/// [`GUEST_MODULES`](strata_vm::GUEST_MODULES) order and provide virtio-blk, virtiofs and overlay.
fn modules_load(choice: KernelChoice) {
    let busybox = prerequisites();
    let kernel = GuestKernel::fetch(choice).unwrap_or_else(|e| panic!("{e}"));
    let modules = kernel
        .modules(strata_vm::GUEST_MODULES)
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = modules
        .iter()
        .map(|m| m.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    eprintln!("{}: modules {names:?}", kernel.release);
    assert!(names.iter().any(|n| n == "overlay.ko"), "{names:?}");
    assert!(names.iter().any(|n| n == "virtio_blk.ko"), "{names:?}");

    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut script = String::from(
        "#!/bin/busybox sh\n\
         B=/bin/busybox\n\
         $B mount -t proc proc /proc\n\
         $B mount -t sysfs sys /sys\n",
    );
    let mut cpio = Initramfs::new();
    cpio.file("bin/busybox", 0o755, busybox.as_path())
        .char_dev("dev/console", 0o600, 5, 1)
        .dir("proc", 0o755)
        .dir("sys", 0o755);
    for (m, n) in modules.iter().zip(&names) {
        cpio.file(&format!("lib/modules/{n}"), 0o644, m.as_path());
        script.push_str(&format!(
            "$B insmod /lib/modules/{n} || $B echo 'insmod {n} failed'\n"
        ));
    }
    script.push_str(
        "s=0\n\
         for fs in virtiofs overlay; do $B grep -qw $fs /proc/filesystems || { $B echo \"no $fs\"; s=1; }; done\n\
         [ -e /sys/block/vda ] || { $B echo 'no vda'; s=1; }\n\
         $B echo \"strata: command exited with status $s\"\n\
         $B poweroff -f\n",
    );
    cpio.file("init", 0o755, script.into_bytes());
    let initrd = dir.path().join("initrd.cpio");
    cpio.write_to(&initrd).unwrap();

    let mut vm = VmConfig::new(&kernel.vmlinuz, &initrd);
    vm.cpus = 1;
    vm.disks.push(disk);
    vm.timeout = Duration::from_secs(120);
    let out = vm.run().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}: boot to poweroff {:.2?}", kernel.release, out.elapsed);
    assert!(!out.console.contains("failed"), "console:\n{}", out.console);
    assert!(out.succeeded(), "console:\n{}", out.console);
}

#[test]
fn debian_6_1_guest_modules_load() {
    let _machine = crate::shared();
    modules_load(KernelChoice::Debian6_1);
}

#[test]
fn debian_6_12_guest_modules_load() {
    let _machine = crate::shared();
    modules_load(KernelChoice::Debian6_12);
}

/// A hung guest is killed at the timeout, and dropping a running VM kills qemu: no orphans.
#[test]
fn timeout_and_drop_kill_qemu() {
    let _machine = crate::shared();
    let busybox = prerequisites();
    let kernel = GuestKernel::fetch(KernelChoice::Debian6_1).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    let mut cpio = Initramfs::new();
    cpio.file("bin/busybox", 0o755, busybox.as_path())
        .char_dev("dev/console", 0o600, 5, 1)
        .file(
            "init",
            0o755,
            &b"#!/bin/busybox sh\n/bin/busybox sleep 1000\n"[..],
        );
    cpio.write_to(&initrd).unwrap();
    let mut cfg = VmConfig::new(&kernel.vmlinuz, &initrd);
    cfg.timeout = Duration::from_secs(3);

    let vm = cfg.spawn().unwrap_or_else(|e| panic!("{e}"));
    let pid = vm.pid();
    let out = vm.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(out.timed_out);
    assert_eq!(out.status, None);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "qemu {pid} still there"
    );

    let vm = cfg.spawn().unwrap_or_else(|e| panic!("{e}"));
    let pid = vm.pid();
    std::thread::sleep(Duration::from_millis(300));
    drop(vm);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "qemu {pid} still there"
    );
}
