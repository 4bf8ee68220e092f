//! The page-fault loop `strata trace`'s overhead is measured on (`strata bench page-faults`,
//! run inside the benchmark's guest): map fresh anonymous memory, touch every page, unmap.
//! On Linux 6.1 each fault takes and releases `mmap_lock` (an rwsem) for reading: the path a
//! tracer hooked on every rwsem operation slows down.

use std::num::NonZeroUsize;
use std::time::Instant;

use serde::Serialize;

/// One run of the loop.
#[derive(Debug, Clone, Serialize)]
pub struct PageFaults {
    pub iterations: u32,
    pub mib: usize,
    /// Page faults per second over the whole run.
    pub faults_per_s: f64,
    /// Milliseconds per iteration (map, touch, unmap), in order.
    pub samples_ms: Vec<f64>,
}

/// `iterations` times: map `mib` MiB, write one byte per page, unmap.
pub fn page_faults(iterations: u32, mib: usize) -> std::io::Result<PageFaults> {
    let len = NonZeroUsize::new(mib.max(1) << 20).unwrap_or(NonZeroUsize::MIN);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as usize);
    let mut samples_ms = Vec::with_capacity(iterations as usize);
    let t0 = Instant::now();
    for _ in 0..iterations {
        let t = Instant::now();
        crate::sys::touch_fresh_mapping(len, page).map_err(std::io::Error::from)?;
        samples_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let faults = iterations as f64 * (len.get() / page) as f64;
    Ok(PageFaults {
        iterations,
        mib,
        faults_per_s: faults / t0.elapsed().as_secs_f64().max(1e-9),
        samples_ms,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn touches_and_times_every_iteration() {
        let r = super::page_faults(3, 1).unwrap();
        assert_eq!((r.iterations, r.samples_ms.len()), (3, 3));
        assert!(r.faults_per_s > 0.0);
    }
}
