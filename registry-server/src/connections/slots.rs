//! The connection cap: a slot per open connection, and an index of them by
//! the moment they last became idle, so that admitting a connection at the
//! cap closes the one idle longest, in O(log n) amortized. A request does not
//! touch the index (nor its lock, shared by every connection): an entry's key
//! is no later than the moment its connection last became idle, and eviction
//! corrects the keys it meets. Each connection's own state (idle, receiving a
//! head, busy) and the deadline that follows from it live here too.
//!
//! A connection's phase changes only while its task runs hyper (bytes read,
//! a head parsed, a response done): the task sets its timer to the deadline
//! after each turn of hyper, and a change of phase never wakes it.
//!
//! Locks are taken in one order: the table's, then a connection's state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::handoff::HandOff;

/// Every open connection's slot, and the connections by when they were idle.
pub(super) struct Slots {
    limit: usize,
    timeouts: Timeouts,
    table: Mutex<Table>,
}

/// An entry's key: no later than the moment its connection last became idle,
/// and its id, which makes the key unique.
type IdleKey = (Instant, u64);

struct Table {
    /// Connections holding a slot.
    open: usize,
    /// Each connection holding a slot, under a key no later than the moment
    /// it last became idle (the moment it was when the key was made).
    by_idle: BTreeMap<IdleKey, Weak<Connection>>,
    next_id: u64,
}

impl Table {
    /// Closes the connection idle (or receiving a head) longest and takes
    /// its slot back; false when every connection is busy. An entry whose
    /// connection became idle again since its key was made goes back under
    /// that moment: each entry is moved at most once for each time its
    /// connection became idle.
    fn evict_idle_longest(&mut self) -> bool {
        let mut busy = Vec::new();
        let evicted = loop {
            let Some(((at, id), entry)) = self.by_idle.pop_first() else {
                break false;
            };
            // Its task gives the slot back before the connection is dropped.
            let Some(connection) = entry.upgrade() else {
                continue;
            };
            let mut state = connection.lock();
            if let Phase::Busy = state.phase {
                busy.push(((at, id), entry));
            } else if state.idle_since > at {
                state.indexed_at = Some(state.idle_since);
                self.by_idle.insert((state.idle_since, id), entry);
            } else {
                // No other entry's key, nor the moment its connection became
                // idle, is earlier than this one's.
                state.indexed_at = None;
                drop(state);
                connection.evict.cancel();
                self.open -= 1;
                break true;
            }
        };
        self.by_idle.extend(busy);
        evicted
    }
}

/// What admitting a new connection did.
pub(super) enum Admission {
    /// Admitted, with a slot of its own.
    Admitted(Arc<Connection>),
    /// Admitted after closing the connection idle longest.
    AdmittedByEviction(Arc<Connection>),
    /// At the cap with no idle connection: the new one must be closed.
    Refused,
}

impl Slots {
    /// Room for `limit` connections (at least one), each closed after `timeouts`.
    pub(super) fn new(limit: usize, timeouts: Timeouts) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            timeouts,
            table: Mutex::new(Table {
                open: 0,
                by_idle: BTreeMap::new(),
                next_id: 0,
            }),
        })
    }

    /// Takes a slot for a connection just accepted, idle (it has sent nothing
    /// yet); at the cap, closes the connection idle longest to make room.
    pub(super) fn admit(self: &Arc<Self>) -> Admission {
        let mut table = self.lock();
        let mut evicted = false;
        if table.open >= self.limit {
            if !table.evict_idle_longest() {
                return Admission::Refused;
            }
            evicted = true;
        }
        table.open += 1;
        let id = table.next_id;
        table.next_id += 1;
        let now = Instant::now();
        let connection = Arc::new(Connection {
            slots: self.clone(),
            id,
            evict: CancellationToken::new(),
            state: Mutex::new(State {
                phase: Phase::Idle { since: now },
                in_flight: 0,
                idle_since: now,
                indexed_at: Some(now),
            }),
            changed: Notify::new(),
            handoff: HandOff::default(),
        });
        table.by_idle.insert((now, id), Arc::downgrade(&connection));
        drop(table);
        if evicted {
            Admission::AdmittedByEviction(connection)
        } else {
            Admission::Admitted(connection)
        }
    }

    /// Connections holding a slot now.
    pub(super) fn open(&self) -> usize {
        self.lock().open
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent at every step, so a panic elsewhere
        // while it was held leaves nothing to repair.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection's place in [`Slots`], and what it is doing.
pub(super) struct Connection {
    slots: Arc<Slots>,
    /// Its key's second half in the index.
    id: u64,
    /// Cancelled when the connection is closed to make room for a new one.
    pub(super) evict: CancellationToken,
    state: Mutex<State>,
    /// Woken when a stream is ready to leave hyper.
    pub(super) changed: Notify,
    /// A response body to be written past hyper, once hyper wrote its head.
    pub(super) handoff: HandOff,
}

struct State {
    phase: Phase,
    /// Requests whose response is not finished (one at a time in HTTP/1.1).
    in_flight: u32,
    /// When it last became idle (accepted, or its last response finished).
    idle_since: Instant,
    /// Its key's instant in the index while it holds a slot; none once its
    /// slot was given up (evicted, or closed).
    indexed_at: Option<Instant>,
}

/// What a connection is doing, for its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// No request in progress and no byte of a next one.
    Idle { since: Instant },
    /// The first bytes of a request head arrived; the head is not complete.
    Head { since: Instant },
    /// A request is in progress: its body, its handler, or its response (an
    /// open stream is a response in progress).
    Busy,
}

impl Phase {
    /// When a connection in this phase is to be closed; none while busy.
    fn deadline(self, timeouts: Timeouts) -> Option<Instant> {
        match self {
            Phase::Idle { since } => Some(since + timeouts.idle),
            Phase::Head { since } => Some(since + timeouts.head),
            Phase::Busy => None,
        }
    }
}

/// The two timeouts of a connection that is not busy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// From the first byte of a head to its end.
    pub(crate) head: Duration,
    /// From the end of the last response (or the accept) to the first byte of the next head.
    pub(crate) idle: Duration,
}

impl Connection {
    /// What it is doing now.
    pub(super) fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// When it is to be closed unless its phase changes first; none while
    /// busy. Its task sets its timer to it.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.phase().deadline(self.slots.timeouts)
    }

    /// The timeouts it is held to.
    pub(super) fn timeouts(&self) -> Timeouts {
        self.slots.timeouts
    }

    /// Bytes arrived: while idle, they start a head, whose deadline then runs.
    pub(super) fn bytes_arrived(&self) {
        let mut state = self.lock();
        if let Phase::Idle { .. } = state.phase {
            state.phase = Phase::Head {
                since: Instant::now(),
            };
        }
    }

    /// A request head was parsed: the connection is busy until its response ends.
    pub(super) fn request_started(&self) {
        let mut state = self.lock();
        state.in_flight += 1;
        state.phase = Phase::Busy;
    }

    /// A response ended (or its request was abandoned): idle again when none is left.
    pub(super) fn request_finished(&self) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            let now = Instant::now();
            state.phase = Phase::Idle { since: now };
            state.idle_since = now;
        }
    }

    /// The connection closed: gives its slot back, unless an eviction already took it.
    pub(super) fn release(&self) {
        let mut table = self.slots.lock();
        let mut state = self.lock();
        if let Some(at) = state.indexed_at.take() {
            table.by_idle.remove(&(at, self.id));
            table.open -= 1;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        head: Duration::from_secs(10),
        idle: Duration::from_secs(75),
    };

    fn admitted(admission: Admission) -> Arc<Connection> {
        match admission {
            Admission::Admitted(connection) | Admission::AdmittedByEviction(connection) => {
                connection
            }
            Admission::Refused => panic!("refused"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_connection_idle_longest_is_evicted_else_the_new_one_refused() {
        let slots = Slots::new(3, TIMEOUTS);
        let first = admitted(slots.admit());
        let second = admitted(slots.admit());
        let third = admitted(slots.admit());
        // The first goes busy then idle again: now the second is idle longest.
        first.request_started();
        tokio::time::advance(Duration::from_secs(1)).await;
        first.request_finished();
        third.request_started();

        let fourth = slots.admit();
        assert!(matches!(fourth, Admission::AdmittedByEviction(_)));
        assert!(second.evict.is_cancelled());
        assert!(!first.evict.is_cancelled());
        assert_eq!(slots.open(), 3);
        // The evicted one's task ends later: its slot is not given back twice.
        second.release();
        assert_eq!(slots.open(), 3);

        let fourth = admitted(fourth);
        fourth.request_started();
        first.request_started();
        assert!(matches!(slots.admit(), Admission::Refused));
        for connection in [&first, &third, &fourth] {
            connection.request_finished();
            connection.release();
        }
        assert_eq!(slots.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_evicted_as_its_request_starts_gives_its_slot_once() {
        let slots = Slots::new(1, TIMEOUTS);
        let first = admitted(slots.admit());
        let second = admitted(slots.admit());
        assert!(first.evict.is_cancelled());
        first.request_started();
        first.request_finished();
        first.release();
        assert_eq!(slots.open(), 1);
        second.release();
        assert_eq!(slots.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_follows_the_phase() {
        let timeouts = TIMEOUTS;
        let slots = Slots::new(1, timeouts);
        let connection = admitted(slots.admit());
        let start = Instant::now();
        assert_eq!(connection.deadline(), Some(start + timeouts.idle));
        tokio::time::advance(Duration::from_secs(30)).await;
        connection.bytes_arrived();
        let head_start = Instant::now();
        assert_eq!(connection.deadline(), Some(head_start + timeouts.head));
        // More bytes of the same head do not move it.
        tokio::time::advance(Duration::from_secs(5)).await;
        connection.bytes_arrived();
        assert_eq!(connection.deadline(), Some(head_start + timeouts.head));
        connection.request_started();
        assert_eq!(connection.deadline(), None);
        connection.bytes_arrived();
        assert_eq!(connection.phase(), Phase::Busy);
        connection.request_finished();
        assert_eq!(connection.deadline(), Some(Instant::now() + timeouts.idle));
    }

    /// Whether the connection's task was woken since the last call.
    async fn woken(connection: &Connection) -> bool {
        tokio::time::timeout(Duration::ZERO, connection.changed.notified())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_of_phase_never_wakes_the_task() {
        let slots = Slots::new(1, TIMEOUTS);
        let connection = admitted(slots.admit());
        tokio::time::advance(Duration::from_secs(1)).await;
        connection.bytes_arrived();
        connection.request_started();
        connection.request_finished();
        assert!(!woken(&connection).await);
    }
}
