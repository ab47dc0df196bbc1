//! The brake (SPEC 13): when more than `brake_threshold` of the LIVE and STALE
//! agents went STALE within one `stale_after`, the failure is more likely the
//! registry's own network than the agents, so no STALE -> DEAD takes effect
//! until the STALE share falls back to the threshold or `brake_max` passes.
//!
//! Its cost is that of the deadlines it rides on: the recent LIVE -> STALE
//! transitions sit in a window popped as they age out, the counts by status are
//! the journal's, `brake_max` is a scheduled deadline, and the held agents are
//! kept in a list. Nothing walks the fleet.

use std::collections::VecDeque;

use tokio::time::Instant;
use tracing::warn;

use super::{Due, State};
use crate::agent::{AgentId, AgentStatus};
use crate::brake::BrakeChange;
use crate::fleet::FleetEvent;
use crate::schedule::DeadlineKey;

/// The brake's facts: when it engaged, the agents it holds, and the window of
/// recent LIVE -> STALE transitions that decides whether it engages.
pub(crate) struct Brake {
    /// When each LIVE -> STALE of the last `stale_after` took effect, oldest first.
    recent_stale: VecDeque<Instant>,
    /// When the brake engaged; `None` while it is released.
    engaged_at: Option<Instant>,
    /// The `brake_max` deadline, while engaged.
    deadline: Option<DeadlineKey>,
    /// Agents whose STALE -> DEAD came due while the brake was engaged. They
    /// stay STALE with no deadline until the release gives them one.
    held: Vec<AgentId>,
}

impl Brake {
    pub(crate) fn new() -> Self {
        Self {
            recent_stale: VecDeque::new(),
            engaged_at: None,
            deadline: None,
            held: Vec::new(),
        }
    }

    /// When the brake engaged, if it is engaged now.
    pub(crate) fn engaged_at(&self) -> Option<Instant> {
        self.engaged_at
    }

    /// Holds an agent whose STALE -> DEAD came due, if the brake is engaged.
    /// Returns whether it did.
    pub(super) fn hold(&mut self, agent_id: &AgentId) -> bool {
        if self.engaged_at.is_none() {
            return false;
        }
        self.held.push(agent_id.clone());
        true
    }

    /// How many agents the brake holds STALE now.
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }
}

impl State {
    /// Records a LIVE -> STALE at `at`. Transitions are usually recorded in
    /// order; one applied early, when a request touched its agent before the
    /// scheduler did, is slotted in at its place.
    pub(super) fn brake_saw_stale(&mut self, at: Instant) {
        let window = &mut self.brake.recent_stale;
        let place = window.partition_point(|when| *when <= at);
        window.insert(place, at);
    }

    /// Engages or releases the brake as the counts stand at `at`. Called
    /// wherever the LIVE or STALE counts change; costs O(1) but for the
    /// transitions that have aged out of the window since.
    pub(super) fn reconsider_brake(&mut self, at: Instant) {
        let threshold = self.settings.brake_threshold;
        if threshold >= 1.0 {
            return;
        }
        let live = self.journal.stats.agents[AgentStatus::Live.index()];
        let stale = self.journal.stats.agents[AgentStatus::Stale.index()];
        let total = live + stale;
        // Counts are far below 2^52, so the f64 products are exact enough.
        let over_threshold = |count: usize| count as f64 > threshold * total as f64;
        if self.brake.engaged_at.is_some() {
            if !over_threshold(stale) {
                self.release_brake(at);
            }
            return;
        }
        let stale_after = self.settings.stale_after;
        let window = &mut self.brake.recent_stale;
        while window.front().is_some_and(|when| *when + stale_after <= at) {
            window.pop_front();
        }
        // The STALE share must be over the threshold too, or the brake would
        // release at the very instant it engaged (the agents came back since).
        let went_stale = window.len();
        if total >= self.settings.brake_min_agents
            && over_threshold(went_stale)
            && over_threshold(stale)
        {
            self.engage_brake(at, went_stale, total);
        }
    }

    fn engage_brake(&mut self, at: Instant, went_stale: usize, total: usize) {
        let release_at = at + self.settings.brake_max;
        self.brake.engaged_at = Some(at);
        self.brake.deadline = Some(self.deadlines.insert(release_at, Due::Brake));
        let at = self.journal.clock.timestamp(at);
        warn!(
            %at,
            went_stale,
            live_and_stale = total,
            "brake engaged: most agents went STALE at once, more likely the registry's \
             network than the agents; no agent turns DEAD until it releases"
        );
        self.announce_brake(BrakeChange { engaged: true, at });
    }

    /// Releases the brake at `at`: by recovery, or when `brake_max` came due.
    /// Every agent it held gets a deadline at `at`, so that it turns DEAD then
    /// (its `statusChangedAt` is the release), applied in order with the rest.
    pub(super) fn release_brake(&mut self, at: Instant) {
        let Some(engaged_at) = self.brake.engaged_at.take() else {
            return;
        };
        if let Some(key) = self.brake.deadline.take() {
            self.deadlines.schedule.remove(key);
        }
        // The failure braked for is over: only a new wave of STALE engages again.
        self.brake.recent_stale.clear();
        let held = std::mem::take(&mut self.brake.held);
        let mut released = 0;
        for id in held {
            let Some(agent) = self.agents.get_mut(&id) else {
                continue;
            };
            // An agent that revived since (and perhaps went STALE again) has
            // a deadline of its own.
            if agent.status == AgentStatus::Stale && agent.deadline.is_none() {
                agent.deadline = Some(self.deadlines.insert(at, Due::Agent(id)));
                released += 1;
            }
        }
        let held_for = at - engaged_at;
        let at = self.journal.clock.timestamp(at);
        warn!(%at, ?held_for, released, "brake released: held agents turn DEAD now");
        self.announce_brake(BrakeChange { engaged: false, at });
    }

    fn announce_brake(&self, change: BrakeChange) {
        let events = &self.journal.events;
        if events.receiver_count() > 0 {
            // A reader gone since is fine: the change is logged and in the stats.
            let _ = events.send(FleetEvent::Brake(change));
        }
    }
}
