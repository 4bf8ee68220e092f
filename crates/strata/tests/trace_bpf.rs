//! `strata trace --producer bpf` inside the Debian 6.1 guest, booted under qemu from a busybox
//! initramfs with the static `strata` binary as the only other program: every program group
//! loads and attaches (nothing `missing`), a tight tmpfs mount loop shows up in the mount
//! rows, and the tracer's overhead on that loop is measured (printed, not asserted).
//!
//! Skips when qemu or busybox is missing (scripts/install-deps.sh installs them).

use std::time::Duration;

use strata_lab::{fixture, qemu, GuestKernel, Initramfs, KernelChoice, VmConfig};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");
/// Mount+umount pairs per loop; three loops (without, with, without the tracer).
const N: usize = 300;

fn json_line(console: &str, tag: &str) -> serde_json::Value {
    let line = console
        .lines()
        .find_map(|l| l.find(tag).map(|i| &l[i + tag.len()..]))
        .unwrap_or_else(|| panic!("no {tag} line; console:\n{console}"));
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{tag}: {e}: {line}"))
}

/// Mean mount+umount time of one bench run, from its samples.
fn mean_ms(bench: &serde_json::Value) -> f64 {
    let mut sum = 0.0;
    let mut n = 0usize;
    for s in bench["strategies"].as_array().unwrap() {
        let samples = s["samples_ms"].as_array().unwrap();
        sum += samples.iter().map(|v| v.as_f64().unwrap()).sum::<f64>();
        n = n.max(samples.len());
    }
    sum / n as f64
}

#[test]
fn bpf_producer_in_the_6_1_guest_and_its_overhead() {
    if qemu::find_in_path(qemu::QEMU).is_none() {
        eprintln!(
            "SKIP: {} not installed; run scripts/install-deps.sh",
            qemu::QEMU
        );
        return;
    }
    let busybox = match fixture::static_busybox() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIP: {e}");
            return;
        }
    };
    let kernel = GuestKernel::fetch(KernelChoice::Debian6_1).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    let bench = format!(
        "strata bench create --strategy tmpfs-mount --n {N} --interval-ms 0 --json --samples"
    );
    let init = format!(
        "#!/bin/busybox sh\n\
         B=/bin/busybox\n\
         export PATH=/bin\n\
         $B mount -t proc proc /proc\n\
         $B mount -t sysfs sys /sys\n\
         $B mount -t tmpfs tmp /tmp\n\
         {bench} --dir /tmp/b1 > /tmp/off1.json\n\
         strata trace --producer bpf --json /tmp/trace.json > /tmp/trace.txt 2> /tmp/trace.err &\n\
         T=$!\n\
         i=0; while ! $B grep -q 'tracing with' /tmp/trace.err && [ $i -lt 1200 ]; do $B sleep 0.1; i=$((i + 1)); done\n\
         {bench} --dir /tmp/b2 > /tmp/on.json\n\
         $B kill -INT $T; wait $T\n\
         {bench} --dir /tmp/b3 > /tmp/off2.json\n\
         $B echo \"@off1 $($B cat /tmp/off1.json)\"\n\
         $B echo \"@on $($B cat /tmp/on.json)\"\n\
         $B echo \"@off2 $($B cat /tmp/off2.json)\"\n\
         $B echo \"@trace $($B cat /tmp/trace.json)\"\n\
         $B sed 's/^/@err /' /tmp/trace.err\n\
         $B echo \"strata: command exited with status 0\"\n\
         $B poweroff -f\n"
    );
    let mut cpio = Initramfs::new();
    cpio.file("bin/busybox", 0o755, busybox.as_path())
        .file("bin/strata", 0o755, std::path::Path::new(STRATA))
        .char_dev("dev/console", 0o600, 5, 1)
        .dir("proc", 0o755)
        .dir("sys", 0o755)
        .dir("tmp", 0o755)
        .file("init", 0o755, init.as_bytes());
    cpio.write_to(&initrd).unwrap();
    let mut vm = VmConfig::new(&kernel.vmlinuz, &initrd);
    vm.timeout = Duration::from_secs(300);
    vm.mem_mib = 1024;
    let out = vm.run().unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.timed_out, "VM timed out; console:\n{}", out.console);
    let c = &out.console;

    let t = json_line(c, "@trace ");
    assert_eq!(t["source"], "ebpf", "{t}");
    assert_eq!(t["kernel"]["shrinker_lock"], "rwsem");
    assert_eq!(
        t["missing"].as_array().unwrap().len(),
        0,
        "every program group attaches on 6.1: {}",
        t["missing"]
    );
    let rows = t["mounts"].as_array().unwrap();
    for op in ["mount", "umount"] {
        let row = rows
            .iter()
            .find(|m| m["op"] == op && m["fstype"] == "tmpfs")
            .unwrap_or_else(|| panic!("no {op} tmpfs row: {t}"));
        assert!(row["n"].as_u64().unwrap() >= N as u64, "{row}");
    }
    let row = rows
        .iter()
        .find(|m| m["op"] == "mount" && m["fstype"] == "tmpfs")
        .unwrap();
    assert!(row["alloc_super_ms"].as_f64().unwrap() > 0.0, "{row}");

    let (off1, on, off2) = (
        mean_ms(&json_line(c, "@off1 ")),
        mean_ms(&json_line(c, "@on ")),
        mean_ms(&json_line(c, "@off2 ")),
    );
    let off = (off1 + off2) / 2.0;
    eprintln!(
        "tight tmpfs mount+umount loop in the 6.1 guest (qemu TCG), {N} pairs per run, mean per \
         pair: without the tracer {off1:.3} / {off2:.3} ms, with strata trace (eBPF) {on:.3} ms: \
         ratio {:.3} ({:+.1} %)",
        on / off,
        100.0 * (on / off - 1.0)
    );
}
