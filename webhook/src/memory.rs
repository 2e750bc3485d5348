//! Giving memory back to the kernel after a burst of connections.
//!
//! mimalloc keeps freed memory in per-thread free lists and returns (purges) it only while the
//! owning thread keeps allocating. After a flood of connections the runtime's worker threads
//! fall idle and the flood's peak would stay resident. So every connection that closes bumps a
//! generation, and a worker thread about to park (tokio's `on_thread_park` hook, wired in
//! `main`) collects its own heap and purges freed memory when the generation moved, at most
//! once a second per thread: under steady traffic from the API server (long-lived connections)
//! this never runs, after a burst each worker runs it once as it falls idle.
//!
//! Large request bodies do not depend on this: they live in their own mappings
//! ([`crate::server::bodybuf`]), unmapped the moment they are dropped.

#![allow(
    unsafe_code,
    reason = "mi_collect is mimalloc's C API: the one call that returns a thread's freed memory"
)]

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static GENERATION: AtomicU64 = AtomicU64::new(0);
const EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static COLLECTED: Cell<(u64, Option<Instant>)> = const { Cell::new((0, None)) };
}

/// Something worth collecting was freed (a connection closed).
pub(crate) fn freed() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// For `tokio::runtime::Builder::on_thread_park`.
pub fn on_thread_park() {
    let generation = GENERATION.load(Ordering::Relaxed);
    COLLECTED.with(|c| {
        let (seen, at) = c.get();
        if seen == generation || at.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        c.set((generation, Some(Instant::now())));
        // SAFETY: mi_collect has no preconditions; it only touches this thread's heap and
        // mimalloc's own arenas. (Where mimalloc is not the allocator, it has nothing to do.)
        unsafe { libmimalloc_sys::mi_collect(true) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_once_per_generation_and_second() {
        on_thread_park();
        let first = COLLECTED.with(|c| c.get());
        freed();
        on_thread_park();
        let second = COLLECTED.with(|c| c.get());
        freed();
        on_thread_park();
        let third = COLLECTED.with(|c| c.get());
        assert!(second.0 > first.0 || first.1.is_none());
        assert_eq!(third, second, "not again within a second");
    }
}
