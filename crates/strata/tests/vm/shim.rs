//! `containerd-shim-strata-v2` under the real engine: containerd 1.6 (Debian's) started by the
//! test with its own config, root, state and socket (no systemd), an OCI archive built with
//! umoci + skopeo and `ctr image import`ed, then `ctr run --runtime io.containerd.strata.v2`:
//! output and exit code, the image's env/cwd/user, `ctr run -d` + `ctr task ls/kill/delete`,
//! two containers at once, a prepared `--rootfs` dir, a killed VMM, a killed shim, a `strata
//! daemon` session as the server (`STRATA_DAEMON`), refusals, and 0 mount-family syscalls by
//! the shim and everything it spawns (`strace -f -Y` attached to containerd; containerd's own
//! failed `umount2` of the bundle and `ctr`'s temporary mount of the snapshot are counted apart).
//!
//! Needs root, containerd + ctr, umoci, skopeo, strace, qemu-system-x86_64, busybox-static:
//! `scripts/install-deps.sh`. The shim binary is built by the test (`cargo build -p
//! strata-shim`) next to the `strata` binary under test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use strata_harness::fixture::write;
use strata_harness::session::MOUNT_SYSCALLS;

/// The runtime name containerd knows the shim by.
const RUNTIME: &str = "io.containerd.strata.v2";
/// The test image's reference.
const IMAGE: &str = "docker.io/library/strata-shim-test:1";

/// `containerd-shim-strata-v2`, built now, next to the `strata` under test.
pub fn shim_binary() -> PathBuf {
    let strata = crate::strata();
    let dir = strata.path().parent().unwrap().to_path_buf();
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let target = dir.parent().unwrap().file_name().unwrap().to_owned();
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", "strata-shim"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // target/<triple>/debug: build for the same triple (.cargo/config.toml sets one).
    if target != "target" {
        cmd.arg("--target").arg(&target);
    }
    let st = cmd.status().expect("cargo runs");
    assert!(st.success(), "cargo build -p strata-shim");
    let shim = dir.join("containerd-shim-strata-v2");
    assert!(shim.is_file(), "{} missing", shim.display());
    shim
}

/// A containerd of the test's own (config, root, state, sockets in a temp dir).
pub struct Containerd {
    pub dir: tempfile::TempDir,
    child: Child,
    pub sock: PathBuf,
    /// Where the shim keeps its sandboxes' sockets (STRATA_SHIM_STATE_DIR).
    pub shim_state: PathBuf,
}

impl Containerd {
    /// Starts containerd with the shim's directory first on its PATH and `env` for the shims.
    pub fn start(shim: &Path, env: &[(&str, &str)]) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("strata-ctrd")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let sock = d.join("containerd.sock");
        let config = d.join("config.toml");
        write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = sock.display(),
            ),
        );
        let shim_state = d.join("shim");
        let path = format!(
            "{}:{}",
            shim.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("STRATA_BIN", crate::strata().path())
            .env("STRATA_SHIM_STATE_DIR", &shim_state)
            .env("STRATA_ACCEL", "tcg")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("containerd starts");
        let c = Containerd {
            dir,
            child,
            sock,
            shim_state,
        };
        let t0 = Instant::now();
        while !c.ctr(&["version"]).status.success() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "containerd did not come up:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    /// containerd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// containerd's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ctr --address SOCK ARGS…` (stdin from /dev/null).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs `ctr ARGS…` to the end.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("ctr runs")
    }

    /// Runs `ctr ARGS…`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\n{}",
            text(&out),
            self.shim_logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The shims' log lines from containerd's log (the shim log is forwarded there).
    pub fn shim_logs(&self) -> String {
        self.log()
            .lines()
            .filter(|l| l.contains("runtime=io.containerd.strata.v2") || l.contains("shim"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Builds the test image (busybox, a user `app`, Env FOO=bar, WorkingDir /srv with a file
    /// `notes` of app's, User app) as an OCI archive and imports it.
    pub fn import_test_image(&self) {
        let d = self.dir.path();
        let layout = d.join("layout");
        let img = format!("{}:app", layout.display());
        umoci(&["init", "--layout", layout.to_str().unwrap()]);
        umoci(&["new", "--image", &img]);
        let b = d.join("bundle");
        umoci(&["unpack", "--image", &img, b.to_str().unwrap()]);
        let r = b.join("rootfs");
        strata_harness::fixture::busybox_rootfs(&r).unwrap();
        write(
            &r.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        );
        write(&r.join("etc/group"), "root:x:0:\napp:x:1000:\n");
        std::fs::create_dir_all(r.join("srv")).unwrap();
        // A file of the image its user may change (a copy-up when the server merges).
        write(&r.join("srv/notes"), "notes\n");
        std::os::unix::fs::chown(r.join("srv/notes"), Some(1000), Some(1000)).unwrap();
        umoci(&["repack", "--image", &img, b.to_str().unwrap()]);
        umoci(&[
            "config",
            "--image",
            &img,
            "--config.env",
            "FOO=bar",
            "--config.workingdir",
            "/srv",
            "--config.user",
            "app",
            "--config.cmd",
            "sh",
        ]);
        let archive = d.join("image.tar");
        let st = Command::new("skopeo")
            .args(["copy", "-q", &format!("oci:{img}")])
            .arg(format!("oci-archive:{}:{IMAGE}", archive.display()))
            .status()
            .unwrap();
        assert!(st.success(), "skopeo copy");
        self.ok(&["image", "import", archive.to_str().unwrap()]);
    }

    /// What the shim left in its state dir (sandbox sockets): must be nothing.
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(&self.shim_state)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path().display().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first (their shims stop their VMs), then containerd.
        let tasks = self.ctr(&["task", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["task", "delete", "-f", id]);
        }
        let cs = self.ctr(&["container", "ls", "-q"]);
        for id in String::from_utf8_lossy(&cs.stdout).lines() {
            let _ = self.ctr(&["container", "rm", id]);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn umoci(args: &[&str]) {
    let out = Command::new("umoci").args(args).output().unwrap();
    assert!(out.status.success(), "umoci {args:?}: {}", text(&out));
}

/// stdout + stderr of a finished command.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}stderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `strace -f` attached to a running process (all its threads and every child it makes from
/// now on), recording the mount-family syscalls.
pub struct Strace {
    child: Child,
    log: PathBuf,
}

impl Strace {
    pub fn attach(pid: u32, log: &Path) -> Strace {
        let child = Command::new("strace")
            .args(["-f", "-qq", "-Y", "-e"])
            .arg(format!("trace={}", MOUNT_SYSCALLS.join(",")))
            .arg("-o")
            .arg(log)
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("strace runs");
        // strace writes nothing until a traced call: give it time to attach to every thread.
        std::thread::sleep(Duration::from_secs(2));
        Strace {
            child,
            log: log.to_owned(),
        }
    }

    /// Detaches; the mount-family syscalls seen.
    pub fn finish(mut self) -> Vec<String> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        strata_harness::session::count_mount_syscalls(&self.log).unwrap()
    }
}

/// Runs `ctr` under `strace -f` (its own mounts: the temporary mount of the snapshot).
fn ctr_traced(c: &Containerd, log: &Path, args: &[&str]) -> (Output, Vec<String>) {
    let out = Command::new("strace")
        .args(["-f", "-qq", "-e"])
        .arg(format!("trace={}", MOUNT_SYSCALLS.join(",")))
        .arg("-o")
        .arg(log)
        .arg("ctr")
        .arg("--address")
        .arg(&c.sock)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out,
        strata_harness::session::count_mount_syscalls(log).unwrap(),
    )
}

/// The tools every test here needs (a real containerd, the test image's makers, a VM), and
/// `extra`.
fn require_engine(extra: &[&str]) {
    let mut tools = vec![
        "containerd",
        "ctr",
        "umoci",
        "skopeo",
        "qemu-system-x86_64",
        "busybox",
    ];
    tools.extend_from_slice(extra);
    strata_harness::require(&tools);
}

fn run_rm(c: &Containerd, id: &str, cmd: &[&str]) -> Output {
    let mut args = vec!["run", "--runtime", RUNTIME, "--rm", IMAGE, id];
    args.extend_from_slice(cmd);
    c.ctr(&args)
}

/// `ctr`'s exit status is the container's: `code`, else show ctr's output and the shim's log.
fn assert_exit(out: &Output, c: &Containerd, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}\n{}",
        text(out),
        c.shim_logs()
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The task's line in `ctr task ls`: (pid, status).
fn task_ls(c: &Containerd, id: &str) -> Option<(u32, String)> {
    c.ok(&["task", "ls"]).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&id)).then(|| (f[1].parse().unwrap_or(0), f[2].to_string()))
    })
}

fn wait_status(c: &Containerd, id: &str, want: &str) -> u32 {
    let t0 = Instant::now();
    loop {
        if let Some((pid, st)) = task_ls(c, id) {
            if st == want {
                return pid;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "task {id} never {want}: {:?}\n{}",
            task_ls(c, id),
            c.shim_logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn no_strata_processes(c: &Containerd) {
    // Every sandbox's qemu and strata serve name the shim state dir in their arguments.
    let needle = c.shim_state.display().to_string();
    let t0 = Instant::now();
    loop {
        let mut left = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                left.push(cmd);
            }
        }
        if left.is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "processes left behind: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ctr_runs_containers_in_strata_vms() {
    let _machine = crate::alone();
    require_engine(&["strace"]);
    let shim = shim_binary();
    let c = Containerd::start(&shim, &[]);
    c.import_test_image();

    // Output and exit code, with containerd + shim + VM under strace; ctr apart.
    let trace = Strace::attach(c.pid(), &c.dir.path().join("containerd.strace"));
    let (out, ctr_mounts) = ctr_traced(
        &c,
        &c.dir.path().join("ctr.strace"),
        &[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            IMAGE,
            "t1",
            "sh",
            "-c",
            "echo hi; exit 3",
        ],
    );
    let engine_mounts = trace.finish();
    assert_exit(&out, &c, 3);
    assert_eq!(stdout(&out), "hi\n");
    // `-Y` names each caller: containerd's own threads are `containerd`; the shim, `strata
    // serve` and qemu are everything else.
    let (by_containerd, by_shim): (Vec<_>, Vec<_>) = engine_mounts
        .into_iter()
        .partition(|l| l.split(' ').next().unwrap_or("").contains("<containerd>"));
    assert_eq!(
        by_shim,
        Vec::<String>::new(),
        "mount-family syscalls by the shim and its children"
    );
    // containerd's own: its failed umount2 of the bundle's (never mounted) rootfs dir when it
    // removes the bundle. None may succeed.
    assert!(
        by_containerd.iter().all(|l| l.contains(" = -1 ")),
        "containerd mounted: {by_containerd:#?}"
    );
    println!(
        "ctr run IMAGE: shim + strata serve + qemu: 0 mount-family syscalls; containerd: {} \
         (all failed: {by_containerd:?}); ctr itself: {} {ctr_mounts:?}",
        by_containerd.len(),
        ctr_mounts.len(),
    );

    // The image config: Env, WorkingDir, User.
    let out = run_rm(
        &c,
        "t2",
        &["sh", "-c", "echo \"$FOO $(pwd) $(id -un) $HOME\""],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out), "bar /srv app /home/app\n");

    // stdin piped through, EOF included (sent before the guest has even booted).
    let mut cat = c
        .cmd(&["run", "--runtime", RUNTIME, "--rm", IMAGE, "t2s", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut w = cat.stdin.take().unwrap();
        w.write_all(b"line one\nline two\n").unwrap();
    }
    let out = cat.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), c.shim_logs());
    assert_eq!(stdout(&out), "line one\nline two\n");

    // Detached: task ls / kill / delete, and Delete of a running task refused.
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "t3",
        "sleep",
        "600",
    ]);
    let pid = wait_status(&c, "t3", "RUNNING");
    assert!(pid > 0);
    let del = c.ctr(&["task", "delete", "t3"]);
    assert!(
        !del.status.success(),
        "delete of a running task: {}",
        text(&del)
    );
    c.ok(&["task", "kill", "-s", "SIGTERM", "t3"]);
    wait_status(&c, "t3", "STOPPED");
    c.ok(&["task", "delete", "t3"]);
    c.ok(&["container", "rm", "t3"]);

    // Two at once.
    let spawn = |id: &str, word: &str| {
        c.cmd(&[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            IMAGE,
            id,
            "sh",
            "-c",
            &format!("sleep 1; echo {word}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let a = spawn("t4a", "first");
    let b = spawn("t4b", "second");
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "{}\n{}",
        text(&a),
        text(&b)
    );
    assert_eq!(
        (stdout(&a), stdout(&b)),
        ("first\n".into(), "second\n".into())
    );

    // A prepared rootfs dir (`ctr run --rootfs`): zero mounts end to end, the dir untouched.
    let dir = c.dir.path().join("bundle/rootfs");
    let before = strata_harness::snapshot::snapshot(&dir, &[]);
    let (out, ctr_mounts) = ctr_traced(
        &c,
        &c.dir.path().join("ctr-rootfs.strace"),
        &[
            "run",
            "--rootfs",
            "--runtime",
            RUNTIME,
            "--rm",
            dir.to_str().unwrap(),
            "t5",
            "sh",
            "-c",
            "echo written > /etc/motd && cat /etc/motd",
        ],
    );
    assert!(out.status.success(), "{}\n{}", text(&out), c.shim_logs());
    assert_eq!(stdout(&out), "written\n");
    assert_eq!(ctr_mounts, Vec::<String>::new(), "ctr run --rootfs mounts");
    let after = strata_harness::snapshot::snapshot(&dir, &[]);
    assert!(strata_harness::snapshot::diff(&before, &after).is_empty());

    // A killed VMM: the task ends with an error status, nothing left behind.
    let mut run = c
        .cmd(&[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            IMAGE,
            "t6",
            "sleep",
            "600",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let vmm = wait_status(&c, "t6", "RUNNING");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = run.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "ctr run did not end"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(st.code(), Some(125), "{}", c.shim_logs());

    // The shim itself killed: containerd runs `containerd-shim-strata-v2 delete` in the bundle,
    // which stops the VMM recorded there.
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "t7",
        "sleep",
        "600",
    ]);
    let vmm = wait_status(&c, "t7", "RUNNING");
    let bundle = c
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task/default/t7");
    let address = std::fs::read_to_string(bundle.join("address")).unwrap();
    let socket = PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert!(socket.exists(), "{}", socket.display());
    let alive = || Path::new(&format!("/proc/{vmm}")).exists();
    let stat = std::fs::read_to_string(format!("/proc/{vmm}/stat")).unwrap();
    let shim_pid: i32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t0 = Instant::now();
    while task_ls(&c, "t7").is_some() || alive() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "after the shim died: task {:?}, VMM alive: {}",
            task_ls(&c, "t7"),
            alive()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.ok(&["container", "rm", "t7"]);
    assert!(
        !socket.exists(),
        "the dead shim's socket {} is left",
        socket.display()
    );

    no_strata_processes(&c);
    assert_eq!(
        c.leftovers(),
        Vec::<String>::new(),
        "shim state left behind"
    );
}

#[test]
fn ctr_bad_input_is_refused_and_leaves_nothing() {
    let _machine = crate::shared();
    strata_harness::require(&["containerd", "ctr", "umoci", "skopeo", "busybox"]);
    let shim = shim_binary();
    let c = Containerd::start(&shim, &[("STRATA_KERNEL", "/nonexistent/kernel")]);
    c.import_test_image();

    // Another snapshotter's mount (native: a bind mount).
    let out = c.ctr(&[
        "run",
        "--snapshotter",
        "native",
        "--runtime",
        RUNTIME,
        "--rm",
        IMAGE,
        "b1",
        "true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("rootfs mount of type \"bind\"") && err.contains("invalid argument"),
        "{}",
        text(&out)
    );

    // A missing kernel.
    let out = run_rm(&c, "b2", &["true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("STRATA_KERNEL"), "{}", text(&out));

    assert_eq!(c.ok(&["task", "ls", "-q"]), "");
    no_strata_processes(&c);
    assert_eq!(
        c.leftovers(),
        Vec::<String>::new(),
        "shim state left behind"
    );
    // The bundles are gone too (containerd removes them once the shim says it is done).
    let bundles = c
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task/default");
    let left: Vec<_> = std::fs::read_dir(&bundles)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "bundles left: {left:?}");
}

#[test]
fn ctr_through_a_strata_daemon_session() {
    let _machine = crate::shared();
    require_engine(&["strace"]);
    let shim = shim_binary();
    let d = tempfile::Builder::new()
        .prefix("strata-dmn")
        .tempdir()
        .unwrap();
    let api = d.path().join("api.sock");
    let c = Containerd::start(&shim, &[("STRATA_DAEMON", api.to_str().unwrap())]);
    c.import_test_image();
    // The daemon may serve what is under containerd's root (the snapshotter's directories).
    let root = c.dir.path().join("root");
    let daemon = strata_harness::session::DaemonProcess::spawn(
        crate::strata().path(),
        &api,
        &["--allow".as_ref(), root.as_os_str()],
        Some(&d.path().join("daemon.strace")),
        &d.path().join("daemon.log"),
    )
    .expect("strata daemon starts");
    let out = run_rm(&c, "d1", &["sh", "-c", "echo via-daemon; exit 4"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}\n{}\n{}",
        text(&out),
        c.shim_logs(),
        daemon.log_text()
    );
    assert_eq!(stdout(&out), "via-daemon\n");
    assert!(
        daemon
            .log_text()
            .contains("session over session=default.d1"),
        "{}",
        daemon.log_text()
    );
    no_strata_processes(&c);
    assert_eq!(
        c.leftovers(),
        Vec::<String>::new(),
        "shim state left behind"
    );
    // The session's sockets are gone from the daemon's socket dir.
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !["api.sock", "api.sock.lock", "daemon.log", "daemon.strace"].contains(&n.as_str())
        })
        .collect();
    assert_eq!(left, Vec::<String>::new(), "daemon socket dir");
    let (clean, calls) = daemon.stop().unwrap();
    assert!(clean, "strata daemon stopped cleanly");
    assert_eq!(calls.mounts, Vec::<String>::new(), "daemon mounts");
    assert_eq!(calls.processes, Vec::<String>::new(), "daemon processes");
}

/// `ctr run -t` (ctr's own terminal in raw mode, as a user at a shell has it): the container
/// gets a terminal of that size (ctr sends ResizePty), one output stream, its exit code, and
/// Ctrl-C typed at ctr's terminal interrupts it.
#[test]
fn ctr_runs_a_container_with_a_terminal() {
    let _machine = crate::shared();
    require_engine(&[]);
    let shim = shim_binary();
    let c = Containerd::start(&shim, &[]);
    c.import_test_image();
    let timeout = Duration::from_secs(300);
    let ctr_t = |id: &str, script: &str| {
        let mut cmd = c.cmd(&["run", "-t", "--runtime", RUNTIME, "--rm", IMAGE, id]);
        cmd.args(["sh", "-c", script]);
        cmd
    };
    let (code, shown, err) = crate::tty::on_a_terminal(
        ctr_t("tty1", "tty; stty size; exit 4"),
        (33, 101),
        timeout,
        |_, _| {},
    );
    assert_eq!(code, Some(4), "{shown}\n{err}\n{}", c.shim_logs());
    assert!(shown.contains("/dev/pts/"), "{shown}");
    assert!(shown.contains("33 101"), "{shown}");

    let (code, shown, err) = crate::tty::on_a_terminal(
        ctr_t("tty2", "echo ready; sleep 60; echo not-interrupted"),
        (24, 80),
        timeout,
        |t, _| {
            t.wait_for("ready");
            t.type_in(&[3]);
        },
    );
    assert_eq!(code, Some(130), "{shown}\n{err}\n{}", c.shim_logs());
    assert!(!shown.contains("not-interrupted"), "{shown}");
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

/// `STRATA_EROFS=1`: the shim gives the guest the snapshot's layers as one EROFS image on a
/// read-only virtio-blk device, built at the first Create of that layer chain in
/// `STRATA_EROFS_CACHE` and reused by the next; the upper is still served.
#[test]
fn ctr_runs_containers_on_an_erofs_layer_image() {
    let _machine = crate::shared();
    require_engine(&["mkfs.erofs"]);
    let shim = shim_binary();
    // A directory the shim creates (0700): the shim refuses a cache others may enter.
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("erofs");
    let c = Containerd::start(
        &shim,
        &[
            ("STRATA_EROFS", "1"),
            ("STRATA_EROFS_CACHE", cache.to_str().unwrap()),
        ],
    );
    c.import_test_image();
    let images = || -> Vec<(String, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".img"))
            .map(|e| {
                let m = e.metadata().unwrap().modified().unwrap();
                (e.file_name().to_string_lossy().into_owned(), m)
            })
            .collect();
        v.sort();
        v
    };
    // The guest has a block device only when the layers came as the image (the container's
    // own /proc/mounts shows its root, not the guest's erofs mount).
    let script = "ls /sys/block | grep -c '^vd'; head -n 1 /etc/group; echo $FOO; exit 3";
    let out = run_rm(&c, "e1", &["sh", "-c", script]);
    eprintln!("{}", text(&out));
    assert_exit(&out, &c, 3);
    let first = images();
    assert_eq!(first.len(), 1, "one image for the chain: {first:?}");
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(lines, ["1", "root:x:0:", "bar"], "{lines:?}");
    let out = run_rm(&c, "e2", &["sh", "-c", script]);
    assert_exit(&out, &c, 3);
    assert_eq!(images(), first, "the second container reused the image");
    no_strata_processes(&c);
    assert_eq!(
        c.leftovers(),
        Vec::<String>::new(),
        "shim state left behind"
    );
}

/// `STRATA_UNION=1`: the server merges the snapshot's layers and upper itself and the guest
/// mounts no overlay (its root is the virtio-fs tree's `rootfs/`); a change to an image file is
/// a copy-up done by the server.
#[test]
fn ctr_runs_containers_on_the_root_merged_by_the_server() {
    let _machine = crate::shared();
    require_engine(&[]);
    let shim = shim_binary();
    let c = Containerd::start(&shim, &[("STRATA_UNION", "1")]);
    c.import_test_image();
    let script = "grep ' / ' /proc/mounts | cut -d' ' -f3; head -n 1 /etc/group; echo $FOO; \
                  echo extra >> notes; cat notes; exit 3";
    let out = run_rm(&c, "u1", &["sh", "-c", script]);
    eprintln!("{}", text(&out));
    assert_exit(&out, &c, 3);
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        ["virtiofs", "root:x:0:", "bar", "notes", "extra"],
        "{lines:?}"
    );
    no_strata_processes(&c);
    assert_eq!(
        c.leftovers(),
        Vec::<String>::new(),
        "shim state left behind"
    );
}
