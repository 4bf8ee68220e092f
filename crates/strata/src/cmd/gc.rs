//! `strata gc`: remove layers no image or container rootfs references.

use strata_store::Store;

use crate::args::StoreArg;
use crate::error::Result;

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
    println!(
        "gc: {} layers removed, {} stale temp entries removed",
        r.layers_removed.len(),
        r.tmp_removed
    );
    Ok(())
}
