//! Fault injection with real processes. [`chaos`] is the seeded chaos run:
//! a library so that a CI-sized run is a test (`tests/tests/chaos.rs`) and a
//! long run is a binary (`src/bin/chaos.rs`).

pub mod chaos;
