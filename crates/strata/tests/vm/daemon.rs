//! `strata daemon` end to end: one daemon process (under `strace -f`) serves two real Debian
//! 6.1 guests at once, each on its own rootfs session started with `strata rootfs start`
//! (the second with a layer device: its layers on a second virtio-fs device, without xattrs).
//! Each guest assembles its overlay, writes into its own upper, and powers off; the sessions
//! end with their VMMs. strace shows zero mount-family syscalls and zero processes created
//! (threads only) during the whole run.
//!
//! Needs root, qemu-system-x86_64, strace and busybox-static: `scripts/install-deps.sh`.

use std::time::Duration;

use strata_harness::fixture;
use strata_harness::session::{host_mount_count, DaemonProcess};
use strata_vm::kernel::{GuestKernel, KernelChoice};
use strata_vm::qemu::VmConfig;

const RUN_SH: &str = r#"set -e
test "$(cat /etc/motd)" = "from the top layer" || { echo "FAIL motd"; exit 1; }
if [ "$1" = vm2 ]; then
  grep -q 'lowerdir=/run/strata/strata-lower.layers/lower,' /proc/mounts ||
    { echo "FAIL vm2 layers not from the layer device: $(grep ' / ' /proc/mounts)"; exit 1; }
fi
echo "$1" > /who
test "$(cat /who)" = "$1"
echo "vm $1: rootfs ok"
"#;

#[test]
fn one_daemon_serves_two_vms_without_mounts_or_processes() {
    let _machine = crate::alone();
    strata_harness::require(&["qemu-system-x86_64", "busybox", "strace"]);
    let strata = crate::strata();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let base = root.join("layers/base");
    let top = root.join("layers/top");
    fixture::busybox_rootfs(&base).unwrap();
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::write(top.join("etc/motd"), "from the top layer").unwrap();
    std::fs::write(top.join("run.sh"), RUN_SH).unwrap();
    for id in ["vm1", "vm2"] {
        std::fs::create_dir_all(root.join(format!("ctr/{id}/upper"))).unwrap();
        std::fs::create_dir_all(root.join(format!("ctr/{id}/work"))).unwrap();
    }
    let kernel = GuestKernel::fetch(KernelChoice::Debian6_1).expect("guest kernel");
    let initrd = root.join("initrd.cpio");
    strata_vm::initramfs::guest_initramfs(strata.path(), &kernel, &initrd).unwrap();

    let mounts_before = host_mount_count();
    let api = root.join("run/api.sock");
    std::fs::create_dir_all(root.join("run")).unwrap();
    let strace = root.join("daemon.strace");
    let daemon = DaemonProcess::spawn(
        strata.path(),
        &api,
        &["--allow".as_ref(), root.as_os_str()],
        Some(&strace),
        &root.join("daemon.log"),
    )
    .expect("strata daemon starts");
    let api_s = api.to_str().unwrap();
    for id in ["vm1", "vm2"] {
        let c = root.join(format!("ctr/{id}"));
        let sock = root.join(format!("run/{id}.sock"));
        // vm2 also gets the layer device (its layers without xattrs, on a second socket).
        let layers = root.join(format!("run/{id}.layers.sock"));
        let mut extra = vec![];
        if id == "vm2" {
            extra = vec!["--lower-socket", layers.to_str().unwrap()];
        }
        let r = strata.run(
            [
                "rootfs",
                "start",
                id,
                "--socket",
                sock.to_str().unwrap(),
                "--lower",
                top.to_str().unwrap(),
                "--lower",
                base.to_str().unwrap(),
                "--upper",
                c.join("upper").to_str().unwrap(),
                "--work",
                c.join("work").to_str().unwrap(),
                "--api",
                api_s,
            ]
            .into_iter()
            .chain(extra)
            .collect::<Vec<_>>(),
        );
        assert!(r.ok(), "rootfs start {id}: {}", r.text());
        assert!(r.text().contains("listening"), "{}", r.text());
    }
    let status = strata.ok(["rootfs", "status", "--api", api_s]);
    assert!(status.lines().count() == 2, "{status}");

    // If a guest hangs, what each daemon thread waits on, taken while it hangs (the VMs time
    // out at 120 s, when every session ends); read only if a guest fails.
    let daemon_pid = daemon.daemon_pid();
    let hang_report = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let report = hang_report.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            *report.lock().unwrap() = strata_harness::session::threads_report(&daemon_pid);
        });
    }
    let vms: Vec<_> = ["vm1", "vm2"]
        .iter()
        .map(|id| {
            let vm = VmConfig {
                // Verbose guest (init's steps, kernel messages, blocked tasks after 15 s): if a
                // guest ever hangs, its console says where.
                cmdline: format!(
                    "strata.tag=strata strata.cmd=\"/bin/sh /run.sh {id}\" strata.debug=1 \
                     loglevel=6 sysctl.kernel.hung_task_timeout_secs=15"
                ),
                // One vCPU each: two guests share this host's two cores.
                cpus: 1,
                virtiofs: std::iter::once((root.join(format!("run/{id}.sock")), "strata".into()))
                    .chain(
                        (*id == "vm2")
                            .then(|| (root.join("run/vm2.layers.sock"), "strata-lower".into())),
                    )
                    .collect(),
                timeout: Duration::from_secs(120),
                ..VmConfig::new(&kernel.vmlinuz, &initrd)
            };
            vm.spawn().expect("qemu starts")
        })
        .collect();
    for (vm, id) in vms.into_iter().zip(["vm1", "vm2"]) {
        let out = vm.wait().expect("qemu runs");
        assert!(
            out.console.contains(&format!("vm {id}: rootfs ok")) && out.status == Some(0),
            "---- {id} console ----\n{}\n---- end ({:?}, timed out: {}) ----\n\
             ---- qemu stderr ----\n{}\n---- daemon log ----\n{}\n---- daemon threads after 60 s ----\n{}",
            out.console,
            out.status,
            out.timed_out,
            out.qemu_stderr,
            daemon.log_text(),
            hang_report.lock().unwrap()
        );
        assert_eq!(
            std::fs::read_to_string(root.join(format!("ctr/{id}/upper/who"))).unwrap(),
            format!("{id}\n")
        );
    }
    // Both VMMs hung up: their sessions are over, the daemon lives on.
    let t0 = std::time::Instant::now();
    loop {
        let r = strata.run(["rootfs", "status", "--api", api_s]);
        let s = r.text();
        if r.ok() && s.contains("no sessions") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "sessions left: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!root.join("run/vm1.sock").exists());
    assert!(!root.join("run/vm2.layers.sock").exists());
    let mounts_after = host_mount_count();
    let log = daemon.log_text();
    let (clean, calls) = daemon.stop().expect("daemon stops");
    assert!(
        clean,
        "strata daemon did not exit cleanly on SIGTERM:\n{log}"
    );
    assert!(!api.exists(), "API socket left behind");
    assert_eq!(calls.mounts, Vec::<String>::new(), "mount-family syscalls");
    assert_eq!(calls.processes, Vec::<String>::new(), "processes created");
    assert!(
        calls.threads > 0,
        "strace saw no thread either: is it tracing?"
    );
    assert_eq!(mounts_before, mounts_after, "host mount table changed");
    eprintln!(
        "daemon: 2 VMs served; {} threads created, 0 processes, 0 mount syscalls; host mounts {} -> {}",
        calls.threads, mounts_before, mounts_after
    );
}
