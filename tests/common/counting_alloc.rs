//! A counting global allocator for the allocation tests (`tests/no_alloc_per_frame.rs`,
//! `tests/no_alloc_uring.rs`): the one `unsafe` of the crate's tests, since counting allocations
//! needs a `GlobalAlloc`. It counts only on a thread that switched counting on, so the test
//! harness's own threads, and other tests of the binary, are not counted. Included with
//! `#[path = "common/counting_alloc.rs"] mod counting_alloc;` (it installs itself as the global
//! allocator of the test binary that includes it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting the allocations of threads that asked for it.
struct Counting;

thread_local! {
    /// Whether allocations of this thread are counted. Const-initialised and without a
    /// destructor, so reading it from inside the allocator never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Allocations (and reallocations) counted on this thread.
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

/// Counts one allocation if this thread is counting. `try_with` because the allocator may run
/// while the thread's locals are being torn down.
fn note_allocation() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counting around it touches only const thread-locals (no
// allocation, no reentrancy) and never changes what is returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller's guarantees on `layout` are passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (every allocation goes through this type) with
        // `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: as for `dealloc`; `new_size` is passed on with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Starts counting this thread's allocations from zero.
pub fn start_counting() {
    COUNT.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
}

/// Stops counting; returns the allocations counted on this thread since [`start_counting`].
pub fn stop_counting() -> u64 {
    COUNTING.with(|on| on.set(false));
    COUNT.with(Cell::get)
}

/// Allocations made by `f` on this thread.
pub fn allocations_in(f: impl FnOnce()) -> u64 {
    start_counting();
    f();
    stop_counting()
}

/// The counter itself, in every test binary that installs it: one allocation is one count.
#[test]
fn the_counter_counts_allocations_of_this_thread() {
    let n = allocations_in(|| {
        let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(16));
        std::hint::black_box(v);
    });
    assert_eq!(n, 1);
}
