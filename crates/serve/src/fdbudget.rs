//! The process's budget of file descriptors, shared by every session of `strata daemon` (and
//! the one of `strata serve`).
//!
//! Each session has its own limits (`--max-nodes`, `--max-handles`), but the fds they stand for
//! all come out of one process limit (RLIMIT_NOFILE): without a budget, one guest creating or
//! opening files could take the process to EMFILE far below its own limits, and then another
//! tenant's session fails and no new one starts. Every fd a guest makes the daemon hold (a
//! node's `O_PATH` fd, each layer's fd of a merged `/lower` directory, an open file or
//! directory) takes a [`Permit`] from the budget; when it would pass [`cap`], the request fails
//! with ENFILE like a per-session limit, before anything is opened. The cap keeps headroom
//! below the process limit for what is not a guest's to spend: accepting API clients and VMMs,
//! session sockets and lock files, vhost-user eventfds and guest memory.

use std::sync::atomic::{AtomicUsize, Ordering};

static HELD: AtomicUsize = AtomicUsize::new(0);
static CAP: AtomicUsize = AtomicUsize::new(usize::MAX);

/// fds kept out of the budget for the process itself: at least 1024, or 1/8 of the limit.
pub fn headroom(limit: usize) -> usize {
    (limit / 8).max(1024)
}

/// Set the budget from the process's open-files limit `limit` (minus [`headroom`]).
pub fn set_limit(limit: u64) -> usize {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let cap = limit.saturating_sub(headroom(limit));
    CAP.store(cap, Ordering::Relaxed);
    cap
}

/// Set the budget to exactly `cap` fds (tests).
pub fn set_cap(cap: usize) {
    CAP.store(cap, Ordering::Relaxed);
}

/// The budget: fds guests may make the process hold in all.
pub fn cap() -> usize {
    CAP.load(Ordering::Relaxed)
}

/// fds held on guests' behalf now.
pub fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// Whether `n` more fds fit in the budget.
pub fn room(n: usize) -> bool {
    held().saturating_add(n) <= cap()
}

/// `n` fds counted against the budget until dropped.
#[derive(Debug)]
pub struct Permit(usize);

impl Permit {
    /// Count `n` fds (already checked with [`room`], or opened already: never refused).
    pub fn take(n: usize) -> Permit {
        HELD.fetch_add(n, Ordering::Relaxed);
        Permit(n)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        HELD.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// Raise the open-files limit to `wanted` (the hard limit too while the process still has
/// CAP_SYS_RESOURCE: call before confining) and set the budget from the limit now in force.
pub fn raise_and_set(wanted: u64) -> std::io::Result<usize> {
    let have = crate::sys::raise_fd_limit(wanted)?;
    Ok(set_limit(have))
}

/// The most fds a process may have here (`/proc/sys/fs/nr_open`), at most 2^20.
pub fn system_max() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
        .min(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_and_cap() {
        assert_eq!(headroom(20_000), 2_500);
        assert_eq!(headroom(1_000), 1_024);
        assert_eq!(
            (1u64 << 20) as usize - headroom(1 << 20),
            (1 << 20) - (1 << 17)
        );
    }
}
