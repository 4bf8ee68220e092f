//! What the shim leaves in the bundle so that its `delete` action can clean up after a shim
//! that died: the VMM's pid (with its start time, so a reused pid is never killed) and the
//! paths the task created. containerd runs `containerd-shim-strata-v2 … delete` in the bundle
//! directory when it finds a task whose shim is gone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ShimError;

/// The file's name in the bundle.
pub const STATE_FILE: &str = "strata-shim.json";

/// Exit status reported for a task whose VMM had to be killed by the `delete` action
/// (128 + SIGKILL, as runc's shim reports).
pub const KILLED_STATUS: u32 = 128 + 9;

/// One task's state in its bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleState {
    /// Format version (1).
    pub version: u32,
    /// The task id.
    pub id: String,
    /// The VMM's pid, 0 before it was spawned.
    pub vmm_pid: u32,
    /// The VMM's start time (field 22 of /proc/PID/stat), to recognize a reused pid.
    pub vmm_start: u64,
    /// Files and directories the task created, removed by cleanup (directories recursively).
    pub created: Vec<PathBuf>,
}

impl BundleState {
    /// A state without a VMM yet.
    pub fn new(id: &str) -> BundleState {
        BundleState {
            version: 1,
            id: id.to_string(),
            vmm_pid: 0,
            vmm_start: 0,
            created: Vec::new(),
        }
    }

    /// Records the VMM's pid and start time.
    pub fn set_vmm(&mut self, pid: u32) {
        self.vmm_pid = pid;
        self.vmm_start = start_time(pid).unwrap_or(0);
    }

    /// Writes the state to `bundle` atomically.
    pub fn save(&self, bundle: &Path) -> Result<(), ShimError> {
        let tmp = bundle.join(format!(".{STATE_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| ShimError::io("encode bundle state", e.into()))?;
        std::fs::write(&tmp, json)
            .map_err(|e| ShimError::io(format!("write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, bundle.join(STATE_FILE))
            .map_err(|e| ShimError::io(format!("rename {}", tmp.display()), e))
    }

    /// The state in `bundle`, if there is one.
    pub fn load(bundle: &Path) -> Result<Option<BundleState>, ShimError> {
        let path = bundle.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| ShimError::io(format!("parse {}", path.display()), e.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ShimError::io(format!("read {}", path.display()), e)),
        }
    }

    /// Kills the VMM if it still runs (and is still the same process), removes what the task
    /// created and the state file. Returns whether a VMM had to be killed.
    pub fn cleanup(&self, bundle: &Path) -> bool {
        let killed = self.kill_vmm();
        for p in &self.created {
            remove_path(p);
        }
        remove_path(&bundle.join(STATE_FILE));
        killed
    }

    fn kill_vmm(&self) -> bool {
        if self.vmm_pid == 0 || self.vmm_start == 0 {
            return false;
        }
        if start_time(self.vmm_pid) != Some(self.vmm_start) {
            return false;
        }
        let pid = nix::unistd::Pid::from_raw(self.vmm_pid as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_err() {
            return false;
        }
        // Not our child (its shim is gone): wait for it to disappear, briefly.
        for _ in 0..100 {
            if start_time(self.vmm_pid) != Some(self.vmm_start) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

/// Removes a file, a socket or a directory tree; a missing path is fine.
pub fn remove_path(p: &Path) {
    let r = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(_) => Ok(()),
    };
    if let Err(e) = r {
        log::warn!("cleanup: remove {}: {e}", p.display());
    }
}

/// Field 22 (starttime) of /proc/PID/stat; None for a process that is gone or a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state).
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_cleanup() {
        let t = tempfile::tempdir().unwrap();
        let made = t.path().join("strata");
        std::fs::create_dir_all(made.join("sub")).unwrap();
        let mut s = BundleState::new("t1");
        s.created.push(made.clone());
        s.save(t.path()).unwrap();
        let back = BundleState::load(t.path()).unwrap().unwrap();
        assert_eq!(back, s);
        assert!(!back.cleanup(t.path()));
        assert!(!made.exists());
        assert!(BundleState::load(t.path()).unwrap().is_none());
    }

    #[test]
    fn kills_only_the_recorded_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let t = tempfile::tempdir().unwrap();
        let mut s = BundleState::new("t1");
        s.set_vmm(child.id());
        assert!(s.vmm_start > 0);
        // Another start time: a reused pid, left alone.
        let other = BundleState {
            vmm_start: s.vmm_start + 1,
            ..s.clone()
        };
        assert!(!other.cleanup(t.path()));
        assert!(child.try_wait().unwrap().is_none());
        // The zombie has no start time: kill_vmm's wait ends once it is reaped or a zombie.
        assert!(s.cleanup(t.path()));
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(9));
    }
}
