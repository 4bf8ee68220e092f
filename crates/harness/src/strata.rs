//! Running the `strata` binary under test: one helper for every test.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// The `strata` binary under test.
#[derive(Debug, Clone)]
pub struct Strata {
    bin: PathBuf,
}

/// How one `strata` command ended.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Exit status 0.
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// The exit code (None when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout then stderr, for assertions on what the user saw and for failure messages.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl Strata {
    /// The binary at `bin` (in an integration test: `env!("CARGO_BIN_EXE_strata")`, which
    /// [`strata!`](crate::strata!) passes).
    pub fn new(bin: impl Into<PathBuf>) -> Strata {
        Strata { bin: bin.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.bin
    }

    /// A command for it, to add arguments and spawn.
    pub fn cmd(&self) -> Command {
        Command::new(&self.bin)
    }

    /// Run `strata ARGS…` to the end, capturing its output.
    pub fn run<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Run {
        let out = self
            .cmd()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        Run {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Run `strata ARGS…`, which must succeed; its stdout.
    pub fn ok<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> String {
        let args: Vec<S> = args.into_iter().collect();
        let r = self.run(&args);
        assert!(
            r.ok(),
            "strata {:?}: {}\n{}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            r.status,
            r.text()
        );
        r.stdout
    }
}
