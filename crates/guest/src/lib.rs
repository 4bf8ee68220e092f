//! `strata guest`: runs inside the VM. (being written)

use std::path::PathBuf;

/// Arguments of `strata guest mount`.
#[derive(Debug, Clone)]
pub struct MountArgs {
    pub tag: String,
    pub target: PathBuf,
}

/// `strata guest init`: PID 1 in the initramfs. Never returns: powers the VM off.
pub fn init() -> ! {
    unimplemented!("strata guest init")
}

/// `strata guest mount`: mount the tag and assemble the overlay at `target`.
pub fn mount(_args: &MountArgs) -> std::io::Result<()> {
    unimplemented!("strata guest mount")
}
