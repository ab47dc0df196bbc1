//! The load generator's parts, declared by `src/bin/loadgen.rs`: a raw
//! HTTP/1.1 client, the SSE reader, the shards that hold streams in child
//! processes, the targets (our registry, nginx+nchan, and a cluster of our
//! replicas on Redis), and the reports.

pub(crate) mod chunked;
pub(crate) mod cluster_report;
pub(crate) mod cluster_run;
pub(crate) mod fleet;
pub(crate) mod http;
pub(crate) mod latency;
pub(crate) use registry_bench::{cpu, memory};
pub(crate) mod nchan_run;
pub(crate) mod protocol;
pub(crate) mod push;
pub(crate) mod redis_info;
pub(crate) mod register;
pub(crate) mod registry_run;
pub(crate) mod report;
pub(crate) mod results;
pub(crate) mod shard;
pub(crate) mod shards;
pub(crate) mod sse;
pub(crate) mod streams;
