//! Readiness for a service manager: the `sd_notify` protocol, spoken without libsystemd.
//!
//! Under systemd with `Type=notify`, `$NOTIFY_SOCKET` names a datagram socket (a path, or an
//! abstract name after `@`); the daemon sends `READY=1` once its API socket listens and it is
//! confined, and `STOPPING=1` when a signal stops it. The socket is connected *before*
//! confinement (the allow-list then needs only `sendto` on the held fd, which it has for
//! vhost-user anyway); without `$NOTIFY_SOCKET` nothing is done.

use std::os::unix::net::UnixDatagram;

/// A connected notification socket.
#[derive(Debug)]
pub struct Notifier(UnixDatagram);

impl Notifier {
    /// Connect to `$NOTIFY_SOCKET`, if the service manager set it. Failures are logged, never
    /// fatal: the daemon works the same without a manager.
    pub fn from_env() -> Option<Notifier> {
        let addr = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = addr.as_encoded_bytes();
        let sock = match UnixDatagram::unbound() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET: cannot create a socket: {e}");
                return None;
            }
        };
        let connected = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|a| sock.connect_addr(&a))
            }
            None => sock.connect(std::path::Path::new(&addr)),
        };
        match connected {
            Ok(()) => Some(Notifier(sock)),
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET {addr:?}: cannot connect: {e}");
                None
            }
        }
    }

    /// Send one notification (`READY=1`, `STOPPING=1`, `STATUS=…`, newline-separated).
    pub fn send(&self, message: &str) {
        if let Err(e) = self.0.send(message.as_bytes()) {
            tracing::warn!("NOTIFY_SOCKET: cannot send {message:?}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speaks_sd_notify() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        // The only test that reads NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        let n = Notifier::from_env().expect("connected");
        std::env::remove_var("NOTIFY_SOCKET");
        n.send("READY=1\nSTATUS=serving");
        let mut buf = [0u8; 64];
        let len = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving");
    }
}
