//! Where each partition goes: sectors for MBR and GPT tables.
//!
//! Both tables start the first partition 1 MiB into the disk and align every partition start
//! (MBR: to `align`, default 1 MiB; GPT: to 1 MiB). A percentage is of the space still free
//! where the partition starts. MBR logical partitions live in one extended partition that
//! runs to the end of the disk; each is preceded by its EBR, one alignment unit before it.
//! GPT keeps the backup partition array and header free at the end of the disk.

use serde::Serialize;

use crate::size::{human, SizeSpec};

/// The kind of partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableLabel {
    /// A DOS/MBR table, written by kiln itself.
    Mbr,
    /// A GUID partition table, written with `sgdisk`.
    Gpt,
}

impl std::fmt::Display for TableLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TableLabel::Mbr => "mbr",
            TableLabel::Gpt => "gpt",
        })
    }
}

/// What the layout needs to know about one partition.
#[derive(Debug, Clone)]
pub(crate) struct PartReq {
    pub name: String,
    pub size: SizeSpec,
    pub primary: bool,
}

/// Where one partition ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Extent {
    /// Partition number (MBR logical partitions count from 5).
    pub number: u32,
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub sectors: u64,
    /// For an MBR logical partition, the sector of its EBR.
    pub ebr: Option<u64>,
}

/// The computed layout of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableLayout {
    /// Sector size in bytes.
    pub sector_size: u64,
    /// Disk length in sectors.
    pub disk_sectors: u64,
    /// One extent per partition, in config order.
    pub extents: Vec<Extent>,
    /// MBR only: the extended partition (start, sectors), when there are logical partitions.
    pub extended: Option<(u64, u64)>,
}

/// Why a layout cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LayoutError {
    /// Partition `index` does not fit.
    DoesNotFit { index: usize, detail: String },
    /// MBR cannot express this (index of the offending partition, reason).
    Mbr { index: usize, reason: String },
}

/// `v` rounded up to a multiple of `a`; saturates, so that a position past the end of any disk
/// stays past it (and is reported as not fitting) instead of wrapping to a small number.
fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a).saturating_mul(a)
}

/// Number of sectors for a partition, given the free sectors where it starts.
fn sectors_for(size: SizeSpec, free_sectors: u64, sector: u64) -> u64 {
    match size {
        SizeSpec::Bytes(b) => b.div_ceil(sector),
        SizeSpec::Percent(_) => size.resolve(free_sectors.saturating_mul(sector)) / sector,
    }
}

fn overflow(p: &PartReq, start: u64, sectors: u64, end: u64, sector: u64) -> String {
    let free = end.saturating_sub(start) * sector;
    format!(
        "partition `{}` ({}) needs {} at sector {start}, but only {} is left before the end of \
         the usable space",
        p.name,
        p.size,
        human(sectors.saturating_mul(sector)),
        human(free)
    )
}

/// Lays out an MBR table.
pub(crate) fn mbr(
    parts: &[PartReq],
    disk_bytes: u64,
    sector: u64,
    align_bytes: u64,
) -> Result<TableLayout, LayoutError> {
    let align = (align_bytes / sector).max(1);
    let disk_sectors = disk_bytes / sector;
    // Start and length fields are 32 bits.
    let end = disk_sectors.min(u64::from(u32::MAX));
    let n_logical = parts.iter().filter(|p| !p.primary).count();
    let max_primary = if n_logical > 0 { 3 } else { 4 };
    let mut seen_logical = false;
    let mut n_primary = 0;
    for (i, p) in parts.iter().enumerate() {
        if p.primary {
            n_primary += 1;
            if seen_logical {
                return Err(LayoutError::Mbr {
                    index: i,
                    reason: format!(
                        "primary partition `{}` comes after a logical one; list the primary \
                         partitions first",
                        p.name
                    ),
                });
            }
            if n_primary > max_primary {
                return Err(LayoutError::Mbr {
                    index: i,
                    reason: format!(
                        "too many primary partitions (at most {max_primary}{}); drop the \
                         `primary` flag from some so that they become logical partitions",
                        if n_logical > 0 {
                            " when logical partitions are used"
                        } else {
                            ""
                        }
                    ),
                });
            }
        } else {
            seen_logical = true;
        }
    }

    let mut cursor = align;
    let mut extents = Vec::with_capacity(parts.len());
    let mut extended = None;
    let mut next_primary = 1;
    let mut next_logical = 5;
    for (i, p) in parts.iter().enumerate() {
        let (ebr, start, number) = if p.primary {
            let start = align_up(cursor, align);
            let n = next_primary;
            next_primary += 1;
            (None, start, n)
        } else {
            let ebr = align_up(cursor, align);
            if extended.is_none() {
                extended = Some((ebr, end.saturating_sub(ebr)));
            }
            let n = next_logical;
            next_logical += 1;
            (Some(ebr), ebr.saturating_add(align), n)
        };
        let free = end.saturating_sub(start);
        let sectors = sectors_for(p.size, free, sector);
        if sectors == 0 || start.saturating_add(sectors) > end {
            return Err(LayoutError::DoesNotFit {
                index: i,
                detail: overflow(p, start, sectors.max(1), end, sector),
            });
        }
        extents.push(Extent {
            number,
            start,
            sectors,
            ebr,
        });
        cursor = start + sectors;
    }
    Ok(TableLayout {
        sector_size: sector,
        disk_sectors,
        extents,
        extended,
    })
}

/// Lays out a GPT table (128 entries of 128 bytes, primary and backup).
pub(crate) fn gpt(
    parts: &[PartReq],
    disk_bytes: u64,
    sector: u64,
) -> Result<TableLayout, LayoutError> {
    let align = ((1 << 20) / sector).max(1);
    let disk_sectors = disk_bytes / sector;
    let array_sectors = (128u64 * 128).div_ceil(sector);
    // Backup array plus backup header at the end; the first partition starts at 1 MiB.
    let end = disk_sectors.saturating_sub(array_sectors + 1);
    let mut cursor = align.max(2 + array_sectors);
    let mut extents = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        let start = align_up(cursor, align);
        let free = end.saturating_sub(start);
        let sectors = sectors_for(p.size, free, sector);
        if sectors == 0 || start.saturating_add(sectors) > end {
            return Err(LayoutError::DoesNotFit {
                index: i,
                detail: overflow(p, start, sectors.max(1), end, sector),
            });
        }
        extents.push(Extent {
            number: u32::try_from(i + 1).unwrap_or(u32::MAX),
            start,
            sectors,
            ebr: None,
        });
        cursor = start + sectors;
    }
    Ok(TableLayout {
        sector_size: sector,
        disk_sectors,
        extents,
        extended: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::FULL;

    const MIB: u64 = 1 << 20;

    fn req(name: &str, size: SizeSpec, primary: bool) -> PartReq {
        PartReq {
            name: name.into(),
            size,
            primary,
        }
    }

    #[test]
    fn mbr_one_partition_fills_disk() {
        let l = mbr(
            &[req("root", SizeSpec::Percent(FULL), true)],
            64 * MIB,
            512,
            MIB,
        )
        .unwrap();
        assert_eq!(l.extents[0].start, 2048);
        assert_eq!(l.extents[0].sectors, 64 * 2048 - 2048);
        assert_eq!(l.extents[0].number, 1);
    }

    #[test]
    fn mbr_logicals() {
        let l = mbr(
            &[
                req("boot", SizeSpec::Bytes(8 * MIB), true),
                req("a", SizeSpec::Bytes(4 * MIB), false),
                req("b", SizeSpec::Percent(FULL), false),
            ],
            64 * MIB,
            512,
            MIB,
        )
        .unwrap();
        assert_eq!(l.extents[0].start, 2048);
        assert_eq!(l.extents[1].ebr, Some(9 * 2048));
        assert_eq!(l.extents[1].start, 10 * 2048);
        assert_eq!(l.extents[1].number, 5);
        assert_eq!(l.extents[2].ebr, Some(14 * 2048));
        assert_eq!(l.extents[2].start, 15 * 2048);
        assert_eq!(l.extents[2].sectors, 64 * 2048 - 15 * 2048);
        assert_eq!(l.extended, Some((9 * 2048, 64 * 2048 - 9 * 2048)));
    }

    #[test]
    fn percent_is_of_remaining() {
        let l = mbr(
            &[
                req("a", SizeSpec::Percent(FULL / 2), true),
                req("b", SizeSpec::Percent(FULL / 2), true),
            ],
            101 * MIB,
            512,
            MIB,
        )
        .unwrap();
        assert_eq!(l.extents[0].sectors, 50 * 2048);
        assert_eq!(l.extents[1].start, 51 * 2048);
        assert_eq!(l.extents[1].sectors, 25 * 2048);
    }

    #[test]
    fn mbr_errors() {
        let e = mbr(
            &[req("a", SizeSpec::Bytes(64 * MIB), true)],
            64 * MIB,
            512,
            MIB,
        )
        .unwrap_err();
        assert!(matches!(e, LayoutError::DoesNotFit { index: 0, .. }));
        let e = mbr(
            &[
                req("a", SizeSpec::Bytes(MIB), false),
                req("b", SizeSpec::Bytes(MIB), true),
            ],
            64 * MIB,
            512,
            MIB,
        )
        .unwrap_err();
        assert!(matches!(e, LayoutError::Mbr { index: 1, .. }));
        let five: Vec<PartReq> = (0..5)
            .map(|i| req(&i.to_string(), SizeSpec::Bytes(MIB), true))
            .collect();
        assert!(matches!(
            mbr(&five, 64 * MIB, 512, MIB),
            Err(LayoutError::Mbr { index: 4, .. })
        ));
    }

    #[test]
    fn gpt_reserves_backup() {
        let l = gpt(
            &[
                req("ESP", SizeSpec::Bytes(8 * MIB), false),
                req("root", SizeSpec::Percent(FULL), false),
            ],
            64 * MIB,
            512,
        )
        .unwrap();
        assert_eq!(l.extents[0].start, 2048);
        assert_eq!(l.extents[1].start, 9 * 2048);
        assert_eq!(l.extents[1].start + l.extents[1].sectors, 64 * 2048 - 33);
        let e = gpt(&[req("x", SizeSpec::Bytes(63 * MIB), false)], 64 * MIB, 512).unwrap_err();
        assert!(matches!(e, LayoutError::DoesNotFit { .. }));
    }
}
