//! Tests of SPEC.md: probes (to be written).
