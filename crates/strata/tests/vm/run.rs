//! `strata run` end to end: a busybox image built with umoci, imported, run in a Debian 6.1
//! guest (KVM when it works, else TCG) with the container contract of `strata.run=1`: the
//! image's Cmd, Env, WorkingDir and User applied; flags overriding them; the exit code, a
//! signal's 128+N, 127/126 for a missing or non-executable command; stdin piped through,
//! stdout and stderr apart; `--rm` leaving nothing behind; `strata initramfs`; a Debian
//! bookworm image; the runtime API as the containerd shim drives it.
//!
//! Needs root, umoci, qemu-system-x86_64 and busybox-static: `scripts/install-deps.sh`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_harness::fixture::write;

/// Generous: a TCG guest on a busy 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(300);

fn umoci(args: &[&str]) {
    let st = Command::new("umoci").args(args).status().unwrap();
    assert!(st.success(), "umoci {args:?}");
}

/// A store holding image `bb`: busybox, a user `app` (uid 1000, home /home/app, in group
/// wheel), Cmd printing who, where and $GREETING; Env GREETING=hello; WorkingDir /srv; User app.
fn busybox_store(root: &Path) -> PathBuf {
    strata_harness::require(&["umoci", "qemu-system-x86_64", "busybox"]);
    let layout = root.join("layout");
    let image = format!("{}:bb", layout.display());
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &image]);
    let b = root.join("bundle");
    umoci(&["unpack", "--image", &image, b.to_str().unwrap()]);
    let r = b.join("rootfs");
    strata_harness::fixture::busybox_rootfs(&r).unwrap();
    write(
        &r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:100:app:/home/app:/bin/sh\n",
    );
    write(
        &r.join("etc/group"),
        "root:x:0:\nusers:x:100:\nwheel:x:10:app\n",
    );
    std::fs::create_dir_all(r.join("home/app")).unwrap();
    write(&r.join("srv/data"), "served\n");
    umoci(&["repack", "--image", &image, b.to_str().unwrap()]);
    umoci(&[
        "config",
        "--image",
        &image,
        "--config.cmd",
        "sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo user=$(id -un) groups=$(id -G) cwd=$(pwd) greeting=$GREETING home=$HOME; cat data",
        "--config.env",
        "GREETING=hello",
        "--config.workingdir",
        "/srv",
        "--config.user",
        "app",
    ]);
    let store = root.join("store");
    crate::strata().ok([
        "image",
        "import",
        layout.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    store
}

/// How one `strata run` ended.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn show(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn run_cmd(store: &Path, args: &[&str]) -> Command {
    let mut c = crate::strata().cmd();
    c.arg("run").arg("--store").arg(store).args(args);
    c
}

/// Read `r` to the end on a thread.
fn collect(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Wait for `child` (killed after [`TIMEOUT`]: a hang fails the test, it does not hang it).
fn finish(mut child: Child, out: std::thread::JoinHandle<String>) -> Ran {
    let err = collect(child.stderr.take().unwrap());
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("strata run did not end within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `strata run --store STORE ARGS…` with `stdin` as its input.
fn run(store: &Path, args: &[&str], stdin: &[u8]) -> Ran {
    let mut child = run_cmd(store, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = collect(child.stdout.take().unwrap());
    finish(child, out)
}

fn containers(store: &Path) -> Vec<String> {
    std::fs::read_dir(store.join("containers"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn run_exit_code_user_home_and_rm() {
    let _machine = crate::shared();
    let tmp = tempfile::tempdir().unwrap();
    let store = busybox_store(tmp.path());
    let r = run(
        &store,
        &[
            "--rm",
            "--name",
            "exit7",
            "bb",
            "--",
            "sh",
            "-c",
            "echo $HOME; id -un; echo to-stderr >&2; exit 7",
        ],
        b"",
    );
    assert_eq!(r.code, Some(7), "{}", r.show());
    assert_eq!(r.stdout, "/home/app\napp\n", "{}", r.show());
    assert!(r.stderr.contains("to-stderr\n"), "{}", r.show());
    // --rm: no rootfs, no sandbox state, no VMM left.
    assert!(containers(&store).is_empty(), "{:?}", containers(&store));
    assert!(!Path::new("/run/strata/sandboxes/exit7").exists());
    let ps = Command::new("pgrep")
        .args(["-f", "sandboxes/exit7/"])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

#[test]
fn run_applies_the_image_config_and_overrides() {
    let _machine = crate::shared();
    let tmp = tempfile::tempdir().unwrap();
    let store = busybox_store(tmp.path());
    let r = run(&store, &["--rm", "bb"], b"");
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert_eq!(
        r.stdout,
        "user=app groups=100 10 cwd=/srv greeting=hello home=/home/app\nserved\n",
        "{}",
        r.show()
    );
    // Flags win over the config; the rootfs stays without --rm and keeps what was written.
    let r = run(
        &store,
        &[
            "--name",
            "kept",
            "-u",
            "root",
            "-w",
            "/work",
            "-e",
            "GREETING=bye",
            "--hostname",
            "box1",
            "bb",
            "--",
            "sh",
            "-c",
            "echo $(id -u) $(pwd) $GREETING $(hostname); echo kept > /work/file; \
             grep -c -E ' /dev/(pts|shm|mqueue) ' /proc/mounts",
        ],
        b"",
    );
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert_eq!(r.stdout, "0 /work bye box1\n3\n", "{}", r.show());
    let upper = store.join("containers/kept/upper");
    assert_eq!(
        std::fs::read_to_string(upper.join("work/file")).unwrap(),
        "kept\n"
    );
    crate::strata().ok(["rootfs", "rm", "kept", "--store", store.to_str().unwrap()]);
    // --entrypoint replaces the (empty) Entrypoint; the command becomes its arguments.
    let r = run(
        &store,
        &["--rm", "--entrypoint", "/bin/echo", "bb", "a", "b"],
        b"",
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "a b\n"),
        "{}",
        r.show()
    );
}

#[test]
fn run_pipes_stdin_and_reports_missing_commands() {
    let _machine = crate::shared();
    let tmp = tempfile::tempdir().unwrap();
    let store = busybox_store(tmp.path());
    let input: Vec<u8> = (0..2000)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes();
    let r = run(
        &store,
        &["--rm", "bb", "--", "sh", "-c", "wc -l; echo done"],
        &input,
    );
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert_eq!(r.stdout, "2000\ndone\n", "{}", r.show());
    let r = run(&store, &["--rm", "bb", "--", "no-such-command"], b"");
    assert_eq!(r.code, Some(127), "{}", r.show());
    assert!(
        r.stderr.contains("executable file not found"),
        "{}",
        r.show()
    );
    let r = run(&store, &["--rm", "bb", "--", "/etc/passwd"], b"");
    assert_eq!(r.code, Some(126), "{}", r.show());
    // Refused by the guest (the user is resolved there): strata's own failure, 125, said.
    let r = run(&store, &["--rm", "-u", "ghost", "bb", "--", "true"], b"");
    assert_eq!(r.code, Some(125), "{}", r.show());
    assert!(
        r.stderr.contains("unable to find user ghost"),
        "{}",
        r.show()
    );
    assert!(containers(&store).is_empty(), "{:?}", containers(&store));
}

#[test]
fn run_forwards_signals() {
    let _machine = crate::shared();
    let tmp = tempfile::tempdir().unwrap();
    let store = busybox_store(tmp.path());
    for (sig, script, want) in [
        (
            libc::SIGTERM,
            "echo ready; exec sleep 1000",
            128 + libc::SIGTERM,
        ),
        (
            libc::SIGINT,
            "trap 'echo caught; exit 3' INT; echo ready; while :; do sleep 1; done",
            3,
        ),
    ] {
        let mut child = run_cmd(&store, &["--rm", "bb", "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert_eq!(first, "ready\n");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::try_from(sig).unwrap(),
        )
        .unwrap();
        let r = finish(child, collect(out));
        assert_eq!(r.code, Some(want), "signal {sig}: {}", r.show());
        if sig == libc::SIGINT {
            assert_eq!(r.stdout, "caught\n", "{}", r.show());
        }
    }
    assert!(containers(&store).is_empty(), "{:?}", containers(&store));
}

#[test]
fn initramfs_is_small_and_has_the_console_module() {
    let _machine = crate::shared();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("initrd.cpio");
    let said = crate::strata().ok(["initramfs", "--kernel", "6.1", "-o", out.to_str().unwrap()]);
    assert!(said.contains("modules of 6.1."), "{said}");
    let size = std::fs::metadata(&out).unwrap().len();
    println!("strata initramfs: {size} bytes");
    assert!(size < 40 << 20, "{size} bytes: /init not stripped?");
    let list = Command::new("cpio")
        .args(["-t", "--quiet", "-F"])
        .arg(&out)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("virtio_console.ko"), "{list}");
    assert!(list.lines().any(|l| l == "init"), "{list}");
}

/// The runtime API the containerd shim drives: explicit dirs (a snapshotter's), served by a
/// `strata daemon` session, the VMM created paused and resumed, output on a pipe; and a paused
/// sandbox killed before it ran: `VmFailed`, session and sockets gone.
#[test]
fn runtime_paused_daemon_dirs_and_kill() {
    use strata_runtime::{
        ContainerSpec, ExitStatus, Rootfs, Sandbox, SandboxConfig, Server, Stdio, VmSpec,
    };
    let _machine = crate::shared();
    strata_harness::require(&["qemu-system-x86_64", "busybox"]);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let lower = root.join("snap/1/fs");
    strata_harness::fixture::busybox_rootfs(&lower).unwrap();
    let (upper, work) = (root.join("snap/2/fs"), root.join("snap/2/work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let run_dir = root.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let api = run_dir.join("api.sock");
    let daemon = strata_harness::session::DaemonProcess::spawn(
        crate::strata().path(),
        &api,
        &["--allow".as_ref(), root.join("snap").as_os_str()],
        None,
        &root.join("daemon.log"),
    )
    .unwrap();
    let config = |id: &str, args: &[&str]| {
        let mut spec = ContainerSpec::new(args.iter().map(|s| s.to_string()).collect());
        spec.hostname = Some(id.into());
        let mut cfg = SandboxConfig::new(
            id,
            VmSpec::default(),
            Rootfs::Dirs {
                lowers: vec![lower.clone()],
                upper: upper.clone(),
                work: work.clone(),
            },
            spec,
        );
        cfg.strata = crate::strata().path().to_owned();
        cfg.server = Server::Daemon {
            api: api.clone(),
            socket_dir: None,
        };
        cfg.state_dir = root.join("state").join(id);
        cfg.paused = true;
        cfg
    };

    let (r, w) = nix::unistd::pipe().unwrap();
    let mut cfg = config(
        "shim1",
        &["sh", "-c", "echo hi from $(hostname); echo x > /f; exit 4"],
    );
    cfg.stdio = Stdio {
        stdin: None,
        stdout: Some(w),
        stderr: None,
    };
    let sb = Sandbox::create(cfg).unwrap();
    assert!(sb.pid() > 0);
    assert_eq!(sb.try_wait(), None, "a paused VM does not run");
    sb.start().unwrap();
    let out = collect(std::fs::File::from(r));
    let st = sb.wait_timeout(TIMEOUT).expect("the container ends");
    assert_eq!(st, ExitStatus::Code(4), "{}", sb.console());
    assert!(sb.container_pid().is_some());
    drop(sb);
    assert_eq!(out.join().unwrap(), "hi from shim1\n");
    assert_eq!(std::fs::read_to_string(upper.join("f")).unwrap(), "x\n");
    assert!(!root.join("state/shim1").exists());

    let sb = Sandbox::create(config("shim2", &["true"])).unwrap();
    sb.kill();
    let st = sb.wait_timeout(TIMEOUT).expect("a killed VMM ends");
    assert!(matches!(st, ExitStatus::VmFailed(_)), "{st:?}");
    assert!(sb.signal(15).is_err());
    drop(sb);
    assert!(!root.join("state/shim2").exists());
    let status = crate::strata().ok(["rootfs", "status", "--api", api.to_str().unwrap()]);
    assert!(!status.contains("shim"), "sessions left: {status}");
    drop(daemon);
}

/// The issue's own check, on a real distribution: a Debian bookworm image (debootstrap
/// minbase, cached once per machine, as the `workloads` test's) built with umoci with a Cmd,
/// Env, WorkingDir and User; `strata run IMAGE` runs them; `-- sh -c 'echo $HOME; id -un;
/// exit 7'` prints the user's home and name and exits 7.
#[test]
fn run_debian_image() {
    let _machine = crate::shared();
    strata_harness::require(&["umoci", "qemu-system-x86_64", "debootstrap"]);
    let tree = strata_harness::fixture::debootstrap_bookworm(&["python3-minimal"])
        .expect("debootstrap bookworm");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layout = root.join("layout");
    let image = format!("{}:debian", layout.display());
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &image]);
    let b = root.join("bundle");
    umoci(&["unpack", "--image", &image, b.to_str().unwrap()]);
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", tree.display()))
        .arg(b.join("rootfs"))
        .status()
        .unwrap();
    assert!(st.success());
    umoci(&["repack", "--image", &image, b.to_str().unwrap()]);
    umoci(&[
        "config",
        "--image",
        &image,
        "--config.cmd",
        "sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        ". /etc/os-release; echo $ID $VERSION_CODENAME; echo $(id -un) $HOME $(pwd) $LANG",
        "--config.env",
        "LANG=C.UTF-8",
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--config.workingdir",
        "/var/tmp",
        "--config.user",
        "nobody",
    ]);
    let store = root.join("store");
    crate::strata().ok([
        "image",
        "import",
        layout.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    let r = run(&store, &["--rm", "debian"], b"");
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert_eq!(
        r.stdout,
        "debian bookworm\nnobody /nonexistent /var/tmp C.UTF-8\n",
        "{}",
        r.show()
    );
    let r = run(
        &store,
        &[
            "--rm",
            "-u",
            "root",
            "debian",
            "--",
            "sh",
            "-c",
            "echo $HOME; id -un; exit 7",
        ],
        b"",
    );
    assert_eq!(r.code, Some(7), "{}", r.show());
    assert_eq!(r.stdout, "/root\nroot\n", "{}", r.show());
    assert!(containers(&store).is_empty(), "{:?}", containers(&store));
}

/// `strata run`, its `strata serve` child and qemu, all under `strace -f`: not one
/// mount-family syscall on the host, successful or not.
#[test]
fn run_makes_no_host_mount() {
    let _machine = crate::shared();
    strata_harness::require(&["strace"]);
    let tmp = tempfile::tempdir().unwrap();
    let store = busybox_store(tmp.path());
    let log = tmp.path().join("strace.log");
    let set = strata_harness::session::MOUNT_SYSCALLS.join(",");
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-e"])
        .arg(format!("trace={set}"))
        .arg("-o")
        .arg(&log)
        .arg(crate::strata().path())
        .args(["run", "--rm", "--store"])
        .arg(&store)
        .args([
            "bb",
            "--",
            "sh",
            "-c",
            "echo in-guest; mount | grep -c overlay",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let out = collect(child.stdout.take().unwrap());
    let r = finish(child, out);
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert_eq!(r.stdout, "in-guest\n1\n", "{}", r.show());
    let calls = strata_harness::session::count_mount_syscalls(&log).unwrap();
    println!(
        "strata run: {} mount-family syscalls on the host",
        calls.len()
    );
    assert!(calls.is_empty(), "{calls:#?}");
}

/// A `strata daemon` on `store`, its API socket in `dir/run`, its log in `dir/daemon.log`.
fn daemon_on(dir: &Path, store: &Path) -> (strata_harness::session::DaemonProcess, PathBuf) {
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let api = run_dir.join("api.sock");
    let daemon = strata_harness::session::DaemonProcess::spawn(
        crate::strata().path(),
        &api,
        &["--store".as_ref(), store.as_os_str()],
        None,
        &dir.join("daemon.log"),
    )
    .unwrap();
    (daemon, api)
}

/// `strata run --api SOCK`: the store rootfs served by a session of that `strata daemon`; the
/// session ends with the container and `--rm` still removes the rootfs.
#[test]
fn run_through_a_daemon() {
    let _machine = crate::shared();
    let tmp = tempfile::tempdir().unwrap();
    let store = busybox_store(tmp.path());
    let (daemon, api) = daemon_on(tmp.path(), &store);
    let r = run(
        &store,
        &[
            "--rm",
            "--api",
            api.to_str().unwrap(),
            "--name",
            "viad",
            "bb",
            "--",
            "sh",
            "-c",
            "echo via-daemon; exit 5",
        ],
        b"",
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(5), "via-daemon\n"),
        "{}",
        r.show()
    );
    assert!(containers(&store).is_empty(), "{:?}", containers(&store));
    let status = crate::strata().ok(["rootfs", "status", "--api", api.to_str().unwrap()]);
    assert!(!status.contains("viad"), "session left: {status}");
    drop(daemon);
}

/// `strata run --erofs`: the layers come from the store's merged EROFS image on a read-only
/// virtio-blk device; the image's config, the exit code and the served upper work as before.
#[test]
fn run_on_the_erofs_layer_device() {
    let _machine = crate::shared();
    let tmp = tempfile::tempdir().unwrap();
    let store = busybox_store(tmp.path());
    let r = run(
        &store,
        &[
            "--erofs",
            "--name",
            "ero",
            "-u",
            "root",
            "bb",
            "--",
            "sh",
            "-c",
            "cat data; cat /sys/block/vda/ro; echo new > note; exit 5",
        ],
        b"",
    );
    assert_eq!(r.code, Some(5), "{}", r.show());
    // The image's file, read through EROFS from a read-only disk; the new file lands in the
    // served upper.
    assert_eq!(r.stdout, "served\n1\n", "{}", r.show());
    let note = store.join("containers/ero/upper/srv/note");
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "new\n");
    assert!(
        std::fs::read_dir(store.join("erofs")).unwrap().count() >= 1,
        "no EROFS image in the store"
    );
}

/// `strata run --erofs --api SOCK`: the same through a running `strata daemon` (the image is
/// built by `strata run`, the daemon's session plan names the block device); the session is
/// gone afterwards.
#[test]
fn run_on_the_erofs_layer_device_through_the_daemon() {
    let _machine = crate::shared();
    let tmp = tempfile::tempdir().unwrap();
    let store = busybox_store(tmp.path());
    let (daemon, api) = daemon_on(tmp.path(), &store);
    let r = run(
        &store,
        &[
            "--erofs",
            "--rm",
            "--api",
            api.to_str().unwrap(),
            "--name",
            "erod",
            "-u",
            "root",
            "bb",
            "--",
            "sh",
            "-c",
            "cat data; cat /sys/block/vda/ro; exit 6",
        ],
        b"",
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(6), "served\n1\n"),
        "{}",
        r.show()
    );
    let log = std::fs::read_to_string(tmp.path().join("daemon.log")).unwrap_or_default();
    assert!(log.contains("erod"), "the daemon never served it:\n{log}");
    let status = crate::strata().ok(["rootfs", "status", "--api", api.to_str().unwrap()]);
    assert!(!status.contains("erod"), "session left: {status}");
    drop(daemon);
}

/// `strata run --union`: the server merges the image's layers and the container's upper and
/// the guest mounts no overlay (its root is the virtio-fs tree's `rootfs/`); an image file the
/// container appends to is copied up into the upper. Once with a `strata serve` child, once
/// through a `strata daemon` session.
#[test]
fn run_on_the_root_merged_by_the_server() {
    let _machine = crate::shared();
    let tmp = tempfile::tempdir().unwrap();
    let store = busybox_store(tmp.path());
    let script = "grep ' / ' /proc/mounts | cut -d' ' -f3; echo more >> data; cat data; exit 4";
    let r = run(
        &store,
        &[
            "--union", "--name", "uni", "-u", "root", "bb", "--", "sh", "-c", script,
        ],
        b"",
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(4), "virtiofs\nserved\nmore\n"),
        "{}",
        r.show()
    );
    let data = store.join("containers/uni/upper/srv/data");
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "served\nmore\n");

    let (daemon, api) = daemon_on(tmp.path(), &store);
    let r = run(
        &store,
        &[
            "--union",
            "--rm",
            "--api",
            api.to_str().unwrap(),
            "--name",
            "unid",
            "-u",
            "root",
            "bb",
            "--",
            "sh",
            "-c",
            script,
        ],
        b"",
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(4), "virtiofs\nserved\nmore\n"),
        "{}",
        r.show()
    );
    let log = std::fs::read_to_string(tmp.path().join("daemon.log")).unwrap_or_default();
    assert!(log.contains("unid"), "the daemon never served it:\n{log}");
    drop(daemon);
}

/// `strata run --store STORE ARGS…` on a pseudo-terminal of this test (see
/// [`crate::tty::on_a_terminal`]).
fn run_on_a_terminal(
    store: &Path,
    args: &[&str],
    size: (u16, u16),
    interact: impl FnOnce(&mut crate::tty::Terminal, u32),
) -> Ran {
    let (code, stdout, stderr) =
        crate::tty::on_a_terminal(run_cmd(store, args), size, TIMEOUT, interact);
    Ran {
        code,
        stdout,
        stderr,
    }
}

/// `strata run -t`: the container gets a terminal of our size with TERM set, its output comes
/// back through ours, Ctrl-C typed on ours interrupts it (the guest's line discipline sends
/// SIGINT: 130), and a resize of ours (SIGWINCH) resizes its terminal.
#[test]
fn run_with_a_terminal() {
    let _machine = crate::shared();
    let tmp = tempfile::tempdir().unwrap();
    let store = busybox_store(tmp.path());
    let root = ["--rm", "-t", "-u", "root", "bb", "--", "sh", "-c"];
    let with = |script: &'static str| [&root[..], &[script]].concat();

    let r = run_on_a_terminal(
        &store,
        &with("tty; stty size; echo term=$TERM; exit 3"),
        (33, 101),
        |_, _| {},
    );
    assert_eq!(r.code, Some(3), "{}", r.show());
    for want in ["/dev/pts/", "33 101", "term="] {
        assert!(r.stdout.contains(want), "{want:?} missing: {}", r.show());
    }
    assert!(!r.stdout.contains("term=\r"), "TERM unset: {}", r.show());

    let r = run_on_a_terminal(
        &store,
        &with("echo ready; sleep 60; echo not-interrupted"),
        (24, 80),
        |t, _| {
            t.wait_for("ready");
            t.type_in(&[3]);
        },
    );
    assert_eq!(r.code, Some(130), "{}", r.show());
    assert!(!r.stdout.contains("not-interrupted"), "{}", r.show());

    let r = run_on_a_terminal(
        &store,
        &with("stty size; echo ready; read line; stty size"),
        (24, 80),
        |t, pid| {
            t.wait_for("ready");
            let st = Command::new("stty")
                .arg("-F")
                .arg(&t.path)
                .args(["rows", "50", "cols", "132"])
                .status()
                .unwrap();
            assert!(st.success());
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGWINCH,
            )
            .unwrap();
            // Give the resize a moment to reach the guest before the shell reads on.
            std::thread::sleep(Duration::from_millis(500));
            t.type_in(b"go\r");
        },
    );
    assert_eq!(r.code, Some(0), "{}", r.show());
    assert!(r.stdout.contains("24 80"), "{}", r.show());
    assert!(r.stdout.contains("50 132"), "{}", r.show());
}
