//! `registryctl`'s arguments: the registry to talk to, how to print, and one
//! subcommand per thing an operator does (SPEC 14).

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;
use registry_client::AgentStatus;
use serde_json::Value;

use crate::render::Output;

/// Operate an agent registry: list agents, push commands and follow their
/// rollouts, delete agents, follow the fleet.
#[derive(Parser)]
#[command(name = "registryctl", version)]
pub(crate) struct Cli {
    /// The registry's base URL.
    #[arg(
        long,
        env = "REGISTRY_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub(crate) url: String,
    /// An operator token, sent as `Authorization: Bearer`.
    #[arg(long, env = "REGISTRY_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// `table` for people, `json` for scripts.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    pub(crate) output: Output,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// List agents, filtered by status and group.
    Agents {
        /// Only agents in this status: LIVE, STALE or DEAD (any letter case).
        #[arg(long, value_parser = parse_status)]
        status: Option<AgentStatus>,
        /// Only agents of this group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Show one agent.
    Agent {
        /// The agent's id.
        agent_id: String,
    },
    /// Delete an agent: ends its stream and drops its commands.
    Delete {
        /// The agent's id.
        agent_id: String,
    },
    /// Delete every DEAD agent, after asking.
    PruneDead {
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
    /// Push a command to one agent, a group, or every LIVE agent.
    Push(Push),
    /// List an agent's commands, newest first.
    Commands {
        /// The agent's id.
        agent_id: String,
    },
    /// List the rollouts, newest first.
    Rollouts,
    /// Show one rollout's progress.
    Rollout {
        /// The rollout's id.
        rollout_id: String,
    },
    /// Print the fleet's events as they happen, until interrupted.
    Watch,
    /// Print a completion script for a shell.
    Completions {
        /// The shell.
        shell: Shell,
    },
}

/// `push TYPE [--payload JSON] (--agent ID | --group G | --fleet) [--wait]`.
#[derive(Args)]
pub(crate) struct Push {
    /// The command's type (`config-update`, `deep-trace`, `replay`, or what
    /// the server's `commands.types` allows).
    #[arg(value_name = "TYPE")]
    pub(crate) kind: String,
    /// The payload, as JSON.
    #[arg(long, value_parser = parse_json, default_value = "{}")]
    pub(crate) payload: Value,
    #[command(flatten)]
    pub(crate) target: Target,
    /// Wait until every command is acknowledged or expired, showing progress.
    #[arg(long)]
    pub(crate) wait: bool,
}

/// Where a command goes: exactly one of the three.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub(crate) struct Target {
    /// One agent.
    #[arg(long, value_name = "ID")]
    pub(crate) agent: Option<String>,
    /// Every LIVE agent of a group.
    #[arg(long, value_name = "G")]
    pub(crate) group: Option<String>,
    /// Every LIVE agent.
    #[arg(long)]
    pub(crate) fleet: bool,
}

fn parse_status(text: &str) -> Result<AgentStatus, String> {
    text.parse()
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|err| format!("not JSON: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_arguments_are_consistent() {
        Cli::command().debug_assert();
    }
}
