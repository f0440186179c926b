//! The mount-option vocabulary: option words become mount flags, everything else is file-system
//! data.

use nix::mount::MsFlags;

use crate::error::{AgentError, Result};

/// Flags set by an option word.
const SET: &[(&str, MsFlags)] = &[
    ("bind", MsFlags::MS_BIND),
    ("rbind", MsFlags::MS_BIND.union(MsFlags::MS_REC)),
    ("dirsync", MsFlags::MS_DIRSYNC),
    ("iversion", MsFlags::MS_I_VERSION),
    ("mand", MsFlags::MS_MANDLOCK),
    ("noatime", MsFlags::MS_NOATIME),
    ("nodev", MsFlags::MS_NODEV),
    ("nodiratime", MsFlags::MS_NODIRATIME),
    ("noexec", MsFlags::MS_NOEXEC),
    ("nosuid", MsFlags::MS_NOSUID),
    ("unbindable", MsFlags::MS_UNBINDABLE),
    ("runbindable", MsFlags::MS_UNBINDABLE.union(MsFlags::MS_REC)),
    ("private", MsFlags::MS_PRIVATE),
    ("rprivate", MsFlags::MS_PRIVATE.union(MsFlags::MS_REC)),
    ("shared", MsFlags::MS_SHARED),
    ("rshared", MsFlags::MS_SHARED.union(MsFlags::MS_REC)),
    ("slave", MsFlags::MS_SLAVE),
    ("rslave", MsFlags::MS_SLAVE.union(MsFlags::MS_REC)),
    ("relatime", MsFlags::MS_RELATIME),
    ("remount", MsFlags::MS_REMOUNT),
    ("ro", MsFlags::MS_RDONLY),
    ("silent", MsFlags::MS_SILENT),
    ("strictatime", MsFlags::MS_STRICTATIME),
    ("sync", MsFlags::MS_SYNCHRONOUS),
];

/// Flags cleared by an option word.
const CLEAR: &[(&str, MsFlags)] = &[
    ("defaults", MsFlags::empty()),
    ("async", MsFlags::MS_SYNCHRONOUS),
    ("atime", MsFlags::MS_NOATIME),
    ("dev", MsFlags::MS_NODEV),
    ("diratime", MsFlags::MS_NODIRATIME),
    ("exec", MsFlags::MS_NOEXEC),
    ("loud", MsFlags::MS_SILENT),
    ("noiversion", MsFlags::MS_I_VERSION),
    ("nomand", MsFlags::MS_MANDLOCK),
    ("norelatime", MsFlags::MS_RELATIME),
    ("nostrictatime", MsFlags::MS_STRICTATIME),
    ("rw", MsFlags::MS_RDONLY),
    ("suid", MsFlags::MS_NOSUID),
];

/// Propagation flags: they cannot be combined with a mount in one call.
pub const PROPAGATION: MsFlags = MsFlags::MS_SHARED
    .union(MsFlags::MS_PRIVATE)
    .union(MsFlags::MS_SLAVE)
    .union(MsFlags::MS_UNBINDABLE);

/// Mount flags and the data string made from a list of options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub data: String,
}

impl MountOptions {
    pub fn read_only(&self) -> bool {
        self.flags.contains(MsFlags::MS_RDONLY)
    }
}

/// Splits option words into flags and data. The word `loop` is refused (the agent never sets up
/// loop devices for the host), and so is data longer than a page (the kernel limit).
pub fn parse(options: &[String]) -> Result<MountOptions> {
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for opt in options {
        let opt = opt.as_str();
        if opt.is_empty() {
            continue;
        }
        if opt.contains('\0') {
            return Err(AgentError::invalid_argument(format!(
                "mount option {opt:?} contains a NUL byte"
            )));
        }
        if opt == "loop" {
            return Err(AgentError::invalid_argument(
                "the mount option \"loop\" is not supported",
            ));
        }
        if let Some((_, f)) = SET.iter().find(|(w, _)| *w == opt) {
            flags |= *f;
        } else if let Some((_, f)) = CLEAR.iter().find(|(w, _)| *w == opt) {
            flags &= !*f;
        } else {
            data.push(opt);
        }
    }
    let data = data.join(",");
    let page = page_size();
    if data.len() >= page {
        return Err(AgentError::invalid_argument(format!(
            "mount data of {} bytes exceeds the page size ({page} bytes)",
            data.len()
        )));
    }
    Ok(MountOptions { flags, data })
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// `key=value` options as a map (entries with exactly one `=`; each option may itself be a
/// comma-separated list).
pub fn key_values(options: &[String]) -> std::collections::BTreeMap<String, String> {
    let mut map = std::collections::BTreeMap::new();
    for opt in options {
        for part in opt.split(',') {
            let mut it = part.splitn(3, '=');
            if let (Some(k), Some(v), None) = (it.next(), it.next(), it.next()) {
                if !k.is_empty() {
                    map.insert(k.to_string(), v.to_string());
                }
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn words_become_flags_and_the_rest_data() {
        let o = parse(&v(&["ro", "nosuid", "size=10m", "rbind", "mode=755", "rw"])).unwrap();
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC
        );
        assert_eq!(o.data, "size=10m,mode=755");
        let o = parse(&v(&["defaults", "ro", "rshared"])).unwrap();
        assert!(o.read_only());
        assert!(o.flags.contains(MsFlags::MS_SHARED | MsFlags::MS_REC));
    }

    #[test]
    fn loop_and_long_data_are_refused() {
        assert_eq!(
            parse(&v(&["loop"])).unwrap_err().code,
            ttrpc::Code::INVALID_ARGUMENT
        );
        let long = "x".repeat(page_size());
        assert!(parse(&[long]).is_err());
    }

    #[test]
    fn key_value_map() {
        let m = key_values(&v(&["fsgid=10,mode=0770", "ro", "a=b=c"]));
        assert_eq!(m.get("fsgid").unwrap(), "10");
        assert_eq!(m.get("mode").unwrap(), "0770");
        assert!(!m.contains_key("a"));
    }
}
