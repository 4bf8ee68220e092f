//! `strata initramfs`: the guest initramfs for a kernel (`/init` = this strata binary,
//! stripped, plus the kernel's modules in load order), for qemu `-initrd`.

use std::path::PathBuf;

use strata_vm::{KernelSpec, GUEST_MODULES};

use crate::error::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Guest kernel: 6.1 or 6.12 (Debian cloud kernels, fetched with apt and cached), or the
    /// path of an unpacked kernel package (boot/vmlinuz-RELEASE + lib/modules/RELEASE) or of
    /// a linux-image .deb.
    #[arg(long, default_value = "6.1")]
    kernel: KernelSpec,
    /// Where to write the initramfs (a newc cpio archive).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(a: Args) -> Result {
    let strata = std::env::current_exe()
        .map_err(|e| Error::failed(format!("cannot find my own binary: {e}")))?;
    let kernel = a.kernel.fetch()?;
    let modules = kernel.modules(GUEST_MODULES)?;
    strata_vm::guest_initramfs(&strata, &kernel, &a.output)?;
    let size = std::fs::metadata(&a.output)
        .map_err(Error::io("cannot stat", &a.output))?
        .len();
    println!(
        "wrote {} ({:.1} MiB): /init (strata, stripped) and {} modules of {}",
        a.output.display(),
        size as f64 / (1 << 20) as f64,
        modules.len(),
        kernel.release
    );
    println!("kernel: {}", kernel.vmlinuz.display());
    Ok(())
}
