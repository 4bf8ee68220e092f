//! `strata trace --check` inside the two Debian guest kernels (booted under qemu from a busybox
//! initramfs, the static `strata` binary copied in): `rwsem` on 6.1 (and `--exit-code` 5),
//! `lockless` on 6.12 (0), decided by the lock variable in kallsyms (both have KALLSYMS_ALL).
//! On the host: the CLI tests' `trace` module.

use std::time::Duration;

use strata_harness::fixture;
use strata_vm::{qemu, Contents, GuestKernel, Initramfs, KernelChoice, VmConfig};

fn check_json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}",
            String::from_utf8_lossy(out)
        )
    })
}

fn guest_check(choice: KernelChoice) -> serde_json::Value {
    strata_harness::require(&[qemu::QEMU]);
    let busybox = fixture::static_busybox().unwrap_or_else(|e| panic!("{e}"));
    let kernel = GuestKernel::fetch(choice).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    let mut cpio = Initramfs::new();
    cpio.file("bin/busybox", 0o755, busybox.as_path())
        .file(
            "bin/strata",
            0o755,
            Contents::StrippedElf(crate::strata().path().into()),
        )
        .char_dev("dev/console", 0o600, 5, 1)
        .dir("proc", 0o755)
        .dir("sys", 0o755)
        .file(
            "init",
            0o755,
            &b"#!/bin/busybox sh\n\
               B=/bin/busybox\n\
               $B mount -t proc proc /proc\n\
               $B mount -t sysfs sys /sys\n\
               $B echo \"@check $(/bin/strata trace --check --json)\"\n\
               /bin/strata trace --check --exit-code > /dev/null; $B echo \"@exit-code $?\"\n\
               $B echo \"strata: command exited with status $?\"\n\
               $B poweroff -f\n"[..],
        );
    cpio.write_to(&initrd).unwrap();
    let mut vm = VmConfig::new(&kernel.vmlinuz, &initrd);
    vm.timeout = Duration::from_secs(120);
    let out = vm.run().unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.timed_out, "VM timed out; console:\n{}", out.console);
    let line = out
        .console
        .lines()
        .find_map(|l| l.find("@check ").map(|i| &l[i + 7..]))
        .unwrap_or_else(|| panic!("no @check line; console:\n{}", out.console));
    let mut v = check_json(line.trim().as_bytes());
    assert_eq!(v["release"], kernel.release.as_str());
    let code = out
        .console
        .lines()
        .find_map(|l| {
            l.find("@exit-code ")
                .map(|i| l[i + 11..].trim().to_string())
        })
        .unwrap_or_else(|| panic!("no @exit-code line; console:\n{}", out.console));
    v["exit_code"] = code.parse::<i64>().unwrap().into();
    v
}

/// The deciding evidence: the lock variable itself (Debian kernels list variables).
fn decided_by_lock_symbol(v: &serde_json::Value) -> bool {
    v["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["strength"] == "lock_symbol" && e["indicates"] == v["shrinker_lock"])
}

#[test]
fn debian_6_1_guest_is_rwsem() {
    let _machine = crate::shared();
    let v = guest_check(KernelChoice::Debian6_1);
    assert_eq!(v["shrinker_lock"], "rwsem", "{v}");
    assert!(decided_by_lock_symbol(&v), "{v}");
    assert_eq!(
        v["exit_code"], 5,
        "--check --exit-code on an exposed kernel"
    );
    // Root in the guest: the tracer gets the lock's address.
    assert!(
        v["shrinker_rwsem_addr"]
            .as_str()
            .unwrap()
            .starts_with("0xffff"),
        "{v}"
    );
    assert_eq!(v["notes"].as_array().unwrap().len(), 0, "{v}");
}

#[test]
fn debian_6_12_guest_is_lockless() {
    let _machine = crate::shared();
    let v = guest_check(KernelChoice::Debian6_12);
    assert_eq!(v["shrinker_lock"], "lockless", "{v}");
    assert!(decided_by_lock_symbol(&v), "{v}");
    assert_eq!(
        v["exit_code"], 0,
        "--check --exit-code on a lockless kernel"
    );
    assert!(v.get("shrinker_rwsem_addr").is_none(), "{v}");
}
