//! Shared by the fault and hostile-guest VM tests: a busybox rootfs in two layers with guest
//! scripts, a `strata serve` the test can SIGKILL (or run inside a private mount namespace),
//! and a Debian 6.1 guest booted on it under qemu (TCG).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use strata_vm::kernel::{GuestKernel, KernelChoice};
use strata_vm::qemu::VmConfig;

pub fn strata_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata"))
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn write(path: &Path, data: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// One test's directories, guest kernel and initramfs.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub kernel: GuestKernel,
    pub initrd: PathBuf,
    pub top: PathBuf,
    pub bottom: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub socket: PathBuf,
}

impl Env {
    /// Two layers: `bottom` a busybox rootfs with the static `strata` binary in `/bin`, `top`
    /// the guest scripts given as (name in `/`, text). Empty upper and work in `ctr/`.
    pub fn new(scripts: &[(&str, &str)]) -> Env {
        for tool in ["qemu-system-x86_64", "busybox"] {
            assert!(have(tool), "{tool} missing: run scripts/install-deps.sh");
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let bottom = root.join("layers/bottom");
        let top = root.join("layers/top");
        strata_harness::fixture::busybox_rootfs(&bottom).unwrap();
        std::fs::copy(strata_bin(), bottom.join("bin/strata")).unwrap();
        std::fs::create_dir_all(&top).unwrap();
        for (name, text) in scripts {
            write(&top.join(name), text);
        }
        let upper = root.join("ctr/upper");
        let work = root.join("ctr/work");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let kernel = GuestKernel::fetch(KernelChoice::Debian6_1).expect("guest kernel");
        let initrd = root.join("initrd.cpio");
        strata_vm::initramfs::guest_initramfs(&strata_bin(), &kernel, &initrd).unwrap();
        Env {
            socket: root.join("vfs.sock"),
            tmp,
            kernel,
            initrd,
            top,
            bottom,
            upper,
            work,
        }
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// `strata serve` on this env's dirs, with `extra` arguments, started through `wrap`
    /// (e.g. `unshare -m ...`; empty: directly).
    pub fn serve(&self, wrap: &[&str], extra: &[&str]) -> Daemon {
        let mut args: Vec<String> = wrap.iter().map(|s| s.to_string()).collect();
        args.push(strata_bin().display().to_string());
        for a in [
            "serve",
            "--socket",
            &self.socket.display().to_string(),
            "--upper",
            &self.upper.display().to_string(),
            "--work",
            &self.work.display().to_string(),
            "--lower",
            &self.top.display().to_string(),
            "--lower",
            &self.bottom.display().to_string(),
        ] {
            args.push(a.to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Daemon::spawn(&args, &self.socket, &self.root().join("serve.log"))
    }

    /// A VM on the served socket that runs `cmd` (a `strata.cmd=` value) as the container.
    ///
    /// `no_timer_check`: on a loaded host, TCG can miss the kernel's early IO-APIC timer check
    /// and the guest panics at boot ("IO-APIC + timer doesn't work!"); seen once here.
    pub fn vm(&self, cmd: &str, timeout: Duration) -> VmConfig {
        VmConfig {
            cmdline: format!("no_timer_check strata.tag=strata strata.cmd=\"{cmd}\""),
            virtiofs: vec![(self.socket.clone(), "strata".into())],
            timeout,
            ..VmConfig::new(&self.kernel.vmlinuz, &self.initrd)
        }
    }
}

/// A `strata serve` process (its own process group) the test may SIGKILL.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    pub pid: u32,
    status: Option<ExitStatus>,
}

impl Daemon {
    fn spawn(args: &[String], socket: &Path, log: &Path) -> Daemon {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..])
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().unwrap();
        let pid = child.id();
        let mut d = Daemon {
            child,
            log: log.to_owned(),
            pid,
            status: None,
        };
        let t0 = Instant::now();
        // The socket exists once the daemon listens (never connect to probe: one VMM only).
        while !std::fs::symlink_metadata(socket)
            .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            .unwrap_or(false)
        {
            if let Some(st) = d.try_wait() {
                panic!(
                    "strata serve exited ({st}) before listening:\n{}",
                    d.log_text()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "strata serve did not listen in 20 s:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        d
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// SIGKILL, as an OOM killer or an operator would.
    pub fn kill9(&mut self) {
        if self.try_wait().is_none() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            self.status = self.child.wait().ok();
        }
    }

    /// Wait up to `timeout` for the daemon to exit by itself; None if it did not.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if t0.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The whole group, even after the daemon itself exited: helpers a test started in it
        // (a namespace holder) go too.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.kill9();
    }
}

/// How a process ended, for messages: "exit 0" or "signal 9".
pub fn describe(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => st.to_string(),
    }
}

/// Every path under `root` with (type+mode, uid, gid, size, mtime, ctime, content hash for
/// files): compared before and after to show nothing changed there.
pub type Snapshot = BTreeMap<PathBuf, (u32, u32, u32, u64, i64, i64, u64)>;

pub fn snapshot(root: &Path, skip: &[&Path]) -> Snapshot {
    let mut out = Snapshot::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if skip.iter().any(|s| *s == p) {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let hash = if m.is_file() {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&p).unwrap_or_default().hash(&mut h);
            h.finish()
        } else {
            0
        };
        out.insert(
            p.clone(),
            (
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.mtime(),
                m.ctime(),
                hash,
            ),
        );
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    out
}

/// The differences between two snapshots, one line each.
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in after {
        match before.get(k) {
            None => d.push(format!("new {k:?}")),
            Some(b) if b != v => d.push(format!("changed {k:?}: {b:?} -> {v:?}")),
            _ => {}
        }
    }
    for k in before.keys() {
        if !after.contains_key(k) {
            d.push(format!("removed {k:?}"));
        }
    }
    d
}

/// md5 of a file, as the guest's `md5sum` prints it.
pub fn md5(path: &Path) -> String {
    let out = Command::new("md5sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The guest ran its TAP-style script to the end (`done_line` printed), reported no
/// `not ok` line, did not time out and exited 0.
pub fn assert_guest_script_passed(out: &strata_vm::VmOutput, done_line: &str, what: &str) {
    assert!(!out.timed_out, "VM timed out");
    let failed: Vec<&str> = out
        .console
        .lines()
        .filter(|l| l.starts_with("not ok"))
        .collect();
    assert!(failed.is_empty(), "guest checks failed: {failed:#?}");
    assert!(
        out.console.contains(done_line),
        "{what} did not run to the end"
    );
    assert_eq!(out.status, Some(0));
}
