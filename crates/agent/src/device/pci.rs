//! PCI paths (`bridge/slot` form) and their resolution through sysfs.
//!
//! A PCI path names a device by the slot (and function) at each bridge level starting from the
//! root bus: `02/00` is function 0 of slot 0 behind the bridge at slot 2. A "device-tree path" may
//! start with a pxb-pcie root complex id (an element ≥ 0x20 in paths of three or more elements).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};

/// One element: slot 0..=0x1f, function 0..=7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotFn {
    pub slot: u8,
    pub func: u8,
}

/// A PCI path from the root bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciPath(pub Vec<SlotFn>);

impl fmt::Display for PciPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{:02x}", e.slot)?;
            if e.func != 0 {
                write!(f, ".{:x}", e.func)?;
            }
        }
        Ok(())
    }
}

fn parse_element(text: &str, whole: &str) -> Result<SlotFn> {
    let bad = |why: &str| {
        AgentError::invalid_argument(format!(
            "invalid PCI path {whole:?}: element {text:?} {why}"
        ))
    };
    let (slot, func) = match text.split_once('.') {
        Some((s, f)) => (s, Some(f)),
        None => (text, None),
    };
    if slot.is_empty() || slot.len() > 2 {
        return Err(bad("needs a slot of one or two hex digits"));
    }
    let slot = u8::from_str_radix(slot, 16).map_err(|_| bad("has a non-hex slot"))?;
    if slot > 0x1f {
        return Err(bad("has a slot above 0x1f"));
    }
    let func = match func {
        None => 0,
        Some(f) if f.len() == 1 => {
            u8::from_str_radix(f, 16).map_err(|_| bad("has a non-hex function"))?
        }
        Some(_) => return Err(bad("needs a function of one hex digit")),
    };
    if func > 7 {
        return Err(bad("has a function above 7"));
    }
    Ok(SlotFn { slot, func })
}

impl std::str::FromStr for PciPath {
    type Err = AgentError;

    fn from_str(s: &str) -> Result<PciPath> {
        if s.is_empty() {
            return Err(AgentError::invalid_argument("the PCI path is empty"));
        }
        let elems = s
            .split('/')
            .map(|e| parse_element(e, s))
            .collect::<Result<Vec<_>>>()?;
        Ok(PciPath(elems))
    }
}

/// A PCI path on a given root complex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevTreePath {
    /// Root complex number (`pci0000:<rc>`), 0 for the default one.
    pub root_complex: u8,
    pub path: PciPath,
}

impl fmt::Display for DevTreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.root_complex != 0 {
            write!(f, "{:02x}/", self.root_complex)?;
        }
        write!(f, "{}", self.path)
    }
}

impl std::str::FromStr for DevTreePath {
    type Err = AgentError;

    fn from_str(s: &str) -> Result<DevTreePath> {
        let elems: Vec<&str> = s.split('/').collect();
        if elems.len() >= 3 {
            if let Ok(rc) = u8::from_str_radix(elems[0], 16) {
                if rc >= 0x20 && elems[0].len() <= 2 {
                    let rest = elems[1..].join("/");
                    return Ok(DevTreePath {
                        root_complex: rc,
                        path: rest.parse()?,
                    });
                }
            }
        }
        Ok(DevTreePath {
            root_complex: 0,
            path: s.parse()?,
        })
    }
}

/// The sysfs directory of a root bus.
pub fn root_bus_dir(sysfs: &Path, root_complex: u8) -> PathBuf {
    let name = format!("pci0000:{root_complex:02x}");
    let direct = sysfs.join("devices").join(&name);
    if cfg!(target_arch = "aarch64") && !direct.exists() {
        // Device-tree (non-ACPI) guests hang the root bus below a platform device.
        let platform = sysfs.join("devices/platform");
        if let Ok(entries) = std::fs::read_dir(&platform) {
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pcie"))
                .map(|e| e.path().join(&name))
                .filter(|p| p.exists())
                .collect();
            found.sort();
            if let Some(p) = found.into_iter().next() {
                return p;
            }
        }
        return platform.join("4010000000.pcie").join(&name);
    }
    direct
}

/// Where a PCI path leads in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The root bus directory relative to the sysfs root, e.g. `/devices/pci0000:00`.
    pub root_rel: String,
    /// The device relative to the root bus, e.g. `/0000:00:06.0/0000:02:00.0`.
    pub rel: String,
}

impl Resolved {
    /// The DEVPATH of the device itself (as in uevents).
    pub fn devpath(&self) -> String {
        format!("{}{}", self.root_rel, self.rel)
    }

    /// The guest BDF of the device (last element).
    pub fn bdf(&self) -> &str {
        self.rel.rsplit('/').next().unwrap_or("")
    }
}

fn is_pci_addr(name: &str) -> bool {
    // dddd:bb:ss.f
    let b = name.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && name
            .chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// The bus behind the bridge at `dir`: the single entry of `pci_bus/`, or, without that
/// directory, the common bus of the child devices.
fn bus_behind(dir: &Path, path: &DevTreePath) -> Result<String> {
    let err = |why: String| {
        AgentError::not_found(format!(
            "cannot resolve PCI path {path}: {} {why}",
            dir.display()
        ))
    };
    match std::fs::read_dir(dir.join("pci_bus")) {
        Ok(entries) => {
            let names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            match names.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(err("has an empty pci_bus directory".into())),
                many => Err(err(format!("has several buses: {}", many.join(", ")))),
            }
        }
        Err(_) => {
            let entries =
                std::fs::read_dir(dir).map_err(|e| err(format!("cannot be listed ({e})")))?;
            let mut buses: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| is_pci_addr(n))
                .map(|n| n[..7].to_string())
                .collect();
            buses.sort();
            buses.dedup();
            match buses.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(err("is not a bridge with devices behind it".into())),
                many => Err(err(format!(
                    "has devices on several buses: {}",
                    many.join(", ")
                ))),
            }
        }
    }
}

/// Resolves a PCI path through sysfs (`sysfs` is the sysfs root, `/sys` normally).
pub fn resolve(sysfs: &Path, path: &DevTreePath) -> Result<Resolved> {
    let root = root_bus_dir(sysfs, path.root_complex);
    let root_rel = format!("/{}", root.strip_prefix(sysfs).unwrap_or(&root).display());
    let mut bus = "0000:00".to_string();
    let mut rel = String::new();
    let n = path.path.0.len();
    for (i, e) in path.path.0.iter().enumerate() {
        rel.push_str(&format!("/{bus}:{:02x}.{:x}", e.slot, e.func));
        if i + 1 < n {
            let dir = PathBuf::from(format!("{}{rel}", root.display()));
            bus = bus_behind(&dir, path)?;
        }
    }
    Ok(Resolved { root_rel, rel })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let p: PciPath = "02/01.1/1f".parse().unwrap();
        assert_eq!(p.0.len(), 3);
        assert_eq!(p.0[1], SlotFn { slot: 1, func: 1 });
        assert_eq!(p.to_string(), "02/01.1/1f");
        for bad in ["", "20", "02/", "2g", "02.8", "123", "02.11", "/02"] {
            assert!(bad.parse::<PciPath>().is_err(), "{bad}");
        }
        let d: DevTreePath = "21/02/00".parse().unwrap();
        assert_eq!(d.root_complex, 0x21);
        assert_eq!(d.path.to_string(), "02/00");
        let d: DevTreePath = "02/00/01".parse().unwrap();
        assert_eq!(d.root_complex, 0);
        assert_eq!(d.path.0.len(), 3);
        // Two elements: no root complex, so 0x21 is an (invalid) slot.
        assert!("21/02".parse::<DevTreePath>().is_err());
    }

    #[test]
    fn pci_address_names() {
        assert!(is_pci_addr("0000:00:02.0"));
        assert!(!is_pci_addr("pci_bus"));
        assert!(!is_pci_addr("0000:00:02"));
    }
}
