//! gzip on every core, with the same bytes on any number of cores.
//!
//! [`ParGzWriter`] cuts its input into blocks of a fixed size ([`BLOCK_SIZE`], never derived
//! from the machine) and raw-deflates each on a pool of worker threads. Each block is primed
//! with the last 32 KiB of the block before it as the preset dictionary, so matches reach back
//! across block boundaries as they would in one stream, and ends with a sync flush (an empty
//! stored block), which leaves it on a byte boundary; the last block ends the stream instead.
//! Concatenated in order, the blocks are one deflate stream, wrapped in one gzip member with the
//! header `gzip -n` writes (no name, time 0) and the CRC-32 and length of the whole input
//! (the blocks' CRCs combined). Readers see an ordinary single-member gzip file: `gzip -d`,
//! `tar -xzf`, Python's `gzip`, Go's `compress/gzip` (skopeo, umoci).
//!
//! A block's bytes depend only on its data, the 32 KiB before it, the level and whether it is
//! the last, so the output does not depend on the thread count or on how the input was cut
//! into writes (unit-tested). Memory is bounded: at most two blocks per thread are in flight;
//! the writer waits for the oldest before it hands out another.
//!
//! The dictionary costs nothing in ratio beyond the sync markers (5 bytes per MiB) and the
//! matches a block's first bytes could have found further back than 32 KiB, which deflate
//! cannot reach anyway.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// The fixed block size: each block is compressed on its own (with the 32 KiB before it as
/// its dictionary).
pub const BLOCK_SIZE: usize = 1 << 20;

/// deflate's window: the dictionary each block gets from the one before.
const WINDOW: usize = 32 << 10;

/// What a worker returns for one block: the deflate bytes and the CRC of the input.
type Done = io::Result<(Vec<u8>, Crc)>;

/// One block for a worker.
struct Job {
    data: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
    reply: SyncSender<Done>,
}

/// A writer gzip-compressing everything written to it into `W` on several threads; see the
/// module documentation. Call [`ParGzWriter::finish`] to end the stream: dropping the writer
/// without it stops the threads and leaves the output unfinished.
pub struct ParGzWriter<W: Write> {
    out: Option<W>,
    level: Compression,
    block_size: usize,
    /// The block being filled.
    buf: Vec<u8>,
    /// The last [`WINDOW`] bytes of the block before `buf` (empty at the start).
    dict: Vec<u8>,
    jobs: Option<SyncSender<Job>>,
    /// Replies of the blocks in flight, oldest first: they are written in this order.
    pending: VecDeque<Receiver<Done>>,
    max_in_flight: usize,
    workers: Vec<JoinHandle<()>>,
    crc: Crc,
}

impl<W: Write> std::fmt::Debug for ParGzWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParGzWriter")
            .field("level", &self.level.level())
            .field("block_size", &self.block_size)
            .field("threads", &self.workers.len())
            .finish_non_exhaustive()
    }
}

/// The number of threads [`ParGzWriter::new`] uses: every core.
#[must_use]
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

impl<W: Write> ParGzWriter<W> {
    /// A writer at `level` (0-9) on every core, writing the gzip header to `out` now.
    ///
    /// # Errors
    ///
    /// Writing the header failed, or a thread could not be started.
    pub fn new(out: W, level: u32) -> io::Result<Self> {
        Self::with(out, level, threads(), BLOCK_SIZE)
    }

    /// [`ParGzWriter::new`] with an explicit thread count (the bytes do not depend on it) and
    /// block size (they do).
    ///
    /// # Errors
    ///
    /// Writing the header failed, or a thread could not be started.
    pub fn with(mut out: W, level: u32, threads: usize, block_size: usize) -> io::Result<Self> {
        let level = Compression::new(level.min(9));
        let threads = threads.max(1);
        let block_size = block_size.max(WINDOW);
        out.write_all(&header(level))?;
        let (tx, rx) = mpsc::sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("kiln-gzip-{i}"))
                .spawn(move || worker(&rx, level));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    // The started workers end when the queue closes.
                    drop(tx);
                    for h in workers {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Self {
            out: Some(out),
            level,
            block_size,
            buf: Vec::with_capacity(block_size),
            dict: Vec::new(),
            jobs: Some(tx),
            pending: VecDeque::new(),
            max_in_flight: threads * 2,
            workers,
            crc: Crc::new(),
        })
    }

    /// Hands the block in `buf` to the workers (after writing out the oldest blocks while too
    /// many are in flight).
    fn submit(&mut self, last: bool) -> io::Result<()> {
        while self.pending.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.block_size));
        let dict = std::mem::take(&mut self.dict);
        if !last {
            self.dict = data[data.len().saturating_sub(WINDOW)..].to_vec();
        }
        let (reply, done) = mpsc::sync_channel(1);
        let job = Job {
            data,
            dict,
            last,
            reply,
        };
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("the gzip stream is already finished"))?
            .send(job)
            .map_err(|_| io::Error::other("the gzip compression threads have stopped"))?;
        self.pending.push_back(done);
        Ok(())
    }

    /// Waits for the oldest block in flight and writes it out.
    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(done) = self.pending.pop_front() else {
            return Ok(());
        };
        let (bytes, crc) = done
            .recv()
            .map_err(|_| io::Error::other("a gzip compression thread failed"))??;
        self.crc.combine(&crc);
        self.out_mut()?.write_all(&bytes)
    }

    fn out_mut(&mut self) -> io::Result<&mut W> {
        self.out
            .as_mut()
            .ok_or_else(|| io::Error::other("the gzip stream is already finished"))
    }

    /// Compresses what is left, writes the trailer (CRC-32 and length) and returns the inner
    /// writer, not flushed.
    ///
    /// # Errors
    ///
    /// Compressing or writing failed.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
        // ISIZE: the length modulo 2^32, as RFC 1952 has it.
        trailer[4..].copy_from_slice(&self.crc.amount().to_le_bytes());
        self.out_mut()?.write_all(&trailer)?;
        self.stop();
        self.out
            .take()
            .ok_or_else(|| io::Error::other("the gzip stream is already finished"))
    }

    /// Closes the queue and waits for the workers.
    fn stop(&mut self) {
        self.jobs = None;
        self.pending.clear();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl<W: Write> Write for ParGzWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (self.block_size - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.block_size {
            self.submit(false)?;
        }
        Ok(n)
    }

    /// Flushes the inner writer only: the block being filled stays until it is full or the
    /// stream is finished, since cutting it early would change the bytes.
    fn flush(&mut self) -> io::Result<()> {
        self.out_mut()?.flush()
    }
}

impl<W: Write> Drop for ParGzWriter<W> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The gzip header as `gzip -n` writes it: deflate, no flags, time 0, the extra flags of the
/// level (2 at 9, 4 at 1), Unix.
fn header(level: Compression) -> [u8; 10] {
    let xfl = match level.level() {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3]
}

/// A worker: compresses jobs from the shared queue until it closes.
fn worker(jobs: &Mutex<Receiver<Job>>, level: Compression) {
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        let mut crc = Crc::new();
        crc.update(&job.data);
        let done = deflate_block(level, &job.dict, &job.data, job.last).map(|d| (d, crc));
        // The writer may have gone (dropped on an error); nothing waits for this block then.
        let _ = job.reply.send(done);
    }
}

/// Raw-deflates `data` with `dict` as the preset dictionary, ending with a sync flush, or
/// with the end of the stream when `last`.
fn deflate_block(level: Compression, dict: &[u8], data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(level, false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity().max(64 << 10));
        }
        let consumed = usize::try_from(c.total_in()).map_err(io::Error::other)?;
        let status = c
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = usize::try_from(c.total_in()).map_err(io::Error::other)? == data.len();
        // zlib's rule: a flush is complete when it returns with output space left.
        let done = if last {
            status == Status::StreamEnd
        } else {
            all_in && out.len() < out.capacity()
        };
        if done {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// Data that compresses somewhat, with repeats further back than one block and than the
    /// window, so the dictionary matters.
    fn data(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut i: u64 = 7;
        while v.len() < len {
            i = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            v.extend_from_slice(format!("line {} {}\n", i >> 44, i % 977).as_bytes());
            if i.is_multiple_of(13) {
                // Some incompressible bytes too.
                v.extend_from_slice(&i.to_le_bytes());
            }
        }
        v.truncate(len);
        v
    }

    /// A small block size, so a small input makes several blocks.
    const TEST_BLOCK: usize = 64 << 10;

    fn gz(bytes: &[u8], level: u32, threads: usize, piece: usize) -> Vec<u8> {
        let mut w = ParGzWriter::with(Vec::new(), level, threads, TEST_BLOCK).unwrap();
        for chunk in bytes.chunks(piece) {
            w.write_all(chunk).unwrap();
        }
        w.finish().unwrap()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    #[test]
    fn the_bytes_do_not_depend_on_the_thread_count_or_the_writes() {
        let input = data(TEST_BLOCK * 5 + 12_345);
        let one = gz(&input, 9, 1, 7_777);
        assert_eq!(one, gz(&input, 9, 2, 7_777));
        assert_eq!(one, gz(&input, 9, 5, 100_000));
        assert_eq!(one, gz(&input, 9, 3, TEST_BLOCK));
        assert_eq!(gunzip(&one), input);
        assert!(one.len() < input.len() / 2, "{} bytes", one.len());
    }

    #[test]
    fn the_dictionary_keeps_the_ratio_of_one_stream() {
        let input = data(TEST_BLOCK * 8);
        let ours = gz(&input, 6, 2, 65_536);
        let mut one = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        one.write_all(&input).unwrap();
        let one = one.finish().unwrap();
        // Within 1 % of a single stream (without the dictionary, each block restarts cold).
        assert!(
            ours.len() * 100 <= one.len() * 101,
            "{} bytes against {}",
            ours.len(),
            one.len()
        );
    }

    #[test]
    fn header_and_trailer_are_those_of_gzip_n() {
        let input = data(TEST_BLOCK * 2 + 3);
        let out = gz(&input, 9, 2, 4096);
        assert_eq!(out[..10], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]);
        let n = out.len();
        let mut crc = Crc::new();
        crc.update(&input);
        assert_eq!(out[n - 8..n - 4], crc.sum().to_le_bytes());
        assert_eq!(
            out[n - 4..],
            u32::try_from(input.len()).unwrap().to_le_bytes()
        );
        assert_eq!(gz(b"", 6, 2, 1)[8], 0, "level 6 has no extra flag");
    }

    #[test]
    fn empty_and_exact_block_inputs() {
        for len in [0, 1, TEST_BLOCK, TEST_BLOCK * 2] {
            let input = data(len);
            let out = gz(&input, 6, 2, 1000);
            assert_eq!(gunzip(&out), input, "length {len}");
        }
    }

    /// The host's readers: gzip -t, tar -xzf and Python's gzip and tarfile (the tools are on
    /// every build host; the test is skipped, visibly, where they are not).
    #[test]
    fn gzip_tar_and_python_read_it() {
        for tool in ["gzip", "tar", "python3"] {
            if !kiln_host::tools::installed(tool) {
                kiln_testkit::skip(
                    "gzip::gzip_tar_and_python_read_it",
                    &format!("{tool} is not installed"),
                );
                return;
            }
        }
        let d = tempfile::tempdir().unwrap();
        // A tar of a few files, one spanning several blocks.
        let big = data(TEST_BLOCK * 3 + 999);
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in [("a.txt", &b"hello\n"[..]), ("big.bin", &big[..])] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, body).unwrap();
        }
        let tarball = b.into_inner().unwrap();
        let f = d.path().join("t.tgz");
        std::fs::write(&f, gz(&tarball, 9, 3, 10_000)).unwrap();

        kiln_host::Cmd::new("gzip").arg("-t").arg(&f).run().unwrap();
        let x = d.path().join("x");
        std::fs::create_dir(&x).unwrap();
        kiln_host::Cmd::new("tar")
            .arg("-xzf")
            .arg(&f)
            .arg("-C")
            .arg(&x)
            .run()
            .unwrap();
        assert_eq!(std::fs::read(x.join("big.bin")).unwrap(), big);
        let py = kiln_host::Cmd::new("python3")
            .arg("-c")
            .arg(
                "import gzip, hashlib, sys, tarfile\n\
                 raw = gzip.open(sys.argv[1]).read()\n\
                 t = tarfile.open(sys.argv[1], 'r:gz')\n\
                 print(len(raw), sorted(t.getnames()), \
                 hashlib.sha256(t.extractfile('big.bin').read()).hexdigest())",
            )
            .arg(&f)
            .run()
            .unwrap()
            .stdout_str();
        let want = format!(
            "{} ['a.txt', 'big.bin'] {}\n",
            tarball.len(),
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&big))
        );
        assert_eq!(py, want);
    }

    #[test]
    fn dropping_an_unfinished_writer_stops_its_threads() {
        let mut w = ParGzWriter::with(Vec::new(), 6, 4, TEST_BLOCK).unwrap();
        w.write_all(&data(TEST_BLOCK * 3)).unwrap();
        drop(w);
    }

    #[test]
    fn a_failing_output_is_reported() {
        /// Takes the header, then fails as a full disk does.
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if self.0 + b.len() > 10 {
                    return Err(io::Error::new(io::ErrorKind::StorageFull, "full"));
                }
                self.0 += b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = ParGzWriter::with(Full(0), 6, 2, TEST_BLOCK).unwrap();
        let input = data(TEST_BLOCK * 8);
        let r = w.write_all(&input).and_then(|()| w.finish().map(drop));
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::StorageFull);
        assert!(ParGzWriter::with(Full(5), 6, 2, TEST_BLOCK).is_err());
    }
}
