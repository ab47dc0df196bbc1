//! A runnable agent: registers, heartbeats, holds its stream, prints every
//! command it receives and acknowledges it SUCCESS. Stop the registry and
//! start it again: the agent comes back by itself.
//!
//! Run with `cargo run -p registry-client --example agent -- --group G`
//! (`--help` for the rest); `REGISTRY_URL` names the registry.

use clap::Parser;
use registry_client::{Agent, Outcome, State};

/// A demonstration agent.
#[derive(Parser)]
struct Args {
    /// The registry's base URL.
    #[arg(long, env = "REGISTRY_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The agent's id: keep it across restarts, it is the agent's identity.
    #[arg(long, default_value = "example-agent-1")]
    id: String,
    /// The agent's group.
    #[arg(long, default_value = "example")]
    group: String,
    /// The enrollment token, when the registry uses tokens.
    #[arg(long, env = "REGISTRY_ENROLLMENT_TOKEN")]
    enrollment_token: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let mut builder = Agent::builder(&args.url, &args.id, "example-service", &args.group)
        .version(env!("CARGO_PKG_VERSION"))
        .capabilities(["config-update", "deep-trace", "replay"]);
    if let Some(token) = args.enrollment_token {
        builder = builder.enrollment_token(token);
    }
    let mut agent = builder.start()?;
    println!("agent {} of group {} -> {}", args.id, args.group, args.url);

    // Say when the stream opens and closes, so a restart of the registry shows.
    let mut states = agent.states();
    tokio::spawn(async move {
        while states.changed().await.is_ok() {
            let state = *states.borrow_and_update();
            let said = match state {
                State::Registering => "registering",
                State::Connected => "connected: waiting for commands",
                State::Disconnected => "disconnected: reconnecting",
                State::Stopped => "stopped",
            };
            println!(
                "[{}] {said}",
                registry_client::Timestamp(std::time::SystemTime::now())
            );
        }
    });

    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            command = agent.next_command() => {
                let Some(command) = command else { break };
                println!(
                    "[{}] {} {} {}",
                    registry_client::Timestamp(std::time::SystemTime::now()),
                    command.kind,
                    command.command_id,
                    command.payload
                );
                let message = format!("{} applied", command.kind);
                match command.ack(Outcome::success(message)).await {
                    Ok(acked) => println!("  acknowledged: {}", acked.status),
                    Err(err) => println!("  not acknowledged: {err}"),
                }
            }
        }
    }
    agent.shutdown().await?;
    Ok(())
}
