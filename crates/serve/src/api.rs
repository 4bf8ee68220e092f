//! The local API of `strata daemon`: the contract between the daemon and its clients
//! (`strata rootfs start|stop|status`, `strata bench create --strategy strata-daemon`, a
//! container runtime).
//!
//! Transport: a unix stream socket (mode 0600: the API is for root on this host), one JSON
//! object per line each way, any number of requests per connection, answered in order.
//! A request line longer than [`MAX_LINE`] bytes ends the connection.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest request line the daemon reads.
pub const MAX_LINE: usize = 64 * 1024;

/// Where `strata daemon` listens by default, and where `strata rootfs start` looks for it.
pub const DEFAULT_API_SOCKET: &str = "/run/strata/api.sock";

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
// One request per API call, parsed from JSON: the size of a `Start` does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Request {
    /// Serve a rootfs on a new vhost-user socket. Returns once the socket accepts a VMM.
    Start {
        /// Session name: `[A-Za-z0-9_.-]`, 1–128 bytes, unique among live sessions. Without
        /// `dirs` it is also the rootfs ID in the daemon's store (`strata rootfs create`).
        id: String,
        /// The vhost-user socket to create (inside the daemon's socket directory).
        socket: PathBuf,
        /// Serve these directories instead of the store's rootfs `id` (they must be inside a
        /// directory the daemon was started with `--allow`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dirs: Option<Dirs>,
        /// virtio-fs tag, for logs (the VMM sets the real one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tag: Option<String>,
        /// Also serve the layers on this second socket, without xattrs (the layer device,
        /// `strata serve --lower-socket`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layer_device: Option<LayerDevice>,
        /// The guest reads the layers from this read-only block device (the store's merged
        /// EROFS image, attached by the VMM; `strata serve --lower-block`) instead of over
        /// virtio-fs: the session's plan says so. Not with `layer_device`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lower_block: Option<strata_plan::LowerBlock>,
        /// Merge upper and layers in the daemon and send the guest to `rootfs/` for its root,
        /// with no overlay of its own (`strata serve --union`). Not with `layer_device` or
        /// `lower_block`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        union: bool,
    },
    /// Stop serving: a session no VMM has connected to is gone at once; a connected one has
    /// its tree dropped (the guest gets EIO from then on) and ends when the VMM hangs up.
    Stop { id: String },
    /// One session (`id`) or all.
    Status {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
}

/// The layer device of a session: its socket (inside the daemon's socket directory) and the
/// tag the VMM gives it (default `strata-lower`, written into the plan for the guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerDevice {
    pub socket: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// Layers (topmost first), upper and work, as `strata serve --lower/--upper/--work` takes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dirs {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// The daemon's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Started { session: SessionInfo },
    Stopped { session: SessionInfo },
    Status { sessions: Vec<SessionInfo> },
    Error { kind: ErrorKind, message: String },
}

/// Why a request failed; `message` says what, where and what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is malformed (bad JSON, bad id, path outside what is allowed).
    BadRequest,
    /// The directories or socket were refused (the same checks as `strata serve`).
    Config,
    /// A live session already has this id.
    Exists,
    /// No session (or no store rootfs) with this id.
    NotFound,
    /// Anything else (the daemon could not open, bind, …).
    Failed,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Socket bound, waiting for the VMM.
    Listening,
    /// A VMM is connected and being served.
    Connected,
    /// Stopped (or crashed) while connected: tree dropped, waiting for the VMM to hang up.
    Stopping,
    /// Over (only in a `Stopped` answer).
    Ended,
}

/// What a client can know about one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    pub socket: PathBuf,
    pub state: SessionState,
    pub layers: usize,
    /// Daemon-side time to set the session up, request received → socket listening.
    pub startup_us: u64,
    pub age_ms: u64,
    /// FUSE requests served so far.
    pub requests: u64,
    /// Host inodes and open handles the guest holds.
    pub nodes: usize,
    pub handles: usize,
    /// The layer device's socket, if the session has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_device: Option<PathBuf>,
}

/// A connection to the daemon's API socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    path: PathBuf,
}

impl Client {
    /// Connect to the API socket at `path`.
    pub fn connect(path: &Path) -> io::Result<Client> {
        let s = UnixStream::connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot reach strata daemon at {}: {e} (start it with `strata daemon --api {}`, \
                     or pass --api with the path it listens on)",
                    path.display(),
                    path.display()
                ),
            )
        })?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            path: path.to_owned(),
        })
    }

    /// Send one request and read its answer.
    pub fn call(&mut self, req: &Request) -> io::Result<Response> {
        let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut answer = String::new();
        let n = self.reader.read_line(&mut answer)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "strata daemon at {} closed the connection",
                    self.path.display()
                ),
            ));
        }
        serde_json::from_str(&answer).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unreadable answer from strata daemon: {e}"),
            )
        })
    }
}

/// `Ok` if `id` can name a session (and a store rootfs).
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "session id {id:?} is not allowed: use 1-128 of [A-Za-z0-9_.-] (not . or ..)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        let r = Request::Start {
            id: "c1".into(),
            socket: "/run/strata/c1.sock".into(),
            dirs: None,
            tag: None,
            layer_device: None,
            lower_block: None,
            union: false,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"start","id":"c1","socket":"/run/strata/c1.sock"}"#
        );
        let s: Request = serde_json::from_str(r#"{"op":"status"}"#).unwrap();
        assert_eq!(s, Request::Status { id: None });
        let e = Response::Error {
            kind: ErrorKind::NotFound,
            message: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"result":"error","kind":"not_found","message":"x"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
    }

    #[test]
    fn ids_are_checked() {
        for good in ["c1", "a.b-c_d", &"x".repeat(128)] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ä", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
