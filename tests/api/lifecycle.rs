//! Tests of SPEC.md: lifecycle (to be written).
