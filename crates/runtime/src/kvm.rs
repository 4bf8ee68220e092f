//! Whether KVM really works: `/dev/kvm` can open on a host whose (nested) KVM then hangs every
//! guest after the kernel's decompressor. So [`usable`] boots the guest kernel itself under KVM
//! without an initramfs: a working KVM reaches the kernel's "VFS: Unable to mount root fs" panic
//! in well under a second and qemu exits (`panic=-1`, `-no-reboot`); a hanging one is killed
//! after [`PROBE_WAIT`]. The answer is kept for the host's uptime in
//! `/run/strata/kvm-probe`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the probe guest may take to panic.
pub const PROBE_WAIT: Duration = Duration::from_secs(6);
const CACHE: &str = "/run/strata/kvm-probe";

/// `Ok(())` if a guest kernel boots under KVM here, else why not.
pub fn usable(vmlinuz: &Path) -> Result<(), String> {
    if let Ok(s) = std::fs::read_to_string(CACHE) {
        let s = s.trim();
        return if s == "ok" {
            Ok(())
        } else {
            Err(s.to_string())
        };
    }
    let r = probe(vmlinuz);
    if let Some(d) = Path::new(CACHE).parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let _ = std::fs::write(CACHE, r.as_ref().err().map_or("ok", String::as_str));
    r
}

fn probe(vmlinuz: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    let mut child = Command::new(strata_vm::qemu::QEMU)
        .args([
            "-accel",
            "kvm",
            "-nodefaults",
            "-nographic",
            "-no-reboot",
            "-m",
            "128",
            "-serial",
            "null",
            "-append",
            "console=ttyS0 panic=-1 quiet",
            "-kernel",
        ])
        .arg(vmlinuz)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", strata_vm::qemu::QEMU))?;
    let deadline = Instant::now() + PROBE_WAIT;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("a test guest under KVM failed ({st})")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "/dev/kvm opens, but a test guest under KVM did not boot within {} s",
                    PROBE_WAIT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
}
