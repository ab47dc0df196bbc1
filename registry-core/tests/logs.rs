//! Tests of the logging rules: every lifecycle transition is logged at info
//! level with agentId, from and to (SPEC 2), and an agentId whose stream is
//! replaced more than 3 times within `stale_after` is logged at warn, at most
//! once a minute (SPEC 10). It runs in its own test binary, where every test
//! installs a recording subscriber, because `tracing` caches per call site whether
//! anyone listens, and a test thread without a subscriber racing this one can
//! leave the call site disabled.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry_core::{Registry, RegistryGuard, Settings};
use tracing::field::{Field, Visit};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Level, Metadata, span};

mod common;
use common::{advance_ms, registration, start_with, yield_a_few_times};

const STALE_MS: u64 = 90_000;
const DEAD_MS: u64 = 300_000;

/// A registry with its scheduler task; keep the guard alive for the whole test.
fn start() -> (RegistryGuard, Registry) {
    let settings = Settings {
        stale_after: Duration::from_millis(STALE_MS),
        dead_after: Duration::from_millis(DEAD_MS),
        ..Settings::default()
    };
    start_with(settings)
}

/// One event as a test subscriber saw it: its level and its fields, printed.
type Logged = (Level, BTreeMap<String, String>);

/// A `tracing` subscriber that keeps every event, for the logging rule.
#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<Logged>>>,
}

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(BTreeMap::new());
        event.record(&mut fields);
        self.events
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields.0));
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

#[tokio::test(start_paused = true)]
async fn every_transition_is_logged_at_info_level_with_agent_id_from_and_to() {
    let recorder = Recorder::default();
    // The test runtime is single-threaded: the scheduler task logs on this thread too.
    let _default = tracing::subscriber::set_default(recorder.clone());
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    advance_ms(STALE_MS).await;
    yield_a_few_times().await;
    registry.heartbeat("order-7f3a").unwrap();
    advance_ms(STALE_MS + DEAD_MS).await;
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    let transitions: Vec<(Level, String, String, String)> = recorder
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, fields)| fields.contains_key("from"))
        .map(|(level, fields)| {
            (
                *level,
                fields["agent_id"].clone(),
                fields["from"].clone(),
                fields["to"].clone(),
            )
        })
        .collect();
    let expected: Vec<(Level, String, String, String)> = [
        ("LIVE", "STALE"),
        ("STALE", "LIVE"),
        ("LIVE", "STALE"),
        ("STALE", "DEAD"),
        ("DEAD", "LIVE"),
    ]
    .into_iter()
    .map(|(from, to)| {
        (
            Level::INFO,
            "order-7f3a".to_owned(),
            from.to_owned(),
            to.to_owned(),
        )
    })
    .collect();
    assert_eq!(transitions, expected);
    let counted: u64 = registry.stats().transitions.iter().flatten().sum();
    assert_eq!(counted, 5, "each logged transition is counted");
}

impl Recorder {
    /// Records what this thread logs while the guard lives.
    fn install() -> (Self, DefaultGuard) {
        let recorder = Self::default();
        let guard = tracing::subscriber::set_default(recorder.clone());
        (recorder, guard)
    }

    /// The agent ids of the warnings logged so far.
    fn warnings(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(level, _)| *level == Level::WARN)
            .map(|(_, fields)| fields.get("agent_id").cloned().unwrap_or_default())
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn an_agent_id_replaced_more_than_3_times_within_stale_after_is_warned_once_a_minute() {
    let (recorder, _default) = Recorder::install();
    let (_guard, registry) = start();
    registry.register(registration("twin", "g")).unwrap();
    registry.register(registration("single", "g")).unwrap();
    let mut streams = vec![registry.open_stream("twin").unwrap()];
    let mut replace = |registry: &Registry| {
        streams.push(registry.open_stream("twin").unwrap());
    };

    // Three replacements, each 20 s apart: not yet more than 3.
    for _ in 0..3 {
        advance_ms(20_000).await;
        replace(&registry);
    }
    assert_eq!(recorder.warnings(), Vec::<String>::new());
    // The fourth within 90 s of the first.
    advance_ms(20_000).await;
    replace(&registry);
    assert_eq!(recorder.warnings(), ["twin"]);
    // More within the minute: no more warnings.
    for _ in 0..5 {
        advance_ms(5_000).await;
        replace(&registry);
    }
    assert_eq!(recorder.warnings(), ["twin"]);
    // A minute after the warning, still flapping: warned again.
    advance_ms(35_000).await;
    replace(&registry);
    assert_eq!(recorder.warnings(), ["twin", "twin"]);
    assert_eq!(registry.stats().stream_replacements, 10);

    // Replacements spread wider than stale_after are no duplicate.
    let _single = registry.open_stream("single").unwrap();
    let mut single = Vec::new();
    for _ in 0..6 {
        advance_ms(STALE_MS / 3 + 1).await;
        single.push(registry.open_stream("single").unwrap());
    }
    assert_eq!(recorder.warnings(), ["twin", "twin"]);
}
