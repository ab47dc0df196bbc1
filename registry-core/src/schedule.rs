//! The deadline index: an ordered map of `(when, sequence)` to what is due, so
//! that finding the next due deadline costs a peek at its first entry and
//! handling due work costs in proportion to what is due, never to what is stored.

use std::collections::BTreeMap;

use tokio::time::Instant;

/// Where a scheduled deadline sits in the index; kept by its owner to cancel it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DeadlineKey {
    pub(crate) when: Instant,
    /// Breaks ties between deadlines of the same instant.
    seq: u64,
}

/// Deadlines ordered by instant, each carrying what it is for.
#[derive(Debug)]
pub(crate) struct Schedule<T> {
    queue: BTreeMap<DeadlineKey, T>,
    next_seq: u64,
}

impl<T> Schedule<T> {
    pub(crate) fn new() -> Self {
        Self {
            queue: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// Adds a deadline. Returns its key and whether it is now the earliest one,
    /// in which case the task sleeping until the former earliest must be woken.
    pub(crate) fn insert(&mut self, when: Instant, item: T) -> (DeadlineKey, bool) {
        let key = DeadlineKey {
            when,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let earliest = self.next_due().is_none_or(|first| when < first);
        self.queue.insert(key, item);
        (key, earliest)
    }

    /// Removes a deadline that is no longer wanted.
    pub(crate) fn remove(&mut self, key: DeadlineKey) -> Option<T> {
        self.queue.remove(&key)
    }

    /// The instant of the earliest deadline.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.queue.first_key_value().map(|(key, _)| key.when)
    }

    /// Takes the earliest deadline if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, T)> {
        if self.next_due()? > now {
            return None;
        }
        self.queue.pop_first().map(|(key, item)| (key.when, item))
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn due_deadlines_come_out_in_order_and_future_ones_stay() {
        let start = Instant::now();
        let mut schedule = Schedule::new();
        schedule.insert(start + Duration::from_secs(2), "b");
        let (_, earliest) = schedule.insert(start + Duration::from_secs(1), "a");
        assert!(earliest);
        let (_, earliest) = schedule.insert(start + Duration::from_secs(3), "c");
        assert!(!earliest);

        let now = start + Duration::from_secs(2);
        assert_eq!(schedule.pop_due(now).map(|(_, i)| i), Some("a"));
        assert_eq!(schedule.pop_due(now).map(|(_, i)| i), Some("b"));
        assert_eq!(schedule.pop_due(now), None);
        assert_eq!(schedule.next_due(), Some(start + Duration::from_secs(3)));
    }

    #[test]
    fn a_removed_deadline_never_comes_due() {
        let start = Instant::now();
        let mut schedule = Schedule::new();
        let (key, _) = schedule.insert(start, 1);
        assert_eq!(schedule.remove(key), Some(1));
        assert_eq!(schedule.pop_due(start + Duration::from_secs(1)), None);
        assert_eq!(schedule.len(), 0);
    }
}
