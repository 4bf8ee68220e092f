//! A pseudo-terminal of the test's own, for commands that need one (`strata run -t`,
//! `ctr run -t`): the command's stdin and stdout are its slave, as in a shell; the test reads
//! the master and types into it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The test's side of the terminal.
pub struct Terminal {
    master: std::fs::File,
    seen: Arc<Mutex<Vec<u8>>>,
    /// The slave's path (`/dev/pts/N`), e.g. for `stty -F`.
    pub path: PathBuf,
    timeout: Duration,
}

impl Terminal {
    /// Wait until `text` has appeared on the terminal.
    pub fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + self.timeout;
        while !String::from_utf8_lossy(&self.seen.lock().unwrap()).contains(text) {
            assert!(
                Instant::now() < deadline,
                "{text:?} never appeared; the terminal shows:\n{}",
                String::from_utf8_lossy(&self.seen.lock().unwrap())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Type `bytes` on the terminal.
    pub fn type_in(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }
}

/// Run `cmd` on a new pseudo-terminal of `rows` x `cols` (stderr apart, piped): `interact`
/// gets the terminal and the command's pid while it runs; killed after `timeout`. Returns its
/// exit code, everything the terminal showed, and its stderr.
pub fn on_a_terminal(
    mut cmd: Command,
    (rows, cols): (u16, u16),
    timeout: Duration,
    interact: impl FnOnce(&mut Terminal, u32),
) -> (Option<i32>, String, String) {
    let ws = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let path = nix::unistd::ttyname(&pty.slave).unwrap();
    let mut child = cmd
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(pty.slave);
    let master = std::fs::File::from(pty.master);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (mut m, seen) = (master.try_clone().unwrap(), seen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once no one holds the slave any more: the end.
            while let Ok(n @ 1..) = m.read(&mut buf) {
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let mut err = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut t = Terminal {
        master,
        seen: seen.clone(),
        path,
        timeout,
    };
    interact(&mut t, child.id());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The last output, unless something the command left behind still holds the terminal.
    let until = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let shown = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    (status.code(), shown, err.join().unwrap())
}
