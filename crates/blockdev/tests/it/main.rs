//! Tests of kiln-blockdev through its public API: planning needs no root; creation and
//! teardown run against a recording fake runner. The tests that really create images (root, loop
//! devices) are the separate test binary `root`.

mod execute;
mod fixtures;
mod mbr_bytes;
mod parse;
mod validate;
