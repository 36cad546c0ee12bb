//! The tracking allocator, installed as this test harness's global
//! allocator: frees are charged to the account that allocated, wherever
//! they happen; reallocs move a block to the account that grows it;
//! attribution follows a future across `.await` points and threads; and
//! every layout round-trips with its alignment.
//!
//! Tests run on parallel threads and share the counters, so each test uses
//! its own accounts and reads only those.

use std::alloc::{GlobalAlloc, Layout};
use std::time::Duration;

use node::memory::tracking::Usage;
use node::memory::{Account, TrackingAllocator};
use proptest::prelude::*;

node::install_tracking_allocator!();

const MIB: usize = 1 << 20;

#[test]
fn a_free_on_another_thread_is_charged_back_to_the_allocator() {
    assert!(TrackingAllocator::is_installed());
    let account = Account::named("test-cross-thread");
    let before = account.live_bytes();
    let buffer: Vec<u8> = account.enter(|| vec![1u8; 4 * MIB]);
    let grown = account.live_bytes() - before;
    assert!(grown >= 4 * MIB as i64, "charged {grown}");
    std::thread::spawn(move || drop(buffer)).join().unwrap();
    assert_eq!(account.live_bytes(), before);
    assert!(Usage::read().total() >= Usage::read().of(account));
}

#[test]
fn a_realloc_moves_the_block_to_the_account_that_grows_it() {
    let first = Account::named("test-realloc-first");
    let second = Account::named("test-realloc-second");
    let (a, b) = (first.live_bytes(), second.live_bytes());
    let mut buffer: Vec<u8> = first.enter(|| Vec::with_capacity(MIB));
    buffer.extend_from_slice(&[0; 16]);
    second.enter(|| buffer.reserve_exact(3 * MIB));
    assert_eq!(first.live_bytes(), a);
    assert!(second.live_bytes() - b >= 3 * MIB as i64);
    drop(buffer);
    assert_eq!(second.live_bytes(), b);
}

#[test]
fn attribution_follows_a_future_across_awaits_and_threads() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let account = Account::named("test-future");
    let before = account.live_bytes();
    let kept = runtime.block_on(async {
        tokio::spawn(account.attribute(async move {
            let mut kept = Vec::new();
            for _ in 0..20 {
                kept.push(vec![7u8; 64 * 1024]);
                // Yield and sleep so the task may resume on another worker.
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
                kept.push(tokio::task::block_in_place(|| vec![9u8; 64 * 1024]));
            }
            assert_eq!(Account::current(), account);
            kept
        }))
        .await
        .unwrap()
    });
    assert!(account.live_bytes() - before >= 40 * 64 * 1024);
    drop(kept);
    // What stays charged is the runtime's own bookkeeping made while the
    // task was polled (timer entries, a spare worker thread's handle).
    let residue = account.live_bytes() - before;
    assert!(residue < 16 * 1024, "{residue} bytes still charged");
    assert_eq!(Account::current(), Account::UNATTRIBUTED);
}

#[test]
fn names_are_registered_once() {
    let a = Account::named("test-name");
    assert_eq!(Account::named("test-name"), a);
    assert_eq!(a.name(), "test-name");
    assert_ne!(a, Account::UNATTRIBUTED);
}

proptest! {
    /// Any size and alignment: the block is aligned, zeroed when asked,
    /// fully writable, survives a realloc with its contents, and leaves the
    /// account where it was once freed.
    #[test]
    fn every_layout_round_trips(size in 1usize..300_000, align_log in 0u32..13, grow in 0usize..100_000, zeroed: bool) {
        let align = 1usize << align_log;
        let layout = Layout::from_size_align(size, align).unwrap();
        let account = Account::named("test-layouts");
        let before = account.live_bytes();
        account.enter(|| unsafe {
            let ptr = if zeroed { GLOBAL.alloc_zeroed(layout) } else { GLOBAL.alloc(layout) };
            assert!(!ptr.is_null());
            assert_eq!(ptr as usize % align, 0);
            if zeroed {
                assert!(std::slice::from_raw_parts(ptr, size).iter().all(|&b| b == 0));
            }
            std::ptr::write_bytes(ptr, 0xA5, size);
            let grown = GLOBAL.realloc(ptr, layout, size + grow);
            assert!(!grown.is_null());
            assert_eq!(grown as usize % align, 0);
            assert!(std::slice::from_raw_parts(grown, size).iter().all(|&b| b == 0xA5));
            GLOBAL.dealloc(grown, Layout::from_size_align(size + grow, align).unwrap());
        });
        prop_assert_eq!(account.live_bytes(), before);
    }
}
