//! Settings for the binary's allocator (mimalloc, set in `src/main.rs`;
//! the bench binary uses the same), applied once at start.

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`; the
/// bindings have no name for it).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS after 10 ms instead of mimalloc v3's
/// default of 1 s (its header still says 10 ms, v2's). An extraction frees
/// a landed buffer on one thread while the next fills on another; held a
/// second, the freed pages were a third of its peak (300k contacts: 125 ->
/// 81-83 MiB). Shorter costs the models: at 1 ms every page freed and
/// taken again faults back in, and the jaffle-shop bench's `orders` took
/// 2.1-2.2 s against 1.5-1.7 s at 100 ms or 1 s, the 1M-contact starter
/// run 93 s against 80 s at 10 ms (peak 3.8 and 3.7 GiB; 4.3 GiB at
/// 100 ms). The delay set in the environment (`MIMALLOC_PURGE_DELAY`, or its
/// old name `MIMALLOC_RESET_DELAY`, any case) still wins.
pub fn configure() {
    let set_outside = std::env::vars_os().any(|(k, _)| {
        k.to_str().is_some_and(|k| {
            k.eq_ignore_ascii_case("MIMALLOC_PURGE_DELAY")
                || k.eq_ignore_ascii_case("MIMALLOC_RESET_DELAY")
        })
    });
    if !set_outside {
        // SAFETY: mi_option_set only stores an integer in mimalloc's option
        // table (atomically); any value is valid for this option.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 10) };
    }
}
