//! A Rust client of the agent registry (SPEC 14): the agent SDK, which
//! registers, heartbeats, holds the command stream, hands each command to the
//! application once and acknowledges it, and comes back by itself when the
//! registry restarts or forgets it; and a typed client of the operator routes,
//! the rollouts and the fleet event stream. The `registryctl` binary is built
//! on the latter.
//!
//! # Layout
//!
//! - [`agent`]: [`Agent`], its builder, the [`Command`]s it hands over.
//! - [`operator`]: [`Operator`], every operator route.
//! - [`types`]: the wire types, written from the contract.
//! - [`error`]: [`Error`], carrying the server's problem.
//! - `http`: the base URL and the HTTP client both sides use.

pub mod agent;
pub mod error;
mod http;
pub mod operator;
pub mod types;

pub use agent::{Agent, AgentBuilder, Backoff, Command, CommandType, Outcome, State};
pub use error::Error;
pub use operator::{AgentFilter, FleetEvents, Operator};
pub use types::{
    AckResult, AgentEvent, AgentStatus, AgentView, BrakeEvent, CommandRequest, CommandStatus,
    CommandView, FleetEvent, Problem, RolloutCommand, RolloutStarted, RolloutView, Timestamp,
};
