//! Limits the server holds itself to: the open-file limit (every connection
//! holds a descriptor, so the soft limit is raised to the hard one at start and
//! `max_connections` and `max_streams` are sized from it), the size of a
//! request's head, and a body declared larger than `server.max_body_bytes`.

use axum::body::HttpBody as _;
use axum::extract::Request;
use tracing::{info, warn};

use crate::error::ApiError;

/// The longest request target (path and query) accepted; longer is 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header bytes (names and values) accepted; more is 431. hyper
/// refuses heads past 64 KiB before they are parsed, as a hard cap; this is
/// the exact limit, checked on what was parsed.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Refuses a request head past the limits above.
pub fn check_head_size(request: &Request) -> Result<(), ApiError> {
    let target_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if target_bytes > MAX_URI_BYTES {
        return Err(ApiError::UriTooLong(MAX_URI_BYTES));
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge(MAX_HEADER_BYTES));
    }
    Ok(())
}

/// Answers 413 at once to a request whose `Content-Length` is over
/// `max_body_bytes`, before any of its body is read: with `Expect:
/// 100-continue` the client is never told to send it.
pub fn refuse_declared_oversize(request: &Request, max_body_bytes: usize) -> Result<(), ApiError> {
    // hyper parsed the Content-Length (refusing a malformed or repeated
    // one) and gives it as the body's exact size: no second parse here. A
    // body of unknown length (chunked) has no upper bound and passes, as
    // one without a Content-Length did.
    let declared = request.body().size_hint().upper();
    if declared.is_some_and(|length| length > max_body_bytes as u64) {
        return Err(ApiError::PayloadTooLarge {
            limit: max_body_bytes,
        });
    }
    Ok(())
}

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
