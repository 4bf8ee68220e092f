//! Running host tools with actionable errors.

use std::process::{Command, Output};

use crate::error::{tail, LabError, Result};

/// Run `cmd` to completion, capturing its output; a non-zero exit is an error carrying `hint`.
///
/// `tool` names the program for the "not installed" error.
pub(crate) fn run(cmd: &mut Command, tool: &'static str, hint: &'static str) -> Result<Output> {
    let command = describe(cmd);
    tracing::debug!(%command, "running");
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            LabError::MissingTool { tool }
        } else {
            LabError::Command {
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
        return Err(LabError::Command {
            command,
            detail,
            hint,
        });
    }
    Ok(out)
}

/// A shell-like rendering of a command line, for logs and errors.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
