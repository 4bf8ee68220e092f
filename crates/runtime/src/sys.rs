//! The only `unsafe` code of strata-runtime: the terminal ioctl nix leaves to its callers.

use std::os::fd::{AsRawFd, BorrowedFd};

/// `ioctl(fd, TIOCGWINSZ)`: the size (rows, cols) of the terminal on `fd`.
pub(crate) fn winsize(fd: BorrowedFd<'_>) -> nix::Result<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` through the pointer, which points at a
    // live local of that type; `fd` is borrowed for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    nix::errno::Errno::result(r).map(|_| (ws.ws_row, ws.ws_col))
}
