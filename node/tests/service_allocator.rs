//! `configure_for_service`: the allocator settings of a long-running
//! service (the coordinator). Its own test binary, since the settings are
//! process-wide and the other tests measure memory with the ingest ones.

use node::memory::{SERVICE_PURGE_DELAY_MS, TrackingAllocator, configure_for_service};

#[test]
fn a_service_keeps_freed_pages_for_a_while_unless_the_user_said_otherwise() {
    let before = TrackingAllocator::purge_delay_ms();
    configure_for_service();
    let after = TrackingAllocator::purge_delay_ms();
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        assert_eq!(
            after, before,
            "the user's MIMALLOC_PURGE_DELAY was overridden"
        );
    } else {
        assert_eq!(after, SERVICE_PURGE_DELAY_MS);
    }
}
