//! The SDK's global allocator (feature `allocator`, on by default): dlmalloc, given first the
//! whole of the memory the instance already has past the linker's `__heap_base`, and only then
//! memory it grows.
//!
//! The host rewinds an instance to its just-instantiated state after each request (the WIT's
//! `rewind`), zeroing what it wrote; only the memory's size stays. Rust's own allocator grows
//! memory for its first block, so on a rewound instance it would grow memory again on every
//! request (and touch fresh pages). This one reuses the pages the instance grew before, already
//! resident and zeroed.
#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::{Cell, UnsafeCell};
use core::ptr;

const PAGE: usize = 64 << 10;

unsafe extern "C" {
    /// Where the linker put the end of static data and stack: the heap's start.
    static __heap_base: u8;
}

/// Where dlmalloc gets its memory from.
struct Memory {
    /// Whether the memory between `__heap_base` and the memory's end was handed out.
    claimed: Cell<bool>,
}

// SAFETY: the regions handed out are disjoint: the memory already there once, then only what
// `memory.grow` adds, each region to dlmalloc alone.
unsafe impl dlmalloc::Allocator for Memory {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        if !self.claimed.replace(true) {
            // `__heap_base` is a linker symbol: only its address is taken, never read.
            let base = &raw const __heap_base as usize;
            let end = wasm32::memory_size(0) * PAGE;
            if end > base && end - base >= size {
                return (base as *mut u8, end - base, 0);
            }
        }
        let pages = size.div_ceil(PAGE);
        let prev = wasm32::memory_grow(0, pages);
        if prev == usize::MAX {
            return (ptr::null_mut(), 0, 0);
        }
        ((prev * PAGE) as *mut u8, pages * PAGE, 0)
    }

    fn remap(&self, _ptr: *mut u8, _old: usize, _new: usize, _can_move: bool) -> *mut u8 {
        ptr::null_mut()
    }

    fn free_part(&self, _ptr: *mut u8, _old: usize, _new: usize) -> bool {
        false
    }

    fn free(&self, _ptr: *mut u8, _size: usize) -> bool {
        false
    }

    fn can_release_part(&self, _flags: u32) -> bool {
        false
    }

    fn allocates_zeros(&self) -> bool {
        // Grown memory is zero; so is the heap of a fresh or rewound instance, but a guest
        // that wrote past its own heap could break that, so nothing is assumed.
        false
    }

    fn page_size(&self) -> usize {
        PAGE
    }
}

/// dlmalloc over [`Memory`], as the global allocator.
pub struct Heap(UnsafeCell<dlmalloc::Dlmalloc<Memory>>);

// SAFETY: `wasm32-unknown-unknown` without the atomics feature has one thread.
unsafe impl Sync for Heap {}

#[global_allocator]
static HEAP: Heap = Heap(UnsafeCell::new(dlmalloc::Dlmalloc::new_with_allocator(
    Memory {
        claimed: Cell::new(false),
    },
)));

// SAFETY: dlmalloc's contract is GlobalAlloc's; one thread, so no call overlaps another.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).malloc(layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).calloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { (*self.0.get()).free(ptr, layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { (*self.0.get()).realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}
