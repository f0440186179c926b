//! Guest networking: links, addresses, routes and neighbours over rtnetlink, iptables through the
//! save/restore tools.
//!
//! Every request is validated whole (see [`parse`]) and checked against the current state before
//! anything changes. Changes then follow the request exactly: UpdateInterface leaves the link with
//! the listed addresses only, UpdateRoutes leaves the concerned links with the listed routes only
//! (the kernel's own routes are never removed). If the kernel refuses a step part-way, what this
//! call already changed is undone (best effort; failures of the undo are logged). The network RPCs
//! run one at a time.
//!
//! See `docs/network.md` for the behaviour and where it differs from upstream.

pub mod iptables;
mod netlink;
mod parse;
mod pci;

use std::collections::HashSet;
use std::net::IpAddr;

use protobuf::EnumOrUnknown;
use protocols::{agent, types};
use tracing::{info, warn};

use self::netlink::{Addr, Link, LinkChange, Neigh, NewRoute, NlError, RouteEntry};
use self::parse::{InterfaceSpec, RouteSpec};
use crate::agent::Agent;
use crate::error::{AgentError, Result};

pub use self::netlink::Netlink;

/// Network changes are serialised: a request sees the state the previous one left.
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn open() -> Result<Netlink> {
    Netlink::open().map_err(|e| AgentError::internal(e.to_string()))
}

fn dump_err(what: &str) -> impl FnOnce(NlError) -> AgentError + '_ {
    move |e| AgentError::internal(format!("cannot list the {what}: {e}"))
}

/// Whether IPv6 is enabled in the agent's network namespace.
fn ipv6_enabled() -> bool {
    ["all", "default"].iter().any(|c| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{c}/disable_ipv6"))
            .map(|s| s.trim() == "0")
            .unwrap_or(false)
    })
}

fn ip_family(ip: &IpAddr) -> types::IPFamily {
    if ip.is_ipv4() {
        types::IPFamily::v4
    } else {
        types::IPFamily::v6
    }
}

/// The protobuf view of a link and its addresses.
fn interface_of(link: &Link, addrs: &[Addr]) -> types::Interface {
    types::Interface {
        name: link.name.clone(),
        hwAddr: parse::format_hw_addr(&link.mac),
        mtu: u64::from(link.mtu),
        type_: link.kind.clone(),
        raw_flags: link.flags,
        IPAddresses: addrs
            .iter()
            .filter(|a| a.index == link.index)
            .map(|a| types::IPAddress {
                family: EnumOrUnknown::new(ip_family(&a.ip)),
                address: a.ip.to_string(),
                mask: a.prefix.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A link name that no link has, for the middle of a name swap.
fn temp_name(links: &[Link], index: u32) -> String {
    (0..)
        .map(|n| {
            if n == 0 {
                format!("ktmp{index}")
            } else {
                format!("ktmp{index}_{n}")
            }
        })
        .find(|c| !links.iter().any(|l| &l.name == c))
        .expect("an unused name")
}

/// What UpdateInterface found before changing anything, to undo a failed call.
struct LinkSnapshot {
    target: Link,
    partner: Option<Link>,
    addrs: Vec<Addr>,
}

/// UpdateInterface: configure one link as described; the reply is the link as it now is.
pub async fn update_interface(
    agent: &Agent,
    iface: Option<&types::Interface>,
) -> Result<types::Interface> {
    let spec = parse::interface_spec(iface)?;
    let _guard = LOCK.lock().await;
    let nl = open()?;

    let pci_link = match &spec.pci_path {
        Some(path) => {
            let timeout = agent.config.hotplug_timeout;
            let name = pci::wait_for_netdev(&agent.paths.sysfs_root, path, timeout)
                .await
                .ok_or_else(|| {
                    AgentError::not_found(format!(
                        "interface.devicePath: no network device appeared at PCI path {} within {timeout:?}",
                        spec.device_path
                    ))
                })?;
            Some(name)
        }
        None => None,
    };

    let links = nl.links().await.map_err(dump_err("links"))?;
    let target = find_target(&spec, pci_link.as_deref(), &links)?.clone();

    // Everything the kernel would refuse is checked here, before the first change.
    let mac_change = match spec.hw_addr {
        Some(mac) if target.mac != mac => {
            if mac[0] & 1 != 0 || mac == [0; 6] {
                return Err(AgentError::invalid_argument(format!(
                    "interface.hwAddr: {} is not a unicast hardware address and cannot be given to link {}",
                    parse::format_hw_addr(&mac),
                    target.name
                )));
            }
            if target.mac.len() != 6 {
                return Err(AgentError::invalid_argument(format!(
                    "interface.hwAddr: link {} has a {}-byte hardware address, not an Ethernet one",
                    target.name,
                    target.mac.len()
                )));
            }
            Some(mac.to_vec())
        }
        _ => None,
    };
    if let Some(mtu) = spec.mtu {
        let min = target.min_mtu.unwrap_or(0);
        let max = target.max_mtu.filter(|m| *m > 0).unwrap_or(u32::MAX);
        if mtu < min || mtu > max {
            return Err(AgentError::invalid_argument(format!(
                "interface.mtu: {mtu} is outside the range {min} to {max} that link {} accepts",
                target.name
            )));
        }
    }
    let partner = match &spec.name {
        Some(n) if *n != target.name => links.iter().find(|l| &l.name == n).cloned(),
        _ => None,
    };
    let v6 = ipv6_enabled();
    let wanted: Vec<(IpAddr, u8)> = spec
        .addresses
        .iter()
        .filter(|(ip, _)| {
            if ip.is_ipv6() && !v6 {
                warn!(subsystem = "network", address = %ip, "IPv6 is disabled in the guest; address skipped");
                return false;
            }
            true
        })
        .cloned()
        .collect();

    let all_addrs = nl.addresses().await.map_err(dump_err("addresses"))?;
    let snapshot = LinkSnapshot {
        addrs: all_addrs
            .into_iter()
            .filter(|a| a.index == target.index)
            .collect(),
        target,
        partner,
    };

    if let Err(e) = apply_interface(&nl, &spec, &snapshot, mac_change, &wanted, &links).await {
        warn!(subsystem = "network", error = %e, link = %snapshot.target.name, "UpdateInterface failed; restoring the link");
        restore_interface(&nl, &snapshot).await;
        return Err(e);
    }

    let links = nl.links().await.map_err(dump_err("links"))?;
    let addrs = nl.addresses().await.map_err(dump_err("addresses"))?;
    let link = links
        .iter()
        .find(|l| l.index == snapshot.target.index)
        .ok_or_else(|| AgentError::internal("the link vanished while it was being configured"))?;
    let mut reply = interface_of(link, &addrs);
    reply.device = spec.device.clone();
    reply.devicePath = spec.device_path.clone();
    info!(subsystem = "network", link = %reply.name, "interface updated");
    Ok(reply)
}

/// The link UpdateInterface configures: the NIC at the PCI path, else the one with the hardware
/// address, else the one with the name.
fn find_target<'a>(
    spec: &InterfaceSpec,
    pci_link: Option<&str>,
    links: &'a [Link],
) -> Result<&'a Link> {
    if let Some(name) = pci_link {
        return links.iter().find(|l| l.name == name).ok_or_else(|| {
            AgentError::not_found(format!(
                "interface.devicePath: link {name} of the device at PCI path {} is not in the agent's network namespace",
                spec.device_path
            ))
        });
    }
    if let Some(mac) = spec.hw_addr {
        let mut by_mac = links.iter().filter(|l| l.mac == mac);
        let first = by_mac.next();
        let named = first
            .into_iter()
            .chain(by_mac)
            .find(|l| Some(&l.name) == spec.name.as_ref());
        if let Some(l) = named.or(first) {
            return Ok(l);
        }
    }
    match &spec.name {
        Some(name) => links.iter().find(|l| &l.name == name).ok_or_else(|| {
            AgentError::not_found(match spec.hw_addr {
                Some(mac) => format!(
                    "interface.name: no link is named {name} and none has hardware address {}",
                    parse::format_hw_addr(&mac)
                ),
                None => format!("interface.name: no link is named {name}"),
            })
        }),
        None => Err(AgentError::not_found(format!(
            "interface.hwAddr: no link has hardware address {}",
            parse::format_hw_addr(&spec.hw_addr.unwrap_or_default())
        ))),
    }
}

async fn apply_interface(
    nl: &Netlink,
    spec: &InterfaceSpec,
    snap: &LinkSnapshot,
    mac: Option<Vec<u8>>,
    wanted: &[(IpAddr, u8)],
    links: &[Link],
) -> Result<()> {
    let t = &snap.target;
    let set = |index: u32, change: LinkChange, what: String| async move {
        nl.set_link(index, &change)
            .await
            .map_err(|e| e.into_agent(what))
    };
    if t.is_up() {
        set(
            t.index,
            LinkChange {
                up: Some(false),
                ..Default::default()
            },
            format!("cannot set link {} down", t.name),
        )
        .await?;
    }
    if let Some(mac) = mac {
        let shown = parse::format_hw_addr(&mac);
        set(
            t.index,
            LinkChange {
                mac: Some(mac),
                ..Default::default()
            },
            format!(
                "cannot set the hardware address of link {} to {shown}",
                t.name
            ),
        )
        .await?;
    }
    // Name swap: the link holding the wanted name takes a temporary name, then the target's old one.
    if let Some(p) = &snap.partner {
        if p.is_up() {
            set(
                p.index,
                LinkChange {
                    up: Some(false),
                    ..Default::default()
                },
                format!("cannot set link {} down", p.name),
            )
            .await?;
        }
        let tmp = temp_name(links, p.index);
        set(
            p.index,
            LinkChange {
                name: Some(tmp),
                ..Default::default()
            },
            format!("cannot rename link {} out of the way", p.name),
        )
        .await?;
    }
    let change = LinkChange {
        name: spec.name.clone().filter(|n| *n != t.name),
        mtu: spec.mtu.filter(|m| *m != t.mtu),
        noarp: Some(spec.noarp),
        ..Default::default()
    };
    set(
        t.index,
        change,
        format!("cannot set the name, MTU or ARP flag of link {}", t.name),
    )
    .await?;
    if let Some(p) = &snap.partner {
        set(
            p.index,
            LinkChange {
                name: Some(t.name.clone()),
                ..Default::default()
            },
            format!("cannot rename link {} to {}", p.name, t.name),
        )
        .await?;
        if p.is_up() {
            set(
                p.index,
                LinkChange {
                    up: Some(true),
                    ..Default::default()
                },
                format!("cannot set link {} up", t.name),
            )
            .await?;
        }
    }

    // Addresses: the stale ones go first (a stale primary would take its secondaries with it),
    // then every wanted one is added or refreshed. IPv6 link-local addresses are the kernel's.
    for a in &snap.addrs {
        if !wanted.contains(&(a.ip, a.prefix)) && !a.is_kernel_link_local() {
            match nl.del_address(a).await {
                Ok(()) | Err(NlError::Kernel(libc::EADDRNOTAVAIL)) => {}
                Err(e) => {
                    return Err(e.into_agent(format!(
                        "cannot remove address {}/{} from link {}",
                        a.ip, a.prefix, t.name
                    )))
                }
            }
        }
    }
    let name = spec.name.clone().unwrap_or_else(|| t.name.clone());
    for (ip, prefix) in wanted {
        nl.add_address(t.index, *ip, *prefix).await.map_err(|e| {
            e.into_agent(format!("cannot add address {ip}/{prefix} to link {name}"))
        })?;
    }
    set(
        t.index,
        LinkChange {
            up: Some(true),
            ..Default::default()
        },
        format!("cannot set link {name} up"),
    )
    .await?;
    Ok(())
}

/// Puts the link (and its name-swap partner) back as the snapshot saw them. Best effort.
async fn restore_interface(nl: &Netlink, snap: &LinkSnapshot) {
    let t = &snap.target;
    let warn_on = |r: std::result::Result<(), NlError>, what: &str| {
        if let Err(e) = r {
            warn!(subsystem = "network", error = %e, link = %t.name, "restore: {what}");
        }
    };
    let down = LinkChange {
        up: Some(false),
        ..Default::default()
    };
    warn_on(
        nl.set_link(t.index, &down).await,
        "cannot set the link down",
    );
    let links = nl.links().await.unwrap_or_default();
    if let Some(p) = &snap.partner {
        warn_on(
            nl.set_link(p.index, &down).await,
            "cannot set the partner link down",
        );
        let tmp = LinkChange {
            name: Some(temp_name(&links, p.index)),
            ..Default::default()
        };
        warn_on(
            nl.set_link(p.index, &tmp).await,
            "cannot rename the partner link",
        );
    }
    let back = LinkChange {
        name: Some(t.name.clone()),
        mtu: Some(t.mtu),
        mac: (t.mac.len() == 6).then(|| t.mac.clone()),
        noarp: Some(t.flags & parse::IFF_NOARP != 0),
        up: None,
    };
    warn_on(
        nl.set_link(t.index, &back).await,
        "cannot restore name, MTU, MAC and ARP flag",
    );
    if let Some(p) = &snap.partner {
        let name = LinkChange {
            name: Some(p.name.clone()),
            ..Default::default()
        };
        warn_on(
            nl.set_link(p.index, &name).await,
            "cannot restore the partner's name",
        );
    }
    let now: Vec<Addr> = nl
        .addresses()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.index == t.index)
        .collect();
    for a in &now {
        let before = snap
            .addrs
            .iter()
            .any(|b| b.ip == a.ip && b.prefix == a.prefix);
        if !before && !a.is_kernel_link_local() {
            warn_on(nl.del_address(a).await, "cannot remove an added address");
        }
    }
    for b in &snap.addrs {
        if !now.iter().any(|a| a.ip == b.ip && a.prefix == b.prefix) {
            warn_on(nl.restore_address(b).await, "cannot restore an address");
        }
    }
    if t.is_up() {
        let up = LinkChange {
            up: Some(true),
            ..Default::default()
        };
        warn_on(
            nl.set_link(t.index, &up).await,
            "cannot set the link up again",
        );
    }
    if let Some(p) = snap.partner.as_ref().filter(|p| p.is_up()) {
        let up = LinkChange {
            up: Some(true),
            ..Default::default()
        };
        warn_on(
            nl.set_link(p.index, &up).await,
            "cannot set the partner link up again",
        );
    }
}

/// ListInterfaces: every link with its addresses, in the kernel's order.
pub async fn list_interfaces() -> Result<Vec<types::Interface>> {
    let _guard = LOCK.lock().await;
    let nl = open()?;
    let links = nl.links().await.map_err(dump_err("links"))?;
    let addrs = nl.addresses().await.map_err(dump_err("addresses"))?;
    Ok(links.iter().map(|l| interface_of(l, &addrs)).collect())
}

fn cidr(ip: Option<IpAddr>, len: u8, v6: bool) -> String {
    match ip {
        Some(ip) => format!("{ip}/{len}"),
        None if v6 => format!("::/{len}"),
        None => format!("0.0.0.0/{len}"),
    }
}

/// The protobuf view of a main-table unicast route (one per next hop for multipath routes).
fn routes_of(e: &RouteEntry, links: &[Link]) -> Vec<types::Route> {
    let name = |i: u32| {
        links
            .iter()
            .find(|l| l.index == i)
            .map(|l| l.name.clone())
            .unwrap_or_default()
    };
    let base = types::Route {
        dest: cidr(e.dst, e.dst_len, e.v6),
        source: match (e.src, e.prefsrc) {
            (Some(s), _) => format!("{s}/{}", e.src_len),
            (None, Some(p)) => p.to_string(),
            (None, None) => String::new(),
        },
        scope: u32::from(e.scope),
        family: EnumOrUnknown::new(if e.v6 {
            types::IPFamily::v6
        } else {
            types::IPFamily::v4
        }),
        mtu: e.mtu,
        ..Default::default()
    };
    if e.hops.is_empty() {
        vec![types::Route {
            gateway: e.gateway.map(|g| g.to_string()).unwrap_or_default(),
            device: e.oif.map(name).unwrap_or_default(),
            flags: e.flags,
            ..base
        }]
    } else {
        e.hops
            .iter()
            .map(|(oif, gw, flags)| types::Route {
                gateway: gw.map(|g| g.to_string()).unwrap_or_default(),
                device: name(*oif),
                flags: *flags,
                ..base.clone()
            })
            .collect()
    }
}

async fn route_list(nl: &Netlink) -> Result<Vec<types::Route>> {
    let links = nl.links().await.map_err(dump_err("links"))?;
    let mut out = Vec::new();
    for v6 in [false, true] {
        for e in nl.routes(v6).await.map_err(dump_err("routes"))? {
            if e.is_main_unicast() {
                out.extend(routes_of(&e, &links));
            }
        }
    }
    Ok(out)
}

/// ListRoutes: the unicast routes of the main table, IPv4 then IPv6.
pub async fn list_routes() -> Result<Vec<types::Route>> {
    let _guard = LOCK.lock().await;
    let nl = open()?;
    route_list(&nl).await
}

/// A validated route with its link resolved.
struct PlannedRoute<'a> {
    spec: &'a RouteSpec,
    new: NewRoute,
}

/// UpdateRoutes: the links named by the request end with exactly the listed routes (plus the
/// kernel's own); the reply is the resulting route list.
pub async fn update_routes(routes: Option<&agent::Routes>) -> Result<Vec<types::Route>> {
    let specs = parse::route_specs(routes)?;
    let _guard = LOCK.lock().await;
    let nl = open()?;
    let links = nl.links().await.map_err(dump_err("links"))?;
    let mut planned = Vec::with_capacity(specs.len());
    for s in &specs {
        let link = links.iter().find(|l| l.name == s.device).ok_or_else(|| {
            AgentError::not_found(format!("{}: no link is named {}", s.label, s.device))
        })?;
        planned.push(PlannedRoute {
            spec: s,
            new: NewRoute {
                v6: s.v6,
                dest: s.dest,
                gateway: s.gateway,
                oif: link.index,
                src: s.src,
                prefsrc: s.prefsrc,
                scope: s.scope,
                flags: s.flags,
                mtu: s.mtu,
            },
        });
    }
    // Routes to the links come before routes through gateways, which need them.
    planned.sort_by_key(|p| p.spec.has_gateway());
    let concerned: HashSet<u32> = planned.iter().map(|p| p.new.oif).collect();

    let mut existing: Vec<RouteEntry> = Vec::new();
    for v6 in [false, true] {
        existing.extend(
            nl.routes(v6)
                .await
                .map_err(dump_err("routes"))?
                .into_iter()
                .filter(|e| e.is_main_unicast()),
        );
    }

    let mut wanted_keys = HashSet::new();
    // (added message, route it replaced)
    let mut added: Vec<(
        netlink_packet_route::route::RouteMessage,
        Option<RouteEntry>,
    )> = Vec::new();
    for p in &planned {
        let key = p.new.key();
        // A link route the kernel made from an address is already what the request asks for.
        let kernel_twin = existing.iter().find(|e| {
            e.protocol == netlink::RTPROT_KERNEL
                && p.spec.gateway.is_none()
                && p.spec.src.is_none()
                && p.spec.flags == 0
                && e.gateway.is_none()
                && e.oif == Some(p.new.oif)
                && e.key().dst == key.dst
                && e.src.is_none()
                && e.scope == p.spec.scope
                && (p.spec.prefsrc.is_none() || p.spec.prefsrc == e.prefsrc)
                && (p.spec.mtu == 0 || p.spec.mtu == e.mtu)
        });
        if let Some(k) = kernel_twin {
            wanted_keys.insert(k.key());
            continue;
        }
        let replaced = existing.iter().find(|e| e.key() == key).cloned();
        let msg = p.new.message();
        if let Err(e) = nl.add_route(msg.clone()).await {
            let err = e.into_agent(format!("cannot add route {}", p.spec.label));
            undo_routes(&nl, added, Vec::new()).await;
            return Err(err);
        }
        wanted_keys.insert(key);
        added.push((msg, replaced));
    }

    // Then the stale routes of the concerned links go (never the kernel's own; multipath routes,
    // which belong to no single link, are left alone).
    let mut deleted: Vec<RouteEntry> = Vec::new();
    for e in &existing {
        let stale = e.protocol != netlink::RTPROT_KERNEL
            && e.hops.is_empty()
            && e.oif.is_some_and(|i| concerned.contains(&i))
            && !wanted_keys.contains(&e.key());
        if !stale {
            continue;
        }
        match nl.del_route(e.msg.clone()).await {
            Ok(()) => deleted.push(e.clone()),
            Err(NlError::Kernel(libc::ESRCH)) => {}
            Err(err) => {
                let shown = routes_of(e, &links)
                    .first()
                    .map(parse::describe_route)
                    .unwrap_or_default();
                let err = err.into_agent(format!("cannot remove stale route {shown}"));
                undo_routes(&nl, added, deleted).await;
                return Err(err);
            }
        }
    }
    info!(
        subsystem = "network",
        routes = planned.len(),
        removed = deleted.len(),
        "routes updated"
    );
    route_list(&nl).await
}

/// Undoes a failed UpdateRoutes: deleted routes come back, added ones go (or the ones they
/// replaced come back). Best effort.
async fn undo_routes(
    nl: &Netlink,
    added: Vec<(
        netlink_packet_route::route::RouteMessage,
        Option<RouteEntry>,
    )>,
    deleted: Vec<RouteEntry>,
) {
    for e in deleted.into_iter().rev() {
        if let Err(err) = nl.add_route(e.msg).await {
            warn!(subsystem = "network", error = %err, "restore: cannot put a removed route back");
        }
    }
    for (msg, replaced) in added.into_iter().rev() {
        let r = match replaced {
            Some(orig) => nl.add_route(orig.msg).await,
            None => nl.del_route(msg).await,
        };
        if let Err(err) = r {
            warn!(subsystem = "network", error = %err, "restore: cannot undo an added route");
        }
    }
}

/// AddARPNeighbors: add or replace each neighbour entry.
pub async fn add_arp_neighbors(neighbors: Option<&agent::ARPNeighbors>) -> Result<()> {
    let specs = parse::neighbor_specs(neighbors)?;
    let _guard = LOCK.lock().await;
    let nl = open()?;
    let links = nl.links().await.map_err(dump_err("links"))?;
    let mut planned = Vec::with_capacity(specs.len());
    for s in &specs {
        let link = links.iter().find(|l| l.name == s.device).ok_or_else(|| {
            AgentError::not_found(format!("{}: no link is named {}", s.label, s.device))
        })?;
        planned.push((
            s,
            Neigh {
                ifindex: link.index,
                ip: s.ip,
                lladdr: s.lladdr.clone(),
                state: s.state,
                flags: s.flags,
            },
        ));
    }
    let existing = nl.neighbours().await.map_err(dump_err("neighbours"))?;
    let mut done: Vec<(Neigh, Option<Neigh>)> = Vec::new();
    for (s, n) in planned {
        let before = existing
            .iter()
            .find(|e| e.ifindex == n.ifindex && e.ip == n.ip)
            .cloned();
        if let Err(e) = nl.add_neighbour(&n).await {
            let err = e.into_agent(format!("cannot add ARP neighbour {}", s.label));
            // The kernel may leave an incomplete entry behind a refused one.
            if before.is_none() {
                let _ = nl.del_neighbour(&n).await;
            }
            for (added, before) in done.into_iter().rev() {
                let r = match before {
                    Some(b) => nl.add_neighbour(&b).await,
                    None => nl.del_neighbour(&added).await,
                };
                if let Err(e) = r {
                    warn!(subsystem = "network", error = %e, "restore: cannot undo an added neighbour");
                }
            }
            return Err(err);
        }
        done.push((n, before));
    }
    Ok(())
}

/// GetIPTables.
pub async fn get_ip_tables(ipv6: bool) -> Result<Vec<u8>> {
    let _guard = LOCK.lock().await;
    iptables::get(ipv6).await
}

/// SetIPTables.
pub async fn set_ip_tables(ipv6: bool, data: &[u8]) -> Result<Vec<u8>> {
    let _guard = LOCK.lock().await;
    iptables::set(ipv6, data).await
}
