//! Tests of SPEC.md: errors (to be written).
