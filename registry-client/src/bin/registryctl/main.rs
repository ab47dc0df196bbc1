//! `registryctl`: the registry's operator CLI (SPEC 14). Lists agents and
//! their commands, pushes commands and follows their rollouts, deletes agents,
//! follows the fleet. Tables for people, `--output json` for scripts; an
//! error from the server is one line with its problem's detail, and exit 1.
//!
//! # Layout
//!
//! - `cli`: the arguments (clap), configured by `--url`/`REGISTRY_URL` and
//!   `--token`/`REGISTRY_TOKEN`.
//! - `render`: tables and JSON.
//! - `push`: `push`, and the progress of `push --wait`.
//! - `watch`: `watch`, the fleet's events as they happen.

mod cli;
mod push;
mod render;
mod watch;

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use registry_client::{AgentFilter, AgentStatus, Error, Operator};
use serde_json::json;

use cli::{Cli, Command};
use render::Output;

/// What a command ends with: success, or a failure already explained.
pub(crate) enum Done {
    /// Exit 0.
    Ok,
    /// Exit 1 with nothing more to say (declined, or a rollout that failed).
    Failed,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(Done::Ok) => ExitCode::SUCCESS,
        Ok(Done::Failed) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {}", explain(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line (a refused connection says so).
fn explain(err: &Error) -> String {
    let mut line = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

async fn run(cli: Cli) -> Result<Done, Error> {
    let output = cli.output;
    let mut operator = Operator::new(&cli.url)?;
    if let Some(token) = cli.token.filter(|token| !token.is_empty()) {
        operator = operator.with_token(token);
    }
    match cli.command {
        Command::Agents { status, group } => {
            let agents = operator.agents(&AgentFilter { status, group }).await?;
            output.agents(&agents);
        }
        Command::Agent { agent_id } => output.agent(&operator.agent(&agent_id).await?),
        Command::Delete { agent_id } => {
            operator.delete_agent(&agent_id).await?;
            output.message(
                &json!({"agentId": agent_id, "deleted": true}),
                &format!("deleted agent {agent_id}"),
            );
        }
        Command::PruneDead { yes } => return prune_dead(&operator, output, yes).await,
        Command::Push(push) => return push::run(&operator, output, push).await,
        Command::Commands { agent_id } => output.commands(&operator.commands_of(&agent_id).await?),
        Command::Rollouts => output.rollouts(&operator.rollouts().await?),
        Command::Rollout { rollout_id } => output.rollout(&operator.rollout(&rollout_id).await?),
        Command::Watch => watch::run(&operator, output).await?,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "registryctl", &mut script);
            render::say(String::from_utf8_lossy(&script).trim_end());
        }
    }
    Ok(Done::Ok)
}

/// Deletes every DEAD agent, once the user said yes (or `--yes`).
async fn prune_dead(operator: &Operator, output: Output, yes: bool) -> Result<Done, Error> {
    let filter = AgentFilter {
        status: Some(AgentStatus::Dead),
        group: None,
    };
    let dead = operator.agents(&filter).await?;
    if dead.is_empty() {
        output.message(&json!({"deleted": 0}), "no DEAD agent");
        return Ok(Done::Ok);
    }
    if !yes && !confirm(&format!("Delete {} DEAD agent(s)?", dead.len())) {
        eprintln!("nothing deleted");
        return Ok(Done::Failed);
    }
    let deleted = operator.prune_dead().await?;
    output.message(
        &json!({"deleted": deleted}),
        &format!("deleted {deleted} DEAD agent(s)"),
    );
    Ok(Done::Ok)
}

/// Asks `question` on standard error and reads the answer from standard
/// input: true for `y` or `yes`. No answer (end of input) is no.
fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}
