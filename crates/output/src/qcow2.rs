//! A native writer of compressed qcow2 images, compressing on every core.
//!
//! `qemu-img convert -c` spends most of a cold build's output step deflating clusters at zlib's
//! default level (about 27 s for a 1.5 GB debian-minimal image on two cores here). This writer
//! makes the same kind of file (qcow2 version 3 or 2, zlib-compressed clusters that any qemu
//! reads) from the raw image in one pass: holes are skipped with `SEEK_DATA`, all-zero clusters
//! stay unallocated, every other cluster is deflated by a pool of threads (raw deflate with a
//! 4 KiB window, the format qemu's decompressor expects), and a cluster that does not shrink is
//! stored as it is. The file is laid out deterministically: header, L1 table, the clusters in
//! guest order, the L2 tables, then the refcount table and blocks, so the same raw image always
//! gives the same bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::mpsc::{channel, sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use flate2::{Compress, Compression, Decompress, FlushCompress, Status};

use crate::clusters::{self, Index, Memo};

/// Options of the native writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// log2 of the cluster size (9..=21; 16, i.e. 64 KiB, as qemu-img).
    pub cluster_bits: u32,
    /// qcow2 version: 3 (`compat=1.1`, qemu-img's default) or 2 (`compat=0.10`).
    pub version: u32,
    /// zlib level, 1 (fastest) to 9 (smallest).
    pub level: u32,
    /// Compressing threads (0: one per core).
    pub threads: usize,
}

/// The level kiln uses unless told otherwise: measured on a debian-minimal image, level 3 is
/// within 2 % of qemu-img's size (level 6) at less than half the CPU time.
pub const DEFAULT_LEVEL: u32 = 3;

impl Default for Options {
    fn default() -> Self {
        Self {
            cluster_bits: 16,
            version: 3,
            level: DEFAULT_LEVEL,
            threads: 0,
        }
    }
}

impl Options {
    /// Reads qemu-img's `-o` options (`compat=1.1,cluster_size=65536,compression_type=zlib`).
    /// `None` when an option is one only qemu-img implements (the caller then runs qemu-img).
    pub fn from_qemu_img_options(opts: Option<&str>, level: u32) -> Option<Self> {
        let mut o = Self {
            level,
            ..Self::default()
        };
        for kv in opts
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.trim().is_empty())
        {
            let (k, v) = kv.split_once('=')?;
            match (k.trim(), v.trim()) {
                ("compat", "1.1" | "v3") => o.version = 3,
                ("compat", "0.10" | "v2") => o.version = 2,
                ("compression_type", "zlib") => {}
                ("cluster_size", v) => {
                    let n = parse_cluster_size(v)?;
                    if !n.is_power_of_two() || !(512..=2 << 20).contains(&n) {
                        return None;
                    }
                    o.cluster_bits = n.trailing_zeros();
                }
                _ => return None,
            }
        }
        Some(o)
    }
}

fn parse_cluster_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mult) = match v.chars().last()? {
        'k' | 'K' => (&v[..v.len() - 1], 1 << 10),
        'M' => (&v[..v.len() - 1], 1 << 20),
        _ => (v, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

/// What a conversion produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Guest clusters that hold data.
    pub data_clusters: u64,
    /// Of those, clusters stored uncompressed (they did not shrink).
    pub raw_clusters: u64,
    /// Of those, clusters whose stored form was taken from an earlier image
    /// ([`crate::clusters`]) rather than compressed again.
    pub reused_clusters: u64,
    /// Size of the qcow2 file.
    pub file_bytes: u64,
}

const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;

/// A cluster to compress: its place in the stream, its guest index, its bytes.
type Job = (usize, u64, Vec<u8>);

enum Packed {
    Compressed(Vec<u8>),
    Raw(Vec<u8>),
}

/// Deflates one cluster the way qemu expects (raw deflate, 4 KiB window); `Raw` when the result
/// is not smaller than the cluster.
fn pack(c: &mut Compress, cluster: Vec<u8>, out: &mut Vec<u8>) -> Packed {
    c.reset();
    out.clear();
    out.reserve(cluster.len() + 64);
    let ok = matches!(
        c.compress_vec(&cluster, out, FlushCompress::Finish),
        Ok(Status::StreamEnd)
    );
    if ok && out.len() < cluster.len() {
        Packed::Compressed(out.clone())
    } else {
        Packed::Raw(cluster)
    }
}

/// The byte ranges of `f` (of length `len`) that may hold data, from `SEEK_DATA`/`SEEK_HOLE`;
/// the whole file where the filesystem cannot say.
fn data_ranges(f: &File, len: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let end = i64::try_from(len).unwrap_or(i64::MAX);
    while pos < end {
        let start = match lseek(fd, pos, Whence::SeekData) {
            Ok(s) => s,
            // No data after pos.
            Err(nix::errno::Errno::ENXIO) => break,
            // The filesystem cannot say: read everything from here.
            Err(_) => {
                out.push((pos as u64, len));
                break;
            }
        };
        let stop = lseek(fd, start, Whence::SeekHole).unwrap_or(end).min(end);
        if stop <= start {
            break;
        }
        out.push((start as u64, stop as u64));
        pos = stop;
    }
    out
}

/// Guest clusters touched by the data ranges, in order.
fn data_clusters(ranges: &[(u64, u64)], cluster_bits: u32) -> Vec<u64> {
    let mut v: Vec<u64> = Vec::new();
    for &(a, b) in ranges {
        let first = a >> cluster_bits;
        let last = (b - 1) >> cluster_bits;
        let from = match v.last() {
            Some(&l) if l >= first => l + 1,
            _ => first,
        };
        v.extend(from..=last);
    }
    v
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> crate::Error + '_ {
    move |source| crate::Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Host-cluster reference counts, grown on demand.
struct Refcounts(Vec<u16>);

impl Refcounts {
    fn add(&mut self, cluster: u64) {
        let i = cluster as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, 0);
        }
        self.0[i] = self.0[i].saturating_add(1);
    }
}

/// Writes `dest` as a compressed qcow2 image of the raw image `raw`.
pub fn write(raw: &Path, dest: &Path, opts: &Options) -> Result<Stats, crate::Error> {
    write_reusing(raw, dest, opts, None, &mut Index::new("", opts))
}

/// [`write`], taking the stored form of every cluster whose content `memo`'s earlier image
/// holds from there (checked byte for byte, see [`crate::clusters`]), and recording every data
/// cluster in `index`. The file is the same as [`write`] makes.
pub fn write_reusing(
    raw: &Path,
    dest: &Path,
    opts: &Options,
    memo: Option<&Memo>,
    index: &mut Index,
) -> Result<Stats, crate::Error> {
    let src = File::open(raw).map_err(io_err(raw))?;
    let raw_len = src.metadata().map_err(io_err(raw))?.len();
    let virtual_size = raw_len.div_ceil(512) * 512;
    let cb = opts.cluster_bits;
    let cs = 1u64 << cb;
    let guest_clusters = virtual_size.div_ceil(cs);
    let l2_entries = cs / 8;
    let l1_size = guest_clusters.div_ceil(l2_entries).max(1);
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    let data_start = (1 + l1_clusters) * cs;

    let out = File::create(dest).map_err(io_err(dest))?;
    let mut l2: BTreeMap<u64, u64> = BTreeMap::new();
    let mut refs = Refcounts(Vec::new());
    // The header and the L1 table.
    (0..=l1_clusters).for_each(|c| refs.add(c));
    let mut stats = Stats::default();
    let mut pos = data_start;

    let clusters = data_clusters(&data_ranges(&src, raw_len), cb);
    let threads = thread_count(opts);
    let level = opts.level.clamp(1, 9);

    let result: Result<u64, crate::Error> = std::thread::scope(|scope| {
        // Reader → workers (bounded, so memory stays at a few clusters per thread).
        let (job_tx, job_rx) = sync_channel::<Job>(threads * 8);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = channel::<Done>();
        let src = &src;
        let clusters = &clusters;
        let reader = scope.spawn(move || read_clusters(src, clusters, raw_len, cb, &job_tx));
        for _ in 0..threads {
            let rx: Arc<Mutex<Receiver<Job>>> = Arc::clone(&job_rx);
            let tx = done_tx.clone();
            scope.spawn(move || compress_worker(&rx, &tx, level, memo));
        }
        drop(done_tx);

        // Writer: in guest order, compressed clusters packed back to back.
        let mut pending: BTreeMap<usize, Done> = BTreeMap::new();
        let mut next = 0usize;
        let mut w = io::BufWriter::with_capacity(4 << 20, &out);
        {
            use std::io::Seek;
            w.seek(io::SeekFrom::Start(data_start))
                .map_err(io_err(dest))?;
        }
        for done in done_rx {
            pending.insert(done.seq, done);
            while let Some(done) = pending.remove(&next) {
                next += 1;
                let entry = place(done, &mut w, &mut pos, cb, &mut l2, &mut refs, &mut stats)
                    .map_err(io_err(dest))?;
                index.clusters.push(entry);
            }
        }
        // The padding up to the next cluster keeps the metadata aligned.
        pad_to_cluster(&mut w, &mut pos, cs).map_err(io_err(dest))?;
        w.flush().map_err(io_err(dest))?;
        match reader.join() {
            Ok(r) => r.map_err(io_err(raw)),
            Err(_) => Err(crate::Error::Io {
                path: raw.to_path_buf(),
                source: io::Error::other("the reading thread failed"),
            }),
        }
    });
    // Every cluster sent out must have come back (a worker that died leaves a gap).
    if result? != stats.data_clusters {
        return Err(crate::Error::Io {
            path: dest.to_path_buf(),
            source: io::Error::other("a compressing thread stopped early"),
        });
    }

    // L2 tables, one cluster each, for every L1 entry that maps anything.
    let l1 = write_l2_tables(&out, dest, &l2, l1_size, cb, &mut pos, &mut refs)?;

    // Refcount blocks (16-bit entries) and the table that points at them.
    let (table_off, table, end) = write_refcounts(&out, dest, &mut refs, pos, cb)?;

    let l1_bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
    out.write_all_at(&l1_bytes, cs).map_err(io_err(dest))?;
    let header = header(
        opts.version,
        cb,
        virtual_size,
        l1_size,
        cs,
        table_off,
        table,
    );
    out.write_all_at(&header, 0).map_err(io_err(dest))?;
    out.set_len(end).map_err(io_err(dest))?;
    stats.file_bytes = end;
    Ok(stats)
}

/// Writes one cluster's stored form at the end of the data (`pos`, advanced): compressed
/// clusters packed back to back, uncompressed ones on a cluster boundary; maps it in `l2`,
/// counts it, and returns what the index records of it.
fn place(
    done: Done,
    w: &mut io::BufWriter<&File>,
    pos: &mut u64,
    cb: u32,
    l2: &mut BTreeMap<u64, u64>,
    refs: &mut Refcounts,
    stats: &mut Stats,
) -> io::Result<clusters::Entry> {
    stats.data_clusters += 1;
    stats.reused_clusters += u64::from(done.reused);
    let (bytes, raw) = match done.packed {
        Packed::Compressed(bytes) => (bytes, false),
        Packed::Raw(bytes) => {
            stats.raw_clusters += 1;
            pad_to_cluster(w, pos, 1 << cb)?;
            (bytes, true)
        }
    };
    let off = *pos;
    w.write_all(&bytes)?;
    *pos += bytes.len() as u64;
    let entry = if raw {
        refs.add(off >> cb);
        off | COPIED
    } else {
        compressed_entry(off, bytes.len() as u64, cb, refs)
    };
    l2.insert(done.cluster, entry);
    Ok(clusters::Entry {
        crc: done.crc,
        offset: off,
        len: bytes.len() as u32,
        raw,
    })
}

/// The compressing threads: `opts.threads`, or one per core when it is 0.
fn thread_count(opts: &Options) -> usize {
    if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    } else {
        opts.threads
    }
}

/// The L2 descriptor of a compressed cluster of `len` bytes at `off`; counts the host
/// clusters its sectors touch.
fn compressed_entry(off: u64, len: u64, cb: u32, refs: &mut Refcounts) -> u64 {
    let csize_shift = 62 - (cb - 8);
    let offset_mask = (1u64 << csize_shift) - 1;
    let first_sector = off >> 9;
    let last_sector = (off + len - 1) >> 9;
    let extra = last_sector - first_sector;
    // qemu counts the whole sectors the descriptor names.
    let start = first_sector << 9;
    let end = (last_sector + 1) << 9;
    for hc in (start >> cb)..=((end - 1) >> cb) {
        refs.add(hc);
    }
    COMPRESSED | (extra << csize_shift) | (off & offset_mask)
}

/// Writes zeros from `pos` up to the next cluster boundary.
fn pad_to_cluster(w: &mut io::BufWriter<&File>, pos: &mut u64, cs: u64) -> io::Result<()> {
    let aligned = pos.div_ceil(cs) * cs;
    let pad = vec![0u8; (aligned - *pos) as usize];
    w.write_all(&pad)?;
    *pos = aligned;
    Ok(())
}

/// The reading thread: every cluster with data, in guest order, sent to the compressors
/// (all-zero clusters are skipped). Returns how many were sent.
fn read_clusters(
    src: &File,
    clusters: &[u64],
    raw_len: u64,
    cb: u32,
    job_tx: &std::sync::mpsc::SyncSender<Job>,
) -> io::Result<u64> {
    let cs = 1u64 << cb;
    let mut seq = 0;
    for &c in clusters {
        let mut buf = vec![0u8; cs as usize];
        let off = c << cb;
        let want = (raw_len.saturating_sub(off)).min(cs) as usize;
        src.read_exact_at(&mut buf[..want], off)?;
        if buf.iter().all(|&b| b == 0) {
            continue;
        }
        if job_tx.send((seq, c, buf)).is_err() {
            break;
        }
        seq += 1;
    }
    Ok(seq as u64)
}

/// A cluster back from a compressing thread: its place in the stream, its guest index, the
/// CRC-32 of its content, its stored form, and whether that came from an earlier image.
struct Done {
    seq: usize,
    cluster: u64,
    crc: u32,
    packed: Packed,
    reused: bool,
}

/// One compressing thread: raw deflate with the 4 KiB window qemu's reader expects, unless
/// `memo`'s earlier image holds the same content (then its stored form, checked).
fn compress_worker(
    rx: &Mutex<Receiver<Job>>,
    tx: &std::sync::mpsc::Sender<Done>,
    level: u32,
    memo: Option<&Memo>,
) {
    let mut c = Compress::new_with_window_bits(Compression::new(level), false, 12);
    let mut inflate = Decompress::new(false);
    let mut scratch = Vec::new();
    loop {
        let job = rx.lock().map(|r| r.recv());
        let Ok(Ok((seq, cluster, buf))) = job else {
            break;
        };
        let crc = clusters::crc(&buf);
        let earlier = memo.and_then(|m| m.find(crc, &buf, &mut inflate, &mut scratch));
        let reused = earlier.is_some();
        let packed = match earlier {
            Some(Ok(bytes)) => Packed::Compressed(bytes),
            Some(Err(())) => Packed::Raw(buf),
            None => pack(&mut c, buf, &mut scratch),
        };
        let done = Done {
            seq,
            cluster,
            crc,
            packed,
            reused,
        };
        if tx.send(done).is_err() {
            break;
        }
    }
}

/// Writes the L2 tables at `pos` (advanced past them) and returns the L1 table.
fn write_l2_tables(
    out: &File,
    dest: &Path,
    l2: &BTreeMap<u64, u64>,
    l1_size: u64,
    cb: u32,
    pos: &mut u64,
    refs: &mut Refcounts,
) -> Result<Vec<u64>, crate::Error> {
    let cs = 1u64 << cb;
    let l2_entries = cs / 8;
    let mut l1 = vec![0u64; l1_size as usize];
    let mut tables: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (&cluster, &entry) in l2 {
        let t = tables
            .entry(cluster / l2_entries)
            .or_insert_with(|| vec![0u8; cs as usize]);
        let i = ((cluster % l2_entries) * 8) as usize;
        t[i..i + 8].copy_from_slice(&entry.to_be_bytes());
    }
    for (idx, table) in &tables {
        out.write_all_at(table, *pos).map_err(io_err(dest))?;
        l1[*idx as usize] = *pos | COPIED;
        refs.add(*pos >> cb);
        *pos += cs;
    }
    Ok(l1)
}

/// Writes the refcount blocks (16-bit entries) and the table that points at them at `pos`;
/// they count themselves, so they are sized until the numbers settle. Returns the table's
/// offset, its size in clusters, and the end of the file.
fn write_refcounts(
    out: &File,
    dest: &Path,
    refs: &mut Refcounts,
    pos: u64,
    cb: u32,
) -> Result<(u64, u64, u64), crate::Error> {
    let cs = 1u64 << cb;
    let rb_entries = cs / 2;
    let used = pos >> cb;
    let (mut blocks, mut table) = (0u64, 0u64);
    loop {
        let total = used + blocks + table;
        let nb = total.div_ceil(rb_entries);
        let nt = (nb * 8).div_ceil(cs);
        if nb == blocks && nt == table {
            break;
        }
        (blocks, table) = (nb, nt);
    }
    let table_off = pos;
    let blocks_off = table_off + table * cs;
    for c in used..used + table + blocks {
        refs.add(c);
    }
    let mut table_bytes = vec![0u8; (table * cs) as usize];
    for b in 0..blocks {
        let mut block = vec![0u8; cs as usize];
        for i in 0..rb_entries {
            let c = (b * rb_entries + i) as usize;
            if let Some(&r) = refs.0.get(c) {
                let j = (i * 2) as usize;
                block[j..j + 2].copy_from_slice(&r.to_be_bytes());
            }
        }
        let off = blocks_off + b * cs;
        out.write_all_at(&block, off).map_err(io_err(dest))?;
        let j = (b * 8) as usize;
        table_bytes[j..j + 8].copy_from_slice(&off.to_be_bytes());
    }
    out.write_all_at(&table_bytes, table_off)
        .map_err(io_err(dest))?;
    let end = blocks_off + blocks * cs;
    Ok((table_off, table, end))
}

fn header(
    version: u32,
    cluster_bits: u32,
    size: u64,
    l1_size: u64,
    cs: u64,
    refcount_table: u64,
    refcount_table_clusters: u64,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(104);
    h.extend_from_slice(b"QFI\xfb");
    h.extend_from_slice(&version.to_be_bytes());
    h.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
    h.extend_from_slice(&0u32.to_be_bytes()); // backing file size
    h.extend_from_slice(&cluster_bits.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
    h.extend_from_slice(&(l1_size as u32).to_be_bytes());
    h.extend_from_slice(&cs.to_be_bytes()); // L1 table offset: the second cluster
    h.extend_from_slice(&refcount_table.to_be_bytes());
    h.extend_from_slice(&(refcount_table_clusters as u32).to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
    h.extend_from_slice(&0u64.to_be_bytes());
    if version >= 3 {
        h.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
        h.extend_from_slice(&0u64.to_be_bytes()); // compatible features
        h.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
        h.extend_from_slice(&4u32.to_be_bytes()); // refcount order: 16-bit
        h.extend_from_slice(&104u32.to_be_bytes()); // header length
    }
    // Followed by zeros: the end of the (empty) header extension list.
    h.extend_from_slice(&[0u8; 8]);
    h
}

/// The `qcow2` output: compressed with kiln's own writer when the options allow it (see
/// [`Options::from_qemu_img_options`]), otherwise converted by qemu-img (`-c` unless `-u`).
#[derive(Debug)]
pub struct Qcow2;

impl Qcow2 {
    /// kiln's own writer's options, when it (rather than qemu-img) writes this qcow2.
    pub fn native(opts: &crate::Options) -> Option<Options> {
        if !opts.compress {
            return None;
        }
        opts.qcow2_level.and_then(|level| {
            Options::from_qemu_img_options(opts.qemu_img_options.as_deref(), level)
        })
    }
}

impl crate::Producer for Qcow2 {
    fn produce(&self, raw: &Path, pending: &Path, opts: &crate::Options) -> crate::Result<()> {
        if let Some(o) = Self::native(opts) {
            let Some(reuse) = &opts.qcow2_reuse else {
                write(raw, pending, &o)?;
                return Ok(());
            };
            let memo = reuse
                .earlier
                .iter()
                .find_map(|(image, index)| Memo::open(image, index, &reuse.writer, &o));
            let mut index = Index::new(&reuse.writer, &o);
            let stats = write_reusing(raw, pending, &o, memo.as_ref(), &mut index)?;
            tracing::info!(
                "qcow2: {} data clusters, {} stored uncompressed, {} taken from an earlier image, {} bytes",
                stats.data_clusters,
                stats.raw_clusters,
                stats.reused_clusters,
                stats.file_bytes
            );
            index.reused = stats.reused_clusters;
            // The index is a hint for the next build: not writing it fails nothing.
            if let Err(e) = index.save(&reuse.index_out) {
                tracing::warn!("qcow2: the cluster index was not written: {e}");
            }
            return Ok(());
        }
        crate::qemu_img::QemuImg { driver: "qcow2" }.convert(raw, pending, opts, opts.compress)
    }

    fn runs_tools(&self, opts: &crate::Options) -> bool {
        Self::native(opts).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_qemu_img_options() {
        assert_eq!(
            Options::from_qemu_img_options(None, 3),
            Some(Options::default())
        );
        let o = Options::from_qemu_img_options(Some("compat=0.10,cluster_size=128k"), 6).unwrap();
        assert_eq!((o.version, o.cluster_bits, o.level), (2, 17, 6));
        assert!(Options::from_qemu_img_options(Some("compression_type=zstd"), 3).is_none());
        assert!(Options::from_qemu_img_options(Some("preallocation=full"), 3).is_none());
        assert!(Options::from_qemu_img_options(Some("cluster_size=1000"), 3).is_none());
    }

    #[test]
    fn clusters_of_ranges_merge_and_stay_ordered() {
        let v = data_clusters(&[(0, 10), (100, 70_000), (200_000, 200_001)], 16);
        assert_eq!(v, vec![0, 1, 3]);
    }

    #[test]
    fn pack_falls_back_to_raw_for_noise() {
        let mut c = Compress::new_with_window_bits(Compression::new(3), false, 12);
        let mut s = Vec::new();
        let noise = noise(0x9e37_79b9_7f4a_7c15, 65536);
        assert!(matches!(pack(&mut c, noise, &mut s), Packed::Raw(_)));
        assert!(matches!(
            pack(&mut c, vec![7u8; 65536], &mut s),
            Packed::Compressed(b) if b.len() < 1000
        ));
    }

    /// `len` bytes that do not compress (xorshift from `seed`).
    fn noise(mut x: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn qemu_img(args: &[&str]) -> Option<kiln_host::Captured> {
        kiln_host::Cmd::new("qemu-img")
            .args(args)
            .run_unchecked()
            .ok()
    }

    /// A raw image with holes, zero clusters written out, text, noise and a short tail.
    fn sample_raw(path: &Path) {
        let f = File::create(path).unwrap();
        let len: u64 = (24 << 20) + 4096 + 512;
        f.set_len(len).unwrap();
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {i} of a text file\n").into_bytes())
            .collect();
        f.write_all_at(&text, 3 << 20).unwrap();
        f.write_all_at(&vec![0u8; 1 << 20], 6 << 20).unwrap();
        f.write_all_at(&noise(42, 3 << 20), (9 << 20) + 777)
            .unwrap();
        f.write_all_at(b"tail", len - 4).unwrap();
    }

    /// Writes `raw` with an index by `writer`, reusing `memo`; returns the file's bytes, the
    /// stats and the index's path.
    fn write_indexed(
        raw: &Path,
        dest: &Path,
        opts: &Options,
        memo: Option<&Memo>,
    ) -> (Vec<u8>, Stats, std::path::PathBuf) {
        let mut index = Index::new("kiln-test", opts);
        let stats = write_reusing(raw, dest, opts, memo, &mut index).unwrap();
        let path = dest.with_extension("idx");
        index.save(&path).unwrap();
        (std::fs::read(dest).unwrap(), stats, path)
    }

    #[test]
    fn reused_clusters_give_the_file_a_fresh_conversion_gives() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.raw"), d.path().join("b.raw"));
        sample_raw(&a);
        // b: a with one cluster changed, one cluster's content moved elsewhere, new noise and
        // new text (a rebuild after a small change).
        std::fs::copy(&a, &b).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
        f.write_all_at(b"changed by the rebuild", (3 << 20) + 70_000)
            .unwrap();
        let moved: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&moved, 12 << 20).unwrap();
        f.write_all_at(&noise(7, 200_000), 15 << 20).unwrap();
        drop(f);
        let opts = Options {
            threads: 2,
            ..Options::default()
        };
        let (_, a_stats, a_idx) = write_indexed(&a, &d.path().join("a.qcow2"), &opts, None);
        assert_eq!(a_stats.reused_clusters, 0);
        let fresh = d.path().join("fresh.qcow2");
        write(&b, &fresh, &opts).unwrap();
        let fresh = std::fs::read(&fresh).unwrap();

        let memo = Memo::open(&d.path().join("a.qcow2"), &a_idx, "kiln-test", &opts).unwrap();
        let (reused, stats, _) = write_indexed(&b, &d.path().join("b.qcow2"), &opts, Some(&memo));
        assert!(reused == fresh, "the reusing writer made other bytes");
        // Everything but the changed and new clusters came from a.
        assert!(stats.reused_clusters > 0);
        assert!(
            stats.reused_clusters + 6 >= stats.data_clusters,
            "{stats:?}"
        );
        assert!(stats.reused_clusters < stats.data_clusters, "{stats:?}");
        // Raw (noise) clusters are reused too.
        assert!(stats.raw_clusters > 0);

        // A damaged earlier image costs reuse, never correctness.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.path().join("a.qcow2"))
            .unwrap();
        let len = f.metadata().unwrap().len();
        for off in (3 << 16..len / 2).step_by(40_000) {
            f.write_all_at(b"\xffdamage\x00", off).unwrap();
        }
        drop(f);
        let memo = Memo::open(&d.path().join("a.qcow2"), &a_idx, "kiln-test", &opts).unwrap();
        let (again, damaged, _) = write_indexed(&b, &d.path().join("c.qcow2"), &opts, Some(&memo));
        assert!(again == fresh, "a damaged earlier image changed the output");
        assert!(
            damaged.reused_clusters < stats.reused_clusters,
            "{damaged:?}"
        );
    }

    /// The sample raw image in `dir`, written with the default options and indexed: (raw,
    /// qcow2, its bytes, its index).
    fn indexed_sample(
        dir: &Path,
    ) -> (
        std::path::PathBuf,
        std::path::PathBuf,
        Vec<u8>,
        std::path::PathBuf,
    ) {
        let raw = dir.join("a.raw");
        sample_raw(&raw);
        let img = dir.join("a.qcow2");
        let (bytes, _, idx) = write_indexed(&raw, &img, &Options::default(), None);
        (raw, img, bytes, idx)
    }

    #[test]
    fn index_entries_that_cannot_describe_a_stored_cluster_are_dropped() {
        let d = tempfile::tempdir().unwrap();
        let (raw, img, fresh, idx) = indexed_sample(d.path());
        let opts = Options::default();
        let file_len = fresh.len() as u64;
        // Every entry made hostile: huge, empty, past the end, raw but short.
        let mut index: Index = serde_json::from_slice(&std::fs::read(&idx).unwrap()).unwrap();
        for (i, e) in index.clusters.iter_mut().enumerate() {
            match i % 4 {
                0 => e.len = u32::MAX,
                1 => e.len = 0,
                2 => e.offset = file_len,
                _ => {
                    e.raw = true;
                    e.len = 100;
                }
            }
        }
        index.save(&idx).unwrap();
        let memo = Memo::open(&img, &idx, "kiln-test", &opts).unwrap();
        assert!(memo.by_crc.is_empty());
        let (again, stats, _) = write_indexed(&raw, &d.path().join("b.qcow2"), &opts, Some(&memo));
        assert!(again == fresh);
        assert_eq!(stats.reused_clusters, 0);
    }

    #[test]
    fn an_index_of_another_writer_level_or_cluster_size_is_not_used() {
        let d = tempfile::tempdir().unwrap();
        let (_, img, _, idx) = indexed_sample(d.path());
        let opts = Options::default();
        assert!(Memo::open(&img, &idx, "kiln-test", &opts).is_some());
        assert!(Memo::open(&img, &idx, "another kiln", &opts).is_none());
        for other in [
            Options {
                level: 6,
                ..Options::default()
            },
            Options {
                cluster_bits: 17,
                ..Options::default()
            },
        ] {
            assert!(Memo::open(&img, &idx, "kiln-test", &other).is_none());
        }
        std::fs::write(&idx, b"{not an index").unwrap();
        assert!(Memo::open(&img, &idx, "kiln-test", &opts).is_none());
    }

    #[test]
    fn qemu_reads_what_we_write() {
        if qemu_img(&["--version"]).is_none() {
            kiln_testkit::skip(
                "qcow2::qemu_reads_what_we_write",
                "qemu-img is not installed",
            );
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("disk.raw");
        sample_raw(&raw);
        for (name, opts) in [
            ("v3-64k", Options::default()),
            (
                "v2-64k",
                Options {
                    version: 2,
                    ..Options::default()
                },
            ),
            (
                "v3-4k",
                Options {
                    cluster_bits: 12,
                    threads: 3,
                    ..Options::default()
                },
            ),
            (
                "v3-2m",
                Options {
                    cluster_bits: 21,
                    level: 9,
                    ..Options::default()
                },
            ),
        ] {
            let q = d.path().join(format!("{name}.qcow2"));
            let st = write(&raw, &q, &opts).unwrap();
            assert!(
                st.raw_clusters > 0 && st.data_clusters > st.raw_clusters,
                "{name}: {st:?}"
            );
            let q = q.to_str().unwrap();
            let check = qemu_img(&["check", "-f", "qcow2", q]).unwrap();
            assert!(
                check.status.success(),
                "{name}: {}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
            let cmp = qemu_img(&[
                "compare",
                "-f",
                "raw",
                "-F",
                "qcow2",
                raw.to_str().unwrap(),
                q,
            ])
            .unwrap();
            assert!(
                cmp.status.success(),
                "{name}: {}{}",
                String::from_utf8_lossy(&cmp.stdout),
                String::from_utf8_lossy(&cmp.stderr)
            );
            let info = kiln_host::json::qemu_img_info(Path::new(q)).unwrap();
            assert_eq!(info.format, "qcow2", "{name}");
            assert_eq!(info.virtual_size, (24u64 << 20) + 4608, "{name}");
        }
        // The same input gives the same bytes.
        let a = d.path().join("a.qcow2");
        let b = d.path().join("b.qcow2");
        write(
            &raw,
            &a,
            &Options {
                threads: 1,
                ..Options::default()
            },
        )
        .unwrap();
        write(
            &raw,
            &b,
            &Options {
                threads: 4,
                ..Options::default()
            },
        )
        .unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    }

    #[test]
    fn kilns_qcow2_is_the_same_for_the_same_disk_under_another_umask_and_tz() {
        let d = tempfile::tempdir().unwrap();
        let disk = crate::testutil::sparse_disk(d.path());
        let ty = crate::OutputType::parse("qcow2").unwrap();
        let opts = crate::Options {
            compress: true,
            qcow2_level: Some(DEFAULT_LEVEL),
            source_date_epoch: Some(1),
            ..crate::Options::default()
        };
        let here = d.path().join("a.qcow2");
        let there = d.path().join("b.qcow2");
        crate::produce(ty, &disk, &here, &opts).unwrap();
        crate::testutil::produce_elsewhere("qcow2", &disk, &there, Some(1));
        assert_eq!(
            std::fs::read(crate::pending_path(&here)).unwrap(),
            std::fs::read(crate::pending_path(&there)).unwrap()
        );
    }

    #[test]
    fn qcow2_output_native_or_qemu_img() {
        if qemu_img(&["--version"]).is_none() {
            kiln_testkit::skip(
                "qcow2::qcow2_output_native_or_qemu_img",
                "qemu-img is not installed",
            );
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let disk = crate::testutil::sparse_disk(d.path());
        let ty = crate::OutputType::parse("qcow2").unwrap();
        let native = crate::Options {
            compress: true,
            qcow2_level: Some(DEFAULT_LEVEL),
            ..crate::Options::default()
        };
        assert!(ty.tools(&native).is_empty());
        for (name, opts) in [
            ("native", native.clone()),
            (
                "qemu-img-compressed",
                crate::Options {
                    qcow2_level: None,
                    ..native.clone()
                },
            ),
            (
                "uncompressed",
                crate::Options {
                    compress: false,
                    ..native.clone()
                },
            ),
            (
                "zstd",
                crate::Options {
                    qemu_img_options: Some("compression_type=zstd".into()),
                    ..native.clone()
                },
            ),
        ] {
            if name != "native" {
                assert_eq!(ty.tools(&opts), ["qemu-img"], "{name}");
            }
            let dest = d.path().join(format!("{name}.qcow2"));
            crate::produce(ty, &disk, &dest, &opts).unwrap();
            let pending = crate::pending_path(&dest);
            let info = kiln_host::json::qemu_img_info(&pending).unwrap();
            assert_eq!(info.format, "qcow2", "{name}");
            crate::testutil::qemu_img_compare(&disk, &pending);
        }
    }
}
