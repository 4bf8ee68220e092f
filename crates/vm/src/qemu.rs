//! Boot a guest under qemu and capture its serial console.
//!
//! The VM has no devices but a serial console (`-nodefaults`), plus optional vhost-user-fs and
//! raw virtio-blk disks. The guest signals its result with a console line
//! `strata: command exited with status N` and powers off, which ends qemu (`-no-reboot`; a guest
//! panic reboots at once with `panic=-1`, which ends it too).
//!
//! qemu never outlives the harness: it is killed on timeout, when the [`Vm`] handle is dropped,
//! and (via `PR_SET_PDEATHSIG`) when the thread that started it dies.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{tail, Result, VmError};

/// The qemu binary used.
pub const QEMU: &str = "qemu-system-x86_64";
/// The console line prefix the guest prints when its command ends.
pub const STATUS_PREFIX: &str = "strata: command exited with status ";
/// Kernel parameters always passed before [`VmConfig::cmdline`].
///
/// `no_timer_check`: on a loaded host TCG can miss the kernel's early IO-APIC timer check and
/// panic at boot ("IO-APIC + timer doesn't work!").
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet panic=-1 no_timer_check";

/// How to boot one VM. Build with [`VmConfig::new`] and adjust the public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image (`-kernel`), e.g. [`GuestKernel::vmlinuz`](crate::GuestKernel::vmlinuz).
    pub kernel: PathBuf,
    /// Initramfs (`-initrd`), e.g. from [`guest_initramfs`](crate::guest_initramfs).
    pub initrd: PathBuf,
    /// Extra kernel parameters, appended to [`BASE_CMDLINE`] (e.g. `strata.cmd=...`).
    pub cmdline: String,
    /// Guest RAM in MiB (default 512).
    pub mem_mib: u32,
    /// vCPUs (default 2).
    pub cpus: u32,
    /// vhost-user-fs devices: (backend socket, tag) each, in this order (chardevs `c0`, `c1`,
    /// ...). Any makes guest RAM a shared memfd.
    pub virtiofs: Vec<(PathBuf, String)>,
    /// Raw disk images, attached as virtio-blk (`/dev/vda`, `/dev/vdb`, ... in order).
    pub disks: Vec<PathBuf>,
    /// Kill the VM after this long (default 120 s).
    pub timeout: Duration,
    /// qemu `-accel` value (default [`TCG`]; [`detect_accel`] picks KVM where it is usable).
    pub accel: String,
    /// Extra qemu arguments, appended last.
    pub extra_args: Vec<String>,
    /// Start qemu in a process group of its own, so that a terminal's Ctrl-C reaches only the
    /// caller (which forwards it to the guest) and not qemu (default false).
    pub own_process_group: bool,
}

/// What a finished VM left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmOutput {
    /// The serial console, `\r` and terminal escapes stripped, lines joined with `\n`.
    pub console: String,
    /// `N` from the last `strata: command exited with status N` console line, if any.
    pub status: Option<i32>,
    /// Wall time from starting qemu to its exit.
    pub elapsed: Duration,
    /// Whether the VM was killed for running past [`VmConfig::timeout`].
    pub timed_out: bool,
    /// What qemu itself printed on stderr (warnings), trimmed.
    pub qemu_stderr: String,
}

impl VmOutput {
    /// The guest reported status 0 in time.
    pub fn succeeded(&self) -> bool {
        !self.timed_out && self.status == Some(0)
    }
}

impl VmConfig {
    /// A config with the defaults: 512 MiB, 2 vCPUs, no devices, 120 s timeout.
    pub fn new(kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: initrd.into(),
            cmdline: String::new(),
            mem_mib: 512,
            cpus: 2,
            virtiofs: Vec::new(),
            disks: Vec::new(),
            timeout: Duration::from_secs(120),
            accel: TCG.to_string(),
            extra_args: Vec::new(),
            own_process_group: false,
        }
    }

    /// The full kernel command line.
    pub fn kernel_cmdline(&self) -> String {
        let extra = self.cmdline.trim();
        if extra.is_empty() {
            BASE_CMDLINE.to_string()
        } else {
            format!("{BASE_CMDLINE} {extra}")
        }
    }

    /// The qemu arguments (without the program name).
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        for s in [
            "-accel",
            &self.accel,
            "-nodefaults",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
        ] {
            push(s);
        }
        push("-m");
        push(&self.mem_mib.to_string());
        push("-smp");
        push(&self.cpus.to_string());
        a.push("-kernel".into());
        a.push(self.kernel.clone().into());
        a.push("-initrd".into());
        a.push(self.initrd.clone().into());
        a.push("-append".into());
        a.push(self.kernel_cmdline().into());
        if !self.virtiofs.is_empty() {
            a.push("-object".into());
            a.push(
                format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    self.mem_mib
                )
                .into(),
            );
            a.push("-numa".into());
            a.push("node,memdev=mem".into());
        }
        for (i, (sock, tag)) in self.virtiofs.iter().enumerate() {
            a.push("-chardev".into());
            let mut c = OsString::from(format!("socket,id=c{i},path="));
            c.push(qemu_escape(sock.as_os_str()));
            a.push(c);
            a.push("-device".into());
            a.push(format!("vhost-user-fs-pci,chardev=c{i},tag={tag},queue-size=1024").into());
        }
        for d in &self.disks {
            let mut s = OsString::from("file=");
            s.push(qemu_escape(d.as_os_str()));
            s.push(",format=raw,if=virtio,cache=unsafe");
            a.push("-drive".into());
            a.push(s);
        }
        a.extend(self.extra_args.iter().map(OsString::from));
        a
    }

    /// Boot, wait for the guest to power off (or the timeout), and return the console.
    ///
    /// Console lines go to `tracing` (debug, target `strata_vm::console`) and, with
    /// `STRATA_VM_CONSOLE=1`, to stderr. A qemu error exit (bad arguments, unreachable
    /// vhost-user socket) is an `Err`; a timeout is not (see [`VmOutput::timed_out`]).
    ///
    /// A VM without a virtio-fs device (nothing outside it remembers the run) whose guest
    /// kernel hit a known TCG emulation fault while booting ([`tcg_boot_fault`]) is booted once
    /// more, with a warning.
    pub fn run(&self) -> Result<VmOutput> {
        let out = self.spawn()?.wait()?;
        if self.virtiofs.is_empty() && tcg_boot_fault(&out.console) {
            tracing::warn!(
                "the guest kernel crashed in emulation (TCG) while booting; booting it once more"
            );
            return self.spawn()?.wait();
        }
        Ok(out)
    }

    /// Like [`run`](Self::run), also calling `on_line` for every console line as it arrives.
    pub fn run_with(&self, on_line: impl FnMut(&str) + Send + 'static) -> Result<VmOutput> {
        self.spawn_with(on_line)?.wait()
    }

    /// Start the VM and return at once.
    ///
    /// qemu gets SIGKILL when the *thread* calling this exits, so keep the handle on the thread
    /// that made it (or one that outlives it).
    pub fn spawn(&self) -> Result<Vm> {
        self.spawn_with(|_| {})
    }

    /// Like [`spawn`](Self::spawn), calling `on_line` for every console line as it arrives.
    pub fn spawn_with(&self, mut on_line: impl FnMut(&str) + Send + 'static) -> Result<Vm> {
        if find_in_path(QEMU).is_none() {
            return Err(VmError::MissingTool { tool: QEMU });
        }
        for p in [&self.kernel, &self.initrd].into_iter().chain(&self.disks) {
            std::fs::metadata(p).map_err(VmError::io("VM input not found", p))?;
        }
        let mut cmd = Command::new(QEMU);
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        crate::cmd::kill_with_parent(&mut cmd);
        if self.own_process_group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let command = crate::cmd::describe(&cmd);
        tracing::debug!(%command, "starting VM");
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| VmError::Command {
            command,
            detail: e.to_string(),
            hint: "run scripts/install-deps.sh",
        })?;
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(VmError::Qemu {
                status: "no pipes".into(),
                stderr: String::new(),
            });
        };
        let echo = std::env::var_os("STRATA_VM_CONSOLE").is_some_and(|v| v == "1");
        let console = std::thread::Builder::new()
            .name("vm-console".into())
            .spawn(move || read_console(stdout, echo, &mut on_line))
            .map_err(|e| VmError::Qemu {
                status: "not watched".into(),
                stderr: e.to_string(),
            });
        let console = match console {
            Ok(h) => h,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let stderr = std::thread::Builder::new()
            .name("vm-stderr".into())
            .spawn(move || {
                let mut buf = Vec::new();
                let _ = stderr.read_to_end(&mut buf);
                buf
            });
        Ok(Vm {
            child,
            console: Some(console),
            stderr: stderr.ok(),
            started,
            timeout: self.timeout,
        })
    }
}

/// A running VM. Dropping it kills qemu.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    console: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    started: Instant,
    timeout: Duration,
}

impl Vm {
    /// qemu's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill qemu now (the guest gets no chance to finish).
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// Wait for qemu to exit (killing it at the config timeout) and collect the output.
    pub fn wait(mut self) -> Result<VmOutput> {
        let deadline = self.started + self.timeout;
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() >= deadline => {
                    tracing::warn!(pid = self.child.id(), timeout = ?self.timeout, "VM timed out; killing qemu");
                    timed_out = true;
                    self.kill();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot wait for qemu; killing it");
                    self.kill();
                    break None;
                }
            }
        };
        let elapsed = self.started.elapsed();
        let console = self
            .console
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let qemu_stderr = String::from_utf8_lossy(&stderr).trim().to_string();
        if !qemu_stderr.is_empty() {
            tracing::debug!(%qemu_stderr, "qemu stderr");
        }
        if let Some(st) = status {
            if !st.success() {
                return Err(VmError::Qemu {
                    status: st.to_string(),
                    stderr: tail(&stderr, 2000),
                });
            }
        }
        let status = parse_status(&console);
        tracing::debug!(?elapsed, ?status, timed_out, "VM finished");
        Ok(VmOutput {
            console,
            status,
            elapsed,
            timed_out,
            qemu_stderr,
        })
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Read the console to EOF, line by line, without `\r`.
fn read_console(stdout: impl Read, echo: bool, on_line: &mut dyn FnMut(&str)) -> String {
    let mut r = BufReader::new(stdout);
    let mut all = String::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let line = clean_line(&buf);
        tracing::debug!(target: "strata_vm::console", "{line}");
        if echo {
            eprintln!("[vm] {line}");
        }
        on_line(&line);
        all.push_str(&line);
        all.push('\n');
    }
    all
}

/// A console line as text: without `\r` and terminal escape sequences (SeaBIOS clears the
/// screen), invalid UTF-8 replaced.
fn clean_line(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' => i += 1,
            0x1b if raw.get(i + 1) == Some(&b'[') => {
                // CSI: parameters and intermediates, then one final byte in 0x40..=0x7e.
                i += 2;
                while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                    i += 1;
                }
                i += 1;
            }
            0x1b => i += 2,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A guest kernel crash that is the emulator's, not the guest's: multi-threaded TCG sometimes
/// runs stale code while another vCPU patches kernel text (`Oops: int3` in ordinary kernel
/// code), seen a few times in hundreds of boots here.
pub fn tcg_boot_fault(console: &str) -> bool {
    console.contains("Oops: int3")
}

/// `N` from the last `strata: command exited with status N` in `console`.
pub fn parse_status(console: &str) -> Option<i32> {
    console.lines().rev().find_map(|l| {
        let rest = &l[l.rfind(STATUS_PREFIX)? + STATUS_PREFIX.len()..];
        let end = rest
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
            .map_or(rest.len(), |(i, _)| i);
        rest[..end].parse().ok()
    })
}

/// The `-accel` value [`VmConfig::new`] uses: multi-threaded TCG (emulation). It works
/// everywhere, including the machines this project is tested on, where `/dev/kvm` opens but
/// guests hang after the decompressor.
pub const TCG: &str = "tcg,thread=multi";

/// The qemu arguments that attach `image` read-only as a virtio-blk disk with serial number
/// `serial` (the drive's id too), as the guest finds the EROFS layer device: qemu opens the
/// file, so the image gets no superblock on the host.
pub fn read_only_disk_args(image: &Path, serial: &str) -> [String; 4] {
    [
        "-drive".into(),
        format!(
            "file={},if=none,readonly=on,format=raw,id={serial}",
            image.display()
        ),
        "-device".into(),
        format!("virtio-blk-pci,drive={serial},serial={serial}"),
    ]
}

/// The `-accel` value for a VM a user asked for: `STRATA_ACCEL` when set (`kvm`, `tcg`, or any
/// qemu `-accel` value; `auto` is the same as unset), else `kvm` when `/dev/kvm` can be opened for reading and writing, else
/// [`TCG`]. The choice and its reason are logged once per process (info level).
pub fn detect_accel() -> String {
    static CHOICE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CHOICE
        .get_or_init(|| {
            let (accel, why) = choose_accel(
                std::env::var("STRATA_ACCEL").ok().as_deref(),
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/kvm")
                    .map(drop),
            );
            tracing::info!(accel = %accel, "qemu: {why}");
            accel
        })
        .clone()
}

/// [`detect_accel`]'s decision, from the environment's choice and whether `/dev/kvm` opened.
fn choose_accel(env: Option<&str>, kvm: std::io::Result<()>) -> (String, String) {
    // `auto` (as the shim and `strata run --accel` spell the default) is no override.
    match (
        env.map(str::trim).filter(|v| !v.is_empty() && *v != "auto"),
        kvm,
    ) {
        (Some("tcg"), _) => (TCG.into(), "TCG (emulation), as STRATA_ACCEL says".into()),
        (Some(v), _) => (v.into(), format!("-accel {v}, as STRATA_ACCEL says")),
        (None, Ok(())) => (
            "kvm".into(),
            "KVM (/dev/kvm is usable; STRATA_ACCEL=tcg to emulate instead)".into(),
        ),
        (None, Err(e)) => (
            TCG.into(),
            format!("TCG (emulation, much slower): /dev/kvm: {e}"),
        ),
    }
}

/// qemu option values separate with `,`; a literal comma is written `,,`.
fn qemu_escape(s: &std::ffi::OsStr) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(s.len());
    for &b in s.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// Look a program up in `$PATH`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_is_kvm_when_usable_tcg_otherwise_and_the_environment_wins() {
        let denied = || Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(choose_accel(None, Ok(())).0, "kvm");
        let (accel, why) = choose_accel(None, denied());
        assert_eq!(accel, TCG);
        assert!(why.contains("/dev/kvm"), "{why}");
        assert_eq!(choose_accel(Some("tcg"), Ok(())).0, TCG);
        assert_eq!(choose_accel(Some("kvm"), denied()).0, "kvm");
        assert_eq!(choose_accel(Some(" "), Ok(())).0, "kvm");
        assert_eq!(choose_accel(Some("auto"), Ok(())).0, "kvm");
        assert_eq!(choose_accel(Some("auto"), denied()).0, TCG);
    }

    #[test]
    fn parses_last_status() {
        assert_eq!(
            parse_status("boot\nstrata: command exited with status 0\n"),
            Some(0)
        );
        assert_eq!(
            parse_status("[ 1.2] x strata: command exited with status 17 \n"),
            Some(17)
        );
        assert_eq!(
            parse_status(
                "strata: command exited with status 1\nstrata: command exited with status -9\n"
            ),
            Some(-9)
        );
        assert_eq!(parse_status("strata: command exited with status \n"), None);
        assert_eq!(parse_status("nothing"), None);
    }

    #[test]
    fn args_include_devices() {
        let mut c = VmConfig::new("/k", "/i");
        c.cmdline = "strata.cmd=/bin/true".into();
        c.virtiofs = vec![
            ("/run/a,b.sock".into(), "strata".into()),
            ("/run/l.sock".into(), "strata-lower".into()),
        ];
        c.disks.push("/d.img".into());
        let a: Vec<String> = c
            .args()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = a.join(" ");
        assert!(joined
            .contains("-append console=ttyS0 quiet panic=-1 no_timer_check strata.cmd=/bin/true"));
        assert!(joined.contains("memory-backend-memfd,id=mem,size=512M,share=on"));
        assert!(a.contains(&"socket,id=c0,path=/run/a,,b.sock".to_string()));
        assert!(a.contains(&"vhost-user-fs-pci,chardev=c0,tag=strata,queue-size=1024".to_string()));
        assert!(a.contains(&"socket,id=c1,path=/run/l.sock".to_string()));
        assert!(a.contains(
            &"vhost-user-fs-pci,chardev=c1,tag=strata-lower,queue-size=1024".to_string()
        ));
        assert_eq!(joined.matches("memory-backend-memfd").count(), 1);
        assert!(a.contains(&"file=/d.img,format=raw,if=virtio,cache=unsafe".to_string()));
        assert!(joined.starts_with(
            "-accel tcg,thread=multi -nodefaults -nographic -no-reboot -serial stdio -m 512 -smp 2"
        ));
    }

    #[test]
    fn console_strips_cr() {
        let mut seen = Vec::new();
        let out = read_console(
            &b"a\r\nb\r\r\n\x1bc\x1b[?7l\x1b[2Jhello\r\nlast"[..],
            false,
            &mut |l| seen.push(l.to_string()),
        );
        assert_eq!(out, "a\nb\nhello\nlast\n");
        assert_eq!(seen, ["a", "b", "hello", "last"]);
    }
}
