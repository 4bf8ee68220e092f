//! A hostile guest against tight session limits: a Debian 6.1 guest under qemu, on a rootfs
//! served by `strata serve --max-nodes 1000 --max-handles 64 --no-device-nodes` (with
//! `STRATA_SERVE_OPEN=1`, so that OPEN makes handles), runs `guest/hostile2.sh` on the
//! raw virtio-fs tree: races between rename and open with a symlink to a host path, renames and
//! links into layers, device nodes an image ships (a host block device, /dev/kvm's numbers),
//! xattrs outside the allowed namespaces, and exhausting the daemon's nodes and open handles
//! (ENFILE in the guest, the slots come back when it forgets/releases). Every attempt fails
//! cleanly and the daemon keeps serving; afterwards the host checks that the layers and a host
//! file the guest aimed at are unchanged, and that the daemon logged the refusals and exited 0.
//!
//! (The `rootfs` module runs the first hostile script, `guest/hostile.sh`, with the default limits.)

use std::time::Duration;

use strata_harness::env::{assert_guest_script_passed, Env};
use strata_harness::fixture::write;
use strata_harness::session::describe;
use strata_harness::snapshot::{diff, snapshot};

const HOSTILE2_SH: &str = include_str!("guest/hostile2.sh");

#[test]
fn hostile_guest_hits_limits_and_races_and_the_daemon_keeps_serving() {
    let _machine = crate::shared();
    let env = Env::new(&crate::strata(), &[("hostile2.sh", HOSTILE2_SH)]);
    let secret = env.root().join("outside/secret");
    write(&secret, "HOST-SECRET\n");
    write(
        &env.top.join("host_secret_path"),
        secret.display().to_string(),
    );
    let data = env.bottom.join("data");
    write(&data.join("base.txt"), "base\n");
    for i in 0..1500 {
        write(
            &env.bottom.join("many").join(format!("f{i}")),
            format!("{i}\n"),
        );
    }
    let mknod = |name: &str, kind: nix::sys::stat::SFlag, major: u64, minor: u64| {
        nix::sys::stat::mknod(
            &data.join(name),
            kind,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(major, minor),
        )
        .unwrap();
    };
    mknod("sda", nix::sys::stat::SFlag::S_IFBLK, 8, 0);
    mknod("kvm", nix::sys::stat::SFlag::S_IFCHR, 10, 232);
    let layers = env.root().join("layers");
    let before = snapshot(&layers, &[]);
    let secret_before = snapshot(&env.root().join("outside"), &[]);

    // --no-device-nodes: the guest may not make block/char devices in its upper either.
    // STRATA_SERVE_OPEN=1: OPEN makes handles, so files held open count against --max-handles
    // (by default OPEN is answered ENOSYS and a held file costs only its node).
    let mut daemon = env.serve(
        &["env", "STRATA_SERVE_OPEN=1"],
        &[
            "--max-nodes",
            "1000",
            "--max-handles",
            "64",
            "--no-device-nodes",
        ],
    );
    let out = env
        .vm("/bin/sh /hostile2.sh", Duration::from_secs(400))
        .run()
        .expect("qemu runs");
    eprintln!(
        "---- guest ----\n{}\n---- end ({:?}) ----",
        out.console, out.elapsed
    );
    let st = daemon.wait_exit(Duration::from_secs(30));
    let log = daemon.log_text();
    eprintln!("serve log:\n{log}");

    assert_guest_script_passed(&out, "ok - the daemon still serves writes", "hostile2.sh");
    for what in ["1000 nodes", "64 handles"] {
        assert!(
            log.contains(&format!(
                "guest holds {what} (the per-session limit): refusing more with ENFILE"
            )),
            "no log line for the limit of {what}"
        );
    }
    assert!(!log.contains("panicked"));
    assert!(
        st.is_some_and(|s| s.success()),
        "daemon did not exit 0: {:?}",
        st.map(|s| describe(&s))
    );
    let d = diff(&before, &snapshot(&layers, &[]));
    assert!(d.is_empty(), "layers changed: {d:#?}");
    let d = diff(&secret_before, &snapshot(&env.root().join("outside"), &[]));
    assert!(
        d.is_empty(),
        "the host file the guest aimed at changed: {d:#?}"
    );
}
