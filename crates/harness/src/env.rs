//! Shared by the fault and hostile-guest VM tests: a busybox rootfs in two layers with guest
//! scripts, a `strata serve` the test can SIGKILL (or run inside a private mount namespace),
//! and a Debian 6.1 guest booted on it under qemu (TCG).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_vm::kernel::{GuestKernel, KernelChoice};
use strata_vm::qemu::VmConfig;

use crate::fixture::write;
use crate::session::ServeProcess;
use crate::Strata;

/// One test's directories, guest kernel and initramfs.
pub struct Env {
    pub strata: Strata,
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
    pub fn new(strata: &Strata, scripts: &[(&str, &str)]) -> Env {
        crate::require(&[strata_vm::qemu::QEMU, "busybox"]);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let bottom = root.join("layers/bottom");
        let top = root.join("layers/top");
        crate::fixture::busybox_rootfs(&bottom).unwrap();
        std::fs::copy(strata.path(), bottom.join("bin/strata")).unwrap();
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
        strata_vm::initramfs::guest_initramfs(strata.path(), &kernel, &initrd).unwrap();
        Env {
            strata: strata.clone(),
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
    /// (e.g. `unshare -m ...`; empty: directly), once it listens. Its log: `serve.log`.
    pub fn serve(&self, wrap: &[&str], extra: &[&str]) -> ServeProcess {
        let mut argv: Vec<OsString> = wrap.iter().map(OsString::from).collect();
        argv.push(self.strata.path().into());
        for a in ["serve", "--socket"] {
            argv.push(a.into());
        }
        argv.push(self.socket.clone().into());
        for (flag, dir) in [
            ("--upper", &self.upper),
            ("--work", &self.work),
            ("--lower", &self.top),
            ("--lower", &self.bottom),
        ] {
            argv.push(flag.into());
            argv.push(dir.into());
        }
        argv.extend(extra.iter().map(OsString::from));
        ServeProcess::spawn_argv(
            &argv,
            std::slice::from_ref(&self.socket),
            None,
            &self.root().join("serve.log"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
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
