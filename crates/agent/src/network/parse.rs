//! Validation of network requests: every field is parsed and checked before anything is changed.
//!
//! Errors are INVALID_ARGUMENT and name the field (`interface.IPAddresses[1].mask`,
//! `routes[2].gateway`, ...). Nothing here touches the system.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use protocols::{agent, types};

use super::pci::DevTreePath;
use crate::error::{AgentError, Result};

/// `IFF_NOARP`: the only bit of `Interface.raw_flags` that UpdateInterface acts on.
pub const IFF_NOARP: u32 = 0x80;
/// Linux `IFNAMSIZ`: link names are at most 15 bytes.
pub const IFNAMSIZ: usize = 16;
/// `RT_SCOPE_LINK`: routes with a gateway must have a smaller (wider) scope.
pub const RT_SCOPE_LINK: u8 = 253;
/// `RTNH_F_ONLINK`: the only route flag a request may set.
pub const RTNH_F_ONLINK: u32 = 0x4;
/// Route flags the kernel reports about a route's state (dead, offloaded, link down, unresolved,
/// trapped). They may come back from ListRoutes and are dropped silently.
pub const RTNH_STATUS_FLAGS: u32 = 0x1 | 0x8 | 0x10 | 0x20 | 0x40;
/// `NUD_PERMANENT`: the state of a neighbour entry whose request says 0.
pub const NUD_PERMANENT: u16 = 0x80;

fn invalid(field: &str, what: impl std::fmt::Display) -> AgentError {
    AgentError::invalid_argument(format!("{field}: {what}"))
}

/// Parses a hardware address written as six two-digit hex octets separated by `:` or `-`.
pub fn parse_mac(field: &str, s: &str) -> Result<[u8; 6]> {
    let bad = || {
        invalid(
            field,
            format!("{s:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)"),
        )
    };
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// How ListInterfaces shows a link-layer address: six bytes as `AA:BB:CC:DD:EE:FF` (upper case, as
/// upstream), four or sixteen bytes (IP tunnels) as an IP address, anything else as colon-separated
/// hex, nothing as "".
pub fn format_hw_addr(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            Ipv6Addr::from(a).to_string()
        }
        _ => bytes
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    }
}

/// Parses a bare IP address (no prefix).
pub fn parse_ip(field: &str, s: &str) -> Result<IpAddr> {
    if s.is_empty() {
        return Err(invalid(field, "missing IP address"));
    }
    s.parse::<IpAddr>()
        .map_err(|_| invalid(field, format!("{s:?} is not an IP address")))
}

/// The largest prefix length of an address family.
pub fn max_prefix(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// Parses a decimal prefix length valid for `ip`'s family.
pub fn parse_prefix(field: &str, s: &str, ip: &IpAddr) -> Result<u8> {
    let max = max_prefix(ip);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 3 {
        return Err(invalid(
            field,
            format!("{s:?} is not a prefix length (expected a number from 0 to {max})"),
        ));
    }
    let n: u16 = s.parse().unwrap_or(u16::MAX);
    if n > u16::from(max) {
        return Err(invalid(
            field,
            format!("prefix length {n} is too long for {ip} (at most {max})"),
        ));
    }
    Ok(n as u8)
}

/// Whether `ip` has bits set beyond its first `prefix` bits.
fn has_host_bits(ip: &IpAddr, prefix: u8) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let v = u32::from(*a);
            prefix < 32 && (v & (u32::MAX >> prefix)) != 0
        }
        IpAddr::V6(a) => {
            let v = u128::from(*a);
            prefix < 128 && (v & (u128::MAX >> prefix)) != 0
        }
    }
}

/// Parses `addr/len` or a bare address (a host: /32 or /128). With `network`, the address must
/// be the network address of the prefix (no host bits set), as the kernel requires for routes.
pub fn parse_cidr(field: &str, s: &str, network: bool) -> Result<(IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip = parse_ip(field, addr)?;
    let prefix = match len {
        Some(l) => parse_prefix(field, l, &ip)?,
        None => max_prefix(&ip),
    };
    if network && has_host_bits(&ip, prefix) {
        return Err(invalid(
            field,
            format!(
                "{s:?} has host bits set (the network is {})",
                mask(&ip, prefix)
            ),
        ));
    }
    Ok((ip, prefix))
}

/// `ip` with every bit beyond the prefix cleared, written as `addr/len`.
fn mask(ip: &IpAddr, prefix: u8) -> String {
    let net = match ip {
        IpAddr::V4(a) => {
            let keep = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(*a) & keep))
        }
        IpAddr::V6(a) => {
            let keep = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(*a) & keep))
        }
    };
    format!("{net}/{prefix}")
}

/// Checks a link name the way the kernel does (`dev_valid_name`).
pub fn validate_ifname(field: &str, name: &str) -> Result<()> {
    if name.len() >= IFNAMSIZ {
        return Err(invalid(
            field,
            format!("{name:?} is longer than {} bytes", IFNAMSIZ - 1),
        ));
    }
    if name == "." || name == ".." {
        return Err(invalid(field, format!("{name:?} is not a valid link name")));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return Err(invalid(
            field,
            format!("{name:?} contains a character not allowed in link names (/, :, NUL or white space)"),
        ));
    }
    Ok(())
}

fn check_unicast(field: &str, ip: &IpAddr) -> Result<()> {
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(invalid(field, format!("{ip} is not a unicast address")));
    }
    Ok(())
}

/// A validated UpdateInterface request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// The name the link must end with; `None` keeps its name.
    pub name: Option<String>,
    pub hw_addr: Option<[u8; 6]>,
    /// `None` keeps the MTU (a request with 0).
    pub mtu: Option<u32>,
    pub noarp: bool,
    /// The addresses the link must end with, in request order, without duplicates.
    pub addresses: Vec<(IpAddr, u8)>,
    pub pci_path: Option<DevTreePath>,
    /// Echoed in the reply.
    pub device: String,
    pub device_path: String,
}

/// Validates UpdateInterface's `interface`.
pub fn interface_spec(iface: Option<&types::Interface>) -> Result<InterfaceSpec> {
    let iface = iface.ok_or_else(|| {
        AgentError::invalid_argument("interface: missing (the request names no interface)")
    })?;
    let name = if iface.name.is_empty() {
        None
    } else {
        validate_ifname("interface.name", &iface.name)?;
        Some(iface.name.clone())
    };
    let hw_addr = if iface.hwAddr.is_empty() {
        None
    } else {
        Some(parse_mac("interface.hwAddr", &iface.hwAddr)?)
    };
    let pci_path = if iface.devicePath.is_empty() {
        None
    } else {
        Some(
            iface
                .devicePath
                .parse::<DevTreePath>()
                .map_err(|e| invalid("interface.devicePath", e.message))?,
        )
    };
    if name.is_none() && hw_addr.is_none() && pci_path.is_none() {
        return Err(AgentError::invalid_argument(
            "interface: neither hwAddr, name nor devicePath is set, so no link can be chosen",
        ));
    }
    let mtu = match iface.mtu {
        0 => None,
        m => Some(
            u32::try_from(m).map_err(|_| invalid("interface.mtu", format!("{m} is too large")))?,
        ),
    };
    let mut addresses: Vec<(IpAddr, u8)> = Vec::new();
    for (i, a) in iface.IPAddresses.iter().enumerate() {
        let field = format!("interface.IPAddresses[{i}]");
        let ip = parse_ip(&format!("{field}.address"), a.address.trim())?;
        check_unicast(&format!("{field}.address"), &ip)?;
        let prefix = parse_prefix(&format!("{field}.mask"), a.mask.trim(), &ip)?;
        if !addresses.contains(&(ip, prefix)) {
            addresses.push((ip, prefix));
        }
    }
    Ok(InterfaceSpec {
        name,
        hw_addr,
        mtu,
        noarp: iface.raw_flags & IFF_NOARP != 0,
        addresses,
        pci_path,
        device: iface.device.clone(),
        device_path: iface.devicePath.clone(),
    })
}

/// A validated route of UpdateRoutes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// `routes[i] (<dest> via <gw> dev <dev>)`, for error messages.
    pub label: String,
    pub v6: bool,
    /// The destination network; the unspecified address with prefix 0 for a default route.
    pub dest: (IpAddr, u8),
    pub gateway: Option<IpAddr>,
    pub device: String,
    /// A source-prefix selector (RTA_SRC), from `source` written as `addr/len` with len > 0.
    pub src: Option<(IpAddr, u8)>,
    /// A preferred source address (RTA_PREFSRC), from a bare `source` address (or `addr/0`).
    pub prefsrc: Option<IpAddr>,
    pub scope: u8,
    pub flags: u32,
    pub mtu: u32,
}

impl RouteSpec {
    pub fn has_gateway(&self) -> bool {
        self.gateway.is_some()
    }
}

/// Describes a route for messages: `10.0.0.0/8 via 192.0.2.1 dev eth0`.
pub fn describe_route(r: &types::Route) -> String {
    let mut s = if r.dest.is_empty() {
        "default".to_string()
    } else {
        r.dest.clone()
    };
    if !r.gateway.is_empty() {
        s.push_str(&format!(" via {}", r.gateway));
    }
    if !r.device.is_empty() {
        s.push_str(&format!(" dev {}", r.device));
    }
    if !r.source.is_empty() {
        s.push_str(&format!(" src {}", r.source));
    }
    s
}

/// Validates UpdateRoutes' `routes`.
pub fn route_specs(routes: Option<&agent::Routes>) -> Result<Vec<RouteSpec>> {
    let routes = routes.ok_or_else(|| {
        AgentError::invalid_argument("routes: missing (the request has no route list)")
    })?;
    routes
        .Routes
        .iter()
        .enumerate()
        .map(|(i, r)| route_spec(i, r))
        .collect()
}

fn route_spec(i: usize, r: &types::Route) -> Result<RouteSpec> {
    let field = format!("routes[{i}]");
    let label = format!("{field} ({})", describe_route(r));
    let err = |sub: &str, what: String| {
        AgentError::invalid_argument(format!(
            "{field}.{sub}: {what} in route {}",
            describe_route(r)
        ))
    };
    let wrap = |e: AgentError| {
        AgentError::invalid_argument(format!("{} in route {}", e.message, describe_route(r)))
    };

    if r.device.is_empty() {
        return Err(err(
            "device",
            "missing (every route needs an output link)".into(),
        ));
    }
    validate_ifname(&format!("{field}.device"), &r.device).map_err(wrap)?;

    let dest_str = r.dest.trim();
    let dest = if dest_str.is_empty() || dest_str == "default" {
        None
    } else {
        Some(parse_cidr(&format!("{field}.dest"), dest_str, true).map_err(wrap)?)
    };
    let gateway = if r.gateway.trim().is_empty() {
        None
    } else {
        let g = parse_ip(&format!("{field}.gateway"), r.gateway.trim()).map_err(wrap)?;
        check_unicast(&format!("{field}.gateway"), &g).map_err(wrap)?;
        Some(g)
    };
    let source = r.source.trim();
    let (src, prefsrc) = if source.is_empty() {
        (None, None)
    } else if source.contains('/') {
        let (ip, len) = parse_cidr(&format!("{field}.source"), source, false).map_err(wrap)?;
        if len == 0 {
            (None, Some(ip))
        } else {
            let (ip, len) = parse_cidr(&format!("{field}.source"), source, true).map_err(wrap)?;
            (Some((ip, len)), None)
        }
    } else {
        let ip = parse_ip(&format!("{field}.source"), source).map_err(wrap)?;
        check_unicast(&format!("{field}.source"), &ip).map_err(wrap)?;
        (None, Some(ip))
    };

    // The family follows the addresses; the `family` field decides only when none is given.
    let mut fams: Vec<(&str, bool)> = Vec::new();
    if let Some((ip, _)) = dest {
        fams.push(("dest", ip.is_ipv6()));
    }
    if let Some(ip) = gateway {
        fams.push(("gateway", ip.is_ipv6()));
    }
    if let Some((ip, _)) = src {
        fams.push(("source", ip.is_ipv6()));
    }
    if let Some(ip) = prefsrc {
        fams.push(("source", ip.is_ipv6()));
    }
    let v6 = match fams.first() {
        Some(&(_, v6)) => {
            if let Some((name, _)) = fams.iter().find(|(_, f)| *f != v6) {
                return Err(err(
                    name,
                    format!(
                        "the address is not of the same family as the route's {}",
                        fams[0].0
                    ),
                ));
            }
            v6
        }
        None => match r.family.enum_value() {
            Ok(types::IPFamily::v4) => false,
            Ok(types::IPFamily::v6) => true,
            Err(n) => return Err(err("family", format!("unknown address family {n}"))),
        },
    };
    let dest = dest.unwrap_or(if v6 {
        (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
    } else {
        (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    });

    let scope = u8::try_from(r.scope).map_err(|_| {
        err(
            "scope",
            format!("{} is not a route scope (0 to 255)", r.scope),
        )
    })?;
    if gateway.is_some() && scope >= RT_SCOPE_LINK {
        return Err(err(
            "scope",
            format!("a route with a gateway cannot have scope {scope} (link or narrower)"),
        ));
    }
    let flags = r.flags & !RTNH_STATUS_FLAGS;
    if flags & !RTNH_F_ONLINK != 0 {
        return Err(err(
            "flags",
            format!("{:#x} has bits a route cannot be created with (only onlink, {RTNH_F_ONLINK:#x}, is allowed)", r.flags),
        ));
    }
    Ok(RouteSpec {
        label,
        v6,
        dest,
        gateway,
        device: r.device.clone(),
        src,
        prefsrc,
        scope,
        flags,
        mtu: r.mtu,
    })
}

/// A validated neighbour of AddARPNeighbors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborSpec {
    pub label: String,
    pub ip: IpAddr,
    pub device: String,
    pub lladdr: Option<Vec<u8>>,
    pub state: u16,
    pub flags: u8,
}

/// Validates AddARPNeighbors' `neighbors`.
pub fn neighbor_specs(n: Option<&agent::ARPNeighbors>) -> Result<Vec<NeighborSpec>> {
    let n = n.ok_or_else(|| {
        AgentError::invalid_argument("neighbors: missing (the request has no neighbour list)")
    })?;
    n.ARPNeighbors
        .iter()
        .enumerate()
        .map(|(i, a)| neighbor_spec(i, a))
        .collect()
}

fn neighbor_spec(i: usize, n: &types::ARPNeighbor) -> Result<NeighborSpec> {
    let field = format!("neighbors[{i}]");
    let to = n.toIPAddress.as_ref().ok_or_else(|| {
        invalid(
            &format!("{field}.toIPAddress"),
            "missing (the neighbour has no IP address)",
        )
    })?;
    let ip = parse_ip(&format!("{field}.toIPAddress.address"), to.address.trim())?;
    check_unicast(&format!("{field}.toIPAddress.address"), &ip)?;
    if n.device.is_empty() {
        return Err(invalid(&format!("{field}.device"), "missing"));
    }
    validate_ifname(&format!("{field}.device"), &n.device)?;
    let lladdr = if n.lladdr.is_empty() {
        None
    } else {
        Some(parse_mac(&format!("{field}.lladdr"), &n.lladdr)?.to_vec())
    };
    let state = match n.state {
        0 => NUD_PERMANENT,
        s if (1..=0xff).contains(&s) => s as u16,
        s => {
            return Err(invalid(
                &format!("{field}.state"),
                format!("{s} is not a neighbour state (NUD_* bits, 1 to 255)"),
            ))
        }
    };
    let flags = u8::try_from(n.flags).map_err(|_| {
        invalid(
            &format!("{field}.flags"),
            format!(
                "{} is not a set of neighbour flags (NTF_* bits, 0 to 255)",
                n.flags
            ),
        )
    })?;
    Ok(NeighborSpec {
        label: format!("{field} ({ip} dev {})", n.device),
        ip,
        device: n.device.clone(),
        lladdr,
        state,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::{EnumOrUnknown, MessageField};
    use ttrpc::Code;

    fn addr(a: &str, m: &str) -> types::IPAddress {
        types::IPAddress {
            address: a.into(),
            mask: m.into(),
            ..Default::default()
        }
    }

    fn msg_of(r: Result<impl std::fmt::Debug>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.code, Code::INVALID_ARGUMENT, "{e:?}");
        e.message
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("f", "02:AB:cd:00:11:ff").unwrap(),
            [2, 0xab, 0xcd, 0, 0x11, 0xff]
        );
        assert_eq!(parse_mac("f", "02-ab-cd-00-11-ff").unwrap()[1], 0xab);
        for bad in [
            "",
            "02:ab",
            "02:ab:cd:00:11:ff:00",
            "02:ab:cd:00:11:fg",
            "2:ab:cd:00:11:ff",
            "02:ab:cd:00:11:+f",
        ] {
            assert!(
                msg_of(parse_mac("x.hwAddr", bad)).starts_with("x.hwAddr: "),
                "{bad}"
            );
        }
        assert_eq!(format_hw_addr(&[2, 0xab, 0, 0, 0, 1]), "02:AB:00:00:00:01");
        assert_eq!(format_hw_addr(&[10, 0, 0, 1]), "10.0.0.1");
        assert_eq!(format_hw_addr(&[]), "");
    }

    #[test]
    fn prefixes_and_cidrs() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(parse_prefix("m", "24", &v4).unwrap(), 24);
        assert_eq!(parse_prefix("m", "128", &v6).unwrap(), 128);
        for bad in ["33", "", "-1", "2 4", "0x10", "1000"] {
            assert!(msg_of(parse_prefix("m", bad, &v4)).starts_with("m: "));
        }
        assert_eq!(
            parse_cidr("d", "192.0.2.0/24", true).unwrap(),
            ("192.0.2.0".parse().unwrap(), 24)
        );
        assert_eq!(parse_cidr("d", "192.0.2.7", true).unwrap().1, 32);
        assert_eq!(parse_cidr("d", "2001:db8::/32", true).unwrap().1, 32);
        let m = msg_of(parse_cidr("d", "192.0.2.1/24", true));
        assert!(m.contains("192.0.2.0/24"), "{m}");
        assert!(parse_cidr("d", "192.0.2.1/24", false).is_ok());
        assert!(parse_cidr("d", "0.0.0.0/0", true).is_ok());
        assert!(parse_cidr("d", "2001:db8::1/64", true).is_err());
    }

    #[test]
    fn link_names() {
        assert!(validate_ifname("n", "eth0").is_ok());
        assert!(validate_ifname("n", "a23456789012345").is_ok());
        for bad in ["a234567890123456", "a/b", "a b", "..", "a:b"] {
            assert!(validate_ifname("n", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_validation() {
        let m = msg_of(interface_spec(None));
        assert!(m.starts_with("interface: missing"), "{m}");

        let mut i = types::Interface {
            name: "eth0".into(),
            hwAddr: "02:00:00:00:00:01".into(),
            mtu: 1400,
            raw_flags: IFF_NOARP,
            IPAddresses: vec![
                addr("192.0.2.2", "24"),
                addr("2001:db8::2", "64"),
                addr("192.0.2.2", "24"),
            ],
            ..Default::default()
        };
        let s = interface_spec(Some(&i)).unwrap();
        assert_eq!(s.name.as_deref(), Some("eth0"));
        assert_eq!(s.mtu, Some(1400));
        assert!(s.noarp);
        assert_eq!(s.addresses.len(), 2);

        i.IPAddresses[1].mask = "129".into();
        assert!(msg_of(interface_spec(Some(&i))).starts_with("interface.IPAddresses[1].mask: "));
        i.IPAddresses[1] = addr("2001:db8::zz", "64");
        assert!(msg_of(interface_spec(Some(&i))).starts_with("interface.IPAddresses[1].address: "));
        i.IPAddresses[1] = addr("224.0.0.1", "24");
        assert!(msg_of(interface_spec(Some(&i))).contains("not a unicast address"));
        i.IPAddresses.truncate(1);
        i.hwAddr = "nope".into();
        assert!(msg_of(interface_spec(Some(&i))).starts_with("interface.hwAddr: "));
        i.hwAddr.clear();
        i.name = "much-too-long-name".into();
        assert!(msg_of(interface_spec(Some(&i))).starts_with("interface.name: "));
        i.name.clear();
        assert!(msg_of(interface_spec(Some(&i))).contains("neither hwAddr, name nor devicePath"));
        i.name = "eth0".into();
        i.devicePath = "zz/01".into();
        assert!(msg_of(interface_spec(Some(&i))).starts_with("interface.devicePath: "));
        i.devicePath.clear();
        i.mtu = u64::from(u32::MAX) + 1;
        assert!(msg_of(interface_spec(Some(&i))).starts_with("interface.mtu: "));
    }

    fn route(dest: &str, gw: &str, dev: &str, src: &str) -> types::Route {
        types::Route {
            dest: dest.into(),
            gateway: gw.into(),
            device: dev.into(),
            source: src.into(),
            ..Default::default()
        }
    }

    fn routes(list: Vec<types::Route>) -> agent::Routes {
        agent::Routes {
            Routes: list,
            ..Default::default()
        }
    }

    #[test]
    fn route_validation() {
        assert!(msg_of(route_specs(None)).starts_with("routes: missing"));
        let ok = route_specs(Some(&routes(vec![
            route("", "192.0.2.1", "eth0", ""),
            route("198.51.100.0/24", "", "eth0", "192.0.2.2"),
            route("2001:db8:1::/48", "fe80::1", "eth0", ""),
            route("2001:db8:2::/64", "", "eth0", "2001:db8:3::/64"),
        ])))
        .unwrap();
        assert_eq!(ok[0].dest, ("0.0.0.0".parse().unwrap(), 0));
        assert!(!ok[0].v6 && ok[0].has_gateway());
        assert_eq!(ok[1].prefsrc, Some("192.0.2.2".parse().unwrap()));
        assert!(ok[2].v6);
        assert_eq!(ok[3].src, Some(("2001:db8:3::".parse().unwrap(), 64)));

        // A default route without any address takes the family field.
        let mut r = route("", "", "eth0", "");
        r.family = EnumOrUnknown::new(types::IPFamily::v6);
        let s = route_specs(Some(&routes(vec![r]))).unwrap();
        assert!(s[0].v6);
        assert_eq!(s[0].dest, ("::".parse().unwrap(), 0));

        let m = msg_of(route_specs(Some(&routes(vec![
            route("", "192.0.2.1", "eth0", ""),
            route("10.0.0.0/8", "bad", "eth0", ""),
        ]))));
        assert!(
            m.starts_with("routes[1].gateway: ") && m.contains("10.0.0.0/8 via bad dev eth0"),
            "{m}"
        );
        let m = msg_of(route_specs(Some(&routes(vec![route(
            "10.0.0.0/8",
            "2001:db8::1",
            "eth0",
            "",
        )]))));
        assert!(m.starts_with("routes[0].gateway: "), "{m}");
        let m = msg_of(route_specs(Some(&routes(vec![route(
            "10.0.0.1/8",
            "",
            "eth0",
            "",
        )]))));
        assert!(m.starts_with("routes[0].dest: "), "{m}");
        let m = msg_of(route_specs(Some(&routes(vec![route(
            "10.0.0.0/8",
            "",
            "",
            "",
        )]))));
        assert!(m.starts_with("routes[0].device: "), "{m}");
        let mut r = route("10.0.0.0/8", "192.0.2.1", "eth0", "");
        r.scope = 253;
        assert!(
            msg_of(route_specs(Some(&routes(vec![r.clone()])))).starts_with("routes[0].scope: ")
        );
        r.scope = 256;
        assert!(
            msg_of(route_specs(Some(&routes(vec![r.clone()])))).starts_with("routes[0].scope: ")
        );
        r.scope = 0;
        r.flags = 0x100;
        assert!(
            msg_of(route_specs(Some(&routes(vec![r.clone()])))).starts_with("routes[0].flags: ")
        );
        r.flags = RTNH_F_ONLINK | 0x10;
        assert_eq!(
            route_specs(Some(&routes(vec![r]))).unwrap()[0].flags,
            RTNH_F_ONLINK
        );
    }

    #[test]
    fn neighbor_validation() {
        assert!(msg_of(neighbor_specs(None)).starts_with("neighbors: missing"));
        let mut n = types::ARPNeighbor {
            toIPAddress: MessageField::some(addr("192.0.2.9", "")),
            device: "eth0".into(),
            lladdr: "02:00:00:00:00:09".into(),
            ..Default::default()
        };
        let list = |n: &types::ARPNeighbor| agent::ARPNeighbors {
            ARPNeighbors: vec![n.clone()],
            ..Default::default()
        };
        let s = neighbor_specs(Some(&list(&n))).unwrap();
        assert_eq!(s[0].state, NUD_PERMANENT);
        n.state = 0x1000;
        assert!(msg_of(neighbor_specs(Some(&list(&n)))).starts_with("neighbors[0].state: "));
        n.state = 2;
        n.flags = 256;
        assert!(msg_of(neighbor_specs(Some(&list(&n)))).starts_with("neighbors[0].flags: "));
        n.flags = 0;
        n.lladdr = "xx".into();
        assert!(msg_of(neighbor_specs(Some(&list(&n)))).starts_with("neighbors[0].lladdr: "));
        n.lladdr.clear();
        n.toIPAddress = MessageField::none();
        assert!(msg_of(neighbor_specs(Some(&list(&n)))).starts_with("neighbors[0].toIPAddress: "));
    }
}
