//! Giving memory back after a burst (glibc's allocator).
//!
//! A shellper is long-lived and mostly idle, but not always: a program may
//! print a million lines, a client may paste megabytes. What such a burst
//! allocates is freed when it is over, and glibc then keeps much of it
//! resident unless told otherwise (measured in BENCHMARKS.md, "Where the
//! memory went", issue 18):
//!
//! * its mmap threshold is dynamic: once a large block (a REPLAY of a few
//!   MiB, a frame buffer) allocated with `mmap` is freed, the threshold
//!   rises to that size, so later large blocks come from the heap, where
//!   freeing them leaves holes that stay resident;
//! * the heap is given back only from its top, beyond the trim threshold
//!   (which rises with the mmap threshold): one live block above a freed
//!   region pins the region;
//! * every thread that allocates may get its own arena, trimmed only from
//!   its own top.
//!
//! [`tune`] fixes the thresholds (so large blocks are always mapped and
//! unmapped whole) and keeps one arena; [`released`] counts bytes the
//! program has just freed, and [`trim_if_due`], called from a periodic
//! tick, runs `malloc_trim(0)` (which also returns free pages in the middle
//! of the heap) once at least [`TRIM_AFTER`] bytes were released since the
//! last trim: never on an idle process, at most once per tick in a flood.
//!
//! Other allocators and libcs: both are no-ops.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Allocations of at least this size are mapped on their own and unmapped
/// when freed (glibc's default, made fixed).
pub const MMAP_THRESHOLD: usize = 128 * 1024;
/// Free memory at the top of the heap beyond this is returned at once.
pub const TRIM_THRESHOLD: usize = 128 * 1024;
/// Bytes released since the last trim that make the next tick trim.
pub const TRIM_AFTER: usize = 1024 * 1024;

static RELEASED: AtomicUsize = AtomicUsize::new(0);

/// Sets the allocator up for a long-lived process with bursts: fixed mmap
/// and trim thresholds, one arena. Call once, early in `main`, before
/// threads start. A library embedding the lease does not call it on its
/// own: the allocator belongs to the program.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called
    // before any other thread exists (documented precondition) and with
    // parameters glibc defines.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Records that about `bytes` were just freed (or are about to be): a
/// burst ending, a client with a large queue leaving.
pub fn released(bytes: usize) {
    RELEASED.fetch_add(bytes, Ordering::Relaxed);
}

/// Returns free memory to the system if at least [`TRIM_AFTER`] bytes were
/// released since the last trim. `true` if it trimmed.
pub fn trim_if_due() -> bool {
    if RELEASED.load(Ordering::Relaxed) < TRIM_AFTER {
        return false;
    }
    RELEASED.store(0, Ordering::Relaxed);
    trim();
    true
}

/// `malloc_trim(0)`: free pages anywhere in the heap go back to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks; callable from any
    // thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_enough_was_released() {
        trim_if_due();
        released(TRIM_AFTER / 2);
        assert!(!trim_if_due());
        released(TRIM_AFTER / 2);
        assert!(trim_if_due());
        assert!(!trim_if_due(), "the count starts again");
    }
}
