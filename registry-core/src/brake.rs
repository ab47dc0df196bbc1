//! What the outside sees of the brake (SPEC 13): its engaging and releasing,
//! sent on the fleet's events. The rule itself lives with the state it reads,
//! in `state::brake`.

use serde::Serialize;

use crate::clock::Timestamp;

/// The brake engaged or released: the data of a `brake` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BrakeChange {
    /// Whether it is engaged from `at` on.
    pub engaged: bool,
    /// When it engaged or released.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
}
