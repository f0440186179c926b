//! A thin layer over rtnetlink: dumps decoded into plain structs, and the few requests the network
//! RPCs send, with kernel errors kept as errno values so that callers can pick the status code.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::StreamExt;
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::AgentError;

/// A failed netlink request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NlError {
    /// The kernel answered with this errno.
    Kernel(i32),
    /// The request could not be sent or the answer not understood.
    Other(String),
}

impl NlError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel(e) => Some(*e),
            NlError::Other(_) => None,
        }
    }

    /// The status code for a kernel refusal of something the request asked for.
    pub fn into_agent(self, context: impl fmt::Display) -> AgentError {
        let message = format!("{context}: {self}");
        match self.errno() {
            Some(
                libc::EINVAL
                | libc::ENETUNREACH
                | libc::EHOSTUNREACH
                | libc::ERANGE
                | libc::EADDRNOTAVAIL
                | libc::EOPNOTSUPP
                | libc::EAFNOSUPPORT,
            ) => AgentError::invalid_argument(message),
            Some(libc::ENODEV | libc::ENOENT | libc::ESRCH) => AgentError::not_found(message),
            Some(libc::EEXIST) => AgentError::already_exists(message),
            _ => AgentError::internal(message),
        }
    }
}

impl fmt::Display for NlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NlError::Kernel(e) => write!(f, "{}", std::io::Error::from_raw_os_error(*e)),
            NlError::Other(s) => f.write_str(s),
        }
    }
}

pub type NlResult<T> = std::result::Result<T, NlError>;

/// A link as a dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub min_mtu: Option<u32>,
    pub max_mtu: Option<u32>,
    /// `IFF_*` flags.
    pub flags: u32,
    /// The link kind (`veth`, `bridge`, ...), empty for plain devices.
    pub kind: String,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags & LinkFlags::Up.bits() != 0
    }
}

/// An address as a dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    /// The local address (IFA_LOCAL, else IFA_ADDRESS).
    pub ip: IpAddr,
    /// IFA_ADDRESS (the peer on point-to-point links).
    pub address: Option<IpAddr>,
    pub prefix: u8,
    pub scope: u8,
    pub broadcast: Option<Ipv4Addr>,
    pub label: Option<String>,
}

impl Addr {
    /// Addresses the kernel manages by itself: IPv6 link-local ones.
    pub fn is_kernel_link_local(&self) -> bool {
        matches!(self.ip, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
    }
}

/// A route as a dump reports it (the message is kept to delete or restore it exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub msg: RouteMessage,
    pub v6: bool,
    pub dst: Option<IpAddr>,
    pub dst_len: u8,
    pub src: Option<IpAddr>,
    pub src_len: u8,
    pub gateway: Option<IpAddr>,
    pub prefsrc: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub protocol: u8,
    pub scope: u8,
    pub kind: u8,
    pub flags: u32,
    pub priority: u32,
    pub tos: u8,
    pub mtu: u32,
    /// Next hops of a multipath route: (ifindex, gateway, flags).
    pub hops: Vec<(u32, Option<IpAddr>, u32)>,
}

pub const RT_TABLE_MAIN: u32 = 254;
pub const RTN_UNICAST: u8 = 1;
pub const RTPROT_KERNEL: u8 = 2;
const RTM_F_CLONED: u32 = 0x200;

impl RouteEntry {
    pub fn is_main_unicast(&self) -> bool {
        self.table == RT_TABLE_MAIN && self.kind == RTN_UNICAST && self.flags & RTM_F_CLONED == 0
    }

    /// What identifies a route in a table: family, destination, source prefix, TOS, metric.
    pub fn key(&self) -> RouteKey {
        RouteKey {
            v6: self.v6,
            dst: self.dst.map(|d| (d, self.dst_len)),
            src: self.src.map(|s| (s, self.src_len)),
            tos: self.tos,
            priority: self.priority,
        }
    }
}

/// The identity of a route within a table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub v6: bool,
    pub dst: Option<(IpAddr, u8)>,
    pub src: Option<(IpAddr, u8)>,
    pub tos: u8,
    pub priority: u32,
}

/// A neighbour entry as a dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neigh {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub lladdr: Option<Vec<u8>>,
    pub state: u16,
    pub flags: u8,
}

/// What a link-set request changes; `None` leaves a property alone.
#[derive(Debug, Clone, Default)]
pub struct LinkChange {
    pub name: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<Vec<u8>>,
    pub up: Option<bool>,
    pub noarp: Option<bool>,
}

/// One rtnetlink connection in the agent's network namespace.
pub struct Netlink {
    handle: rtnetlink::Handle,
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

impl Netlink {
    /// Opens the socket; the connection task ends when this value is dropped.
    pub fn open() -> NlResult<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NlError::Other(format!("cannot open a netlink socket: {e}")))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    async fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> NlResult<Vec<RouteNetlinkMessage>> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        let mut handle = self.handle.clone();
        let mut stream = handle
            .request(req)
            .map_err(|e| NlError::Other(format!("netlink request failed: {e}")))?;
        let mut out = Vec::new();
        while let Some(m) = stream.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(NlError::Kernel(-code.get()));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    async fn ack(&self, msg: RouteNetlinkMessage, flags: u16) -> NlResult<()> {
        self.request(msg, NLM_F_ACK | flags).await.map(|_| ())
    }

    pub async fn links(&self) -> NlResult<Vec<Link>> {
        let msgs = self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .await?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(decode_link(l)),
                _ => None,
            })
            .collect())
    }

    pub async fn addresses(&self) -> NlResult<Vec<Addr>> {
        let msgs = self
            .request(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
            )
            .await?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => decode_addr(a),
                _ => None,
            })
            .collect())
    }

    /// Every route of one family, all tables.
    pub async fn routes(&self, v6: bool) -> NlResult<Vec<RouteEntry>> {
        let mut q = RouteMessage::default();
        q.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let msgs = self
            .request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)
            .await?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => decode_route(r),
                _ => None,
            })
            .collect())
    }

    pub async fn neighbours(&self) -> NlResult<Vec<Neigh>> {
        let msgs = self
            .request(
                RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
                NLM_F_DUMP,
            )
            .await?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => decode_neigh(n),
                _ => None,
            })
            .collect())
    }

    pub async fn set_link(&self, index: u32, change: &LinkChange) -> NlResult<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if let Some(up) = change.up {
            m.header.change_mask |= LinkFlags::Up;
            if up {
                m.header.flags |= LinkFlags::Up;
            }
        }
        if let Some(noarp) = change.noarp {
            m.header.change_mask |= LinkFlags::Noarp;
            if noarp {
                m.header.flags |= LinkFlags::Noarp;
            }
        }
        if let Some(name) = &change.name {
            m.attributes.push(LinkAttribute::IfName(name.clone()));
        }
        if let Some(mtu) = change.mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = &change.mac {
            m.attributes.push(LinkAttribute::Address(mac.clone()));
        }
        self.ack(RouteNetlinkMessage::SetLink(m), 0).await
    }

    /// Adds (or refreshes) an address; IPv4 addresses get the broadcast address of their subnet.
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> NlResult<()> {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.header.prefix_len = prefix;
        match ip {
            IpAddr::V4(v4) => {
                m.header.family = AddressFamily::Inet;
                if v4.is_loopback() {
                    m.header.scope = AddressScope::Host;
                }
                m.attributes.push(AddressAttribute::Local(ip));
                m.attributes.push(AddressAttribute::Address(ip));
                if prefix < 31 {
                    let brd = Ipv4Addr::from(u32::from(v4) | (u32::MAX >> prefix));
                    m.attributes.push(AddressAttribute::Broadcast(brd));
                }
            }
            IpAddr::V6(_) => {
                m.header.family = AddressFamily::Inet6;
                m.attributes.push(AddressAttribute::Address(ip));
            }
        }
        self.ack(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    /// Puts back an address exactly as a dump reported it.
    pub async fn restore_address(&self, a: &Addr) -> NlResult<()> {
        let mut m = address_message(a);
        if let Some(b) = a.broadcast {
            m.attributes.push(AddressAttribute::Broadcast(b));
        }
        if let Some(l) = &a.label {
            m.attributes.push(AddressAttribute::Label(l.clone()));
        }
        self.ack(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    pub async fn del_address(&self, a: &Addr) -> NlResult<()> {
        self.ack(RouteNetlinkMessage::DelAddress(address_message(a)), 0)
            .await
    }

    /// Adds or replaces a route.
    pub async fn add_route(&self, msg: RouteMessage) -> NlResult<()> {
        self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    pub async fn del_route(&self, msg: RouteMessage) -> NlResult<()> {
        self.ack(RouteNetlinkMessage::DelRoute(msg), 0).await
    }

    pub async fn add_neighbour(&self, n: &Neigh) -> NlResult<()> {
        self.ack(
            RouteNetlinkMessage::NewNeighbour(neigh_message(n)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    pub async fn del_neighbour(&self, n: &Neigh) -> NlResult<()> {
        self.ack(RouteNetlinkMessage::DelNeighbour(neigh_message(n)), 0)
            .await
    }
}

fn decode_link(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: Vec::new(),
        mtu: 0,
        min_mtu: None,
        max_mtu: None,
        flags: l.header.flags.bits(),
        kind: String::new(),
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(m) => link.mac = m,
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::MinMtu(m) => link.min_mtu = Some(m),
            LinkAttribute::MaxMtu(m) => link.max_mtu = Some(m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn decode_addr(a: AddressMessage) -> Option<Addr> {
    let mut local = None;
    let mut address = None;
    let mut broadcast = None;
    let mut label = None;
    for attr in a.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Address(ip) => address = Some(ip),
            AddressAttribute::Broadcast(b) => broadcast = Some(b),
            AddressAttribute::Label(l) => label = Some(l),
            _ => {}
        }
    }
    Some(Addr {
        index: a.header.index,
        ip: local.or(address)?,
        address,
        prefix: a.header.prefix_len,
        scope: u8::from(a.header.scope),
        broadcast,
        label,
    })
}

/// The message that identifies an address (for deletion and restoration).
fn address_message(a: &Addr) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = a.index;
    m.header.prefix_len = a.prefix;
    m.header.scope = AddressScope::from(a.scope);
    m.header.family = if a.ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    if a.ip.is_ipv4() {
        m.attributes.push(AddressAttribute::Local(a.ip));
    }
    m.attributes
        .push(AddressAttribute::Address(a.address.unwrap_or(a.ip)));
    m
}

fn decode_route(r: RouteMessage) -> Option<RouteEntry> {
    let v6 = match r.header.address_family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    let mut e = RouteEntry {
        v6,
        dst: None,
        dst_len: r.header.destination_prefix_length,
        src: None,
        src_len: r.header.source_prefix_length,
        gateway: None,
        prefsrc: None,
        oif: None,
        table: u32::from(r.header.table),
        protocol: u8::from(r.header.protocol),
        scope: u8::from(r.header.scope),
        kind: u8::from(r.header.kind),
        flags: r.header.flags.bits(),
        priority: 0,
        tos: r.header.tos,
        mtu: 0,
        hops: Vec::new(),
        msg: r.clone(),
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => e.dst = ip_of(d),
            RouteAttribute::Source(s) => e.src = ip_of(s),
            RouteAttribute::Gateway(g) => e.gateway = ip_of(g),
            RouteAttribute::PrefSource(p) => e.prefsrc = ip_of(p),
            RouteAttribute::Oif(i) => e.oif = Some(*i),
            RouteAttribute::Table(t) => e.table = *t,
            RouteAttribute::Priority(p) => e.priority = *p,
            RouteAttribute::Metrics(ms) => {
                for m in ms {
                    if let RouteMetric::Mtu(mtu) = m {
                        e.mtu = *mtu;
                    }
                }
            }
            RouteAttribute::MultiPath(hops) => {
                for h in hops {
                    let gw = h.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(g) => ip_of(g),
                        _ => None,
                    });
                    e.hops
                        .push((h.interface_index, gw, u32::from(h.flags.bits())));
                }
            }
            _ => {}
        }
    }
    // Cache info carries timestamps the kernel does not take back.
    e.msg
        .attributes
        .retain(|a| !matches!(a, RouteAttribute::CacheInfo(_)));
    Some(e)
}

/// Parameters of a route the agent adds (table main, type unicast, protocol boot).
pub struct NewRoute {
    pub v6: bool,
    pub dest: (IpAddr, u8),
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub src: Option<(IpAddr, u8)>,
    pub prefsrc: Option<IpAddr>,
    pub scope: u8,
    pub flags: u32,
    pub mtu: u32,
}

/// The kernel's default metric of IPv6 routes added without one (`IP6_RT_PRIO_USER`).
pub const IP6_RT_PRIO_USER: u32 = 1024;

impl NewRoute {
    pub fn message(&self) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = if self.v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.header.destination_prefix_length = self.dest.1;
        m.header.source_prefix_length = self.src.map(|s| s.1).unwrap_or(0);
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::from(self.scope);
        m.header.kind = RouteType::Unicast;
        m.header.flags = RouteFlags::from_bits_retain(self.flags);
        if self.dest.1 > 0 {
            m.attributes
                .push(RouteAttribute::Destination(self.dest.0.into()));
        }
        if let Some((s, _)) = self.src {
            m.attributes.push(RouteAttribute::Source(s.into()));
        }
        if let Some(g) = self.gateway {
            m.attributes.push(RouteAttribute::Gateway(g.into()));
        }
        if let Some(p) = self.prefsrc {
            m.attributes.push(RouteAttribute::PrefSource(p.into()));
        }
        m.attributes.push(RouteAttribute::Oif(self.oif));
        if self.mtu != 0 {
            m.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(self.mtu)]));
        }
        m
    }

    /// The key the kernel will file this route under.
    pub fn key(&self) -> RouteKey {
        RouteKey {
            v6: self.v6,
            dst: (self.dest.1 > 0).then_some(self.dest),
            src: self.src,
            tos: 0,
            priority: if self.v6 { IP6_RT_PRIO_USER } else { 0 },
        }
    }
}

fn decode_neigh(n: NeighbourMessage) -> Option<Neigh> {
    let mut ip = None;
    let mut lladdr = None;
    for a in n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(v6))
            }
            NeighbourAttribute::LinkLayerAddress(l) => lladdr = Some(l),
            _ => {}
        }
    }
    Some(Neigh {
        ifindex: n.header.ifindex,
        ip: ip?,
        lladdr,
        state: u16::from(n.header.state),
        flags: n.header.flags.bits(),
    })
}

fn neigh_message(n: &Neigh) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = if n.ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.ifindex = n.ifindex;
    m.header.state = NeighbourState::from(n.state);
    m.header.flags = NeighbourFlags::from_bits_retain(n.flags);
    m.attributes
        .push(NeighbourAttribute::Destination(n.ip.into()));
    if let Some(l) = &n.lladdr {
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(l.clone()));
    }
    m
}
