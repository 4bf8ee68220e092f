//! `strata trace --check` on this host and inside the two Debian guest kernels (booted under
//! qemu from a busybox initramfs, the static `strata` binary copied in): `rwsem` on 6.1,
//! `lockless` on 6.12, decided by the lock variable in kallsyms (both have KALLSYMS_ALL).
//!
//! The VM part skips when qemu or busybox is missing (scripts/install-deps.sh installs them).

use std::process::Command;
use std::time::Duration;

use strata_harness::fixture;
use strata_vm::{qemu, Contents, GuestKernel, Initramfs, KernelChoice, VmConfig};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

fn check_json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}",
            String::from_utf8_lossy(out)
        )
    })
}

/// On the host: a verdict whenever the kernel has BTF, one JSON line with --json, and the human
/// form leads with the verdict.
#[test]
fn host_check() {
    let out = Command::new(STRATA)
        .args(["trace", "--check", "--json"])
        .output()
        .unwrap();
    let v = check_json(&out.stdout);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let lock = v["shrinker_lock"].as_str().unwrap().to_string();
    if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        assert_ne!(lock, "unknown", "{v}");
        assert!(out.status.success());
    }
    let text = Command::new(STRATA)
        .args(["trace", "--check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with(&format!("shrinker lock: {lock}")),
        "{text}"
    );
    assert!(text.contains("what to do:"), "{text}");
}

#[test]
fn tracing_a_second() {
    let out = Command::new(STRATA)
        .args(["trace", "--duration", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let text = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        // Not root, or a kernel without the lock (6.7+, like this host's 6.18): nothing to trace.
        Some(2) => assert!(err.contains("lockless") || err.contains("root"), "{err}"),
        // A kernel with shrinker_rwsem (Debian 12's own 6.1): a report.
        Some(0) => assert!(text.contains("shrinker lock: shrinker_rwsem"), "{text}"),
        // No tracefs here (e.g. a container): said so, nothing traced.
        Some(1) if err.contains("tracefs") || err.contains("trace_pipe") => {
            eprintln!("SKIP: {err}")
        }
        _ => panic!("{:?}: {err}", out.status),
    }
}

fn guest_check(choice: KernelChoice) -> Option<serde_json::Value> {
    if qemu::find_in_path(qemu::QEMU).is_none() {
        eprintln!(
            "SKIP: {} not installed; run scripts/install-deps.sh",
            qemu::QEMU
        );
        return None;
    }
    let busybox = match fixture::static_busybox() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIP: {e}");
            return None;
        }
    };
    let kernel = GuestKernel::fetch(choice).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    let mut cpio = Initramfs::new();
    cpio.file("bin/busybox", 0o755, busybox.as_path())
        .file("bin/strata", 0o755, Contents::StrippedElf(STRATA.into()))
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
    let v = check_json(line.trim().as_bytes());
    assert_eq!(v["release"], kernel.release.as_str());
    Some(v)
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
    let Some(v) = guest_check(KernelChoice::Debian6_1) else {
        return;
    };
    assert_eq!(v["shrinker_lock"], "rwsem", "{v}");
    assert!(decided_by_lock_symbol(&v), "{v}");
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
    let Some(v) = guest_check(KernelChoice::Debian6_12) else {
        return;
    };
    assert_eq!(v["shrinker_lock"], "lockless", "{v}");
    assert!(decided_by_lock_symbol(&v), "{v}");
    assert!(v.get("shrinker_rwsem_addr").is_none(), "{v}");
}
