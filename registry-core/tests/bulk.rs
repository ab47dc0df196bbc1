//! Tests of bulk work done in slices (SPEC 13: no request waits on another's
//! bulk work): deadlines due by the thousand are applied in batches, and what
//! a request reads or changes is settled first, so that it never shows a
//! status a backlog has not caught up with; listings and rollouts larger than
//! a page come out whole and in order.
//!
//! These registries run without their scheduler task, so a backlog stays
//! until a request or [`Registry::tick`] applies it.

use std::time::Duration;

use registry_core::{
    AgentFilter, AgentStatus, CommandRequest, CommandStatus, FleetEvent, Registry, RegistryError,
    Settings, StatusChange,
};

mod common;
use common::{advance_ms, at, registration, test_clock};

const STALE_MS: u64 = 90_000;
const EXPIRY_MS: u64 = 60_000;
/// More than a batch of the scheduler, a page of a listing and of a rollout.
const AGENTS: usize = 2_500;

fn settings() -> Settings {
    Settings {
        stale_after: Duration::from_millis(STALE_MS),
        command_expiry: Duration::from_millis(EXPIRY_MS),
        fleet_queue: 2 * AGENTS,
        // The whole fleet going STALE at once is not what these tests are about.
        brake_threshold: 1.0,
        ..Settings::default()
    }
}

/// A registry without its scheduler task: deadlines apply only when a request
/// or a tick runs.
fn registry() -> Registry {
    Registry::new(settings(), test_clock())
}

fn agent_id(n: usize) -> String {
    format!("agent-{n:05}")
}

fn register_fleet(registry: &Registry) {
    for n in 0..AGENTS {
        let group = if n % 2 == 0 { "even" } else { "odd" };
        registry
            .register(registration(&agent_id(n), group))
            .unwrap();
    }
}

fn config_update() -> CommandRequest {
    CommandRequest {
        kind: "config-update".to_owned(),
        payload: None,
    }
}

fn ids(registry: &Registry, filter: &AgentFilter) -> Vec<String> {
    registry
        .agents(filter)
        .iter()
        .map(|view| view.agent_id.to_string())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_backlog_of_expiries_reads_expired_at_once_and_is_applied_in_batches() {
    let registry = Registry::new(
        Settings {
            max_unfinished_per_agent: 1,
            ..settings()
        },
        test_clock(),
    );
    register_fleet(&registry);
    let rollout = registry.send_to_fleet(config_update()).unwrap();
    assert_eq!(rollout.targeted, AGENTS);
    advance_ms(EXPIRY_MS).await;

    // Every command is due; a read shows the one it reads EXPIRED, at its expiry.
    let last = rollout.commands.last().unwrap();
    let read = registry
        .command(last.agent_id.as_str(), &last.command_id.to_string())
        .unwrap();
    assert_eq!(read.status, CommandStatus::Expired);
    assert_eq!(read.expires_at.unix_millis(), at(EXPIRY_MS));
    let first = &rollout.commands[0];
    let listed = registry.commands_of(first.agent_id.as_str()).unwrap();
    assert_eq!(listed[0].status, CommandStatus::Expired);
    let acked = registry.ack(
        rollout.commands[AGENTS / 2].agent_id.as_str(),
        &rollout.commands[AGENTS / 2].command_id.to_string(),
        Default::default(),
    );
    assert!(matches!(acked, Err(RegistryError::CommandExpired(_))));

    // The requests applied only a batch each, besides what they settled.
    let stats = registry.stats();
    assert!(stats.commands_in(CommandStatus::Expired) < AGENTS / 2);

    // An expiry due makes room under the cap of unfinished commands, applied or not.
    registry
        .send_to_agent(&agent_id(7), config_update())
        .unwrap();
    let even = registry.send_to_group("even", config_update()).unwrap();
    assert_eq!((even.targeted, even.skipped), (AGENTS / 2, 0));

    // The rest is the scheduler's: all of it, in batches.
    let tick = registry.tick();
    assert!(tick.handled > 0);
    assert!(
        tick.next_due > Some(tokio::time::Instant::now()),
        "nothing left due"
    );
    let stats = registry.stats();
    assert_eq!(stats.commands_in(CommandStatus::Expired), AGENTS);
    assert_eq!(stats.commands_in(CommandStatus::Pending), AGENTS / 2 + 1);
    let progress = registry.rollout(&rollout.rollout_id.to_string()).unwrap();
    assert_eq!((progress.expired, progress.pending), (AGENTS, 0));
    assert!(progress.done);
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_behind_a_backlog_is_preceded_by_the_stale_it_was_due() {
    let registry = registry();
    register_fleet(&registry);
    advance_ms(1).await;
    registry.register(registration("late", "odd")).unwrap();
    let mut changes = registry.status_changes();
    // Every agent is due STALE; `late` a millisecond after the others.
    advance_ms(STALE_MS).await;

    registry.heartbeat("late").unwrap();

    use AgentStatus::{Live, Stale};
    let late: Vec<StatusChange> = std::iter::from_fn(|| changes.try_recv().ok())
        .filter(|change| change.agent_id.as_str() == "late")
        .collect();
    let seen: Vec<_> = late
        .iter()
        .map(|change| (change.from, change.to, change.at.unix_millis()))
        .collect();
    assert_eq!(
        seen,
        [
            (Live, Stale, at(STALE_MS + 1)),
            (Stale, Live, at(STALE_MS + 1))
        ]
    );
    // The others read STALE though the schedule has not applied them all.
    assert!(registry.stats().agents_in(Stale) < AGENTS);
    assert_eq!(registry.agent(&agent_id(AGENTS - 1)).unwrap().status, Stale);
    let stale = AgentFilter {
        status: Some(Stale),
        group: None,
    };
    assert_eq!(registry.agents(&stale).len(), AGENTS);
}

#[tokio::test(start_paused = true)]
async fn a_listing_of_several_pages_is_whole_and_in_order() {
    let registry = registry();
    // Registered out of order.
    for n in (0..AGENTS).rev() {
        let group = if n % 2 == 0 { "even" } else { "odd" };
        registry
            .register(registration(&agent_id(n), group))
            .unwrap();
    }
    advance_ms(STALE_MS / 2).await;
    for n in (0..AGENTS).step_by(3) {
        registry.heartbeat(&agent_id(n)).unwrap();
    }
    advance_ms(STALE_MS / 2).await;

    let all: Vec<String> = (0..AGENTS).map(agent_id).collect();
    assert_eq!(ids(&registry, &AgentFilter::default()), all);
    let odd = AgentFilter {
        status: None,
        group: Some("odd".to_owned()),
    };
    let expected: Vec<String> = (1..AGENTS).step_by(2).map(agent_id).collect();
    assert_eq!(ids(&registry, &odd), expected);
    let live_even = AgentFilter {
        status: Some(AgentStatus::Live),
        group: Some("even".to_owned()),
    };
    let expected: Vec<String> = (0..AGENTS).step_by(6).map(agent_id).collect();
    assert_eq!(ids(&registry, &live_even), expected);
}

#[tokio::test(start_paused = true)]
async fn a_rollout_of_several_pages_targets_every_live_agent_in_order() {
    let registry = Registry::new(
        Settings {
            max_unfinished_per_agent: 1,
            ..settings()
        },
        test_clock(),
    );
    register_fleet(&registry);
    // Ten agents at their cap, and every fifth one STALE.
    for n in 0..10 {
        registry
            .send_to_agent(&agent_id(n * 100), config_update())
            .unwrap();
    }
    advance_ms(STALE_MS / 2).await;
    for n in (0..AGENTS).filter(|n| n % 5 != 0) {
        registry.heartbeat(&agent_id(n)).unwrap();
    }
    advance_ms(STALE_MS / 2).await;

    let rollout = registry.send_to_fleet(config_update()).unwrap();

    let expected: Vec<String> = (0..AGENTS).filter(|n| n % 5 != 0).map(agent_id).collect();
    // The agents at their cap are all multiples of 100, so STALE: none skipped.
    assert_eq!(rollout.skipped, 0);
    let targeted: Vec<String> = rollout
        .commands
        .iter()
        .map(|command| command.agent_id.to_string())
        .collect();
    assert_eq!(targeted, expected);
    assert_eq!(rollout.targeted, expected.len());
    let progress = registry.rollout(&rollout.rollout_id.to_string()).unwrap();
    assert_eq!(
        (progress.targeted, progress.pending),
        (expected.len(), expected.len())
    );

    // A group's: the agents at their cap now are skipped, the rest targeted.
    let odd = registry.send_to_group("odd", config_update()).unwrap();
    assert_eq!(odd.targeted, 0);
    assert_eq!(odd.skipped, expected.iter().filter(|id| is_odd(id)).count());
    let progress = registry.rollout(&odd.rollout_id.to_string()).unwrap();
    assert_eq!((progress.skipped, progress.pending), (odd.skipped, 0));
    assert!(
        progress.done,
        "a rollout that targets nobody is done at once"
    );
}

fn is_odd(agent_id: &str) -> bool {
    agent_id
        .chars()
        .last()
        .and_then(|digit| digit.to_digit(10))
        .is_some_and(|digit| digit % 2 == 1)
}

#[tokio::test(start_paused = true)]
async fn the_scheduler_task_works_a_backlog_off_by_itself() {
    let (_guard, registry) = common::start_with(settings());
    register_fleet(&registry);
    let mut events = registry.fleet_events().unwrap();
    registry.send_to_fleet(config_update()).unwrap();
    advance_ms(EXPIRY_MS).await;

    // No request applies anything: the rollout is done when the scheduler,
    // batch after batch, has expired every command.
    loop {
        let event = tokio::time::timeout(Duration::from_secs(3_600), events.next())
            .await
            .expect("a fleet event within an hour")
            .expect("the subscription is open");
        if let FleetEvent::Rollout(progress) = event
            && progress.done
        {
            assert_eq!(progress.expired, AGENTS);
            assert_eq!(progress.expires_at.unix_millis(), at(EXPIRY_MS));
            return;
        }
    }
}
