//! What signing costs per command (SPEC 12), as the server pays it for each
//! event it writes to a stream, beside the same event unsigned; what the
//! canonical payload costs once per request; and what an agent pays to
//! verify. Run with `cargo bench -p registry-bench --bench signing`.

// criterion_group! defines a public function it does not document.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use registry_core::{AgentId, CommandEvent, CommandId, Payload, Timestamp};
use registry_server::signing::event_data;
use registry_signing::{AheadSigner, ServerKey};
use serde_json::{Value, json};

/// A payload of about `bytes` bytes, shaped as configuration is: a few
/// members, numbers and strings, and a list of routes that makes up the size.
fn payload(bytes: usize) -> Value {
    let routes: Vec<Value> = (0..bytes / 40)
        .map(|n| json!({"routeId": format!("route-{n}"), "sampling": 0.25}))
        .collect();
    json!({"level": "debug", "maxSpans": 1000, "sampling": 0.5, "routes": routes})
}

fn event(payload: &Payload) -> CommandEvent {
    CommandEvent {
        agent_id: AgentId::parse("agent-0000042").unwrap(),
        command_id: "019ab0c2-5c1e-7d4a-9a53-2f0e8f6c1b7d"
            .parse::<CommandId>()
            .unwrap(),
        created_at: Timestamp::from_unix_millis(1_764_000_000_123),
        expires_at: Timestamp::from_unix_millis(1_764_000_060_123),
        payload: payload.clone(),
        kind: Arc::from("config-update"),
    }
}

const SIZES: [usize; 3] = [64, 1024, 65_536];

/// The data of one event, as a stream writes it: signed with a nonce from
/// the stock (what a stream does while the stock lasts), signed as RFC 8032
/// does (deterministic, what it does when the stock is empty), and unsigned;
/// and what making a nonce ahead costs.
fn per_event(c: &mut Criterion) {
    let signer = AheadSigner::new(ServerKey::generate().unwrap());
    let mut group = c.benchmark_group("event data");
    for size in SIZES {
        let payload = Payload::from_value(&payload(size));
        let event = event(&payload);
        let data = event_data(&event, Some(&signer)).unwrap();
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::new("signed", size), &event, |b, event| {
            b.iter_batched(
                || assert_eq!(signer.restock(signer.in_stock() + 1), 1),
                |()| event_data(black_box(event), Some(&signer)).unwrap(),
                BatchSize::SmallInput,
            );
        });
        group.bench_with_input(
            BenchmarkId::new("signed, stock empty", size),
            &event,
            |b, event| {
                b.iter(|| event_data(black_box(event), Some(&signer)).unwrap());
            },
        );
        group.bench_with_input(BenchmarkId::new("unsigned", size), &event, |b, event| {
            b.iter(|| event_data(black_box(event), None).unwrap());
        });
    }
    group.finish();
    let mut group = c.benchmark_group("nonces made ahead");
    group.throughput(Throughput::Elements(64));
    group.bench_function("a batch of 64", |b| {
        b.iter_batched(
            || AheadSigner::new(ServerKey::generate().unwrap()),
            |signer| assert_eq!(signer.restock(64), 64),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// The canonical payload from the request's text (parsed, checked, written
/// canonically): once per request, shared by a rollout's commands.
fn per_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("canonical payload");
    for size in SIZES {
        let text = payload(size).to_string();
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &text, |b, text| {
            b.iter(|| Payload::parse(black_box(text)).unwrap());
        });
    }
    group.finish();
}

/// What an agent pays: parse, take the signature out, canonicalize, verify.
fn verify(c: &mut Criterion) {
    let signer = AheadSigner::new(ServerKey::generate().unwrap());
    let public = signer.key().public_key();
    let mut group = c.benchmark_group("verify");
    for size in [64, 1024] {
        let payload = Payload::from_value(&payload(size));
        let data = event_data(&event(&payload), Some(&signer)).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, data| {
            b.iter(|| public.verify_data(black_box(data)).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, per_event, per_request, verify);
criterion_main!(benches);
