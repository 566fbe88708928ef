//! kiln's integration tests without root or network (the first tiers of `scripts/test`): plans,
//! element-info, errors, help, the element linter, the pipeline through a recording host. Real builds and boots are the separate test
//! binary `e2e` (tests/e2e).

mod apt_trust;
mod boot_interrupt;
mod bootstrap;
mod cli;
mod errors;
mod fuzz;
mod hostile;
mod in_image;
mod keys;
mod lint;
mod lock;
mod locked;
mod matrix;
mod pipeline;
mod plan;
mod preflight;
mod publish;
mod release;
mod support;
mod verify;
