//! xz compression for the LXC and Incus outputs: on every core, and deterministic.
//!
//! liblzma's multithreaded encoder cuts its input into blocks of a fixed size and compresses
//! each on its own, writing the block sizes into the block headers. The output therefore
//! depends on the input, the preset and the block size only, never on how many threads ran
//! (a unit test checks one thread against four). The block size is fixed here, not derived
//! from the machine; liblzma is built from the source bundled with the crate (feature
//! `static`), so a host's own liblzma version cannot change the bytes either.
//!
//! Measured with the same liblzma (host `xz -T2 --block-size=16MiB`) on the test suite's
//! debian-minimal root filesystem tar (260 MB, two busy shared cores): preset 6 gives 64.8 MB,
//! preset 3 71.2 MB in less than half the time. kiln keeps xz's default, 6, as distrobuilder's
//! images have it; 16 MiB blocks keep both cores busy on a tree of a few hundred MB.

use std::io::Write;

use liblzma::stream::{Check, MtStreamBuilder};
use liblzma::write::XzEncoder;

/// The xz preset (xz's default level).
pub const PRESET: u32 = 6;

/// The fixed block size: every block is compressed independently of the others.
pub const BLOCK_SIZE: u64 = 16 << 20;

/// An xz encoder writing to `out` with [`PRESET`] and [`BLOCK_SIZE`] on every core (at most
/// 16 threads).
pub fn encoder<W: Write>(out: W) -> std::io::Result<XzEncoder<W>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(16));
    encoder_with(out, threads as u32, BLOCK_SIZE)
}

/// [`encoder`] with an explicit thread count (the bytes do not depend on it) and block size.
pub fn encoder_with<W: Write>(
    out: W,
    threads: u32,
    block_size: u64,
) -> std::io::Result<XzEncoder<W>> {
    let stream = MtStreamBuilder::new()
        .threads(threads.max(1))
        .block_size(block_size)
        .preset(PRESET)
        .check(Check::Crc64)
        .encoder()
        .map_err(std::io::Error::other)?;
    Ok(XzEncoder::new_stream(out, stream))
}

/// Compresses `bytes` in memory (small files: the metadata tarballs).
pub fn compress(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut e = encoder(Vec::new())?;
    e.write_all(bytes)?;
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// Data of a few blocks that compresses somewhat (text with varying numbers).
    fn data(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut i: u64 = 0;
        while v.len() < len {
            i = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            v.extend_from_slice(format!("line {} {}\n", i >> 40, i % 977).as_bytes());
        }
        v.truncate(len);
        v
    }

    /// A small block size, so that a small input makes several blocks (the production size
    /// differs only in scale).
    const TEST_BLOCK: u64 = 1 << 20;

    fn xz(bytes: &[u8], threads: u32) -> Vec<u8> {
        let mut e = encoder_with(Vec::new(), threads, TEST_BLOCK).unwrap();
        // Written in odd-sized pieces, as a tar stream arrives.
        for chunk in bytes.chunks(12_345) {
            e.write_all(chunk).unwrap();
        }
        e.finish().unwrap()
    }

    #[test]
    fn the_bytes_do_not_depend_on_the_thread_count() {
        let input = data((TEST_BLOCK as usize) * 2 + 100_003);
        let one = xz(&input, 1);
        assert_eq!(one, xz(&input, 4));
        assert_eq!(one, xz(&input, 2));
        assert!(one.len() < input.len() / 2, "{} bytes", one.len());
        // The host's xz reads it back (a real client of the format), and so does liblzma.
        let mut back = Vec::new();
        liblzma::read::XzDecoder::new(one.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, input);
        if kiln_host::tools::installed("xz") {
            let d = tempfile::tempdir().unwrap();
            let f = d.path().join("x.xz");
            std::fs::write(&f, &one).unwrap();
            let out = kiln_host::Cmd::new("xz")
                .args(["-d", "-c"])
                .arg(&f)
                .run()
                .unwrap();
            assert!(out.stdout == input, "xz -d gave other bytes");
            // Three blocks: the fixed size, not one stream.
            let list = kiln_host::Cmd::new("xz")
                .args(["--robot", "-l"])
                .arg(&f)
                .run()
                .unwrap()
                .stdout_str();
            let blocks = list
                .lines()
                .find(|l| l.starts_with("file\t"))
                .and_then(|l| l.split('\t').nth(2))
                .unwrap()
                .to_string();
            assert_eq!(blocks, "3", "{list}");
        }
    }

    #[test]
    fn small_input_in_memory() {
        let c = compress(b"hello\n").unwrap();
        assert_eq!(&c[..6], b"\xfd7zXZ\0");
        let mut back = String::new();
        liblzma::read::XzDecoder::new(c.as_slice())
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "hello\n");
    }
}
