//! The container's root filesystem as containerd hands it over, turned into directories to
//! serve, never into a host mount.
//!
//! - The overlayfs snapshotter gives one *unmounted* `overlay` mount: `lowerdir=A:B:…` (top
//!   first), `upperdir=…`, `workdir=…` and flags such as `index=off`. Those are plain directories
//!   in the overlayfs on-disk format, which is what strata serves; the guest's kernel assembles
//!   the overlay.
//! - `ctr run --rootfs DIR` gives no mount at all and the bundle's `config.json` names `DIR` as
//!   `root.path`: it is served read-only as the one lower layer, with an upper and a work
//!   directory the shim creates in the bundle (the container's writes land there and go away with
//!   the bundle; `DIR` is never written).
//! - Anything else (`bind` from the native snapshotter or a parentless overlay snapshot, `tmpfs`,
//!   several mounts, unknown overlay options) is refused with an error that says what was given
//!   and what works, before anything is created.

use std::path::{Component, Path, PathBuf};

use crate::error::ShimError;

/// One mount of the create request's `rootfs`, as containerd describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// `overlay`, `bind`, …
    pub kind: String,
    /// The mount source (`overlay` for the snapshotter's overlay).
    pub source: String,
    /// The options, `key=value` or flags.
    pub options: Vec<String>,
}

impl From<&containerd_shim_protos::types::mount::Mount> for MountSpec {
    fn from(m: &containerd_shim_protos::types::mount::Mount) -> Self {
        MountSpec {
            kind: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        }
    }
}

/// Where the container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsSource {
    /// The overlayfs snapshotter's directories.
    Overlay {
        /// The read-only layers, top first (the order of `lowerdir=`).
        lowers: Vec<PathBuf>,
        /// The container's writable directory.
        upper: PathBuf,
        /// overlayfs' work directory, on the same filesystem as `upper`.
        work: PathBuf,
    },
    /// A prepared root directory (`ctr run --rootfs DIR`): served read-only as the one lower
    /// layer; the shim makes the upper and work directories in the bundle.
    Dir(PathBuf),
}

/// overlay options that only tune the host kernel's overlayfs: strata's guest picks its own, so
/// they are accepted and dropped.
const IGNORED_OVERLAY_FLAGS: &[&str] = &[
    "index",
    "userxattr",
    "metacopy",
    "redirect_dir",
    "xino",
    "volatile",
    "nfs_export",
    "uuid",
    "rw",
];

/// The root filesystem of a create request: its `rootfs` mounts, else the bundle's
/// `root.path` (relative to the bundle, as the runtime spec says). Checks that every directory
/// exists; creates nothing.
pub fn parse(
    mounts: &[MountSpec],
    bundle: &Path,
    root_path: Option<&str>,
) -> Result<RootfsSource, ShimError> {
    match mounts {
        [] => {
            let Some(root) = root_path.filter(|p| !p.is_empty()) else {
                return Err(ShimError::Rootfs(
                    "no rootfs mount in the request and no root.path in config.json".into(),
                ));
            };
            let dir = bundle.join(root);
            check_dir(&dir, "root.path")?;
            Ok(RootfsSource::Dir(dir))
        }
        [m] if m.kind == "overlay" => parse_overlay(m),
        [m] => Err(ShimError::Rootfs(format!(
            "rootfs mount of type {:?} (source {:?}) is not supported: strata serves the \
             overlayfs snapshotter's directories (`--snapshotter overlayfs`, containerd's \
             default) or a prepared directory (`ctr run --rootfs DIR`) and mounts nothing on \
             the host",
            m.kind, m.source
        ))),
        _ => Err(ShimError::Rootfs(format!(
            "{} rootfs mounts ({}): strata takes one overlay mount from the overlayfs snapshotter",
            mounts.len(),
            mounts
                .iter()
                .map(|m| m.kind.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn parse_overlay(m: &MountSpec) -> Result<RootfsSource, ShimError> {
    let mut lowers = Vec::new();
    let mut upper = None;
    let mut work = None;
    for opt in &m.options {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        match (key, value) {
            ("lowerdir", Some(v)) => {
                for l in split_lowerdir(v) {
                    lowers.push(abs_path(&l, "lowerdir")?);
                }
            }
            ("upperdir", Some(v)) => upper = Some(abs_path(v, "upperdir")?),
            ("workdir", Some(v)) => work = Some(abs_path(v, "workdir")?),
            ("ro", None) => {
                return Err(ShimError::Rootfs(
                    "read-only overlay rootfs (option `ro`) is not supported".into(),
                ))
            }
            (k, _) if IGNORED_OVERLAY_FLAGS.contains(&k) => {}
            _ => {
                return Err(ShimError::Rootfs(format!(
                    "overlay rootfs option {opt:?} is not supported"
                )))
            }
        }
    }
    if lowers.is_empty() {
        return Err(ShimError::Rootfs("overlay rootfs without lowerdir".into()));
    }
    let (Some(upper), Some(work)) = (upper, work) else {
        return Err(ShimError::Rootfs(
            "overlay rootfs without upperdir and workdir (a read-only view) is not supported"
                .into(),
        ));
    };
    for l in &lowers {
        check_dir(l, "lowerdir")?;
    }
    check_dir(&upper, "upperdir")?;
    check_dir(&work, "workdir")?;
    Ok(RootfsSource::Overlay {
        lowers,
        upper,
        work,
    })
}

/// `lowerdir=` is `:`-separated; overlayfs lets a `\:` stand for a colon inside a path.
fn split_lowerdir(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn abs_path(v: &str, what: &str) -> Result<PathBuf, ShimError> {
    let p = PathBuf::from(v);
    let clean = p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !clean {
        return Err(ShimError::Rootfs(format!(
            "overlay {what} {v:?} is not a clean absolute path"
        )));
    }
    Ok(p)
}

fn check_dir(p: &Path, what: &str) -> Result<(), ShimError> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ShimError::Rootfs(format!(
            "{what} {} is not a directory",
            p.display()
        ))),
        Err(e) => Err(ShimError::Rootfs(format!("{what} {}: {e}", p.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(opts: &[&str]) -> MountSpec {
        MountSpec {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: opts.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn dirs(names: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::create_dir_all(t.path().join(n)).unwrap();
        }
        t
    }

    #[test]
    fn snapshotter_overlay() {
        let t = dirs(&["3/fs", "2/fs", "4/fs", "4/work"]);
        let p = |s: &str| t.path().join(s);
        let m = overlay(&[
            "index=off",
            &format!("lowerdir={}:{}", p("3/fs").display(), p("2/fs").display()),
            &format!("upperdir={}", p("4/fs").display()),
            &format!("workdir={}", p("4/work").display()),
            "userxattr",
        ]);
        let r = parse(&[m], t.path(), Some("rootfs")).unwrap();
        assert_eq!(
            r,
            RootfsSource::Overlay {
                lowers: vec![p("3/fs"), p("2/fs")],
                upper: p("4/fs"),
                work: p("4/work"),
            }
        );
    }

    #[test]
    fn escaped_colon_in_lowerdir() {
        assert_eq!(split_lowerdir(r"/a\:b:/c"), vec!["/a:b", "/c"]);
    }

    #[test]
    fn prepared_dir_without_mounts() {
        let t = dirs(&["rootfs"]);
        let r = parse(&[], t.path(), Some("rootfs")).unwrap();
        assert_eq!(r, RootfsSource::Dir(t.path().join("rootfs")));
        let abs = t.path().join("rootfs");
        let r = parse(&[], Path::new("/elsewhere"), abs.to_str()).unwrap();
        assert_eq!(r, RootfsSource::Dir(abs));
    }

    #[test]
    fn refusals_name_the_input() {
        let t = dirs(&["l", "u", "w"]);
        let p = |s: &str| t.path().join(s).display().to_string();
        let err = |mounts: &[MountSpec]| {
            parse(mounts, t.path(), Some("missing"))
                .unwrap_err()
                .to_string()
        };
        let bind = MountSpec {
            kind: "bind".into(),
            source: p("u"),
            options: vec!["rbind".into(), "rw".into()],
        };
        assert!(err(std::slice::from_ref(&bind)).contains("\"bind\""));
        assert!(err(&[bind.clone(), bind]).contains("2 rootfs mounts"));
        assert!(err(&[]).contains("root.path"));
        let lower = format!("lowerdir={}", p("l"));
        let upper = format!("upperdir={}", p("u"));
        let work = format!("workdir={}", p("w"));
        assert!(err(&[overlay(&[&lower])]).contains("without upperdir"));
        assert!(err(&[overlay(&[&upper, &work])]).contains("without lowerdir"));
        assert!(err(&[overlay(&[&lower, &upper, &work, "ro"])]).contains("read-only"));
        assert!(err(&[overlay(&[&lower, &upper, &work, "foo=bar"])]).contains("\"foo=bar\""));
        assert!(err(&[overlay(&["lowerdir=rel", &upper, &work])]).contains("clean absolute"));
        assert!(err(&[overlay(&["lowerdir=/a/../b", &upper, &work])]).contains("clean absolute"));
        let gone = format!("lowerdir={}", p("gone"));
        assert!(err(&[overlay(&[&gone, &upper, &work])]).contains("gone"));
    }
}
