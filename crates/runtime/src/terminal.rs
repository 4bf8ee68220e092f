//! The caller's terminal, for a container with a terminal (`strata run -t`): its size, and raw
//! mode while the container runs, so that every key (Ctrl-C included) reaches the container's
//! own terminal, whose line discipline runs in the guest.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::termios::{self, SetArg, Termios};
use strata_plan::container::ConsoleSize;

/// The size of the terminal on `fd`, if it is one (and says a non-zero size).
pub fn size(fd: BorrowedFd<'_>) -> Option<ConsoleSize> {
    match crate::sys::winsize(fd) {
        Ok((rows, cols)) if rows > 0 && cols > 0 => Some(ConsoleSize { rows, cols }),
        _ => None,
    }
}

/// The terminal on an fd in raw mode until dropped, then as it was.
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Put the terminal on `fd` in raw mode; `None` if `fd` is not a terminal.
    pub fn enter(fd: BorrowedFd<'_>) -> Option<RawMode> {
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSADRAIN, &raw).ok()?;
        Some(RawMode {
            fd: fd.try_clone_to_owned().ok()?,
            saved,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd.as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}
