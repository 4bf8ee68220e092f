//! The error type of strata-vm: fetching kernels, building initramfs images, running VMs.

use std::path::{Path, PathBuf};

/// Shorthand for results in this crate.
pub type Result<T, E = VmError> = std::result::Result<T, E>;

/// Everything that can go wrong while fetching kernels, building images or running VMs.
///
/// Every message says what failed and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `strata serve` could not be started or watched.
    #[error("strata serve: {0}")]
    Serve(String),
    /// A filesystem operation failed.
    #[error("{what} {path:?}: {source}")]
    Io {
        /// What was being done (e.g. "cannot create directory").
        what: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A required host tool is not installed.
    #[error("{tool} not found on this host; run scripts/install-deps.sh")]
    MissingTool {
        /// The program that was looked for.
        tool: &'static str,
    },
    /// An external command failed.
    #[error("{command} failed: {detail}; {hint}")]
    Command {
        /// The command line (shortened) that failed.
        command: String,
        /// Its exit status and the tail of its error output.
        detail: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// No package matched the wanted guest kernel.
    #[error("no {pattern} package found in the apt lists (even after apt-get update); {hint}")]
    KernelNotFound {
        /// The package name pattern searched for.
        pattern: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
    /// The kernel package did not contain what a kernel package must contain.
    #[error("kernel package {package} is unusable: {detail}; delete {dir:?} and retry")]
    BadKernelPackage {
        /// Package name.
        package: String,
        /// What is missing.
        detail: String,
        /// Where it was extracted.
        dir: PathBuf,
    },
    /// A binary meant to run inside the guest is dynamically linked (or not an ELF executable).
    #[error("{path:?} {detail}; the guest has no dynamic loader, use a static binary (busybox-static, or strata built with the workspace's crt-static config)")]
    NotStatic {
        /// The offending binary.
        path: PathBuf,
        /// Why it cannot be used.
        detail: String,
    },
    /// An initramfs entry path is not a plain relative path.
    #[error("initramfs path {0:?} is not a plain path (no '..', '.', empty components or NUL)")]
    BadEntryPath(String),
    /// A file changed size while being packed into the initramfs.
    #[error("{path:?} changed size while packing the initramfs (expected {expected} bytes)")]
    FileChanged {
        /// The source file.
        path: PathBuf,
        /// Size seen when the header was written.
        expected: u64,
    },
    /// qemu exited with an error (usually bad arguments or an unreachable vhost-user socket).
    #[error("qemu-system-x86_64 exited with {status}: {stderr}")]
    Qemu {
        /// Its exit status.
        status: String,
        /// The tail of its error output.
        stderr: String,
    },
}

impl VmError {
    /// Wrap an I/O error with what was being done to which path.
    pub fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
        let path = path.to_path_buf();
        move |source| VmError::Io { what, path, source }
    }
}

/// The last `max` characters of a command's output, trimmed, for error messages.
pub fn tail(bytes: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    let start = s.len().saturating_sub(max);
    let start = (start..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    let t = &s[start..];
    if t.is_empty() {
        "(no output)".to_string()
    } else {
        t.to_string()
    }
}
