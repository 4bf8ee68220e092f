//! The allow-list's argument filters really hold: under it, only unix sockets can be made,
//! threads can be started but not processes. The filter is irreversible and covers every
//! thread, so the check runs in a child process: this test binary re-executes itself.

use std::process::Command;

#[test]
fn argument_filters_hold() {
    if strata_harness::child::arg("argument_filters_hold").is_some() {
        return child();
    }
    strata_harness::child::run("argument_filters_hold", "");
}

fn child() {
    let d = tempfile::tempdir().unwrap();
    // Before: everything works.
    assert!(std::net::TcpListener::bind("127.0.0.1:0").is_ok());
    strata_serve::sandbox::allow_only_known().expect("install the allow-list");
    let enosys = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::ENOSYS), "{what}: {e}");
    };
    enosys(
        std::net::TcpListener::bind("127.0.0.1:0").map(drop),
        "TCP socket",
    );
    enosys(
        std::net::UdpSocket::bind("127.0.0.1:0").map(drop),
        "UDP socket",
    );
    // Unix sockets and threads, which the daemon needs, still work; signals to its own
    // threads too.
    let l = std::os::unix::net::UnixListener::bind(d.path().join("s")).unwrap();
    let _c = std::os::unix::net::UnixStream::connect(d.path().join("s")).unwrap();
    drop(l);
    assert!(std::os::unix::net::UnixStream::pair().is_ok());
    std::thread::spawn(|| ()).join().unwrap();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGWINCH).unwrap();
    // No new process (clone without CLONE_THREAD).
    assert!(Command::new("/bin/true").status().is_err());
    // strata serve, once listening: no new socket at all.
    let l = std::os::unix::net::UnixListener::bind(d.path().join("s2")).unwrap();
    strata_serve::sandbox::forbid_new_sockets().unwrap();
    let e = std::os::unix::net::UnixListener::bind(d.path().join("s3")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    let e = std::os::unix::net::UnixStream::connect(d.path().join("s2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    drop(l);
    println!("CHILD-OK");
}
