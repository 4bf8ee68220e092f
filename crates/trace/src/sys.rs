//! The only `unsafe` of strata-trace: the generated BPF skeleton, reading ring buffer records
//! as the C structs libbpf-cargo generated Rust types for, and the page-fault workload's
//! anonymous mappings.

/// The skeleton libbpf-cargo generates from `src/bpf/trace.bpf.c` (build.rs): the programs,
/// maps and global variables, and Rust definitions of the C types (`types::event`, …).
#[cfg(feature = "bpf")]
#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::expect_used,
    clippy::unwrap_used,
    dead_code,
    non_camel_case_types,
    unused_imports
)]
pub(crate) mod skel {
    include!(concat!(env!("OUT_DIR"), "/trace.skel.rs"));
}

/// A C struct the BPF programs write into the ring buffer, as libbpf-cargo generated it.
///
/// # Safety
///
/// Implement only for `#[repr(C)]` types made of integers, integer newtypes (C enums) and
/// arrays of them: every bit pattern of `size_of::<Self>()` bytes must be a valid value.
#[cfg(feature = "bpf")]
pub(crate) unsafe trait Record: Copy {}

#[cfg(feature = "bpf")]
mod records {
    use super::skel::types::{
        call_rec, event, hold_rec, mount_done, mount_rec, stack_event, totals, wait_rec,
    };
    use super::Record;

    // SAFETY: generated from records.h: integers, `enum kind` (a transparent u32 newtype),
    // char arrays (i8) and arrays of u64, plus generated padding arrays; no pointers, bools
    // or Rust enums.
    unsafe impl Record for event {}
    // SAFETY: as `event`, plus s64 and a u64 array.
    unsafe impl Record for stack_event {}
    // SAFETY: as `event`, plus a u64 array.
    unsafe impl Record for mount_done {}
    // SAFETY: as `event`, plus integers, a char array and a u64 array.
    unsafe impl Record for wait_rec {}
    // SAFETY: as `event`, plus integers.
    unsafe impl Record for hold_rec {}
    // SAFETY: as `event`, plus integers.
    unsafe impl Record for call_rec {}
    // SAFETY: as `event`, plus integers.
    unsafe impl Record for mount_rec {}
    // SAFETY: u64 arrays and u64s.
    unsafe impl Record for totals {}
}

/// The record at the start of `bytes`, if they are long enough to hold one.
#[cfg(feature = "bpf")]
pub(crate) fn record<T: Record>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes (checked above), the read is
    // unaligned-safe, and `T: Record` promises that any bit pattern is a valid `T`.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Map `len` fresh anonymous bytes (private, read-write, not yet faulted in, in base pages:
/// no transparent huge pages, so that each page is its own fault), let `op` use them, unmap.
pub(crate) fn with_fresh_mapping(
    len: std::num::NonZeroUsize,
    op: impl FnOnce(&mut [u8]),
) -> nix::Result<()> {
    use nix::sys::mman::{madvise, mmap_anonymous, munmap, MapFlags, MmapAdvise, ProtFlags};
    // SAFETY: a new private anonymous mapping; nothing else refers to this memory.
    let ptr = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )
    }?;
    // SAFETY: advice on the whole mapping just made; it changes no contents. A kernel without
    // THP refuses it (EINVAL): then every page is a base page anyway.
    let _ = unsafe { madvise(ptr, len.get(), MmapAdvise::MADV_NOHUGEPAGE) };
    // SAFETY: the mapping is `len` bytes, readable and writable, until the munmap below; the
    // slice does not outlive this function.
    let bytes = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr().cast::<u8>(), len.get()) };
    op(bytes);
    // SAFETY: unmapping what we mapped; `bytes` is no longer used.
    unsafe { munmap(ptr, len.get()) }
}

/// The bytes of `r` into `out` (tests build ring buffer records with it).
#[cfg(all(test, feature = "bpf"))]
pub(crate) fn write_record<T: Record>(r: &T, out: &mut [u8]) {
    let n = std::mem::size_of::<T>().min(out.len());
    // SAFETY: reads n ≤ size_of::<T>() bytes of a valid `T` (a plain C struct: no padding
    // bytes are uninitialized in the generated types, which carry explicit padding fields)
    // and writes them into `out`, which holds at least n bytes.
    unsafe { std::ptr::copy_nonoverlapping((r as *const T).cast::<u8>(), out.as_mut_ptr(), n) };
}
