//! What every request passes before and after it is routed, in one service
//! around the router: the head's size, its Host, a declared body over
//! `server.max_body_bytes`, then cross-site requests and CORS (SPEC 7, 10),
//! in that order; and the API's latencies by route (`metrics`). Each rule
//! lives in its own module ([`limits`], [`host`], [`cross_site`],
//! [`metrics`](crate::metrics)); this only runs them.
//!
//! One service, written out rather than `axum::middleware::from_fn`, and
//! around the router rather than around each route: every layer costs each
//! request a boxed copy of the service under it and boxed futures, and a
//! layer on a route one more of each. Its future is a plain value.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;

use crate::config::ServerConfig;
use crate::cross_site::{CrossSite, Decision, Finish};
use crate::host::{self, LastValidHost};
use crate::limits;
use crate::metrics::{ApiRoutes, Timing};

/// What the checks and the timing need to know.
pub struct Front {
    max_body_bytes: usize,
    cross_site: CrossSite,
    timed: ApiRoutes,
}

impl Front {
    /// The checks `server` asks for, and the timing of the `timed` routes.
    pub fn new(server: &ServerConfig, timed: ApiRoutes) -> Arc<Self> {
        Arc::new(Self {
            max_body_bytes: server.max_body_bytes,
            cross_site: CrossSite::new(server),
            timed,
        })
    }

    /// The answer to a request the checks refuse, or how to finish the
    /// answer of one they let through; `last_host` is its connection's.
    fn admit(&self, request: &Request, last_host: &mut LastValidHost) -> Decision {
        let checked = limits::check_head_size(request)
            .and_then(|()| host::check_host(request, last_host))
            .and_then(|()| limits::refuse_declared_oversize(request, self.max_body_bytes));
        match checked {
            Ok(()) => self.cross_site.decide(request),
            Err(err) => Decision::Answer(err.into_response()),
        }
    }
}

/// Puts [`Front`] around a service (the router).
#[derive(Clone)]
pub struct FrontLayer(Arc<Front>);

impl FrontLayer {
    /// The layer of `front`.
    pub fn new(front: Arc<Front>) -> Self {
        Self(front)
    }
}

impl<S> tower::Layer<S> for FrontLayer {
    type Service = FrontService<S>;

    fn layer(&self, inner: S) -> FrontService<S> {
        FrontService {
            front: self.0.clone(),
            inner,
            last_host: LastValidHost::default(),
        }
    }
}

/// [`Front`] around `S`. Each connection serves its requests with its own
/// clone, which remembers the connection's last valid Host.
#[derive(Clone)]
pub struct FrontService<S> {
    front: Arc<Front>,
    inner: S,
    last_host: LastValidHost,
}

impl<S> tower::Service<Request> for FrontService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, Routed<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let finish = match self.front.admit(&request, &mut self.last_host) {
            Decision::Route(finish) => finish,
            Decision::Answer(answer) => return Either::Left(ready(Ok(answer))),
        };
        let timing = self
            .front
            .timed
            .matching(request.uri().path())
            .map(|route| route.time(request.method()));
        Either::Right(Routed {
            answer: self.inner.call(request),
            finish: Some((finish, timing)),
        })
    }
}

/// A request let through: its answer, then its CORS headers and its timing.
pub struct Routed<F> {
    answer: F,
    finish: Option<(Finish, Option<Timing>)>,
}

impl<F> Future for Routed<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Ok(mut response) = ready!(Pin::new(&mut this.answer).poll(cx));
        if let Some((finish, timing)) = this.finish.take() {
            finish.apply(&mut response);
            if let Some(timing) = timing {
                timing.answered(response.status().as_u16());
            }
        }
        Poll::Ready(Ok(response))
    }
}
