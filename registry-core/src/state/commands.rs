//! The rules of commands: creation for one agent (for a group or the fleet, as
//! a rollout, `launch` drives it), reads, and acknowledgement. Delivery to an
//! open stream is `streams`'.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::streams::deliver;
use super::{AgentEntry, CommandEntry, Due, HashMap, State, unknown_agent};
use crate::agent::AgentId;
use crate::command::{Ack, CommandId, CommandRequest, CommandStatus, CommandView};
use crate::error::{InvalidField, RegistryError};
use crate::payload::Payload;
use crate::rollout::RolloutId;

impl State {
    /// Checks a command request against the configured types; returns the type and payload.
    pub(crate) fn command_parts(
        &self,
        request: CommandRequest,
    ) -> Result<(Arc<str>, Payload), InvalidField> {
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
        let payload = request.payload.unwrap_or_else(Payload::empty_object);
        Ok((kind, payload))
    }

    /// Sends a command to one agent, whatever its status.
    pub(crate) fn send_to_agent(
        &mut self,
        agent_id: &str,
        request: CommandRequest,
        now: Instant,
    ) -> Result<CommandView, RegistryError> {
        let (kind, payload) = self.command_parts(request)?;
        self.settle_if_full(agent_id, now);
        let agent = self
            .agents
            .get(agent_id)
            .ok_or_else(|| unknown_agent(agent_id))?;
        self.check_unfinished_room(agent, now)?;
        self.check_retained_room(1, payload.len())?;
        let agent_id = agent.id.clone();
        self.journal.stats.payload_bytes += payload.len();
        let id = self.create_command(&agent_id, &kind, &payload, None, now, true);
        Ok(self.commands[&id].view(&self.journal.clock))
    }

    /// Creates a command for a known agent and, if it has a stream open and
    /// `deliver_now`, delivers it at once (a rollout's are delivered later,
    /// see `launch`).
    pub(super) fn create_command(
        &mut self,
        agent_id: &AgentId,
        kind: &Arc<str>,
        payload: &Payload,
        rollout: Option<RolloutId>,
        now: Instant,
        deliver_now: bool,
    ) -> CommandId {
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
            rollout,
            status: CommandStatus::Pending,
            created_at: now,
            expires_at,
            delivered_at: None,
            delivered_on: 0,
            acknowledged_at: None,
            ack: None,
            deadline,
            version: 0,
        };
        self.journal.stats.commands_created += 1;
        self.journal.stats.commands[CommandStatus::Pending.index()] += 1;
        self.journal.dirty.command(id);
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent.commands.insert((seq, id));
            agent.unfinished += 1;
            if deliver_now && !self.closing {
                deliver(agent, &mut command, now, &mut self.journal);
            }
        }
        self.commands.insert(id, command);
        id
    }

    /// The agent's retained commands, newest first.
    pub(crate) fn commands_of(
        &mut self,
        agent_id: &str,
        now: Instant,
    ) -> Result<Vec<CommandView>, RegistryError> {
        self.settle_commands_of(agent_id, now);
        let agent = self
            .agents
            .get(agent_id)
            .ok_or_else(|| unknown_agent(agent_id))?;
        Ok(agent
            .command_ids()
            .rev()
            .filter_map(|id| self.commands.get(id))
            .map(|command| command.view(&self.journal.clock))
            .collect())
    }

    pub(crate) fn command(
        &mut self,
        agent_id: &str,
        command_id: &str,
        now: Instant,
    ) -> Result<CommandView, RegistryError> {
        self.settle_command_named(command_id, now);
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
        // An expiry that is due but not applied yet still refuses the ack.
        self.settle_command_named(command_id, now);
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
                    .command_status(command, CommandStatus::Acknowledged, now);
                if let Some(agent) = self.agents.get_mut(agent_id) {
                    agent.unfinished -= 1;
                }
            }
        }
        Ok(command.view(&self.journal.clock))
    }
}

impl State {
    /// Settles the command `command_id` names, if it names one.
    fn settle_command_named(&mut self, command_id: &str, now: Instant) {
        if let Ok(id) = command_id.parse::<CommandId>() {
            self.settle_command(id, now);
        }
    }

    /// Settles every retained command of the agent, before they are read or
    /// replayed; bounded by what one agent retains.
    pub(super) fn settle_commands_of(&mut self, agent_id: &str, now: Instant) {
        let Some(agent) = self.agents.get(agent_id) else {
            return;
        };
        let due: Vec<CommandId> = agent
            .command_ids()
            .filter(|id| {
                self.commands
                    .get(*id)
                    .is_some_and(|command| command.deadline.when <= now)
            })
            .copied()
            .collect();
        for id in due {
            self.settle_command(id, now);
        }
    }
}

/// The command `command_id` of the agent `agent_id`; a malformed id, or one of
/// another agent's commands, is as unknown as a missing one.
fn find_command<'a>(
    agents: &HashMap<AgentId, Box<AgentEntry>>,
    commands: &'a mut BTreeMap<CommandId, CommandEntry>,
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
