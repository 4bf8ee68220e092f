//! `strata gc`: remove layers no image or container rootfs references, and leftovers in tmp/.

use strata_store::Store;

use crate::args::StoreArg;
use crate::error::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: StoreArg,
}

pub fn run(a: Args) -> Result {
    let r = Store::open(&a.store.store)?.gc()?;
    for l in &r.layers_removed {
        println!("removed layer {l}");
    }
    for e in &r.erofs_removed {
        println!("removed EROFS image {e}");
    }
    println!(
        "gc: {} layers removed, {} stale temp entries removed",
        r.layers_removed.len(),
        r.tmp_removed
    );
    // gc goes on past what it cannot remove; each is named, and the run fails.
    for f in &r.failed {
        eprintln!("strata gc: {f}");
    }
    if !r.failed.is_empty() {
        return Err(Error::failed(format!(
            "{} items could not be removed (listed above)",
            r.failed.len()
        )));
    }
    Ok(())
}
