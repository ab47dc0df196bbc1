//! Benchmarks of the agent registry: `benches/core.rs` measures the core's
//! operations with criterion; `src/bin/loadgen.rs` plays a fleet against a
//! running server (and against nginx with nchan, for comparison).
//!
//! # Layout
//!
//! - [`memory`]: a process's resident and proportional memory from `/proc`,
//!   read by `loadgen` and `churn` alike;
//! - [`cpu`]: the user and kernel CPU time of a group of processes from
//!   `/proc`, read by `loadgen` around each push.

pub mod cpu;
pub mod memory;
