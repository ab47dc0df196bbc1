//! The commands already handed to the application, so that none is handed
//! twice when the server sends it again (a replay after a reconnect, SPEC 10).
//! An id is kept until well after its command expired: the server never sends
//! an expired command, so the memory held follows the commands in flight.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

/// How long after `expiresAt` an id is still remembered, for clocks that
/// disagree with the server's.
const GRACE: Duration = Duration::from_secs(600);

/// Command ids seen, each with the moment it may be forgotten.
#[derive(Default)]
pub(crate) struct Seen {
    ids: HashSet<String>,
    by_expiry: BTreeSet<(SystemTime, String)>,
}

impl Seen {
    /// Records `command_id`; false if it was recorded already.
    pub(crate) fn insert(
        &mut self,
        command_id: &str,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> bool {
        self.forget_before(now);
        if self.ids.contains(command_id) {
            return false;
        }
        self.ids.insert(command_id.to_owned());
        self.by_expiry
            .insert((expires_at + GRACE, command_id.to_owned()));
        true
    }

    /// Whether `command_id` was recorded.
    pub(crate) fn contains(&self, command_id: &str) -> bool {
        self.ids.contains(command_id)
    }

    fn forget_before(&mut self, now: SystemTime) {
        while let Some(first) = self.by_expiry.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, id)) = self.by_expiry.pop_first() {
                self.ids.remove(&id);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_taken_once_and_forgotten_after_its_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let expires = now + Duration::from_secs(60);
        let mut seen = Seen::default();
        assert!(seen.insert("a", expires, now));
        assert!(!seen.insert("a", expires, now));
        assert!(seen.insert("b", expires, now));
        let later = expires + GRACE + Duration::from_secs(1);
        assert!(seen.insert("c", later + Duration::from_secs(60), later));
        assert_eq!(seen.len(), 1);
    }
}
