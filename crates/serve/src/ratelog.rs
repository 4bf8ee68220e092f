//! Rate limits for log lines a guest or a local client can trigger at will (a malformed
//! descriptor chain per request, a refusal per request, a failing accept): at most a few lines
//! per window, then one line saying how many were left out. A hostile guest cannot fill the
//! host's disk or drown the other sessions' lines.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of message: at most `burst` lines per `window`.
pub struct RateLog {
    burst: u32,
    window: Duration,
    state: Mutex<Window>,
}

struct Window {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RateLog {
    pub const fn new(burst: u32, window: Duration) -> RateLog {
        RateLog {
            burst,
            window,
            state: Mutex::new(Window {
                start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether this occurrence may be logged; if so, how many were left out since the last
    /// one logged (to put in the line).
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if w.start.is_none_or(|s| now.duration_since(s) >= self.window) {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged < self.burst {
            w.logged += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// `tracing::warn!` through a [`RateLog`]: `ratelog_warn!(LOG, "format", args…)`; the line
/// gets ` (N similar lines suppressed)` when some were.
#[macro_export]
macro_rules! ratelog_warn {
    ($log:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $log.allow() {
            if suppressed > 0 {
                tracing::warn!("{} ({suppressed} similar lines suppressed)", format_args!($($arg)+));
            } else {
                tracing::warn!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_a_count() {
        let log = RateLog::new(3, Duration::from_secs(3600));
        let allowed: Vec<Option<u64>> = (0..10).map(|_| log.allow()).collect();
        assert_eq!(&allowed[..3], &[Some(0), Some(0), Some(0)]);
        assert!(allowed[3..].iter().all(|a| a.is_none()));
        let short = RateLog::new(1, Duration::ZERO);
        assert_eq!(short.allow(), Some(0));
        assert_eq!(short.allow(), Some(0));
    }
}
