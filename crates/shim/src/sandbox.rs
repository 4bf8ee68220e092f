//! The real [`Backend`]: each task a strata micro-VM (strata-runtime).

use std::sync::Arc;

use crate::error::ShimError;
use crate::task::{Backend, CreateParams, Vm};

/// Sandboxes from strata-runtime.
pub struct StrataBackend;

impl StrataBackend {
    /// The backend, configured from the environment.
    pub fn new() -> StrataBackend {
        StrataBackend
    }
}

impl Backend for StrataBackend {
    fn create(&self, p: &CreateParams) -> Result<Arc<dyn Vm>, ShimError> {
        let bundle = std::path::Path::new(&p.bundle);
        let _ = crate::rootfs::parse(&p.rootfs, bundle, Some("rootfs"))?;
        Err(ShimError::Sandbox("not yet".into()))
    }
}
