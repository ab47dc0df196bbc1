//! A group or fleet command launched a page at a time (SPEC 13: no request
//! waits on another's bulk work). The registry drives it in steps, each page
//! a hold of the lock of its own:
//!
//! 1. [`State::launch_targets`]: a page of the fleet (or the group) in id
//!    order, each agent settled; the LIVE ones are targets, those at
//!    `commands.max_unfinished_per_agent` are skipped;
//! 2. [`State::open_launch`]: the caps checked for the whole rollout and
//!    reserved, the rollout created with every target PENDING; its batch
//!    takes its place in the writer's order now, its marks promised
//!    (`writer`), so no ack of one of its commands is kept before it;
//! 3. [`State::launch_page`]: a page of the commands created. A target deleted
//!    since step 1, or that reached its cap meanwhile (then counted skipped),
//!    gets none and is withdrawn from the rollout;
//! 4. [`State::deliver_page`]: the page's commands handed to the open
//!    streams of their agents, at once: the first agents have theirs while
//!    the last commands are being made. Steps 3 and 4 repeat to the end;
//! 5. [`Launching::take_marks`]: what steps 2 and 3 changed, handed to the
//!    writer as the promised batch, with the deliveries: the rollout is
//!    written whole, in one transaction, each command once, as delivered.
//!
//! With a store shared by replicas, whose writer takes what queues behind a
//! conflict as it comes, a batch is never promised: step 3 runs to the end,
//! step 5 hands the batch over (in commits of at most a few thousand
//! changes, its record and payload first: `writer::shared`), then step 4
//! runs to the end. In both orders no command reaches an agent before the
//! batch that holds it is in the writer's queue.
//!
//! Every command carries the rollout's `createdAt` and `expiresAt`. The rules
//! of a command, once created, are `commands`'.

use std::sync::Arc;

use tokio::time::Instant;

use super::State;
use super::marks::Dirty;
use super::rollouts::Launch;
use super::streams::deliver;
use crate::agent::{AgentId, AgentStatus, GroupName};
use crate::clock::Clock;
use crate::command::CommandStatus;
use crate::error::RegistryError;
use crate::payload::Payload;
use crate::rollout::{CommandRef, NewRollout, RolloutId, Target};

/// The targets of a launch, as step 1 finds them.
#[derive(Default)]
pub(crate) struct Targets {
    /// The group named, once found; `None` for the fleet.
    group: Option<GroupName>,
    /// The LIVE agents with room for one more command, in id order.
    live: Vec<AgentId>,
    /// The LIVE agents at their cap of unfinished commands.
    skipped: usize,
}

/// A rollout whose commands are being created, a page at a time.
pub(crate) struct Launching {
    id: RolloutId,
    kind: Arc<str>,
    payload: Payload,
    created_at: Instant,
    expires_at: Instant,
    /// Step 1's targets; those before `next` are done.
    targets: Vec<AgentId>,
    next: usize,
    skipped: usize,
    commands: Vec<CommandRef>,
    /// The commands before this one are handed to their streams.
    delivered: usize,
    /// What steps 2 and 3 changed, kept apart to be written as one batch
    /// (the deliveries of step 4 are the state's, and join it in the writer).
    marks: Dirty,
}

impl Launching {
    /// What the launch changed, to be written as one batch.
    pub(crate) fn take_marks(&mut self) -> Dirty {
        std::mem::take(&mut self.marks)
    }

    /// The answer to the push, once every page is done.
    pub(crate) fn into_rollout(self, clock: &Clock) -> NewRollout {
        NewRollout {
            rollout_id: self.id,
            kind: self.kind,
            payload: self.payload,
            targeted: self.commands.len(),
            skipped: self.skipped,
            created_at: clock.timestamp(self.created_at),
            expires_at: clock.timestamp(self.expires_at),
            commands: self.commands,
        }
    }
}

impl State {
    /// Step 1, one page: of the `limit` agents after `after` in id order (of
    /// `group`, or of the fleet), adds the LIVE ones to `targets`. Returns the
    /// last id read, or `None` once there are no more. An unknown group is
    /// refused on the first page.
    pub(crate) fn launch_targets(
        &mut self,
        group: Option<&str>,
        after: Option<&AgentId>,
        limit: usize,
        now: Instant,
        targets: &mut Targets,
    ) -> Result<Option<AgentId>, RegistryError> {
        if let Some(name) = group {
            match self.groups.get_key_value(name) {
                Some((name, _)) => {
                    targets.group.get_or_insert_with(|| name.clone());
                }
                None if after.is_none() => {
                    return Err(RegistryError::UnknownGroup(name.to_owned()));
                }
                // Its last agents were deleted since the first page.
                None => return Ok(None),
            }
        }
        self.settle_page(group, after, limit, now);
        let cap = self.settings.max_unfinished_per_agent;
        let first = targets.live.len();
        let mut full = Vec::new();
        let next = self.walk_page(group, after, limit, |agent| {
            if agent.status != AgentStatus::Live {
                return;
            }
            if agent.unfinished < cap {
                targets.live.push(agent.id.clone());
            } else {
                full.push(agent.id.clone());
            }
        });
        if !full.is_empty() {
            for id in full {
                if self.has_unfinished_room(id.as_str(), now) {
                    targets.live.push(id);
                } else {
                    targets.skipped += 1;
                }
            }
            // The rollout's commands are in id order.
            targets.live[first..].sort_unstable();
        }
        Ok(next)
    }

    /// Step 2: checks the caps for the whole rollout (nothing is stored if it
    /// does not fit), reserves room for its commands, and creates it with
    /// every target PENDING.
    pub(crate) fn open_launch(
        &mut self,
        targets: Targets,
        kind: Arc<str>,
        payload: Payload,
        now: Instant,
    ) -> Result<Launching, RegistryError> {
        let Targets {
            group,
            live,
            skipped,
        } = targets;
        self.check_retained_room(live.len(), payload.len())?;
        let mut marks = self.journal.dirty.empty_like();
        std::mem::swap(&mut self.journal.dirty, &mut marks);
        let id = RolloutId::new();
        let expires_at = now + self.settings.command_expiry;
        self.journal.rollouts.insert(Launch {
            id,
            kind: kind.clone(),
            target: group.map_or(Target::Fleet, Target::Group),
            payload: payload.clone(),
            created_at: now,
            expires_at,
            targeted: live.len(),
            skipped,
        });
        self.journal.dirty.rollout_payload(id);
        self.journal.stats.payload_bytes += payload.len();
        self.reserved_commands += live.len();
        // Its record is marked as its counts are settled: with the rest.
        self.settle_rollouts(now);
        std::mem::swap(&mut self.journal.dirty, &mut marks);
        Ok(Launching {
            id,
            kind,
            payload,
            created_at: now,
            expires_at,
            commands: Vec::with_capacity(live.len()),
            targets: live,
            next: 0,
            skipped,
            delivered: 0,
            marks,
        })
    }

    /// Step 3, one page: creates the commands of the next `limit` targets.
    /// Returns whether targets remain.
    pub(crate) fn launch_page(
        &mut self,
        launching: &mut Launching,
        limit: usize,
        now: Instant,
    ) -> bool {
        // The page's changes go with the rollout's, into one batch.
        std::mem::swap(&mut self.journal.dirty, &mut launching.marks);
        let end = launching.targets.len().min(launching.next + limit);
        for index in launching.next..end {
            // Saturating: a reload after a failed write may have reset it.
            self.reserved_commands = self.reserved_commands.saturating_sub(1);
            let agent_id = &launching.targets[index];
            let cap = self.settings.max_unfinished_per_agent;
            let room = match self.agents.get(agent_id) {
                None => None,
                Some(agent) if agent.unfinished < cap => Some(true),
                Some(_) => Some(self.has_unfinished_room(agent_id.as_str(), now)),
            };
            if room != Some(true) {
                // Deleted since it was targeted, or at its cap now (skipped).
                let skipped = room.is_some();
                launching.skipped += usize::from(skipped);
                let at = launching.created_at;
                self.journal.rollouts.withdraw(launching.id, skipped, at);
                continue;
            }
            let command_id = self.create_command(
                agent_id,
                &launching.kind,
                &launching.payload,
                Some(launching.id),
                launching.created_at,
                false,
            );
            launching.commands.push(CommandRef {
                command_id,
                agent_id: agent_id.clone(),
            });
        }
        launching.next = end;
        self.settle_rollouts(now);
        std::mem::swap(&mut self.journal.dirty, &mut launching.marks);
        end < launching.targets.len()
    }

    /// Step 4, one page: hands the next `limit` commands created to the open
    /// streams of their agents. Returns whether commands remain.
    pub(crate) fn deliver_page(
        &mut self,
        launching: &mut Launching,
        limit: usize,
        now: Instant,
    ) -> bool {
        let end = launching.commands.len().min(launching.delivered + limit);
        for created in &launching.commands[launching.delivered..end] {
            if self.closing {
                break;
            }
            let (Some(agent), Some(command)) = (
                self.agents.get_mut(&created.agent_id),
                self.commands.get_mut(&created.command_id),
            ) else {
                continue;
            };
            // One acknowledged or expired meanwhile is not sent.
            if command.status == CommandStatus::Pending {
                deliver(agent, command, now, &mut self.journal);
            }
        }
        launching.delivered = end;
        end < launching.commands.len()
    }
}
