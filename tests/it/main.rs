//! kiln's integration tests: one test binary.
//!
//! Tier 1 (no root, no network): plans, element-info, errors, help. Tier 2 and 3 (root, loop
//! devices, the host's Debian mirror): real builds, teardown checks and boot tests, in `e2e`.

mod cli;
mod e2e;
mod errors;
mod lint;
mod plan;
mod preflight;
mod support;
