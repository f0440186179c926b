//! Finding a hot-plugged NIC from its PCI path (UpdateInterface's `devicePath`).
//!
//! The path is parsed and resolved below the configured sysfs root by the device module
//! (`crate::device::pci`), so tests can use a synthetic tree. The NIC's link name is the entry of
//! the device's `net/` directory (or `virtio<N>/net/` for virtio-net). Waiting polls sysfs, which
//! also finds a NIC that was there before the agent started.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::device::pci::DevTreePath;

/// The device's sysfs directory, if every level of the path exists.
fn device_dir(sysfs: &Path, path: &DevTreePath) -> Option<PathBuf> {
    let resolved = crate::device::pci::resolve(sysfs, path).ok()?;
    let dir = sysfs.join(resolved.devpath().trim_start_matches('/'));
    dir.is_dir().then_some(dir)
}

/// Link names registered under a PCI device: `net/*` and `virtio*/net/*`.
fn net_names(dev: &Path) -> Vec<String> {
    let mut dirs = vec![dev.join("net")];
    if let Ok(entries) = std::fs::read_dir(dev) {
        let mut virtio: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("virtio"))
            .map(|e| e.path().join("net"))
            .collect();
        virtio.sort();
        dirs.extend(virtio);
    }
    let mut names = Vec::new();
    for d in dirs {
        if let Ok(entries) = std::fs::read_dir(&d) {
            let mut found: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            found.sort();
            names.extend(found);
        }
    }
    names
}

/// Waits (polling sysfs) up to `timeout` for a link to appear under the device at `path`; returns
/// its name.
pub async fn wait_for_netdev(
    sysfs: &Path,
    path: &DevTreePath,
    timeout: Duration,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(dev) = device_dir(sysfs, path) {
            if let Some(name) = net_names(&dev).into_iter().next() {
                return Some(name);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_synthetic_tree() {
        let sys = tempfile::tempdir().unwrap();
        let root = sys.path().join("devices/pci0000:00");
        let bridge = root.join("0000:00:05.0");
        std::fs::create_dir_all(bridge.join("pci_bus/0000:01")).unwrap();
        let nic = bridge.join("0000:01:02.0");
        std::fs::create_dir_all(nic.join("virtio3/net/eth7")).unwrap();
        let p: DevTreePath = "05/02".parse().unwrap();
        assert_eq!(device_dir(sys.path(), &p), Some(nic.clone()));
        assert_eq!(net_names(&nic), vec!["eth7".to_string()]);
        std::fs::create_dir_all(nic.join("net/eth8")).unwrap();
        assert_eq!(
            net_names(&nic),
            vec!["eth8".to_string(), "eth7".to_string()]
        );
        let absent: DevTreePath = "06".parse().unwrap();
        assert_eq!(device_dir(sys.path(), &absent), None);
    }
}
