//! One timed push: the operator's request is sent on a connection opened
//! just before the clock starts, and the shards report when each stream of
//! its audience received the event that carries its marker. The CPU the
//! server and the load generator spent meanwhile is read from `/proc`.

use std::io;
use std::time::Duration;

use super::cpu;
use super::http::HttpConnection;
use super::latency::PushLatency;
use super::protocol::{Audience, now_us};
use super::results::{Phase, PushCpu, PushResult};
use super::shards::Shards;

/// A push to send.
pub(crate) struct PushRequest<'a> {
    /// Its number, also its marker in the message.
    pub(crate) number: u32,
    /// Whom it is for.
    pub(crate) audience: Audience,
    /// What to call it in the results.
    pub(crate) label: &'a str,
    /// When in the run.
    pub(crate) phase: Phase,
    /// The request's path.
    pub(crate) path: String,
    /// The request's body.
    pub(crate) body: Vec<u8>,
    /// How long the streams have to receive it.
    pub(crate) timeout: Duration,
}

/// Sends `request` and measures its arrival on every stream of its audience,
/// and the CPU spent meanwhile by the processes `server_pids` (none: not
/// measured) and by the load generator.
pub(crate) async fn timed_push(
    operator: &mut HttpConnection,
    shards: &mut Shards,
    request: PushRequest<'_>,
    server_pids: &[u32],
) -> io::Result<PushResult> {
    // A fresh connection, opened before the clock starts: the server may
    // have closed an idle one since the last push.
    operator.close();
    operator.warm_up().await?;
    let mut load_generator_pids = shards.pids();
    load_generator_pids.push(std::process::id());
    let server_before = cpu::of_processes(server_pids);
    let load_generator_before = cpu::of_processes(&load_generator_pids);
    let sent_us = now_us();
    operator
        .write_request("POST", &request.path, Some(&request.body))
        .await?;
    let response = operator.read_response(false).await?;
    let response_us = now_us().saturating_sub(sent_us);
    let deadline_us = sent_us + u64::try_from(request.timeout.as_micros()).unwrap_or(u64::MAX);
    let arrivals = shards
        .collect(request.number, request.audience, deadline_us)
        .await?;
    let cpu = (!server_pids.is_empty()).then(|| PushCpu {
        server: cpu::of_processes(server_pids).since(server_before),
        load_generator: cpu::of_processes(&load_generator_pids).since(load_generator_before),
    });
    let latency = PushLatency::of(sent_us, arrivals.expected, &arrivals.arrivals_us);
    Ok(PushResult {
        audience: request.label.to_owned(),
        phase: request.phase,
        targeted: targeted_of(&response.body),
        status: response.status,
        response_us,
        data_bytes: arrivals.data_bytes,
        latency,
        cpu,
    })
}

/// `targeted` of a group or fleet command's answer (read after the push was
/// timed; the answer names the payload once and a pair of ids per agent).
fn targeted_of(body: &[u8]) -> Option<usize> {
    #[derive(serde::Deserialize)]
    struct Answer {
        targeted: usize,
    }
    serde_json::from_slice::<Answer>(body)
        .ok()
        .map(|answer| answer.targeted)
}

/// Prints a one-line summary of a push to stderr.
pub(crate) fn log_push(push: &PushResult) {
    let latency = &push.latency;
    let cpu = push.cpu.map_or_else(String::new, |cpu| {
        format!(
            "; CPU: server {} ms user + {} ms kernel, load generator {} ms",
            cpu.server.user_ms,
            cpu.server.system_ms,
            cpu.load_generator.total_ms()
        )
    });
    eprintln!(
        "  {} push ({:?}): status {}, reached {}/{}, p50 {:.1} ms, p99 {:.1} ms, 100% {:.1} ms (response {:.1} ms){cpu}",
        push.audience,
        push.phase,
        push.status,
        latency.received,
        latency.expected,
        latency.p50_us as f64 / 1000.0,
        latency.p99_us as f64 / 1000.0,
        latency.max_us as f64 / 1000.0,
        push.response_us as f64 / 1000.0,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_targeted_of_a_rollout() {
        assert_eq!(
            targeted_of(b"{\"rolloutId\":\"r\",\"payload\":{\"targeted\":1},\"targeted\":19000,\"commands\":[{}]}"),
            Some(19_000)
        );
        assert_eq!(targeted_of(b"{\"commandId\":\"x\"}"), None);
    }
}
