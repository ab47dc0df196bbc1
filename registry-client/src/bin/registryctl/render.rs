//! How `registryctl` prints: tables (comfy-table, no borders, like other
//! operators' tools) for people, or the typed answer as JSON for scripts.

use std::io::Write;
use std::time::Duration;

use clap::ValueEnum;
use comfy_table::presets::NOTHING;
use comfy_table::{CellAlignment, Table};
use registry_client::{AgentView, CommandView, FleetEvent, RolloutStarted, RolloutView, Timestamp};
use serde::Serialize;
use serde_json::{Value, json};

/// The output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Tables and sentences.
    Table,
    /// JSON, as the server answered it.
    Json,
}

impl Output {
    pub(crate) fn agents(self, agents: &[AgentView]) {
        if self.json(&agents) {
            return;
        }
        let mut table = table(&[
            "AGENT ID",
            "NAME",
            "GROUP",
            "VERSION",
            "STATUS",
            "CONNECTED",
            "LAST HEARTBEAT",
        ]);
        for agent in agents {
            table.add_row(vec![
                agent.agent_id.clone(),
                agent.name.clone(),
                agent.group.clone(),
                agent.version.clone().unwrap_or_else(|| "-".into()),
                agent.status.to_string(),
                yes_no(agent.connected).into(),
                ago(agent.last_heartbeat_at),
            ]);
        }
        print_table(table, agents.is_empty(), "no agent");
    }

    pub(crate) fn agent(self, agent: &AgentView) {
        if self.json(agent) {
            return;
        }
        print_fields(&[
            ("agentId", agent.agent_id.clone()),
            ("name", agent.name.clone()),
            ("group", agent.group.clone()),
            (
                "version",
                agent.version.clone().unwrap_or_else(|| "-".into()),
            ),
            ("routeIds", list(&agent.route_ids)),
            ("capabilities", list(&agent.capabilities)),
            ("status", agent.status.to_string()),
            ("connected", yes_no(agent.connected).into()),
            ("registeredAt", agent.registered_at.to_string()),
            ("lastHeartbeatAt", at_ago(agent.last_heartbeat_at)),
            ("statusChangedAt", at_ago(agent.status_changed_at)),
        ]);
    }

    pub(crate) fn command(self, command: &CommandView) {
        if self.json(command) {
            return;
        }
        let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
        print_fields(&[
            ("commandId", command.command_id.clone()),
            ("agentId", command.agent_id.clone()),
            ("type", command.kind.clone()),
            ("payload", command.payload.to_string()),
            ("rolloutId", or_dash(command.rollout_id.clone())),
            ("status", command.status.to_string()),
            ("createdAt", command.created_at.to_string()),
            ("expiresAt", command.expires_at.to_string()),
            (
                "deliveredAt",
                or_dash(command.delivered_at.map(|at| at.to_string())),
            ),
            (
                "acknowledgedAt",
                or_dash(command.acknowledged_at.map(|at| at.to_string())),
            ),
            (
                "result",
                or_dash(command.result.map(|result| result.to_string())),
            ),
            ("message", or_dash(command.message.clone())),
        ]);
    }

    pub(crate) fn commands(self, commands: &[CommandView]) {
        if self.json(&commands) {
            return;
        }
        let mut table = table(&[
            "COMMAND ID",
            "TYPE",
            "STATUS",
            "CREATED",
            "RESULT",
            "MESSAGE",
        ]);
        for command in commands {
            table.add_row(vec![
                command.command_id.clone(),
                command.kind.clone(),
                command.status.to_string(),
                ago(command.created_at),
                command
                    .result
                    .map_or_else(|| "-".into(), |result| result.to_string()),
                command.message.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        print_table(table, commands.is_empty(), "no command");
    }

    pub(crate) fn rollout_started(self, rollout: &RolloutStarted) {
        if self.json(rollout) {
            return;
        }
        print_fields(&[
            ("rolloutId", rollout.rollout_id.clone()),
            ("type", rollout.kind.clone()),
            ("payload", rollout.payload.to_string()),
            ("targeted", rollout.targeted.to_string()),
            ("skipped", rollout.skipped.to_string()),
            ("createdAt", rollout.created_at.to_string()),
            ("expiresAt", rollout.expires_at.to_string()),
        ]);
    }

    pub(crate) fn rollout(self, rollout: &RolloutView) {
        if self.json(rollout) {
            return;
        }
        print_fields(&[
            ("rolloutId", rollout.rollout_id.clone()),
            ("type", rollout.kind.clone()),
            ("target", rollout.target.clone()),
            ("createdAt", rollout.created_at.to_string()),
            ("expiresAt", rollout.expires_at.to_string()),
            ("targeted", rollout.targeted.to_string()),
            ("skipped", rollout.skipped.to_string()),
            ("pending", rollout.pending.to_string()),
            ("delivered", rollout.delivered.to_string()),
            ("acknowledged", rollout.acknowledged.to_string()),
            ("succeeded", rollout.succeeded.to_string()),
            ("failed", rollout.failed.to_string()),
            ("expired", rollout.expired.to_string()),
            ("done", yes_no(rollout.done).into()),
        ]);
    }

    pub(crate) fn rollouts(self, rollouts: &[RolloutView]) {
        if self.json(&rollouts) {
            return;
        }
        let mut table = table(&[
            "ROLLOUT ID",
            "TYPE",
            "TARGET",
            "CREATED",
            "TARGETED",
            "PENDING",
            "DELIVERED",
            "SUCCEEDED",
            "FAILED",
            "EXPIRED",
            "DONE",
        ]);
        for rollout in rollouts {
            table.add_row(vec![
                rollout.rollout_id.clone(),
                rollout.kind.clone(),
                rollout.target.clone(),
                ago(rollout.created_at),
                rollout.targeted.to_string(),
                rollout.pending.to_string(),
                rollout.delivered.to_string(),
                rollout.succeeded.to_string(),
                rollout.failed.to_string(),
                rollout.expired.to_string(),
                yes_no(rollout.done).into(),
            ]);
        }
        for column in 4..10 {
            if let Some(column) = table.column_mut(column) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        print_table(table, rollouts.is_empty(), "no rollout");
    }

    /// One fleet event, as one line.
    pub(crate) fn event(self, event: &FleetEvent) {
        if self == Self::Json {
            say(&json!({"event": event.name(), "data": event.data()}).to_string());
            return;
        }
        let line = match event {
            FleetEvent::Agent(agent) => {
                let from = agent.from.map_or("(new)", |status| status.as_str());
                let to = agent.to.map_or("(deleted)", |status| status.as_str());
                let connected = match agent.connected {
                    Some(true) => "  connected",
                    Some(false) => "  not connected",
                    None => "",
                };
                format!(
                    "{}  agent    {} ({})  {from} -> {to}{connected}",
                    agent.at, agent.agent_id, agent.group
                )
            }
            FleetEvent::Rollout(rollout) => format!(
                "{}  rollout  {} {} {}  {}/{} finished: {} succeeded, {} failed, {} expired{}",
                Timestamp(std::time::SystemTime::now()),
                rollout.rollout_id,
                rollout.kind,
                rollout.target,
                rollout.finished(),
                rollout.targeted,
                rollout.succeeded,
                rollout.failed,
                rollout.expired,
                if rollout.done { "  done" } else { "" }
            ),
            FleetEvent::Brake(brake) => format!(
                "{}  brake    {}",
                brake.at,
                if brake.engaged { "engaged" } else { "released" }
            ),
            FleetEvent::Other { event, data } => format!(
                "{}  {event}  {data}",
                Timestamp(std::time::SystemTime::now())
            ),
        };
        say(&line);
    }

    /// A short answer: `value` as JSON, or `sentence`.
    pub(crate) fn message(self, value: &Value, sentence: &str) {
        if !self.json(value) {
            say(sentence);
        }
    }

    /// Prints `value` as JSON if that is the format; says whether it did.
    fn json<T: Serialize + ?Sized>(self, value: &T) -> bool {
        if self != Self::Json {
            return false;
        }
        match serde_json::to_string_pretty(value) {
            Ok(text) => say(&text),
            Err(err) => eprintln!("error: {err}"),
        }
        true
    }
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(NOTHING).set_header(header.to_vec());
    // Columns two spaces apart, the first at the margin.
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// Writes `line` to standard output. A reader that closed it (`| head`) has
/// all it wanted: the command ends there, quietly.
pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

fn print_table(table: Table, empty: bool, nothing: &str) {
    if empty {
        say(nothing);
    } else {
        // Without the blanks that pad every line to the widest.
        say(&table.trim_fmt());
    }
}

fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, value) in fields {
        say(&format!("{name:width$}  {value}"));
    }
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// `12s ago`, to the second.
fn ago(at: Timestamp) -> String {
    let elapsed = Duration::from_secs(at.elapsed().as_secs());
    if elapsed.is_zero() {
        "just now".into()
    } else {
        format!("{} ago", humantime::format_duration(elapsed))
    }
}

fn at_ago(at: Timestamp) -> String {
    format!("{at} ({})", ago(at))
}
