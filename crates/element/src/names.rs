//! The syntax of names that element files hand to paths and commands.
//!
//! Element names become directory names in the merged hook tree and words in
//! `IMAGE_ELEMENT`, which hooks expand unquoted (`get_image_element_array` evaluates it);
//! package names become arguments of `apt-get install`; a package-installs `phase:` becomes a
//! file name under the hook tree. Each of them is checked here, once, when the file that holds
//! it is read, so that a name such as `$(reboot)`, `-oAPT::Get=x` or `../../x` is an input error
//! naming its file instead of a command run on the host or a file written outside the build.

use crate::phase::Phase;

/// Why `name` cannot be an element name, or `None` when it can.
///
/// Element names are what DIB's elements use: ASCII letters, digits, `_`, `-`, `+` and `.`,
/// starting with a letter, digit or `_`. Nothing else can pass through the shell words hooks
/// build from `IMAGE_ELEMENT` unchanged.
pub fn element_name_problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let first = chars.next()?;
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Some(format!(
            "it starts with {first:?}; an element name starts with a letter, a digit or _"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.')))
    {
        return Some(format!(
            "it contains {bad:?}; an element name holds only letters, digits, _, -, + and ."
        ));
    }
    None
}

/// Why `name` cannot be a package name, or `None` when it can.
///
/// The syntax is the Debian policy's (§5.6.7): lower-case letters, digits, `+`, `-` and `.`,
/// at least two characters, starting with a letter or digit. A name starting with `-` would
/// reach apt as an option.
pub fn package_name_problem(name: &str) -> Option<String> {
    let Some(first) = name.chars().next() else {
        return Some("the name is empty".to_string());
    };
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Some(format!(
            "it starts with {first:?}; a Debian package name starts with a lower-case letter or a digit"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.')))
    {
        return Some(format!(
            "it contains {bad:?}; a Debian package name holds only lower-case letters, digits, +, - and ."
        ));
    }
    if name.len() < 2 {
        return Some("a Debian package name is at least two characters long".to_string());
    }
    None
}

/// Why `name` cannot be a generic package name (a package-installs key or a legacy list
/// entry), or `None` when it can.
///
/// Generic names are mapped through `pkg-map` before they reach the package manager, so they
/// may hold what other distributions' names do (`NetworkManager`, `signed_grub_efi`,
/// `app-admin/sudo`): letters, digits, `_`, `-`, `+`, `.`, `:`, `/` and `@`, starting with a
/// letter, digit or `_`. What reaches apt is checked against [`package_name_problem`] once the
/// distribution is known.
pub fn generic_package_name_problem(name: &str) -> Option<String> {
    let Some(first) = name.chars().next() else {
        return Some("the name is empty".to_string());
    };
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Some(format!(
            "it starts with {first:?}; a package name starts with a letter, a digit or _"
        ));
    }
    name.chars()
        .find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.' | ':' | '/' | '@'))
        })
        .map(|c| {
            format!(
                "it contains {c:?}; a package name holds only letters, digits and _ - + . : / @"
            )
        })
}

/// The phase a package-installs `phase:` value names (`install.d`), or `None` when it names
/// no phase directory.
pub fn package_phase(value: &str) -> Option<Phase> {
    Phase::from_dir_name(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_names() {
        for good in [
            "base",
            "debian-minimal",
            "block-device-efi",
            "_private",
            "c++",
            "v1.2",
            "x",
        ] {
            assert_eq!(element_name_problem(good), None, "{good}");
        }
        for bad in [
            "$(reboot)",
            "a b",
            "-dash",
            ".hidden",
            "semi;colon",
            "quote'",
            "tab\t",
            "ünï",
            "back`tick`",
        ] {
            assert!(element_name_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn package_names() {
        for good in [
            "vim",
            "g++",
            "linux-image-amd64",
            "python3.11",
            "0ad",
            "xz-utils",
        ] {
            assert_eq!(package_name_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "a",
            "-oAPT::Get=1",
            "--reinstall",
            "Vim",
            "foo bar",
            "foo;rm",
            "pkg=1.0",
            "pkg:amd64",
            "$(id)",
            ".dot",
        ] {
            assert!(package_name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn generic_package_names() {
        for good in [
            "vim",
            "NetworkManager",
            "signed_grub_efi",
            "app-admin/sudo",
            "python3-PyYAML",
            "x",
        ] {
            assert_eq!(generic_package_name_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "-oAPT::Get=1",
            "--reinstall",
            "foo bar",
            "foo;rm",
            "$(id)",
            ".dot",
            "a\tb",
        ] {
            assert!(generic_package_name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn phases() {
        assert_eq!(package_phase("install.d"), Some(Phase::Install));
        assert_eq!(package_phase("pre-install.d"), Some(Phase::PreInstall));
        assert_eq!(package_phase("finalise.d"), Some(Phase::Finalise));
        for bad in [
            "install",
            "../../x",
            "install.d/../x",
            "",
            "/tmp/x.d",
            "x.d",
        ] {
            assert_eq!(package_phase(bad), None, "{bad}");
        }
    }
}
