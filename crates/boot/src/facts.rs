//! The boot check: what the guest reports about its first boot, and the host's verdict.
//!
//! The guest side is a POSIX sh script ([`guest_script`]) that cloud-init writes and starts
//! detached from `runcmd` (through `systemd-run --no-block`), so it can itself wait for
//! cloud-init to finish (`cloud-init status --wait`) and for systemd to settle. It prints raw
//! measurements, one `KILN-FACT name=value` line each, then `KILN-FACTS-END count=N`, in one
//! write to the serial console. All judging happens on the host ([`evaluate`]), where it can
//! be unit-tested and knows what was asked (firmware, architecture, disk size).
//!
//! The machine id counts as made at first boot when systemd flagged a first boot
//! (`/run/systemd/first-boot` exists: the image held no `/etc/machine-id` or `uninitialized`)
//! or when the file was written after the boot time (an image with an empty file gets a new id
//! but, by systemd's rules, no first boot). An id baked into the image meets neither.
//!
//! The console mixes these lines with kernel messages, getty escape codes and carriage
//! returns; [`parse`] strips escapes and control characters, finds the markers anywhere in a
//! line, and the count on the end line tells lost lines from missing facts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::{boot, Arch, BootConfig, BootOutcome, Error, Firmware, Seed, Wait};

/// The prefix of a fact line.
pub const FACT_MARKER: &str = "KILN-FACT ";
/// The prefix of the last line, followed by ` count=N`.
pub const END_MARKER: &str = "KILN-FACTS-END";
/// Where cloud-init writes the script in the guest.
pub const SCRIPT_PATH: &str = "/var/lib/kiln/boot-check.sh";

/// The guest script, writing its report to the device (or file) `tty`.
pub fn guest_script(tty: &str) -> String {
    include_str!("facts/guest.sh").replace("@TTY@", tty)
}

/// The cloud-config user-data of the boot check on `arch`: write the script, start it after
/// cloud-init (detached, so `cloud-init status --wait` inside it can return).
pub fn user_data(arch: Arch) -> String {
    let script = guest_script(&format!("/dev/{}", arch.serial_tty()));
    let mut s = String::from(
        "#cloud-config\n\
         # kiln boot check: report first-boot facts on the serial console.\n\
         write_files:\n",
    );
    let _ = write!(
        s,
        "  - path: {SCRIPT_PATH}\n    permissions: '0755'\n    content: |\n"
    );
    for line in script.lines() {
        if line.is_empty() {
            s.push('\n');
        } else {
            s.push_str("      ");
            s.push_str(line);
            s.push('\n');
        }
    }
    let _ = write!(
        s,
        "runcmd:\n  - [sh, -c, 'systemd-run --no-block --unit=kiln-boot-check \
         --description=\"kiln boot check\" /bin/sh {SCRIPT_PATH} \
         || (setsid /bin/sh {SCRIPT_PATH} >/dev/null 2>&1 &)']\n"
    );
    s
}

/// The facts read from a console capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ParsedFacts {
    /// Fact name → value (the last line wins if one is repeated).
    pub facts: BTreeMap<String, String>,
    /// The count on the end line: `None` until the guest has finished.
    pub end_count: Option<usize>,
}

/// Removes ANSI escape sequences and control characters (keeping tabs) from one line.
fn clean_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte in @..~.
                Some('[') => {
                    for d in chars.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    while let Some(d) = chars.next() {
                        if d == '\u{7}' {
                            break;
                        }
                        if d == '\u{1b}' {
                            chars.next_if_eq(&'\\');
                            break;
                        }
                    }
                }
                // Two-character escapes (ESC c, ESC 7, …).
                _ => {}
            },
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn is_fact_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Reads the fact lines and the end line from a serial console capture.
pub fn parse(console: &str) -> ParsedFacts {
    let mut parsed = ParsedFacts::default();
    for raw in console.split('\n') {
        let line = clean_line(raw);
        if let Some(i) = line.find(END_MARKER) {
            let rest = &line[i + END_MARKER.len()..];
            if let Some(n) = rest.strip_prefix(" count=") {
                let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(n) = digits.parse() {
                    parsed.end_count = Some(n);
                }
            }
            continue;
        }
        // A lost newline can put two facts on one line: read each marker's span.
        let mut rest = line.as_str();
        while let Some(i) = rest.find(FACT_MARKER) {
            rest = &rest[i + FACT_MARKER.len()..];
            let span = rest.find(FACT_MARKER).map_or(rest, |j| &rest[..j]);
            if let Some((name, value)) = span.split_once('=') {
                if is_fact_name(name) {
                    parsed
                        .facts
                        .insert(name.to_string(), value.trim_end().to_string());
                }
            }
        }
    }
    parsed
}

/// What the host asked of the boot, against which the facts are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Expectations {
    /// The guest architecture (decides the serial console's name).
    pub arch: Arch,
    /// The firmware qemu booted with.
    pub firmware: Firmware,
    /// The virtual size of the disk the guest was given, in bytes.
    pub disk_bytes: u64,
}

/// One row of the report: a checked fact, what was found, and the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FactRow {
    /// The fact's name (`cloud-init`, `root-fs`, …).
    pub name: String,
    /// What the guest reported, in words, with the reason when it fails.
    pub value: String,
    /// Whether the fact is as it should be.
    pub ok: bool,
}

fn row(name: &str, value: impl Into<String>, ok: bool) -> FactRow {
    FactRow {
        name: name.to_string(),
        value: value.into(),
        ok,
    }
}

/// How far a grown root partition may end before the end of the disk (alignment, GPT backup).
const PARTITION_END_SLACK: u64 = 16 << 20;
/// How much smaller than its device a grown filesystem may be, measured from its superblock.
const FS_SLACK: u64 = 32 << 20;
/// Seconds a file's time may precede the computed boot time (btime is derived, not stored).
const CLOCK_SLACK: i64 = 2;

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// The parsed facts and what was asked, from which each fact's row is judged.
struct Judge<'a> {
    f: &'a BTreeMap<String, String>,
    end_count: Option<usize>,
    exp: &'a Expectations,
}

impl Judge<'_> {
    fn get(&self, k: &str) -> Option<&str> {
        self.f.get(k).map(String::as_str)
    }

    fn int(&self, k: &str) -> Option<i64> {
        self.get(k).and_then(|v| v.parse::<i64>().ok())
    }

    /// Whether a file time lies in this boot (None when either time is unknown).
    fn this_boot(&self, mtime: Option<i64>) -> Option<bool> {
        match (mtime, self.int("boot-time")) {
            (Some(m), Some(b)) => Some(m + CLOCK_SLACK >= b),
            _ => None,
        }
    }

    /// A failed row naming the facts of `keys` the guest did not report.
    fn missing(&self, name: &str, keys: &[&str]) -> FactRow {
        let absent: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !self.f.contains_key(*k))
            .collect();
        row(
            name,
            format!("missing: the guest did not report {}", absent.join(", ")),
            false,
        )
    }

    fn report(&self) -> FactRow {
        match self.end_count {
            None => row(
                "report",
                "incomplete: no KILN-FACTS-END line (the check script did not finish)",
                false,
            ),
            Some(n) if n != self.f.len() => row(
                "report",
                format!(
                    "the guest sent {n} facts, {} were read from the console",
                    self.f.len()
                ),
                false,
            ),
            Some(n) => row("report", format!("complete: {n} facts"), true),
        }
    }

    fn cloud_init(&self) -> FactRow {
        match (self.get("cloud-init-status"), self.get("cloud-init-errors")) {
            (Some(status), Some(errors)) => {
                let mut value = format!("status {status}, {errors} errors");
                // Warnings are shown, not judged: cloud-init itself finishes with them.
                if let Some(w) = self.get("cloud-init-warnings").filter(|w| *w != "0") {
                    let _ = write!(value, ", {w} warnings");
                }
                row("cloud-init", value, status == "done" && errors == "0")
            }
            _ => self.missing("cloud-init", &["cloud-init-status", "cloud-init-errors"]),
        }
    }

    fn datasource(&self) -> FactRow {
        match self.get("datasource") {
            Some(ds) => {
                let shown = ds.strip_prefix("DataSource").unwrap_or(ds);
                let name = shown.split_whitespace().next().unwrap_or("");
                if name == "NoCloud" {
                    row("datasource", shown, true)
                } else if shown.is_empty() {
                    row("datasource", "none (expected NoCloud)", false)
                } else {
                    row("datasource", format!("{shown} (expected NoCloud)"), false)
                }
            }
            None => self.missing("datasource", &["datasource"]),
        }
    }

    fn failed_units(&self) -> FactRow {
        match (self.get("failed-units"), self.get("system-state")) {
            (Some(units), state) => {
                let list: Vec<&str> = units.split(',').filter(|u| !u.is_empty()).collect();
                let state_ok = state == Some("running");
                let mut value = if list.is_empty() {
                    "none".to_string()
                } else {
                    list.join(", ")
                };
                if !state_ok {
                    let _ = write!(value, " (system {})", state.unwrap_or("state unknown"));
                }
                row("failed-units", value, list.is_empty() && state_ok)
            }
            _ => self.missing("failed-units", &["failed-units"]),
        }
    }

    fn firmware(&self) -> FactRow {
        match self.get("firmware") {
            Some(fw) if fw == self.exp.firmware.name() => row("firmware", fw, true),
            Some(fw) => row(
                "firmware",
                format!("{fw} (booted with {})", self.exp.firmware.name()),
                false,
            ),
            None => self.missing("firmware", &["firmware"]),
        }
    }

    fn machine_id(&self) -> FactRow {
        match (self.get("machine-id"), self.get("systemd-first-boot")) {
            (Some(id), Some(first)) => {
                let valid = id.len() == 32
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    && id.bytes().any(|b| b != b'0');
                let fresh_file = self.this_boot(self.int("machine-id-mtime"));
                let first_boot = first == "yes";
                if id.is_empty() {
                    row("machine-id", "empty: no machine id", false)
                } else if !valid {
                    row(
                        "machine-id",
                        format!("{id:?} is not a valid machine id"),
                        false,
                    )
                } else if first_boot {
                    row("machine-id", format!("{id}, generated at first boot"), true)
                } else if fresh_file == Some(true) {
                    row(
                        "machine-id",
                        format!("{id}, written this boot (not a systemd first boot)"),
                        true,
                    )
                } else {
                    row(
                        "machine-id",
                        format!("{id}, from the image: not generated at first boot"),
                        false,
                    )
                }
            }
            _ => self.missing("machine-id", &["machine-id", "systemd-first-boot"]),
        }
    }

    fn serial_console(&self) -> FactRow {
        match self.get("cmdline-consoles") {
            Some(c) => {
                let want = format!("console={}", self.exp.arch.serial_tty());
                let consoles: Vec<&str> = c.split_whitespace().collect();
                let ok = consoles
                    .iter()
                    .any(|a| *a == want || a.starts_with(&format!("{want},")));
                let shown = if consoles.is_empty() {
                    "no console= on the kernel command line".to_string()
                } else {
                    consoles.join(" ")
                };
                if ok {
                    row("serial-console", shown, true)
                } else {
                    row("serial-console", format!("{shown} (missing {want})"), false)
                }
            }
            None => self.missing("serial-console", &["cmdline-consoles"]),
        }
    }

    fn ssh_host_keys(&self) -> FactRow {
        match self.get("ssh-host-keys") {
            Some("not-installed") => row("ssh-host-keys", "not installed", true),
            Some(n) => match n.parse::<u32>() {
                Ok(0) => row("ssh-host-keys", "none, with an SSH server installed", false),
                Ok(n) => match self.this_boot(self.int("ssh-host-keys-oldest-mtime")) {
                    Some(true) => row(
                        "ssh-host-keys",
                        format!("{n} keys, created this boot"),
                        true,
                    ),
                    Some(false) => row(
                        "ssh-host-keys",
                        format!("{n} keys, created before this boot (they come from the image)"),
                        false,
                    ),
                    None => self.missing(
                        "ssh-host-keys",
                        &["ssh-host-keys-oldest-mtime", "boot-time"],
                    ),
                },
                Err(_) => row("ssh-host-keys", format!("unreadable count {n:?}"), false),
            },
            None => self.missing("ssh-host-keys", &["ssh-host-keys"]),
        }
    }
}

/// Judges the parsed facts: one row per fact, in a fixed order, `report` first.
pub fn evaluate(parsed: &ParsedFacts, exp: &Expectations) -> Vec<FactRow> {
    let j = Judge {
        f: &parsed.facts,
        end_count: parsed.end_count,
        exp,
    };
    vec![
        j.report(),
        j.cloud_init(),
        j.datasource(),
        j.failed_units(),
        root_fs_row(&parsed.facts, exp),
        j.firmware(),
        j.machine_id(),
        j.serial_console(),
        j.ssh_host_keys(),
    ]
}

/// The root filesystem fills the disk: the guest sees the grown disk, the root partition
/// reaches its end, and the filesystem fills the partition.
fn root_fs_row(f: &BTreeMap<String, String>, exp: &Expectations) -> FactRow {
    let bytes = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
    let (Some(disk), Some(dev), Some(fs)) = (
        bytes("disk-bytes"),
        bytes("root-dev-bytes"),
        bytes("root-fs-bytes"),
    ) else {
        let absent: Vec<&str> = ["disk-bytes", "root-dev-bytes", "root-fs-bytes"]
            .into_iter()
            .filter(|k| bytes(k).is_none())
            .collect();
        return row(
            "root-fs",
            format!("missing: the guest did not report {}", absent.join(", ")),
            false,
        );
    };
    let src = f.get("root-source").map_or("?", String::as_str);
    let exact = f.get("root-fs-measure").map(String::as_str) == Some("superblock");
    let summary = format!("{} on {src} ({}), disk {}", mib(fs), mib(dev), mib(disk));
    if disk != exp.disk_bytes {
        return row(
            "root-fs",
            format!(
                "{summary}: the guest's disk is {disk} bytes, qemu gave it {}",
                exp.disk_bytes
            ),
            false,
        );
    }
    if let Some(end) = bytes("root-dev-end-bytes") {
        let gap = disk.saturating_sub(end);
        if gap > PARTITION_END_SLACK {
            return row(
                "root-fs",
                format!(
                    "{summary}: the root partition ends {} before the end of the disk \
                     (not grown)",
                    mib(gap)
                ),
                false,
            );
        }
    }
    // statfs leaves out the filesystem's own metadata (ext4: inode tables, journal).
    let slack = if exact { FS_SLACK } else { FS_SLACK + dev / 20 };
    if fs + slack < dev {
        return row(
            "root-fs",
            format!(
                "{summary}: the filesystem is {} smaller than its device (not grown)",
                mib(dev - fs)
            ),
            false,
        );
    }
    row("root-fs", format!("{summary}: grown"), true)
}

/// The result of a boot check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The image booted.
    pub image: PathBuf,
    /// The guest architecture.
    pub arch: Arch,
    /// The firmware booted with.
    pub firmware: Firmware,
    /// The qemu accelerator used.
    pub accel: String,
    /// Seconds from starting qemu to the end line (or the timeout).
    pub boot_seconds: f64,
    /// Whether the guest's end line arrived before the timeout.
    pub finished: bool,
    /// Whether every fact is ok.
    pub passed: bool,
    /// The judged facts, `report` first.
    pub facts: Vec<FactRow>,
    /// Every raw `KILN-FACT` the guest sent.
    pub raw: BTreeMap<String, String>,
}

impl CheckReport {
    /// Builds the report of a finished (or timed-out) boot.
    pub fn new(cfg: &BootConfig, outcome: &BootOutcome) -> Self {
        let parsed = parse(&outcome.console);
        let facts = evaluate(
            &parsed,
            &Expectations {
                arch: cfg.arch,
                firmware: cfg.firmware,
                disk_bytes: outcome.disk_bytes,
            },
        );
        CheckReport {
            image: cfg.image.clone(),
            arch: cfg.arch,
            firmware: cfg.firmware,
            accel: outcome.accel.clone(),
            boot_seconds: (outcome.seconds * 10.0).round() / 10.0,
            finished: parsed.end_count.is_some(),
            passed: facts.iter().all(|r| r.ok),
            facts,
            raw: parsed.facts,
        }
    }

    /// The facts as a text table: FACT, VALUE, RESULT (`ok` or `FAIL`).
    pub fn table(&self) -> String {
        render_table(&self.facts)
    }
}

/// Renders rows as an aligned text table with a header.
pub fn render_table(rows: &[FactRow]) -> String {
    let w_name = rows
        .iter()
        .map(|r| r.name.chars().count())
        .chain([4])
        .max()
        .unwrap_or(4);
    let w_value = rows
        .iter()
        .map(|r| r.value.chars().count())
        .chain([5])
        .max()
        .unwrap_or(5);
    let mut s = format!("{:w_name$}  {:w_value$}  RESULT\n", "FACT", "VALUE");
    for r in rows {
        let _ = writeln!(
            s,
            "{:w_name$}  {:w_value$}  {}",
            r.name,
            r.value,
            if r.ok { "ok" } else { "FAIL" }
        );
    }
    s
}

/// Boots `cfg.image` with the boot-check seed and judges what the guest reports. The seed and
/// the wait in `cfg` are replaced; everything else (firmware, timeout, …) is used as given.
pub fn check(cfg: &BootConfig) -> Result<(CheckReport, BootOutcome), Error> {
    let mut cfg = cfg.clone();
    cfg.seed = Seed::boot_check(cfg.arch);
    cfg.wait = Wait::FactsEnd;
    let outcome = boot(&cfg)?;
    Ok((CheckReport::new(&cfg, &outcome), outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// A console as the guest shows it: kernel lines, systemd's coloured status, the getty's
    /// escape codes and prompt, CRLF line ends, a kernel message cutting in front of a fact,
    /// and two facts on one line after a lost newline.
    fn push(s: &mut String, t: &str) {
        s.push_str(t);
    }

    fn noisy_console(facts: &[(&str, &str)], end: Option<usize>) -> String {
        let mut s = String::from(
            "SeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n\
             [    0.000000] Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org)\r\n\
             [  OK  ] Started \u{1b}[0;1;39mcloud-final.service\u{1b}[0m - Execute cloud user/final scripts.\r\n\
             [   61.532101] cloud-init[712]: Cloud-init v. 22.4.2 finished at Sat, 05 Dec 2026 18:01:02 +0000.\r\n\
             \u{1b}[2J\u{1b}[H\u{1b}]0;kiln-test\u{7}\r\n\
             Debian GNU/Linux 12 kiln-test ttyS0\r\n\r\nkiln-test login: \r\n",
        );
        for (i, (k, v)) in facts.iter().enumerate() {
            match i {
                0 => push(&mut s, &format!("kiln-test login: KILN-FACT {k}={v}\r\r\n")),
                1 => push(
                    &mut s,
                    &format!("[   70.1] random: crng init done KILN-FACT {k}={v}\r\n"),
                ),
                2 => push(&mut s, &format!("\u{1b}[0mKILN-FACT {k}={v}")),
                _ => push(&mut s, &format!("KILN-FACT {k}={v}\r\n")),
            }
        }
        if let Some(n) = end {
            push(&mut s, &format!("KILN-FACTS-END count={n}\r\n"));
        }
        s.push_str("[   80.2] systemd-journald[200]: Time spent on flushing\r\n");
        s
    }

    fn good_facts() -> Vec<(&'static str, &'static str)> {
        vec![
            ("cloud-init-status", "done"),
            (
                "datasource",
                "DataSourceNoCloud [seed=/dev/vdb][dsmode=net]",
            ),
            ("cloud-init-errors", "0"),
            ("system-state", "running"),
            ("failed-units", ""),
            ("root-source", "/dev/vda1"),
            ("root-dev-bytes", "4293918208"),
            ("root-dev-end-bytes", "4294950912"),
            ("disk-name", "vda"),
            ("disk-bytes", "4294967296"),
            ("root-fs-type", "ext4"),
            ("root-fs-measure", "superblock"),
            ("root-fs-bytes", "4293918208"),
            ("firmware", "bios"),
            ("cmdline-consoles", "console=tty0 console=ttyS0,115200 "),
            ("boot-time", "1796493600"),
            ("machine-id", "3f6c0a1d9b2e4c7f8a5d6e1b2c3d4e5f"),
            ("machine-id-mtime", "1796493604"),
            ("systemd-first-boot", "yes"),
            ("ssh-host-keys", "3"),
            ("ssh-host-keys-oldest-mtime", "1796493650"),
        ]
    }

    fn expect() -> Expectations {
        Expectations {
            arch: Arch::X86_64,
            firmware: Firmware::Bios,
            disk_bytes: 4 * GIB,
        }
    }

    fn judge(facts: &[(&str, &str)]) -> Vec<FactRow> {
        evaluate(&parse(&noisy_console(facts, Some(facts.len()))), &expect())
    }

    fn with(changes: &[(&'static str, Option<&'static str>)]) -> Vec<(&'static str, &'static str)> {
        let mut f = good_facts();
        for (k, v) in changes {
            f.retain(|(n, _)| n != k);
            if let Some(v) = v {
                f.push((k, v));
            }
        }
        f
    }

    fn get<'a>(rows: &'a [FactRow], name: &str) -> &'a FactRow {
        rows.iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no row {name}: {rows:?}"))
    }

    fn failed(rows: &[FactRow]) -> Vec<&str> {
        rows.iter()
            .filter(|r| !r.ok)
            .map(|r| r.name.as_str())
            .collect()
    }

    /// The end of a real console capture (debian-minimal vm cloud-init, BIOS, TCG), whose
    /// image lacked growpart: everything passes but the root filesystem.
    #[test]
    fn a_real_capture() {
        let p = parse(include_str!("facts/console-bios.txt"));
        assert_eq!(p.end_count, Some(20));
        assert_eq!(p.facts.len(), 20);
        let rows = evaluate(
            &p,
            &Expectations {
                arch: Arch::X86_64,
                firmware: Firmware::Bios,
                disk_bytes: 2_732_457_984,
            },
        );
        assert_eq!(failed(&rows), vec!["root-fs"], "{rows:#?}");
        assert!(get(&rows, "root-fs")
            .value
            .contains("ends 1024 MiB before the end"));
        assert_eq!(get(&rows, "ssh-host-keys").value, "not installed");
        assert_eq!(
            get(&rows, "machine-id").value,
            "f4efe548e08f454792d7e0ff5192a27b, written this boot (not a systemd first boot)"
        );
        // Judged against a UEFI boot, the firmware fails too.
        let rows = evaluate(
            &p,
            &Expectations {
                arch: Arch::X86_64,
                firmware: Firmware::Uefi,
                disk_bytes: 2_732_457_984,
            },
        );
        assert_eq!(failed(&rows), vec!["root-fs", "firmware"]);
    }

    #[test]
    fn parses_a_noisy_console() {
        let facts = good_facts();
        let p = parse(&noisy_console(&facts, Some(facts.len())));
        assert_eq!(p.end_count, Some(facts.len()));
        let want: BTreeMap<String, String> = facts
            .iter()
            .map(|(k, v)| (k.to_string(), v.trim_end().to_string()))
            .collect();
        assert_eq!(p.facts, want);
        // The two facts glued together by a lost newline were both read.
        assert_eq!(p.facts["datasource"], facts[1].1);
        assert_eq!(p.facts["cloud-init-errors"], "0");
    }

    #[test]
    fn parser_ignores_what_is_not_a_fact() {
        let p = parse(
            "KILN-FACT Bad_Name=1\r\nKILN-FACT novalue\r\nKILN-FACTS-END count=x\r\n\
             echo 'KILN-FACT' text\r\nKILN-FACT ok=a=b\r\n",
        );
        assert_eq!(p.end_count, None);
        assert_eq!(p.facts.len(), 1, "{p:?}");
        assert_eq!(p.facts["ok"], "a=b");
        assert_eq!(clean_line("\u{1b}[1;32mgreen\u{1b}[0m\r\u{7}"), "green");
        assert_eq!(clean_line("a\u{1b}]0;title\u{1b}\\b"), "ab");
    }

    #[test]
    fn a_good_first_boot_passes() {
        let rows = judge(&good_facts());
        assert_eq!(failed(&rows), Vec::<&str>::new(), "{rows:#?}");
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "report",
                "cloud-init",
                "datasource",
                "failed-units",
                "root-fs",
                "firmware",
                "machine-id",
                "serial-console",
                "ssh-host-keys"
            ]
        );
        assert_eq!(
            get(&rows, "datasource").value,
            "NoCloud [seed=/dev/vdb][dsmode=net]"
        );
        assert_eq!(get(&rows, "failed-units").value, "none");
        assert_eq!(
            get(&rows, "root-fs").value,
            "4094 MiB on /dev/vda1 (4094 MiB), disk 4096 MiB: grown"
        );
        assert_eq!(
            get(&rows, "serial-console").value,
            "console=tty0 console=ttyS0,115200"
        );
    }

    /// Changes to a good report, each of which must fail exactly one fact, and why.
    type Change = &'static [(&'static str, Option<&'static str>)];
    const BAD_FACTS: &[(Change, &str, &str)] = &[
        (
            &[("cloud-init-status", Some("error"))],
            "cloud-init",
            "status error",
        ),
        (
            &[
                ("cloud-init-errors", Some("1")),
                ("cloud-init-warnings", Some("3")),
            ],
            "cloud-init",
            "1 errors, 3 warnings",
        ),
        (
            &[("cloud-init-errors", Some("2"))],
            "cloud-init",
            "2 errors",
        ),
        (
            &[("datasource", Some("DataSourceNone"))],
            "datasource",
            "expected NoCloud",
        ),
        (
            &[("datasource", Some("DataSourceNoCloudNet [seed=x]"))],
            "datasource",
            "NoCloudNet",
        ),
        (
            &[("failed-units", Some("a.service,b.mount"))],
            "failed-units",
            "a.service, b.mount",
        ),
        (
            &[("system-state", Some("starting"))],
            "failed-units",
            "system starting",
        ),
        (
            &[("disk-bytes", Some("3221225472"))],
            "root-fs",
            "qemu gave it 4294967296",
        ),
        (
            &[("root-dev-end-bytes", Some("3221225472"))],
            "root-fs",
            "ends 1024 MiB before",
        ),
        (
            &[("root-fs-bytes", Some("3221225472"))],
            "root-fs",
            "1022 MiB smaller",
        ),
        (
            &[("root-fs-bytes", None)],
            "root-fs",
            "did not report root-fs-bytes",
        ),
        (
            &[("firmware", Some("uefi"))],
            "firmware",
            "booted with bios",
        ),
        (&[("machine-id", Some(""))], "machine-id", "empty"),
        (
            &[("machine-id", Some("uninitialized"))],
            "machine-id",
            "not a valid",
        ),
        (
            &[("machine-id", Some("00000000000000000000000000000000"))],
            "machine-id",
            "not a valid",
        ),
        (
            &[
                ("systemd-first-boot", Some("no")),
                ("machine-id-mtime", Some("1796000000")),
            ],
            "machine-id",
            "from the image",
        ),
        (
            &[("cmdline-consoles", Some("console=tty0"))],
            "serial-console",
            "missing console=ttyS0",
        ),
        (
            &[("cmdline-consoles", Some("console=ttyS00"))],
            "serial-console",
            "missing",
        ),
        (
            &[("cmdline-consoles", Some(""))],
            "serial-console",
            "no console=",
        ),
        (&[("ssh-host-keys", Some("0"))], "ssh-host-keys", "none"),
        (
            &[("ssh-host-keys-oldest-mtime", Some("1796400000"))],
            "ssh-host-keys",
            "from the image",
        ),
        (
            &[("ssh-host-keys", None)],
            "ssh-host-keys",
            "did not report ssh-host-keys",
        ),
    ];

    #[test]
    fn each_bad_fact_fails_alone_and_says_why() {
        for (changes, name, words) in BAD_FACTS {
            let rows = judge(&with(changes));
            assert_eq!(failed(&rows), vec![*name], "{changes:?}: {rows:#?}");
            let v = &get(&rows, name).value;
            assert!(v.contains(words), "{changes:?}: {v:?} lacks {words:?}");
        }
    }

    #[test]
    fn lenient_where_the_signal_is_another() {
        // Warnings are shown, not failed.
        let rows = judge(&with(&[("cloud-init-warnings", Some("2"))]));
        assert_eq!(failed(&rows), Vec::<&str>::new());
        assert_eq!(
            get(&rows, "cloud-init").value,
            "status done, 0 errors, 2 warnings"
        );
        // No SSH server: not a failure.
        let rows = judge(&with(&[
            ("ssh-host-keys", Some("not-installed")),
            ("ssh-host-keys-oldest-mtime", None),
        ]));
        assert_eq!(failed(&rows), Vec::<&str>::new());
        assert_eq!(get(&rows, "ssh-host-keys").value, "not installed");
        // systemd did not flag a first boot, but the id file was written during this boot.
        let rows = judge(&with(&[("systemd-first-boot", Some("no"))]));
        assert_eq!(failed(&rows), Vec::<&str>::new());
        // Measured through statfs, ext4's own metadata is not counted: a wider margin.
        let rows = judge(&with(&[
            ("root-fs-measure", Some("statfs")),
            ("root-fs-bytes", Some("4120000000")),
        ]));
        assert_eq!(failed(&rows), Vec::<&str>::new(), "{rows:#?}");
        // arm64 wants ttyAMA0.
        let f = with(&[("cmdline-consoles", Some("console=ttyAMA0"))]);
        let mut e = expect();
        e.arch = Arch::Aarch64;
        let rows = evaluate(&parse(&noisy_console(&f, Some(f.len()))), &e);
        assert_eq!(failed(&rows), Vec::<&str>::new());
    }

    #[test]
    fn an_unfinished_or_lossy_report_fails() {
        let facts = good_facts();
        // Timed out before the end line: the report and every missing fact fail, by name.
        let rows = evaluate(&parse(&noisy_console(&facts[..4], None)), &expect());
        assert!(get(&rows, "report").value.contains("KILN-FACTS-END"));
        assert!(get(&rows, "firmware")
            .value
            .contains("did not report firmware"));
        assert_eq!(failed(&rows).len(), rows.len() - 2, "{rows:#?}");
        // The guest sent more lines than arrived.
        let rows = evaluate(
            &parse(&noisy_console(&facts, Some(facts.len() + 1))),
            &expect(),
        );
        assert_eq!(failed(&rows), vec!["report"]);
        assert!(get(&rows, "report")
            .value
            .contains("sent 22 facts, 21 were read"));
        // Nothing at all.
        let rows = evaluate(&parse(""), &expect());
        assert!(rows.iter().all(|r| !r.ok));
    }

    #[test]
    fn table_rendering() {
        let rows = vec![
            row("report", "complete: 2 facts", true),
            row("firmware", "uefi (booted with bios)", false),
        ];
        assert_eq!(
            render_table(&rows),
            "FACT      VALUE                    RESULT\n\
             report    complete: 2 facts        ok\n\
             firmware  uefi (booted with bios)  FAIL\n"
        );
    }

    #[test]
    fn report_json_shape() {
        let cfg = BootConfig::new("/img/debian.qcow2");
        let facts = good_facts();
        let outcome = BootOutcome {
            reached: true,
            seconds: 123.456,
            accel: "tcg".into(),
            disk_bytes: 4 * GIB,
            console: noisy_console(&facts, Some(facts.len())),
            qemu_stderr: String::new(),
            qemu_exit: None,
        };
        let r = CheckReport::new(&cfg, &outcome);
        assert!(r.passed && r.finished);
        let v = serde_json::to_value(&r).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "image",
                "arch",
                "firmware",
                "accel",
                "boot_seconds",
                "finished",
                "passed",
                "facts",
                "raw"
            ]
        );
        assert_eq!(v["firmware"], "bios");
        assert_eq!(v["arch"], "x86_64");
        assert_eq!(v["boot_seconds"], 123.5);
        assert_eq!(
            v["facts"][0],
            serde_json::json!({"name": "report", "value": "complete: 21 facts", "ok": true})
        );
        assert_eq!(v["raw"]["machine-id"], "3f6c0a1d9b2e4c7f8a5d6e1b2c3d4e5f");
    }

    #[test]
    fn user_data_is_cloud_config_carrying_the_script() {
        let ud = user_data(Arch::Aarch64);
        assert!(ud.starts_with("#cloud-config\n"));
        let v: serde_json::Value = serde_saphyr::from_str(&ud).unwrap();
        let wf = &v["write_files"][0];
        assert_eq!(wf["path"], SCRIPT_PATH);
        assert_eq!(wf["permissions"], "0755");
        assert_eq!(
            wf["content"].as_str().unwrap(),
            guest_script("/dev/ttyAMA0")
        );
        let cmd = v["runcmd"][0].as_array().unwrap();
        assert_eq!(cmd[..2], [serde_json::json!("sh"), serde_json::json!("-c")]);
        let line = cmd[2].as_str().unwrap();
        assert!(line.starts_with("systemd-run --no-block "), "{line}");
        assert!(line.contains(&format!("/bin/sh {SCRIPT_PATH}")), "{line}");
    }

    /// Runs the real guest script on this host with stand-ins for cloud-init and systemctl,
    /// writing to a file instead of the serial port: every line must parse, the count must
    /// match, and the facts that do not depend on the host must be what the stand-ins said.
    #[test]
    fn guest_script_runs_and_reports() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let stub = |name: &str, body: &str| {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        stub("cloud-init", "echo '...'; echo 'status: done'");
        stub(
            "systemctl",
            "case \"$1\" in\n\
             is-system-running) echo running ;;\n\
             list-units) echo 'a.service loaded failed failed A'; echo 'b.mount loaded failed failed B' ;;\n\
             esac",
        );
        let tty = d.path().join("tty");
        let script = d.path().join("check.sh");
        std::fs::write(&script, guest_script(&tty.display().to_string())).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = std::process::Command::new("sh")
            .arg(&script)
            .env("PATH", path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let console = std::fs::read_to_string(&tty).unwrap();
        let p = parse(&console);
        assert_eq!(p.end_count, Some(p.facts.len()), "{console}");
        let f = &p.facts;
        assert_eq!(f["cloud-init-status"], "done");
        assert_eq!(f["system-state"], "running");
        assert_eq!(f["failed-units"], "a.service,b.mount");
        assert!(["bios", "uefi"].contains(&f["firmware"].as_str()));
        assert!(f["boot-time"].parse::<i64>().unwrap() > 1_000_000_000);
        assert!(["yes", "no"].contains(&f["systemd-first-boot"].as_str()));
        assert!(f.contains_key("cmdline-consoles") && f.contains_key("ssh-host-keys"));
        assert!(f["root-fs-bytes"].parse::<u64>().unwrap() > 0, "{f:?}");
        // Every line of the report is a fact, the end line, or the leading blank line.
        for line in console.lines() {
            assert!(
                line.is_empty() || line.starts_with(FACT_MARKER) || line.starts_with(END_MARKER),
                "{line:?}"
            );
        }
    }
}
