//! Tests of SPEC.md: agents (to be written).
