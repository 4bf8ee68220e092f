//! The shim's errors, and how each reaches containerd (a ttrpc status code that containerd's
//! errdefs turn back into `invalid argument`, `not found`, `failed precondition`, …).

use containerd_shim_protos::ttrpc::{self, Code};

/// Everything that can go wrong in the shim.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The request's rootfs cannot be served (unknown mount type, missing directory, …).
    #[error("rootfs: {0}")]
    Rootfs(String),
    /// The bundle's config.json is unreadable or asks for something strata does not do.
    #[error("config.json: {0}")]
    Spec(String),
    /// A request the shim does not support (exec, checkpoint, pause, …).
    #[error("{0} is not supported by io.containerd.strata.v2")]
    Unsupported(String),
    /// No such task in this shim.
    #[error("task {0} not found")]
    NotFound(String),
    /// The task exists but is in the wrong state for the request.
    #[error("task {id}: {what}")]
    State {
        /// The task.
        id: String,
        /// What is wrong.
        what: String,
    },
    /// A task with that id already exists.
    #[error("task {0} already exists")]
    Exists(String),
    /// The stdio FIFOs of the request.
    #[error("stdio {path}: {source}")]
    Stdio {
        /// The FIFO.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The sandbox (server + VMM) failed.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// A file of the shim's own bundle state.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl ShimError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> ShimError {
        ShimError::Io {
            what: what.into(),
            source,
        }
    }

    fn code(&self) -> Code {
        match self {
            ShimError::Rootfs(_) | ShimError::Spec(_) => Code::INVALID_ARGUMENT,
            ShimError::Unsupported(_) => Code::UNIMPLEMENTED,
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::State { .. } => Code::FAILED_PRECONDITION,
            ShimError::Exists(_) => Code::ALREADY_EXISTS,
            ShimError::Stdio { .. } | ShimError::Sandbox(_) | ShimError::Io { .. } => {
                Code::INTERNAL
            }
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

impl From<ShimError> for containerd_shim::Error {
    fn from(e: ShimError) -> containerd_shim::Error {
        containerd_shim::Error::Other(e.to_string())
    }
}
