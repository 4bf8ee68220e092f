//! Request counts by operation, for benchmarks: with `STRATA_SERVE_OPSTATS=1` in its
//! environment, `strata serve` counts every FUSE request (failed ones also as `op!ERRNO`,
//! getxattr also by `trusted.overlay.*` name) and prints them as one line
//! `strata serve: opstats {json}` on stderr when the guest unmounts (FUSE DESTROY).
//! Off (the default), counting costs one branch per request.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

/// The environment variable that turns counting on.
pub const OPSTATS_ENV: &str = "STRATA_SERVE_OPSTATS";

#[derive(Default)]
pub(crate) struct OpStats {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl OpStats {
    /// `Some` when [`OPSTATS_ENV`] is set to a non-empty value other than `0`.
    pub(crate) fn from_env() -> Option<OpStats> {
        let on = std::env::var_os(OPSTATS_ENV).is_some_and(|v| !v.is_empty() && v != "0");
        on.then(OpStats::default)
    }

    pub(crate) fn add(&self, key: &str) {
        if let Ok(mut m) = self.counts.lock() {
            match m.get_mut(key) {
                Some(v) => *v += 1,
                None => {
                    m.insert(key.to_string(), 1);
                }
            }
        }
    }

    pub(crate) fn to_json(&self) -> String {
        // Keys are operation names, errno names and a fixed list of xattr names: no escaping.
        let m = self.counts.lock().map(|m| m.clone()).unwrap_or_default();
        let body: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    }
}

/// A short name for an errno (the common ones), else `E<n>`.
pub(crate) fn errno_name(e: &io::Error) -> String {
    let n = e.raw_os_error().unwrap_or(0);
    let s = match n {
        libc::ENOENT => "ENOENT",
        libc::ENODATA => "ENODATA",
        libc::ENOSYS => "ENOSYS",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EXDEV => "EXDEV",
        libc::EINVAL => "EINVAL",
        libc::EEXIST => "EEXIST",
        libc::EROFS => "EROFS",
        libc::ENOTDIR => "ENOTDIR",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ERANGE => "ERANGE",
        _ => return format!("E{n}"),
    };
    s.to_string()
}
