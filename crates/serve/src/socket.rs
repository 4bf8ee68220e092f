//! The daemons' unix sockets: bound with their final mode before anyone can connect, and the
//! peer of an API connection checked.
//!
//! A socket bound in place is connectable with the mode the process umask gives it until a
//! later chmod (with umask 000, by every local user). So a socket is bound inside a fresh
//! 0700 directory next to its path, given its mode there, and only then linked to its path
//! (`link`, which never replaces anything): from the first moment it is reachable, it has its
//! final mode. The process umask is never touched (it is process-wide, and guests' creates run
//! on other threads).

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// The mode of every socket the daemons bind unless configured: root's alone.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Bind a listening unix socket at `path` (which must not exist) with `mode` (and group `gid`,
/// for a VMM that runs as a user of that group), never reachable with any other mode or group.
pub fn bind_private(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<UnixListener> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let private = tempfile::Builder::new()
        .prefix(".strata-bind-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(dir)?;
    let staged = private.path().join("s");
    let listener = UnixListener::bind(&staged)?;
    if let Some(gid) = gid {
        // fchownat, not lchown: the seccomp allow-list has the one, not the other (a daemon
        // binds session sockets after confining itself).
        crate::sys::chgrp_nofollow(&staged, gid)?;
    }
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode & 0o777))?;
    let linked = std::fs::hard_link(&staged, path);
    // The staged name and its directory go now, one by one: confined, the daemon may remove
    // files and directories in the socket directory but not list them (which a recursive
    // removal would); the socket stays bound at `path`.
    let dir = private.keep();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&dir);
    linked?;
    Ok(listener)
}

/// The uid of the process at the other end of `conn` (SO_PEERCRED: as it was at connect).
pub fn peer_uid(conn: &UnixStream) -> io::Result<u32> {
    crate::sys::peer_uid(conn.as_fd())
}

/// Whether the peer of an API connection may use the API: root, or one of `uids`.
pub fn peer_allowed(conn: &UnixStream, uids: &[u32]) -> Result<u32, String> {
    match peer_uid(conn) {
        Ok(0) => Ok(0),
        Ok(uid) if uids.contains(&uid) => Ok(uid),
        Ok(uid) => Err(format!(
            "uid {uid} may not use this API (root only, and --api-uid UIDs)"
        )),
        Err(e) => Err(format!("cannot tell who is connecting: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    #[test]
    fn bound_with_its_mode_and_never_replacing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("api.sock");
        let l = bind_private(&p, 0o600, None).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777, 0o600);
        // Only the socket is left in the directory.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let c = UnixStream::connect(&p).unwrap();
        let (s, _) = l.accept().unwrap();
        assert_eq!(peer_uid(&s).unwrap(), nix::unistd::geteuid().as_raw());
        drop(c);
        assert!(bind_private(&p, 0o600, None).is_err());
        std::fs::write(d.path().join("file"), b"x").unwrap();
        assert!(bind_private(&d.path().join("file"), 0o600, None).is_err());
        assert_eq!(std::fs::read(d.path().join("file")).unwrap(), b"x");
        // Failed binds leave nothing behind either.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }
}
