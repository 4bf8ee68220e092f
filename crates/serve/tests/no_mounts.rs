//! The seccomp filter really makes the mount family fail. The filter is irreversible and covers
//! every thread, so the check runs in a child process: this test binary re-executes itself.

use std::process::Command;

const CHILD_ENV: &str = "STRATA_NO_MOUNTS_CHILD";

#[test]
fn mount_family_fails_under_the_filter() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child();
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "mount_family_fails_under_the_filter",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("CHILD-OK"), "child did not run:\n{text}");
}

fn child() {
    use nix::errno::Errno;
    use nix::mount::{mount, umount, MsFlags};
    use nix::sched::{unshare, CloneFlags};

    strata_serve::sandbox::forbid_mounts().expect("install filter");
    let d = tempfile::tempdir().unwrap();
    let r = mount(
        Some("none"),
        d.path(),
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    );
    assert_eq!(r, Err(Errno::EPERM), "mount(tmpfs)");
    assert_eq!(umount(d.path()), Err(Errno::EPERM), "umount2");
    assert_eq!(
        unshare(CloneFlags::CLONE_NEWNS),
        Err(Errno::EPERM),
        "unshare(NEWNS)"
    );
    // Unrelated namespaces and threads keep working.
    std::thread::spawn(|| ()).join().unwrap();
    println!("CHILD-OK");
}
