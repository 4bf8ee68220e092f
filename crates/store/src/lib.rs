//! strata's image store: OCI images imported into a content-addressed store of unpacked
//! layers in the overlayfs on-disk format, shared by every container that uses them.
//!
//! ```text
//! STORE/layers/sha256/<diff_id hex>/   one unpacked layer (whiteouts = char 0:0, opaque dirs)
//! STORE/images/<escaped name>.json     image record: name, digests, layers bottom-first, config
//! STORE/containers/<id>/{upper,work,rootfs.json}   upper flock'ed while served (held.rs)
//! STORE/erofs/<key hex>.img          EROFS image of a layer stack, merged (erofs.rs)
//! STORE/tmp/                           imports in progress (removed on failure, by gc)
//! STORE/lock                           flock: imports share it, gc takes it exclusively
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod digest;
pub mod erofs;
pub mod erofs_dirs;
pub mod error;
pub mod held;
pub mod reference;
pub mod source;
mod store;
#[allow(unsafe_code)]
mod sys;
pub mod unpack;
mod walk;

pub use config::ImageConfig;
pub use error::{EntryRule, StoreError};
pub use store::*;
