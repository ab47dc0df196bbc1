//! The checks every request passes before it is routed, in one layer: the
//! head's size, its Host, a declared body over `server.max_body_bytes`, then
//! cross-site requests and CORS (SPEC 7, 10), in that order. Each rule lives
//! in its own module ([`limits`], [`host`], [`cross_site`]); this only runs
//! them. One layer rather than one each: every layer costs each request a
//! boxed copy of the service under it and a boxed future, about a tenth of
//! what a heartbeat cost when there were four.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::ServerConfig;
use crate::cross_site::{self, CrossSite};
use crate::{host, limits};

/// What the checks need to know.
pub struct Front {
    max_body_bytes: usize,
    cross_site: CrossSite,
}

impl Front {
    /// The checks `server` asks for.
    pub fn new(server: &ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            max_body_bytes: server.max_body_bytes,
            cross_site: CrossSite::new(server),
        })
    }
}

/// Middleware running the checks in front of everything else, tokens included.
pub async fn check(State(front): State<Arc<Front>>, request: Request, next: Next) -> Response {
    let checked = limits::check_head_size(&request)
        .and_then(|()| host::check_host(&request))
        .and_then(|()| limits::refuse_declared_oversize(&request, front.max_body_bytes));
    match checked {
        Ok(()) => cross_site::check(&front.cross_site, request, next).await,
        Err(err) => err.into_response(),
    }
}
