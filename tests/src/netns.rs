//! A host of its own for a service under test: a Linux network namespace joined to this one
//! by a veth pair, which a test can cut off the network and reconnect.
//!
//! Each namespace gets a /30 of 10.213.0.0/16: this side is `.1`, the namespace `.2`
//! ([`NetworkNamespace::addr`]). A process is put inside with [`Host::wrap`] (`ip netns exec
//! NAME …`), and binds the namespace's address, where every port is free.
//! Envoy, the upstreams and the test stay in this namespace and reach it through the veth,
//! as they would reach another host; a process inside reaches a server here at `.1`
//! ([`NetworkNamespace::outside_addr`]), if that server binds it (a Redis shared by
//! replicas in namespaces of their own).
//!
//! [`NetworkNamespace::cut`] is a network cut, not a stopped process: every packet arriving
//! on either end of the veth is dropped (an nftables `netdev` ingress chain on each end), so
//! nothing answers, not even with a reset or an ICMP error, and connections stay open until
//! their keepalives or timeouts notice, as when a host or a link is lost between two
//! machines. Dropping at the receiving ends rather than taking a link down is deliberate: a
//! link taken down removes its routes, and the sender's own kernel then fails connections at
//! once (`ENETUNREACH`), which is a refusal, not silence. For the same reason each end's
//! neighbour entry is static: address resolution would otherwise fail during a long cut and
//! report the host unreachable. [`NetworkNamespace::restore`] removes the drop.
//!
//! Two namespaces can also be joined to each other directly ([`NetworkNamespace::link_to`]),
//! so that each reaches the other's address over that link rather than through this one
//! (where nothing forwards between them): a cut of that link alone
//! ([`NamespaceLink::cut`]) is a partition between the two, while this side still reaches
//! both, as a client in a third place does when two sites lose each other.
//!
//! Names are `tgnc<index>`, with the index taken by creating the namespace (which fails if
//! the name exists), so concurrent test processes never share one. Dropping the guard deletes
//! the namespace (its veth pair goes with it) and this side's drop table. It needs root
//! (`CAP_NET_ADMIN`) and the `ip` and `nft` commands; without them it panics saying so.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub use tollgate_testkit::host::Host;

/// 10.213.0.0/16 split into /30s: 16,384 namespaces.
const SUBNETS: u32 = 1 << 14;

/// A network namespace joined to this one by a veth pair; deleted on drop.
#[derive(Debug)]
pub struct NetworkNamespace {
    name: String,
    /// The veth end in this namespace, named `<name>h`; the other end, inside, is `<name>n`.
    host_veth: String,
    inner_veth: String,
    host_ip: Ipv4Addr,
    ip: Ipv4Addr,
}

impl NetworkNamespace {
    /// Creates a namespace with a veth to this one, both ends up, and `lo` up inside.
    pub fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        require_root();
        // Cutting needs nft: fail now rather than halfway through a test.
        run(Command::new("nft").arg("--version"));
        // Start each test process at its own place in the range, so that concurrent runs
        // rarely try the same names; `ip netns add` settles the rare clash.
        let start = std::process::id().wrapping_mul(64);
        for _ in 0..SUBNETS {
            let index = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % SUBNETS;
            let name = format!("tgnc{index}");
            let output = output_of(Command::new("ip").args(["netns", "add", &name]));
            if output.status.success() {
                let ns = Self::new(index, name);
                ns.link();
                return ns;
            }
            let error = String::from_utf8_lossy(&output.stderr);
            assert!(
                error.contains("File exists"),
                "ip netns add {name}: {}",
                error.trim()
            );
        }
        panic!("no free network namespace name tgnc0..tgnc{SUBNETS}: `ip netns list`")
    }

    fn new(index: u32, name: String) -> Self {
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + index * 4;
        Self {
            host_veth: format!("{name}h"),
            inner_veth: format!("{name}n"),
            host_ip: Ipv4Addr::from(base + 1),
            ip: Ipv4Addr::from(base + 2),
            name,
        }
    }

    /// Creates the veth pair with fixed MAC addresses and static neighbour entries (see the
    /// module documentation) and brings everything up.
    fn link(&self) {
        let (host_mac, inner_mac) = (mac(self.host_ip), mac(self.ip));
        let (host_veth, inner_veth, ns) = (&self.host_veth, &self.inner_veth, &self.name);
        let (host_cidr, cidr) = (format!("{}/30", self.host_ip), format!("{}/30", self.ip));
        let (host_ip, ip) = (self.host_ip.to_string(), self.ip.to_string());
        for args in [
            vec![
                "link", "add", host_veth, "address", &host_mac, "type", "veth", "peer", "name",
                inner_veth, "address", &inner_mac, "netns", ns,
            ],
            vec!["addr", "add", &host_cidr, "dev", host_veth],
            vec!["link", "set", host_veth, "up"],
            vec![
                "neigh",
                "replace",
                &ip,
                "lladdr",
                &inner_mac,
                "dev",
                host_veth,
                "nud",
                "permanent",
            ],
            vec!["-n", ns, "addr", "add", &cidr, "dev", inner_veth],
            vec!["-n", ns, "link", "set", inner_veth, "up"],
            vec!["-n", ns, "link", "set", "lo", "up"],
            vec![
                "-n",
                ns,
                "neigh",
                "replace",
                &host_ip,
                "lladdr",
                &host_mac,
                "dev",
                inner_veth,
                "nud",
                "permanent",
            ],
        ] {
            run(Command::new("ip").args(&args));
        }
    }

    /// The namespace's name (`ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's address, which processes inside bind and this side connects to.
    pub fn addr(&self) -> IpAddr {
        IpAddr::V4(self.ip)
    }

    /// This side's address on the veth, at which a process inside reaches a server here
    /// that binds it.
    pub fn outside_addr(&self) -> IpAddr {
        IpAddr::V4(self.host_ip)
    }

    /// Where a service in this namespace runs, for the builders that start one there.
    pub fn host(&self) -> Host {
        Host::new(&self.name, self.addr(), self.outside_addr())
    }

    /// Cuts the namespace off: from now on every packet either way is silently dropped.
    pub fn cut(&self) {
        for (namespace, device) in [
            (None, &self.host_veth),
            (Some(&self.name), &self.inner_veth),
        ] {
            let table = self.drop_table();
            run(nft(namespace).args(["add", "table", "netdev", &table]));
            run(nft(namespace).args([
                "add",
                "chain",
                "netdev",
                &table,
                "ingress",
                &format!(
                    "{{ type filter hook ingress device \"{device}\" priority 0; policy drop; }}"
                ),
            ]));
        }
    }

    /// Joins this namespace and `other` by a veth pair of their own, with a host route each
    /// way, so that processes in each reach the other at its [`addr`](Self::addr) over
    /// that link (and connect from their own `addr`, which the other side routes back over
    /// it). Dropping the link removes it.
    pub fn link_to(&self, other: &NetworkNamespace) -> NamespaceLink {
        // Each end is named after the namespace on the other side, so the two names differ
        // and each is unique in its namespace.
        let (end, other_end) = (format!("{}x", other.name), format!("{}x", self.name));
        let (mac_here, mac_there) = (link_mac(self.ip), link_mac(other.ip));
        run(Command::new("ip").args([
            "-n",
            &self.name,
            "link",
            "add",
            &end,
            "address",
            &mac_here,
            "type",
            "veth",
            "peer",
            "name",
            &other_end,
            "address",
            &mac_there,
            "netns",
            &other.name,
        ]));
        for (ns, device, peer_ip, peer_mac, own_ip) in [
            (&self.name, &end, other.ip, &mac_there, self.ip),
            (&other.name, &other_end, self.ip, &mac_here, other.ip),
        ] {
            let (peer, own) = (format!("{peer_ip}/32"), own_ip.to_string());
            for args in [
                vec!["-n", ns, "link", "set", device, "up"],
                vec!["-n", ns, "route", "add", &peer, "dev", device, "src", &own],
                vec![
                    "-n",
                    ns,
                    "neigh",
                    "replace",
                    &peer_ip.to_string(),
                    "lladdr",
                    peer_mac,
                    "dev",
                    device,
                    "nud",
                    "permanent",
                ],
            ] {
                run(Command::new("ip").args(&args));
            }
        }
        NamespaceLink {
            ends: [(self.name.clone(), end), (other.name.clone(), other_end)],
        }
    }

    /// Reconnects a namespace that was [`cut`](Self::cut) off.
    pub fn restore(&self) {
        for namespace in [None, Some(&self.name)] {
            run(nft(namespace).args(["delete", "table", "netdev", &self.drop_table()]));
        }
    }

    /// The nftables table holding the drop chains, named after the namespace because the
    /// one on this side shares this namespace's ruleset with everything else.
    fn drop_table(&self) -> String {
        format!("{}_cut", self.name)
    }
}

impl Drop for NetworkNamespace {
    fn drop(&mut self) {
        // Errors are ignored: the table exists only while cut, and a namespace that is
        // already gone has nothing left to remove.
        let _ = nft(None)
            .args(["delete", "table", "netdev", &self.drop_table()])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
        // The namespace itself (and its veth pair) ends when the last process in it does;
        // their guards kill them. Delete this side's end now so that nothing is left even
        // if one lingers.
        let _ = Command::new("ip")
            .args(["link", "delete", &self.host_veth])
            .output();
    }
}

/// A veth pair joining two namespaces ([`NetworkNamespace::link_to`]); removed on drop.
#[derive(Debug)]
pub struct NamespaceLink {
    /// Each end: the namespace it is in and its device there.
    ends: [(String, String); 2],
}

impl NamespaceLink {
    /// Partitions the two namespaces: every packet arriving on either end is silently
    /// dropped (as [`NetworkNamespace::cut`] does), while each still reaches this side.
    pub fn cut(&self) {
        for (namespace, device) in &self.ends {
            run(nft(Some(namespace)).args(["add", "table", "netdev", LINK_DROP_TABLE]));
            run(nft(Some(namespace)).args([
                "add",
                "chain",
                "netdev",
                LINK_DROP_TABLE,
                "ingress",
                &format!(
                    "{{ type filter hook ingress device \"{device}\" priority 0; policy drop; }}"
                ),
            ]));
        }
    }

    /// Heals a partition made by [`cut`](Self::cut).
    pub fn restore(&self) {
        for (namespace, _) in &self.ends {
            run(nft(Some(namespace)).args(["delete", "table", "netdev", LINK_DROP_TABLE]));
        }
    }
}

impl Drop for NamespaceLink {
    fn drop(&mut self) {
        // Deleting one end deletes both; the namespace may be gone already.
        let (namespace, device) = &self.ends[0];
        let _ = Command::new("ip")
            .args(["-n", namespace, "link", "delete", device])
            .output();
    }
}

/// The drop table of a [`NamespaceLink`], inside each of its two namespaces (which hold
/// only that link and their own veth, whose table is named after the namespace).
const LINK_DROP_TABLE: &str = "tollgate_link_cut";

/// A MAC address for a namespace's end of a [`NamespaceLink`], derived from its address,
/// apart from those [`mac`] gives the veths to this side.
fn link_mac(ip: Ipv4Addr) -> String {
    let [_, b, c, d] = ip.octets();
    format!("02:55:00:{b:02x}:{c:02x}:{d:02x}")
}

/// `nft`, inside `namespace` when given.
fn nft(namespace: Option<&String>) -> Command {
    match namespace {
        Some(name) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", name, "nft"]);
            command
        }
        None => Command::new("nft"),
    }
}

/// A locally administered MAC address derived from `ip`, so each end's is known before the
/// veth exists.
fn mac(ip: Ipv4Addr) -> String {
    let [_, b, c, d] = ip.octets();
    format!("02:54:00:{b:02x}:{c:02x}:{d:02x}")
}

/// Panics with what these tests need unless the process is root.
fn require_root() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "network-cut tests need root (CAP_NET_ADMIN) to create network namespaces, veth pairs \
         and nftables rules, and the `ip` and `nft` commands: run `make test-netcut` as root"
    );
}

fn output_of(command: &mut Command) -> std::process::Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e} (network-cut tests need `ip` and `nft`)"))
}

fn run(command: &mut Command) {
    let output = output_of(command);
    assert!(
        output.status.success(),
        "{command:?} exited with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
}
