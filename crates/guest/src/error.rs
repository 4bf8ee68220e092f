//! What can go wrong inside the guest, phrased so the person reading the VM console knows what
//! to fix.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;
use strata_plan::PlanError;

/// Why the guest could not assemble or enter the container root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("invalid virtio-fs tag {tag:?}: {reason}")]
    BadTag { tag: String, reason: &'static str },

    #[error("mount target {} does not exist or is not a directory: create it first", path.display())]
    TargetMissing { path: PathBuf },

    #[error("cannot create directory {}: {source}", path.display())]
    Mkdir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot mount {fstype} on {}: {errno}; the kernel needs {fstype} support (CONFIG_{})", target.display(), fstype.to_uppercase())]
    ApiFs {
        fstype: &'static str,
        target: PathBuf,
        errno: Errno,
    },

    #[error(
        "cannot mount virtio-fs tag {tag:?} on {} (gave up after {waited_ms} ms): {errno}; {}{}",
        target.display(),
        virtiofs_advice(*.errno, .tag),
        kmsg_block(.kmsg)
    )]
    Virtiofs {
        tag: String,
        target: PathBuf,
        errno: Errno,
        waited_ms: u128,
        kmsg: Vec<String>,
    },

    #[error(
        "no virtio-blk device with serial {serial:?} (looked in /sys/block for {waited_ms} ms); \
         attach the layer image: -drive file=IMG,if=none,readonly=on,format=raw,id=l0 \
         -device virtio-blk-pci,drive=l0,serial={serial}"
    )]
    NoBlockDevice { serial: String, waited_ms: u128 },

    #[error(
        "cannot mount {device} ({fstype}, read-only) on {}: {errno}; the kernel needs {fstype} \
         support (module in the initramfs or built in){}",
        target.display(),
        kmsg_block(.kmsg)
    )]
    BlockMount {
        device: String,
        fstype: String,
        target: PathBuf,
        errno: Errno,
        kmsg: Vec<String>,
    },

    #[error(
        "cannot read mount plan {}: {source}; the tag must be served by `strata serve` (it provides /{})",
        path.display(),
        strata_plan::PLAN_FILE
    )]
    ReadPlan {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("mount plan {} is unusable: {source}", path.display())]
    Plan {
        path: PathBuf,
        #[source]
        source: PlanError,
    },

    #[error("virtio-fs mount point {} is not valid UTF-8; use a plain ASCII path", path.display())]
    NonUtf8Path { path: PathBuf },

    #[error(
        "overlay mount options are {len} bytes ({layers} layers), over the kernel's {max}-byte limit; \
         use an image with fewer layers or a shorter tag"
    )]
    OverlayOptionsTooLong {
        len: usize,
        max: usize,
        layers: usize,
    },

    #[error(
        "cannot mount overlay on {}: {errno}; {}\n  options: {options}{}",
        target.display(),
        overlay_advice(*.errno),
        kmsg_block(.kmsg)
    )]
    Overlay {
        target: PathBuf,
        errno: Errno,
        options: String,
        kmsg: Vec<String>,
    },

    #[error("cannot move mount {} to {}: {errno}", from.display(), to.display())]
    MoveMount {
        from: PathBuf,
        to: PathBuf,
        errno: Errno,
    },

    #[error(
        "cannot bind the root the daemon merged ({}) at {}: {errno}",
        from.display(),
        to.display()
    )]
    BindRoot {
        from: PathBuf,
        to: PathBuf,
        errno: Errno,
    },

    #[error("cannot switch root into {}: {step} failed: {errno}", newroot.display())]
    SwitchRoot {
        newroot: PathBuf,
        step: &'static str,
        errno: Errno,
    },

    #[error("cannot read the kernel command line {path}: {source}; is /proc mounted?")]
    ReadCmdline {
        path: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("bad kernel command line: {0}")]
    Cmdline(String),

    #[error("{0}")]
    Container(String),

    #[error("cannot fork to run the command: {0}")]
    Fork(Errno),
}

impl GuestError {
    /// The errno behind this error, if it came from a system call.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            GuestError::ApiFs { errno, .. }
            | GuestError::Virtiofs { errno, .. }
            | GuestError::Overlay { errno, .. }
            | GuestError::BlockMount { errno, .. }
            | GuestError::MoveMount { errno, .. }
            | GuestError::BindRoot { errno, .. }
            | GuestError::SwitchRoot { errno, .. }
            | GuestError::Fork(errno) => Some(*errno),
            GuestError::Mkdir { source, .. }
            | GuestError::ReadPlan { source, .. }
            | GuestError::ReadCmdline { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }
}

impl From<GuestError> for io::Error {
    fn from(e: GuestError) -> Self {
        let kind = match (&e, e.errno()) {
            (_, Some(errno)) => io::Error::from_raw_os_error(errno as i32).kind(),
            (GuestError::TargetMissing { .. }, None) => io::ErrorKind::NotFound,
            (GuestError::Plan { .. }, None) => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

fn virtiofs_advice(errno: Errno, tag: &str) -> String {
    match errno {
        Errno::ENODEV => "the kernel has no virtiofs filesystem: build it in or put virtiofs.ko \
                         (with fuse.ko and the virtio*.ko modules) under /lib/modules in the initramfs"
            .to_string(),
        Errno::EINVAL | Errno::ENOENT | Errno::ENXIO => format!(
            "no virtio-fs device has tag {tag:?}: check that the VMM has a vhost-user-fs device with \
             tag={tag} (and `strata serve` is running on its socket), or pass the right strata.tag="
        ),
        Errno::EPERM | Errno::EACCES => "mounting needs root (CAP_SYS_ADMIN) in the guest".to_string(),
        _ => "check the virtio-fs device and `strata serve`".to_string(),
    }
}

fn overlay_advice(errno: Errno) -> &'static str {
    match errno {
        Errno::ENODEV => {
            "the kernel has no overlay filesystem: build it in or put overlay.ko under /lib/modules in the initramfs"
        }
        Errno::ENOENT | Errno::ENOTDIR => {
            "a layer, upper or work directory is missing from the served tree; check the tree `strata serve` exports"
        }
        _ => "overlayfs explains why in the kernel log (below, or run `dmesg | grep overlayfs`)",
    }
}

fn kmsg_block(lines: &[String]) -> String {
    let mut s = String::new();
    if !lines.is_empty() {
        s.push_str("\n  kernel log says:");
        for l in lines {
            s.push_str("\n    ");
            s.push_str(l);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_keeps_kind_and_message() {
        let e = GuestError::Overlay {
            target: "/newroot".into(),
            errno: Errno::EINVAL,
            options: "lowerdir=/x".into(),
            kmsg: vec!["overlayfs: failed to verify upper root origin".into()],
        };
        let text = e.to_string();
        assert!(text.contains("/newroot"), "{text}");
        assert!(
            text.contains("failed to verify upper root origin"),
            "{text}"
        );
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
        assert!(io.to_string().contains("cannot mount overlay"));

        let io: io::Error = GuestError::TargetMissing { path: "/x".into() }.into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn virtiofs_error_names_the_tag() {
        let e = GuestError::Virtiofs {
            tag: "mytag".into(),
            target: "/run/strata/fs".into(),
            errno: Errno::EINVAL,
            waited_ms: 5000,
            kmsg: vec![],
        };
        let text = e.to_string();
        assert!(text.contains("tag=mytag"), "{text}");
        assert!(!text.contains("kernel log"), "{text}");
    }
}
