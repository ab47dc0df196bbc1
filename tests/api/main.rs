//! Black-box tests of the registry over HTTP and SSE, one module per part of SPEC.md.

mod agents;
mod auth;
mod brake;
mod caps;
mod commands;
mod errors;
mod fleet;
mod hardening;
mod in_the_wild;
mod lifecycle;
mod limits;
mod openapi;
mod page;
mod probes;
mod rollouts;
mod signing;
mod smoke;
mod streams;
