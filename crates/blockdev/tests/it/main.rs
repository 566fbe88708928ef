//! Tests of kiln-blockdev through its public API: planning needs no root; creation and
//! teardown run against a recording fake runner; `root` has the two tests that really
//! create images, and skip loudly when not run as root with loop devices.

mod execute;
mod fixtures;
mod mbr_bytes;
mod parse;
mod root;
mod validate;
