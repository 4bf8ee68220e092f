//! One container start as strata does it: `strata serve` on the host (optionally under strace,
//! to count mount-family syscalls), a guest VM booted on the served tree, and the evidence
//! afterwards (console, syscall count, host mount table before/after).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use strata_vm::VmError;

/// Syscalls that create, change or move a mount, or make a mount namespace.
pub const MOUNT_SYSCALLS: &[&str] = &[
    "mount",
    "umount2",
    "fsopen",
    "fsconfig",
    "fsmount",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "pivot_root",
    "unshare",
    "setns",
];

/// A child in its own process group (strata, or strace tracing strata, or a wrapper that runs
/// strata), killed with its whole group when dropped: a failed test never leaves a daemon
/// behind.
struct Group(Child);

impl Group {
    /// Start `ARGV…` (under `strace -f --trace=SYSCALLS -o LOG` when `strace_log` is given),
    /// output to `log`, in its own process group, dying with this process.
    fn spawn(
        argv: &[OsString],
        strace_log: Option<(&Path, &[&str])>,
        log: &Path,
    ) -> Result<Group, VmError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| VmError::Serve("nothing to start".into()))?;
        let mut cmd = match strace_log {
            Some((out, syscalls)) => {
                let mut c = Command::new("strace");
                c.arg("-f")
                    .arg("-qq")
                    .arg("-o")
                    .arg(out)
                    .arg(format!("--trace={}", syscalls.join(",")))
                    .arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args);
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(VmError::io("cannot create", log))?;
        let logf2 = logf
            .try_clone()
            .map_err(VmError::io("cannot duplicate", log))?;
        cmd.stdin(Stdio::null()).stdout(logf).stderr(logf2);
        // Own process group: stopping it reaches strace's tracee (or a wrapper's child) too.
        // And it dies with us.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        strata_vm::cmd::kill_with_parent(&mut cmd);
        let what = strata_vm::cmd::describe(&cmd);
        cmd.spawn().map(Group).map_err(|e| {
            VmError::Serve(format!(
                "cannot start {what}: {e} (is it installed? run scripts/install-deps.sh)"
            ))
        })
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, sig);
    }

    /// SIGKILL the whole group (the daemon, and strace when it traces it) and reap it.
    fn kill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // The whole group, even after its leader exited: helpers it started (a namespace
        // holder) go too.
        self.kill();
    }
}

/// `strata ARGS…` as an argv.
fn argv(strata: &Path, args: &[&OsStr]) -> Vec<OsString> {
    std::iter::once(strata.as_os_str())
        .chain(args.iter().copied())
        .map(OsStr::to_owned)
        .collect()
}

/// What to serve.
#[derive(Debug, Clone)]
pub struct ServeSpec {
    /// Layers, topmost first.
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub socket: PathBuf,
    pub tag: String,
    /// The layer device (`--lower-socket`, `--lower-tag`): the layers again, without xattrs.
    pub lower: Option<(PathBuf, String)>,
    /// `--union`: the daemon merges upper and layers itself (`lower` must be `None`).
    pub union: bool,
}

impl ServeSpec {
    /// The vhost-user-fs devices a VM needs for this daemon: (socket, tag), tree first.
    pub fn devices(&self) -> Vec<(PathBuf, String)> {
        std::iter::once((self.socket.clone(), self.tag.clone()))
            .chain(self.lower.clone())
            .collect()
    }
}

/// A running `strata serve`.
pub struct ServeProcess {
    child: Group,
    sockets: Vec<PathBuf>,
    strace_log: Option<PathBuf>,
    log: PathBuf,
    status: Option<ExitStatus>,
    /// Time from spawn to the sockets listening.
    pub ready_after: Duration,
}

/// Lines of `/proc/self/mountinfo`: the host mount table of this mount namespace.
pub fn host_mount_count() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

impl ServeProcess {
    /// Start `strata serve` for `spec` (under `strace -f` when `strace_log` is given) and wait
    /// until its sockets listen.
    pub fn spawn(
        strata: &Path,
        spec: &ServeSpec,
        strace_log: Option<&Path>,
        log: &Path,
    ) -> Result<ServeProcess, VmError> {
        let mut args: Vec<&OsStr> = vec![
            "serve".as_ref(),
            "--socket".as_ref(),
            spec.socket.as_os_str(),
            "--upper".as_ref(),
            spec.upper.as_os_str(),
            "--work".as_ref(),
            spec.work.as_os_str(),
            "--tag".as_ref(),
            spec.tag.as_ref(),
        ];
        for l in &spec.lowers {
            args.push("--lower".as_ref());
            args.push(l.as_os_str());
        }
        if spec.union {
            args.push("--union".as_ref());
        }
        if let Some((socket, tag)) = &spec.lower {
            args.extend([
                "--lower-socket".as_ref(),
                socket.as_os_str(),
                "--lower-tag".as_ref(),
                tag.as_ref(),
            ]);
        }
        let sockets: Vec<PathBuf> = spec.devices().into_iter().map(|(s, _)| s).collect();
        Self::spawn_argv(&argv(strata, &args), &sockets, strace_log, log)
    }

    /// Start `ARGV…`, a `strata serve` command line (possibly behind a wrapper such as
    /// `unshare -m …`), and wait until every one of `sockets` listens.
    pub fn spawn_argv(
        argv: &[OsString],
        sockets: &[PathBuf],
        strace_log: Option<&Path>,
        log: &Path,
    ) -> Result<ServeProcess, VmError> {
        let t0 = Instant::now();
        let child = Group::spawn(argv, strace_log.map(|p| (p, MOUNT_SYSCALLS)), log)?;
        let mut p = ServeProcess {
            child,
            sockets: sockets.to_vec(),
            strace_log: strace_log.map(Path::to_owned),
            log: log.to_owned(),
            status: None,
            ready_after: Duration::ZERO,
        };
        let deadline = t0 + Duration::from_secs(20);
        // The socket file exists once the daemon listens (bind+listen, after every check).
        // Never connect to probe: the daemon serves exactly one connection. The layer device's
        // socket is bound right after the tree's.
        while !p.sockets.iter().all(|s| is_socket(s)) {
            if let Some(st) = p.try_wait() {
                return Err(VmError::Serve(format!(
                    "strata serve exited ({st}) before listening:\n{}",
                    p.log_text()
                )));
            }
            if Instant::now() > deadline {
                return Err(VmError::Serve(format!(
                    "strata serve did not listen within 20 s:\n{}",
                    p.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        p.ready_after = t0.elapsed();
        Ok(p)
    }

    /// The pid of the spawned process (its process group).
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The daemon's log so far (stdout and stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.0.try_wait().ok().flatten();
        }
        self.status
    }

    /// SIGKILL the whole process group, as an OOM killer or an operator would.
    pub fn kill9(&mut self) {
        if self.try_wait().is_none() {
            self.child.signal(nix::sys::signal::Signal::SIGKILL);
            self.status = self.child.0.wait().ok();
        }
    }

    /// Wait up to `timeout` for the daemon to exit by itself; None if it did not (it keeps
    /// running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
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

    /// Wait for the daemon to end on its own (it does when the VMM disconnects), killing it
    /// after `timeout`; what strace saw, when it traced.
    pub fn wait(mut self, timeout: Duration) -> Result<ServeOutcome, VmError> {
        let status = self.wait_exit(timeout);
        if status.is_none() {
            self.kill9();
        }
        let mount_syscalls = match &self.strace_log {
            Some(p) => Some(count_mount_syscalls(p)?),
            None => None,
        };
        Ok(ServeOutcome {
            exited_cleanly: status.is_some_and(|s| s.success()),
            mount_syscalls,
        })
    }
}

/// How a process ended, for messages: "exit 0" or "signal 9".
pub fn describe(st: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => st.to_string(),
    }
}

/// Syscalls that create a process (or run a program): a thread is a `clone` with
/// `CLONE_THREAD`, anything else counts.
pub const PROCESS_SYSCALLS: &[&str] = &["clone", "clone3", "fork", "vfork", "execve", "execveat"];

/// A running `strata daemon` (optionally under `strace -f`, recording mount-family and
/// process-creating syscalls).
pub struct DaemonProcess {
    child: Group,
    pub api: PathBuf,
    strace_log: Option<PathBuf>,
    log: PathBuf,
}

/// What `strace -f` saw a `strata daemon` do.
#[derive(Debug, Clone, Default)]
pub struct DaemonSyscalls {
    pub mounts: Vec<String>,
    /// clone without CLONE_THREAD, fork, vfork, execve after the daemon's own start.
    pub processes: Vec<String>,
    /// clone with CLONE_THREAD.
    pub threads: usize,
}

impl DaemonProcess {
    /// Start `strata daemon --api API EXTRA…` (e.g. `--allow DIR`, `--store DIR`) and wait
    /// until the API socket accepts connections.
    pub fn spawn(
        strata: &Path,
        api: &Path,
        extra: &[&OsStr],
        strace_log: Option<&Path>,
        log: &Path,
    ) -> Result<DaemonProcess, VmError> {
        let mut args: Vec<&OsStr> = vec!["daemon".as_ref(), "--api".as_ref(), api.as_os_str()];
        args.extend(extra);
        let mut set: Vec<&str> = MOUNT_SYSCALLS.to_vec();
        set.extend(PROCESS_SYSCALLS);
        let child = Group::spawn(
            &argv(strata, &args),
            strace_log.map(|p| (p, set.as_slice())),
            log,
        )?;
        let mut p = DaemonProcess {
            child,
            api: api.to_owned(),
            strace_log: strace_log.map(Path::to_owned),
            log: log.to_owned(),
        };
        let t0 = Instant::now();
        loop {
            if std::os::unix::net::UnixStream::connect(api).is_ok() {
                return Ok(p);
            }
            if let Ok(Some(st)) = p.child.0.try_wait() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                return Err(VmError::Serve(format!(
                    "strata daemon exited ({st}) before listening:\n{text}"
                )));
            }
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(VmError::Serve(
                    "strata daemon did not listen within 20 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid of the spawned process: the daemon, or strace when traced (sample the daemon
    /// only when untraced).
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The daemon's own pid: the spawned process, or strace's child when traced (for
    /// [`threads_report`]).
    pub fn daemon_pid(&self) -> String {
        let pid = self.pid();
        match &self.strace_log {
            Some(_) => std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next().map(str::to_owned))
                .unwrap_or_else(|| pid.to_string()),
            None => pid.to_string(),
        }
    }

    /// SIGTERM, wait (up to 10 s, then SIGKILL), and read what strace recorded.
    pub fn stop(mut self) -> Result<(bool, DaemonSyscalls), VmError> {
        self.child.signal(nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        let clean = loop {
            match self.child.0.try_wait() {
                Ok(Some(st)) => break st.success(),
                Ok(None) if t0.elapsed() > Duration::from_secs(10) => {
                    self.child.kill();
                    break false;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(VmError::Serve(format!("waiting for strata daemon: {e}"))),
            }
        };
        let calls = match &self.strace_log {
            Some(p) => daemon_syscalls(p)?,
            None => DaemonSyscalls::default(),
        };
        Ok((clean, calls))
    }
}

/// Read a `strace -f` log of `strata daemon` (see [`DaemonSyscalls`]).
pub fn daemon_syscalls(log: &Path) -> Result<DaemonSyscalls, VmError> {
    let mut out = DaemonSyscalls {
        mounts: count_mount_syscalls(log)?,
        ..Default::default()
    };
    let text = std::fs::read_to_string(log).map_err(VmError::io("cannot read", log))?;
    let mut execs = 0;
    for l in text.lines() {
        let call = l.split_once(' ').map(|(_, r)| r).unwrap_or(l).trim_start();
        let name = call.split('(').next().unwrap_or("");
        if !PROCESS_SYSCALLS.contains(&name) || !call.contains('(') {
            continue;
        }
        if name.starts_with("clone") && call.contains("CLONE_THREAD") {
            out.threads += 1;
        } else if name == "execve" && execs == 0 {
            execs += 1; // strace starting the daemon itself
        } else {
            out.processes.push(l.to_owned());
        }
    }
    Ok(out)
}

/// How the daemon's session ended.
#[derive(Debug, Clone)]
pub struct ServeOutcome {
    /// Exit status 0 (it stops by itself when the VMM disconnects).
    pub exited_cleanly: bool,
    /// Mount-family syscalls strace saw the daemon make (attempts, successful or not).
    pub mount_syscalls: Option<Vec<String>>,
}

/// The mount-family syscalls recorded in an `strace -f -e trace=...` log. `unshare(CLONE_FS)`
/// alone is not one: it makes no namespace (a worker thread takes its own umask with it).
pub fn count_mount_syscalls(log: &Path) -> Result<Vec<String>, VmError> {
    let text = std::fs::read_to_string(log).map_err(VmError::io("cannot read", log))?;
    Ok(text
        .lines()
        .filter(|l| {
            // "<pid> name(args) = ret": a syscall line, not a signal or exit notice.
            let call = l.split_once(' ').map(|(_, r)| r).unwrap_or(l).trim_start();
            !call.starts_with("unshare(CLONE_FS)")
                && MOUNT_SYSCALLS
                    .iter()
                    .any(|s| call.starts_with(&format!("{s}(")))
        })
        .map(str::to_owned)
        .collect())
}

/// Name, state, wait channel and kernel stack of every thread of process `pid`.
pub fn threads_report(pid: &str) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("process {pid}: gone\n");
    };
    let mut tids: Vec<String> = tasks
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    tids.sort_by_key(|t| t.parse::<u64>().unwrap_or(0));
    for tid in tids {
        let read = |f: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{f}")).unwrap_or_default()
        };
        let state = read("status")
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or("")
            .to_owned();
        out.push_str(&format!(
            "thread {tid} {:?} {state} wchan={}\n{}",
            read("comm").trim(),
            read("wchan").trim(),
            read("stack")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_mount_family_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        std::fs::write(
            &p,
            "123 mount(\"none\", \"/x\", \"tmpfs\", 0, NULL) = -1 EPERM (Operation not permitted)\n\
             124 +++ exited with 0 +++\n\
             125 unshare(CLONE_NEWNS) = -1 EPERM\n\
             126 mountain(1) = 0\n\
             127 unshare(CLONE_FS)                 = 0\n\
             128 unshare(CLONE_FS|CLONE_NEWNS) = -1 EPERM\n",
        )
        .unwrap();
        assert_eq!(count_mount_syscalls(&p).unwrap().len(), 3);
    }
}
