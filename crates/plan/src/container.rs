//! The container process contract: what `strata guest init` runs once the rootfs is assembled.
//!
//! The host sends one [`ContainerSpec`] on the control port ([`crate::control`]); the guest
//! validates it, sets the hostname, makes the [`Mount`]s inside the new root, resolves the
//! [`User`] from the container's own `/etc/passwd` and `/etc/group`, applies the rlimits and
//! `no_new_privileges`, and runs `args` with `env` in `cwd`, its stdio on the container ports.
//!
//! `/proc`, `/sys` and `/dev` are always the guest's own (proc, sysfs and devtmpfs, moved into
//! the new root): spec mounts at exactly those paths are satisfied by them. Every other mount is
//! one of the guest-only filesystem types in [`GUEST_FSTYPES`]; nothing from the host can be
//! named here (a bind mount is refused).

use serde::{Deserialize, Serialize};

/// The spec format version this build writes and understands.
pub const SPEC_VERSION: u32 = 1;

/// `PATH` given to a container whose environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Filesystem types a [`Mount`] may use: all made by the guest kernel from nothing.
pub const GUEST_FSTYPES: &[&str] = &["proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup2"];

/// Paths the guest always has (its own proc, sysfs and devtmpfs).
pub const GUEST_OWN_MOUNTS: &[&str] = &["/proc", "/sys", "/dev"];

/// Longest hostname (`HOST_NAME_MAX`).
pub const MAX_HOSTNAME: usize = 64;

/// What to run in the guest, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// [`SPEC_VERSION`].
    pub version: u32,
    /// The command and its arguments; `args[0]` is looked up in the container's `PATH` unless
    /// it contains a `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries. Without `PATH` the guest adds [`DEFAULT_PATH`]; without `HOME` the
    /// user's home directory from `/etc/passwd` (else `/`).
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute working directory (created if missing, like Docker's `WorkingDir`).
    #[serde(default = "root_dir")]
    pub cwd: String,
    /// Who runs the command.
    #[serde(default)]
    pub user: User,
    /// The guest's hostname, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Resource limits set before the command starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    /// `PR_SET_NO_NEW_PRIVS` before exec.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Filesystems the guest mounts inside the new root, in order ([`default_mounts`] when
    /// absent).
    #[serde(default = "default_mounts")]
    pub mounts: Vec<Mount>,
    /// A terminal for the process (`strata run -t`, OCI `process.terminal`): the guest gives
    /// it a pseudo-terminal as stdin, stdout and stderr (its controlling terminal) and relays
    /// the terminal's master to the stdout port (nothing goes to the stderr port), the stdin
    /// port to the master; [`HostMessage::Resize`](crate::control::HostMessage::Resize)
    /// changes its size.
    #[serde(default)]
    pub terminal: bool,
    /// The terminal's size at start (with `terminal`; OCI `process.consoleSize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_size: Option<ConsoleSize>,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSize {
    pub rows: u16,
    pub cols: u16,
}

fn root_dir() -> String {
    "/".into()
}

/// Who the container process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum User {
    /// Numeric ids, used as they are (the OCI runtime spec's form).
    Id {
        uid: u32,
        gid: u32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        additional_gids: Vec<u32>,
    },
    /// Docker's `USER` form, resolved in the guest from the container's `/etc/passwd` and
    /// `/etc/group`: `user`, `user:group`, `uid`, `uid:gid` (names or numbers). Supplementary
    /// groups are the user's memberships in `/etc/group`.
    Name(String),
}

impl Default for User {
    fn default() -> Self {
        User::Id {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
        }
    }
}

/// One resource limit (`setrlimit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE`, … (OCI form) or `nofile` (Docker's); see [`RLIMITS`].
    #[serde(rename = "type")]
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

/// The rlimit names understood, lower case without the `RLIMIT_` prefix.
pub const RLIMITS: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

impl Rlimit {
    /// The limit's name as in [`RLIMITS`] (`RLIMIT_NOFILE` → `nofile`), if it is known.
    pub fn name(&self) -> Option<&'static str> {
        let k = self.kind.to_ascii_lowercase();
        let k = k.strip_prefix("rlimit_").unwrap_or(&k);
        RLIMITS.iter().copied().find(|n| *n == k)
    }
}

/// A filesystem the guest mounts in the new root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Absolute path in the container (created if missing).
    pub destination: String,
    /// One of [`GUEST_FSTYPES`].
    #[serde(rename = "type")]
    pub fstype: String,
    /// The mount source as `mount(2)` shows it (`tmpfs`, `shm`, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// `mount(8)`-style options: flags (`ro`, `nosuid`, `nodev`, `noexec`, …) and data
    /// (`mode=1777`, `size=64m`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Mount {
    fn new(destination: &str, fstype: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            destination: destination.into(),
            fstype: fstype.into(),
            source: source.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// The mounts of a container without a spec saying otherwise (Docker's set without cgroups):
/// `/proc`, `/sys`, `/dev` (the guest's own), `/dev/pts`, `/dev/shm`, `/dev/mqueue`.
pub fn default_mounts() -> Vec<Mount> {
    vec![
        Mount::new("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        Mount::new("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev"]),
        Mount::new("/dev", "tmpfs", "tmpfs", &["nosuid", "mode=755"]),
        Mount::new(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        Mount::new(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        Mount::new(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
    ]
}

/// A `/run` or `/tmp` style tmpfs mount (`strata run --tmpfs`, OCI specs).
pub fn tmpfs(destination: &str) -> Mount {
    Mount::new(
        destination,
        "tmpfs",
        "tmpfs",
        &["nosuid", "nodev", "mode=1777"],
    )
}

/// Why a spec cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("container spec is not valid JSON: {0}")]
    Json(String),
    #[error("container spec version {found} is not supported (this strata understands {SPEC_VERSION}); use the same strata version on host and guest")]
    Version { found: u32 },
    #[error("container spec has no command (args is empty): give one, or use an image with an Entrypoint or Cmd")]
    NoArgs,
    #[error("container spec: {what} {value:?} contains a NUL byte")]
    Nul { what: &'static str, value: String },
    #[error("container spec: environment entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    #[error("container spec: working directory {0:?} is not an absolute path")]
    BadCwd(String),
    #[error("container spec: hostname {0:?} is not valid (1-64 bytes, no '/', no whitespace)")]
    BadHostname(String),
    #[error("container spec: user {0:?} is empty or malformed (user, user:group, uid or uid:gid)")]
    BadUser(String),
    #[error("container spec: unknown rlimit {0:?} (known: RLIMIT_NOFILE, RLIMIT_NPROC, …)")]
    BadRlimit(String),
    #[error("container spec: rlimit {kind}: soft limit {soft} is above hard limit {hard}")]
    RlimitOrder { kind: String, soft: u64, hard: u64 },
    #[error("container spec: mount destination {0:?} is not a plain absolute path")]
    BadMountPath(String),
    #[error("container spec: mount at {destination:?} has type {fstype:?}: only filesystems the guest makes itself are allowed ({allowed}); host directories and bind mounts are not served")]
    BadMountType {
        destination: String,
        fstype: String,
        allowed: String,
    },
    #[error("container spec: option {option:?} of the mount at {destination:?} is not allowed")]
    BadMountOption { destination: String, option: String },
    #[error("container spec: a console size without a terminal")]
    ConsoleSizeWithoutTerminal,
}

/// A plain absolute path: starts with `/`, no `.`/`..` components, no NUL.
fn plain_absolute(p: &str) -> bool {
    p.starts_with('/') && !p.contains('\0') && p.split('/').skip(1).all(|c| c != "." && c != "..")
}

impl ContainerSpec {
    /// A spec running `args` as root in `/` with the [`default_mounts`].
    pub fn new(args: Vec<String>) -> ContainerSpec {
        ContainerSpec {
            version: SPEC_VERSION,
            args,
            env: Vec::new(),
            cwd: root_dir(),
            user: User::default(),
            hostname: None,
            rlimits: Vec::new(),
            no_new_privileges: false,
            mounts: default_mounts(),
            terminal: false,
            console_size: None,
        }
    }

    /// Parse and validate.
    pub fn from_json(bytes: &[u8]) -> Result<ContainerSpec, SpecError> {
        let spec: ContainerSpec =
            serde_json::from_slice(bytes).map_err(|e| SpecError::Json(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The value of `key` in [`env`](Self::env), if set.
    pub fn env_get(&self, key: &str) -> Option<&str> {
        self.env.iter().rev().find_map(|e| {
            let (k, v) = e.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    /// Set `key=value` in [`env`](Self::env), replacing an earlier value.
    pub fn env_set(&mut self, key: &str, value: &str) {
        self.env
            .retain(|e| e.split_once('=').map_or(e != key, |(k, _)| k != key));
        self.env.push(format!("{key}={value}"));
    }

    /// Check everything the guest relies on.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.version != SPEC_VERSION {
            return Err(SpecError::Version {
                found: self.version,
            });
        }
        if self.console_size.is_some() && !self.terminal {
            return Err(SpecError::ConsoleSizeWithoutTerminal);
        }
        if self.args.is_empty() || self.args[0].is_empty() {
            return Err(SpecError::NoArgs);
        }
        let nul = |what: &'static str, v: &String| {
            if v.contains('\0') {
                Err(SpecError::Nul {
                    what,
                    value: v.replace('\0', "\\0"),
                })
            } else {
                Ok(())
            }
        };
        for a in &self.args {
            nul("argument", a)?;
        }
        for e in &self.env {
            nul("environment entry", e)?;
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() => {}
                _ => return Err(SpecError::BadEnv(e.clone())),
            }
        }
        if !plain_absolute(&self.cwd) {
            return Err(SpecError::BadCwd(self.cwd.clone()));
        }
        if let Some(h) = &self.hostname {
            if h.is_empty()
                || h.len() > MAX_HOSTNAME
                || h.contains(['/', '\0'])
                || h.chars().any(char::is_whitespace)
            {
                return Err(SpecError::BadHostname(h.clone()));
            }
        }
        if let User::Name(n) = &self.user {
            let (u, g) = match n.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (n.as_str(), None),
            };
            let bad = |s: &str| s.is_empty() || s.contains([':', '\0', '\n', '/']);
            if bad(u) || g.is_some_and(bad) {
                return Err(SpecError::BadUser(n.clone()));
            }
        }
        for r in &self.rlimits {
            if r.name().is_none() {
                return Err(SpecError::BadRlimit(r.kind.clone()));
            }
            if r.soft > r.hard {
                return Err(SpecError::RlimitOrder {
                    kind: r.kind.clone(),
                    soft: r.soft,
                    hard: r.hard,
                });
            }
        }
        for m in &self.mounts {
            if !plain_absolute(&m.destination) || m.destination.contains(',') {
                return Err(SpecError::BadMountPath(m.destination.clone()));
            }
            if GUEST_OWN_MOUNTS.contains(&m.destination.trim_end_matches('/')) {
                continue;
            }
            if !GUEST_FSTYPES.contains(&m.fstype.as_str()) {
                return Err(SpecError::BadMountType {
                    destination: m.destination.clone(),
                    fstype: m.fstype.clone(),
                    allowed: GUEST_FSTYPES.join(", "),
                });
            }
            for o in &m.options {
                if o.is_empty() || o.contains([',', '\0']) || matches!(o.as_str(), "bind" | "rbind")
                {
                    return Err(SpecError::BadMountOption {
                        destination: m.destination.clone(),
                        option: o.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_fills_defaults() {
        let s = ContainerSpec::new(vec!["sh".into(), "-c".into(), "exit 7".into()]);
        let json = serde_json::to_vec(&s).unwrap();
        assert_eq!(ContainerSpec::from_json(&json).unwrap(), s);
        let min = ContainerSpec::from_json(br#"{"version":1,"args":["true"]}"#).unwrap();
        assert_eq!(min.cwd, "/");
        assert_eq!(min.user, User::default());
        assert_eq!(min.mounts, default_mounts());
        let named: ContainerSpec =
            serde_json::from_str(r#"{"version":1,"args":["id"],"user":{"name":"nobody:nogroup"}}"#)
                .unwrap();
        assert_eq!(named.user, User::Name("nobody:nogroup".into()));
        let ids: ContainerSpec = serde_json::from_str(
            r#"{"version":1,"args":["id"],"user":{"id":{"uid":1000,"gid":100,"additional_gids":[5]}}}"#,
        )
        .unwrap();
        assert_eq!(
            ids.user,
            User::Id {
                uid: 1000,
                gid: 100,
                additional_gids: vec![5]
            }
        );
    }

    #[test]
    fn env_get_and_set() {
        let mut s = ContainerSpec::new(vec!["x".into()]);
        s.env = vec!["A=1".into(), "B=2".into(), "A=3".into()];
        assert_eq!(s.env_get("A"), Some("3"));
        s.env_set("A", "4");
        assert_eq!(s.env, ["B=2", "A=4"]);
        assert_eq!(s.env_get("C"), None);
    }

    #[test]
    fn refuses_what_the_guest_cannot_do() {
        let ok = ContainerSpec::new(vec!["x".into()]);
        ok.validate().unwrap();
        let check = |f: &dyn Fn(&mut ContainerSpec), want: &str| {
            let mut s = ok.clone();
            f(&mut s);
            let e = s.validate().unwrap_err();
            assert!(format!("{e:?}").contains(want), "{e:?} !~ {want}");
        };
        check(&|s| s.version = 2, "Version");
        check(&|s| s.args.clear(), "NoArgs");
        check(&|s| s.args.push("a\0b".into()), "Nul");
        check(&|s| s.env.push("NOEQUALS".into()), "BadEnv");
        check(&|s| s.env.push("=x".into()), "BadEnv");
        check(&|s| s.cwd = "rel".into(), "BadCwd");
        check(&|s| s.cwd = "/a/../b".into(), "BadCwd");
        check(&|s| s.hostname = Some("a b".into()), "BadHostname");
        check(&|s| s.hostname = Some("x".repeat(65)), "BadHostname");
        check(&|s| s.user = User::Name("".into()), "BadUser");
        check(&|s| s.user = User::Name("a:".into()), "BadUser");
        check(&|s| s.user = User::Name("a:b:c".into()), "BadUser");
        check(
            &|s| {
                s.rlimits.push(Rlimit {
                    kind: "RLIMIT_BOGUS".into(),
                    soft: 1,
                    hard: 1,
                })
            },
            "BadRlimit",
        );
        check(
            &|s| {
                s.rlimits.push(Rlimit {
                    kind: "nofile".into(),
                    soft: 2,
                    hard: 1,
                })
            },
            "RlimitOrder",
        );
        check(
            &|s| {
                s.mounts
                    .push(Mount::new("/data", "bind", "/host", &["rbind"]))
            },
            "BadMountType",
        );
        check(
            &|s| s.mounts.push(Mount::new("/x", "tmpfs", "tmpfs", &["bind"])),
            "BadMountOption",
        );
        check(
            &|s| s.mounts.push(Mount::new("x", "tmpfs", "tmpfs", &[])),
            "BadMountPath",
        );
        check(
            &|s| s.console_size = Some(ConsoleSize { rows: 24, cols: 80 }),
            "ConsoleSizeWithoutTerminal",
        );
        assert!(matches!(
            ContainerSpec::from_json(br#"{"version":1,"args":["x"],"bogus":1}"#),
            Err(SpecError::Json(_))
        ));
    }

    #[test]
    fn rlimit_names() {
        let r = |k: &str| Rlimit {
            kind: k.into(),
            soft: 0,
            hard: 0,
        };
        assert_eq!(r("RLIMIT_NOFILE").name(), Some("nofile"));
        assert_eq!(r("nproc").name(), Some("nproc"));
        assert_eq!(r("RLIMIT_X").name(), None);
    }
}
