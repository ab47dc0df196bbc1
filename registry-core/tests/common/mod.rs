//! What the core's test files share: a registry on tokio's paused clock whose
//! wall time starts at a known millisecond, moving that clock, and registrations.

#![allow(dead_code)] // each test file uses a part of it

use std::time::{Duration, UNIX_EPOCH};

use registry_core::{Clock, Registration, RegistrationRequest, Registry, RegistryGuard, Settings};

/// The wall time the test clock starts at: 2026-03-11T18:10:15.000Z.
pub(crate) const T0_MS: u64 = 1_773_252_615_000;

/// A clock whose wall time starts at `T0_MS`.
pub(crate) fn test_clock() -> Clock {
    Clock::starting_at(UNIX_EPOCH + Duration::from_millis(T0_MS))
}

/// A registry with its scheduler task; keep the guard alive for the whole test.
pub(crate) fn start_with(settings: Settings) -> (RegistryGuard, Registry) {
    let guard = Registry::start_with_clock(settings, test_clock());
    let registry = guard.registry();
    (guard, registry)
}

/// The Unix milliseconds of `ms` after the test clock's start.
pub(crate) fn at(ms: u64) -> u64 {
    T0_MS + ms
}

/// Moves the paused clock forward by `ms` milliseconds.
pub(crate) async fn advance_ms(ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
}

/// Lets the scheduler task run without letting time move.
pub(crate) async fn yield_a_few_times() {
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
}

/// A registration as an agent sends it, validated by the crate's own rules.
pub(crate) fn registration(agent_id: &str, group: &str) -> Registration {
    RegistrationRequest {
        agent_id: agent_id.to_owned(),
        name: "order-service".to_owned(),
        group: group.to_owned(),
        version: None,
        route_ids: None,
        capabilities: None,
    }
    .validate()
    .unwrap()
}
