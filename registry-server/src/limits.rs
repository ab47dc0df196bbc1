//! The open-file limit: every SSE stream holds a descriptor, so the server
//! raises its soft limit to the hard one at start and sizes `max_streams` from it.

use tracing::{info, warn};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit now in force.
pub fn raise_open_file_limit() -> u64 {
    let (soft, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            warn!(%err, "the open-file limit could not be read; assuming 1024");
            return 1024;
        }
    };
    match rlimit::increase_nofile_limit(hard) {
        Ok(raised) => {
            info!(soft_before = soft, soft = raised, hard, "open-file limit");
            raised
        }
        Err(err) => {
            warn!(%err, soft, hard, "the open-file limit could not be raised");
            soft
        }
    }
}
