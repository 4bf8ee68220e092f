//! Errors of `strata serve`: each says what, where, and what to do.

use std::io;
use std::path::PathBuf;

/// A configuration `strata serve` refuses before creating anything (CLI exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no layer given: pass at least one --lower DIR (topmost first)")]
    NoLayers,
    #[error("{count} layers given, at most {max} are supported: flatten some layers")]
    TooManyLayers { count: usize, max: usize },
    #[error("{role} directory {path:?} cannot be used: {source} (create it, or fix the path)")]
    Missing {
        role: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{role} {path:?} is not a directory: every layer, upper and work must be a directory")]
    NotADirectory { role: &'static str, path: PathBuf },
    #[error("upper {upper:?} and work {work:?} are on different filesystems: overlayfs renames between them, so put both on one filesystem (e.g. siblings in one container directory)")]
    DifferentFilesystems { upper: PathBuf, work: PathBuf },
    #[error("the same directory is given twice: {} {:?} and {} {:?}: give each layer once and keep upper/work separate", .first.0, .first.1, .second.0, .second.1)]
    SameDirectory {
        first: (&'static str, PathBuf),
        second: (&'static str, PathBuf),
    },
    #[error("{} {:?} is inside {} {:?}: writable directories and layers must not contain each other, or a guest could change a shared layer", .inner.0, .inner.1, .outer.0, .outer.1)]
    Nested {
        inner: (&'static str, PathBuf),
        outer: (&'static str, PathBuf),
    },
    #[error(
        "--max-nodes and --max-handles must be at least 1 (the guest cannot even mount with 0)"
    )]
    ZeroLimit,
    #[error("socket {0:?} is in use by a running server: stop it, or pick another path (`strata daemon --api`, `strata serve --socket`, `rootfs start --socket`)")]
    SocketInUse(PathBuf),
    #[error("socket path {0:?} exists and is not a socket: remove it or pick another --socket")]
    SocketPathTaken(PathBuf),
    #[error("--fd: {0}")]
    InheritedSocket(String),
    #[error("upper {0:?} is already being served (by another `strata serve` or daemon session): two guest kernels on one upper corrupt it; stop the other one first (`strata rootfs ls` names the holder's pid)")]
    RootfsInUse(PathBuf),
}

/// Any failure of the serve path.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open {role} directory {path:?}: {source}")]
    Open {
        role: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot install the seccomp filter that forbids mounts: {0}")]
    Seccomp(String),
    #[error("cannot listen on socket {path:?}: {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("vhost-user session failed: {0}")]
    Session(String),
}

impl ServeError {
    /// Exit code for the CLI: 2 for a refused configuration, 1 for anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ServeError::Config(_) => 2,
            _ => 1,
        }
    }
}

impl From<ServeError> for io::Error {
    fn from(e: ServeError) -> io::Error {
        let kind = match &e {
            ServeError::Config(_) => io::ErrorKind::InvalidInput,
            ServeError::Open { source, .. } | ServeError::Listen { source, .. } => source.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
