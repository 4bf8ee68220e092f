//! strata lab: guest kernels, initramfs, qemu. (being written)
