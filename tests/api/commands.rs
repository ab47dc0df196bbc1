//! Tests of SPEC.md: commands (to be written).
