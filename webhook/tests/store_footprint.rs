//! What the binding store costs per binding, counted by the allocator: with realistic names
//! (every binding with its own Workload-Identity service account), at most 256 bytes for a
//! binding and its service account together, so 100,000 of each fit in ~25 MB.

#![allow(
    unsafe_code,
    reason = "counting the store's heap takes a global allocator, and GlobalAlloc is an unsafe trait"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use rolebridge_webhook::bindings::store::{Observed, Store};
use rolebridge_webhook::domain::binding::Binding;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc`, passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_binding_and_its_service_account_cost_at_most_256_bytes() {
    const N: usize = 20_000;
    let store = Store::new();
    // Built before counting: the input, not the store.
    let inputs: Vec<(String, Binding, String)> = (0..N)
        .map(|i| {
            let ns = format!("team-{:03}", i % 200);
            let b = Binding {
                name: format!("binding-{i:06}"),
                service_account: format!("app-{i:06}"),
                role_arn: format!("arn:aws:iam::123456789012:role/app-{i:06}"),
                region: Some("eu-west-1".into()),
                ..Binding::default()
            };
            let gsa = format!("app-{i:06}@project.iam.gserviceaccount.com");
            (ns, b, gsa)
        })
        .collect();
    let before = LIVE.load(Ordering::Relaxed);
    for (ns, b, gsa) in &inputs {
        store.apply_account(ns, &b.service_account, Some(gsa));
        store.apply(Observed {
            namespace: ns,
            name: &b.name,
            generation: 1,
            spec: Ok(b.clone()),
            status: None,
        });
    }
    // A relist shrinks the vectors to what they hold, as after the initial list.
    store.begin_relist();
    for (ns, b, _) in &inputs {
        store.apply(Observed {
            namespace: ns,
            name: &b.name,
            generation: 1,
            spec: Ok(b.clone()),
            status: None,
        });
    }
    store.end_relist();
    let per = (LIVE.load(Ordering::Relaxed) - before) as usize / N;
    eprintln!("{per} bytes per binding and service account");
    assert!(per <= 256, "{per} bytes per binding and service account");
    assert_eq!(store.counts().valid, N);
    assert_eq!(
        store.bindings_for("team-007", "app-000007").unwrap()[0],
        inputs[7].1
    );
}
