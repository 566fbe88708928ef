//! Every config error is found at plan time, has its own variant, and says where and what to do.

use std::fmt::Write as _;

use kiln_blockdev::{plan, At, Error};

use crate::fixtures::{params, EFI, GPT, MBR, MIB};

fn err(text: &str) -> Error {
    err_sized(text, None)
}

fn err_sized(text: &str, size: Option<u64>) -> Error {
    match plan(text, "DIB_BLOCK_DEVICE_CONFIG", &params(size)) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "message is not one line: {msg}");
            assert!(
                msg.starts_with("DIB_BLOCK_DEVICE_CONFIG"),
                "no source in: {msg}"
            );
            e
        }
    }
}

fn line(e: &Error) -> Option<u32> {
    let at: &At = match e {
        Error::Yaml { at, .. }
        | Error::NotAList { at, .. }
        | Error::UnknownPlugin { at, .. }
        | Error::MultiKeyNode { at, .. }
        | Error::DuplicateName { at, .. }
        | Error::MissingBase { at, .. }
        | Error::WrongBase { at, .. }
        | Error::MissingKey { at, .. }
        | Error::InvalidValue { at, .. }
        | Error::DuplicateLabel { at, .. }
        | Error::LabelTooLong { at, .. }
        | Error::DuplicateMountPoint { at, .. }
        | Error::PartitionsDoNotFit { at, .. }
        | Error::PrimaryOnGpt { at, .. }
        | Error::BadMbrLayout { at, .. } => at,
        _ => return None,
    };
    at.line
}

const TAIL: &str = "\
- mkfs:
    name: mkfs_root
    base: image0
    mount:
      mount_point: /
";

#[test]
fn malformed_yaml() {
    let e = err("- local_loop:\n    name: image0\n  - bad: [\n");
    assert!(matches!(e, Error::Yaml { .. }), "{e:?}");
    assert!(line(&e).is_some());
    assert!(e.to_string().contains("malformed YAML"), "{e}");
    assert!(e.to_string().contains("fix the YAML syntax"), "{e}");
}

#[test]
fn not_a_list() {
    let e = err("local_loop: {name: image0}\n");
    assert!(matches!(e, Error::NotAList { .. }), "{e:?}");
    let e = err("- just a string\n");
    assert!(matches!(e, Error::NotAList { .. }), "{e:?}");
}

#[test]
fn unknown_plugin() {
    let e = err(&format!(
        "- local_loop: {{name: image0}}\n- partitionning: {{base: image0}}\n{TAIL}"
    ));
    assert!(matches!(e, Error::UnknownPlugin { .. }), "{e:?}");
    assert_eq!(line(&e), Some(2));
    let msg = e.to_string();
    assert!(
        msg.starts_with("DIB_BLOCK_DEVICE_CONFIG:2: unknown block-device plugin `partitionning`"),
        "{msg}"
    );
    assert!(msg.contains("did you mean `partitioning`"), "{msg}");
    assert!(
        msg.contains("local_loop, partitioning, lvm, mkfs, mount, fstab"),
        "{msg}"
    );
}

#[test]
fn multi_key_node() {
    let e = err("- local_loop: {name: image0}\n  mkfs: {type: ext4}\n");
    assert!(
        matches!(e, Error::MultiKeyNode { ref keys, .. } if keys == &["local_loop", "mkfs"]),
        "{e:?}"
    );
    assert_eq!(line(&e), Some(1));
    assert!(e.to_string().contains("exactly one plugin key"));
}

#[test]
fn duplicate_node_name() {
    let e = err(&format!(
        "- local_loop: {{name: image0}}\n- local_loop: {{name: image0}}\n{TAIL}"
    ));
    assert!(
        matches!(e, Error::DuplicateName { ref name, first_line: Some(1), .. } if name == "image0"),
        "{e:?}"
    );
    assert_eq!(line(&e), Some(2));
    // A partition may not share a name with another node either.
    let e = err(&MBR.replace("name: root", "name: image0"));
    assert!(matches!(e, Error::DuplicateName { .. }), "{e:?}");
}

#[test]
fn edge_to_missing_node() {
    let e = err(&TAIL
        .replace("base: image0", "base: imagee0")
        .replace("- mkfs", "- local_loop: {name: image0}\n- mkfs"));
    match &e {
        Error::MissingBase {
            node,
            base,
            suggestion,
            ..
        } => {
            assert_eq!(node, "mkfs_root");
            assert_eq!(base, "imagee0");
            assert_eq!(suggestion.as_deref(), Some("image0"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(line(&e), Some(3));
    assert!(e
        .to_string()
        .contains("set `base` to the name of an existing node"));
}

#[test]
fn base_of_the_wrong_kind() {
    let text = format!(
        "- local_loop: {{name: image0}}\n{TAIL}- mount: {{base: image0, mount_point: /x}}\n"
    );
    let e = err(&text);
    assert!(matches!(e, Error::WrongBase { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("a mount node must sit on a mkfs node"),
        "{e}"
    );
}

#[test]
fn missing_required_keys() {
    let e = err(&MBR.replace("    label: mbr\n", ""));
    assert!(
        matches!(e, Error::MissingKey { ref key, .. } if key == "label"),
        "{e:?}"
    );
    assert!(e.to_string().contains("add `label:`"), "{e}");
    let e = err(&MBR.replace("        size: 100%\n", ""));
    assert!(
        matches!(e, Error::MissingKey { ref key, .. } if key == "size"),
        "{e:?}"
    );
    let e = err(&MBR.replace("            mount_point: /\n", ""));
    assert!(
        matches!(e, Error::MissingKey { ref key, .. } if key == "mount_point"),
        "{e:?}"
    );
    let e = err("- local_loop: {size: 1GiB}\n");
    assert!(
        matches!(e, Error::MissingKey { ref key, .. } if key == "name"),
        "{e:?}"
    );
    let e = err("- local_loop: {name: image0}\n- mkfs: {base: image0, name: data}\n");
    assert!(
        matches!(e, Error::MissingKey { ref key, .. } if key == "type"),
        "{e:?}"
    );
    let e = err("- local_loop: {name: image0}\n- mkfs: {type: ext4}\n");
    assert!(
        matches!(e, Error::MissingKey { ref key, .. } if key == "base"),
        "{e:?}"
    );
}

#[test]
fn invalid_values() {
    let e = err(&MBR.replace("label: mbr", "label: dos"));
    assert!(
        matches!(e, Error::InvalidValue { ref key, .. } if key == "label"),
        "{e:?}"
    );
    let e = err(&MBR.replace("size: 100%", "size: 10 parsecs"));
    assert!(
        matches!(e, Error::InvalidValue { ref key, .. } if key == "size"),
        "{e:?}"
    );
    assert!(e.to_string().contains("unknown unit"), "{e}");
    let e = err(&MBR.replace("flags: [boot, primary]", "flags: [boot, primary, active]"));
    assert!(
        matches!(e, Error::InvalidValue { ref key, .. } if key == "flags"),
        "{e:?}"
    );
    let e = err(&MBR.replace(
        "flags: [boot, primary]",
        "flags: [primary]\n        type: 0x131",
    ));
    assert!(e.to_string().contains("one hex byte"), "{e}");
    // Unquoted, the type still means what it says.
    let p = plan(
        &MBR.replace(
            "flags: [boot, primary]",
            "flags: [primary]\n        type: 0x8e",
        ),
        "x",
        &params(None),
    )
    .unwrap();
    assert!(
        matches!(&p.node("root").unwrap().kind, kiln_blockdev::NodeKind::Partition { ptype, .. } if ptype == "0x8e")
    );
    let e = err(&GPT.replace("'EF02'", "'EFI'"));
    assert!(
        matches!(e, Error::InvalidValue { ref key, .. } if key == "type"),
        "{e:?}"
    );
    let e = err("- local_loop: {name: image0, size: 50%}\n");
    assert!(
        e.to_string().contains("only allowed for partition sizes"),
        "{e}"
    );
    let e = err(&MBR.replace("mount_point: /", "mount_point: relative/path"));
    assert!(
        matches!(e, Error::InvalidValue { ref key, .. } if key == "mount_point"),
        "{e:?}"
    );
}

#[test]
fn duplicate_label() {
    let text = EFI.replace(
        "          type: vfat\n",
        "          type: ext4\n          label: cloudimg-rootfs\n",
    );
    let e = err(&text);
    match &e {
        Error::DuplicateLabel {
            label,
            first,
            second,
            ..
        } => {
            assert_eq!(label, "cloudimg-rootfs");
            assert_eq!((first.as_str(), second.as_str()), ("mkfs_ESP", "mkfs_root"));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("labels must be unique"));
}

#[test]
fn label_too_long() {
    for (fstype, label, max) in [
        ("ext4", "seventeen-chars-x", 16),
        ("xfs", "thirteen-char", 12),
        ("vfat", "TWELVE-CHARS", 11),
        ("swap", "seventeen-chars-x", 16),
    ] {
        let text = format!(
            "- local_loop: {{name: image0}}\n{TAIL}- mkfs: {{name: other, base: image0, type: {fstype}, label: {label}}}\n"
        );
        let e = err(&text);
        match &e {
            Error::LabelTooLong {
                max: m, fstype: t, ..
            } => {
                assert_eq!((*m, t.as_str()), (max, fstype));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(line(&e), Some(7));
        assert!(
            e.to_string().contains(&format!("allows at most {max}")),
            "{e}"
        );
    }
    // A vfat label defaults to the node name, uppercased; a long node name is too long.
    let e = err(&EFI.replace("name: ESP", "name: EFI-SYSTEM"));
    assert!(
        matches!(e, Error::LabelTooLong { ref label, .. } if label == "MKFS_EFI-SYSTEM"),
        "{e:?}"
    );
}

#[test]
fn duplicate_mount_point() {
    let e = err(&EFI.replace("mount_point: /boot/efi", "mount_point: /"));
    assert!(
        matches!(e, Error::DuplicateMountPoint { ref mount_point, .. } if mount_point == "/"),
        "{e:?}"
    );
    assert!(e.to_string().contains("can be mounted only once"));
    // `/boot/` and `/boot` are the same mount point.
    let e = err(&EFI
        .replace("mount_point: /boot/efi", "mount_point: /boot/")
        .replace("mount_point: /\n", "mount_point: /boot\n"));
    assert!(matches!(e, Error::DuplicateMountPoint { .. }), "{e:?}");
}

#[test]
fn partitions_that_do_not_fit() {
    // 550 MiB + 8 MiB + the 1 MiB lead-in do not fit in 512 MiB.
    let e = err_sized(EFI, Some(512 * MIB));
    match &e {
        Error::PartitionsDoNotFit {
            table,
            image,
            detail,
            ..
        } => {
            assert_eq!(table, "partitioning_image0");
            assert_eq!(image, "image0");
            assert!(detail.contains("`ESP`"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("make the image larger"), "{e}");
    // Exactly full with GPT: the backup table at the end leaves no room for a 63 MiB
    // partition after the 1 MiB lead-in in a 64 MiB image.
    let text = GPT.replace("size: 8MiB", "size: 63MiB");
    assert!(matches!(
        err_sized(&text, Some(64 * MIB)),
        Error::PartitionsDoNotFit { .. }
    ));
    // With MBR the same fits exactly, and a logical partition needs another MiB for its EBR.
    let mbr = MBR.replace("size: 100%", "size: 63MiB");
    plan(&mbr, "x", &params(Some(64 * MIB))).unwrap();
    let logical = MBR
        .replace("size: 100%", "size: 62MiB")
        .replace("[boot, primary]", "[boot]");
    plan(&logical, "x", &params(Some(64 * MIB))).unwrap();
    let logical = MBR
        .replace("size: 100%", "size: 63MiB")
        .replace("[boot, primary]", "[boot]");
    assert!(matches!(
        err_sized(&logical, Some(64 * MIB)),
        Error::PartitionsDoNotFit { .. }
    ));
    // Without a size nothing can be checked yet.
    plan(&text, "x", &params(None)).unwrap();
}

#[test]
fn primary_flag_on_gpt() {
    let e = err(&GPT.replace("flags: [boot]", "flags: [boot, primary]"));
    match &e {
        Error::PrimaryOnGpt { partition, .. } => assert_eq!(partition, "root"),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("remove `primary`"), "{e}");
}

#[test]
fn bad_mbr_layouts() {
    let text = "\
- local_loop: {name: image0}
- partitioning:
    base: image0
    label: mbr
    partitions:
      - {name: a, size: 1MiB}
      - {name: b, size: 1MiB, flags: [primary]}
      - {name: root, size: 100%, flags: [primary], mkfs: {mount: {mount_point: /}}}
";
    let e = err(text);
    assert!(matches!(e, Error::BadMbrLayout { .. }), "{e:?}");
    assert!(
        e.to_string().contains("list the primary partitions first"),
        "{e}"
    );
}

#[test]
fn no_image0() {
    let e = err(&MBR.replace("image0", "disk"));
    assert!(matches!(e, Error::NoImage0 { .. }), "{e:?}");
    assert!(e
        .to_string()
        .contains("name the image's local_loop node `image0`"));
}

#[test]
fn no_root_mount() {
    let e = err(&MBR.replace("mount_point: /", "mount_point: /srv"));
    assert!(matches!(e, Error::NoRootMount { .. }), "{e:?}");
    assert!(e.to_string().contains("add a mount with `mount_point: /`"));
}

#[test]
fn cycles() {
    let text = "\
- local_loop: {name: image0}
- mkfs: {name: mkfs_root, base: image0, mount: {mount_point: /}}
- mkfs: {name: a, base: image0, type: ext4, mount: {name: ma, mount_point: /a}}
";
    plan(text, "x", &params(None)).unwrap();
    // A thin volume whose pool is itself is a cycle through `base`.
    let lvm = "\
- local_loop: {name: image0}
- lvm:
    pvs: [{name: pv, base: image0}]
    vgs: [{name: vg, base: pv}]
    lvs: [{name: t, base: vg, type: thin, thin-pool: t, size: 1GiB}]
- mkfs: {name: mkfs_root, base: image0, mount: {mount_point: /}}
";
    let e = plan(lvm, "x", &params(None)).unwrap_err();
    assert!(
        matches!(e, Error::WrongBase { .. } | Error::Cycle { .. }),
        "{e:?}"
    );
}

#[test]
fn file_source_in_messages() {
    let e = plan("- bogus: {}\n", "/etc/kiln/layout.yaml", &params(None)).unwrap_err();
    assert!(
        e.to_string().starts_with("/etc/kiln/layout.yaml:1: "),
        "{e}"
    );
}

/// Asserts an `InvalidValue` of `key` at `line` whose message says `needle`.
fn invalid_at(e: &Error, key_want: &str, line_want: u32, needle: &str) {
    assert!(
        matches!(e, Error::InvalidValue { key, .. } if key == key_want),
        "{e:?}"
    );
    assert_eq!(line(e), Some(line_want), "{e}");
    assert!(e.to_string().contains(needle), "{e}");
}

#[test]
fn fstab_fields_with_blanks_or_escapes_are_refused() {
    // Each would break its /etc/fstab line (or add one): refused with the line of the value.
    for (options, needle) in [
        ("'defaults nofail'", "' '"),
        ("\"defaults,\\tnoatime\"", "'\\t'"),
        ("\"defaults\\nLABEL=x / ext4\"", "'\\n'"),
        ("'a\\b'", "'\\\\'"),
        ("'#x'", "comment"),
    ] {
        let e = err(&GPT.replace("options: defaults", &format!("options: {options}")));
        invalid_at(&e, "options", 18, needle);
    }
    let with_mkfs_key = |kv: &str| {
        GPT.replace(
            "        mkfs:\n",
            &format!("        mkfs:\n          {kv}\n"),
        )
    };
    let e = err(&with_mkfs_key("label: 'my root'"));
    invalid_at(&e, "label", 15, "' '");
    assert!(e.to_string().contains("LABEL="), "{e}");
    let e = err(&with_mkfs_key("uuid: \"a\\tb\""));
    invalid_at(&e, "uuid", 15, "'\\t'");
    let e = err(&GPT.replace("mount_point: /", "mount_point: '/my data'"));
    invalid_at(&e, "mount_point", 16, "' '");
    // A filesystem type names a program: mkfs.<type>.
    let e = err(&with_mkfs_key("type: ../../tmp/x"));
    invalid_at(&e, "type", 15, "one word");
    // The empty label still means "by UUID".
    assert!(plan(&with_mkfs_key("label: ''"), "x", &params(None)).is_ok());
}

#[test]
fn node_names_are_plain_words() {
    // A local_loop's name is a file name in the image directory.
    let e = err(&GPT
        .replace("name: image0", "name: ../../x")
        .replace("base: image0", "base: ../../x"));
    invalid_at(&e, "name", 2, "starts with '.'");
    let e = err(&GPT.replace("name: root", "name: 'ro ot'"));
    invalid_at(&e, "name", 10, "' '");
}

#[test]
fn more_than_128_gpt_partitions_are_refused_at_plan_time() {
    let table = |n: usize| {
        let mut t = String::from("- local_loop:\n    name: image0\n- partitioning:\n    base: image0\n    label: gpt\n    partitions:\n");
        for i in 0..n {
            let _ = write!(t, "      - name: p{i}\n        size: 1MiB\n");
        }
        t.push_str(
            "- mkfs:\n    name: mkfs_root\n    base: p0\n    mount:\n      mount_point: /\n",
        );
        t
    };
    assert!(plan(&table(128), "x", &params(Some(1 << 30))).is_ok());
    let e = err_sized(&table(129), Some(1 << 30));
    // The 129th partition's line: 6 header lines, 2 lines each.
    invalid_at(&e, "partitions", 7 + 2 * 128, "at most 128");
    assert!(e.to_string().contains("`p128`"), "{e}");
}

#[test]
fn huge_sizes_are_errors_not_overflows() {
    for (from, to) in [
        ("size: 8MiB", "size: 18446744073709551615"),
        ("size: 8MiB", "size: 16000000TiB"),
        ("label: gpt", "label: mbr\n    align: 9000000TiB"),
    ] {
        let text = GPT
            .replace(from, to)
            .replace("type: 'EF02'\n", "")
            .replace("type: '8300'\n", "");
        let e = plan(&text, "DIB_BLOCK_DEVICE_CONFIG", &params(Some(1 << 30))).unwrap_err();
        assert!(e.is_input_error(), "{e}");
        assert!(e.to_string().starts_with("DIB_BLOCK_DEVICE_CONFIG:"), "{e}");
    }
    let e = err("- local_loop:\n    name: image0\n    size: 2000000TiB\n");
    invalid_at(&e, "size", 3, "at most");
}
