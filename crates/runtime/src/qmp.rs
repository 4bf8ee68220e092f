//! QMP (qemu monitor protocol): resume a VM started paused (`-S`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Negotiate capabilities and send `cont` on the monitor connection `s`.
pub(crate) fn resume(s: &UnixStream) -> Result<(), String> {
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut w = s;
    let mut greeting = String::new();
    r.read_line(&mut greeting)
        .map_err(|e| format!("QMP greeting: {e}"))?;
    if !greeting.contains("\"QMP\"") {
        return Err(format!("not a QMP greeting: {greeting:?}"));
    }
    for cmd in ["qmp_capabilities", "cont"] {
        w.write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes())
            .map_err(|e| format!("QMP {cmd}: {e}"))?;
        // Events may come first; the answer is the line with "return" or "error".
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) => return Err(format!("QMP {cmd}: qemu closed the monitor")),
                Ok(_) if line.contains("\"return\"") => break,
                Ok(_) if line.contains("\"error\"") => {
                    return Err(format!("QMP {cmd}: {}", line.trim()))
                }
                Ok(_) => {}
                Err(e) => return Err(format!("QMP {cmd}: {e}")),
            }
        }
    }
    Ok(())
}
