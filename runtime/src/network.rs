//! The container's network, given to its guest: a tap made inside the container's network
//! namespace and joined to the namespace's interface by two tc `mirred` redirects, as urunc
//! and Kata do, so that whatever reaches the container's address (Docker's published ports,
//! a CNI plugin's routes) reaches the guest unchanged.
//!
//! In the container process, after `start` (Docker configures the interface between `create`
//! and `start`; a CNI plugin before `create`), while it still holds `CAP_NET_ADMIN`:
//! 1. [`connect_guest`] dumps links, addresses and routes over rtnetlink: the interface is
//!    the Ethernet link that is not loopback and has an IPv4 address (the one the default
//!    route leaves through if several have: the main table's route, else another table's,
//!    a multipath route's next hops included). None: the container has no network
//!    (`--network none`) and the guest gets no network device. A link that is not Ethernet
//!    (`wireguard`, `tun`, `ipip`) holding the default route is an error, not a guest
//!    without a network device.
//! 2. It makes the tap ([`vmm::net::Tap::create_on`], on a `/dev/net/tun` opened before
//!    the pivot; the tap lives as long as the VMM holds it), gives it the guest's MTU and
//!    brings it up, adds an ingress qdisc and a `u32` filter matching every frame to each
//!    side (frames arriving on the interface leave through the tap, to the guest; frames the
//!    guest writes to the tap leave through the interface), then takes every address off the
//!    interface (so that the kernel neither answers ARP for the guest's address nor takes
//!    its TCP segments).
//! 3. The guest gets the interface's MAC address, address, prefix and gateway
//!    ([`vmm::net::NetSpec::with_tap`]).
//!
//! Each change is noted ([`Changes`]) as soon as it is made. If a later step fails, the ones
//! before it are undone at once (the qdiscs deleted, which takes their filters, the
//! addresses and the routes the kernel dropped with them given back), so a failed start
//! leaves no redirect to a vanished tap (every frame dropped) nor a qdisc that makes every
//! retry fail. A namespace that outlives the container (config.json names it by a path: a
//! pod's, pinned in `/var/run/netns`) is put back once the container has ended: the
//! container process saves the changes it is about to make in the state directory
//! ([`Record`]) before it makes them (if it cannot, it fails without changing anything), and
//! `delete` undoes what of them is still the container's ([`restore`]) however the container
//! ended, `SIGKILL` included. A namespace whose `delete` never ran keeps a redirect to a tap
//! that is gone: [`connect_guest`] removes it first, and if the interface has no IPv4 address
//! left it says that a killed container took it, rather than booting the guest without a
//! network device; an interface whose redirect goes to a live tap (a flick container
//! running in the same namespace holds it) is an error too, saying so.
//!
//! Only a container with a network namespace of its own (made or joined) is touched: in the
//! runtime's own namespace, the host's, the guest boots without a network device. Docker's
//! `--network host` joins that namespace by path, so the container process compares its
//! namespace with the runtime's ([`NetnsId`]) rather than trusting `config.json`: taking the
//! host's interface would take the host off its network. The guest's
//! stack uses frames of up to 1514 bytes, so an interface with a smaller MTU is refused.
//!
//! netlink is spoken with `netlink-packet-route` over a blocking `netlink-sys` socket: no
//! `ip` or `tc` command is needed inside or outside the container.

use netlink_packet_core::{
    Emitable, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The tap's name in the container's namespace.
pub(crate) const TAP_NAME: &str = "flick0";
/// [`TAP_NAME`] for C.
const TAP_NAME_C: &std::ffi::CStr = c"flick0";

/// `ETH_P_ALL` in network byte order, as a filter's protocol.
const ALL_PROTOCOLS: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;
/// The filters' priority.
const FILTER_PRIORITY: u32 = 1;
/// How long the kernel may take to answer one request (it answers at once; this only keeps
/// a bug from hanging the container).
const NETLINK_TIMEOUT_SECS: libc::time_t = 5;
/// How many times a dump is asked for when the kernel says it was interrupted.
const DUMP_ATTEMPTS: u32 = 5;
/// The largest reply datagram read at once.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// Errors connecting the guest to the container's network.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetworkError {
    /// A netlink request failed.
    #[error("cannot {what}")]
    Netlink {
        /// What was asked.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// What a dump lists kept changing while it was read.
    #[error(
        "cannot {what}: the list kept changing while the kernel gave it ({DUMP_ATTEMPTS} attempts)"
    )]
    DumpInterrupted {
        /// What was asked.
        what: String,
    },
    /// The kernel's answer could not be read.
    #[error("cannot read the kernel's answer to '{what}'")]
    Decode {
        /// What was asked.
        what: String,
        /// Why.
        #[source]
        source: netlink_packet_core::DecodeError,
    },
    /// `/dev/net/tun` could not be opened before the pivot.
    #[error("cannot open /dev/net/tun for the guest's tap")]
    Tun(#[source] std::io::Error),
    /// The tap could not be made, or is unusable for the VMM.
    #[error(transparent)]
    Tap(vmm::net::NetError),
    /// The tap's index could not be found.
    #[error("cannot find the index of the tap {TAP_NAME}")]
    TapIndex(#[source] std::io::Error),
    /// The interface's MTU is below what the guest sends.
    #[error(
        "the container's interface {name} has an MTU of {mtu}; flick guests send frames of up to {wanted} bytes of payload"
    )]
    SmallMtu {
        /// The interface.
        name: String,
        /// Its MTU.
        mtu: u32,
        /// The guest's.
        wanted: u32,
    },
    /// The interface the guest would take over is not Ethernet.
    #[error(
        "the container's interface {name} is not Ethernet: a flick guest can take over only an Ethernet interface (one with a MAC address)"
    )]
    NotEthernet {
        /// The interface.
        name: String,
    },
    /// A guest killed earlier in this namespace took the interface's addresses with it.
    #[error(
        "the container's interface {name} has no IPv4 address: a flick container killed earlier in this namespace took it (its redirect is removed; the interface needs its address again)"
    )]
    TakenByKilledGuest {
        /// The interface.
        name: String,
    },
    /// A flick container running in this namespace holds the interface.
    #[error(
        "the container's interface {name} is taken by another flick container running in this namespace (it redirects {name}'s frames to its guest and holds its address)"
    )]
    TakenByLiveGuest {
        /// The interface.
        name: String,
    },
    /// The record of what was changed could not be written or read.
    #[error("cannot {what} {}", path.display())]
    Record {
        /// What was done.
        what: &'static str,
        /// The record.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The record of what was changed is not ours.
    #[error("the record of the container's network changes {} is malformed", path.display())]
    MalformedRecord {
        /// The record.
        path: PathBuf,
        /// Why.
        #[source]
        source: RecordFault,
    },
    /// The container's network namespace could not be entered to put it back.
    #[error("cannot enter the container's network namespace {}", path.display())]
    EnterNamespace {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Why a record of network changes is not ours.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordFault {
    /// Something else than a regular file (a FIFO, a device) has its name.
    #[error("it is not a regular file")]
    NotAFile,
    /// It is larger than any record.
    #[error("it is larger than {MAX_RECORD} bytes")]
    TooLarge,
    /// It is not a record's JSON.
    #[error(transparent)]
    Json(serde_json::Error),
}

/// The already-gone answers to deleting a qdisc: no device (a tap that went with its VMM),
/// no ingress qdisc, or another qdisc than ours.
const GONE: [i32; 3] = [libc::ENODEV, libc::ENOENT, libc::EINVAL];

fn errno_of(err: &NetworkError) -> Option<i32> {
    match err {
        NetworkError::Netlink { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

/// The container's interface, as the namespace's configuration left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interface {
    /// Its name (`eth0` under Docker).
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its MAC address, which the guest takes over.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
    /// Its IPv4 address, which the guest takes over.
    pub ip: Ipv4Addr,
    /// The address's prefix length.
    pub prefix_len: u8,
    /// The default gateway through it.
    pub gateway: Option<Ipv4Addr>,
    /// Every address it holds (all families), taken off when the guest takes over.
    addresses: Vec<AddressMessage>,
    /// The routes through it that the kernel drops with its last IPv4 address (all but the
    /// kernel's own, which come back with the address).
    routes: Vec<RouteMessage>,
}

/// Picks the interface from dumps of links, addresses and routes (see the module's docs):
/// an Ethernet link (the guest takes over its MAC address and speaks in frames) that is not
/// loopback and has an IPv4 address, the one the default route leaves through if several
/// have. A link that is not Ethernet (`wireguard`, `tun`, `ipip`: an L3 CNI's) is an error
/// when it holds the default route, or when it is the only one with an IPv4 address: the
/// guest would otherwise boot without a network device and nobody would know why.
fn choose(
    links: &[LinkMessage],
    addresses: &[AddressMessage],
    routes: &[RouteMessage],
) -> Result<Option<Interface>, NetworkError> {
    let ipv4_of = |index: u32| {
        addresses.iter().find_map(|a| {
            (a.header.index == index && a.header.family == AddressFamily::Inet)
                .then(|| address_of(a).map(|ip| (ip, a.header.prefix_len)))
                .flatten()
        })
    };
    let is_loopback = |l: &&LinkMessage| l.header.flags.contains(LinkFlags::Loopback);
    let with_ipv4: Vec<&LinkMessage> = links
        .iter()
        .filter(|l| !is_loopback(l) && ipv4_of(l.header.index).is_some())
        .collect();
    // The candidates: (link, MAC address, IPv4 address and prefix).
    let ethernet: Vec<_> = with_ipv4
        .iter()
        .filter_map(|l| Some((*l, mac_of(l)?, ipv4_of(l.header.index)?)))
        .collect();
    let exits = default_exits(routes);
    let by_route = exits.iter().find_map(|&(index, gateway)| {
        ethernet
            .iter()
            .find(|(l, ..)| l.header.index == index)
            .map(|&candidate| (candidate, gateway))
    });
    if by_route.is_none() {
        let holder = match exits.first() {
            Some(&(index, _)) => links
                .iter()
                .find(|l| l.header.index == index && !is_loopback(l)),
            None if ethernet.is_empty() => with_ipv4.first().copied(),
            None => None,
        };
        if let Some(link) = holder.filter(|l| mac_of(l).is_none()) {
            return Err(NetworkError::NotEthernet {
                name: link_name(link),
            });
        }
    }
    let Some(((link, mac, (ip, prefix_len)), gateway)) =
        by_route.or_else(|| ethernet.first().map(|&candidate| (candidate, None)))
    else {
        return Ok(None);
    };
    let index = link.header.index;
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500);
    Ok(Some(Interface {
        name: link_name(link),
        index,
        mac,
        mtu,
        ip,
        prefix_len,
        gateway,
        addresses: addresses
            .iter()
            .filter(|a| a.header.index == index)
            .cloned()
            .collect(),
        routes: routes
            .iter()
            .filter(|r| r.header.protocol != RouteProtocol::Kernel)
            .filter(|r| exits_of(r).iter().any(|&(i, _)| i == index))
            .cloned()
            .collect(),
    }))
}

/// The MAC address of an Ethernet link; `None` for any other kind.
fn mac_of(link: &LinkMessage) -> Option<[u8; 6]> {
    if link.header.link_layer_type != LinkLayerType::Ether {
        return None;
    }
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
        _ => None,
    })
}

/// Where a route leaves: (interface index, gateway) for its `RTA_OIF`, or for each next hop
/// of an `RTA_MULTIPATH` route (which has no `RTA_OIF`).
fn exits_of(route: &RouteMessage) -> Vec<(u32, Option<Ipv4Addr>)> {
    let gateway = |attributes: &[RouteAttribute]| {
        attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(*gw),
            _ => None,
        })
    };
    let mut exits = Vec::new();
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(index) => exits.push((*index, gateway(&route.attributes))),
            RouteAttribute::MultiPath(hops) => exits.extend(
                hops.iter()
                    .map(|hop| (hop.interface_index, gateway(&hop.attributes))),
            ),
            _ => {}
        }
    }
    exits
}

/// Where the namespace's IPv4 default route leaves ([`exits_of`]): the main table's if it
/// has one, else another table's (a table above 255 is dumped as `RT_TABLE_COMPAT` in the
/// header, the real one in `RTA_TABLE`); of several, the lowest metric's.
fn default_exits(routes: &[RouteMessage]) -> Vec<(u32, Option<Ipv4Addr>)> {
    let table_of = |route: &RouteMessage| {
        route
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(table) => Some(*table),
                _ => None,
            })
            .unwrap_or(u32::from(route.header.table))
    };
    let metric_of = |route: &RouteMessage| {
        route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Priority(metric) => Some(*metric),
            _ => None,
        })
    };
    routes
        .iter()
        .filter(|r| {
            r.header.address_family == AddressFamily::Inet
                && r.header.destination_prefix_length == 0
                && r.header.kind == RouteType::Unicast
        })
        .min_by_key(|r| {
            (
                table_of(r) != u32::from(RouteHeader::RT_TABLE_MAIN),
                metric_of(r).unwrap_or(0),
            )
        })
        .map(exits_of)
        .unwrap_or_default()
}

fn address_of(message: &AddressMessage) -> Option<Ipv4Addr> {
    let pick = |want_local: bool| {
        message
            .attributes
            .iter()
            .find_map(|a| match (a, want_local) {
                (AddressAttribute::Local(IpAddr::V4(ip)), true) => Some(*ip),
                (AddressAttribute::Address(IpAddr::V4(ip)), false) => Some(*ip),
                _ => None,
            })
    };
    // On a point-to-point link `Address` is the peer's; `Local` is always ours when present.
    pick(true).or_else(|| pick(false))
}

/// A network namespace's identity (the device and inode of its `nsfs` file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    /// The calling thread's network namespace; `None` if `/proc` cannot tell.
    pub(crate) fn current() -> Option<NetnsId> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/thread-self/ns/net")
            .ok()
            .map(|m| NetnsId {
                dev: m.dev(),
                ino: m.ino(),
            })
    }

    fn of(file: &std::fs::File) -> std::io::Result<NetnsId> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata()?;
        Ok(NetnsId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Connects a guest to the container's network: the tap made with `tun`, mirrored to the
/// namespace's interface; `None` when the namespace has no interface to give (then `tun`
/// is not needed, and its failure to open does not matter). Before anything in the
/// namespace changes, `save` is given every change planned (for [`Record`]): if it fails,
/// nothing is changed. If a step fails, the steps before it are undone: the namespace is
/// left as it was found.
///
/// A redirect a killed container left (an ingress qdisc on an interface whose `mirred`
/// target is gone: every frame is dropped, and a new qdisc cannot be added) is removed
/// first; if that container also took the interface's IPv4 addresses, the error says so.
pub(crate) fn connect_guest(
    tun: Result<OwnedFd, NetworkError>,
    save: impl FnOnce(&Changes) -> Result<(), NetworkError>,
) -> Result<Option<vmm::net::NetConfig>, NetworkError> {
    let mut netlink = Netlink::open()?;
    let Some(interface) = find_interface(&mut netlink)? else {
        return Ok(None);
    };
    if interface.mtu < vmm::net::MTU {
        return Err(NetworkError::SmallMtu {
            name: interface.name,
            mtu: interface.mtu,
            wanted: vmm::net::MTU,
        });
    }
    let tap = vmm::net::Tap::create_on(tun?, TAP_NAME).map_err(NetworkError::Tap)?;
    let tap_index = tap_index()?;
    // The guest's device handles frames of up to `vmm::net::MTU` bytes of payload, whatever
    // the interface's MTU (at least that, checked above).
    netlink.set_up(tap_index, vmm::net::MTU)?;
    // Saved first: a container killed in the middle of the take-over (or one whose record
    // cannot be written) must not leave a namespace nobody can put back.
    save(&Changes::planned(&interface, tap_index))?;
    let mut changes = Changes::default();
    if let Err(err) = take_over(&mut netlink, &interface, tap_index, &mut changes) {
        if let Err(undo) = changes.undo(&mut netlink) {
            eprintln!(
                "flick-runtime: cannot put the container's network back as it was: {}",
                crate::log::chain(&undo)
            );
        }
        return Err(err);
    }
    let spec = vmm::net::NetSpec {
        tap: vmm::net::TapSource::Name(TAP_NAME.to_owned()),
        mac: Some(interface.mac),
        ip: interface.ip,
        prefix_len: interface.prefix_len,
        gateway: interface.gateway,
        tx_rate: vmm::net::DEFAULT_TX_RATE,
    };
    Ok(Some(spec.with_tap(tap)))
}

/// The interface to take over ([`choose`]), once the redirects killed containers left are
/// removed ([`clear_left_behind`]). When there is none, an interface that a flick container
/// holds (a redirect, its addresses taken) is an error saying so: the guest would otherwise
/// boot without a network device and nobody would know why.
fn find_interface(netlink: &mut impl Rtnetlink) -> Result<Option<Interface>, NetworkError> {
    let links = netlink.dump_links()?;
    let redirects = clear_left_behind(netlink, &links)?;
    let addresses = netlink.dump_addresses()?;
    let routes = netlink.dump_routes()?;
    if let Some(interface) = choose(&links, &addresses, &routes)? {
        return Ok(Some(interface));
    }
    if let Some(name) = redirects.cleared.into_iter().next() {
        return Err(NetworkError::TakenByKilledGuest { name });
    }
    match redirects.live.into_iter().next() {
        Some(name) => Err(NetworkError::TakenByLiveGuest { name }),
        None => Ok(None),
    }
}

/// Joins `interface` and the tap with a redirect each way and takes the interface's
/// addresses off, noting each change in `changes` as soon as it is made.
fn take_over(
    netlink: &mut impl Rtnetlink,
    interface: &Interface,
    tap_index: u32,
    changes: &mut Changes,
) -> Result<(), NetworkError> {
    for (from, to, name) in [
        (interface.index, tap_index, interface.name.as_str()),
        (tap_index, interface.index, TAP_NAME),
    ] {
        netlink.add_ingress(from, name)?;
        changes.qdiscs.push((from, name.to_owned()));
        netlink.redirect(from, to, name)?;
    }
    // The kernel drops the routes through the interface with its last IPv4 address.
    changes.routes.clone_from(&interface.routes);
    for address in &interface.addresses {
        netlink.delete_address(address, &interface.name)?;
        changes.addresses.push(address.clone());
    }
    Ok(())
}

/// The links with an ingress redirect, as [`clear_left_behind`] found them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Redirects {
    /// Those whose redirect went to a device that is gone: removed.
    cleared: Vec<String>,
    /// Those (but our tap) whose redirect goes to a live device (a running guest's tap): kept.
    live: Vec<String>,
}

/// Removes the redirects a killed container left behind: an ingress qdisc on a link whose
/// `mirred` filter targets a device that no longer exists (the kernel reports a vanished
/// target as index 0). Says so in one line for each; returns those links' names and those
/// whose redirect is alive.
fn clear_left_behind(
    netlink: &mut impl Rtnetlink,
    links: &[LinkMessage],
) -> Result<Redirects, NetworkError> {
    let mut redirects = Redirects::default();
    for link in links {
        if link.header.flags.contains(LinkFlags::Loopback) {
            continue;
        }
        let name = link_name(link);
        let targets = netlink.redirect_targets(link.header.index, &name)?;
        if targets.iter().any(|&t| !link_exists(links, t)) {
            netlink.delete_ingress(link.header.index, &name)?;
            eprintln!(
                "flick-runtime: removed from {name} the redirect to a tap that is gone (left by a container killed before it could clean up)"
            );
            redirects.cleared.push(name);
        } else if !targets.is_empty() && name != TAP_NAME {
            redirects.live.push(name);
        }
    }
    Ok(redirects)
}

/// Whether `links` has one with `index` (a redirect's target of 0 is a device gone).
fn link_exists(links: &[LinkMessage], index: u32) -> bool {
    index != 0 && links.iter().any(|l| l.header.index == index)
}

fn link_name(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("#{}", link.header.index))
}

/// What [`connect_guest`] changed in the namespace, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Interfaces (index, name) given an ingress qdisc (its filters go with it).
    qdiscs: Vec<(u32, String)>,
    /// Addresses taken off, as dumped.
    addresses: Vec<AddressMessage>,
    /// Routes the kernel dropped with them.
    routes: Vec<RouteMessage>,
}

impl Changes {
    /// What [`take_over`] of `interface` with the tap `tap_index` changes if every step
    /// succeeds. Undoing it when fewer steps were made is harmless: a qdisc that is not there
    /// is no error, and [`restore`] gives addresses back only to an interface without one.
    fn planned(interface: &Interface, tap_index: u32) -> Changes {
        Changes {
            qdiscs: vec![
                (interface.index, interface.name.clone()),
                (tap_index, TAP_NAME.to_owned()),
            ],
            addresses: interface.addresses.clone(),
            routes: interface.routes.clone(),
        }
    }

    /// Whether nothing was changed.
    pub(crate) fn is_empty(&self) -> bool {
        self.qdiscs.is_empty() && self.addresses.is_empty() && self.routes.is_empty()
    }

    /// Puts the namespace back: the qdiscs deleted (first: frames stop going to the tap),
    /// the addresses given back, then the routes (which need the addresses): those without
    /// a gateway first, since a gateway may be reachable only through one of them (Calico's
    /// `169.254.1.1 dev eth0 scope link` under `default via 169.254.1.1`, which the kernel
    /// refuses with `ENETUNREACH` before it). Every step is tried; the first error is
    /// returned.
    fn undo(&self, netlink: &mut impl Rtnetlink) -> Result<(), NetworkError> {
        let mut first = Ok(());
        let mut keep = |result: Result<(), NetworkError>| {
            if first.is_ok() {
                first = result;
            }
        };
        for (index, name) in self.qdiscs.iter().rev() {
            keep(netlink.delete_ingress(*index, name));
        }
        for address in &self.addresses {
            keep(netlink.add_address(address));
        }
        let (direct, via_gateway): (Vec<_>, Vec<_>) =
            self.routes.iter().partition(|r| !has_gateway(r));
        for route in direct.into_iter().chain(via_gateway) {
            keep(netlink.add_route(route));
        }
        first
    }
}

/// Whether `route` goes through a gateway (`RTA_GATEWAY` or `RTA_VIA`, its own or a next
/// hop's of a multipath route), which the kernel must reach when the route is added.
fn has_gateway(route: &RouteMessage) -> bool {
    let names_one =
        |a: &RouteAttribute| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Via(_));
    route.attributes.iter().any(|a| match a {
        RouteAttribute::MultiPath(hops) => hops.iter().any(|h| h.attributes.iter().any(names_one)),
        other => names_one(other),
    })
}

/// The changes of a running container, saved in its state directory by the container
/// process (which gives up `CAP_NET_ADMIN` before its guest runs) for `delete`, which puts
/// the namespace back once the container has ended however it ended, even by `SIGKILL`.
/// Only a namespace with a path is recorded: one made for the container ends with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The namespace's path (config.json's).
    netns_path: PathBuf,
    /// Its identity, so that another namespace mounted there since is left alone.
    netns: NetnsId,
    /// [`Changes::qdiscs`].
    qdiscs: Vec<(u32, String)>,
    /// [`Changes::addresses`], as netlink bytes.
    addresses: Vec<Vec<u8>>,
    /// [`Changes::routes`], as netlink bytes.
    routes: Vec<Vec<u8>>,
}

/// The record's file name in the container's state directory.
pub(crate) const RECORD_FILE: &str = "network.json";
/// The name a record is written under before it is renamed to [`RECORD_FILE`].
const RECORD_STAGING: &str = ".network.json.new";
/// The largest record read back (a few addresses and routes take a few KiB).
const MAX_RECORD: u64 = 1024 * 1024;

impl Record {
    /// The record of `changes` made in the namespace `netns`, mounted at `netns_path`.
    pub(crate) fn new(changes: &Changes, netns_path: PathBuf, netns: NetnsId) -> Record {
        fn bytes(message: &impl Emitable) -> Vec<u8> {
            let mut buffer = vec![0; message.buffer_len()];
            message.emit(&mut buffer);
            buffer
        }
        Record {
            netns_path,
            netns,
            qdiscs: changes.qdiscs.clone(),
            addresses: changes.addresses.iter().map(bytes).collect(),
            routes: changes.routes.iter().map(bytes).collect(),
        }
    }

    /// The changes it records.
    fn changes(&self) -> Result<Changes, NetworkError> {
        let decode = |source| NetworkError::Decode {
            what: "read back the recorded network changes".to_owned(),
            source,
        };
        Ok(Changes {
            qdiscs: self.qdiscs.clone(),
            addresses: self
                .addresses
                .iter()
                .map(|b| AddressMessage::parse(b.as_slice()).map_err(decode))
                .collect::<Result<_, _>>()?,
            routes: self
                .routes
                .iter()
                .map(|b| RouteMessage::parse(b.as_slice()).map_err(decode))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Saves the record in the state directory `state_dir` (as [`RECORD_FILE`], 0600), whole
    /// or not at all: written to a new file of its own (never through a link or into one
    /// that was there), flushed to its disk, then renamed over the name.
    pub(crate) fn save(&self, state_dir: BorrowedFd<'_>) -> Result<(), NetworkError> {
        let staging = Path::new(RECORD_STAGING);
        let failed = |what, source: std::io::Error| NetworkError::Record {
            what,
            path: PathBuf::from(RECORD_FILE),
            source,
        };
        let fd = nix::fcntl::openat(
            Some(state_dir.as_raw_fd()),
            staging,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|errno| failed("make", errno.into()))?;
        // SAFETY: `openat` just returned this descriptor, owned by nobody else.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let written = self
            .write(&file)
            .and_then(|()| file.sync_all().map_err(|e| failed("write", e)))
            .and_then(|()| {
                nix::fcntl::renameat(
                    Some(state_dir.as_raw_fd()),
                    staging,
                    Some(state_dir.as_raw_fd()),
                    RECORD_FILE,
                )
                .map_err(|errno| failed("write", errno.into()))
            });
        if written.is_err() {
            let _ = nix::unistd::unlinkat(
                Some(state_dir.as_raw_fd()),
                staging,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        written
    }

    /// Writes the record's JSON to `out`.
    fn write(&self, mut out: impl std::io::Write) -> Result<(), NetworkError> {
        let text = serde_json::to_vec(self).expect("records serialize");
        out.write_all(&text).map_err(|source| NetworkError::Record {
            what: "write",
            path: PathBuf::from(RECORD_FILE),
            source,
        })
    }

    /// Reads the record in the state directory `state_dir`, if there is one: opened without
    /// following a link or blocking (`delete` runs as root: a FIFO or a link put there
    /// must neither hold it nor lead it elsewhere), and only a regular file is read.
    fn read(state_dir: BorrowedFd<'_>) -> Result<Option<Record>, NetworkError> {
        use std::io::Read;
        let path = Path::new(RECORD_FILE);
        let failed = |source: std::io::Error| NetworkError::Record {
            what: "read",
            path: path.to_owned(),
            source,
        };
        let malformed = |source| NetworkError::MalformedRecord {
            path: path.to_owned(),
            source,
        };
        let fd = match nix::fcntl::openat(
            Some(state_dir.as_raw_fd()),
            path,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(errno) => return Err(failed(errno.into())),
        };
        // SAFETY: `openat` just returned this descriptor, owned by nobody else.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if !file.metadata().map_err(failed)?.is_file() {
            return Err(malformed(RecordFault::NotAFile));
        }
        let mut text = Vec::new();
        file.take(MAX_RECORD + 1)
            .read_to_end(&mut text)
            .map_err(failed)?;
        if text.len() as u64 > MAX_RECORD {
            return Err(malformed(RecordFault::TooLarge));
        }
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| malformed(RecordFault::Json(source)))
    }
}

/// Puts back the namespace a container's record (in its state directory `state_dir`, if
/// there is one) describes: `delete` calls it once the container's processes are gone.
/// Only what is still the container's is undone, since the namespace may have moved on
/// (another container may have taken the interface since): a redirect only if it goes to a
/// device that is gone, the addresses and routes only if the interface has no IPv4 address.
/// A namespace that is gone is left alone; the record is then removed, so that a `delete`
/// tried again does not replay it. Returns one line to warn with when the record, or part of
/// it, was not applied (the namespace or interface is not the recorded one any more, or a
/// later container holds it).
pub(crate) fn restore(state_dir: BorrowedFd<'_>) -> Result<Option<String>, NetworkError> {
    let Some(record) = Record::read(state_dir)? else {
        return Ok(None);
    };
    let note = restore_record(&record, NetnsId::current())?;
    match nix::unistd::unlinkat(
        Some(state_dir.as_raw_fd()),
        RECORD_FILE,
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(note),
        Err(errno) => Err(NetworkError::Record {
            what: "remove",
            path: PathBuf::from(RECORD_FILE),
            source: errno.into(),
        }),
    }
}

/// [`restore`] of `record`, from the namespace `own` (the runtime's: the host's).
fn restore_record(record: &Record, own: Option<NetnsId>) -> Result<Option<String>, NetworkError> {
    let path = record.netns_path.display();
    let not_applied = |why: String| {
        Ok(Some(format!(
            "the network namespace {path} was not put back as the container left it: {why}"
        )))
    };
    if own == Some(record.netns) {
        return not_applied("it is the runtime's own (the host's)".to_owned());
    }
    let changes = record.changes()?;
    let Some((index, name)) = changes.qdiscs.first().cloned() else {
        return Ok(None);
    };
    // Without blocking: should something other than a namespace file (a FIFO) have taken the
    // path since, `delete` must not wait on it; the identity check below then fails.
    let netns = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&record.netns_path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(NetworkError::EnterNamespace {
                path: record.netns_path.clone(),
                source,
            });
        }
    };
    if NetnsId::of(&netns).ok() != Some(record.netns) {
        return not_applied("another namespace is mounted there now".to_owned());
    }
    // setns(2) moves only the calling thread: a thread of its own enters the namespace and
    // ends with it, the rest of `delete` stays where it is.
    let kept = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                    |errno| NetworkError::EnterNamespace {
                        path: record.netns_path.clone(),
                        source: errno.into(),
                    },
                )?;
                let mut netlink = Netlink::open()?;
                let links = netlink.dump_links()?;
                // An interface deleted since is not there to put back; another one in its
                // place (renamed, or made again) is not ours.
                match links.iter().find(|l| l.header.index == index) {
                    Some(link) if link_name(link) == name => {
                        put_back(&mut netlink, &changes, &links).map(Some)
                    }
                    Some(link) => Ok(Some(vec![format!(
                        "interface {index} is {} now, not {name}",
                        link_name(link)
                    )])),
                    None if links.iter().any(|l| link_name(l) == name) => Ok(Some(vec![format!(
                        "{name} was made again since (its index is not {index})"
                    )])),
                    None => Ok(None),
                }
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    match kept {
        Some(kept) if !kept.is_empty() => not_applied(kept.join("; ")),
        _ => Ok(None),
    }
}

/// Undoes what of `changes` is still the container's in a namespace whose interfaces are
/// `links` (see [`restore`]); returns what was left alone, and why.
fn put_back(
    netlink: &mut impl Rtnetlink,
    changes: &Changes,
    links: &[LinkMessage],
) -> Result<Vec<String>, NetworkError> {
    let mut still_ours = Changes::default();
    let mut kept = Vec::new();
    for (index, name) in &changes.qdiscs {
        // A device that is gone (the tap, with its VMM) took its qdisc with it.
        if !link_exists(links, *index) {
            continue;
        }
        let targets = netlink.redirect_targets(*index, name)?;
        if targets.is_empty() {
            // No redirect: deleted already, or never added.
            continue;
        }
        if targets.iter().all(|&t| !link_exists(links, t)) {
            still_ours.qdiscs.push((*index, name.clone()));
        } else {
            kept.push(format!(
                "{name}'s redirect goes to a live device (a later container's)"
            ));
        }
    }
    if let Some((index, name)) = changes.qdiscs.first() {
        let addresses = netlink.dump_addresses()?;
        let has_ipv4 = addresses
            .iter()
            .any(|a| a.header.index == *index && a.header.family == AddressFamily::Inet);
        if has_ipv4 {
            kept.push(format!(
                "{name} has an IPv4 address again, so its recorded addresses and routes are not given back"
            ));
        } else {
            still_ours.addresses.clone_from(&changes.addresses);
            still_ours.routes.clone_from(&changes.routes);
        }
    }
    still_ours.undo(netlink)?;
    Ok(kept)
}

/// Whether `path` names a namespace through a process (`/proc/PID/ns/net`, or `/proc/self`,
/// `/proc/thread-self`): a namespace that process lives in, not one made for this container.
pub(crate) fn is_another_process_namespace(path: &std::path::Path) -> bool {
    path.starts_with("/proc")
}

/// Opens `/dev/net/tun` (before the pivot: the container's `/dev` holds only `/dev/kvm`).
pub(crate) fn open_tun() -> Result<OwnedFd, NetworkError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map(OwnedFd::from)
        .map_err(NetworkError::Tun)
}

/// The index of the tap [`TAP_NAME`], just made.
fn tap_index() -> Result<u32, NetworkError> {
    // SAFETY: a NUL-terminated constant name; no other effect.
    match unsafe { libc::if_nametoindex(TAP_NAME_C.as_ptr()) } {
        0 => Err(NetworkError::TapIndex(std::io::Error::last_os_error())),
        index => Ok(index),
    }
}

/// A blocking rtnetlink socket in the calling thread's network namespace.
pub(crate) struct Netlink {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Netlink {
    /// Opens the socket.
    pub(crate) fn open() -> Result<Netlink, NetworkError> {
        let failed = |source| NetworkError::Netlink {
            what: "open a netlink socket".into(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(failed)?;
        socket.bind_auto().map_err(failed)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(failed)?;
        let timeout = libc::timeval {
            tv_sec: NETLINK_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO reads one live timeval from our stack.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(failed(std::io::Error::last_os_error()));
        }
        Ok(Netlink {
            socket,
            sequence: 0,
            buffer: vec![0; RECEIVE_BUFFER],
        })
    }
}

/// rtnetlink requests: [`Netlink`] sends them; the tests fake the kernel's answers.
pub(crate) trait Rtnetlink {
    /// Sends `message` with `flags` and collects the answer: the messages of a dump (until
    /// `NLMSG_DONE`), or nothing for an acknowledged change.
    fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetworkError>;

    /// Dumps with `query` (`what` was asked) and keeps the answers `pick` takes.
    /// A dump the kernel says was interrupted (what it lists changed meanwhile: a CNI
    /// plugin at work) is asked again, up to [`DUMP_ATTEMPTS`] times in all.
    fn dump<T>(
        &mut self,
        what: &str,
        query: RouteNetlinkMessage,
        pick: fn(RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>, NetworkError> {
        let mut attempt = 1;
        let answer = loop {
            match self.request(what, query.clone(), NLM_F_DUMP) {
                Err(NetworkError::DumpInterrupted { .. }) if attempt < DUMP_ATTEMPTS => {
                    attempt += 1;
                }
                other => break other?,
            }
        };
        Ok(answer.into_iter().filter_map(pick).collect())
    }

    fn dump_links(&mut self) -> Result<Vec<LinkMessage>, NetworkError> {
        self.dump(
            "list the container's interfaces",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            |m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            },
        )
    }

    fn dump_addresses(&mut self) -> Result<Vec<AddressMessage>, NetworkError> {
        self.dump(
            "list the container's addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            |m| match m {
                RouteNetlinkMessage::NewAddress(address) => Some(address),
                _ => None,
            },
        )
    }

    fn dump_routes(&mut self) -> Result<Vec<RouteMessage>, NetworkError> {
        let mut query = RouteMessage::default();
        query.header.address_family = AddressFamily::Inet;
        self.dump(
            "list the container's routes",
            RouteNetlinkMessage::GetRoute(query),
            |m| match m {
                RouteNetlinkMessage::NewRoute(route) => Some(route),
                _ => None,
            },
        )
    }

    /// Brings interface `index` up with `mtu`.
    fn set_up(&mut self, index: u32, mtu: u32) -> Result<(), NetworkError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        link.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(
            &format!("bring {TAP_NAME} up"),
            RouteNetlinkMessage::SetLink(link),
            0,
        )
        .map(drop)
    }

    /// Takes `address` off its interface (`name`).
    fn delete_address(&mut self, address: &AddressMessage, name: &str) -> Result<(), NetworkError> {
        let mut message = AddressMessage::default();
        message.header = address.header.clone();
        message.attributes = address
            .attributes
            .iter()
            .filter(|a| matches!(a, AddressAttribute::Address(_) | AddressAttribute::Local(_)))
            .cloned()
            .collect();
        match self.request(
            &format!("take the container's address off {name}"),
            RouteNetlinkMessage::DelAddress(message),
            0,
        ) {
            // Taking off a primary IPv4 address also takes its secondaries: gone already.
            Err(NetworkError::Netlink { source, .. })
                if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Gives `address` (as dumped) back to its interface.
    fn add_address(&mut self, address: &AddressMessage) -> Result<(), NetworkError> {
        self.request(
            "give the container's interface its address back",
            RouteNetlinkMessage::NewAddress(address.clone()),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Gives `route` (as dumped) back.
    fn add_route(&mut self, route: &RouteMessage) -> Result<(), NetworkError> {
        self.request(
            "give the container's interface its route back",
            RouteNetlinkMessage::NewRoute(route.clone()),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Adds an ingress qdisc to interface `index` (`name`); fails if it has one already.
    fn add_ingress(&mut self, index: u32, name: &str) -> Result<(), NetworkError> {
        self.request(
            &format!("add an ingress qdisc to {name}"),
            RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(tc_index(index, name)?)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Deletes the ingress qdisc of interface `index` (`name`), and with it its filters; an
    /// interface or qdisc already gone is no error.
    fn delete_ingress(&mut self, index: u32, name: &str) -> Result<(), NetworkError> {
        match self.request(
            &format!("delete the ingress qdisc of {name}"),
            RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(tc_index(index, name)?)),
            0,
        ) {
            Err(err) if errno_of(&err).is_some_and(|e| GONE.contains(&e)) => Ok(()),
            other => other.map(drop),
        }
    }

    /// The devices the `mirred` actions of the ingress filters of interface `index`
    /// (`name`) send frames to (0: a device that is gone).
    fn redirect_targets(&mut self, index: u32, name: &str) -> Result<Vec<u32>, NetworkError> {
        let mut query = TcMessage::with_index(tc_index(index, name)?);
        query.header.parent = INGRESS_HANDLE;
        let filters = self.dump(
            &format!("list the ingress filters of {name}"),
            RouteNetlinkMessage::GetTrafficFilter(query),
            |m| match m {
                RouteNetlinkMessage::NewTrafficFilter(filter) => Some(filter),
                _ => None,
            },
        )?;
        Ok(filters.iter().flat_map(mirred_targets).collect())
    }

    /// Redirects every frame arriving on interface `from` (`name`, which has an ingress
    /// qdisc) out of interface `to`: a `u32` filter matching everything, with a `mirred`
    /// egress redirect (`tc filter add dev FROM parent ffff: protocol all u32 match u32 0 0
    /// action mirred egress redirect dev TO`).
    fn redirect(&mut self, from: u32, to: u32, name: &str) -> Result<(), NetworkError> {
        let mut filter = TcMessage::with_index(tc_index(from, name)?);
        filter.header.parent = INGRESS_HANDLE;
        filter.header.info = (FILTER_PRIORITY << 16) | ALL_PROTOCOLS;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind(netlink_packet_route::tc::TcActionMirror::KIND.to_owned()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror_to(to),
            ))]),
        ];
        filter.attributes = vec![
            TcAttribute::Kind(TcFilterU32::KIND.to_owned()),
            TcAttribute::Options(vec![
                TcOption::U32(TcFilterU32Option::Selector(match_everything())),
                TcOption::U32(TcFilterU32Option::Action(vec![action])),
            ]),
        ];
        self.request(
            &format!("redirect {name}'s frames"),
            RouteNetlinkMessage::NewTrafficFilter(filter),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }
}

/// The ingress qdisc's handle, `ffff:`, which its filters name as their parent.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// An interface index as tc messages hold it.
fn tc_index(index: u32, name: &str) -> Result<i32, NetworkError> {
    i32::try_from(index).map_err(|_| NetworkError::Netlink {
        what: format!("use {name} with tc"),
        source: std::io::ErrorKind::InvalidInput.into(),
    })
}

/// `tc qdisc … dev INDEX ingress`.
fn ingress_qdisc(index: i32) -> TcMessage {
    let mut qdisc = TcMessage::with_index(index);
    qdisc.header.handle = INGRESS_HANDLE;
    qdisc.header.parent = TcHandle::INGRESS;
    qdisc
        .attributes
        .push(TcAttribute::Kind("ingress".to_owned()));
    qdisc
}

/// The targets of a filter's `mirred` actions.
fn mirred_targets(filter: &TcMessage) -> Vec<u32> {
    let actions = filter.attributes.iter().flat_map(|a| match a {
        TcAttribute::Options(options) => options.as_slice(),
        _ => &[],
    });
    let actions = actions.flat_map(|o| match o {
        TcOption::U32(TcFilterU32Option::Action(actions)) => actions.as_slice(),
        _ => &[],
    });
    actions
        .flat_map(|a| &a.attributes)
        .flat_map(|a| match a {
            TcActionAttribute::Options(options) => options.as_slice(),
            _ => &[],
        })
        .filter_map(|o| match o {
            TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror)) => Some(mirror.ifindex),
            _ => None,
        })
        .collect()
}

impl Rtnetlink for Netlink {
    fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetworkError> {
        let failed = |source| NetworkError::Netlink {
            what: what.to_owned(),
            source,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        // Every request but a dump (which ends with NLMSG_DONE) asks for an acknowledgement,
        // so that the answer always has an end.
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0).map_err(failed)?;
        let mut answer = Answer::default();
        while !answer.done {
            let size = self
                .socket
                .recv(&mut &mut self.buffer[..], 0)
                .map_err(failed)?;
            answer.take(what, &self.buffer[..size], self.sequence, dump)?;
        }
        answer.finish(what)
    }
}

/// The answer to one request, as its datagrams arrive.
#[derive(Default)]
struct Answer {
    messages: Vec<RouteNetlinkMessage>,
    /// A reply carried `NLM_F_DUMP_INTR`: what was dumped changed meanwhile.
    interrupted: bool,
    /// `NLMSG_DONE` ended the dump, or the acknowledgement came.
    done: bool,
}

impl Answer {
    /// Takes the replies to request `sequence` in `datagram` (others are skipped); an error
    /// reply, or a dump that ends with an error code, is the request's error.
    fn take(
        &mut self,
        what: &str,
        datagram: &[u8],
        sequence: u32,
        dump: bool,
    ) -> Result<(), NetworkError> {
        let failed = |errno: i32| NetworkError::Netlink {
            what: what.to_owned(),
            source: std::io::Error::from_raw_os_error(errno),
        };
        let mut offset = 0;
        while offset < datagram.len() && !self.done {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                .map_err(|source| NetworkError::Decode {
                    what: what.to_owned(),
                    source,
                })?;
            let length = reply.header.length as usize;
            if reply.header.sequence_number == sequence {
                self.interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
                match reply.payload {
                    NetlinkPayload::Done(done) if done.code < 0 => return Err(failed(-done.code)),
                    NetlinkPayload::Done(_) => self.done = true,
                    NetlinkPayload::Error(error) => match error.code {
                        Some(code) => return Err(failed(-code.get())),
                        None => self.done = !dump,
                    },
                    NetlinkPayload::InnerMessage(inner) => self.messages.push(inner),
                    _ => {}
                }
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
        Ok(())
    }

    /// The messages, unless the dump was interrupted (then they may miss some).
    fn finish(self, what: &str) -> Result<Vec<RouteNetlinkMessage>, NetworkError> {
        if self.interrupted {
            return Err(NetworkError::DumpInterrupted {
                what: what.to_owned(),
            });
        }
        Ok(self.messages)
    }
}

/// `u32 match u32 0 0`: one key that every frame matches (its first word masked to nothing).
/// (`matchall` would say it more plainly, but kernels built without `CONFIG_NET_CLS_MATCHALL`
/// lack it; `u32` is what Kata and urunc use.)
fn match_everything() -> TcU32Selector {
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    selector
}

/// `mirred egress redirect dev TO`: the frame leaves through `to` and is stolen from this path.
fn mirror_to(to: u32) -> TcMirror {
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    mirror
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NLM_F_MULTIPART;
    use netlink_packet_route::route::RouteNextHop;

    fn choose_for_test(
        links: &[LinkMessage],
        addresses: &[AddressMessage],
        routes: &[RouteMessage],
    ) -> Result<Option<Interface>, String> {
        choose(links, addresses, routes).map_err(|e| e.to_string())
    }

    #[test]
    fn test_namespace_of_another_process_is_left_alone() {
        assert!(is_another_process_namespace(std::path::Path::new(
            "/proc/4242/ns/net"
        )));
        assert!(!is_another_process_namespace(std::path::Path::new(
            "/var/run/netns/cni-1234"
        )));
        assert!(!is_another_process_namespace(std::path::Path::new(
            "/run/docker/netns/0123abcd"
        )));
    }

    fn link(index: u32, name: &str, loopback: bool) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.link_layer_type = LinkLayerType::Ether;
        if loopback {
            link.header.flags = LinkFlags::Loopback | LinkFlags::Up;
        }
        link.attributes = vec![
            LinkAttribute::IfName(name.into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, index as u8]),
            LinkAttribute::Mtu(1500),
        ];
        link
    }

    fn address(index: u32, ip: IpAddr, prefix_len: u8) -> AddressMessage {
        let mut address = AddressMessage::default();
        address.header.index = index;
        address.header.prefix_len = prefix_len;
        address.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        address.attributes = vec![AddressAttribute::Address(ip), AddressAttribute::Local(ip)];
        address
    }

    /// A link that is not Ethernet: `ipip` (a 4-byte address) or, without an address,
    /// `wireguard` or `tun`.
    fn tunnel(
        index: u32,
        name: &str,
        kind: LinkLayerType,
        address: Option<[u8; 4]>,
    ) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.link_layer_type = kind;
        link.attributes = vec![LinkAttribute::IfName(name.into()), LinkAttribute::Mtu(1420)];
        link.attributes
            .extend(address.map(|a| LinkAttribute::Address(a.to_vec())));
        link
    }

    fn default_route(index: u32, gateway: Ipv4Addr) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.header.kind = RouteType::Unicast;
        route.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::Inet(gateway)),
            RouteAttribute::Oif(index),
        ];
        route
    }

    #[test]
    fn test_choose_docker_namespace_takes_eth0_with_its_gateway() {
        let links = [link(1, "lo", true), link(7, "eth0", false)];
        let addresses = [
            address(1, IpAddr::V4(Ipv4Addr::LOCALHOST), 8),
            address(7, IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2)), 16),
            address(7, "fe80::1".parse().unwrap(), 64),
        ];
        let routes = [default_route(7, Ipv4Addr::new(172, 17, 0, 1))];
        let chosen = choose(&links, &addresses, &routes).unwrap().unwrap();
        assert_eq!(chosen.name, "eth0");
        assert_eq!((chosen.index, chosen.mac), (7, [2, 0, 0, 0, 0, 7]));
        assert_eq!(chosen.ip, Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!(chosen.prefix_len, 16);
        assert_eq!(chosen.gateway, Some(Ipv4Addr::new(172, 17, 0, 1)));
        assert_eq!(chosen.addresses.len(), 2, "both families are taken off");
    }

    #[test]
    fn test_choose_loopback_only_namespace_gives_no_interface() {
        let links = [link(1, "lo", true)];
        let addresses = [address(1, IpAddr::V4(Ipv4Addr::LOCALHOST), 8)];
        assert_eq!(choose(&links, &addresses, &[]).unwrap(), None);
    }

    #[test]
    fn test_choose_interface_without_ipv4_is_passed_over() {
        let links = [link(1, "lo", true), link(2, "eth0", false)];
        let addresses = [address(2, "fe80::1".parse().unwrap(), 64)];
        assert_eq!(choose(&links, &addresses, &[]).unwrap(), None);
    }

    #[test]
    fn test_choose_prefers_the_interface_with_the_default_route() {
        let links = [link(2, "eth0", false), link(3, "eth1", false)];
        let addresses = [
            address(2, IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)), 24),
            address(3, IpAddr::V4(Ipv4Addr::new(10, 2, 0, 2)), 24),
        ];
        let routes = [default_route(3, Ipv4Addr::new(10, 2, 0, 1))];
        let chosen = choose(&links, &addresses, &routes).unwrap().unwrap();
        assert_eq!(chosen.name, "eth1");
        let without_route = choose(&links, &addresses, &[]).unwrap().unwrap();
        assert_eq!(
            (without_route.name.as_str(), without_route.gateway),
            ("eth0", None)
        );
    }

    /// A default route through a link without a gateway (`ip route add default dev wg0`).
    fn default_dev(index: u32) -> RouteMessage {
        let mut route = default_route(index, Ipv4Addr::UNSPECIFIED);
        route.attributes = vec![RouteAttribute::Oif(index)];
        route
    }

    fn ipv4(index: u32, a: u8, b: u8, c: u8, d: u8) -> AddressMessage {
        address(index, IpAddr::V4(Ipv4Addr::new(a, b, c, d)), 24)
    }

    #[test]
    fn test_choose_default_route_on_an_ipip_link_is_an_error_naming_it() {
        let links = [
            link(2, "eth0", false),
            tunnel(3, "ipip0", LinkLayerType::Tunnel, Some([10, 9, 0, 2])),
        ];
        let addresses = [ipv4(2, 10, 1, 0, 2), ipv4(3, 10, 9, 0, 2)];
        let routes = [default_route(3, Ipv4Addr::new(10, 9, 0, 1))];
        let err = choose_for_test(&links, &addresses, &routes).unwrap_err();
        assert!(
            err.contains("ipip0") && err.contains("not Ethernet"),
            "{err}"
        );
    }

    #[test]
    fn test_choose_default_route_on_a_wireguard_link_is_an_error_naming_it() {
        let links = [
            link(2, "eth0", false),
            tunnel(3, "wg0", LinkLayerType::None, None),
        ];
        let addresses = [ipv4(2, 10, 1, 0, 2), ipv4(3, 10, 9, 0, 2)];
        let err = choose_for_test(&links, &addresses, &[default_dev(3)]).unwrap_err();
        assert!(err.contains("wg0") && err.contains("not Ethernet"), "{err}");
    }

    #[test]
    fn test_choose_only_a_tun_link_has_ipv4_is_an_error_naming_it() {
        let links = [
            link(1, "lo", true),
            tunnel(4, "tun0", LinkLayerType::None, None),
        ];
        let addresses = [ipv4(1, 127, 0, 0, 1), ipv4(4, 10, 9, 0, 2)];
        let err = choose_for_test(&links, &addresses, &[]).unwrap_err();
        assert!(
            err.contains("tun0") && err.contains("not Ethernet"),
            "{err}"
        );
    }

    #[test]
    fn test_choose_tun_link_without_the_default_route_is_passed_over() {
        let links = [
            tunnel(2, "tun0", LinkLayerType::None, None),
            link(3, "eth0", false),
        ];
        let addresses = [ipv4(2, 10, 9, 0, 2), ipv4(3, 10, 1, 0, 2)];
        let chosen = choose_for_test(&links, &addresses, &[]).unwrap().unwrap();
        assert_eq!((chosen.name.as_str(), chosen.gateway), ("eth0", None));
    }

    #[test]
    fn test_choose_multipath_default_route_gives_the_hop_through_the_interface() {
        let links = [link(2, "eth0", false), link(3, "eth1", false)];
        let addresses = [ipv4(2, 10, 1, 0, 2), ipv4(3, 10, 2, 0, 2)];
        let hop = |index, gateway| {
            let mut hop = RouteNextHop::default();
            hop.interface_index = index;
            hop.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gateway))];
            hop
        };
        let mut route = default_route(3, Ipv4Addr::UNSPECIFIED);
        route.attributes = vec![RouteAttribute::MultiPath(vec![
            hop(3, Ipv4Addr::new(10, 2, 0, 1)),
            hop(2, Ipv4Addr::new(10, 1, 0, 1)),
        ])];
        let chosen = choose_for_test(&links, &addresses, &[route.clone()])
            .unwrap()
            .unwrap();
        assert_eq!(
            (chosen.name.as_str(), chosen.gateway),
            ("eth1", Some(Ipv4Addr::new(10, 2, 0, 1)))
        );
        assert_eq!(chosen.routes, [route], "given back if the kernel drops it");
    }

    #[test]
    fn test_choose_default_route_in_a_table_above_255_gives_its_gateway() {
        let links = [link(2, "eth0", false)];
        let addresses = [ipv4(2, 10, 1, 0, 2)];
        let mut route = default_route(2, Ipv4Addr::new(10, 1, 0, 1));
        route.header.table = libc::RT_TABLE_COMPAT;
        route.attributes.push(RouteAttribute::Table(1000));
        let chosen = choose_for_test(&links, &addresses, &[route])
            .unwrap()
            .unwrap();
        assert_eq!(chosen.gateway, Some(Ipv4Addr::new(10, 1, 0, 1)));
    }

    #[test]
    fn test_choose_main_table_default_route_wins_over_another_table() {
        let links = [link(2, "eth0", false), link(3, "eth1", false)];
        let addresses = [ipv4(2, 10, 1, 0, 2), ipv4(3, 10, 2, 0, 2)];
        let mut other = default_route(2, Ipv4Addr::new(10, 1, 0, 1));
        other.header.table = 100;
        let main = default_route(3, Ipv4Addr::new(10, 2, 0, 1));
        let chosen = choose_for_test(&links, &addresses, &[other, main])
            .unwrap()
            .unwrap();
        assert_eq!(chosen.name, "eth1");
    }

    /// A kernel that acknowledges every request but the `fail_at`-th (1-based), answers
    /// filter dumps with `filters` (those of the interface asked about), link dumps with
    /// `links` and address dumps with `addresses`, says the first `interrupted`
    /// dumps were interrupted, and keeps what it was sent.
    #[derive(Default)]
    struct FakeKernel {
        sent: Vec<(RouteNetlinkMessage, u16)>,
        fail_at: Option<(usize, i32)>,
        filters: Vec<TcMessage>,
        links: Vec<LinkMessage>,
        addresses: Vec<AddressMessage>,
        interrupted: usize,
    }

    impl Rtnetlink for FakeKernel {
        fn request(
            &mut self,
            what: &str,
            message: RouteNetlinkMessage,
            flags: u16,
        ) -> Result<Vec<RouteNetlinkMessage>, NetworkError> {
            self.sent.push((message.clone(), flags));
            if let Some((n, errno)) = self.fail_at
                && n == self.sent.len()
            {
                return Err(NetworkError::Netlink {
                    what: what.to_owned(),
                    source: std::io::Error::from_raw_os_error(errno),
                });
            }
            if flags & NLM_F_DUMP != 0 && self.interrupted > 0 {
                self.interrupted -= 1;
                return Err(NetworkError::DumpInterrupted {
                    what: what.to_owned(),
                });
            }
            Ok(match message {
                RouteNetlinkMessage::GetLink(_) => self
                    .links
                    .iter()
                    .cloned()
                    .map(RouteNetlinkMessage::NewLink)
                    .collect(),
                RouteNetlinkMessage::GetTrafficFilter(query) => self
                    .filters
                    .iter()
                    .filter(|f| f.header.index == query.header.index)
                    .cloned()
                    .map(RouteNetlinkMessage::NewTrafficFilter)
                    .collect(),
                RouteNetlinkMessage::GetAddress(_) => self
                    .addresses
                    .iter()
                    .cloned()
                    .map(RouteNetlinkMessage::NewAddress)
                    .collect(),
                _ => Vec::new(),
            })
        }
    }

    impl FakeKernel {
        /// What was sent, in short: `+qdisc 7`, `-qdisc 7`, `+filter 7`, `-address 7`, ...
        fn log(&self) -> Vec<String> {
            self.sent
                .iter()
                .map(|(m, _)| match m {
                    RouteNetlinkMessage::NewQueueDiscipline(t) => {
                        format!("+qdisc {}", t.header.index)
                    }
                    RouteNetlinkMessage::DelQueueDiscipline(t) => {
                        format!("-qdisc {}", t.header.index)
                    }
                    RouteNetlinkMessage::NewTrafficFilter(t) => {
                        format!("+filter {}", t.header.index)
                    }
                    RouteNetlinkMessage::GetTrafficFilter(t) => {
                        format!("?filter {}", t.header.index)
                    }
                    RouteNetlinkMessage::NewAddress(a) => format!("+address {}", a.header.index),
                    RouteNetlinkMessage::DelAddress(a) => format!("-address {}", a.header.index),
                    RouteNetlinkMessage::NewRoute(_) => "+route".to_owned(),
                    RouteNetlinkMessage::GetAddress(_) => "?address".to_owned(),
                    other => format!("{other:?}"),
                })
                .collect()
        }
    }

    /// eth0 (index 7) of a Docker namespace: an IPv4 and an IPv6 address, a default route.
    fn docker_eth0() -> Interface {
        let links = [link(1, "lo", true), link(7, "eth0", false)];
        let addresses = [
            address(7, IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2)), 16),
            address(7, "fe80::1".parse().unwrap(), 64),
        ];
        let routes = [default_route(7, Ipv4Addr::new(172, 17, 0, 1))];
        choose(&links, &addresses, &routes).unwrap().unwrap()
    }

    const TAP: u32 = 9;

    #[test]
    fn test_take_over_all_steps_succeed_records_every_change() {
        let (mut kernel, mut changes) = (FakeKernel::default(), Changes::default());
        take_over(&mut kernel, &docker_eth0(), TAP, &mut changes).unwrap();
        assert_eq!(
            kernel.log(),
            [
                "+qdisc 7",
                "+filter 7",
                "+qdisc 9",
                "+filter 9",
                "-address 7",
                "-address 7"
            ]
        );
        assert_eq!(
            changes.qdiscs,
            [(7, "eth0".to_owned()), (TAP, TAP_NAME.to_owned())]
        );
        assert_eq!(changes.addresses, docker_eth0().addresses);
        assert_eq!(
            changes.routes.len(),
            1,
            "the default route goes with the address"
        );
    }

    /// A kernel that fails the `request`-th request (1-based) with `errno`.
    fn failing_at(request: usize, errno: i32) -> FakeKernel {
        FakeKernel {
            fail_at: Some((request, errno)),
            ..FakeKernel::default()
        }
    }

    /// A kernel that has seen only the undoing of a take-over of Docker's eth0 that failed at
    /// `request` with `errno`.
    fn undo_after_take_over_failing_at(request: usize, errno: i32) -> FakeKernel {
        let mut kernel = failing_at(request, errno);
        let mut changes = Changes::default();
        assert!(take_over(&mut kernel, &docker_eth0(), TAP, &mut changes).is_err());
        kernel.sent.clear();
        changes.undo(&mut kernel).unwrap();
        kernel
    }

    #[test]
    fn test_take_over_second_redirect_fails_undo_removes_both_qdiscs_only() {
        assert_eq!(
            undo_after_take_over_failing_at(4, libc::EEXIST).log(),
            ["-qdisc 9", "-qdisc 7"]
        );
    }

    #[test]
    fn test_take_over_filter_fails_undo_removes_the_qdisc_just_added() {
        assert_eq!(
            undo_after_take_over_failing_at(2, libc::ENOENT).log(),
            ["-qdisc 7"]
        );
    }

    #[test]
    fn test_take_over_second_address_fails_undo_gives_back_the_first_and_the_route() {
        let kernel = undo_after_take_over_failing_at(6, libc::EPERM);
        assert_eq!(
            kernel.log(),
            ["-qdisc 9", "-qdisc 7", "+address 7", "+route"]
        );
        let (given_back, flags) = &kernel.sent[2];
        assert_eq!(
            given_back,
            &RouteNetlinkMessage::NewAddress(docker_eth0().addresses[0].clone())
        );
        assert_eq!(*flags, NLM_F_CREATE | NLM_F_REPLACE);
    }

    /// A route to `destination`/32 through interface `index` alone (`scope link`).
    fn link_scope_route(index: u32, destination: Ipv4Addr) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.header.kind = RouteType::Unicast;
        route.header.destination_prefix_length = 32;
        route.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet(destination)),
            RouteAttribute::Oif(index),
        ];
        route
    }

    #[test]
    fn test_changes_undo_gateway_behind_a_link_route_adds_the_link_route_first() {
        let calico_gateway = Ipv4Addr::new(169, 254, 1, 1);
        let default = default_route(7, calico_gateway);
        let link_scope = link_scope_route(7, calico_gateway);
        let changes = Changes {
            routes: vec![default.clone(), link_scope.clone()],
            ..Changes::default()
        };
        let mut kernel = FakeKernel::default();
        changes.undo(&mut kernel).unwrap();
        let added: Vec<_> = kernel.sent.into_iter().map(|(m, _)| m).collect();
        assert_eq!(
            added,
            [
                RouteNetlinkMessage::NewRoute(link_scope),
                RouteNetlinkMessage::NewRoute(default)
            ]
        );
    }

    #[test]
    fn test_changes_undo_failing_step_tries_the_rest_and_reports_it() {
        let (mut kernel, mut changes) = (FakeKernel::default(), Changes::default());
        take_over(&mut kernel, &docker_eth0(), TAP, &mut changes).unwrap();
        let mut kernel = failing_at(3, libc::EPERM);
        let err = changes.undo(&mut kernel).unwrap_err();
        assert_eq!(errno_of(&err), Some(libc::EPERM));
        assert_eq!(
            kernel.sent.len(),
            5,
            "both qdiscs, both addresses, the route"
        );
    }

    #[test]
    fn test_delete_ingress_already_gone_is_no_error() {
        for errno in GONE {
            let mut kernel = failing_at(1, errno);
            kernel.delete_ingress(TAP, TAP_NAME).unwrap();
        }
        let mut kernel = failing_at(1, libc::EPERM);
        assert!(kernel.delete_ingress(TAP, TAP_NAME).is_err());
    }

    #[test]
    fn test_record_read_back_gives_the_same_changes() {
        let (mut kernel, mut changes) = (FakeKernel::default(), Changes::default());
        take_over(&mut kernel, &docker_eth0(), TAP, &mut changes).unwrap();
        let id = NetnsId {
            dev: 4,
            ino: 4026532000,
        };
        let record = Record::new(&changes, PathBuf::from("/var/run/netns/pod"), id);
        let text = serde_json::to_string(&record).unwrap();
        let read: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(read, record);
        assert_eq!(read.changes().unwrap(), changes);
    }

    /// A state directory of its own for a test, made empty.
    fn state_dir(name: &str) -> (PathBuf, std::fs::File) {
        let dir = std::env::temp_dir().join(format!("flick-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let fd = std::fs::File::open(&dir).unwrap();
        (dir, fd)
    }

    /// [`Record::read`] of `contents` saved as the record, or of nothing.
    fn read_record(name: &str, contents: Option<&[u8]>) -> Result<Option<Record>, NetworkError> {
        use std::os::fd::AsFd;
        let (dir, fd) = state_dir(name);
        if let Some(contents) = contents {
            std::fs::write(dir.join(RECORD_FILE), contents).unwrap();
        }
        let result = Record::read(fd.as_fd());
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    /// A writer whose every write fails as on a full disk.
    struct FullDisk;

    impl std::io::Write for FullDisk {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn test_record_write_to_a_full_disk_is_an_error() {
        let record = Record::new(
            &taken_over_eth0(),
            PathBuf::from("/x"),
            NetnsId { dev: 1, ino: 2 },
        );
        let err = record.write(FullDisk).unwrap_err();
        assert!(
            matches!(&err, NetworkError::Record { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
            "{err:?}"
        );
    }

    #[test]
    fn test_record_save_then_read_gives_it_back_and_leaves_no_staging_file() {
        use std::os::fd::AsFd;
        let (dir, fd) = state_dir("save-record");
        let record = Record::new(
            &taken_over_eth0(),
            PathBuf::from("/x"),
            NetnsId { dev: 1, ino: 2 },
        );
        record.save(fd.as_fd()).unwrap();
        let read = Record::read(fd.as_fd());
        let staging_left = dir.join(RECORD_STAGING).exists();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read.unwrap(), Some(record));
        assert!(!staging_left);
    }

    #[test]
    fn test_take_over_planned_changes_are_what_a_whole_take_over_records() {
        let (mut kernel, mut changes) = (FakeKernel::default(), Changes::default());
        take_over(&mut kernel, &docker_eth0(), TAP, &mut changes).unwrap();
        assert_eq!(Changes::planned(&docker_eth0(), TAP), changes);
    }

    #[test]
    fn test_put_back_planned_changes_never_made_change_nothing() {
        // Killed after the record was saved, before the take-over: eth0 as it was.
        let links = vec![link(7, "eth0", false)];
        let mut kernel = FakeKernel {
            addresses: docker_eth0().addresses,
            ..FakeKernel::default()
        };
        let planned = Changes::planned(&docker_eth0(), TAP);
        put_back(&mut kernel, &planned, &links).unwrap();
        assert_eq!(kernel.log(), ["?filter 7", "?address"]);
    }

    #[test]
    fn test_restore_without_a_record_does_nothing() {
        use std::os::fd::AsFd;
        let (dir, fd) = state_dir("no-record");
        let result = restore(fd.as_fd());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(result.unwrap().is_none());
    }

    #[test]
    fn test_record_read_malformed_record_is_malformed() {
        let result = read_record("bad-record", Some(b"{\"netns_path\": 3}"));
        assert!(matches!(
            result,
            Err(NetworkError::MalformedRecord {
                source: RecordFault::Json(_),
                ..
            })
        ));
    }

    #[test]
    fn test_record_read_larger_than_max_record_is_malformed() {
        // A whole record, padded with spaces (still JSON) past the bound.
        let record = Record::new(
            &Changes::default(),
            PathBuf::from("/x"),
            NetnsId { dev: 1, ino: 2 },
        );
        let mut text = serde_json::to_vec(&record).unwrap();
        text.resize(MAX_RECORD as usize + 1, b' ');
        assert!(matches!(
            read_record("large-record", Some(&text)),
            Err(NetworkError::MalformedRecord {
                source: RecordFault::TooLarge,
                ..
            })
        ));
    }

    #[test]
    fn test_record_read_fifo_in_its_place_is_refused_without_blocking() {
        use std::os::fd::AsFd;
        let (dir, fd) = state_dir("fifo-record");
        nix::unistd::mkfifo(&dir.join(RECORD_FILE), Mode::from_bits_truncate(0o600)).unwrap();
        let result = Record::read(fd.as_fd());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            result,
            Err(NetworkError::MalformedRecord {
                source: RecordFault::NotAFile,
                ..
            })
        ));
    }

    #[test]
    fn test_record_read_symlink_in_its_place_is_not_followed() {
        let (dir, fd) = state_dir("link-record");
        let target = dir.join("elsewhere.json");
        std::fs::write(&target, b"{}").unwrap();
        std::os::unix::fs::symlink(&target, dir.join(RECORD_FILE)).unwrap();
        let result = {
            use std::os::fd::AsFd;
            Record::read(fd.as_fd())
        };
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            result,
            Err(NetworkError::Record { what: "read", .. })
        ));
    }

    #[test]
    fn test_restore_record_of_the_runtimes_own_namespace_is_refused() {
        let own = NetnsId {
            dev: 4,
            ino: 4026531840,
        };
        let (mut kernel, mut changes) = (FakeKernel::default(), Changes::default());
        take_over(&mut kernel, &docker_eth0(), TAP, &mut changes).unwrap();
        let record = Record::new(&changes, PathBuf::from("/proc/1/ns/net"), own);
        let note = restore_record(&record, Some(own)).unwrap().unwrap();
        assert!(note.contains("the runtime's own"), "{note}");
    }

    /// What Docker's eth0 (index 7) recorded once its guest had taken it over with tap 9.
    fn taken_over_eth0() -> Changes {
        let (mut kernel, mut changes) = (FakeKernel::default(), Changes::default());
        take_over(&mut kernel, &docker_eth0(), TAP, &mut changes).unwrap();
        changes
    }

    #[test]
    fn test_put_back_dead_redirect_and_no_address_undoes_every_change() {
        let links = vec![link(1, "lo", true), link(7, "eth0", false)];
        let mut kernel = FakeKernel {
            filters: vec![redirect_filter(7, 0)],
            ..FakeKernel::default()
        };
        let kept = put_back(&mut kernel, &taken_over_eth0(), &links).unwrap();
        assert!(kept.is_empty(), "{kept:?}");
        assert_eq!(
            kernel.log(),
            [
                "?filter 7",
                "?address",
                "-qdisc 7",
                "+address 7",
                "+address 7",
                "+route"
            ]
        );
    }

    #[test]
    fn test_put_back_later_containers_redirect_and_address_are_kept() {
        // A later container's guest has eth0 now (its tap is 12), and eth0 has an address.
        let links = vec![link(7, "eth0", false), link(12, TAP_NAME, false)];
        let mut kernel = FakeKernel {
            filters: vec![redirect_filter(7, 12)],
            addresses: vec![ipv4(7, 172, 17, 0, 3)],
            ..FakeKernel::default()
        };
        let kept = put_back(&mut kernel, &taken_over_eth0(), &links).unwrap();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!(kernel.log(), ["?filter 7", "?address"]);
    }

    /// The filter [`Rtnetlink::redirect`] adds to interface `from`, redirecting to `to`.
    fn redirect_filter(from: u32, to: u32) -> TcMessage {
        let mut kernel = FakeKernel::default();
        kernel.redirect(from, to, "x").unwrap();
        match kernel.sent.remove(0).0 {
            RouteNetlinkMessage::NewTrafficFilter(filter) => filter,
            other => panic!("not a filter: {other:?}"),
        }
    }

    #[test]
    fn test_clear_left_behind_redirect_to_a_vanished_tap_is_deleted() {
        let links = [link(1, "lo", true), link(7, "eth0", false)];
        let mut kernel = FakeKernel {
            // The kernel dumps the target of a mirred whose device is gone as index 0.
            filters: vec![redirect_filter(7, 0)],
            ..FakeKernel::default()
        };
        let redirects = clear_left_behind(&mut kernel, &links).unwrap();
        assert_eq!(redirects.cleared, ["eth0"]);
        assert_eq!(kernel.log(), ["?filter 7", "-qdisc 7"]);
    }

    #[test]
    fn test_clear_left_behind_redirect_to_a_live_device_is_kept() {
        let links = [link(7, "eth0", false), link(TAP, TAP_NAME, false)];
        let mut kernel = FakeKernel {
            filters: vec![redirect_filter(7, TAP)],
            ..FakeKernel::default()
        };
        let redirects = clear_left_behind(&mut kernel, &links).unwrap();
        assert!(redirects.cleared.is_empty());
        assert_eq!(redirects.live, ["eth0"]);
        assert_eq!(kernel.log(), ["?filter 7", "?filter 9"]);
    }

    #[test]
    fn test_find_interface_held_by_a_live_guest_is_an_error_naming_it() {
        // eth0 redirects to a running guest's tap and has no IPv4 address left.
        let mut kernel = FakeKernel {
            links: vec![
                link(1, "lo", true),
                link(7, "eth0", false),
                link(TAP, TAP_NAME, false),
            ],
            filters: vec![redirect_filter(7, TAP), redirect_filter(TAP, 7)],
            ..FakeKernel::default()
        };
        let err = find_interface(&mut kernel).unwrap_err();
        assert!(
            matches!(&err, NetworkError::TakenByLiveGuest { name } if name == "eth0"),
            "{err:?}"
        );
        assert!(
            !kernel.log().iter().any(|m| m.starts_with("-qdisc")),
            "the live redirect is kept"
        );
    }

    #[test]
    fn test_find_interface_no_redirect_and_no_address_is_no_interface() {
        let mut kernel = FakeKernel {
            links: vec![link(1, "lo", true), link(7, "eth0", false)],
            ..FakeKernel::default()
        };
        assert_eq!(find_interface(&mut kernel).unwrap(), None);
    }

    /// One netlink message as the kernel sends it: `payload` with `flags` to request 1.
    fn reply(payload: NetlinkPayload<RouteNetlinkMessage>, flags: u16) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = 1;
        let mut message = NetlinkMessage::new(header, payload);
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    fn done(code: i32) -> Vec<u8> {
        let mut done = netlink_packet_core::DoneMessage::default();
        done.code = code;
        reply(NetlinkPayload::Done(done), NLM_F_MULTIPART)
    }

    fn eth0_reply(flags: u16) -> Vec<u8> {
        let link = RouteNetlinkMessage::NewLink(link(7, "eth0", false));
        reply(NetlinkPayload::InnerMessage(link), NLM_F_MULTIPART | flags)
    }

    #[test]
    fn test_answer_dump_to_done_gives_its_messages() {
        let mut answer = Answer::default();
        answer
            .take("x", &[eth0_reply(0), done(0)].concat(), 1, true)
            .unwrap();
        assert!(answer.done);
        assert_eq!(answer.finish("x").unwrap().len(), 1);
    }

    #[test]
    fn test_answer_dump_flagged_interrupted_is_an_interrupted_error() {
        let mut answer = Answer::default();
        let datagram = [eth0_reply(NLM_F_DUMP_INTR), done(0)].concat();
        answer.take("x", &datagram, 1, true).unwrap();
        assert!(answer.done);
        assert!(matches!(
            answer.finish("x"),
            Err(NetworkError::DumpInterrupted { .. })
        ));
    }

    #[test]
    fn test_answer_dump_done_with_an_error_code_is_that_error() {
        let mut answer = Answer::default();
        let err = answer
            .take("x", &[eth0_reply(0), done(-libc::EINTR)].concat(), 1, true)
            .unwrap_err();
        assert_eq!(errno_of(&err), Some(libc::EINTR));
    }

    #[test]
    fn test_dump_interrupted_twice_is_asked_again_until_whole() {
        let mut kernel = FakeKernel {
            links: vec![link(7, "eth0", false)],
            interrupted: 2,
            ..FakeKernel::default()
        };
        assert_eq!(kernel.dump_links().unwrap().len(), 1);
        assert_eq!(kernel.sent.len(), 3);
    }

    #[test]
    fn test_dump_interrupted_every_time_gives_up_with_one_error() {
        let mut kernel = FakeKernel {
            interrupted: usize::MAX,
            ..FakeKernel::default()
        };
        let err = kernel.dump_links().unwrap_err();
        assert!(matches!(err, NetworkError::DumpInterrupted { .. }));
        assert_eq!(kernel.sent.len(), DUMP_ATTEMPTS as usize);
    }

    #[test]
    fn test_choose_keeps_the_routes_the_kernel_drops_not_its_own() {
        let links = [link(7, "eth0", false)];
        let addresses = [address(7, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 24)];
        let mut prefix = RouteMessage::default();
        prefix.header.protocol = RouteProtocol::Kernel;
        prefix.attributes = vec![RouteAttribute::Oif(7)];
        let routes = [default_route(7, Ipv4Addr::new(10, 0, 0, 1)), prefix];
        let chosen = choose(&links, &addresses, &routes).unwrap().unwrap();
        assert_eq!(chosen.routes, [routes[0].clone()]);
    }
}
