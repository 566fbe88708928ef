//! kiln's integration tests without root or network (the first tiers of `scripts/test`): plans,
//! element-info, errors, help, the element linter. Real builds and boots are the separate test
//! binary `e2e` (tests/e2e).

mod apt_trust;
mod cli;
mod errors;
mod in_image;
mod lint;
mod plan;
mod preflight;
mod support;
