//! Errors of the runtime: each says what failed and, where there is one, what to do.

use std::path::PathBuf;

/// What went wrong setting up, running or tearing down a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The request cannot be run as given (bad spec, host bind mount, tty, …).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Spec(#[from] strata_plan::SpecError),
    /// Booting: kernel, initramfs, qemu.
    #[error(transparent)]
    Vm(#[from] strata_vm::VmError),
    #[error(transparent)]
    Store(#[from] strata_store::StoreError),
    /// Serving the rootfs (`strata serve` child or `strata daemon` session).
    #[error("serving the rootfs: {0}")]
    Serve(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// KVM was asked for and is not usable.
    #[error("KVM is not usable: /dev/kvm: {0} (use --accel tcg or auto)")]
    NoKvm(String),
    /// The sandbox is not in a state where this works (e.g. signal before start).
    #[error("{0}")]
    State(String),
}

impl RuntimeError {
    /// An I/O error on `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| RuntimeError::Io { what, path, source }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
