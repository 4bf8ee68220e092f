//! `strata demo`: build a tiny image, serve it, boot a Debian 6.1 guest on it and show what
//! happened (the lab's `demo` module does the work).

use std::path::PathBuf;

use crate::error::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Working directory for the image, container dirs and VM files (default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the working directory afterwards.
    #[arg(long)]
    keep: bool,
    /// Give the guest the layers as their merged EROFS image on a read-only virtio-blk disk
    /// (built with mkfs.erofs, opened by qemu, mounted by the guest) instead of the layer
    /// device; the upper is still served.
    #[arg(long)]
    erofs: bool,
}

pub fn run(a: Args) -> Result {
    let mut tmp = None;
    let (strata, dir) = super::binary_and_workdir("demo", a.dir, &mut tmp)?;
    let result = strata_lab::demo::run(&strata, &dir, a.erofs);
    if a.keep {
        if let Some(t) = tmp.take() {
            let _ = t.keep();
        }
        eprintln!("kept {}", dir.display());
    }
    match result.map_err(Error::failed)? {
        true => Ok(()),
        false => Err(Error::failed(
            "the guest did not see what it should (see above)",
        )),
    }
}
