//! Sizes: DIB's size strings, partition percentages, and the image sizing rule.
//!
//! Arithmetic is done on integers (the fraction of a decimal is scaled exactly), so that
//! `1.5GiB` is exactly 1.5 × 2³⁰ bytes and no float rounding ever changes a layout.

use serde::{Serialize, Serializer};

use crate::error::Error;

/// A partition size: absolute bytes, or a percentage of the space still free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    /// An absolute size in bytes.
    Bytes(u64),
    /// A share of the remaining free space, in millionths of a percent (100% = 100_000_000).
    Percent(u64),
}

impl Serialize for SizeSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Millionths of a percent in 100%.
pub(crate) const FULL: u64 = 100_000_000;

impl SizeSpec {
    /// The size in bytes, given the free space left at this point.
    pub fn resolve(self, free: u64) -> u64 {
        match self {
            SizeSpec::Bytes(b) => b,
            SizeSpec::Percent(p) => {
                let v = u128::from(free) * u128::from(p) / u128::from(FULL);
                u64::try_from(v).unwrap_or(u64::MAX)
            }
        }
    }
}

impl std::fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            SizeSpec::Bytes(b) => f.write_str(&human(b)),
            SizeSpec::Percent(p) => {
                let whole = p / 1_000_000;
                let frac = p % 1_000_000;
                if frac == 0 {
                    write!(f, "{whole}%")
                } else {
                    let s = format!("{frac:06}");
                    write!(f, "{whole}.{}%", s.trim_end_matches('0'))
                }
            }
        }
    }
}

/// Renders bytes in the largest binary unit that divides them exactly (`8MiB`, `1536KiB`).
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, unit) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

fn unit_factor(unit: &str) -> Option<u64> {
    let f = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        _ => return None,
    };
    Some(f)
}

const UNIT_HELP: &str =
    "use a number with an optional unit: B, KiB, MiB, GiB, TiB (powers of 1024) \
                         or K, KB, M, MB, G, GB, T, TB (powers of 1000)";

/// Splits `12.5 MiB` into ("12", "5", "MiB").
fn split_number(s: &str) -> Option<(&str, &str, &str)> {
    let s = s.trim();
    let end = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(s.len(), |(i, _)| i);
    let (num, rest) = s.split_at(end);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((int, frac, rest.trim()))
}

/// `int.frac × factor`, floored, exactly.
fn scale(int: &str, frac: &str, factor: u64) -> Option<u64> {
    let int_v: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac = &frac[..frac.len().min(18)];
    let frac_v: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let denom = 10u128.pow(u32::try_from(frac.len()).ok()?);
    let total = int_v
        .checked_mul(u128::from(factor))?
        .checked_add(frac_v * u128::from(factor) / denom)?;
    u64::try_from(total).ok()
}

/// Parses an absolute size: `1GiB`, `512 MB`, `1.5G`, `4096`.
///
/// TiB/GiB/MiB/KiB are powers of 1024; TB/GB/MB/KB and T/G/M/K powers of 1000; `B` or no
/// unit means bytes. Decimals and a space before the unit are allowed. Units are matched
/// without regard to case. Percentages are rejected here: they only mean something for
/// partitions.
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let bad = |reason: &str| Error::InvalidSize {
        input: s.to_owned(),
        reason: reason.to_owned(),
    };
    if s.trim().ends_with('%') {
        return Err(bad(
            "a percentage is only allowed for partition sizes; give an absolute size",
        ));
    }
    let (int, frac, unit) = split_number(s).ok_or_else(|| bad(UNIT_HELP))?;
    let factor =
        unit_factor(unit).ok_or_else(|| bad(&format!("unknown unit `{unit}`; {UNIT_HELP}")))?;
    scale(int, frac, factor).ok_or_else(|| bad("the size is too large"))
}

/// Parses a size that may be a percentage of the remaining space (`50%`, `100%`, `12.5%`).
pub fn parse_size_spec(s: &str) -> Result<SizeSpec, Error> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let bad = |reason: &str| Error::InvalidSize {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (int, frac, rest) =
            split_number(p).ok_or_else(|| bad("write a percentage as a number followed by %"))?;
        if !rest.is_empty() {
            return Err(bad("write a percentage as a number followed by %"));
        }
        let v = scale(int, frac, 1_000_000).ok_or_else(|| bad("the percentage is too large"))?;
        if v == 0 || v > FULL {
            return Err(bad("a percentage must be more than 0% and at most 100%"));
        }
        return Ok(SizeSpec::Percent(v));
    }
    parse_size(s).map(SizeSpec::Bytes)
}

/// Inputs of DIB's image sizing rule (reference §4.5).
#[derive(Debug, Clone, PartialEq)]
pub struct SizeOpts {
    /// An explicit image size in GB (`DIB_IMAGE_SIZE` / `--image-size`); decimals allowed.
    pub image_size_gb: Option<f64>,
    /// Extra space in MB added to the tree size instead of the /0.6 scaling
    /// (`DIB_IMAGE_EXTRA_SIZE`).
    pub extra_size_mb: Option<u64>,
    /// The root filesystem type (`FS_TYPE`); ext4 adds the journal when no size is given.
    pub root_fs_type: String,
    /// The ext4 journal size in MB (`DIB_JOURNAL_SIZE`, default 64).
    pub journal_size_mb: u64,
    /// Whether a `block-device-efi*` element is in the build (adds 525 MiB).
    pub efi: bool,
}

impl Default for SizeOpts {
    fn default() -> Self {
        SizeOpts {
            image_size_gb: None,
            extra_size_mb: None,
            root_fs_type: "ext4".to_owned(),
            journal_size_mb: 64,
            efi: false,
        }
    }
}

/// The image size in KiB for a tree of `tree_du_kib` KiB, by DIB's rule.
///
/// An explicit size is `GB × 1024²` KiB. Otherwise the tree size is divided by 0.6, or, when
/// an extra size is set, the extra MB × 1024 is added instead; an ext4 root then adds the
/// journal size. An EFI build adds 525 MiB. The result is rounded up to 64 KiB.
pub fn image_size_kib(tree_du_kib: u64, opts: &SizeOpts) -> u64 {
    let mut kib = if let Some(gb) = opts.image_size_gb {
        (gb * 1024.0 * 1024.0).floor().max(0.0) as u64
    } else {
        let base = match opts.extra_size_mb {
            Some(extra) => tree_du_kib.saturating_add(extra.saturating_mul(1024)),
            None => u64::try_from(u128::from(tree_du_kib) * 10 / 6).unwrap_or(u64::MAX),
        };
        if opts.root_fs_type == "ext4" {
            base.saturating_add(opts.journal_size_mb.saturating_mul(1024))
        } else {
            base
        }
    };
    if opts.efi {
        kib = kib.saturating_add(525 * 1024);
    }
    kib.div_ceil(64).saturating_mul(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1 GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("0.5 MB").unwrap(), 500_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("100B").unwrap(), 100);
        assert_eq!(parse_size("2T").unwrap(), 2_000_000_000_000);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        assert_eq!(parse_size("3K").unwrap(), 3000);
        assert_eq!(parse_size("3KB").unwrap(), 3000);
        assert_eq!(parse_size(".5KiB").unwrap(), 512);
    }

    #[test]
    fn bad_sizes() {
        for s in ["", "abc", "1XB", "1.2.3M", "50%", "-1G", "1 G B"] {
            let e = parse_size(s).unwrap_err();
            assert!(matches!(e, Error::InvalidSize { .. }), "{s}: {e}");
        }
        assert!(parse_size("50%")
            .unwrap_err()
            .to_string()
            .contains("only allowed for partition"));
    }

    #[test]
    fn percents() {
        assert_eq!(parse_size_spec("100%").unwrap(), SizeSpec::Percent(FULL));
        assert_eq!(
            parse_size_spec("12.5%").unwrap(),
            SizeSpec::Percent(12_500_000)
        );
        assert_eq!(parse_size_spec("8MiB").unwrap(), SizeSpec::Bytes(8 << 20));
        assert!(parse_size_spec("0%").is_err());
        assert!(parse_size_spec("101%").is_err());
        assert!(parse_size_spec("x%").is_err());
        assert_eq!(SizeSpec::Percent(FULL / 2).resolve(1000), 500);
        assert_eq!(SizeSpec::Percent(12_500_000).to_string(), "12.5%");
        assert_eq!(SizeSpec::Bytes(8 << 20).to_string(), "8MiB");
    }

    #[test]
    fn image_sizing() {
        // explicit size: GB * 1024^2 KiB, no journal
        let o = SizeOpts {
            image_size_gb: Some(2.0),
            ..SizeOpts::default()
        };
        assert_eq!(image_size_kib(123, &o), 2 * 1024 * 1024);
        // du / 0.6 + journal, rounded up to 64 KiB
        let o = SizeOpts::default();
        let raw: u64 = 600_000 * 10 / 6 + 64 * 1024;
        assert_eq!(image_size_kib(600_000, &o), raw.div_ceil(64) * 64);
        // extra size replaces the scaling
        let o = SizeOpts {
            extra_size_mb: Some(100),
            root_fs_type: "xfs".into(),
            ..SizeOpts::default()
        };
        assert_eq!(
            image_size_kib(1000, &o),
            (1000u64 + 102_400).div_ceil(64) * 64
        );
        // efi pad
        let o = SizeOpts {
            image_size_gb: Some(1.5),
            efi: true,
            ..SizeOpts::default()
        };
        assert_eq!(image_size_kib(0, &o), 1_572_864 + 537_600);
        assert_eq!(
            image_size_kib(
                1,
                &SizeOpts {
                    root_fs_type: "xfs".into(),
                    ..SizeOpts::default()
                }
            ),
            64
        );
    }
}
