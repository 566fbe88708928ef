//! The MBR kiln writes, checked byte by byte in a temp file (and by sfdisk when present).

use kiln_blockdev::{NodeKind, RecordingRunner};

use crate::fixtures::{planned, MIB};

const LAYOUT: &str = "\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: boot
        flags: [boot, primary]
        size: 8MiB
        type: '0x83'
      - name: swap
        size: 4MiB
        type: '0x82'
      - name: root
        flags: [boot]
        size: 100%
        mkfs:
          mount:
            mount_point: /
";

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

struct Entry {
    status: u8,
    ptype: u8,
    start: u32,
    sectors: u32,
}

fn entry(sector: &[u8], slot: usize) -> Entry {
    let e = &sector[446 + slot * 16..446 + slot * 16 + 16];
    Entry {
        status: e[0],
        ptype: e[4],
        start: u32_at(e, 8),
        sectors: u32_at(e, 12),
    }
}

#[test]
fn mbr_with_primary_and_logical_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.raw");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();

    let plan = planned(LAYOUT, Some(64 * MIB));
    let mut runner = RecordingRunner::new().redirect_writes("/dev/loop0", &file);
    let created = plan.create(&mut runner).unwrap();
    assert_eq!(
        created.image_block_devices(),
        " [image0]=/dev/loop0 [boot]=/dev/loop0p1 [swap]=/dev/loop0p5 [root]=/dev/loop0p6 "
    );
    created.umount(&mut runner).unwrap();

    let bytes = std::fs::read(&file).unwrap();
    let mbr = &bytes[..512];
    assert_eq!(&mbr[510..512], &[0x55, 0xAA]);
    let NodeKind::PartitionTable { disk_id, .. } = &plan.node("partitioning_image0").unwrap().kind
    else {
        panic!()
    };
    assert_eq!(format!("0x{:08x}", u32_at(mbr, 440)), *disk_id);
    assert_ne!(u32_at(mbr, 440), 0);
    assert!(
        mbr[..440].iter().all(|b| *b == 0),
        "no boot code is written"
    );

    // Primary partition 1 first, then the extended partition to the end of the disk.
    let p1 = entry(mbr, 0);
    assert_eq!(
        (p1.status, p1.ptype, p1.start, p1.sectors),
        (0x80, 0x83, 2048, 8 * 2048)
    );
    let ext = entry(mbr, 1);
    let ext_start = 9 * 2048;
    assert_eq!(
        (ext.status, ext.ptype, ext.start, ext.sectors),
        (0, 0x0F, ext_start, 64 * 2048 - ext_start)
    );
    assert_eq!(entry(mbr, 2).ptype, 0);
    assert_eq!(entry(mbr, 3).ptype, 0);

    // First EBR, at the start of the extended partition: swap (5), then a link to the next EBR.
    let ebr1 = &bytes[ext_start as usize * 512..ext_start as usize * 512 + 512];
    assert_eq!(&ebr1[510..512], &[0x55, 0xAA]);
    let l5 = entry(ebr1, 0);
    assert_eq!(
        (l5.status, l5.ptype, l5.start, l5.sectors),
        (0, 0x82, 2048, 4 * 2048)
    );
    let link = entry(ebr1, 1);
    let ebr2_abs = ext_start + 2048 + 4 * 2048; // the next MiB boundary after swap
    assert_eq!(link.ptype, 0x05);
    assert_eq!(
        link.start,
        ebr2_abs - ext_start,
        "links are relative to the extended start"
    );
    assert_eq!(link.sectors, 64 * 2048 - ebr2_abs);

    // Second EBR: root (6), bootable, to the end; no further link.
    let ebr2 = &bytes[ebr2_abs as usize * 512..ebr2_abs as usize * 512 + 512];
    assert_eq!(&ebr2[510..512], &[0x55, 0xAA]);
    let l6 = entry(ebr2, 0);
    assert_eq!((l6.status, l6.ptype, l6.start), (0x80, 0x83, 2048));
    assert_eq!(l6.sectors, 64 * 2048 - ebr2_abs - 2048);
    assert_eq!(entry(ebr2, 1).ptype, 0);

    // The writes were recorded against the loop device, MBR first.
    let writes = runner.writes();
    assert_eq!(writes.len(), 3);
    assert_eq!(writes[0].1, 0);
    assert!(writes
        .iter()
        .all(|w| w.0.to_str() == Some("/dev/loop0") && w.2.len() == 512));

    // An independent reader agrees, when one is installed.
    cross_check_with_sfdisk(&file, disk_id, ext_start, ebr2_abs);
}

/// `sfdisk` reads the same table as kiln wrote (skipped when sfdisk is not installed).
fn cross_check_with_sfdisk(file: &std::path::Path, disk_id: &str, ext_start: u32, ebr2_abs: u32) {
    let sfdisk = match kiln_host::json::sfdisk(file) {
        Ok(t) => t,
        Err(kiln_host::Error::NotFound { .. }) => {
            eprintln!("sfdisk not installed: skipping the cross-check");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let table = &sfdisk.partitiontable;
    assert_eq!(table.label, "dos");
    assert_eq!(table.id.as_deref(), Some(disk_id));
    let parts: Vec<(String, u64, u64, String)> = table
        .partitions
        .iter()
        .map(|p| {
            (
                p.node.rsplit('/').next().unwrap().to_owned(),
                p.start,
                p.size,
                p.kind.clone(),
            )
        })
        .collect();
    let name = |n: u32| format!("disk.raw{n}");
    assert_eq!(
        parts,
        [
            (name(1), 2048, 8 * 2048, "83".to_owned()),
            (
                name(2),
                u64::from(ext_start),
                u64::from(64 * 2048 - ext_start),
                "f".to_owned()
            ),
            (
                name(5),
                u64::from(ext_start + 2048),
                4 * 2048,
                "82".to_owned()
            ),
            (
                name(6),
                u64::from(ebr2_abs + 2048),
                u64::from(64 * 2048 - ebr2_abs - 2048),
                "83".to_owned()
            ),
        ]
    );
}
