//! The CLI's one error type and the exit codes it maps to (docs/cli.md).
//!
//! Every command returns `Result<(), Error>`; `main` prints `strata VERB: MESSAGE` on stderr and
//! exits with [`Kind::exit_code`]. Usage errors never get here: clap prints them and `main`
//! exits with [`USAGE`].

/// Exit code of a usage error (a flag or argument clap refuses): 64, `EX_USAGE` of sysexits.h,
/// apart from a configuration refused after parsing (2).
pub const USAGE: u8 = 64;

use std::fmt;
use std::path::Path;
use std::process::ExitCode;

use strata_serve::api::ErrorKind as ApiKind;
use strata_store::StoreError;

/// What kind of failure, as far as a script calling `strata` cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The configuration or request was refused before anything was done (a layer that is not
    /// a directory, a socket in use, a kernel this command cannot work on): fix it and retry.
    Refused,
    /// The named image, rootfs or session does not exist.
    NotFound,
    /// The named rootfs or session already exists.
    Exists,
    /// Something failed while running (I/O, a refused image, a VM, the daemon).
    Failed,
    /// `strata trace --check --exit-code` on an exposed kernel: its reclaim holds
    /// `shrinker_rwsem`, which every superblock-creating mount takes for writing.
    Exposed,
    /// Stopped by SIGINT or SIGTERM, after cleaning up (the lab's long runs; the daemons stop
    /// cleanly on a signal instead).
    #[cfg_attr(not(feature = "lab"), allow(dead_code))]
    Interrupted,
    /// `strata run` could not run the container (bad image or flags, no kernel, the VM
    /// failed): 125, as `docker run`.
    RunFailed,
    /// `strata run`: the container's own exit status (128+N for signal N), passed on; no
    /// message.
    Container(u8),
}

impl Kind {
    /// The exit code: 2 refused (as clap's usage errors), 3 not found, 4 exists, 1 failed, 5
    /// exposed, 130 interrupted, 125 `strata run` failed, or the container's own.
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::RunFailed => 125,
            Kind::Container(code) => code,
            Kind::Failed => 1,
            Kind::Refused => 2,
            Kind::NotFound => 3,
            Kind::Exists => 4,
            Kind::Exposed => 5,
            Kind::Interrupted => 130,
        }
    }
}

/// A failed command: its kind and a message that says what to do.
#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

/// What every command returns.
pub type Result<T = (), E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl fmt::Display) -> Error {
        Error {
            kind,
            message: message.to_string(),
        }
    }

    /// Something failed while running.
    pub fn failed(message: impl fmt::Display) -> Error {
        Error::new(Kind::Failed, message)
    }

    /// Refused before anything was done.
    pub fn refused(message: impl fmt::Display) -> Error {
        Error::new(Kind::Refused, message)
    }

    /// An I/O error on `path`, while doing `what` (a failure).
    pub fn io<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
        move |e| Error::failed(format!("{what} {}: {e}", path.display()))
    }

    /// Print `strata VERB: MESSAGE` on stderr (nothing for a container's own status); the exit
    /// code.
    pub fn report(&self, verb: &str) -> ExitCode {
        if !matches!(self.kind, Kind::Container(_)) {
            eprintln!("strata {verb}: {}", self.message);
        }
        ExitCode::from(self.kind.exit_code())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        let kind = match &e {
            StoreError::ImageNotFound(_) | StoreError::RootfsNotFound(_) => Kind::NotFound,
            StoreError::RootfsExists(_) => Kind::Exists,
            StoreError::RootfsInUse { .. } | StoreError::Ambiguous { .. } => Kind::Refused,
            StoreError::BadName(_)
            | StoreError::BadId(_)
            | StoreError::BadSource { .. }
            | StoreError::Insecure { .. }
            | StoreError::InsecureCache { .. } => Kind::Refused,
            _ => Kind::Failed,
        };
        Error::new(kind, e)
    }
}

impl From<strata_serve::ServeError> for Error {
    fn from(e: strata_serve::ServeError) -> Error {
        let kind = match e.exit_code() {
            2 => Kind::Refused,
            _ => Kind::Failed,
        };
        Error::new(kind, e)
    }
}

impl From<strata_vm::VmError> for Error {
    fn from(e: strata_vm::VmError) -> Error {
        Error::failed(e)
    }
}

/// The kind of a `strata daemon` API error.
impl From<ApiKind> for Kind {
    fn from(k: ApiKind) -> Kind {
        match k {
            ApiKind::BadRequest | ApiKind::Config => Kind::Refused,
            ApiKind::NotFound => Kind::NotFound,
            ApiKind::Exists => Kind::Exists,
            ApiKind::Failed => Kind::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code_and_none_is_clap_usage_but_refused() {
        let kinds = [
            Kind::Refused,
            Kind::NotFound,
            Kind::Exists,
            Kind::Failed,
            Kind::Exposed,
            Kind::Interrupted,
            Kind::RunFailed,
        ];
        let codes: std::collections::BTreeSet<u8> = kinds.iter().map(|k| k.exit_code()).collect();
        assert_eq!(codes.len(), kinds.len());
        assert_eq!(Kind::Refused.exit_code(), 2);
        assert_eq!(
            Kind::from(ApiKind::Exists),
            Error::from(StoreError::RootfsExists("c1".into())).kind
        );
        assert_eq!(
            Kind::from(ApiKind::NotFound),
            Error::from(StoreError::RootfsNotFound("c1".into())).kind
        );
    }
}
