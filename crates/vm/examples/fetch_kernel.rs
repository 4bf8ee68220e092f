//! Fetch a guest kernel into the cache and list its guest modules.
//!
//! `cargo run -p strata-vm --example fetch_kernel -- 6.12`

use strata_vm::{GuestKernel, KernelChoice, GUEST_MODULES};

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "6.1".into());
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        let which: KernelChoice = which.parse()?;
        let k = GuestKernel::fetch(which)?;
        println!("{} {}", k.release, k.vmlinuz.display());
        for m in k.modules(GUEST_MODULES)? {
            println!("  {}", m.display());
        }
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
