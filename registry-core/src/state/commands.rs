//! The rules of commands: creation for one agent, or for a group or the fleet
//! as a rollout, reads, and acknowledgement. Delivery to an open stream is `streams`'.

use std::sync::Arc;

use tokio::time::Instant;

use super::rollouts::Launch;
use super::streams::deliver;
use super::{AgentEntry, CommandEntry, Due, HashMap, State, unknown_agent};
use crate::agent::{AgentId, AgentStatus};
use crate::command::{Ack, CommandId, CommandRequest, CommandStatus, CommandView};
use crate::error::{InvalidField, RegistryError};
use crate::payload::Payload;
use crate::rollout::{CommandRef, NewRollout, RolloutId, Target};

impl State {
    /// Checks a command request against the configured types; returns the type and payload.
    fn command_parts(&self, request: CommandRequest) -> Result<(Arc<str>, Payload), InvalidField> {
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
        let agent = self
            .agents
            .get(agent_id)
            .ok_or_else(|| unknown_agent(agent_id))?;
        self.check_unfinished_room(agent, now)?;
        self.check_retained_room(1, payload.len())?;
        let agent_id = agent.id.clone();
        self.journal.stats.payload_bytes += payload.len();
        let id = self.create_command(&agent_id, &kind, &payload, None, now);
        Ok(self.commands[&id].view(&self.journal.clock))
    }

    /// Sends one command to each LIVE agent of a group: a rollout.
    pub(crate) fn send_to_group(
        &mut self,
        group: &str,
        request: CommandRequest,
        now: Instant,
    ) -> Result<NewRollout, RegistryError> {
        let (kind, payload) = self.command_parts(request)?;
        let (group, members) = self
            .groups
            .get_key_value(group)
            .ok_or_else(|| RegistryError::UnknownGroup(group.to_owned()))?;
        let target = Target::Group(group.clone());
        let targets = self.live(members.iter());
        self.launch(target, targets, kind, payload, now)
    }

    /// Sends one command to each LIVE agent: a rollout.
    pub(crate) fn send_to_fleet(
        &mut self,
        request: CommandRequest,
        now: Instant,
    ) -> Result<NewRollout, RegistryError> {
        let (kind, payload) = self.command_parts(request)?;
        let targets = self.live(self.agents.keys());
        self.launch(Target::Fleet, targets, kind, payload, now)
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

    /// Creates a rollout of one command per agent of `live`, all sharing
    /// `payload`, which is counted and stored once. Agents at their cap of
    /// unfinished commands are skipped; the rest must fit the registry's caps
    /// as a whole, or nothing is stored.
    fn launch(
        &mut self,
        target: Target,
        live: Vec<AgentId>,
        kind: Arc<str>,
        payload: Payload,
        now: Instant,
    ) -> Result<NewRollout, RegistryError> {
        let limit = self.settings.max_unfinished_per_agent;
        let mut targets = live;
        let live = targets.len();
        targets.retain(|id| {
            self.agents
                .get(id)
                .is_some_and(|agent| agent.unfinished < limit)
        });
        let skipped = live - targets.len();
        self.check_retained_room(targets.len(), payload.len())?;
        let id = RolloutId::new();
        let expires_at = now + self.settings.command_expiry;
        self.journal.rollouts.insert(Launch {
            id,
            kind: kind.clone(),
            target,
            payload: payload.clone(),
            created_at: now,
            expires_at,
            targeted: targets.len(),
            skipped,
        });
        self.journal.dirty.rollout_payload(id);
        self.journal.stats.payload_bytes += payload.len();
        let commands = targets
            .into_iter()
            .map(|agent_id| CommandRef {
                command_id: self.create_command(&agent_id, &kind, &payload, Some(id), now),
                agent_id,
            })
            .collect::<Vec<_>>();
        let clock = &self.journal.clock;
        Ok(NewRollout {
            rollout_id: id,
            kind,
            payload,
            targeted: commands.len(),
            skipped,
            created_at: clock.timestamp(now),
            expires_at: clock.timestamp(expires_at),
            commands,
        })
    }

    /// Creates a command for a known agent and, if it has a stream open, delivers it at once.
    fn create_command(
        &mut self,
        agent_id: &AgentId,
        kind: &Arc<str>,
        payload: &Payload,
        rollout: Option<RolloutId>,
        now: Instant,
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
        };
        self.journal.stats.commands_created += 1;
        self.journal.stats.commands[CommandStatus::Pending.index()] += 1;
        self.journal.dirty.command(id);
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent.commands.insert(seq, id);
            agent.unfinished += 1;
            if !self.closing {
                deliver(agent, &mut command, now, &mut self.journal);
            }
        }
        self.commands.insert(id, command);
        id
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
                    .command_status(command, CommandStatus::Acknowledged, now);
                if let Some(agent) = self.agents.get_mut(agent_id) {
                    agent.unfinished -= 1;
                }
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
