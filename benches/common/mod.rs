//! Helpers shared by the bench binaries.

/// The binary's allocator (see src/main.rs), so in-process figures are the
/// binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A memory line of /proc/self/status (`VmHWM`, `VmRSS`), in MiB.
pub fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM")
}

/// Start the peak over from the memory held now (Linux's `clear_refs`), so
/// that a figure measures one step and not the setup before it. Returns the
/// resident memory it starts from, in MiB.
pub fn reset_peak_rss() -> f64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_mib("VmRSS")
}

/// The words after the bench's name (`cargo bench --profile dev -- extract
/// pages` gives `["pages"]`); cargo's own `--bench` flag is left out.
pub fn parts() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .skip(1)
        .collect()
}
