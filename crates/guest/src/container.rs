//! Container mode of `strata guest init` (kernel parameter `strata.run=1`): the spec arrives on
//! the virtio-serial control port, the process runs with its stdio on the container ports, its
//! exit status goes back on the control port ([`strata_plan::control`]).
//!
//! Order: [`Ports::open`] right after the kernel modules (the ports appear asynchronously);
//! the rootfs is assembled and entered as without ports; then [`run`] reads the spec, sets the
//! hostname, mounts, resolves the user in the container's own `/etc/passwd`, forks the process
//! (the only fork, while init is still single-threaded), copies its stdout and stderr to the
//! ports counting bytes, forwards signals from the host, and once it exited (and every other
//! process was killed, as when a container's init ends) reports the exit with the byte counts
//! and waits for the host's `release` before the VM stops.

use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{dup2, execve, pipe2, setsid, ForkResult, Pid};
use strata_plan::container::{ContainerSpec, Mount, DEFAULT_PATH, GUEST_OWN_MOUNTS};
use strata_plan::control::{
    self, ExitReport, GuestMessage, HostMessage, CONTROL_PORT, STDERR_PORT, STDIN_PORT, STDOUT_PORT,
};

use crate::users::{self, Resolved};
use crate::{debug, say, sys};

/// How long init waits for the four ports to appear after loading virtio_console.
pub(crate) const PORT_WAIT: Duration = Duration::from_secs(20);
/// How long init waits for the host's `release` before stopping the VM anyway.
const RELEASE_WAIT: Duration = Duration::from_secs(60);
/// Exit code of a process that could not be started (Docker's 126/127).
const CANNOT_EXEC: i32 = 126;
const NOT_FOUND: i32 = 127;

/// The container ports, open.
pub(crate) struct Ports {
    control: File,
    stdin: File,
    stdout: File,
    stderr: File,
}

impl Ports {
    /// Wait (up to `wait`) for the ports named in [`strata_plan::control`] under
    /// `/sys/class/virtio-ports` and open their `/dev` nodes.
    pub(crate) fn open(wait: Duration) -> Result<Ports, String> {
        let deadline = Instant::now() + wait;
        loop {
            match Self::try_open() {
                Ok(p) => return Ok(p),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "strata.run=1 but the container ports are not there after {} s: {e} \
                         (the VMM needs -device virtio-serial-pci with virtserialport devices \
                         named {CONTROL_PORT}, {STDIN_PORT}, {STDOUT_PORT}, {STDERR_PORT}, and \
                         the initramfs the virtio_console module)",
                        wait.as_secs()
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn try_open() -> Result<Ports, String> {
        let mut found: Vec<(String, String)> = Vec::new();
        let dir = Path::new("/sys/class/virtio-ports");
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in entries.flatten() {
            if let Ok(name) = std::fs::read_to_string(e.path().join("name")) {
                found.push((
                    name.trim().to_string(),
                    e.file_name().to_string_lossy().into_owned(),
                ));
            }
        }
        let node = |port: &str| -> Result<PathBuf, String> {
            found
                .iter()
                .find(|(n, _)| n == port)
                .map(|(_, dev)| Path::new("/dev").join(dev))
                .ok_or_else(|| format!("no port named {port}"))
        };
        let open = |port: &str, read: bool, write: bool| -> Result<File, String> {
            let p = node(port)?;
            std::fs::OpenOptions::new()
                .read(read)
                .write(write)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
                .open(&p)
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        Ok(Ports {
            control: open(CONTROL_PORT, true, true)?,
            stdin: open(STDIN_PORT, true, false)?,
            stdout: open(STDOUT_PORT, false, true)?,
            stderr: open(STDERR_PORT, false, true)?,
        })
    }
}

/// Read one line of at most [`control::MAX_LINE`] bytes; `None` at EOF.
fn read_line(r: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(control::MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(Some(line))
}

/// Run the container described on the control port; `rootfs` is how assembling and entering
/// the root filesystem went. Returns the status for init's log line (the code, or 128+N).
pub(crate) fn run(ports: Ports, rootfs: Result<(), String>) -> i32 {
    let Ports {
        control,
        stdin,
        stdout,
        stderr,
    } = ports;
    let mut writer = match control.try_clone() {
        Ok(w) => w,
        Err(e) => {
            say!("strata: cannot use the control port: {e}");
            return 125;
        }
    };
    let mut reader = Some(BufReader::new(control));
    let prepared = rootfs.and_then(|()| match reader.as_mut() {
        Some(r) => prepare(&read_spec(r)?),
        None => Err("no control port".into()),
    });
    let outcome = prepared.and_then(|p| spawn(&p, stdin, stdout, stderr, &mut reader, &mut writer));
    match outcome {
        Ok(status) => status,
        Err(msg) => {
            say!("strata: container not started: {msg}");
            let _ = writer.write_all(&control::encode(&GuestMessage::Error(msg)));
            if let Some(r) = reader {
                let release = control_thread(r, Arc::new(AtomicI32::new(0)), None);
                let _ = release.recv_timeout(RELEASE_WAIT);
            }
            125
        }
    }
}

/// The first message on the control port must be the spec.
fn read_spec(r: &mut impl BufRead) -> Result<ContainerSpec, String> {
    loop {
        let line = read_line(r)
            .map_err(|e| format!("reading the control port: {e}"))?
            .ok_or("the host closed the control port before sending the container spec")?;
        match HostMessage::decode(&line) {
            Ok(HostMessage::Spec(s)) => return Ok(*s),
            Ok(other) => debug!("strata: control message before the spec ignored: {other:?}"),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Everything the child needs, computed before the fork.
struct Prepared {
    /// The program to exec, or why there is none (reported by the child, exit 127).
    path: Result<CString, String>,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    user: Resolved,
    rlimits: Vec<(nix::sys::resource::Resource, u64, u64)>,
    no_new_privileges: bool,
    /// A pseudo-terminal for the process, of this size (rows, cols) if known.
    terminal: Option<Option<(u16, u16)>>,
}

fn cstring(what: &str, s: &[u8]) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte"))
}

/// Hostname, mounts, user, environment, program: everything that happens as init.
fn prepare(spec: &ContainerSpec) -> Result<Prepared, String> {
    if let Some(h) = &spec.hostname {
        nix::unistd::sethostname(h).map_err(|e| format!("cannot set hostname {h:?}: {e}"))?;
    }
    for m in &spec.mounts {
        guest_mount(m)?;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let user = users::resolve(&spec.user, &passwd, &group)?;
    let mut env = spec.clone();
    if env.env_get("PATH").is_none() {
        env.env_set("PATH", DEFAULT_PATH);
    }
    if env.env_get("HOME").is_none() {
        env.env_set("HOME", user.home.as_deref().unwrap_or("/"));
    }
    if let Some(h) = &spec.hostname {
        if env.env_get("HOSTNAME").is_none() {
            env.env_set("HOSTNAME", h);
        }
    }
    let cwd = Path::new(&spec.cwd);
    if !cwd.exists() {
        std::fs::create_dir_all(cwd)
            .map_err(|e| format!("cannot create the working directory {}: {e}", spec.cwd))?;
    }
    let path = resolve_program(&spec.args[0], env.env_get("PATH").unwrap_or(DEFAULT_PATH))
        .and_then(|p| cstring("program path", p.as_os_str().as_bytes()));
    let rlimits = spec
        .rlimits
        .iter()
        .map(|r| {
            let res = r
                .name()
                .and_then(resource)
                .ok_or_else(|| format!("rlimit {} is not known here", r.kind))?;
            Ok((res, r.soft, r.hard))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Prepared {
        path,
        argv: spec
            .args
            .iter()
            .map(|a| cstring("argument", a.as_bytes()))
            .collect::<Result<_, _>>()?,
        env: env
            .env
            .iter()
            .map(|e| cstring("environment entry", e.as_bytes()))
            .collect::<Result<_, _>>()?,
        cwd: cstring("working directory", spec.cwd.as_bytes())?,
        user,
        rlimits,
        no_new_privileges: spec.no_new_privileges,
        terminal: spec
            .terminal
            .then(|| spec.console_size.map(|c| (c.rows, c.cols))),
    })
}

fn resource(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match name {
        "as" => R::RLIMIT_AS,
        "core" => R::RLIMIT_CORE,
        "cpu" => R::RLIMIT_CPU,
        "data" => R::RLIMIT_DATA,
        "fsize" => R::RLIMIT_FSIZE,
        "locks" => R::RLIMIT_LOCKS,
        "memlock" => R::RLIMIT_MEMLOCK,
        "msgqueue" => R::RLIMIT_MSGQUEUE,
        "nice" => R::RLIMIT_NICE,
        "nofile" => R::RLIMIT_NOFILE,
        "nproc" => R::RLIMIT_NPROC,
        "rss" => R::RLIMIT_RSS,
        "rtprio" => R::RLIMIT_RTPRIO,
        "rttime" => R::RLIMIT_RTTIME,
        "sigpending" => R::RLIMIT_SIGPENDING,
        "stack" => R::RLIMIT_STACK,
        _ => return None,
    })
}

/// `prog` as exec will find it: as given with a `/`, else the first executable file of that
/// name in `path` (the container's `PATH`).
fn resolve_program(prog: &str, path: &str) -> Result<PathBuf, String> {
    if prog.contains('/') {
        return Ok(PathBuf::from(prog));
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(prog))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| format!("exec: {prog:?}: executable file not found in $PATH"))
}

/// `mount(8)`-style options split into flags and the data string.
pub(crate) fn mount_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "suid" | "dev" | "exec" | "atime" | "diratime" | "norelatime" => {}
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// One spec mount in the (already entered) container root.
fn guest_mount(m: &Mount) -> Result<(), String> {
    if GUEST_OWN_MOUNTS.contains(&m.destination.trim_end_matches('/')) {
        return Ok(());
    }
    let dest = Path::new(&m.destination);
    std::fs::create_dir_all(dest)
        .map_err(|e| format!("cannot create mount point {}: {e}", m.destination))?;
    let (flags, data) = mount_options(&m.options);
    let source = if m.source.is_empty() {
        m.fstype.as_str()
    } else {
        m.source.as_str()
    };
    let data = (!data.is_empty()).then_some(data.as_str());
    match mount(Some(source), dest, Some(m.fstype.as_str()), flags, data) {
        Ok(()) => {
            debug!("strata: mounted {} on {}", m.fstype, m.destination);
            Ok(())
        }
        // cgroups are a convenience inside a VM that is itself the resource boundary.
        Err(e) if m.fstype == "cgroup2" => {
            say!(
                "strata: warning: cannot mount cgroup2 on {}: {e}",
                m.destination
            );
            Ok(())
        }
        Err(e) => Err(format!(
            "cannot mount {} on {} (options {:?}): {e}",
            m.fstype, m.destination, m.options
        )),
    }
}

/// Fork the process, relay its output, forward signals, wait, report, wait for `release`.
fn spawn(
    p: &Prepared,
    stdin: File,
    stdout: File,
    stderr: File,
    reader: &mut Option<BufReader<File>>,
    writer: &mut File,
) -> Result<i32, String> {
    let io = match p.terminal {
        Some(size) => ChildIo::terminal(size)?,
        None => ChildIo::pipes()?,
    };
    // Init has started no thread yet: the fork's child is a whole copy (see sys::fork).
    let child = match sys::fork().map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let (i, o, e) = io.child_fds(stdin.as_raw_fd());
            exec_child(p, i, o, e, io.is_terminal())
        }
        ForkResult::Parent { child } => child,
    };
    debug!("strata: container process {child} started");
    let _ = writer.write_all(&control::encode(&GuestMessage::Started(
        child.as_raw() as u32
    )));
    let pid = Arc::new(AtomicI32::new(child.as_raw()));
    let (out, err, resize) = match io {
        ChildIo::Pipes {
            out_r,
            out_w,
            err_r,
            err_w,
        } => {
            // The child's ends: the relays see EOF once the container's processes are gone.
            drop((out_w, err_w, stdin));
            let out = relay_thread("stdout", out_r, stdout);
            (out, relay_thread("stderr", err_r, stderr), None)
        }
        ChildIo::Terminal { master, slave } => {
            // The child's end: reading the master fails (EIO, the relay's end) once the
            // container's processes are gone.
            drop(slave);
            // Everything the process writes comes out of the master, on the stdout port;
            // what the host types goes in through it.
            let dup = |what: &str| {
                master
                    .try_clone()
                    .map_err(|e| say!("strata: cannot share the terminal with the {what}: {e}"))
                    .ok()
            };
            if let Some(m) = dup("input relay") {
                let _ = relay_thread("stdin", stdin.into(), File::from(m));
            }
            let resize = dup("control thread");
            drop(stderr);
            (relay_thread("stdout", master, stdout), None, resize)
        }
    };
    let release = match reader.take() {
        Some(r) => control_thread(r, pid.clone(), resize),
        None => mpsc::channel().1,
    };

    let (code, signal) = reap(child);
    pid.store(0, Ordering::SeqCst);
    // The container's init is gone: so is the rest of the container (and its hold on the
    // output pipes, or the terminal).
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while !matches!(waitpid(Pid::from_raw(-1), None), Err(Errno::ECHILD)) {}
    let join = |h: Option<std::thread::JoinHandle<u64>>| h.and_then(|h| h.join().ok()).unwrap_or(0);
    let (stdout_bytes, stderr_bytes) = (join(out), join(err));
    nix::unistd::sync();
    let report = ExitReport {
        code,
        signal,
        stdout: stdout_bytes,
        stderr: stderr_bytes,
    };
    debug!("strata: container exited: {report:?}");
    let _ = writer.write_all(&control::encode(&GuestMessage::Exit(report)));
    if release.recv_timeout(RELEASE_WAIT).is_err() {
        say!(
            "strata: the host did not confirm the container's output within {} s; stopping anyway",
            RELEASE_WAIT.as_secs()
        );
    }
    Ok(code.unwrap_or_else(|| 128 + signal.unwrap_or(0)))
}

/// The process's stdio before the fork: pipes for stdout and stderr (stdin is the port
/// itself), or one pseudo-terminal for all three.
enum ChildIo {
    Pipes {
        out_r: OwnedFd,
        out_w: OwnedFd,
        err_r: OwnedFd,
        err_w: OwnedFd,
    },
    Terminal {
        master: OwnedFd,
        slave: OwnedFd,
    },
}

impl ChildIo {
    fn pipes() -> Result<ChildIo, String> {
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        Ok(ChildIo::Pipes {
            out_r,
            out_w,
            err_r,
            err_w,
        })
    }

    fn terminal(size: Option<(u16, u16)>) -> Result<ChildIo, String> {
        let (master, slave) =
            sys::open_pty(size).map_err(|e| format!("cannot open a pseudo-terminal: {e}"))?;
        Ok(ChildIo::Terminal { master, slave })
    }

    fn is_terminal(&self) -> bool {
        matches!(self, ChildIo::Terminal { .. })
    }

    /// In the child: its fds 0, 1, 2 (`stdin` is the stdin port).
    fn child_fds(&self, stdin: RawFd) -> (RawFd, RawFd, RawFd) {
        match self {
            ChildIo::Pipes { out_w, err_w, .. } => (stdin, out_w.as_raw_fd(), err_w.as_raw_fd()),
            ChildIo::Terminal { slave, .. } => {
                let t = slave.as_raw_fd();
                (t, t, t)
            }
        }
    }
}

/// Reap until `child` ends: (exit code, signal).
fn reap(child: Pid) -> (Option<i32>, Option<i32>) {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => return (Some(code), None),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                return (None, Some(sig as i32))
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                say!("strata: waiting for the container process failed: {e}");
                return (Some(255), None);
            }
        }
    }
}

/// Copy `from` (a pipe) to `to` (a port) until EOF; the bytes written.
fn relay_thread(name: &str, from: OwnedFd, mut to: File) -> Option<std::thread::JoinHandle<u64>> {
    let mut from = File::from(from);
    std::thread::Builder::new()
        .name(format!("relay-{name}"))
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            let mut broken = false;
            loop {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) if !broken => match to.write_all(&buf[..n]) {
                        Ok(()) => total += n as u64,
                        // Keep draining so the process never blocks on a full pipe.
                        Err(_) => broken = true,
                    },
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            total
        })
        .map_err(|e| say!("strata: cannot start the output relay: {e}"))
        .ok()
}

/// Read host messages: signals go to the process (`pid`, 0 when there is none), `release`
/// is passed on.
fn control_thread(
    mut reader: BufReader<File>,
    pid: Arc<AtomicI32>,
    terminal: Option<OwnedFd>,
) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let mut complaints = 0u32;
            while let Ok(Some(line)) = read_line(&mut reader) {
                match HostMessage::decode(&line) {
                    Ok(HostMessage::Signal(n)) => {
                        let target = pid.load(Ordering::SeqCst);
                        match Signal::try_from(n) {
                            Ok(sig) if target > 0 => {
                                debug!("strata: forwarding signal {n} to {target}");
                                let _ = kill(Pid::from_raw(target), sig);
                            }
                            Ok(_) => {}
                            Err(_) => debug!("strata: signal {n} ignored: not a signal"),
                        }
                    }
                    Ok(HostMessage::Release {}) => {
                        let _ = tx.send(());
                    }
                    Ok(HostMessage::Resize(c)) => {
                        if let Some(t) = &terminal {
                            let _ = sys::set_winsize(t.as_raw_fd(), c.rows, c.cols);
                        }
                    }
                    Ok(HostMessage::Spec(_)) => {}
                    Err(e) => {
                        // A host bug, not a guest one, but never flood the console.
                        complaints += 1;
                        if complaints <= 3 {
                            say!("strata: bad control message ignored: {e}");
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        say!("strata: cannot watch the control port: {e}");
    }
    rx
}

/// In the forked child: stdio (a terminal becomes the controlling terminal of its new
/// session), limits, identity, then exec. Never returns.
fn exec_child(p: &Prepared, stdin: RawFd, out: RawFd, err: RawFd, terminal: bool) -> ! {
    let _ = setsid();
    for (from, to) in [(stdin, 0), (out, 1), (err, 2)] {
        if from != to {
            let _ = dup2(from, to);
        }
    }
    if terminal {
        let _ = sys::set_controlling_tty(0);
    }
    let fail = |code: i32, msg: String| -> ! {
        let _ = std::io::stderr().write_all(format!("strata: {msg}\n").as_bytes());
        sys::exit_now(code)
    };
    for (res, soft, hard) in &p.rlimits {
        if let Err(e) = nix::sys::resource::setrlimit(*res, *soft, *hard) {
            fail(CANNOT_EXEC, format!("setrlimit {res:?}: {e}"));
        }
    }
    let u = &p.user;
    let groups: Vec<nix::unistd::Gid> = u
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    if let Err(e) = nix::unistd::setgroups(&groups) {
        fail(CANNOT_EXEC, format!("setgroups {:?}: {e}", u.groups));
    }
    if let Err(e) = nix::unistd::setgid(nix::unistd::Gid::from_raw(u.gid)) {
        fail(CANNOT_EXEC, format!("setgid {}: {e}", u.gid));
    }
    if let Err(e) = nix::unistd::setuid(nix::unistd::Uid::from_raw(u.uid)) {
        fail(CANNOT_EXEC, format!("setuid {}: {e}", u.uid));
    }
    if p.no_new_privileges {
        if let Err(e) = nix::sys::prctl::set_no_new_privs() {
            fail(CANNOT_EXEC, format!("no_new_privs: {e}"));
        }
    }
    if let Err(e) = nix::unistd::chdir(p.cwd.as_c_str()) {
        fail(CANNOT_EXEC, format!("chdir to {:?}: {e}", p.cwd));
    }
    let _ = sys::default_sigpipe();
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let path = match &p.path {
        Ok(path) => path,
        Err(msg) => fail(NOT_FOUND, msg.clone()),
    };
    let errno = match execve(path, &p.argv, &p.env) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let shown = String::from_utf8_lossy(path.as_bytes()).into_owned();
    match errno {
        Errno::ENOENT if Path::new(std::ffi::OsStr::from_bytes(path.as_bytes())).exists() => fail(
            NOT_FOUND,
            format!("exec {shown}: {errno} (its interpreter or dynamic loader is missing)"),
        ),
        Errno::ENOENT => fail(
            NOT_FOUND,
            format!("exec {shown}: no such file or directory"),
        ),
        _ => fail(CANNOT_EXEC, format!("exec {shown}: {errno}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_split() {
        let o = |v: &[&str]| mount_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (f, d) = o(&[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ]);
        assert_eq!(f, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        assert_eq!(d, "newinstance,ptmxmode=0666,mode=0620,gid=5");
        let (f, d) = o(&["ro", "rw", "nodev", "strictatime"]);
        assert_eq!(
            f,
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME
        );
        assert_eq!(d, "");
    }

    #[test]
    fn programs_resolve_in_the_container_path() {
        assert_eq!(resolve_program("/x/y", "").unwrap(), Path::new("/x/y"));
        let sh = resolve_program("sh", DEFAULT_PATH).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        let e = resolve_program("no-such-program-strata", "/bin").unwrap_err();
        assert!(e.contains("executable file not found in $PATH"), "{e}");
        assert!(resolve_program("sh", "").is_err());
    }

    #[test]
    fn lines_are_bounded() {
        let mut r = std::io::Cursor::new(b"{\"signal\":2}\nrest".to_vec());
        assert_eq!(read_line(&mut r).unwrap().unwrap(), b"{\"signal\":2}");
        assert_eq!(read_line(&mut r).unwrap().unwrap(), b"rest");
        assert_eq!(read_line(&mut r).unwrap(), None);
    }
}
