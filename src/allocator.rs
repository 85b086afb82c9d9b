//! Settings for the binary's allocator (mimalloc, set in `src/main.rs`;
//! the bench binary uses the same), applied once at start.

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`; the
/// bindings have no name for it).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS after 1 ms instead of mimalloc's 10.
/// An extraction frees a landed buffer on one thread while the next fills
/// on another; held 10 ms, the freed pages were a third of its peak (300k
/// contacts: 125 -> 90 MiB, for about 0.1 s more in the kernel; the demo
/// 220 -> 165 MiB in the same time). `MIMALLOC_PURGE_DELAY` in the
/// environment still wins. Harmless under another allocator: the option is
/// only stored.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an integer in mimalloc's option
        // table (atomically); any value is valid for this option.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 1) };
    }
}
