//! The caps of SPEC 13, checked before anything is stored: agents
//! (`lifecycle.max_agents`, DEAD ones counted), one agent's unfinished
//! commands (`commands.max_unfinished_per_agent`), and the commands and
//! payload bytes the registry retains (`commands.max_retained`,
//! `commands.max_retained_bytes`; a rollout's payload counts once). Each check
//! reads a count kept as things change: none walks the fleet or the table.

use tokio::time::Instant;

use super::{AgentEntry, State};
use crate::error::RegistryError;

impl State {
    /// Whether one more agent may register.
    pub(super) fn check_agent_room(&self) -> Result<(), RegistryError> {
        let limit = self.settings.max_agents;
        if self.agents.len() >= limit {
            return Err(RegistryError::TooManyAgents { limit });
        }
        Ok(())
    }

    /// Whether `agent` may be sent one more command; a refusal says when its
    /// oldest unfinished command expires, which makes room.
    pub(super) fn check_unfinished_room(
        &self,
        agent: &AgentEntry,
        now: Instant,
    ) -> Result<(), RegistryError> {
        let limit = self.settings.max_unfinished_per_agent;
        if agent.unfinished < limit {
            return Ok(());
        }
        // Every command expires `commands.expiry` after its creation, so the
        // oldest unfinished one is the first to make room. Only a refusal
        // looks for it.
        let retry_after = agent
            .command_ids()
            .filter_map(|id| self.commands.get(id))
            .find(|command| !command.status.is_final())
            .map_or(self.settings.command_expiry, |command| {
                command.expires_at.saturating_duration_since(now)
            });
        Err(RegistryError::TooManyUnfinished {
            agent_id: agent.id.to_string(),
            limit,
            retry_after,
        })
    }

    /// Settles the agent's commands if it is at its cap of unfinished ones:
    /// one whose expiry is due but not applied yet (a backlog the scheduler
    /// works off) makes room, as it would once applied.
    pub(super) fn settle_if_full(&mut self, agent_id: &str, now: Instant) {
        let limit = self.settings.max_unfinished_per_agent;
        if self
            .agents
            .get(agent_id)
            .is_some_and(|agent| agent.unfinished >= limit)
        {
            self.settle_commands_of(agent_id, now);
        }
    }

    /// Whether the agent, which must exist, may be sent one more command
    /// (after [`settle_if_full`](Self::settle_if_full)).
    pub(super) fn has_unfinished_room(&mut self, agent_id: &str, now: Instant) -> bool {
        self.settle_if_full(agent_id, now);
        let limit = self.settings.max_unfinished_per_agent;
        self.agents
            .get(agent_id)
            .is_some_and(|agent| agent.unfinished < limit)
    }

    /// Whether `commands` more commands and `payload_bytes` more payload may
    /// be retained.
    pub(super) fn check_retained_room(
        &self,
        commands: usize,
        payload_bytes: usize,
    ) -> Result<(), RegistryError> {
        let stats = &self.journal.stats;
        // Room reserved by a rollout whose commands are being created counts as taken.
        let retained = stats.commands.iter().sum::<usize>() + self.reserved_commands;
        let limit = self.settings.max_retained;
        if retained.saturating_add(commands) > limit {
            return Err(RegistryError::CommandsFull(format!(
                "{retained} commands are retained and {commands} more would pass \
                 commands.max_retained ({limit})"
            )));
        }
        let limit = self.settings.max_retained_bytes;
        if stats.payload_bytes.saturating_add(payload_bytes) > limit {
            return Err(RegistryError::CommandsFull(format!(
                "{} payload bytes are retained and {payload_bytes} more would pass \
                 commands.max_retained_bytes ({limit})",
                stats.payload_bytes
            )));
        }
        Ok(())
    }
}
