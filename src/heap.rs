//! The allocator's one setting: large buffers always get pages of their own.
//!
//! glibc serves an allocation of 128 KiB or more with `mmap` and unmaps it when it is freed,
//! but raises that threshold to the size of each such buffer freed (up to 32 MiB). Every few
//! seconds the gateway builds buffers that large and drops them again: a revalidation pass
//! (every live subscription and its token), presence heartbeats, the database's answers to
//! them. Once the threshold has risen they come from the heap, and what they leave there stays
//! resident between the few hundred bytes each connection keeps: 15,000 idle connections grew
//! from 4.7 to 5.4 KB of RSS each over the half-minute after they connected. With the threshold
//! fixed at glibc's own starting value (`M_MMAP_THRESHOLD`, which also stops the adjusting),
//! they stay at 4.8-5.0 KB. BENCHMARKS.md ("Memory after a connect storm") has the measurements.

/// Allocations at least this large are mapped on their own and returned when freed.
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Fixes the threshold at [`MMAP_THRESHOLD`], unless the operator set one with
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...`. Called once by `serve`, before it accepts
/// connections. Does nothing where the C library is not glibc.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_operator = std::env::var("GLIBC_TUNABLES")
            .is_ok_and(|tunables| tunables.contains("glibc.malloc.mmap_threshold"));
        if !set_by_operator {
            // SAFETY: mallopt only changes the allocator's parameters; any thread may call it.
            let threshold = MMAP_THRESHOLD as libc::c_int;
            if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) } != 1 {
                tracing::warn!("mallopt(M_MMAP_THRESHOLD) refused: large buffers stay in the heap");
            }
        }
    }
}
