//! Device whitelist of the v1 `devices` controller.
//!
//! A container cgroup starts from "deny everything", then gets the default devices every container
//! needs, then the spec rules in order. A wildcard deny-all rule in the spec (as sent by most
//! runtimes) is the starting point already and is skipped, so it does not wipe the defaults; a
//! wildcard allow-all rule switches the cgroup to "everything allowed".

use super::write_file;
use anyhow::{Context, Result};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
use std::path::Path;

/// Devices every container may use: `(type, major, minor, access)`, `None` = any number.
const DEFAULT_ALLOWED: &[(char, Option<i64>, Option<i64>, &str)] = &[
    ('c', Some(1), Some(3), "rwm"),    // /dev/null
    ('c', Some(1), Some(5), "rwm"),    // /dev/zero
    ('c', Some(1), Some(7), "rwm"),    // /dev/full
    ('c', Some(5), Some(0), "rwm"),    // /dev/tty
    ('c', Some(1), Some(9), "rwm"),    // /dev/urandom
    ('c', Some(1), Some(8), "rwm"),    // /dev/random
    ('c', None, None, "m"),            // mknod of any char device
    ('b', None, None, "m"),            // mknod of any block device
    ('c', Some(5), Some(1), "rwm"),    // /dev/console
    ('c', Some(136), None, "rwm"),     // /dev/pts/*
    ('c', Some(5), Some(2), "rwm"),    // /dev/ptmx
    ('c', Some(10), Some(200), "rwm"), // /dev/net/tun
];

/// True for a rule covering every device with full access (type `a`, no or zero/negative
/// major and minor, access absent or containing r, w and m).
pub(crate) fn is_wildcard_all(rule: &LinuxDeviceCgroup) -> bool {
    let any_num = |n: Option<i64>| n.is_none_or(|n| n <= 0);
    let full_access = rule
        .access()
        .as_deref()
        .is_none_or(|a| a.is_empty() || (a.contains('r') && a.contains('w') && a.contains('m')));
    matches!(rule.typ(), None | Some(LinuxDeviceType::A))
        && any_num(rule.major())
        && any_num(rule.minor())
        && full_access
}

/// True for a wildcard rule that allows every device.
pub(crate) fn is_allow_all(rule: &LinuxDeviceCgroup) -> bool {
    rule.allow() && is_wildcard_all(rule)
}

/// `"<type> <major>:<minor> <access>"` as the devices controller expects; None for types the
/// controller cannot express (FIFOs).
pub(crate) fn rule_line(rule: &LinuxDeviceCgroup) -> Option<String> {
    let typ = match rule.typ().unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::A => 'a',
        LinuxDeviceType::B => 'b',
        LinuxDeviceType::C | LinuxDeviceType::U => 'c',
        LinuxDeviceType::P => return None,
    };
    let access = rule
        .access()
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or("rwm");
    Some(format_line(typ, rule.major(), rule.minor(), access))
}

fn format_line(typ: char, major: Option<i64>, minor: Option<i64>, access: &str) -> String {
    let num = |n: Option<i64>| match n {
        Some(n) if n >= 0 => n.to_string(),
        _ => "*".to_string(),
    };
    format!("{typ} {}:{} {access}", num(major), num(minor))
}

/// Writes the whitelist to the v1 devices cgroup `dir`. With `update` and no rules nothing is
/// changed (UpdateContainer without devices).
pub(crate) fn apply_v1(dir: &Path, rules: &[LinuxDeviceCgroup], update: bool) -> Result<()> {
    if update && rules.is_empty() {
        return Ok(());
    }
    let allow = dir.join("devices.allow");
    let deny = dir.join("devices.deny");
    let reset_to_defaults = || -> Result<()> {
        write_file(&deny, "a")?;
        for (t, maj, min, acc) in DEFAULT_ALLOWED {
            write_file(&allow, &format_line(*t, *maj, *min, acc))?;
        }
        Ok(())
    };
    reset_to_defaults()?;
    let mut allowed_all = false;
    for rule in rules {
        if is_wildcard_all(rule) {
            if rule.allow() && !allowed_all {
                write_file(&allow, "a")?;
                allowed_all = true;
            } else if !rule.allow() && allowed_all {
                reset_to_defaults()?;
                allowed_all = false;
            }
            continue;
        }
        let Some(line) = rule_line(rule) else {
            tracing::warn!(
                "device rule for a FIFO cannot be expressed in the devices cgroup, ignored"
            );
            continue;
        };
        let file = if rule.allow() { &allow } else { &deny };
        write_file(file, &line).context("cannot apply a device rule")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn rule(
        allow: bool,
        typ: LinuxDeviceType,
        maj: Option<i64>,
        min: Option<i64>,
        acc: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(acc);
        if let Some(m) = maj {
            b = b.major(m);
        }
        if let Some(m) = min {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    #[test]
    fn wildcard_detection() {
        assert!(is_allow_all(&rule(
            true,
            LinuxDeviceType::A,
            None,
            None,
            "rwm"
        )));
        assert!(is_allow_all(&rule(
            true,
            LinuxDeviceType::A,
            Some(0),
            Some(-1),
            "mrw"
        )));
        assert!(!is_allow_all(&rule(
            true,
            LinuxDeviceType::A,
            None,
            None,
            "rw"
        )));
        assert!(!is_allow_all(&rule(
            true,
            LinuxDeviceType::C,
            None,
            None,
            "rwm"
        )));
        assert!(!is_allow_all(&rule(
            false,
            LinuxDeviceType::A,
            None,
            None,
            "rwm"
        )));
        assert!(is_wildcard_all(&rule(
            false,
            LinuxDeviceType::A,
            None,
            None,
            "rwm"
        )));
    }

    #[test]
    fn lines() {
        assert_eq!(
            rule_line(&rule(true, LinuxDeviceType::C, Some(10), Some(229), "rw")).unwrap(),
            "c 10:229 rw"
        );
        assert_eq!(
            rule_line(&rule(true, LinuxDeviceType::B, Some(8), None, "")).unwrap(),
            "b 8:* rwm"
        );
        assert_eq!(
            rule_line(&rule(false, LinuxDeviceType::U, Some(-1), Some(-1), "m")).unwrap(),
            "c *:* m"
        );
        assert!(rule_line(&rule(true, LinuxDeviceType::P, None, None, "rwm")).is_none());
    }
}
