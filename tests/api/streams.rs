//! Tests of SPEC.md: streams (to be written).
