//! The bytes of an MBR partition table, with extended boot records for logical partitions.
//!
//! kiln writes MBR itself (as DIB does) rather than driving a partitioning tool, so the table
//! is exactly what the layout says and the disk id comes from the config. The result is a list
//! of 512-byte records and the byte offsets to write them at: the MBR at 0 and one EBR per
//! logical partition.

use crate::layout::TableLayout;

/// Type byte of the extended partition in the MBR.
pub const EXTENDED_LBA: u8 = 0x0F;
/// Type byte of the link to the next EBR inside the chain.
pub const EXTENDED_LINK: u8 = 0x05;

/// One partition as the MBR encoder needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MbrPart {
    pub boot: bool,
    pub ptype: u8,
}

/// CHS address for an LBA with the usual 255 heads / 63 sectors geometry, clamped to the
/// largest CHS value when it does not fit (as every modern tool does).
fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cyl = lba / (HEADS * SECTORS);
    if cyl > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (lba / SECTORS) % HEADS;
    let sec = lba % SECTORS + 1;
    [
        head as u8,
        (sec as u8 & 0x3F) | ((cyl >> 2) as u8 & 0xC0),
        (cyl & 0xFF) as u8,
    ]
}

/// Writes one 16-byte partition entry into slot 0..4 of a record. `abs_start` is the absolute
/// first sector (for the CHS fields); `rel_start` is what the LBA field holds (absolute in the
/// MBR, relative to the EBR or to the extended partition inside an EBR).
fn entry(
    rec: &mut [u8; 512],
    slot: usize,
    boot: bool,
    ptype: u8,
    abs_start: u64,
    rel_start: u64,
    sectors: u64,
) {
    let off = 446 + slot * 16;
    let e = &mut rec[off..off + 16];
    e[0] = if boot { 0x80 } else { 0x00 };
    e[1..4].copy_from_slice(&chs(abs_start));
    e[4] = ptype;
    e[5..8].copy_from_slice(&chs(abs_start + sectors.saturating_sub(1)));
    e[8..12].copy_from_slice(&u32::try_from(rel_start).unwrap_or(u32::MAX).to_le_bytes());
    e[12..16].copy_from_slice(&u32::try_from(sectors).unwrap_or(u32::MAX).to_le_bytes());
}

fn signed() -> [u8; 512] {
    let mut rec = [0u8; 512];
    rec[510] = 0x55;
    rec[511] = 0xAA;
    rec
}

/// Encodes the MBR and EBRs of a layout. `parts` is parallel to `layout.extents`.
pub(crate) fn encode(
    layout: &TableLayout,
    parts: &[MbrPart],
    disk_id: u32,
) -> Vec<(u64, [u8; 512])> {
    let sector = layout.sector_size;
    let mut mbr = signed();
    mbr[440..444].copy_from_slice(&disk_id.to_le_bytes());
    let mut out = Vec::new();
    let mut slot = 0;
    for (ext, part) in layout.extents.iter().zip(parts) {
        if ext.ebr.is_none() {
            entry(
                &mut mbr,
                slot,
                part.boot,
                part.ptype,
                ext.start,
                ext.start,
                ext.sectors,
            );
            slot += 1;
        }
    }
    if let Some((ext_start, ext_sectors)) = layout.extended {
        entry(
            &mut mbr,
            slot,
            false,
            EXTENDED_LBA,
            ext_start,
            ext_start,
            ext_sectors,
        );
        let logicals: Vec<_> = layout
            .extents
            .iter()
            .zip(parts)
            .filter_map(|(e, p)| e.ebr.map(|ebr| (ebr, e, p)))
            .collect();
        for (i, (ebr, ext, part)) in logicals.iter().enumerate() {
            let mut rec = signed();
            entry(
                &mut rec,
                0,
                part.boot,
                part.ptype,
                ext.start,
                ext.start - ebr,
                ext.sectors,
            );
            if let Some((next_ebr, next, _)) = logicals.get(i + 1) {
                let len = next.start + next.sectors - next_ebr;
                entry(
                    &mut rec,
                    1,
                    false,
                    EXTENDED_LINK,
                    *next_ebr,
                    next_ebr - ext_start,
                    len,
                );
            }
            out.push((ebr * sector, rec));
        }
    }
    out.insert(0, (0, mbr));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_values() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(2048), [32, 33, 0]);
        assert_eq!(chs(100_000_000), [0xFE, 0xFF, 0xFF]);
    }
}
