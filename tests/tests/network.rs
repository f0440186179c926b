//! End-to-end tests of the network RPCs. Each test makes its own network namespace (deleted when
//! the test ends, also on failure), starts the agent inside it, builds veth pairs there and checks
//! what the agent did with `ip -j` and `iptables-save` run in the same namespace.

use std::collections::BTreeSet;
use std::path::Path;

use e2e::{ctx, AgentOptions, NetNs, TestAgent};
use protobuf::{EnumOrUnknown, MessageField};
use protocols::agent::{
    self, AddARPNeighborsRequest, GetIPTablesRequest, ListInterfacesRequest, ListRoutesRequest,
    SetIPTablesRequest, UpdateInterfaceRequest, UpdateRoutesRequest,
};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};
use serde_json::Value;
use ttrpc::Code;

const MAC_A: &str = "02:00:00:00:aa:01";
const MAC_B: &str = "02:00:00:00:bb:01";
const MAC_C: &str = "02:00:00:00:cc:01";
const MAC_D: &str = "02:00:00:00:dd:01";
const MAC_NEW: &str = "02:00:00:00:ee:42";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn code_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an RPC status error, got {other:?}"),
    }
}

/// The agent inside a fresh network namespace. Fields drop in order: the agent stops first, then
/// the namespace is deleted.
struct Net {
    agent: TestAgent,
    ns: NetNs,
}

impl Net {
    fn start(tag: &str) -> Net {
        Self::start_with(tag, AgentOptions::default())
    }

    fn start_with(tag: &str, mut opts: AgentOptions<'_>) -> Net {
        let ns = NetNs::new(tag);
        opts.netns = Some(ns.path());
        let agent = TestAgent::start_with(opts);
        Net { agent, ns }
    }

    async fn client(&self) -> AgentServiceClient {
        AgentServiceClient::new(self.agent.connect().await)
    }

    /// A veth pair `a`/`b` with the given hardware addresses, both down.
    fn veth(&self, a: &str, mac_a: &str, b: &str, mac_b: &str) {
        self.ns.run(
            "ip",
            &[
                "link", "add", a, "address", mac_a, "type", "veth", "peer", "name", b, "address",
                mac_b,
            ],
        );
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let out = self.ns.run("ip", &full);
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {args:?}: {e}: {out}"))
    }

    /// `ip -j addr show dev <dev>`'s only entry.
    fn link(&self, dev: &str) -> Value {
        let v = self.json(&["addr", "show", "dev", dev]);
        v.as_array()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or_else(|| panic!("no link {dev}"))
    }

    fn link_by_mac(&self, mac: &str) -> Value {
        let v = self.json(&["addr", "show"]);
        v.as_array()
            .unwrap()
            .iter()
            .find(|l| l["address"].as_str() == Some(mac))
            .cloned()
            .unwrap_or_else(|| panic!("no link with address {mac}"))
    }

    fn iptables(&self, tool: &str) -> String {
        self.ns.run(tool, &[])
    }
}

/// (family, address, prefix) of a link's addresses; `global` drops IPv6 link-local ones.
fn addrs_of(link: &Value, global: bool) -> AddrSet {
    link["addr_info"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .filter(|a| !global || a["scope"].as_str() != Some("link"))
        .map(|a| {
            (
                a["family"].as_str().unwrap().to_string(),
                a["local"].as_str().unwrap().to_string(),
                a["prefixlen"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn flags_of(link: &Value) -> Vec<String> {
    link["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

/// (family, address, prefix length) of the addresses of a link.
type AddrSet = BTreeSet<(String, String, u64)>;

/// What a failed request must leave alone: name, MAC, MTU, flags and global addresses.
type LinkState = (String, String, u64, Vec<String>, AddrSet);

fn state_of(link: &Value) -> LinkState {
    let mut flags = flags_of(link);
    flags.retain(|f| f != "LOWER_UP" && f != "NO-CARRIER");
    (
        link["ifname"].as_str().unwrap().to_string(),
        link["address"].as_str().unwrap().to_string(),
        link["mtu"].as_u64().unwrap(),
        flags,
        addrs_of(link, true),
    )
}

fn ip(address: &str, mask: &str) -> IPAddress {
    IPAddress {
        address: address.into(),
        mask: mask.into(),
        ..Default::default()
    }
}

fn iface(hw: &str, name: &str, mtu: u64, addrs: &[(&str, &str)]) -> Interface {
    Interface {
        hwAddr: hw.into(),
        name: name.into(),
        mtu,
        IPAddresses: addrs.iter().map(|(a, m)| ip(a, m)).collect(),
        ..Default::default()
    }
}

fn update_req(i: Interface) -> UpdateInterfaceRequest {
    UpdateInterfaceRequest {
        interface: MessageField::some(i),
        ..Default::default()
    }
}

fn route(dest: &str, gw: &str, dev: &str) -> Route {
    Route {
        dest: dest.into(),
        gateway: gw.into(),
        device: dev.into(),
        ..Default::default()
    }
}

fn routes_req(list: Vec<Route>) -> UpdateRoutesRequest {
    UpdateRoutesRequest {
        routes: MessageField::some(agent::Routes {
            Routes: list,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A comparable view of a route: (dest, gateway, device, source, scope, mtu).
type RouteView = (String, String, String, String, u32, u32);

fn view_of(r: &Route) -> RouteView {
    (
        r.dest.clone(),
        r.gateway.clone(),
        r.device.clone(),
        r.source.clone(),
        r.scope,
        r.mtu,
    )
}

fn views(list: &[Route]) -> BTreeSet<RouteView> {
    list.iter().map(view_of).collect()
}

/// The unicast routes of the main table as `ip -j route` (v4 and v6) shows them.
fn ip_routes(net: &Net) -> BTreeSet<RouteView> {
    let mut out = BTreeSet::new();
    for (fam, v6) in [("-4", false), ("-6", true)] {
        for r in net
            .json(&[fam, "route", "show", "table", "main"])
            .as_array()
            .unwrap()
        {
            if r.get("type").is_some_and(|t| t != "unicast") {
                continue;
            }
            let dst = r["dst"].as_str().unwrap();
            let dest = if dst == "default" {
                if v6 {
                    "::/0".to_string()
                } else {
                    "0.0.0.0/0".to_string()
                }
            } else if dst.contains('/') {
                dst.to_string()
            } else {
                format!("{dst}/{}", if v6 { 128 } else { 32 })
            };
            let scope = match r["scope"].as_str() {
                Some("link") => 253,
                Some("host") => 254,
                Some("site") => 200,
                _ => 0,
            };
            let mtu = r["metrics"]
                .as_array()
                .and_then(|m| m.iter().find_map(|x| x["mtu"].as_u64()))
                .unwrap_or(0) as u32;
            out.insert((
                dest,
                r["gateway"].as_str().unwrap_or("").to_string(),
                r["dev"].as_str().unwrap_or("").to_string(),
                r["prefsrc"].as_str().unwrap_or("").to_string(),
                scope,
                mtu,
            ));
        }
    }
    out
}

fn rv(dest: &str, gw: &str, dev: &str, src: &str, scope: u32, mtu: u32) -> RouteView {
    (dest.into(), gw.into(), dev.into(), src.into(), scope, mtu)
}

/// A link configured with IPv4 and IPv6 addresses through the agent, for the route tests.
async fn configured_eth0(net: &Net, client: &AgentServiceClient) {
    net.veth("ka0", MAC_A, "kb0", MAC_B);
    net.ns.run("ip", &["link", "set", "kb0", "up"]);
    client
        .update_interface(
            ctx(),
            &update_req(iface(
                MAC_A,
                "eth0",
                0,
                &[("192.0.2.10", "24"), ("2001:db8:1::10", "64")],
            )),
        )
        .await
        .unwrap();
}

#[test]
fn interface_configured_by_hardware_address() {
    let net = Net::start("ifmac");
    net.veth("ka0", MAC_A, "kb0", MAC_B);
    rt().block_on(async {
        let client = net.client().await;
        // Found by MAC (case does not matter), renamed, MTU set, addresses added, brought up.
        let reply = client
            .update_interface(
                ctx(),
                &update_req(iface(
                    &MAC_A.to_uppercase(),
                    "eth0",
                    1400,
                    &[("192.0.2.10", "24"), ("2001:db8::10", "64")],
                )),
            )
            .await
            .unwrap();
        assert_eq!(reply.name, "eth0");
        assert_eq!(reply.mtu, 1400);
        assert_eq!(reply.hwAddr.to_lowercase(), MAC_A);
        assert_eq!(reply.type_, "veth");
        let fams: BTreeSet<(String, i32, String)> = reply
            .IPAddresses
            .iter()
            .map(|a| (a.address.clone(), a.family.value(), a.mask.clone()))
            .collect();
        assert!(
            fams.contains(&("192.0.2.10".into(), IPFamily::v4 as i32, "24".into())),
            "{fams:?}"
        );
        assert!(
            fams.contains(&("2001:db8::10".into(), IPFamily::v6 as i32, "64".into())),
            "{fams:?}"
        );

        let link = net.link("eth0");
        assert_eq!(link["address"], MAC_A);
        assert_eq!(link["mtu"], 1400);
        assert!(flags_of(&link).contains(&"UP".to_string()));
        assert!(!flags_of(&link).contains(&"NOARP".to_string()));
        assert_eq!(
            addrs_of(&link, true),
            BTreeSet::from([
                ("inet".into(), "192.0.2.10".into(), 24),
                ("inet6".into(), "2001:db8::10".into(), 64),
            ])
        );

        // A second request replaces the addresses: the ones not listed are gone.
        let mut i = iface(
            MAC_A,
            "eth0",
            9000,
            &[("198.51.100.5", "25"), ("2001:db8:2::5", "80")],
        );
        i.raw_flags = 0x80; // IFF_NOARP
        let reply = client
            .update_interface(ctx(), &update_req(i))
            .await
            .unwrap();
        let link = net.link("eth0");
        assert_eq!(link["mtu"], 9000);
        assert!(flags_of(&link).contains(&"NOARP".to_string()));
        assert_eq!(
            addrs_of(&link, true),
            BTreeSet::from([
                ("inet".into(), "198.51.100.5".into(), 25),
                ("inet6".into(), "2001:db8:2::5".into(), 80),
            ])
        );
        // The reply is the link as it is now, kernel link-local address included.
        let reply_addrs: BTreeSet<(String, String)> = reply
            .IPAddresses
            .iter()
            .map(|a| (a.address.clone(), a.mask.clone()))
            .collect();
        let ip_addrs: BTreeSet<(String, String)> = addrs_of(&net.link("eth0"), false)
            .into_iter()
            .map(|(_, a, p)| (a, p.to_string()))
            .collect();
        assert_eq!(reply_addrs, ip_addrs);
        assert_eq!(reply.raw_flags & 0x80, 0x80);

        // No addresses at all and ARP back on; an MTU of 0 keeps the MTU.
        client
            .update_interface(ctx(), &update_req(iface(MAC_A, "eth0", 0, &[])))
            .await
            .unwrap();
        let link = net.link("eth0");
        assert_eq!(link["mtu"], 9000);
        assert!(!flags_of(&link).contains(&"NOARP".to_string()));
        assert!(addrs_of(&link, true).is_empty());
    });
}

#[test]
fn interface_found_by_name_gets_the_hardware_address() {
    let net = Net::start("ifname");
    net.veth("ka0", MAC_A, "kb0", MAC_B);
    rt().block_on(async {
        let client = net.client().await;
        let reply = client
            .update_interface(
                ctx(),
                &update_req(iface(MAC_NEW, "kb0", 0, &[("192.0.2.20", "24")])),
            )
            .await
            .unwrap();
        assert_eq!(reply.hwAddr.to_lowercase(), MAC_NEW);
        let link = net.link("kb0");
        assert_eq!(link["address"], MAC_NEW);
        assert!(flags_of(&link).contains(&"UP".to_string()));
        // By name alone.
        client
            .update_interface(ctx(), &update_req(iface("", "ka0", 1300, &[])))
            .await
            .unwrap();
        assert_eq!(net.link("ka0")["mtu"], 1300);
        assert_eq!(net.link("ka0")["address"], MAC_A);
    });
}

#[test]
fn interface_name_swap() {
    let net = Net::start("ifswap");
    net.veth("ka0", MAC_A, "kb0", MAC_B);
    net.ns.run("ip", &["link", "set", "kb0", "up"]);
    rt().block_on(async {
        let client = net.client().await;
        // ka0 must be called kb0: the link holding that name takes ka0's old name.
        client
            .update_interface(ctx(), &update_req(iface(MAC_A, "kb0", 0, &[])))
            .await
            .unwrap();
        let a = net.link_by_mac(MAC_A);
        let b = net.link_by_mac(MAC_B);
        assert_eq!(a["ifname"], "kb0");
        assert_eq!(b["ifname"], "ka0");
        // The other link keeps its state (it was up).
        assert!(flags_of(&b).contains(&"UP".to_string()));
    });
}

#[test]
fn interface_bad_input_changes_nothing() {
    let net = Net::start("ifbad");
    net.veth("ka0", MAC_A, "kb0", MAC_B);
    rt().block_on(async {
        let client = net.client().await;
        client
            .update_interface(
                ctx(),
                &update_req(iface(MAC_A, "eth0", 1400, &[("192.0.2.10", "24")])),
            )
            .await
            .unwrap();
        let before = state_of(&net.link("eth0"));

        let good = || iface(MAC_A, "eth9", 1300, &[("198.51.100.1", "24")]);
        let with = |f: &dyn Fn(&mut Interface)| {
            let mut i = good();
            f(&mut i);
            i
        };
        let cases: Vec<(Interface, Code, &str)> = vec![
            (
                with(&|i| i.hwAddr = "02:00:00:00:aa".into()),
                Code::INVALID_ARGUMENT,
                "interface.hwAddr",
            ),
            (
                with(&|i| i.hwAddr = "zz:00:00:00:aa:01".into()),
                Code::INVALID_ARGUMENT,
                "interface.hwAddr",
            ),
            (
                with(&|i| i.IPAddresses.push(ip("198.51.100.300", "24"))),
                Code::INVALID_ARGUMENT,
                "interface.IPAddresses[1].address",
            ),
            (
                with(&|i| i.IPAddresses.push(ip("198.51.100.3", "33"))),
                Code::INVALID_ARGUMENT,
                "interface.IPAddresses[1].mask",
            ),
            (
                with(&|i| i.IPAddresses.push(ip("2001:db8::3", "129"))),
                Code::INVALID_ARGUMENT,
                "interface.IPAddresses[1].mask",
            ),
            (
                with(&|i| i.IPAddresses.push(ip("2001:db8::3", "sixty"))),
                Code::INVALID_ARGUMENT,
                "interface.IPAddresses[1].mask",
            ),
            (
                with(&|i| i.IPAddresses.push(ip("", "24"))),
                Code::INVALID_ARGUMENT,
                "interface.IPAddresses[1].address",
            ),
            (
                with(&|i| i.IPAddresses.push(ip("224.0.0.5", "24"))),
                Code::INVALID_ARGUMENT,
                "interface.IPAddresses[1].address",
            ),
            (
                with(&|i| i.name = "a-name-far-too-long".into()),
                Code::INVALID_ARGUMENT,
                "interface.name",
            ),
            (
                with(&|i| i.name = "bad/name".into()),
                Code::INVALID_ARGUMENT,
                "interface.name",
            ),
            (
                with(&|i| i.mtu = 100_000),
                Code::INVALID_ARGUMENT,
                "interface.mtu",
            ),
            (
                with(&|i| i.mtu = 10),
                Code::INVALID_ARGUMENT,
                "interface.mtu",
            ),
            (
                with(&|i| i.devicePath = "02/zz".into()),
                Code::INVALID_ARGUMENT,
                "interface.devicePath",
            ),
            (
                with(&|i| {
                    i.hwAddr = MAC_NEW.into();
                    i.name.clear();
                }),
                Code::NOT_FOUND,
                "interface.hwAddr",
            ),
            (
                with(&|i| {
                    i.hwAddr.clear();
                    i.name = "nosuch0".into();
                }),
                Code::NOT_FOUND,
                "interface.name",
            ),
            (
                with(&|i| {
                    i.hwAddr = MAC_NEW.into();
                    i.name = "nosuch0".into();
                }),
                Code::NOT_FOUND,
                "interface.name",
            ),
            (
                with(&|i| {
                    i.hwAddr = "03:00:00:00:00:01".into();
                    i.name = "eth0".into();
                }),
                Code::INVALID_ARGUMENT,
                "interface.hwAddr",
            ),
            (
                with(&|i| {
                    i.hwAddr.clear();
                    i.name.clear();
                }),
                Code::INVALID_ARGUMENT,
                "interface:",
            ),
        ];
        for (i, code, field) in cases {
            let shown = format!("{i:?}");
            let (c, msg) = code_of(client.update_interface(ctx(), &update_req(i)).await);
            assert_eq!(c, code, "{shown}: {msg}");
            assert!(msg.contains(field), "{shown}: {msg:?} should name {field}");
            assert_eq!(
                state_of(&net.link("eth0")),
                before,
                "{shown} changed the link"
            );
        }
        let (c, msg) = code_of(
            client
                .update_interface(ctx(), &UpdateInterfaceRequest::new())
                .await,
        );
        assert_eq!(c, Code::INVALID_ARGUMENT);
        assert!(msg.starts_with("interface:"), "{msg}");

        // The kernel refuses part-way (IPv6 disabled on this link only): everything done so far
        // (name, MTU, addresses) is undone.
        net.ns
            .run("sysctl", &["-qw", "net.ipv6.conf.eth0.disable_ipv6=1"]);
        let before = state_of(&net.link("eth0"));
        let i = iface(
            MAC_A,
            "eth7",
            1280,
            &[("198.51.100.1", "24"), ("2001:db8::1", "64")],
        );
        let (c, msg) = code_of(client.update_interface(ctx(), &update_req(i)).await);
        assert_ne!(c, Code::OK);
        assert!(msg.contains("2001:db8::1/64"), "{msg}");
        assert_eq!(state_of(&net.link("eth0")), before);
    });
}

#[test]
fn interface_waits_for_its_pci_device() {
    let sysfs = tempfile::tempdir().unwrap();
    let bridge = sysfs.path().join("devices/pci0000:00/0000:00:02.0");
    std::fs::create_dir_all(bridge.join("pci_bus/0000:01")).unwrap();
    let net = Net::start_with(
        "ifpci",
        AgentOptions {
            env: vec![("KATA_AGENT_SYSFS", sysfs.path().display().to_string())],
            cmdline: Some("agent.hotplug_timeout=2s".into()),
            ..Default::default()
        },
    );
    net.veth("ka0", MAC_A, "kb0", MAC_B);
    rt().block_on(async {
        let client = net.client().await;
        // The NIC shows up in sysfs while the request waits.
        let nic = bridge.join("0000:01:03.0");
        let plug = {
            let nic = nic.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                std::fs::create_dir_all(nic.join("virtio1/net/kb0")).unwrap();
            })
        };
        let mut i = iface(MAC_NEW, "eth1", 0, &[("192.0.2.30", "24")]);
        i.devicePath = "02/03".into();
        let reply = client
            .update_interface(ctx(), &update_req(i))
            .await
            .unwrap();
        plug.join().unwrap();
        assert_eq!(reply.name, "eth1");
        assert_eq!(reply.devicePath, "02/03");
        let link = net.link("eth1");
        assert_eq!(
            link["address"], MAC_NEW,
            "the NIC at the PCI path got the MAC"
        );
        assert_eq!(link["link"], "ka0", "it is the veth peer that was kb0");

        // Nothing appears at another slot: NOT_FOUND after the hotplug timeout.
        let mut i = iface(MAC_A, "eth2", 0, &[]);
        i.devicePath = "04".into();
        let (c, msg) = code_of(client.update_interface(ctx(), &update_req(i)).await);
        assert_eq!(c, Code::NOT_FOUND, "{msg}");
        assert!(
            msg.contains("interface.devicePath") && msg.contains("04"),
            "{msg}"
        );
        assert_eq!(net.link("ka0")["address"], MAC_A);
    });
}

#[test]
fn routes_are_replaced_per_interface() {
    let net = Net::start("routes");
    rt().block_on(async {
        let client = net.client().await;
        configured_eth0(&net, &client).await;
        // A route of another link, which the updates below must not touch.
        net.ns
            .run("ip", &["addr", "add", "203.0.113.129/25", "dev", "kb0"]);
        net.ns.run(
            "ip",
            &[
                "route",
                "add",
                "203.0.113.0/25",
                "via",
                "203.0.113.130",
                "dev",
                "kb0",
            ],
        );
        // A stale route of eth0 from before.
        net.ns.run(
            "ip",
            &[
                "route",
                "add",
                "100.64.0.0/16",
                "via",
                "192.0.2.99",
                "dev",
                "eth0",
            ],
        );

        let mut list = vec![
            // Listed before the link route it needs: gateway routes are applied last.
            route("203.0.113.128/26", "198.51.100.1", "eth0"),
            route("", "192.0.2.1", "eth0"),
            route("198.51.100.0/24", "", "eth0"),
            route("2001:db8:9::/64", "2001:db8:1::1", "eth0"),
            route("", "fe80::1", "eth0"),
            route("2001:db8:8::/64", "", "eth0"),
            route("192.0.2.128/32", "", "eth0"),
        ];
        list[2].scope = 253;
        list[2].source = "192.0.2.10".into();
        list[0].mtu = 1300;
        list[6].scope = 253;
        let reply = client
            .update_routes(ctx(), &routes_req(list))
            .await
            .unwrap();
        let expected_new = [
            rv("203.0.113.128/26", "198.51.100.1", "eth0", "", 0, 1300),
            rv("0.0.0.0/0", "192.0.2.1", "eth0", "", 0, 0),
            rv("198.51.100.0/24", "", "eth0", "192.0.2.10", 253, 0),
            rv("192.0.2.128/32", "", "eth0", "", 253, 0),
            rv("2001:db8:9::/64", "2001:db8:1::1", "eth0", "", 0, 0),
            rv("::/0", "fe80::1", "eth0", "", 0, 0),
            rv("2001:db8:8::/64", "", "eth0", "", 0, 0),
        ];
        let got = views(&reply.Routes);
        for r in &expected_new {
            assert!(got.contains(r), "{r:?} missing from {got:?}");
        }
        // Kernel link routes and the other link's routes stay; the stale one is gone.
        assert!(
            got.contains(&rv("192.0.2.0/24", "", "eth0", "192.0.2.10", 253, 0)),
            "{got:?}"
        );
        assert!(
            got.contains(&rv("2001:db8:1::/64", "", "eth0", "", 0, 0)),
            "{got:?}"
        );
        assert!(
            got.contains(&rv("203.0.113.0/25", "203.0.113.130", "kb0", "", 0, 0)),
            "{got:?}"
        );
        assert!(!got.iter().any(|r| r.0 == "100.64.0.0/16"), "{got:?}");
        // Families are true.
        for r in &reply.Routes {
            let v6 = r.dest.contains(':');
            assert_eq!(r.family.enum_value().unwrap() == IPFamily::v6, v6, "{r:?}");
        }
        // The reply is what ListRoutes and ip say.
        let listed = client
            .list_routes(ctx(), &ListRoutesRequest::new())
            .await
            .unwrap();
        assert_eq!(views(&listed.Routes), got);
        assert_eq!(ip_routes(&net), got);

        // The second update replaces: only what it lists remains for eth0.
        let reply = client
            .update_routes(
                ctx(),
                &routes_req(vec![
                    route("", "192.0.2.2", "eth0"),
                    route("2001:db8:7::/48", "2001:db8:1::2", "eth0"),
                ]),
            )
            .await
            .unwrap();
        let got = views(&reply.Routes);
        let eth0_extra: BTreeSet<RouteView> = got
            .iter()
            .filter(|r| {
                r.2 == "eth0"
                    && !r.0.starts_with("fe80::")
                    && r.0 != "192.0.2.0/24"
                    && r.0 != "2001:db8:1::/64"
            })
            .cloned()
            .collect();
        assert_eq!(
            eth0_extra,
            BTreeSet::from([
                rv("0.0.0.0/0", "192.0.2.2", "eth0", "", 0, 0),
                rv("2001:db8:7::/48", "2001:db8:1::2", "eth0", "", 0, 0),
            ])
        );
        assert!(got.contains(&rv("203.0.113.0/25", "203.0.113.130", "kb0", "", 0, 0)));
        assert_eq!(ip_routes(&net), got);

        // Onlink: a gateway outside every subnet of the link.
        let mut r = route("192.0.2.192/26", "198.18.0.1", "eth0");
        r.flags = 4;
        let reply = client
            .update_routes(ctx(), &routes_req(vec![r]))
            .await
            .unwrap();
        let onlink = reply
            .Routes
            .iter()
            .find(|r| r.dest == "192.0.2.192/26")
            .unwrap();
        assert_eq!(onlink.flags & 4, 4);
        let shown = net.json(&["route", "show", "192.0.2.192/26"]);
        assert!(
            shown[0]["flags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "onlink"),
            "{shown}"
        );

        // An empty list for no link changes nothing.
        let before = ip_routes(&net);
        client
            .update_routes(ctx(), &routes_req(vec![]))
            .await
            .unwrap();
        assert_eq!(ip_routes(&net), before);
    });
}

#[test]
fn routes_bad_input_changes_nothing() {
    let net = Net::start("routebad");
    rt().block_on(async {
        let client = net.client().await;
        configured_eth0(&net, &client).await;
        client
            .update_routes(ctx(), &routes_req(vec![route("", "192.0.2.1", "eth0")]))
            .await
            .unwrap();
        let before = ip_routes(&net);
        let ok = route("198.51.100.0/24", "192.0.2.1", "eth0");
        let mut scoped = route("198.51.100.0/24", "192.0.2.1", "eth0");
        scoped.scope = 253;
        let mut flagged = route("198.51.100.0/24", "192.0.2.1", "eth0");
        flagged.flags = 0x100;
        let cases: Vec<(Route, Code, &str)> = vec![
            (
                route("198.51.100.0/24", "192.0.2.1", "nosuch0"),
                Code::NOT_FOUND,
                "routes[1]",
            ),
            (
                route("198.51.100.0/24", "192.0.2.1", ""),
                Code::INVALID_ARGUMENT,
                "routes[1].device",
            ),
            (
                route("198.51.100.1/24", "192.0.2.1", "eth0"),
                Code::INVALID_ARGUMENT,
                "routes[1].dest",
            ),
            (
                route("198.51.100.0/40", "192.0.2.1", "eth0"),
                Code::INVALID_ARGUMENT,
                "routes[1].dest",
            ),
            (
                route("not-an-address", "", "eth0"),
                Code::INVALID_ARGUMENT,
                "routes[1].dest",
            ),
            (
                route("198.51.100.0/24", "192.0.2", "eth0"),
                Code::INVALID_ARGUMENT,
                "routes[1].gateway",
            ),
            (
                route("198.51.100.0/24", "2001:db8::1", "eth0"),
                Code::INVALID_ARGUMENT,
                "routes[1].gateway",
            ),
            (scoped, Code::INVALID_ARGUMENT, "routes[1].scope"),
            (flagged, Code::INVALID_ARGUMENT, "routes[1].flags"),
            // Valid, but the kernel refuses it: the gateway is on no link.
            (
                route("198.51.100.0/24", "100.64.1.1", "eth0"),
                Code::INVALID_ARGUMENT,
                "198.51.100.0/24 via 100.64.1.1 dev eth0",
            ),
        ];
        for (bad, code, what) in cases {
            let shown = format!("{bad:?}");
            // A good route first: it must not stay behind when the bad one fails.
            let mut list = vec![route("203.0.113.0/24", "", "eth0"), bad];
            list[0].scope = 253;
            let (c, msg) = code_of(client.update_routes(ctx(), &routes_req(list)).await);
            assert_eq!(c, code, "{shown}: {msg}");
            assert!(msg.contains(what), "{shown}: {msg:?} should name {what}");
            assert_eq!(ip_routes(&net), before, "{shown} changed the routes");
        }
        let (c, msg) = code_of(
            client
                .update_routes(ctx(), &UpdateRoutesRequest::new())
                .await,
        );
        assert_eq!(c, Code::INVALID_ARGUMENT);
        assert!(msg.starts_with("routes:"), "{msg}");
        // Still usable afterwards.
        client
            .update_routes(ctx(), &routes_req(vec![ok]))
            .await
            .unwrap();
    });
}

#[test]
fn listings_match_ip() {
    let net = Net::start("list");
    net.veth("kc0", MAC_C, "kd0", MAC_D);
    net.ns.run("ip", &["link", "set", "lo", "up"]);
    net.ns.run("ip", &["link", "set", "kd0", "up"]);
    net.ns
        .run("ip", &["addr", "add", "203.0.113.7/28", "dev", "kd0"]);
    rt().block_on(async {
        let client = net.client().await;
        configured_eth0(&net, &client).await;
        let mut r = route("198.51.100.0/24", "192.0.2.1", "eth0");
        r.mtu = 1400;
        client
            .update_routes(
                ctx(),
                &routes_req(vec![
                    r,
                    route("", "192.0.2.1", "eth0"),
                    route("", "2001:db8:1::1", "eth0"),
                ]),
            )
            .await
            .unwrap();

        let listed = client
            .list_interfaces(ctx(), &ListInterfacesRequest::new())
            .await
            .unwrap();
        let ip_links = net.json(&["addr", "show"]);
        let ip_links = ip_links.as_array().unwrap();
        assert_eq!(listed.Interfaces.len(), ip_links.len());
        for l in ip_links {
            let name = l["ifname"].as_str().unwrap();
            let got = listed
                .Interfaces
                .iter()
                .find(|i| i.name == name)
                .unwrap_or_else(|| panic!("{name} not listed"));
            assert_eq!(got.mtu, l["mtu"].as_u64().unwrap(), "{name}");
            assert_eq!(
                got.hwAddr.to_lowercase(),
                l["address"].as_str().unwrap(),
                "{name}"
            );
            let mine: BTreeSet<(String, String, u64)> = got
                .IPAddresses
                .iter()
                .map(|a| {
                    let fam = match a.family.enum_value().unwrap() {
                        IPFamily::v4 => "inet",
                        IPFamily::v6 => "inet6",
                    };
                    (fam.to_string(), a.address.clone(), a.mask.parse().unwrap())
                })
                .collect();
            assert_eq!(mine, addrs_of(l, false), "{name}");
        }
        assert!(listed
            .Interfaces
            .iter()
            .any(|i| i.name == "lo" && i.IPAddresses.iter().any(|a| a.address == "127.0.0.1")));

        let routes = client
            .list_routes(ctx(), &ListRoutesRequest::new())
            .await
            .unwrap();
        let got = views(&routes.Routes);
        assert_eq!(got, ip_routes(&net));
        // Default routes and the real destination of gateway routes are reported.
        assert!(
            got.contains(&rv("0.0.0.0/0", "192.0.2.1", "eth0", "", 0, 0)),
            "{got:?}"
        );
        assert!(
            got.contains(&rv("::/0", "2001:db8:1::1", "eth0", "", 0, 0)),
            "{got:?}"
        );
        assert!(
            got.contains(&rv("198.51.100.0/24", "192.0.2.1", "eth0", "", 0, 1400)),
            "{got:?}"
        );
        assert!(
            got.contains(&rv("203.0.113.0/28", "", "kd0", "203.0.113.7", 253, 0)),
            "{got:?}"
        );
    });
}

fn neighbor(addr: &str, dev: &str, lladdr: &str, state: i32, flags: i32) -> ARPNeighbor {
    ARPNeighbor {
        toIPAddress: MessageField::some(ip(addr, "")),
        device: dev.into(),
        lladdr: lladdr.into(),
        state,
        flags,
        ..Default::default()
    }
}

fn neighbors_req(list: Vec<ARPNeighbor>) -> AddARPNeighborsRequest {
    AddARPNeighborsRequest {
        neighbors: MessageField::some(agent::ARPNeighbors {
            ARPNeighbors: list,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn neighbours_of(net: &Net) -> BTreeSet<(String, String, String)> {
    net.json(&["neigh", "show", "nud", "all", "dev", "eth0"])
        .as_array()
        .unwrap()
        .iter()
        // Multicast entries come and go with the kernel's own MLD/IGMP traffic.
        .filter(|n| {
            let dst = n["dst"].as_str().unwrap();
            !dst.parse::<std::net::IpAddr>().unwrap().is_multicast()
        })
        .map(|n| {
            let state = n["state"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|x| x.as_str().unwrap())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            (
                n["dst"].as_str().unwrap().to_string(),
                n["lladdr"].as_str().unwrap_or("").to_string(),
                state,
            )
        })
        .collect()
}

#[test]
fn arp_neighbors_added() {
    let net = Net::start("neigh");
    rt().block_on(async {
        let client = net.client().await;
        configured_eth0(&net, &client).await;
        client
            .add_arp_neighbors(
                ctx(),
                &neighbors_req(vec![
                    neighbor("192.0.2.1", "eth0", "02:00:00:00:01:01", 0, 0),
                    neighbor("2001:db8:1::1", "eth0", "02:00:00:00:01:02", 0x04, 0x80),
                    neighbor("192.0.2.3", "eth0", "02:00:00:00:01:03", 0x40, 0),
                ]),
            )
            .await
            .unwrap();
        let got = neighbours_of(&net);
        assert!(
            got.contains(&(
                "192.0.2.1".into(),
                "02:00:00:00:01:01".into(),
                "PERMANENT".into()
            )),
            "{got:?}"
        );
        assert!(
            got.contains(&(
                "2001:db8:1::1".into(),
                "02:00:00:00:01:02".into(),
                "STALE".into()
            )),
            "{got:?}"
        );
        assert!(
            got.contains(&(
                "192.0.2.3".into(),
                "02:00:00:00:01:03".into(),
                "NOARP".into()
            )),
            "{got:?}"
        );
        let v6 = net.json(&["-6", "neigh", "show", "dev", "eth0", "to", "2001:db8:1::1"]);
        assert!(v6.to_string().contains("router"), "{v6}");

        // A second call replaces the entry.
        client
            .add_arp_neighbors(
                ctx(),
                &neighbors_req(vec![neighbor(
                    "192.0.2.1",
                    "eth0",
                    "02:00:00:00:01:09",
                    0,
                    0,
                )]),
            )
            .await
            .unwrap();
        assert!(neighbours_of(&net).contains(&(
            "192.0.2.1".into(),
            "02:00:00:00:01:09".into(),
            "PERMANENT".into()
        )));

        let before = neighbours_of(&net);
        let mut no_ip = neighbor("192.0.2.5", "eth0", "02:00:00:00:01:05", 0, 0);
        no_ip.toIPAddress = MessageField::none();
        let cases: Vec<(ARPNeighbor, Code, &str)> = vec![
            (
                neighbor("192.0.2.5", "nosuch0", "02:00:00:00:01:05", 0, 0),
                Code::NOT_FOUND,
                "neighbors[1]",
            ),
            (
                neighbor("192.0.2.5", "", "02:00:00:00:01:05", 0, 0),
                Code::INVALID_ARGUMENT,
                "neighbors[1].device",
            ),
            (
                neighbor("192.0.2.500", "eth0", "02:00:00:00:01:05", 0, 0),
                Code::INVALID_ARGUMENT,
                "neighbors[1].toIPAddress.address",
            ),
            (
                neighbor("192.0.2.5", "eth0", "02:00:00:00:01", 0, 0),
                Code::INVALID_ARGUMENT,
                "neighbors[1].lladdr",
            ),
            (
                neighbor("192.0.2.5", "eth0", "02:00:00:00:01:05", -1, 0),
                Code::INVALID_ARGUMENT,
                "neighbors[1].state",
            ),
            (
                neighbor("192.0.2.5", "eth0", "02:00:00:00:01:05", 0, 512),
                Code::INVALID_ARGUMENT,
                "neighbors[1].flags",
            ),
            (no_ip, Code::INVALID_ARGUMENT, "neighbors[1].toIPAddress"),
            // Valid, but the kernel refuses it (a permanent entry needs a link-layer address):
            // the first entry, already added, is taken back.
            (
                neighbor("192.0.2.5", "eth0", "", 0, 0),
                Code::INVALID_ARGUMENT,
                "neighbors[1] (192.0.2.5 dev eth0)",
            ),
        ];
        for (bad, code, what) in cases {
            let shown = format!("{bad:?}");
            let list = vec![
                neighbor("192.0.2.4", "eth0", "02:00:00:00:01:04", 0, 0),
                bad,
            ];
            let (c, msg) = code_of(client.add_arp_neighbors(ctx(), &neighbors_req(list)).await);
            assert_eq!(c, code, "{shown}: {msg}");
            assert!(msg.contains(what), "{shown}: {msg:?} should name {what}");
            assert_eq!(
                neighbours_of(&net),
                before,
                "{shown} changed the neighbours"
            );
        }
        let (c, msg) = code_of(
            client
                .add_arp_neighbors(ctx(), &AddARPNeighborsRequest::new())
                .await,
        );
        assert_eq!(c, Code::INVALID_ARGUMENT);
        assert!(msg.starts_with("neighbors:"), "{msg}");
    });
}

#[test]
fn iptables_saved_and_restored() {
    assert!(
        ["/usr/sbin/iptables-save", "/sbin/iptables-save"]
            .iter()
            .any(|p| Path::new(p).exists()),
        "iptables is not installed (scripts/setup.sh installs it)"
    );
    let net = Net::start("ipt");
    rt().block_on(async {
        let client = net.client().await;
        for (v6, src, save) in [
            (false, "192.0.2.66/32", "iptables-save"),
            (true, "2001:db8::66/128", "ip6tables-save"),
        ] {
            let rules = format!(
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -s {src} -j DROP\nCOMMIT\n"
            );
            client
                .set_ip_tables(
                    ctx(),
                    &SetIPTablesRequest {
                        is_ipv6: v6,
                        data: rules.into_bytes(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            let rule = format!("-A INPUT -s {src} -j DROP");
            assert!(net.iptables(save).contains(&rule), "{save} in the namespace lacks {rule}");
            let got = client
                .get_ip_tables(ctx(), &GetIPTablesRequest { is_ipv6: v6, ..Default::default() })
                .await
                .unwrap();
            let text = String::from_utf8(got.data).unwrap();
            assert!(text.contains(&rule), "{text}");
            assert!(text.contains("*filter") && text.contains("COMMIT"), "{text}");

            // Rejected rules: the tool's message comes back and the rules stay.
            let (c, msg) = code_of(
                client
                    .set_ip_tables(
                        ctx(),
                        &SetIPTablesRequest {
                            is_ipv6: v6,
                            data: b"*filter\n-A NO_SUCH_CHAIN -j DROP\nCOMMIT\n".to_vec(),
                            ..Default::default()
                        },
                    )
                    .await,
            );
            assert_eq!(c, Code::INVALID_ARGUMENT, "{msg}");
            assert!(msg.contains("line 2 failed"), "{msg}");
            assert!(net.iptables(save).contains(&rule));
        }
        // The host's own rules were never touched: the agent ran in the namespace.
        assert!(!String::from_utf8_lossy(&std::process::Command::new("iptables-save").output().unwrap().stdout)
            .contains("192.0.2.66"));
    });
}

#[test]
fn ipv6_family_enum_round_trip() {
    // The family field of a route without any address decides its family.
    let net = Net::start("fam");
    rt().block_on(async {
        let client = net.client().await;
        configured_eth0(&net, &client).await;
        let mut r = route("", "", "eth0");
        r.family = EnumOrUnknown::new(IPFamily::v6);
        let reply = client
            .update_routes(ctx(), &routes_req(vec![r]))
            .await
            .unwrap();
        assert!(
            views(&reply.Routes).contains(&rv("::/0", "", "eth0", "", 0, 0)),
            "{:?}",
            reply.Routes
        );
        assert_eq!(ip_routes(&net), views(&reply.Routes));
    });
}
