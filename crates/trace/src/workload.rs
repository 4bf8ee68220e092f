//! The page-fault loop `strata trace`'s overhead is measured on (`strata bench page-faults`,
//! run inside the benchmark's guest): map fresh anonymous memory, touch every page, unmap.
//! On Linux 6.1 each fault takes and releases `mmap_lock` (an rwsem) for reading: the path a
//! tracer hooked on every rwsem operation slows down.
//!
//! Every chunk of [`CHUNK_PAGES`] faults is timed on its own: a benchmark on a shared host
//! (or a vCPU thread the host preempts) takes the median chunk, which a preemption does not
//! move, rather than a whole-run rate, which it does.

use std::num::NonZeroUsize;
use std::time::Instant;

use serde::Serialize;

/// Page faults per timed chunk.
pub const CHUNK_PAGES: usize = 64;

/// One run of the loop.
#[derive(Debug, Clone, Serialize)]
pub struct PageFaults {
    pub iterations: u32,
    pub mib: usize,
    pub chunk_pages: usize,
    /// Page faults per second over the whole run (map, touch, unmap included).
    pub faults_per_s: f64,
    /// Page faults per second at the median chunk.
    pub median_faults_per_s: f64,
    /// Milliseconds per iteration (map, touch, unmap), in order.
    pub samples_ms: Vec<f64>,
    /// Milliseconds per chunk of `chunk_pages` faults, in order (not in the JSON: thousands).
    #[serde(skip)]
    pub chunk_ms: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `iterations` times: map `mib` MiB, write one byte per page, unmap.
pub fn page_faults(iterations: u32, mib: usize) -> std::io::Result<PageFaults> {
    let len = NonZeroUsize::new(mib.max(1) << 20).unwrap_or(NonZeroUsize::MIN);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as usize)
        .max(1);
    let mut samples_ms = Vec::with_capacity(iterations as usize);
    let mut chunk_ms = Vec::new();
    let t0 = Instant::now();
    for _ in 0..iterations {
        let t = Instant::now();
        crate::sys::with_fresh_mapping(len, |bytes| {
            for chunk in bytes.chunks_mut(page * CHUNK_PAGES) {
                let c = Instant::now();
                for b in chunk.iter_mut().step_by(page) {
                    *b = 1; // the first touch of each page faults it in
                }
                std::hint::black_box(&chunk);
                chunk_ms.push(c.elapsed().as_secs_f64() * 1e3);
            }
        })
        .map_err(std::io::Error::from)?;
        samples_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let faults = iterations as f64 * (len.get() / page) as f64;
    Ok(PageFaults {
        iterations,
        mib,
        chunk_pages: CHUNK_PAGES,
        faults_per_s: faults / t0.elapsed().as_secs_f64().max(1e-9),
        median_faults_per_s: CHUNK_PAGES as f64 / (median(&chunk_ms) / 1e3).max(1e-12),
        samples_ms,
        chunk_ms,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn touches_and_times_every_page() {
        let r = super::page_faults(3, 1).unwrap();
        assert_eq!((r.iterations, r.samples_ms.len()), (3, 3));
        // 1 MiB of 4 KiB pages in chunks of 64: 4 chunks per iteration.
        assert_eq!(r.chunk_ms.len(), 12);
        assert!(r.faults_per_s > 0.0 && r.median_faults_per_s > 0.0);
    }
}
