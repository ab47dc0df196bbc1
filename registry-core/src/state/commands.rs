//! The rules of commands: creation for one agent, a group or the fleet, reads,
//! and acknowledgement. Delivery to an open stream is `streams`'.

use std::sync::Arc;

use serde_json::Value;
use tokio::time::Instant;

use super::streams::deliver;
use super::{AgentEntry, CommandEntry, Due, HashMap, State, unknown_agent};
use crate::agent::{AgentId, AgentStatus};
use crate::command::{Ack, CommandId, CommandRequest, CommandStatus, CommandView};
use crate::error::{InvalidField, RegistryError};

impl State {
    /// Checks a command request against the configured types; returns the type and payload.
    fn command_parts(
        &self,
        request: CommandRequest,
    ) -> Result<(Arc<str>, Arc<Value>), InvalidField> {
        let kind = self
            .command_types
            .iter()
            .find(|kind| ***kind == *request.kind)
            .cloned()
            .ok_or_else(|| {
                InvalidField::new(
                    "type",
                    format!(
                        "'{}' is not one of the allowed types: {}",
                        request.kind,
                        self.settings.command_types.join(", ")
                    ),
                )
            })?;
        let payload = request
            .payload
            .unwrap_or_else(|| Value::Object(Default::default()));
        Ok((kind, Arc::new(payload)))
    }

    /// Sends a command to one agent, whatever its status.
    pub(crate) fn send_to_agent(
        &mut self,
        agent_id: &str,
        request: CommandRequest,
        now: Instant,
    ) -> Result<CommandView, RegistryError> {
        let (kind, payload) = self.command_parts(request)?;
        let agent_id = self
            .agents
            .get(agent_id)
            .map(|agent| agent.id.clone())
            .ok_or_else(|| unknown_agent(agent_id))?;
        Ok(self.create_command(&agent_id, &kind, &payload, now))
    }

    /// Sends one command to each LIVE agent of a group.
    pub(crate) fn send_to_group(
        &mut self,
        group: &str,
        request: CommandRequest,
        now: Instant,
    ) -> Result<Vec<CommandView>, RegistryError> {
        let (kind, payload) = self.command_parts(request)?;
        let members = self
            .groups
            .get(group)
            .ok_or_else(|| RegistryError::UnknownGroup(group.to_owned()))?;
        let targets = self.live(members.iter());
        Ok(self.create_commands(targets, &kind, &payload, now))
    }

    /// Sends one command to each LIVE agent.
    pub(crate) fn send_to_fleet(
        &mut self,
        request: CommandRequest,
        now: Instant,
    ) -> Result<Vec<CommandView>, RegistryError> {
        let (kind, payload) = self.command_parts(request)?;
        let targets = self.live(self.agents.keys());
        Ok(self.create_commands(targets, &kind, &payload, now))
    }

    /// The LIVE agents among `ids`, ordered by id.
    fn live<'a>(&self, ids: impl Iterator<Item = &'a AgentId>) -> Vec<AgentId> {
        let mut live: Vec<AgentId> = ids
            .filter(|id| {
                self.agents
                    .get(*id)
                    .is_some_and(|agent| agent.status == AgentStatus::Live)
            })
            .cloned()
            .collect();
        live.sort_unstable();
        live
    }

    fn create_commands(
        &mut self,
        targets: Vec<AgentId>,
        kind: &Arc<str>,
        payload: &Arc<Value>,
        now: Instant,
    ) -> Vec<CommandView> {
        targets
            .iter()
            .map(|agent_id| self.create_command(agent_id, kind, payload, now))
            .collect()
    }

    /// Creates a command for a known agent and, if it has a stream open, delivers it at once.
    fn create_command(
        &mut self,
        agent_id: &AgentId,
        kind: &Arc<str>,
        payload: &Arc<Value>,
        now: Instant,
    ) -> CommandView {
        let seq = self.next_seq();
        let id = CommandId::new();
        let expires_at = now + self.settings.command_expiry;
        let deadline = self.deadlines.insert(expires_at, Due::Command(id));
        let mut command = CommandEntry {
            seq,
            id,
            agent_id: agent_id.clone(),
            kind: kind.clone(),
            payload: payload.clone(),
            status: CommandStatus::Pending,
            created_at: now,
            expires_at,
            delivered_at: None,
            delivered_on: 0,
            acknowledged_at: None,
            ack: None,
            deadline,
        };
        self.journal.stats.commands_created += 1;
        self.journal.stats.commands[CommandStatus::Pending.index()] += 1;
        self.journal.dirty.command(id);
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent.commands.insert(seq, id);
            if !self.closing {
                deliver(agent, &mut command, now, &mut self.journal);
            }
        }
        let view = command.view(&self.journal.clock);
        self.commands.insert(id, command);
        view
    }

    /// The agent's retained commands, newest first.
    pub(crate) fn commands_of(&self, agent_id: &str) -> Result<Vec<CommandView>, RegistryError> {
        let agent = self
            .agents
            .get(agent_id)
            .ok_or_else(|| unknown_agent(agent_id))?;
        Ok(agent
            .commands
            .values()
            .rev()
            .filter_map(|id| self.commands.get(id))
            .map(|command| command.view(&self.journal.clock))
            .collect())
    }

    pub(crate) fn command(
        &mut self,
        agent_id: &str,
        command_id: &str,
    ) -> Result<CommandView, RegistryError> {
        let command = find_command(&self.agents, &mut self.commands, agent_id, command_id)?;
        Ok(command.view(&self.journal.clock))
    }

    /// Acknowledges a PENDING or DELIVERED command; a second ack keeps the first result.
    pub(crate) fn ack(
        &mut self,
        agent_id: &str,
        command_id: &str,
        ack: Ack,
        now: Instant,
    ) -> Result<CommandView, RegistryError> {
        let command = find_command(&self.agents, &mut self.commands, agent_id, command_id)?;
        match command.status {
            CommandStatus::Expired => return Err(RegistryError::CommandExpired(command.id)),
            CommandStatus::Acknowledged => {}
            CommandStatus::Pending | CommandStatus::Delivered => {
                command.acknowledged_at = Some(now);
                command.ack = Some(ack);
                self.deadlines.schedule.remove(command.deadline);
                let purge_at = now + self.settings.command_retention;
                command.deadline = self.deadlines.insert(purge_at, Due::Command(command.id));
                self.journal
                    .command_status(command, CommandStatus::Acknowledged);
            }
        }
        Ok(command.view(&self.journal.clock))
    }
}

/// The command `command_id` of the agent `agent_id`; a malformed id, or one of
/// another agent's commands, is as unknown as a missing one.
fn find_command<'a>(
    agents: &HashMap<AgentId, AgentEntry>,
    commands: &'a mut HashMap<CommandId, CommandEntry>,
    agent_id: &str,
    command_id: &str,
) -> Result<&'a mut CommandEntry, RegistryError> {
    if !agents.contains_key(agent_id) {
        return Err(unknown_agent(agent_id));
    }
    command_id
        .parse::<CommandId>()
        .ok()
        .and_then(|id| commands.get_mut(&id))
        .filter(|command| command.agent_id.as_str() == agent_id)
        .ok_or_else(|| RegistryError::UnknownCommand {
            agent_id: agent_id.to_owned(),
            command_id: command_id.to_owned(),
        })
}
