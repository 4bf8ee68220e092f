//! One error type for the store, with messages that say what to do.

use std::path::PathBuf;

/// Why an archive entry was refused. Each names the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryRule {
    /// A path component is `..`.
    DotDot,
    /// The path is absolute.
    Absolute,
    /// A parent of the entry is a symlink (or not a directory) already in the layer.
    ThroughSymlink { parent: String },
    /// A hard link whose target is outside the layer, absent, or not extracted before it.
    HardLinkOutside { target: String },
    /// A whiteout for `.` or `..` (or an empty name).
    BadWhiteout,
    /// The same path twice in one layer.
    Duplicate,
    /// An xattr the store reserves (`trusted.overlay.*` would change overlayfs semantics).
    ReservedXattr { name: String },
    /// An entry type the store cannot represent.
    UnsupportedType { kind: u8 },
    /// The entry's data ends early.
    Truncated { expected: u64, got: u64 },
    /// The entry's path is not valid (NUL byte, empty name).
    BadName,
    /// A PAX sparse file whose headers or map do not hold together.
    BadSparse(String),
}

impl std::fmt::Display for EntryRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryRule::DotDot => write!(f, "paths may not contain '..'"),
            EntryRule::Absolute => write!(f, "paths may not be absolute"),
            EntryRule::ThroughSymlink { parent } => write!(
                f,
                "entries may not be written through a symlink or non-directory ({parent:?} is not a directory)"
            ),
            EntryRule::HardLinkOutside { target } => write!(
                f,
                "hard links must point to a file extracted earlier in the same layer (target {target:?})"
            ),
            EntryRule::BadWhiteout => write!(f, "whiteouts for '.', '..' or an empty name are not allowed"),
            EntryRule::Duplicate => write!(f, "a path named again in the layer could not replace the earlier entry (duplicate entry)"),
            EntryRule::ReservedXattr { name } => {
                write!(f, "xattr {name:?} is reserved for overlayfs and may not come from an image")
            }
            EntryRule::UnsupportedType { kind } => {
                write!(f, "unsupported tar entry type {:?}", *kind as char)
            }
            EntryRule::Truncated { expected, got } => {
                write!(f, "entry data is truncated ({got} of {expected} bytes)")
            }
            EntryRule::BadName => write!(f, "entry name is empty or not a valid file name"),
            EntryRule::BadSparse(why) => write!(f, "sparse file: {why}"),
        }
    }
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {src}: {reason}")]
    BadSource { src: PathBuf, reason: String },
    #[error("{what} is not valid: {reason}")]
    BadJson { what: String, reason: String },
    #[error("{what}: digest mismatch: expected {expected}, got {actual} (the image is corrupt or was modified; re-export it)")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what} is truncated or has the wrong size: expected {expected} bytes, read {actual} (re-export the image)")]
    Truncated {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("layer {layer}: entry {entry:?} rejected: {rule}")]
    Entry {
        layer: String,
        entry: String,
        rule: EntryRule,
    },
    #[error("layer {layer}: entry {entry:?}: {what}: {source}")]
    EntryIo {
        layer: String,
        entry: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("layer {layer}: corrupt or truncated layer data {}: {source}", where_in(.after))]
    Tar {
        layer: String,
        after: String,
        #[source]
        source: std::io::Error,
    },
    #[error("layer {layer}: entry {entry:?}: unpacked size exceeds the limit of {limit} bytes for one import (decompression bomb?); raise it with --max-unpacked BYTES if the image is genuine")]
    TooLarge {
        layer: String,
        entry: String,
        limit: u64,
    },
    #[error("unsupported image: {0}")]
    Unsupported(String),
    #[error("image {0:?} not found in the store (see `strata image ls`)")]
    ImageNotFound(String),
    #[error("image name {0:?} is not valid (a reference such as debian, debian:bookworm or registry.example/team/app:1)")]
    BadName(String),
    #[error("{reference:?} names more than one image ({names:?}): give more digits or a name")]
    Ambiguous {
        reference: String,
        names: Vec<String>,
    },
    #[error("container rootfs {0:?} not found in the store")]
    RootfsNotFound(String),
    #[error("container rootfs {0:?} already exists (remove it with `strata rootfs rm {0}`)")]
    RootfsExists(String),
    #[error("container rootfs {id:?} is being served by pid {pid}: stop that server or session first (or `strata rootfs rm --force`, which leaves the running guest on deleted directories)")]
    RootfsInUse { id: String, pid: u32 },
    #[error("container id {0:?} is not valid (1-128 of [A-Za-z0-9_.-], starting with a letter or digit)")]
    BadId(String),
    #[error(
        "layer {0} of an image record is missing from the store (run `strata image import` again)"
    )]
    LayerMissing(String),
    #[error("store directory {path} is not safe: {reason}")]
    Insecure { path: PathBuf, reason: String },
    #[error("EROFS image cache {path} is not safe: {reason}")]
    InsecureCache { path: PathBuf, reason: String },
    #[error("store record {path} is not valid: {reason} (remove it or re-import)")]
    BadRecord { path: PathBuf, reason: String },
    #[error("{tool} failed: {reason}")]
    Tool { tool: &'static str, reason: String },
}

fn where_in(after: &str) -> String {
    if after.is_empty() {
        "before the first entry".to_string()
    } else {
        format!("after entry {after:?}")
    }
}

impl StoreError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { what, path, source }
    }
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        let kind = match &e {
            StoreError::Io { source, .. } | StoreError::EntryIo { source, .. } => source.kind(),
            StoreError::ImageNotFound(_) | StoreError::RootfsNotFound(_) => {
                std::io::ErrorKind::NotFound
            }
            StoreError::RootfsExists(_) => std::io::ErrorKind::AlreadyExists,
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
