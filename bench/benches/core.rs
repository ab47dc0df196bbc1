//! Micro-benchmarks of the registry core: register, heartbeat, a fleet command
//! to 100k streaming agents, an idle scheduler tick at several fleet sizes, and
//! expiring 1M commands at once. Run with `cargo bench -p registry-bench`.

// criterion_group! defines a public function it does not document.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use futures_util::{FutureExt, StreamExt};
use registry_core::{
    Clock, CommandRequest, Payload, RegistrationRequest, Registry, Settings, Subscription,
};

fn registration(agent_id: &str) -> registry_core::Registration {
    RegistrationRequest {
        agent_id: agent_id.to_owned(),
        name: "order-service".into(),
        group: format!("group-{}", agent_id.len() % 16),
        version: Some("1.4.2".into()),
        route_ids: Some(vec!["route-1".into(), "route-2".into()]),
        capabilities: Some(vec!["deep-trace".into(), "replay".into()]),
    }
    .validate()
    .expect("a valid registration")
}

/// A registry with no scheduler task (ticks are driven by hand) and `agents` registered.
fn fleet(agents: usize, settings: Settings) -> Registry {
    let registry = Registry::new(settings, Clock::new());
    for n in 0..agents {
        registry
            .register(registration(&format!("agent-{n:07}")))
            .unwrap();
    }
    registry
}

fn replay() -> CommandRequest {
    CommandRequest {
        kind: "replay".into(),
        payload: Some(Payload::from_value(
            &serde_json::json!({"routeId": "route-1"}),
        )),
    }
}

fn register(c: &mut Criterion) {
    // Criterion registers millions of new agents: past `lifecycle.max_agents`.
    let settings = Settings {
        max_agents: usize::MAX,
        ..Settings::default()
    };
    let registry = fleet(100_000, settings);
    let mut n = 0u64;
    c.bench_function("register a new agent (100k registered)", |b| {
        b.iter(|| {
            n += 1;
            registry
                .register(registration(&format!("new-{n}")))
                .unwrap()
        });
    });
    c.bench_function("register again, resuming (100k registered)", |b| {
        b.iter(|| registry.register(registration("agent-0000042")));
    });
}

fn heartbeat(c: &mut Criterion) {
    let registry = fleet(100_000, Settings::default());
    let ids: Vec<String> = (0..100_000).map(|n| format!("agent-{n:07}")).collect();
    let mut next = 0;
    c.bench_function("heartbeat (100k registered)", |b| {
        b.iter(|| {
            next = (next + 7919) % ids.len();
            registry
                .heartbeat(black_box(&ids[next]))
                .expect("a known agent")
        });
    });
}

/// Takes every event already queued on the streams, without waiting.
fn drain(streams: &mut [Subscription]) {
    for stream in streams {
        while let Some(Some(_)) = stream.next().now_or_never() {}
    }
}

fn fleet_command(c: &mut Criterion) {
    let settings = Settings {
        command_expiry: Duration::from_millis(1),
        command_retention: Duration::from_millis(1),
        ..Settings::default()
    };
    let registry = fleet(100_000, settings);
    let mut streams: Vec<Subscription> = (0..100_000)
        .map(|n| {
            registry
                .open_stream(&format!("agent-{n:07}"))
                .expect("a stream")
        })
        .collect();
    let mut group = c.benchmark_group("fleet");
    group.sample_size(10);
    group.bench_function("command to 100k LIVE streaming agents", |b| {
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                let commands = registry.send_to_fleet(replay()).expect("a known type");
                spent += started.elapsed();
                assert_eq!(commands.commands.len(), 100_000);
                drop(commands);
                // Untimed: read what was sent, and let expiry and retention empty the table.
                drain(&mut streams);
                std::thread::sleep(Duration::from_millis(3));
                registry.tick();
                registry.tick();
            }
            spent
        });
    });
    group.finish();
}

fn idle_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("idle scheduler tick");
    for agents in [1_000, 100_000, 1_000_000] {
        let registry = fleet(agents, Settings::default());
        group.bench_with_input(BenchmarkId::from_parameter(agents), &agents, |b, _| {
            b.iter(|| {
                let tick = registry.tick();
                assert_eq!(tick.handled, 0);
                tick
            });
        });
    }
    group.finish();
}

fn expire_commands(c: &mut Criterion) {
    // A paused clock lets the setup take its time without any command expiring
    // before the measured tick.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let _clock = runtime.enter();
    let mut group = c.benchmark_group("expiry");
    group.sample_size(10);
    group.bench_function("expire 1M commands in one tick", |b| {
        b.iter_batched(
            || {
                let registry = fleet(1_000, Settings::default());
                for _ in 0..1_000 {
                    registry.send_to_fleet(replay()).expect("a known type");
                }
                let expiry = registry.settings().command_expiry;
                runtime.block_on(tokio::time::advance(expiry));
                registry
            },
            |registry| {
                let tick = registry.tick();
                assert_eq!(tick.handled, 1_000_000);
                registry
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(
    benches,
    register,
    heartbeat,
    fleet_command,
    idle_tick,
    expire_commands
);
criterion_main!(benches);
