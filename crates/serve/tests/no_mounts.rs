//! The seccomp filter really makes the mount family fail. The filter is irreversible and covers
//! every thread, so the check runs in a child process: this test binary re-executes itself.

#[test]
fn mount_family_fails_under_the_filter() {
    if strata_harness::child::arg("mount_family_fails_under_the_filter").is_some() {
        return child();
    }
    strata_harness::child::run("mount_family_fails_under_the_filter", "");
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
