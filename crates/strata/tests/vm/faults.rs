//! Faults, each with a real Debian 6.1 guest under qemu on a rootfs served by `strata serve`:
//! - the daemon SIGKILLed while the guest writes and fsyncs: every file the guest saw fsync'd is
//!   complete in the host upper dir, and a restarted daemon + fresh VM on the same dirs mounts
//!   the overlay (leftovers in work/ and a stale socket included) and sees them;
//! - the VMM SIGKILLed with requests in flight: the daemon notices, logs it and exits 0 within
//!   seconds, removes its socket, and nothing outside upper/work changed;
//! - the upper dir on a full filesystem (a 16 MiB tmpfs the *harness* mounts inside a private
//!   mount namespace, so the host mount table is untouched): the guest sees ENOSPC, not EIO,
//!   every write reported done is there, and after freeing space everything works again.
//!
//! Guest side: `guest/faults.sh`. Needs root, qemu-system-x86_64, busybox-static, util-linux
//! `unshare`: `scripts/install-deps.sh`.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_harness::env::{assert_guest_script_passed, Env};
use strata_harness::fixture::write;
use strata_harness::session::describe;
use strata_harness::snapshot::{diff, md5, snapshot};

const FAULTS_SH: &str = include_str!("guest/faults.sh");

type Lines = Arc<Mutex<Vec<String>>>;

/// Console lines of a running VM, shared with the test thread.
fn console_sink() -> (
    Lines,
    mpsc::Receiver<String>,
    impl FnMut(&str) + Send + 'static,
) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let l2 = lines.clone();
    let sink = move |line: &str| {
        l2.lock().unwrap().push(line.to_string());
        let _ = tx.send(line.to_string());
    };
    (lines, rx, sink)
}

/// Wait until `n` console lines satisfy `pred` (or panic after `timeout`).
fn wait_for_lines(
    rx: &mpsc::Receiver<String>,
    n: usize,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
    all: &Mutex<Vec<String>>,
) {
    let t0 = Instant::now();
    let mut seen = 0;
    while seen < n {
        let left = timeout.saturating_sub(t0.elapsed());
        match rx.recv_timeout(left) {
            Ok(l) if pred(&l) => seen += 1,
            Ok(_) => {}
            Err(_) => panic!(
                "waited {timeout:?} for {n} matching console lines, saw {seen}:\n{}",
                all.lock().unwrap().join("\n")
            ),
        }
    }
}

#[test]
fn daemon_killed_during_fsyncs_loses_nothing_fsynced_and_restarts() {
    let _machine = crate::shared();
    let env = Env::new(&crate::strata(), &[("faults.sh", FAULTS_SH)]);
    let mut daemon = env.serve(&[], &[]);
    let (lines, rx, sink) = console_sink();
    let mut vm = env
        .vm("/bin/sh /faults.sh write", Duration::from_secs(300))
        .spawn_with(sink)
        .expect("qemu starts");
    // Let the guest fsync a few files, then SIGKILL the daemon in the middle of the next ones.
    wait_for_lines(
        &rx,
        6,
        Duration::from_secs(240),
        |l| l.starts_with("fsynced "),
        &lines,
    );
    daemon.kill9();
    let killed_at = Instant::now();
    // The guest's next request never gets an answer; give qemu a moment, then kill it too.
    std::thread::sleep(Duration::from_secs(2));
    vm.kill();
    drop(vm);
    std::thread::sleep(Duration::from_millis(300));
    let console = lines.lock().unwrap().join("\n");
    eprintln!("---- first guest ----\n{console}\n---- end ----");
    let fsynced: Vec<(String, String)> = console
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("fsynced ")?.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect();
    assert!(fsynced.len() >= 6, "{console}");
    // Every file the guest saw fsync'd is complete on the host.
    for (name, sum) in &fsynced {
        let p = env.upper.join("data/fsynced").join(name);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert_eq!(
            len,
            256 * 1024,
            "{p:?} incomplete after the daemon was killed"
        );
        assert_eq!(&md5(&p), sum, "{p:?} differs from what the guest fsync'd");
    }
    let work_left: Vec<_> = walk_names(&env.work);
    eprintln!(
        "{} files fsync'd before SIGKILL ({:?} ago); left in work/: {work_left:?}",
        fsynced.len(),
        killed_at.elapsed()
    );

    // A new daemon on the same dirs (its predecessor's socket is still there) and a fresh VM.
    assert!(env.socket.exists(), "a SIGKILLed daemon leaves its socket");
    let mut daemon = env.serve(&[], &[]);
    let out = env
        .vm("/bin/sh /faults.sh check", Duration::from_secs(300))
        .run()
        .expect("qemu runs");
    eprintln!("---- second guest ----\n{}\n---- end ----", out.console);
    let st = daemon.wait_exit(Duration::from_secs(30));
    assert!(!out.timed_out, "second VM timed out");
    assert!(
        out.console.contains("strata: rootfs ready"),
        "the overlay did not mount over the upper/work the killed session left"
    );
    for (name, sum) in &fsynced {
        assert!(
            out.console.contains(&format!("have {name} {sum}")),
            "the second guest does not see {name} as fsync'd ({sum})"
        );
    }
    assert_eq!(out.status, Some(0), "second guest's checks");
    assert_eq!(
        std::fs::read_to_string(env.upper.join("data/after-restart")).unwrap(),
        "fresh\n"
    );
    assert!(
        st.is_some_and(|s| s.success()),
        "restarted daemon did not exit 0 after its VM ended: {:?}\n{}",
        st.map(|s| describe(&s)),
        daemon.log_text()
    );
}

#[test]
fn vmm_killed_mid_request_daemon_exits_cleanly() {
    let _machine = crate::shared();
    let env = Env::new(&crate::strata(), &[("faults.sh", FAULTS_SH)]);
    // Everything in the test dir but upper/work and what the daemon owns (log, socket, lock).
    let log = env.root().join("serve.log");
    let lock = env.socket.with_extension("sock.lock");
    let skip = [
        env.upper.as_path(),
        env.work.as_path(),
        log.as_path(),
        env.socket.as_path(),
        lock.as_path(),
    ];
    // (The test dir itself changes: the socket comes and goes in it.)
    let mut before = snapshot(env.root(), &skip);
    before.remove(env.root());
    let mut daemon = env.serve(&[], &[]);
    let (lines, rx, sink) = console_sink();
    let mut vm = env
        .vm("/bin/sh /faults.sh busy", Duration::from_secs(300))
        .spawn_with(sink)
        .expect("qemu starts");
    wait_for_lines(&rx, 1, Duration::from_secs(240), |l| l == "busy", &lines);
    // Requests in flight: writes, a tree walk and reads, in a loop.
    std::thread::sleep(Duration::from_secs(3));
    vm.kill();
    let t0 = Instant::now();
    let st = daemon.wait_exit(Duration::from_secs(20));
    let log = daemon.log_text();
    eprintln!("serve log:\n{log}");
    let st = st.unwrap_or_else(|| panic!("strata serve still running 20 s after the VMM died"));
    eprintln!(
        "daemon ended {:?} after the VMM was killed: {}",
        t0.elapsed(),
        describe(&st)
    );
    assert_eq!(
        st.code(),
        Some(0),
        "documented exit code: 0 when the VMM goes away"
    );
    assert!(
        log.contains("VMM disconnected"),
        "no log line for the disconnect"
    );
    assert!(!log.contains("panicked"), "the daemon panicked");
    assert!(!env.socket.exists(), "socket left behind");
    assert!(!lock.exists(), "lock file left behind");
    let mut after = snapshot(env.root(), &skip);
    after.remove(env.root());
    let d = diff(&before, &after);
    assert!(d.is_empty(), "outside upper/work changed: {d:#?}");
}

#[test]
fn full_upper_filesystem_is_enospc_in_the_guest_and_recovers() {
    let _machine = crate::shared();
    strata_harness::require(&["unshare"]);
    let env = Env::new(&crate::strata(), &[("faults.sh", FAULTS_SH)]);
    // A 1 MiB lower file, for a copy-up that cannot fit.
    let lower1m: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    write(&env.bottom.join("data/lower1m"), &lower1m);
    // upper and work on a 16 MiB tmpfs that only the daemon's private mount namespace has.
    // A `sleep` in that namespace keeps it (and the tmpfs) for the checks after the session.
    let small = env.root().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let holder_pid = env.root().join("holder.pid");
    let script = format!(
        "set -e; mount -t tmpfs -o size=16m,mode=0755 strata-enospc {small}; \
         mkdir {small}/upper {small}/work; sleep 600 & echo $! > {pid}; exec \"$@\"",
        small = small.display(),
        pid = holder_pid.display()
    );
    let upper = small.join("upper");
    let work = small.join("work");
    let env = Env {
        upper: upper.clone(),
        work: work.clone(),
        ..env
    };
    let mut daemon = env.serve(
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ],
        &[],
    );
    // By name, not by count: other processes on the host may mount meanwhile.
    let host_has_tmpfs = || {
        let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        m.contains("strata-enospc") || m.contains(&*small.to_string_lossy())
    };
    assert!(
        !host_has_tmpfs(),
        "the test's tmpfs leaked into the host mount table"
    );
    let out = env
        .vm("/bin/sh /faults.sh enospc", Duration::from_secs(300))
        .run()
        .expect("qemu runs");
    eprintln!("---- guest ----\n{}\n---- end ----", out.console);
    let st = daemon.wait_exit(Duration::from_secs(30));
    eprintln!("serve log:\n{}", daemon.log_text());
    assert_guest_script_passed(&out, "summary:", "the guest script");
    assert!(
        st.is_some_and(|s| s.success()),
        "daemon did not exit 0: {:?}",
        st.map(|s| describe(&s))
    );
    // What the guest left, seen from inside the daemon's namespace through the holder.
    let pid = std::fs::read_to_string(&holder_pid).unwrap();
    let ns_root = std::path::PathBuf::from(format!("/proc/{}/root", pid.trim()));
    let inside = |p: &std::path::Path| ns_root.join(p.strip_prefix("/").unwrap());
    let value = |key: &str| {
        out.console
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("guest printed no {key} line"))
            .trim()
            .to_string()
    };
    assert_eq!(md5(&inside(&upper.join("data/fill2"))), value("fill2"));
    assert_eq!(md5(&inside(&upper.join("data/lower1m"))), value("lower1m"));
    assert!(!inside(&upper.join("data/fill")).exists());
    // No half-done copy-up or temp file left in overlay's work dir.
    let leftovers = walk_names(&inside(&work));
    assert!(
        leftovers.iter().all(|n| n == "work" || n == "index"),
        "leftovers in work/: {leftovers:?}"
    );
    // The host never saw the tmpfs.
    assert!(!host_has_tmpfs());
    assert_eq!(
        env.bottom.join("data/lower1m").metadata().unwrap().len(),
        1 << 20
    );
}

/// Names of every entry under `dir` (recursively), for messages.
fn walk_names(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}
