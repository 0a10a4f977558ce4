//! A process allocator that survives wire-length preallocation.
//!
//! kafka-protocol 0.18 decodes an array by `Vec::with_capacity(n)` with `n` read from the
//! wire, before reading any element. A 100-byte frame claiming two billion elements asks the
//! allocator for hundreds of gigabytes; the system allocator refuses and Rust aborts the
//! process. Every client of the broker would go down with one hostile frame.
//!
//! This allocator serves single allocations of 1 GiB or more as anonymous mappings with
//! `MAP_NORESERVE`: address space is reserved but no memory is committed until touched. The
//! decoder then fails as soon as the frame runs out of bytes (each element needs at least one),
//! having touched at most a frame's worth of elements, and the mapping is returned. Everything
//! smaller goes to the system allocator unchanged. Install it in a binary with
//! `#[global_allocator] static A: runnel_protocol::alloc::LazyHugeAllocator = LazyHugeAllocator;`.
//!
//! The real fix is bounded preallocation in the decoder (at most the remaining bytes); this
//! stays until the codec does that.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are lazily backed mappings.
const LAZY_THRESHOLD: usize = 1 << 30;
const PAGE: usize = 4096;

#[derive(Debug, Default, Clone, Copy)]
pub struct LazyHugeAllocator;

fn lazy(layout: &Layout) -> bool {
    layout.size() >= LAZY_THRESHOLD && layout.align() <= PAGE
}

fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address the kernel picks; no existing memory
    // is affected. The result is checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every pointer returned is either from `System` (and goes back to it) or from `map`
// (page-aligned, at least `size` bytes, zero-filled, and unmapped with the same size); which
// one is decided by the layout alone, identically on allocation and deallocation.
unsafe impl GlobalAlloc for LazyHugeAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if lazy(&layout) {
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if lazy(&layout) {
            // Fresh anonymous mappings are already zero; writing zeros would commit them.
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if lazy(&layout) {
            // SAFETY: `ptr` came from `map` with this size (same layout, same decision).
            unsafe {
                libc::munmap(ptr.cast(), layout.size());
            }
        } else {
            // SAFETY: `ptr` came from `System` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with this alignment forms a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !lazy(&layout) && !lazy(&new_layout) {
            // SAFETY: both sides are System's.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: allocate, copy the smaller of the two sizes, free the old block.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}
