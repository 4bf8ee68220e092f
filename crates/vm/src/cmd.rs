//! Running host tools with actionable errors, and children that die with their parent.

use std::process::{Command, Output};

use crate::error::{tail, Result, VmError};

/// Run `cmd` to completion, capturing its output; a non-zero exit is an error carrying `hint`.
///
/// `tool` names the program for the "not installed" error.
pub fn run(cmd: &mut Command, tool: &'static str, hint: &'static str) -> Result<Output> {
    let command = describe(cmd);
    tracing::debug!(%command, "running");
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            VmError::MissingTool { tool }
        } else {
            VmError::Command {
                command: command.clone(),
                detail: e.to_string(),
                hint,
            }
        }
    })?;
    if !out.status.success() {
        let mut detail = out.status.to_string();
        detail.push_str(": ");
        detail.push_str(&tail(&out.stderr, 600));
        return Err(VmError::Command {
            command,
            detail,
            hint,
        });
    }
    Ok(out)
}

/// A shell-like rendering of a command line, for logs and errors.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Make `cmd`'s child get SIGKILL when the thread that spawns it dies (`PR_SET_PDEATHSIG`), so
/// a killed caller never leaves qemu or a daemon behind.
pub fn kill_with_parent(cmd: &mut Command) {
    crate::sys::kill_with_parent(cmd)
}
