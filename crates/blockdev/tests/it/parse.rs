//! Parsing, auto-naming, ordering, getvals, commands and fstab of plans.

use kiln_blockdev::{fallback_config, plan, Node, NodeKind, Params, SizeSpec, TableLabel};

use crate::fixtures::{params, planned, EFI, GPT, LVM, MBR, MBR_GRAPH, MIB};

fn names(nodes: &[Node]) -> Vec<&str> {
    nodes.iter().map(|n| n.name.as_str()).collect()
}

/// Nodes without their line numbers, for comparing different spellings of one config.
fn unlined(nodes: &[Node]) -> Vec<Node> {
    nodes
        .iter()
        .cloned()
        .map(|mut n| {
            n.line = None;
            n
        })
        .collect()
}

#[test]
fn dib_auto_naming_example() {
    let p = planned(MBR, None);
    assert_eq!(
        names(p.nodes()),
        [
            "image0",
            "partitioning_image0",
            "root",
            "mkfs_root",
            "mount_mkfs_root",
            "fstab_mount_mkfs_root"
        ]
    );
    assert_eq!(p.node("mkfs_root").unwrap().base, ["root"]);
    assert_eq!(p.node("mount_mkfs_root").unwrap().base, ["mkfs_root"]);
    assert_eq!(
        p.node("fstab_mount_mkfs_root").unwrap().base,
        ["mount_mkfs_root"]
    );
    assert_eq!(p.node("root").unwrap().base, ["partitioning_image0"]);
    assert_eq!(p.node("partitioning_image0").unwrap().base, ["image0"]);
}

#[test]
fn tree_and_graph_forms_are_equivalent() {
    let tree = planned(MBR, Some(64 * MIB));
    let graph = planned(MBR_GRAPH, Some(64 * MIB));
    assert_eq!(unlined(tree.nodes()), unlined(graph.nodes()));
    assert_eq!(tree.commands(), graph.commands());
    assert_eq!(tree.fstab(), graph.fstab());
}

#[test]
fn mixed_form() {
    // Partition in tree form with a nested mkfs; the mount and fstab in graph form.
    let mixed = "\
- local_loop: {name: image0}
- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: root
        flags: [primary]
        size: 100%
        mkfs: {type: ext4}
- mount: {base: mkfs_root, mount_point: /}
- fstab: {base: mount_mkfs_root, fsck-passno: 1}
";
    let p = planned(mixed, None);
    assert_eq!(
        names(p.nodes()),
        [
            "image0",
            "partitioning_image0",
            "root",
            "mkfs_root",
            "mount_mkfs_root",
            "fstab_mount_mkfs_root"
        ]
    );
    assert_eq!(p.fstab(), "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n");
}

#[test]
fn every_plugin_in_tree_form() {
    let p = planned(EFI, Some(2048 * MIB));
    let kinds: Vec<&str> = p.nodes().iter().map(Node::kind_name).collect();
    for k in [
        "local_loop",
        "partitioning",
        "partition",
        "mkfs",
        "mount",
        "fstab",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    match &p.node("ESP").unwrap().kind {
        NodeKind::Partition {
            number,
            ptype,
            size,
            guid,
            start,
            sectors,
            ..
        } => {
            assert_eq!(*number, 1);
            assert_eq!(ptype, "EF00");
            assert_eq!(*size, SizeSpec::Bytes(550 * MIB));
            assert!(guid.is_some());
            assert_eq!(*start, Some(2048));
            assert_eq!(*sectors, Some(550 * 2048));
        }
        other => panic!("{other:?}"),
    }
    match &p.node("partitioning_image0").unwrap().kind {
        NodeKind::PartitionTable {
            label, partitions, ..
        } => {
            assert_eq!(*label, TableLabel::Gpt);
            assert_eq!(partitions, &["ESP", "BSP", "root"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_plugin_in_graph_form() {
    let p = planned(LVM, None);
    let kinds: Vec<&str> = p.nodes().iter().map(Node::kind_name).collect();
    for k in [
        "local_loop",
        "partitioning",
        "partition",
        "lvm pv",
        "lvm vg",
        "lvm lv",
        "mkfs",
        "mount",
        "fstab",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert_eq!(p.node("vg").unwrap().base, ["pv"]);
    assert_eq!(p.node("lv_thin").unwrap().base, ["vg", "lv_pool"]);
    assert_eq!(p.root_label(), "img-rootfs");
    assert_eq!(p.root_fstype(), "xfs");
    assert_eq!(p.mount_points(), ["/", "/boot/efi", "/var"]);
    // The explicit size on the local_loop wins over the (missing) params size.
    assert_eq!(p.image_size(), Some(4096 * MIB));
}

#[test]
fn order_is_topological_with_name_ties_and_sorted_mounts() {
    let p = planned(EFI, None);
    assert_eq!(
        names(p.nodes()),
        [
            "image0",
            "partitioning_image0",
            "ESP",
            "BSP",
            "mkfs_ESP",
            "root",
            "mkfs_root",
            "mount_mkfs_root",
            "fstab_mount_mkfs_root",
            "mount_mkfs_ESP",
            "fstab_mount_mkfs_ESP"
        ]
    );
    let mps: Vec<String> = p
        .mounts()
        .map(|m| match &m.kind {
            NodeKind::Mount { mount_point, .. } => mount_point.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(mps, ["/", "/boot/efi"]);
    assert!(p
        .edges()
        .contains(&("mount_mkfs_root".into(), "mount_mkfs_ESP".into())));
}

#[test]
fn getvals_and_fstab_of_shipped_layouts() {
    let mbr = planned(MBR, None);
    assert_eq!(mbr.root_label(), "cloudimg-rootfs");
    assert_eq!(mbr.root_fstype(), "ext4");
    assert_eq!(mbr.boot_label(), None);
    assert_eq!(mbr.mount_points(), ["/"]);
    assert!(mbr.has_partition_table());
    assert_eq!(mbr.fstab(), "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n");

    let gpt = planned(GPT, None);
    assert_eq!(gpt.fstab(), "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n");

    let efi = planned(EFI, None);
    assert_eq!(
        efi.fstab(),
        "LABEL=cloudimg-rootfs / ext4 defaults 0 1\nLABEL=MKFS_ESP /boot/efi vfat defaults 0 2\n"
    );
    assert_eq!(efi.mount_points(), ["/", "/boot/efi"]);
}

#[test]
fn boot_label_and_uuid_fstab() {
    let text = "\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: boot
        flags: [primary, boot]
        size: 256MiB
        mkfs: {type: ext4, label: boot, mount: {mount_point: /boot, fstab: {}}}
      - name: swap
        flags: [primary]
        size: 64MiB
        mkfs: {type: swap, mount: {mount_point: none, fstab: {}}}
      - name: root
        flags: [primary]
        size: 100%
        mkfs: {label: '', mount: {mount_point: /, fstab: {fsck-passno: 1}}}
";
    let p = planned(text, None);
    assert_eq!(p.boot_label(), Some("boot"));
    assert_eq!(p.mount_points(), ["/", "/boot"]);
    let NodeKind::Mkfs { uuid, .. } = &p.node("mkfs_root").unwrap().kind else {
        panic!()
    };
    assert_eq!(
        p.fstab(),
        format!(
            "UUID={uuid} / ext4 defaults 0 1\nLABEL=boot /boot ext4 defaults 0 2\nLABEL=mkfs_swap none swap sw 0 0\n"
        )
    );
    let cmds = p.commands();
    assert!(cmds
        .iter()
        .any(|c| c.starts_with("mkswap -L mkfs_swap -U ")));
    assert!(!cmds.iter().any(|c| c.contains("mount ${swap}")));
}

#[test]
fn root_params() {
    let p = plan(
        MBR,
        "test.yaml",
        &Params {
            root_fs_type: "xfs".into(),
            root_fs_opts: Some("-K  -f".into()),
            ..params(None)
        },
    )
    .unwrap();
    assert_eq!(p.root_label(), "img-rootfs");
    assert_eq!(p.root_fstype(), "xfs");
    let mkfs = p
        .commands()
        .into_iter()
        .find(|c| c.starts_with("mkfs"))
        .unwrap();
    assert!(
        mkfs.starts_with("mkfs -t xfs -K -f -L img-rootfs -m uuid="),
        "{mkfs}"
    );
    assert!(mkfs.ends_with(" -q ${root}"), "{mkfs}");

    let p = plan(
        MBR,
        "test.yaml",
        &Params {
            root_label: Some("myroot".into()),
            ..params(None)
        },
    )
    .unwrap();
    assert_eq!(p.root_label(), "myroot");

    // An empty ROOT_LABEL means the default.
    let p = plan(
        MBR,
        "test.yaml",
        &Params {
            root_label: Some(String::new()),
            ..params(None)
        },
    )
    .unwrap();
    assert_eq!(p.root_label(), "cloudimg-rootfs");

    // A node that sets its own type and label keeps them.
    let own = MBR.replace(
        "        mkfs:\n",
        "        mkfs:\n          type: btrfs\n          label: mine\n",
    );
    let p = plan(
        &own,
        "test.yaml",
        &Params {
            root_fs_type: "xfs".into(),
            ..params(None)
        },
    )
    .unwrap();
    assert_eq!(p.root_fstype(), "btrfs");
    assert_eq!(p.root_label(), "mine");
}

#[test]
fn fallback_is_a_bare_filesystem() {
    let p = planned(fallback_config(), Some(64 * MIB));
    assert!(!p.has_partition_table());
    assert_eq!(
        names(p.nodes()),
        [
            "image0",
            "mkfs_root",
            "mount_mkfs_root",
            "fstab_mount_mkfs_root"
        ]
    );
    assert_eq!(p.root_label(), "cloudimg-rootfs");
    assert_eq!(p.fstab(), "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n");
    let cmds = p.commands();
    assert_eq!(cmds[0], format!("truncate -s {} /img/image0.raw", 64 * MIB));
    assert_eq!(cmds[1], "losetup --show -f --direct-io=off /img/image0.raw");
    assert!(cmds[2].starts_with("mkfs -t ext4 -L cloudimg-rootfs -U "));
    assert!(cmds[2].ends_with(" -q ${image0}"));
    assert_eq!(cmds[3..], ["mkdir -p /mnt", "mount ${image0} /mnt"]);
}

#[test]
fn commands_of_mbr_gpt_and_efi() {
    let mbr = planned(MBR, Some(64 * MIB));
    let cmds = mbr.commands();
    let NodeKind::PartitionTable { disk_id, .. } = &mbr.node("partitioning_image0").unwrap().kind
    else {
        panic!()
    };
    assert_eq!(
        cmds[2],
        format!("write-mbr ${{image0}} disk-id={disk_id} 1:root:start=2048 sectors=129024:type=0x83:boot")
    );
    assert_eq!(cmds[3], "partx -a ${image0}");
    assert!(cmds[4].starts_with("mkfs -t ext4 -L cloudimg-rootfs -U "));
    assert_eq!(cmds[5..], ["mkdir -p /mnt", "mount ${root} /mnt"]);

    let gpt = planned(GPT, Some(64 * MIB));
    let sg = &gpt.commands()[2];
    assert!(sg.starts_with("sgdisk -o -U "), "{sg}");
    assert!(
        sg.contains(" -n 1:2048:18431 -t 1:EF02 -c 1:BSP -u 1:"),
        "{sg}"
    );
    // root runs to the last usable sector, before the backup GPT (33 sectors).
    let last = 64 * 2048 - 34;
    assert!(
        sg.contains(&format!(" -n 2:18432:{last} -t 2:8300 -c 2:root -u 2:")),
        "{sg}"
    );
    assert!(sg.ends_with(" ${image0}"));

    let efi = planned(EFI, Some(2048 * MIB));
    let cmds = efi.commands();
    assert!(cmds
        .iter()
        .any(|c| c.starts_with("mkfs.vfat -n MKFS_ESP -i ") && c.ends_with(" ${ESP}")));
    let mounts: Vec<&String> = cmds.iter().filter(|c| c.starts_with("mount ")).collect();
    assert_eq!(mounts, ["mount ${root} /mnt", "mount ${ESP} /mnt/boot/efi"]);

    // Without a size, the layout is shown symbolically.
    let unsized_plan = planned(GPT, None);
    assert!(unsized_plan.commands()[2].contains(" -n 2:auto:100% "));
    assert!(unsized_plan.commands()[0].starts_with("truncate -s $IMAGE_SIZE "));
}

#[test]
fn identifiers_are_derived_not_random() {
    let a = planned(EFI, Some(2048 * MIB));
    let b = planned(EFI, Some(2048 * MIB));
    assert_eq!(a.commands(), b.commands());
    let c = planned(&EFI.replace("550MiB", "500MiB"), Some(2048 * MIB));
    let uuid = |p: &kiln_blockdev::Plan| match &p.node("mkfs_root").unwrap().kind {
        NodeKind::Mkfs { uuid, .. } => uuid.clone(),
        _ => unreachable!(),
    };
    assert_eq!(uuid(&a), uuid(&b));
    assert_ne!(uuid(&a), uuid(&c));
    // Moving the config elsewhere does not change the identifiers.
    let d = plan(EFI, "/elsewhere/config.yaml", &params(Some(2048 * MIB))).unwrap();
    assert_eq!(uuid(&a), uuid(&d));
}

/// Every derived identifier of a plan, by node: filesystem UUIDs and vfat serials, the
/// partition table's disk id or GUID, the GPT partition GUIDs.
fn identifiers(p: &kiln_blockdev::Plan) -> Vec<(String, String)> {
    p.nodes()
        .iter()
        .filter_map(|n| {
            match &n.kind {
                NodeKind::Mkfs { uuid, .. } => Some(uuid.clone()),
                NodeKind::PartitionTable { disk_id, .. } => Some(disk_id.clone()),
                NodeKind::Partition { guid, .. } => guid.clone(),
                _ => None,
            }
            .map(|id| (n.name.clone(), id))
        })
        .collect()
}

fn seeded(text: &str, seed: &str) -> kiln_blockdev::Plan {
    let params = Params {
        seed: Some(seed.into()),
        ..params(Some(2048 * MIB))
    };
    plan(text, "test.yaml", &params).unwrap()
}

#[test]
fn identifiers_follow_the_seed() {
    for text in [EFI, MBR, LVM] {
        let a = identifiers(&seeded(text, "build-a"));
        assert!(a.len() >= 2, "{a:?}");
        // The same seed: the same identifiers.
        assert_eq!(a, identifiers(&seeded(text, "build-a")));
        // Another seed: every identifier differs.
        let b = identifiers(&seeded(text, "build-b"));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.0, y.0);
            assert_ne!(x.1, y.1, "{} kept its identifier under another seed", x.0);
        }
        // A seed replaces the layout-derived identifiers.
        assert_ne!(a, identifiers(&planned(text, Some(2048 * MIB))));
    }
    // The seed alone decides: the same seed over a changed layout keeps the root's UUID.
    let root = |p: &kiln_blockdev::Plan| match &p.node("mkfs_root").unwrap().kind {
        NodeKind::Mkfs { uuid, .. } => uuid.clone(),
        _ => unreachable!(),
    };
    assert_eq!(
        root(&seeded(EFI, "s")),
        root(&seeded(&EFI.replace("550MiB", "500MiB"), "s"))
    );
    // Seeded UUIDs are RFC 9562 version 8; the MBR disk id is 0x and 8 hex digits.
    let u = root(&seeded(EFI, "s"));
    assert_eq!(u.len(), 36);
    assert_eq!(&u[14..15], "8");
    let mbr = identifiers(&seeded(MBR, "s"));
    let (_, disk_id) = mbr
        .iter()
        .find(|(_, id)| id.starts_with("0x"))
        .expect("an MBR disk id");
    assert_eq!(disk_id.len(), 10);
    assert!(u32::from_str_radix(&disk_id[2..], 16).is_ok_and(|v| v != 0));
}

#[test]
fn configured_uuid_wins_over_the_seed() {
    let text = EFI.replace(
        "        mkfs:\n          mount:\n            mount_point: /\n",
        "        mkfs:\n          uuid: 0badc0de-0000-4000-8000-000000000001\n          mount:\n            mount_point: /\n",
    );
    assert_ne!(text, EFI);
    for seed in ["one", "two"] {
        let p = seeded(&text, seed);
        let NodeKind::Mkfs { uuid, .. } = &p.node("mkfs_root").unwrap().kind else {
            panic!()
        };
        assert_eq!(uuid, "0badc0de-0000-4000-8000-000000000001");
        assert!(
            p.commands().iter().any(|c| c.starts_with("mkfs -t ext4 ")
                && c.contains(" -U 0badc0de-0000-4000-8000-000000000001 ")),
            "{:#?}",
            p.commands()
        );
    }
}

#[test]
fn lvm_commands() {
    let p = planned(LVM, None);
    let cmds = p.commands();
    let find = |prefix: &str| -> String {
        cmds.iter()
            .find(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {cmds:#?}"))
            .clone()
    };
    assert_eq!(find("pvcreate"), "pvcreate --force ${root}");
    assert_eq!(find("vgcreate"), "vgcreate --force vg ${root}");
    assert_eq!(
        find("lvcreate --name lv_root"),
        "lvcreate --name lv_root -l 28%VG vg"
    );
    assert_eq!(
        find("lvcreate --name lv_var"),
        "lvcreate --name lv_var -L 1024m vg"
    );
    // 1001 MiB rounds up to the 4 MiB extent.
    assert_eq!(
        find("lvcreate --name lv_pool"),
        "lvcreate --name lv_pool --type thin-pool -L 1004m vg"
    );
    assert_eq!(
        find("lvcreate --name lv_thin"),
        "lvcreate --name lv_thin --type thin --thinpool lv_pool -V 500m vg"
    );
    assert!(find("mkfs -t xfs -L img-rootfs").ends_with(" -q ${lv_root}"));
    let pos = |prefix: &str| cmds.iter().position(|c| c.starts_with(prefix)).unwrap();
    assert!(pos("pvcreate") < pos("vgcreate"));
    assert!(pos("vgcreate") < pos("lvcreate --name lv_root"));
    assert!(pos("lvcreate --name lv_pool") < pos("lvcreate --name lv_thin"));
    assert!(p.uses_lvm());
    let programs = p.required_programs();
    for (prog, pkg) in [
        ("lvcreate", "lvm2"),
        ("mkfs.xfs", "xfsprogs"),
        ("mkfs.vfat", "dosfstools"),
        ("sgdisk", "gdisk"),
    ] {
        assert!(
            programs.contains(&(prog.to_owned(), pkg)),
            "{prog} missing from {programs:?}"
        );
    }
    assert_eq!(
        p.fstab(),
        "LABEL=img-rootfs / xfs rw,relatime 0 1\nLABEL=MKFS_ESP /boot/efi vfat defaults 0 2\nLABEL=fs_var /var xfs rw,relatime 0 2\n"
    );
}

#[test]
fn json_has_everything() {
    let p = planned(EFI, Some(2048 * MIB));
    let j = p.to_json();
    assert_eq!(j["root_label"], "cloudimg-rootfs");
    assert_eq!(j["image_size"], 2048 * MIB);
    assert_eq!(j["has_partition_table"], true);
    assert_eq!(j["nodes"][0]["name"], "image0");
    assert_eq!(j["nodes"][0]["kind"], "local_loop");
    assert_eq!(j["nodes"][2]["size"], "550MiB");
    assert!(j["commands"].as_array().unwrap().len() > 5);
    assert!(j["layouts"]["partitioning_image0"]["extents"].is_array());
    assert!(j["fstab"].as_str().unwrap().contains("MKFS_ESP"));
}

#[test]
fn sizes_and_percents_in_configs() {
    let text = "\
- local_loop: {name: image0, size: 100 MiB}
- partitioning:
    base: image0
    label: mbr
    partitions:
      - {name: a, flags: [primary], size: 1.5MiB}
      - {name: b, flags: [primary], size: 50%}
      - {name: c, flags: [primary], size: 100%, mkfs: {mount: {mount_point: /}}}
";
    let text = text.replace("mkfs: {", "mkfs: {name: mkfs_root, ");
    let p = planned(&text, None);
    let place = |n: &str| match &p.node(n).unwrap().kind {
        NodeKind::Partition { start, sectors, .. } => (start.unwrap(), sectors.unwrap()),
        _ => unreachable!(),
    };
    assert_eq!(place("a"), (2048, 3072));
    // b starts at the next MiB (sector 6144) and takes half of what is left.
    assert_eq!(place("b"), (6144, (100 * 2048 - 6144) / 2));
    let (bs, bn) = place("b");
    let c_start = (bs + bn).div_ceil(2048) * 2048;
    assert_eq!(place("c"), (c_start, 100 * 2048 - c_start));
}

#[test]
fn fully_nested_tree() {
    // The partitioning nested in the local_loop takes image0 as its base.
    let nested = "\
- local_loop:
    name: image0
    partitioning:
      label: mbr
      partitions:
        - name: root
          flags: [boot, primary]
          size: 100%
          mkfs:
            mount:
              mount_point: /
              fstab:
                options: defaults
                fsck-passno: 1
";
    let p = planned(nested, Some(64 * MIB));
    let flat = planned(MBR, Some(64 * MIB));
    assert_eq!(names(p.nodes()), names(flat.nodes()));
    assert_eq!(p.node("partitioning_image0").unwrap().base, ["image0"]);
    assert_eq!(p.fstab(), flat.fstab());
}

#[test]
fn unknown_keys_are_tolerated() {
    // DIB ignores keys it does not know; so does kiln (with a warning).
    let p = planned(
        &MBR.replace("    label: mbr\n", "    label: mbr\n    comment: hello\n"),
        None,
    );
    assert!(p.has_partition_table());
}

#[test]
fn plans_and_created_images_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<kiln_blockdev::Plan>();
    send_sync::<kiln_blockdev::Error>();
    send::<kiln_blockdev::Created>();
}

#[test]
fn gpt_type_codes_with_a_0x_prefix_as_in_dibs_ppc64el_layout() {
    let yaml = EFI
        .replace("type: 'EF02'", "type: '0x4100'")
        .replace("type: '8300'", "type: 0x8300");
    let p = planned(&yaml, Some(2048 * MIB));
    for (name, want) in [("BSP", "4100"), ("root", "8300"), ("ESP", "EF00")] {
        match &p.node(name).unwrap().kind {
            NodeKind::Partition { ptype, .. } => assert_eq!(ptype, want, "{name}"),
            other => panic!("{other:?}"),
        }
    }
}
