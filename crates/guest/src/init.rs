//! `strata guest init`: PID 1 of the initramfs.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{close, dup2, execve, setsid, sync, ForkResult, Pid};

use crate::cmdline::{Config, ExitAction};
use crate::modules::{self, MODULES_DIR};
use crate::mounts::{self, mkdir_p, VIRTIOFS_WAIT};
use crate::{container, debug, say, sys, GuestError};

/// Where init mounts the virtio-fs tag.
pub(crate) const FS_ROOT: &str = "/run/strata/fs";
/// Where init assembles the overlay before switching into it.
pub(crate) const NEWROOT: &str = "/newroot";
/// Environment of the command.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const ENV: &[&str] = &["HOME=/root", "TERM=linux"];
/// Exit status reported when the command cannot be started (like a shell's).
const CANNOT_RUN: i32 = 127;

static REBOOT_ON_EXIT: AtomicBool = AtomicBool::new(false);

fn ms(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

/// PID 1: never returns, never panics out (a returning PID 1 panics the kernel).
pub(crate) fn main() -> ! {
    let start = Instant::now();
    match panic::catch_unwind(AssertUnwindSafe(|| run(start))) {
        Ok(Ok(status)) => say!("strata: command exited with status {status}"),
        Ok(Err(e)) => say!("strata: FATAL: {e}"),
        Err(_) => say!("strata: FATAL: internal error (see the panic message above); please report this strata bug"),
    }
    stop_vm()
}

/// Bring up the root filesystem and run the command; the command's exit status.
fn run(start: Instant) -> Result<i32, GuestError> {
    // 1. /proc, /sys, /dev and the console (report a mount failure once the console works).
    let mounted = mount_api_filesystems();
    setup_console();
    mounted?;
    let t_api = ms(start);

    // 3. Configuration from the kernel command line.
    let raw = std::fs::read("/proc/cmdline").map_err(|source| GuestError::ReadCmdline {
        path: "/proc/cmdline",
        source,
    })?;
    let cfg = Config::from_cmdline(&String::from_utf8_lossy(&raw)).map_err(GuestError::Cmdline)?;
    crate::set_debug(cfg.debug);
    REBOOT_ON_EXIT.store(cfg.exit == ExitAction::Reboot, Ordering::Relaxed);
    for w in &cfg.warnings {
        say!("strata: warning: {w}");
    }
    debug!("strata: mounted /proc, /sys, /dev ({t_api} ms)");
    debug!(
        "strata: tag {:?}, command {:?}, on exit {:?}",
        cfg.tag, cfg.cmd, cfg.exit
    );

    // 2. Kernel modules.
    let t = Instant::now();
    load_modules();
    debug!("strata: kernel modules done ({} ms)", ms(t));

    // 4.-6. The rootfs, entered.
    let rootfs = enter_rootfs(&cfg);
    if rootfs.is_ok() {
        say!("strata: rootfs ready in {} ms", ms(start));
    }

    // 7. The command: a container given over the virtio-serial ports, or strata.cmd.
    if cfg.run {
        let ports = container::Ports::open(container::PORT_WAIT).map_err(GuestError::Container)?;
        return Ok(container::run(ports, rootfs.map_err(|e| e.to_string())));
    }
    rootfs?;
    run_command(&cfg.cmd)
}

/// Mount the virtio-fs tag, assemble the overlay the plan describes and switch root into it.
fn enter_rootfs(cfg: &Config) -> Result<(), GuestError> {
    // 4. The virtio-fs tag.
    let t = Instant::now();
    mounts::validate_tag(&cfg.tag)?;
    let fs_root = Path::new(FS_ROOT);
    mkdir_p(fs_root)?;
    mounts::mount_virtiofs(&cfg.tag, fs_root, VIRTIOFS_WAIT)?;
    debug!(
        "strata: mounted virtiofs tag {} at {FS_ROOT} ({} ms)",
        cfg.tag,
        ms(t)
    );

    // 5. The overlay.
    let t = Instant::now();
    let plan = mounts::read_plan(fs_root)?;
    debug!(
        "strata: plan: {} layer(s){}, upper {}, options {:?}",
        plan.lowers.len(),
        plan.lower_tag
            .as_ref()
            .map(|t| format!(" on device {t}"))
            .unwrap_or_default(),
        plan.upper,
        plan.options
    );
    let newroot = Path::new(NEWROOT);
    mkdir_p(newroot)?;
    mounts::mount_overlay(&plan, &cfg.tag, fs_root, newroot)?;
    debug!("strata: mounted overlay at {NEWROOT} ({} ms)", ms(t));

    // 6. Into the new root.
    let t = Instant::now();
    free_initramfs();
    for dir in ["proc", "sys", "dev"] {
        let from = Path::new("/").join(dir);
        let to = newroot.join(dir);
        if !to.is_dir() {
            mkdir_p(&to)?;
        }
        mounts::move_mount(&from, &to)?;
    }
    mounts::switch_root(newroot)?;
    debug!("strata: switched root to the overlay ({} ms)", ms(t));
    Ok(())
}

/// Mount proc, sysfs and devtmpfs unless already there. Tries all three, returns the first
/// failure.
fn mount_api_filesystems() -> Result<(), GuestError> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let table: [(&'static str, &str, MsFlags, Option<&str>); 3] = [
        ("proc", "/proc", nosuid_nodev_noexec, None),
        ("sysfs", "/sys", nosuid_nodev_noexec, None),
        (
            "devtmpfs",
            "/dev",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0755"),
        ),
    ];
    let mut first_error = None;
    for (fstype, target, flags, data) in table {
        let target = Path::new(target);
        if let Err(e) = mkdir_p(target) {
            first_error.get_or_insert(e);
            continue;
        }
        if mounts::is_mounted(target) {
            continue;
        }
        match mount(Some(fstype), target, Some(fstype), flags, data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(errno) => {
                first_error.get_or_insert(GuestError::ApiFs {
                    fstype,
                    target: target.to_path_buf(),
                    errno,
                });
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Put /dev/console on fds 0, 1 and 2. The kernel leaves them closed when the initramfs has no
/// /dev/console node. Falls back to /dev/null + /dev/kmsg so messages still reach the log.
fn setup_console() {
    let console = open(
        "/dev/console",
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    );
    let (input, output) = match console {
        Ok(fd) => (Some(fd), Some(fd)),
        Err(_) => (
            open("/dev/null", OFlag::O_RDWR, Mode::empty()).ok(),
            open("/dev/kmsg", OFlag::O_WRONLY, Mode::empty()).ok(),
        ),
    };
    for (fd, targets) in [(input, &[0][..]), (output, &[1, 2][..])] {
        if let Some(fd) = fd {
            for &t in targets {
                if fd != t {
                    let _ = dup2(fd, t);
                }
            }
        }
    }
    let mut opened: Vec<i32> = [input, output]
        .into_iter()
        .flatten()
        .filter(|&fd| fd > 2)
        .collect();
    opened.dedup();
    for fd in opened {
        let _ = close(fd);
    }
}

/// Load every module under /lib/modules; report the ones that would not load.
fn load_modules() {
    let (found, problems) = modules::discover(Path::new(MODULES_DIR));
    for p in problems {
        say!("strata: warning: {p}");
    }
    if found.is_empty() {
        debug!("strata: no kernel modules under {MODULES_DIR}");
        return;
    }
    let report = modules::load_all(&found, |m| {
        let t = Instant::now();
        let r = modules::load_from_file(m);
        if r.is_ok() {
            debug!("strata: loaded module {} ({} ms)", m.name, ms(t));
        }
        r
    });
    debug!(
        "strata: {} module(s) loaded, {} already present, {} failed, in {} pass(es)",
        report.loaded.len(),
        report.present.len(),
        report.failed.len(),
        report.passes
    );
    for (name, errno) in &report.failed {
        let hint = match *errno {
            Errno::ENOENT => {
                " (a dependency is missing from the initramfs: check dmesg for \"Unknown symbol\")"
            }
            Errno::EINVAL | Errno::ENOEXEC => " (built for another kernel? check dmesg)",
            _ => "",
        };
        say!("strata: module {name} not loaded: {errno}{hint}");
    }
}

/// Delete the module files and /init from the initramfs (they would keep using guest RAM).
/// Only touches files on the initramfs itself, never anything mounted on it.
fn free_initramfs() {
    let Ok(root_dev) = std::fs::symlink_metadata("/").map(|m| m.dev()) else {
        return;
    };
    let on_rootfs = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.dev() == root_dev);
    let modules_dir = Path::new(MODULES_DIR);
    if on_rootfs(modules_dir) && !mounts::is_mounted(modules_dir) {
        if let Err(e) = std::fs::remove_dir_all(modules_dir) {
            debug!("strata: could not free {MODULES_DIR}: {e}");
        }
    }
    let init = Path::new("/init");
    if on_rootfs(init) {
        let _ = std::fs::remove_file(init);
    }
}

/// Look `cmd` up in [`PATH`] unless it contains a `/`.
fn resolve_command(cmd: &str) -> Result<PathBuf, String> {
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    PATH.split(':')
        .map(|dir| Path::new(dir).join(cmd))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| format!("not found in PATH={PATH}"))
}

/// The execve arguments: program path, argv and environment.
fn exec_args(argv: &[String]) -> Result<(CString, Vec<CString>, Vec<CString>), String> {
    let first = argv.first().ok_or("empty command")?;
    let path = resolve_command(first)?;
    let cstr = |s: &[u8]| CString::new(s).map_err(|_| "argument contains a NUL byte".to_string());
    let path = cstr(path.as_os_str().as_bytes())?;
    let argv = argv
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = vec![cstr(format!("PATH={PATH}").as_bytes())?];
    for e in ENV {
        env.push(cstr(e.as_bytes())?);
    }
    Ok((path, argv, env))
}

/// Fork and exec the command, reap everything until it exits; its exit status (128+signal if
/// killed, 127 if it could not be run).
fn run_command(argv: &[String]) -> Result<i32, GuestError> {
    let shown = argv.first().map(String::as_str).unwrap_or("");
    let (path, c_argv, env) = match exec_args(argv) {
        Ok(a) => a,
        Err(e) => {
            say!("strata: cannot run {shown}: {e}");
            return Ok(CANNOT_RUN);
        }
    };
    debug!("strata: running {argv:?} as {path:?}");
    match sys::fork().map_err(GuestError::Fork)? {
        ForkResult::Child => exec_child(&path, &c_argv, &env, shown),
        ForkResult::Parent { child } => Ok(reap_until(child)),
    }
}

/// In the forked child: new session with the console as controlling terminal, then exec.
fn exec_child(path: &CString, argv: &[CString], env: &[CString], shown: &str) -> ! {
    let _ = setsid();
    if let Ok(fd) = open("/dev/console", OFlag::O_RDWR, Mode::empty()) {
        for t in 0..3 {
            if fd != t {
                let _ = dup2(fd, t);
            }
        }
        if fd > 2 {
            let _ = close(fd);
        }
    }
    let _ = sys::set_controlling_tty(0);
    // When a session leader exits, the kernel hangs up its controlling terminal and throws
    // away output not yet transmitted (an emulated UART can hold several lines for
    // milliseconds): the command's last words would be lost. So this process stays the
    // session leader, runs the command as its child, and drains the console before exiting
    // with the command's status.
    match sys::fork() {
        Ok(ForkResult::Parent { child }) => {
            let _ = sys::ignore_terminal_signals();
            let status = loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => break code,
                    Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(_) => break 255,
                }
            };
            let _ = sys::drain_tty(1);
            sys::exit_now(status)
        }
        Ok(ForkResult::Child) => {}
        // Cannot fork: run the command as the session leader after all.
        Err(_) => {}
    }
    let _ = sys::default_sigpipe();
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let errno = match execve(path, argv, env) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let hint = if errno == Errno::ENOENT
        && Path::new(std::ffi::OsStr::from_bytes(path.as_bytes())).exists()
    {
        " (the file exists: its interpreter or dynamic loader is missing)"
    } else {
        ""
    };
    say!("strata: cannot run {shown}: {errno}{hint}");
    sys::exit_now(CANNOT_RUN)
}

/// Reap every child (PID 1 inherits orphans) until `child` exits.
fn reap_until(child: Pid) -> i32 {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => return code,
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => return 128 + sig as i32,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                // ECHILD cannot happen while `child` is alive; do not spin if it does.
                say!("strata: waiting for the command failed: {e}");
                return 255;
            }
        }
    }
}

/// Flush and stop the VM; never returns.
fn stop_vm() -> ! {
    sync();
    let (mode, what) = if REBOOT_ON_EXIT.load(Ordering::Relaxed) {
        (RebootMode::RB_AUTOBOOT, "reboot")
    } else {
        (RebootMode::RB_POWER_OFF, "power off")
    };
    let errno = match reboot(mode) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    say!("strata: cannot {what} the VM: {errno}; halting");
    let _ = reboot(RebootMode::RB_HALT_SYSTEM);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_commands() {
        assert_eq!(resolve_command("/bin/sh").unwrap(), Path::new("/bin/sh"));
        assert_eq!(resolve_command("./x").unwrap(), Path::new("./x"));
        let sh = resolve_command("sh").unwrap();
        assert!(sh.ends_with("sh") && sh.is_absolute(), "{sh:?}");
        assert!(resolve_command("no-such-command-strata").is_err());
    }

    #[test]
    fn builds_exec_args() {
        let (path, argv, env) = exec_args(&["sh".into(), "-c".into(), "echo hi".into()]).unwrap();
        assert!(path.to_bytes().ends_with(b"/sh"));
        assert_eq!(argv, [c"sh", c"-c", c"echo hi"].map(CString::from));
        assert_eq!(
            env,
            [
                c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                c"HOME=/root",
                c"TERM=linux"
            ]
            .map(CString::from)
        );
        assert!(exec_args(&[]).is_err());
        assert!(exec_args(&["/bin/a\0b".into()]).is_err());
    }
}
