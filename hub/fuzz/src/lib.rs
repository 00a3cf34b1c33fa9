//! What the fuzz targets share: an allocator that stops the run at any single allocation over a
//! limit. libFuzzer's `-malloc_limit_mb` only sees allocations under a sanitizer; the targets run
//! without one on stable Rust, so this is what says "no unbounded allocation".

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator, aborting (a crash libFuzzer records with its input) on an allocation
/// larger than `HUB_FUZZ_MALLOC_LIMIT_MB` (default 512 MiB).
pub struct Capped;

fn limit() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static LIMIT: AtomicUsize = AtomicUsize::new(0);
    match LIMIT.load(Ordering::Relaxed) {
        0 => {
            // Read without allocating: `std::env::var` would call back into this allocator.
            let mb = std::env::var_os("HUB_FUZZ_MALLOC_LIMIT_MB")
                .and_then(|v| v.to_str().and_then(|s| s.parse::<usize>().ok()))
                .unwrap_or(512);
            let bytes = mb.max(1) << 20;
            LIMIT.store(bytes, Ordering::Relaxed);
            bytes
        }
        bytes => bytes,
    }
}

fn check(size: usize) {
    // Small allocations never reach the limit: only large ones look it up (which may allocate).
    if size > (1 << 20) && size > limit() {
        eprintln!("==hub-fuzz== allocation of {size} bytes is over HUB_FUZZ_MALLOC_LIMIT_MB");
        std::process::abort();
    }
}

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract is the one `System` needs.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
