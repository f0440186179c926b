//! Kernel uevents: parsing and the netlink listener.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, recvfrom, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// One kernel uevent (the keys the agent uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub devpath: String,
    pub subsystem: String,
    pub devname: String,
    pub devtype: String,
    pub seqnum: String,
    pub interface: String,
    pub major: Option<u32>,
    pub minor: Option<u32>,
}

impl Uevent {
    /// Parses a uevent datagram: `action@devpath\0KEY=VALUE\0...`. `None` for anything that is
    /// not UTF-8 or has no ACTION/DEVPATH.
    pub fn parse(data: &[u8]) -> Option<Uevent> {
        let text = std::str::from_utf8(data).ok()?;
        let mut ev = Uevent::default();
        for field in text.split('\0').skip(1) {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            ev.set(k, v);
        }
        (!ev.action.is_empty() && !ev.devpath.is_empty()).then_some(ev)
    }

    /// Parses the `KEY=VALUE` lines of a sysfs `uevent` file (no ACTION in there).
    pub fn from_sysfs(devpath: &str, subsystem: &str, text: &str) -> Uevent {
        let mut ev = Uevent {
            action: "add".into(),
            devpath: devpath.into(),
            subsystem: subsystem.into(),
            ..Default::default()
        };
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                if k != "DEVPATH" && k != "ACTION" && k != "SUBSYSTEM" {
                    ev.set(k, v);
                }
            }
        }
        ev
    }

    fn set(&mut self, k: &str, v: &str) {
        match k {
            "ACTION" => self.action = v.into(),
            "DEVPATH" => self.devpath = v.into(),
            "SUBSYSTEM" => self.subsystem = v.into(),
            "DEVNAME" => self.devname = v.into(),
            "DEVTYPE" => self.devtype = v.into(),
            "SEQNUM" => self.seqnum = v.into(),
            "INTERFACE" => self.interface = v.into(),
            "MAJOR" => self.major = v.parse().ok(),
            "MINOR" => self.minor = v.parse().ok(),
            _ => {}
        }
    }
}

/// A socket receiving the kernel's uevents (multicast group 1).
pub struct UeventSocket {
    fd: OwnedFd,
}

impl UeventSocket {
    pub fn open() -> std::io::Result<UeventSocket> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        // A bigger buffer so that a burst of hotplug events is not dropped.
        let size: libc::c_int = 4 << 20;
        // SAFETY: setsockopt with a pointer to an int of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1))?;
        Ok(UeventSocket { fd })
    }

    /// Blocks for the next kernel uevent. Datagrams sent by user space (udevd and others: sender
    /// port ≠ 0) and unparsable ones are skipped.
    pub fn next(&self) -> std::io::Result<Uevent> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let (n, from) = match recvfrom::<NetlinkAddr>(self.fd.as_raw_fd(), &mut buf) {
                Ok(r) => r,
                Err(nix::errno::Errno::EINTR) => continue,
                // The kernel dropped events for lack of buffer space; keep going.
                Err(nix::errno::Errno::ENOBUFS) => continue,
                Err(e) => return Err(e.into()),
            };
            if from.map(|a| a.pid()).unwrap_or(1) != 0 {
                continue;
            }
            if let Some(ev) = Uevent::parse(&buf[..n]) {
                return Ok(ev);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_datagram() {
        let d = b"add@/devices/virtual/block/loop7\0ACTION=add\0DEVPATH=/devices/virtual/block/loop7\0SUBSYSTEM=block\0MAJOR=7\0MINOR=7\0DEVNAME=loop7\0DEVTYPE=disk\0SEQNUM=42\0";
        let ev = Uevent::parse(d).unwrap();
        assert_eq!(ev.action, "add");
        assert_eq!(ev.devpath, "/devices/virtual/block/loop7");
        assert_eq!(ev.subsystem, "block");
        assert_eq!(ev.devname, "loop7");
        assert_eq!((ev.major, ev.minor), (Some(7), Some(7)));
        assert_eq!(ev.seqnum, "42");
        assert!(Uevent::parse(b"libudev\0\xff\xfe").is_none());
        assert!(Uevent::parse(b"x@y\0FOO=1\0").is_none());
    }

    #[test]
    fn parse_sysfs_file() {
        let ev = Uevent::from_sysfs(
            "/devices/pci0000:00/0000:00:02.0/virtio1/block/vda",
            "block",
            "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
        );
        assert_eq!(ev.action, "add");
        assert_eq!(ev.devname, "vda");
        assert_eq!(ev.major, Some(254));
    }
}
