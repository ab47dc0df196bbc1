//! The coordinator's side of the shards: re-executes this binary once per
//! slice of streams (`loadgen shard`), hands each its plan, and gathers their
//! JSON-line reports. Children are killed if the coordinator goes away.

use std::io;
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::try_join_all;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::protocol::{Audience, FromShard, ShardPlan, ShardStats, ToShard};

/// How long a stopped shard may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One child process holding a slice of the streams.
struct Shard {
    child: Child,
    orders: ChildStdin,
    reports: Lines<BufReader<ChildStdout>>,
}

impl Shard {
    async fn spawn(plan: &ShardPlan) -> io::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("shard")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let orders = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin"))?;
        let reports = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let mut shard = Self {
            child,
            orders,
            reports: BufReader::new(reports).lines(),
        };
        shard
            .write_line(&serde_json::to_string(plan).map_err(io::Error::other)?)
            .await?;
        Ok(shard)
    }

    async fn write_line(&mut self, line: &str) -> io::Result<()> {
        self.orders.write_all(line.as_bytes()).await?;
        self.orders.write_all(b"\n").await?;
        self.orders.flush().await
    }

    async fn order(&mut self, order: &ToShard) -> io::Result<()> {
        self.write_line(&serde_json::to_string(order).map_err(io::Error::other)?)
            .await
    }

    async fn report(&mut self) -> io::Result<FromShard> {
        let line =
            self.reports.next_line().await?.ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "a shard exited early")
            })?;
        serde_json::from_str(&line).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
    }
}

/// What the shards said once every stream had been tried.
#[derive(Debug, Default)]
pub(crate) struct OpenOutcome {
    /// Streams open.
    pub(crate) opened: usize,
    /// Streams that could not be opened.
    pub(crate) failed: usize,
    /// Why the first failure failed.
    pub(crate) first_error: Option<String>,
}

/// The arrivals of one push, gathered from every shard.
#[derive(Debug, Default)]
pub(crate) struct PushArrivals {
    /// Streams of the audience that had been opened.
    pub(crate) expected: usize,
    /// When each stream that got it got it.
    pub(crate) arrivals_us: Vec<u64>,
    /// The size of the event's data, as received.
    pub(crate) data_bytes: Option<usize>,
}

/// How the streams of a killed server came back, gathered from every shard.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Streams that were open on it.
    pub(crate) marked: usize,
    /// When each of those that opened again did.
    pub(crate) reopened_us: Vec<u64>,
    /// Other streams that ended meanwhile.
    pub(crate) others_dropped: usize,
}

/// All the shards of one run.
pub(crate) struct Shards {
    shards: Vec<Shard>,
}

impl Shards {
    /// Spawns one shard per plan.
    pub(crate) async fn spawn(plans: &[ShardPlan]) -> io::Result<Self> {
        let mut shards = Vec::new();
        for plan in plans {
            shards.push(Shard::spawn(plan).await?);
        }
        Ok(Self { shards })
    }

    /// The shards' process ids.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.shards
            .iter()
            .filter_map(|shard| shard.child.id())
            .collect()
    }

    /// Waits until every shard has tried all its streams.
    pub(crate) async fn opened(&mut self) -> io::Result<OpenOutcome> {
        let reports = try_join_all(self.shards.iter_mut().map(Shard::report)).await?;
        let mut outcome = OpenOutcome::default();
        for report in reports {
            match report {
                FromShard::Opened {
                    opened,
                    failed,
                    first_error,
                } => {
                    outcome.opened += opened;
                    outcome.failed += failed;
                    if outcome.first_error.is_none() {
                        outcome.first_error = first_error;
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
        Ok(outcome)
    }

    /// Asks every shard for the arrivals of push `push` and gathers them.
    pub(crate) async fn collect(
        &mut self,
        push: u32,
        audience: Audience,
        deadline_us: u64,
    ) -> io::Result<PushArrivals> {
        let order = ToShard::Collect {
            push,
            audience,
            deadline_us,
        };
        let reports = try_join_all(self.shards.iter_mut().map(|shard| async {
            shard.order(&order).await?;
            shard.report().await
        }))
        .await?;
        let mut gathered = PushArrivals::default();
        for report in reports {
            match report {
                FromShard::Arrivals {
                    push: reported,
                    expected,
                    arrivals_us,
                    data_bytes,
                } if reported == push => {
                    gathered.expected += expected;
                    gathered.arrivals_us.extend(arrivals_us);
                    gathered.data_bytes = gathered.data_bytes.or(data_bytes);
                }
                other => return Err(unexpected(&other)),
            }
        }
        Ok(gathered)
    }

    /// The counters of every shard, added up.
    pub(crate) async fn stats(&mut self) -> io::Result<ShardStats> {
        let reports = try_join_all(self.shards.iter_mut().map(|shard| async {
            shard.order(&ToShard::Stats).await?;
            shard.report().await
        }))
        .await?;
        let mut total = ShardStats::default();
        for report in reports {
            let FromShard::Stats(stats) = report else {
                return Err(unexpected(&report));
            };
            total.open += stats.open;
            total.dropped += stats.dropped;
            total.heartbeats_ok += stats.heartbeats_ok;
            total.heartbeats_failed += stats.heartbeats_failed;
            total.acks_ok += stats.acks_ok;
            total.acks_failed += stats.acks_failed;
            total.unexpected_events += stats.unexpected_events;
            total.comments += stats.comments;
            total.reopen_failures += stats.reopen_failures;
            total.first_reopen_failure = total.first_reopen_failure.or(stats.first_reopen_failure);
            total.first_heartbeat_failure = total
                .first_heartbeat_failure
                .or(stats.first_heartbeat_failure);
            total.first_ack_failure = total.first_ack_failure.or(stats.first_ack_failure);
        }
        Ok(total)
    }

    /// Has every shard remember its streams open on server `server` (about to
    /// be killed); returns how many there are.
    pub(crate) async fn mark(&mut self, server: usize) -> io::Result<usize> {
        let order = ToShard::Mark { server };
        let reports = try_join_all(self.shards.iter_mut().map(|shard| async {
            shard.order(&order).await?;
            shard.report().await
        }))
        .await?;
        let mut marked = 0;
        for report in reports {
            let FromShard::Marked { streams } = report else {
                return Err(unexpected(&report));
            };
            marked += streams;
        }
        Ok(marked)
    }

    /// Waits until every marked stream has opened again after `since_us`
    /// (or `deadline_us` passed) and gathers when each did.
    pub(crate) async fn recovery(
        &mut self,
        since_us: u64,
        deadline_us: u64,
    ) -> io::Result<Recovery> {
        let order = ToShard::Recovery {
            since_us,
            deadline_us,
        };
        let reports = try_join_all(self.shards.iter_mut().map(|shard| async {
            shard.order(&order).await?;
            shard.report().await
        }))
        .await?;
        let mut recovery = Recovery::default();
        for report in reports {
            let FromShard::Recovered {
                marked,
                reopened_us,
                others_dropped,
            } = report
            else {
                return Err(unexpected(&report));
            };
            recovery.marked += marked;
            recovery.reopened_us.extend(reopened_us);
            recovery.others_dropped += others_dropped;
        }
        Ok(recovery)
    }

    /// Tells every shard to exit, and kills those that don't in time.
    pub(crate) async fn stop(mut self) {
        for shard in &mut self.shards {
            let _ = shard.order(&ToShard::Stop).await;
        }
        for shard in &mut self.shards {
            if tokio::time::timeout(STOP_GRACE, shard.child.wait())
                .await
                .is_err()
            {
                let _ = shard.child.kill().await;
            }
        }
    }
}

fn unexpected(report: &FromShard) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected report from a shard: {report:?}"),
    )
}

/// Splits `total` streams into plans of at most `per_process` each, as even as possible.
pub(crate) fn split(total: usize, per_process: usize, template: &ShardPlan) -> Vec<ShardPlan> {
    let processes = total.div_ceil(per_process.max(1)).max(1);
    let mut plans = Vec::new();
    let mut first = 0;
    for process in 0..processes {
        let count = total / processes + usize::from(process < total % processes);
        plans.push(ShardPlan {
            first,
            count,
            total,
            ..template.clone()
        });
        first += count;
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::http::Server;
    use crate::loadgen::protocol::StreamTarget;

    #[test]
    fn splits_evenly_below_the_cap() {
        let template = ShardPlan {
            servers: vec![Server::from_url("http://127.0.0.1:1").unwrap()],
            target: StreamTarget::Nchan {
                channel: "c".into(),
            },
            first: 0,
            count: 0,
            total: 0,
            source_ips: 1,
            open_concurrency: 1,
            heartbeat_every_ms: 0,
            request_connections: 1,
            ack: false,
            reconnect: false,
        };
        let counts: Vec<(usize, usize)> = split(19_000, 9_500, &template)
            .iter()
            .map(|plan| (plan.first, plan.count))
            .collect();
        assert_eq!(counts, vec![(0, 9_500), (9_500, 9_500)]);
        let counts: Vec<usize> = split(10_001, 9_500, &template)
            .iter()
            .map(|plan| plan.count)
            .collect();
        assert_eq!(counts, vec![5_001, 5_000]);
        assert_eq!(split(0, 9_500, &template).len(), 1);
    }
}
