//! The mount plan: what `strata serve` tells the guest about the tree it serves.
//!
//! The served virtio-fs tree is synthesized by the daemon and looks like this from the guest:
//!
//! ```text
//! /plan.json        this plan (read-only)
//! /layers/0         topmost read-only layer (overlayfs `lowerdir` order: first = top)
//! /layers/1         ...
//! /lower            the layers merged (whiteouts and opaque dirs applied), read-only
//! /upper            the container's writable directory
//! /work             overlayfs work directory (same host filesystem as upper)
//! ```
//!
//! The guest mounts the virtio-fs tag somewhere (`root`), then mounts
//! `overlay -o lowerdir=root/layers/0:root/layers/1,upperdir=root/upper,workdir=root/work,<options>`.
//! or, with more than one layer, `lowerdir=root/lower` ([`MountPlan::merged`]).
//! Paths in the plan are relative to the virtio-fs mount root.
//!
//! With [`MountPlan::lower_tag`] set, the read-only layers come from a second virtio-fs device
//! with that tag (the same tree, served without extended attributes): the guest mounts it too,
//! and `lowers` are relative to *its* root. Why a second device: FUSE caches no xattrs, and the
//! guest's overlayfs asks for `trusted.overlay.metacopy` of every lower file it looks up (even
//! with `metacopy=off`); a device that answers GETXATTR with ENOSYS once is never asked again,
//! while the upper, on the first device, keeps the xattrs overlayfs needs there. The daemon
//! only says so when no layer has an xattr a container could read.
//!
//! With [`MountPlan::lower_block`] set, the read-only layers come from a virtio-blk device
//! instead (the guest finds it by its serial number, mounts it read-only with the given
//! filesystem type, `erofs`), and `lowers` are relative to that filesystem's root; the upper
//! and work stay on the virtio-fs tree. The VMM attaches the image read-only:
//! `-drive file=IMG,if=none,readonly=on,format=raw,id=l0 -device
//! virtio-blk-pci,drive=l0,serial=SERIAL`.
//!
//! With [`MountPlan::rootfs`] set, the daemon has merged the upper dir and the layers itself
//! (`strata serve --union`) and serves the result as that directory of the tree: the guest
//! bind-mounts it as the container root and mounts no overlay (`lowers`, `upper` and `work`
//! then only say where the daemon keeps them).
//!
//! A container VM also gets a [`ContainerSpec`] (what to run, as whom, with which in-guest
//! mounts) over the [`control`] protocol on a virtio-serial port.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod container;
pub mod control;

pub use container::{ContainerSpec, SpecError};

use serde::{Deserialize, Serialize};

/// The file name of the plan at the root of the served tree.
pub const PLAN_FILE: &str = "plan.json";
/// Directory holding one sub-directory per layer, named by index (0 = topmost).
pub const LAYERS_DIR: &str = "layers";
/// The merged read-only lower: the union of every layer with their whiteouts and opaque
/// directories applied, synthesized by the daemon (one overlay lower instead of N).
pub const MERGED_LOWER_DIR: &str = "lower";
/// The writable upper directory.
pub const UPPER_DIR: &str = "upper";
/// The overlayfs work directory.
pub const WORK_DIR: &str = "work";
/// The container root merged by the daemon ([`MountPlan::rootfs`]).
pub const UNION_ROOTFS_DIR: &str = "rootfs";
/// Default virtio-fs tag.
pub const DEFAULT_TAG: &str = "strata";
/// The plan format version this build writes and understands.
pub const PLAN_VERSION: u32 = 1;

/// Overlay options strata always asks for. They keep the upper directory in the basic on-disk
/// format (whiteouts + opaque dirs only) that a default host `mount -t overlay` reads back, so
/// the host can always check or reuse what the guest wrote.
pub const DEFAULT_OVERLAY_OPTIONS: &[&str] = &["index=off", "redirect_dir=off", "metacopy=off"];

/// How the guest assembles the container root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountPlan {
    /// Plan format version ([`PLAN_VERSION`]).
    pub version: u32,
    /// Read-only layers, topmost first, relative to the tree root (e.g. `layers/0`).
    pub lowers: Vec<String>,
    /// Writable upper directory, relative to the tree root.
    pub upper: String,
    /// Work directory, relative to the tree root.
    pub work: String,
    /// Extra overlay mount options (`key=value` or flags), appended after the directories.
    #[serde(default)]
    pub options: Vec<String>,
    /// The virtio-fs tag of the device serving the layers without xattrs, if any: `lowers`
    /// are then relative to that device's root (see the module documentation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_tag: Option<String>,
    /// The block device holding the layers, if they are not on virtio-fs: `lowers` are then
    /// relative to the root of the filesystem on it (see the module documentation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_block: Option<LowerBlock>,
    /// The directory of the tree that is the container root, merged by the daemon: the guest
    /// bind-mounts it instead of mounting an overlay (see the module documentation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
}

/// A read-only block device holding the layers ([`MountPlan::lower_block`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LowerBlock {
    /// The virtio-blk serial number the VMM gives the device (`serial=` of `virtio-blk-pci`;
    /// the guest reads it from `/sys/block/vdX/serial`).
    pub serial: String,
    /// The filesystem on it: [`LOWER_BLOCK_FSTYPES`].
    pub fstype: String,
}

/// Filesystem types a [`LowerBlock`] may have.
pub const LOWER_BLOCK_FSTYPES: &[&str] = &["erofs"];
/// Default serial number of the EROFS layer device.
pub const DEFAULT_LOWER_SERIAL: &str = "strata-lower";
/// Longest virtio-blk serial number (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_SERIAL_LEN: usize = 20;

impl LowerBlock {
    /// An EROFS device with serial `serial`.
    pub fn erofs(serial: &str) -> Self {
        LowerBlock {
            serial: serial.to_string(),
            fstype: "erofs".to_string(),
        }
    }
}

/// Why `serial` cannot be the serial of a [`LowerBlock`], or `None` if it can.
pub fn serial_problem(serial: &str) -> Option<&'static str> {
    if serial.is_empty() {
        Some("it is empty")
    } else if serial.len() > MAX_SERIAL_LEN {
        Some("virtio-blk serial numbers are at most 20 bytes")
    } else if !serial
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Some("use only ASCII letters, digits, '-', '_' and '.'")
    } else {
        None
    }
}

/// Longest virtio-fs tag (the `tag` field of the device's config space).
pub const MAX_TAG_LEN: usize = 36;

/// Why `tag` cannot be a virtio-fs tag strata uses (it also names a directory that ends up in
/// the overlay options), or `None` if it can.
pub fn tag_problem(tag: &str) -> Option<&'static str> {
    if tag.is_empty() {
        Some("it is empty")
    } else if tag.len() > MAX_TAG_LEN {
        Some("virtio-fs tags are at most 36 bytes")
    } else if tag == "." || tag == ".." {
        Some("it must not be . or ..")
    } else if !tag
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b',' | b':' | b'\\' | b'"' | b'\''))
    {
        Some("use only printable ASCII without spaces, quotes, '/', ',', ':' or '\\'")
    } else {
        None
    }
}

/// Why a plan cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("mount plan is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("mount plan version {found} is not supported (this strata understands {PLAN_VERSION}); use the same strata version on host and guest")]
    Version { found: u32 },
    #[error("mount plan has no layers")]
    NoLayers,
    #[error("mount plan path {0:?} is not a plain relative path")]
    BadPath(String),
    #[error(
        "mount plan option {0:?} is not allowed (options may not contain ',' or set directories)"
    )]
    BadOption(String),
    #[error("mount plan lower_tag {tag:?} is not a usable virtio-fs tag: {reason}")]
    BadTag { tag: String, reason: &'static str },
    #[error("mount plan lower_block {what:?} is not usable: {reason}")]
    BadBlock { what: String, reason: &'static str },
}

impl MountPlan {
    /// The plan for `n_layers` layers served in the standard layout.
    pub fn standard(n_layers: usize) -> Self {
        MountPlan {
            version: PLAN_VERSION,
            lowers: (0..n_layers).map(|i| format!("{LAYERS_DIR}/{i}")).collect(),
            upper: UPPER_DIR.to_string(),
            work: WORK_DIR.to_string(),
            options: DEFAULT_OVERLAY_OPTIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            lower_tag: None,
            lower_block: None,
            rootfs: None,
        }
    }

    /// The plan for the standard layout with the layers given as the one merged lower
    /// ([`MERGED_LOWER_DIR`]): the guest overlay then looks names up in one lower layer.
    pub fn merged() -> Self {
        MountPlan {
            lowers: vec![MERGED_LOWER_DIR.to_string()],
            ..MountPlan::standard(1)
        }
    }

    /// This plan with its layers on the xattr-less device `tag` ([`MountPlan::lower_tag`]).
    pub fn with_lower_tag(self, tag: &str) -> Self {
        MountPlan {
            lower_tag: Some(tag.to_string()),
            ..self
        }
    }

    /// This plan with its layers on the read-only block device `block`
    /// ([`MountPlan::lower_block`]): a layer device over virtio-fs, if any, is not used.
    pub fn with_lower_block(self, block: LowerBlock) -> Self {
        MountPlan {
            lower_block: Some(block),
            lower_tag: None,
            ..self
        }
    }

    /// This plan with the container root merged by the daemon in `dir` ([`MountPlan::rootfs`]).
    pub fn with_rootfs(self, dir: &str) -> Self {
        MountPlan {
            rootfs: Some(dir.to_string()),
            lower_tag: None,
            lower_block: None,
            ..self
        }
    }

    /// Parse and validate a plan.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PlanError> {
        let plan: MountPlan = serde_json::from_slice(bytes)?;
        plan.validate()?;
        Ok(plan)
    }

    /// Serialize (pretty, with a trailing newline: people read it).
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, numbers and lists cannot fail to serialize; were it ever to, the guest gets
        // an empty plan and refuses it with a message, rather than the daemon panicking.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Check the plan is usable: known version, layers present, paths relative and plain.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.version != PLAN_VERSION {
            return Err(PlanError::Version {
                found: self.version,
            });
        }
        if self.lowers.is_empty() {
            return Err(PlanError::NoLayers);
        }
        if self.rootfs.is_some() && (self.lower_tag.is_some() || self.lower_block.is_some()) {
            return Err(PlanError::BadPath(
                "rootfs with lower_tag or lower_block (the daemon merges the layers itself)".into(),
            ));
        }
        for p in self
            .lowers
            .iter()
            .chain([&self.upper, &self.work])
            .chain(self.rootfs.as_ref())
        {
            let plain = !p.is_empty()
                && !p.starts_with('/')
                && !p.contains([',', ':', '\\', '\0'])
                && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
            if !plain {
                return Err(PlanError::BadPath(p.clone()));
            }
        }
        if let Some(tag) = &self.lower_tag {
            if let Some(reason) = tag_problem(tag) {
                return Err(PlanError::BadTag {
                    tag: tag.clone(),
                    reason,
                });
            }
        }
        if let Some(b) = &self.lower_block {
            if self.lower_tag.is_some() {
                return Err(PlanError::BadBlock {
                    what: b.serial.clone(),
                    reason: "a plan has lower_tag or lower_block, not both",
                });
            }
            if let Some(reason) = serial_problem(&b.serial) {
                return Err(PlanError::BadBlock {
                    what: b.serial.clone(),
                    reason,
                });
            }
            if !LOWER_BLOCK_FSTYPES.contains(&b.fstype.as_str()) {
                return Err(PlanError::BadBlock {
                    what: b.fstype.clone(),
                    reason: "the filesystem type must be erofs",
                });
            }
        }
        for o in &self.options {
            let key = o.split('=').next().unwrap_or_default();
            if o.is_empty()
                || o.contains([',', '\0'])
                || matches!(
                    key,
                    "lowerdir" | "upperdir" | "workdir" | "lowerdir+" | "datadir+"
                )
            {
                return Err(PlanError::BadOption(o.clone()));
            }
        }
        Ok(())
    }

    /// The overlay mount data string for a virtio-fs tree mounted at `root` (and, with
    /// [`MountPlan::lower_tag`], the layer device at the same place: see
    /// [`MountPlan::overlay_options_with`]).
    pub fn overlay_options(&self, root: &str) -> String {
        self.overlay_options_with(root, root)
    }

    /// The overlay mount data string for the tree mounted at `root` and the device holding
    /// `lowers` mounted at `lower_root` (the same as `root` without a [`MountPlan::lower_tag`]).
    pub fn overlay_options_with(&self, root: &str, lower_root: &str) -> String {
        let root = root.trim_end_matches('/');
        let lower_root = lower_root.trim_end_matches('/');
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|l| format!("{lower_root}/{l}"))
            .collect();
        let mut s = format!(
            "lowerdir={},upperdir={root}/{},workdir={root}/{}",
            lowers.join(":"),
            self.upper,
            self.work
        );
        for o in &self.options {
            s.push(',');
            s.push_str(o);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_plan_round_trips() {
        let p = MountPlan::standard(3);
        let back = MountPlan::from_json(&p.to_json()).unwrap();
        assert_eq!(p, back);
        assert_eq!(back.lowers, ["layers/0", "layers/1", "layers/2"]);
    }

    #[test]
    fn merged_plan_has_one_lower() {
        let p = MountPlan::merged();
        assert_eq!(
            p.overlay_options("/r"),
            "lowerdir=/r/lower,upperdir=/r/upper,workdir=/r/work,\
             index=off,redirect_dir=off,metacopy=off"
        );
        assert_eq!(MountPlan::from_json(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn lower_tag_moves_the_layers_only() {
        let p = MountPlan::merged().with_lower_tag("strata-lower");
        let json = String::from_utf8(p.to_json()).unwrap();
        assert!(json.contains("\"lower_tag\": \"strata-lower\""), "{json}");
        assert_eq!(MountPlan::from_json(json.as_bytes()).unwrap(), p);
        assert_eq!(
            p.overlay_options_with("/r", "/l/"),
            "lowerdir=/l/lower,upperdir=/r/upper,workdir=/r/work,\
             index=off,redirect_dir=off,metacopy=off"
        );
        // A plan without the field (older daemons) still reads, and writes no field.
        assert!(!String::from_utf8(MountPlan::merged().to_json())
            .unwrap()
            .contains("lower_tag"));
        for bad in ["", "a/b", "a,b", "x y", &"x".repeat(37)] {
            let p = MountPlan::merged().with_lower_tag(bad);
            assert!(
                matches!(p.validate(), Err(PlanError::BadTag { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn lower_block_round_trips_and_is_checked() {
        let p = MountPlan::merged()
            .with_lower_tag("strata-lower")
            .with_lower_block(LowerBlock::erofs(DEFAULT_LOWER_SERIAL));
        assert_eq!(p.lower_tag, None);
        let json = String::from_utf8(p.to_json()).unwrap();
        assert!(json.contains("\"fstype\": \"erofs\""), "{json}");
        assert_eq!(MountPlan::from_json(json.as_bytes()).unwrap(), p);
        assert_eq!(
            p.overlay_options_with("/r", "/b"),
            "lowerdir=/b/lower,upperdir=/r/upper,workdir=/r/work,\
             index=off,redirect_dir=off,metacopy=off"
        );
        for bad in ["", "a b", "a/b", &"x".repeat(21)] {
            let p = MountPlan::merged().with_lower_block(LowerBlock::erofs(bad));
            assert!(
                matches!(p.validate(), Err(PlanError::BadBlock { .. })),
                "{bad:?}"
            );
        }
        let mut p = MountPlan::merged().with_lower_block(LowerBlock::erofs("ok"));
        p.lower_block.as_mut().unwrap().fstype = "ext4".into();
        assert!(matches!(p.validate(), Err(PlanError::BadBlock { .. })));
        p.lower_block = Some(LowerBlock::erofs("ok"));
        p.lower_tag = Some("t".into());
        assert!(matches!(p.validate(), Err(PlanError::BadBlock { .. })));
    }

    #[test]
    fn overlay_options_keep_layer_order() {
        let p = MountPlan::standard(2);
        assert_eq!(
            p.overlay_options("/run/strata/fs/"),
            "lowerdir=/run/strata/fs/layers/0:/run/strata/fs/layers/1,\
             upperdir=/run/strata/fs/upper,workdir=/run/strata/fs/work,\
             index=off,redirect_dir=off,metacopy=off"
        );
    }

    #[test]
    fn rejects_escapes_and_injection() {
        for bad in ["../x", "/abs", "a/../b", "a,b", "a:b", ""] {
            let mut p = MountPlan::standard(1);
            p.upper = bad.to_string();
            assert!(matches!(p.validate(), Err(PlanError::BadPath(_))), "{bad}");
        }
        let mut p = MountPlan::standard(1);
        p.options.push("upperdir=/etc".into());
        assert!(matches!(p.validate(), Err(PlanError::BadOption(_))));
        let mut p = MountPlan::standard(1);
        p.version = 9;
        assert!(matches!(p.validate(), Err(PlanError::Version { found: 9 })));
        assert!(matches!(
            MountPlan::from_json(b"{"),
            Err(PlanError::Json(_))
        ));
        let mut p = MountPlan::standard(1);
        p.lowers.clear();
        assert!(matches!(p.validate(), Err(PlanError::NoLayers)));
    }
}
