//! The host ↔ guest control protocol of a container VM: JSON lines on the virtio-serial port
//! [`CONTROL_PORT`].
//!
//! ```text
//! host → guest   {"spec":{…ContainerSpec…}}     once, first
//!                {"signal":15}                   any time: signal the container process
//!                {"release":{}}                  after the exit report: all output arrived
//! guest → host   {"started":123}                 the container process runs (guest pid)
//!                {"exit":{"code":7,"stdout":12,"stderr":0}}
//!                {"exit":{"signal":9,"stdout":0,"stderr":0}}
//!                {"error":"…"}                   the container could not be started
//! ```
//!
//! The container's stdin, stdout and stderr are the ports [`STDIN_PORT`], [`STDOUT_PORT`] and
//! [`STDERR_PORT`]. The guest copies the process's output to them and counts it: the exit report
//! says how many bytes each port carried, the host reads until it has them all and answers
//! `release`; only then does the guest power off (virtio-serial data still queued in the guest
//! would be lost with the VM). A host that closes the stdin port gives the container EOF.
//!
//! The guest knows it runs a container (and waits for the ports) from the kernel parameter
//! [`CMDLINE_PARAM`]`=1`; without it, `strata.cmd=` keeps working as before.

use serde::{Deserialize, Serialize};

use crate::container::ContainerSpec;

/// The control port's name (`virtserialport,name=…`).
pub const CONTROL_PORT: &str = "strata.control";
/// The container's stdin port.
pub const STDIN_PORT: &str = "strata.stdin";
/// The container's stdout port.
pub const STDOUT_PORT: &str = "strata.stdout";
/// The container's stderr port.
pub const STDERR_PORT: &str = "strata.stderr";
/// The kernel parameter that tells the guest to expect the ports (`strata.run=1`).
pub const CMDLINE_PARAM: &str = "strata.run";
/// Longest control line either side reads (a spec with a large environment fits).
pub const MAX_LINE: usize = 1 << 20;

/// A message from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HostMessage {
    /// What to run (first message).
    Spec(Box<ContainerSpec>),
    /// Send this signal to the container process.
    Signal(i32),
    /// Every byte of output the exit report counted has arrived: the guest may stop.
    Release {},
    /// The host's terminal changed size: resize the container's (with `terminal`).
    Resize(crate::container::ConsoleSize),
}

/// How the container process ended, and how much output it left on its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitReport {
    /// Exit code, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Signal number, if a signal killed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Bytes written to the stdout port.
    #[serde(default)]
    pub stdout: u64,
    /// Bytes written to the stderr port.
    #[serde(default)]
    pub stderr: u64,
}

/// A message from the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GuestMessage {
    /// The container process started, with this pid in the guest.
    Started(u32),
    /// It ended.
    Exit(ExitReport),
    /// It could not be started (bad spec, user unknown, mount failed, …).
    Error(String),
}

/// Why a control line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control message is not valid: {0}")]
    Json(String),
    #[error("control line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("exit report must carry exactly one of code and signal")]
    BadExit,
    #[error(transparent)]
    Spec(#[from] crate::container::SpecError),
}

/// One message as a JSON line (with its `\n`).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Strings, numbers and lists cannot fail to serialize; were it ever to, the peer reads an
    // empty line and says so, rather than this side panicking.
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    v
}

fn check_len(line: &[u8]) -> Result<(), ControlError> {
    if line.len() > MAX_LINE {
        Err(ControlError::TooLong)
    } else {
        Ok(())
    }
}

impl HostMessage {
    /// Parse one line from the host; a spec is validated.
    pub fn decode(line: &[u8]) -> Result<HostMessage, ControlError> {
        check_len(line)?;
        let m: HostMessage =
            serde_json::from_slice(line).map_err(|e| ControlError::Json(e.to_string()))?;
        if let HostMessage::Spec(s) = &m {
            s.validate()?;
        }
        Ok(m)
    }
}

impl GuestMessage {
    /// Parse one line from the guest.
    pub fn decode(line: &[u8]) -> Result<GuestMessage, ControlError> {
        check_len(line)?;
        let m: GuestMessage =
            serde_json::from_slice(line).map_err(|e| ControlError::Json(e.to_string()))?;
        if let GuestMessage::Exit(r) = &m {
            if r.code.is_some() == r.signal.is_some() {
                return Err(ControlError::BadExit);
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_messages_both_ways() {
        let spec = ContainerSpec::new(vec!["true".into()]);
        for m in [
            HostMessage::Spec(Box::new(spec.clone())),
            HostMessage::Signal(15),
            HostMessage::Release {},
            HostMessage::Resize(crate::container::ConsoleSize {
                rows: 40,
                cols: 120,
            }),
        ] {
            let line = encode(&m);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(HostMessage::decode(&line).unwrap(), m);
        }
        assert_eq!(encode(&HostMessage::Signal(2)), b"{\"signal\":2}\n");
        assert_eq!(encode(&HostMessage::Release {}), b"{\"release\":{}}\n");
        assert_eq!(
            encode(&HostMessage::Resize(crate::container::ConsoleSize {
                rows: 2,
                cols: 3
            })),
            b"{\"resize\":{\"rows\":2,\"cols\":3}}\n"
        );
        let mut bad = spec;
        bad.args.clear();
        assert!(matches!(
            HostMessage::decode(&encode(&HostMessage::Spec(Box::new(bad)))),
            Err(ControlError::Spec(_))
        ));
        assert!(HostMessage::decode(b"{\"reboot\":1}").is_err());
        assert!(HostMessage::decode(b"").is_err());
    }

    #[test]
    fn guest_messages_both_ways() {
        let exit = ExitReport {
            code: Some(7),
            signal: None,
            stdout: 12,
            stderr: 0,
        };
        for m in [
            GuestMessage::Started(42),
            GuestMessage::Exit(exit),
            GuestMessage::Error("no such user".into()),
        ] {
            assert_eq!(GuestMessage::decode(&encode(&m)).unwrap(), m);
        }
        assert_eq!(
            encode(&GuestMessage::Exit(exit)),
            b"{\"exit\":{\"code\":7,\"stdout\":12,\"stderr\":0}}\n"
        );
        assert_eq!(
            GuestMessage::decode(b"{\"exit\":{\"signal\":9}}").unwrap(),
            GuestMessage::Exit(ExitReport {
                code: None,
                signal: Some(9),
                stdout: 0,
                stderr: 0
            })
        );
        assert_eq!(
            GuestMessage::decode(b"{\"exit\":{}}"),
            Err(ControlError::BadExit)
        );
        assert_eq!(
            GuestMessage::decode(b"{\"exit\":{\"code\":1,\"signal\":2}}"),
            Err(ControlError::BadExit)
        );
        assert_eq!(
            GuestMessage::decode(&vec![b' '; MAX_LINE + 1]),
            Err(ControlError::TooLong)
        );
    }
}
