//! Tests of the brake (SPEC 13) on the paused clock, to the millisecond: it
//! engages when most agents go STALE within one `stale_after`, holds every
//! STALE -> DEAD while engaged, and releases by recovery or after `brake_max`,
//! the held agents then turning DEAD at the release. A single death, a fleet
//! below `brake_min_agents` and a threshold of 1 never engage it.

use std::time::Duration;

use futures_util::FutureExt;
use registry_core::{
    AgentStatus, FleetEvent, FleetSubscription, Registry, RegistryGuard, Settings,
};

mod common;
use common::{advance_ms, at, registration, start_with, yield_a_few_times};

const STALE_MS: u64 = 90_000;
const DEAD_MS: u64 = 300_000;
const BRAKE_MAX_MS: u64 = 900_000;
const HEARTBEAT_MS: u64 = 30_000;

fn settings() -> Settings {
    Settings {
        stale_after: Duration::from_millis(STALE_MS),
        dead_after: Duration::from_millis(DEAD_MS),
        brake_threshold: 0.5,
        brake_min_agents: 10,
        brake_max: Duration::from_millis(BRAKE_MAX_MS),
        ..Settings::default()
    }
}

/// A fleet of `live` agents that keep heartbeating and `silent` ones that stop,
/// all registered at 0 ms, and the time the test has reached.
struct Fleet {
    _guard: RegistryGuard,
    registry: Registry,
    live: Vec<String>,
    silent: Vec<String>,
    now_ms: u64,
}

impl Fleet {
    fn start(settings: Settings, live: usize, silent: usize) -> Self {
        let (guard, registry) = start_with(settings);
        let live: Vec<String> = (0..live).map(|n| format!("live-{n:02}")).collect();
        let silent: Vec<String> = (0..silent).map(|n| format!("silent-{n:02}")).collect();
        for id in live.iter().chain(&silent) {
            registry.register(registration(id, "fleet")).unwrap();
        }
        Self {
            _guard: guard,
            registry,
            live,
            silent,
            now_ms: 0,
        }
    }

    /// Lets the clock run to `target_ms`, the live agents heartbeating every
    /// 30 s on the way, and the scheduler applying what comes due.
    async fn run_until(&mut self, target_ms: u64) {
        while self.now_ms < target_ms {
            let step = (HEARTBEAT_MS - self.now_ms % HEARTBEAT_MS).min(target_ms - self.now_ms);
            advance_ms(step).await;
            yield_a_few_times().await;
            self.now_ms += step;
            if self.now_ms.is_multiple_of(HEARTBEAT_MS) {
                for id in &self.live {
                    self.registry.heartbeat(id).unwrap();
                }
            }
        }
    }

    fn status(&self, agent_id: &str) -> AgentStatus {
        self.registry.agent(agent_id).unwrap().status
    }

    /// The silent agents' statuses, and their `statusChangedAt` in ms since the start.
    fn silent_agents(&self) -> Vec<(AgentStatus, u64)> {
        self.silent
            .iter()
            .map(|id| {
                let view = self.registry.agent(id).unwrap();
                (view.status, view.status_changed_at.unix_millis() - at(0))
            })
            .collect()
    }

    fn engaged(&self) -> bool {
        self.registry.stats().brake_engaged
    }
}

fn brake_change(engaged: bool, at_ms: u64) -> (bool, u64) {
    (engaged, at(at_ms))
}

/// The brake events among the fleet events sent so far: (engaged, at).
fn received(events: &mut FleetSubscription) -> Vec<(bool, u64)> {
    let mut seen = Vec::new();
    while let Some(Some(event)) = events.next().now_or_never() {
        if let FleetEvent::Brake(change) = event {
            seen.push((change.engaged, change.at.unix_millis()));
        }
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn the_brake_engages_when_most_agents_go_stale_at_once_and_holds_them_stale() {
    let mut fleet = Fleet::start(settings(), 9, 11);
    let mut changes = fleet.registry.fleet_events().unwrap();

    fleet.run_until(STALE_MS - 1).await;
    assert!(!fleet.engaged());
    fleet.run_until(STALE_MS).await;

    assert!(fleet.engaged(), "11 of 20 went STALE within stale_after");
    assert_eq!(received(&mut changes), [brake_change(true, STALE_MS)]);

    // Long past dead_after, the silent agents are still STALE, held.
    fleet.run_until(STALE_MS + DEAD_MS + 60_000).await;
    assert_eq!(
        fleet.silent_agents(),
        vec![(AgentStatus::Stale, STALE_MS); 11]
    );
    let stats = fleet.registry.stats();
    assert_eq!(stats.agents, [9, 11, 0]);
    assert_eq!(stats.brake_held, 11);
    assert_eq!(
        stats.transitions_between(AgentStatus::Stale, AgentStatus::Dead),
        0
    );
    assert!(received(&mut changes).is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_brake_releases_when_the_stale_share_recovers_and_the_held_turn_dead_then() {
    let mut fleet = Fleet::start(settings(), 9, 11);
    let mut changes = fleet.registry.fleet_events().unwrap();
    let release_ms = STALE_MS + DEAD_MS + 10_000;
    fleet.run_until(release_ms).await;
    assert!(fleet.engaged());

    // One agent coming back leaves 10 STALE of 20: no more than the threshold.
    let revived = fleet.silent.remove(0);
    fleet.registry.heartbeat(&revived).unwrap();
    yield_a_few_times().await;

    assert!(!fleet.engaged());
    assert_eq!(
        received(&mut changes),
        [
            brake_change(true, STALE_MS),
            brake_change(false, release_ms)
        ]
    );
    assert_eq!(fleet.status(&revived), AgentStatus::Live);
    assert_eq!(
        fleet.silent_agents(),
        vec![(AgentStatus::Dead, release_ms); 10],
        "the held transitions take effect at the release"
    );
    let stats = fleet.registry.stats();
    assert_eq!(stats.agents, [10, 0, 10]);
    assert_eq!(stats.brake_held, 0);
}

#[tokio::test(start_paused = true)]
async fn the_brake_releases_after_brake_max_even_without_recovery() {
    let mut fleet = Fleet::start(settings(), 9, 11);
    let mut changes = fleet.registry.fleet_events().unwrap();
    let release_ms = STALE_MS + BRAKE_MAX_MS;

    fleet.run_until(release_ms - 1).await;
    assert!(fleet.engaged());
    assert_eq!(
        fleet.silent_agents(),
        vec![(AgentStatus::Stale, STALE_MS); 11]
    );
    fleet.run_until(release_ms).await;

    assert!(!fleet.engaged());
    assert_eq!(
        received(&mut changes),
        [
            brake_change(true, STALE_MS),
            brake_change(false, release_ms)
        ]
    );
    assert_eq!(
        fleet.silent_agents(),
        vec![(AgentStatus::Dead, release_ms); 11],
        "statusChangedAt is the release"
    );
    assert_eq!(fleet.registry.stats().agents, [9, 0, 11]);
}

#[tokio::test(start_paused = true)]
async fn one_agent_of_twenty_dying_does_not_engage_the_brake() {
    let mut fleet = Fleet::start(settings(), 19, 1);
    let mut changes = fleet.registry.fleet_events().unwrap();

    fleet.run_until(STALE_MS + DEAD_MS).await;

    assert!(!fleet.engaged());
    assert!(received(&mut changes).is_empty());
    assert_eq!(
        fleet.silent_agents(),
        [(AgentStatus::Dead, STALE_MS + DEAD_MS)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_fleet_below_brake_min_agents_dies_without_the_brake() {
    let mut fleet = Fleet::start(settings(), 0, 9);

    fleet.run_until(STALE_MS).await;
    assert!(!fleet.engaged(), "9 LIVE and STALE agents, fewer than 10");
    fleet.run_until(STALE_MS + DEAD_MS).await;

    assert_eq!(
        fleet.silent_agents(),
        vec![(AgentStatus::Dead, STALE_MS + DEAD_MS); 9]
    );
}

#[tokio::test(start_paused = true)]
async fn a_threshold_of_1_turns_the_brake_off() {
    let settings = Settings {
        brake_threshold: 1.0,
        ..settings()
    };
    let mut fleet = Fleet::start(settings, 0, 20);
    let mut changes = fleet.registry.fleet_events().unwrap();

    fleet.run_until(STALE_MS + DEAD_MS).await;

    assert!(!fleet.engaged());
    assert!(received(&mut changes).is_empty());
    assert_eq!(
        fleet.silent_agents(),
        vec![(AgentStatus::Dead, STALE_MS + DEAD_MS); 20]
    );
}

#[tokio::test(start_paused = true)]
async fn stale_transitions_older_than_stale_after_do_not_count() {
    // Six agents go STALE at 90 s, five more at 180 s: never more than half
    // of twenty within one stale_after, so the brake stays released.
    let (_guard, registry) = start_with(settings());
    let ids: Vec<String> = (0..20).map(|n| format!("agent-{n:02}")).collect();
    for id in &ids {
        registry.register(registration(id, "fleet")).unwrap();
    }
    for step in 1..=6 {
        advance_ms(HEARTBEAT_MS).await;
        yield_a_few_times().await;
        // The first six stop at once; the next five heartbeat until 90 s.
        let first_live = if step <= 3 { 6 } else { 11 };
        for id in &ids[first_live..] {
            registry.heartbeat(id).unwrap();
        }
    }
    let stats = registry.stats();
    assert_eq!(stats.agents_in(AgentStatus::Stale), 11);
    assert!(!stats.brake_engaged);
}
