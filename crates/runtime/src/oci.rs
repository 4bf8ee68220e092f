//! A [`ContainerSpec`] from an OCI runtime spec (`config.json` of a bundle, as containerd
//! hands it to a shim): the process (args, env, cwd, user, rlimits, no_new_privileges,
//! terminal and its size), the hostname and the mounts.
//!
//! Mounts at `/proc`, `/sys` and `/dev` are the guest's own. Other mounts must be
//! filesystems the guest kernel makes from nothing (tmpfs, devpts, mqueue, proc, sysfs,
//! cgroup → cgroup2); a bind mount of a host path is refused with an error naming it: strata
//! serves the guest nothing but its rootfs, and mounts nothing on the host.

use oci_spec::runtime::Spec;
use strata_plan::container::{ContainerSpec, Mount, Rlimit, User, GUEST_OWN_MOUNTS};

use crate::error::{Result, RuntimeError};

/// Translate an OCI runtime spec. Errors name the field that cannot be honoured.
pub fn from_oci(spec: &Spec) -> Result<ContainerSpec> {
    let p = spec
        .process()
        .as_ref()
        .ok_or_else(|| RuntimeError::Invalid("the OCI spec has no process".into()))?;
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(RuntimeError::Invalid(
            "process.args is empty: the OCI spec gives no command".into(),
        ));
    }
    let mut out = ContainerSpec::new(args);
    out.env = p.env().clone().unwrap_or_default();
    out.cwd = p.cwd().to_string_lossy().into_owned();
    if out.cwd.is_empty() {
        out.cwd = "/".into();
    }
    let u = p.user();
    out.user = User::Id {
        uid: u.uid(),
        gid: u.gid(),
        additional_gids: u.additional_gids().clone().unwrap_or_default(),
    };
    out.rlimits = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| Rlimit {
            kind: r.typ().to_string(),
            soft: r.soft(),
            hard: r.hard(),
        })
        .collect();
    out.no_new_privileges = p.no_new_privileges().unwrap_or(false);
    // A terminal: the guest makes a pseudo-terminal for the process (ctr run -t).
    out.terminal = p.terminal().unwrap_or(false);
    out.console_size = p
        .console_size()
        .as_ref()
        .filter(|_| out.terminal)
        .and_then(|b| {
            Some(strata_plan::container::ConsoleSize {
                rows: u16::try_from(b.height()).ok()?,
                cols: u16::try_from(b.width()).ok()?,
            })
        })
        .filter(|c| c.rows > 0 && c.cols > 0);
    out.hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    if let Some(mounts) = spec.mounts() {
        out.mounts = mounts.iter().map(mount).collect::<Result<Vec<_>>>()?;
    }
    out.validate()?;
    Ok(out)
}

fn mount(m: &oci_spec::runtime::Mount) -> Result<Mount> {
    let destination = m.destination().to_string_lossy().into_owned();
    let fstype = m.typ().clone().unwrap_or_default();
    let source = m
        .source()
        .as_ref()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let options = m.options().clone().unwrap_or_default();
    let is_bind = fstype == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
    if is_bind {
        return Err(RuntimeError::Invalid(format!(
            "mount at {destination}: a bind mount of the host path {source:?} is not supported: \
             strata gives the VM only its rootfs (served, never mounted on the host)"
        )));
    }
    let own = GUEST_OWN_MOUNTS.contains(&destination.trim_end_matches('/'));
    let fstype = match fstype.as_str() {
        // cgroup v1 is not what a 6.x guest offers; the unified hierarchy is.
        "cgroup" | "cgroup2" => "cgroup2".to_string(),
        _ if own => fstype,
        "proc" | "sysfs" | "tmpfs" | "devpts" | "mqueue" => fstype,
        other => {
            return Err(RuntimeError::Invalid(format!(
                "mount at {destination}: type {other:?} is not supported: only filesystems the \
                 guest makes itself (proc, sysfs, tmpfs, devpts, mqueue, cgroup) are"
            )))
        }
    };
    Ok(Mount {
        destination,
        fstype,
        source,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd 1.6's default spec for `ctr run` (abridged to what matters here).
    const CTR_SPEC: &str = r#"{
      "ociVersion": "1.0.2-dev",
      "process": {
        "user": {"uid": 1000, "gid": 1000, "additionalGids": [1000, 27]},
        "args": ["sh", "-c", "exit 3"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/home/u"],
        "cwd": "/work",
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true
      },
      "root": {"path": "rootfs"},
      "hostname": "t1",
      "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid","noexec","nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid","strictatime","mode=755","size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid","noexec","newinstance","ptmxmode=0666","mode=0620","gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid","noexec","nodev","mode=1777","size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid","noexec","nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid","noexec","nodev","ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro","nosuid","noexec","nodev"]}
      ],
      "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
    }"#;

    fn parse(s: &str) -> Spec {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn takes_the_process_and_mounts() {
        let c = from_oci(&parse(CTR_SPEC)).unwrap();
        assert_eq!(c.args, ["sh", "-c", "exit 3"]);
        assert_eq!(c.cwd, "/work");
        assert_eq!(c.env_get("HOME"), Some("/home/u"));
        assert_eq!(
            c.user,
            User::Id {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![1000, 27]
            }
        );
        assert_eq!(c.rlimits[0].name(), Some("nofile"));
        assert!(c.no_new_privileges);
        assert_eq!(c.hostname.as_deref(), Some("t1"));
        let dests: Vec<&str> = c.mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        assert_eq!(c.mounts[6].fstype, "cgroup2");
    }

    #[test]
    fn refuses_host_mounts_and_ttys() {
        let bind = CTR_SPEC.replace(
            r#""mounts": ["#,
            r#""mounts": [{"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind","rw"]},"#,
        );
        let e = from_oci(&parse(&bind)).unwrap_err().to_string();
        assert!(
            e.contains("/data") && e.contains("/srv/data") && e.contains("bind"),
            "{e}"
        );
        let opt_bind = CTR_SPEC.replace(
            r#""mounts": ["#,
            r#""mounts": [{"destination": "/etc/hosts", "type": "none", "source": "/var/lib/x/hosts", "options": ["bind","ro"]},"#,
        );
        assert!(from_oci(&parse(&opt_bind)).is_err());
        let nfs = CTR_SPEC.replace(
            r#""mounts": ["#,
            r#""mounts": [{"destination": "/n", "type": "nfs", "source": "h:/x"},"#,
        );
        assert!(from_oci(&parse(&nfs))
            .unwrap_err()
            .to_string()
            .contains("nfs"));
        let tty = CTR_SPEC.replace(
            r#""process": {"#,
            r#""process": {"terminal": true, "consoleSize": {"height": 30, "width": 100},"#,
        );
        let t = from_oci(&parse(&tty)).unwrap();
        assert!(t.terminal);
        assert_eq!(
            t.console_size,
            Some(strata_plan::container::ConsoleSize {
                rows: 30,
                cols: 100
            })
        );
        let noargs = CTR_SPEC.replace(r#""args": ["sh", "-c", "exit 3"],"#, "");
        assert!(from_oci(&parse(&noargs)).is_err());
    }
}
