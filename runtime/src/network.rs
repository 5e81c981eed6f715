//! The container's network, given to its guest: a tap made inside the container's network
//! namespace and joined to the namespace's interface by two tc `mirred` redirects, as urunc
//! and Kata do, so that whatever reaches the container's address (Docker's published ports,
//! a CNI plugin's routes) reaches the guest unchanged.
//!
//! In the container process, after `start` (Docker configures the interface between `create`
//! and `start`; a CNI plugin before `create`), while it still holds `CAP_NET_ADMIN`:
//! 1. [`Interface::find`] dumps links, addresses and routes over rtnetlink: the interface is
//!    the one that is not loopback and has an IPv4 address (the one with the default route
//!    if several have). None: the container has no network (`--network none`) and the guest
//!    gets no network device.
//! 2. [`connect_guest`] makes the tap (`TUNSETIFF` on `/dev/net/tun`, opened before the
//!    pivot; the tap lives as long as the VMM holds it), gives it the interface's MTU and
//!    brings it up, takes every address off the interface (so that the kernel neither answers
//!    ARP for the guest's address nor takes its TCP segments), and adds an ingress qdisc and a
//!    `u32` filter matching every frame to each side: frames arriving on the interface leave through the tap
//!    (to the guest), frames the guest writes to the tap leave through the interface.
//! 3. The guest gets the interface's MAC address, address, prefix and gateway
//!    ([`vmm::net::NetSpec::with_tap`]).
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
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// The tap's name in the container's namespace.
pub const TAP_NAME: &str = "flick0";

/// `ETH_P_ALL` in network byte order, as a filter's protocol.
const ALL_PROTOCOLS: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;
/// The filters' priority.
const FILTER_PRIORITY: u32 = 1;
/// How long the kernel may take to answer one request (it answers at once; this only keeps
/// a bug from hanging the container).
const NETLINK_TIMEOUT_SECS: libc::time_t = 5;
/// The largest reply datagram read at once.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// Errors connecting the guest to the container's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A netlink request failed.
    #[error("cannot {what}")]
    Netlink {
        /// What was asked.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
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
    /// The tap could not be made.
    #[error("cannot make the tap {TAP_NAME}")]
    MakeTap(#[source] std::io::Error),
    /// The tap is unusable for the VMM.
    #[error("the tap {TAP_NAME} is unusable")]
    Tap(#[source] vmm::net::NetError),
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
}

/// The container's interface, as the namespace's configuration left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
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
}

impl Interface {
    /// The namespace's interface, or `None` when it has none with an IPv4 address.
    pub fn find(netlink: &mut Netlink) -> Result<Option<Interface>, NetworkError> {
        let links = netlink.dump_links()?;
        let addresses = netlink.dump_addresses()?;
        let routes = netlink.dump_routes()?;
        Ok(choose(&links, &addresses, &routes))
    }
}

/// Picks the interface from dumps of links, addresses and routes (see the module's docs).
fn choose(
    links: &[LinkMessage],
    addresses: &[AddressMessage],
    routes: &[RouteMessage],
) -> Option<Interface> {
    let ipv4_of = |index: u32| {
        addresses.iter().find_map(|a| {
            (a.header.index == index && a.header.family == AddressFamily::Inet)
                .then(|| address_of(a).map(|ip| (ip, a.header.prefix_len)))
                .flatten()
        })
    };
    let default_via = |index: u32| {
        routes.iter().find_map(|r| {
            let is_default = r.header.address_family == AddressFamily::Inet
                && r.header.destination_prefix_length == 0
                && r.header.table == RouteHeader::RT_TABLE_MAIN;
            let oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            let gateway = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(*gw),
                _ => None,
            });
            (is_default && oif == Some(index))
                .then_some(gateway)
                .flatten()
        })
    };
    let candidates: Vec<&LinkMessage> = links
        .iter()
        .filter(|l| !l.header.flags.contains(LinkFlags::Loopback))
        .filter(|l| ipv4_of(l.header.index).is_some())
        .collect();
    let link = candidates
        .iter()
        .find(|l| default_via(l.header.index).is_some())
        .or_else(|| candidates.first())?;
    let index = link.header.index;
    let (ip, prefix_len) = ipv4_of(index)?;
    let mut name = None;
    let mut mac = None;
    let mut mtu = 1500;
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    Some(Interface {
        name: name.unwrap_or_else(|| format!("#{index}")),
        index,
        mac: mac?,
        mtu,
        ip,
        prefix_len,
        gateway: default_via(index),
        addresses: addresses
            .iter()
            .filter(|a| a.header.index == index)
            .cloned()
            .collect(),
    })
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    /// The calling thread's network namespace; `None` if `/proc` cannot tell.
    pub fn current() -> Option<NetnsId> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/thread-self/ns/net")
            .ok()
            .map(|m| NetnsId {
                dev: m.dev(),
                ino: m.ino(),
            })
    }
}

/// Connects a guest to the container's network: the tap made with `tun`, mirrored to the
/// namespace's interface; `None` when the namespace has no interface to give (then `tun`
/// is not needed, and its failure to open does not matter).
pub fn connect_guest(
    tun: Result<OwnedFd, NetworkError>,
) -> Result<Option<vmm::net::NetConfig>, NetworkError> {
    let mut netlink = Netlink::open()?;
    let Some(interface) = Interface::find(&mut netlink)? else {
        return Ok(None);
    };
    if interface.mtu < vmm::net::MTU {
        return Err(NetworkError::SmallMtu {
            name: interface.name,
            mtu: interface.mtu,
            wanted: vmm::net::MTU,
        });
    }
    let tap = make_tap(tun?)?;
    let tap_index = netlink.index_of(TAP_NAME)?;
    netlink.set_up(tap_index, interface.mtu)?;
    // The redirects first: if one fails (an ingress qdisc already there), the interface keeps
    // its addresses and the namespace is as it was, but for the tap.
    netlink.redirect(interface.index, tap_index, &interface.name)?;
    netlink.redirect(tap_index, interface.index, TAP_NAME)?;
    for address in &interface.addresses {
        netlink.delete_address(address, &interface.name)?;
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

/// Whether `path` names a namespace through a process (`/proc/PID/ns/net`, or `/proc/self`,
/// `/proc/thread-self`): a namespace that process lives in, not one made for this container.
pub fn is_another_process_namespace(path: &std::path::Path) -> bool {
    path.starts_with("/proc")
}

/// Opens `/dev/net/tun` (before the pivot: the container's `/dev` holds only `/dev/kvm`).
pub fn open_tun() -> Result<OwnedFd, NetworkError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map(OwnedFd::from)
        .map_err(NetworkError::Tun)
}

/// Makes the tap [`TAP_NAME`] on `tun` (a frame device without packet information; it goes
/// away when the last descriptor of it closes).
fn make_tap(tun: OwnedFd) -> Result<vmm::net::Tap, NetworkError> {
    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(TAP_NAME.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads a live `ifreq` on a tun fd we own.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &request) } < 0 {
        return Err(NetworkError::MakeTap(std::io::Error::last_os_error()));
    }
    vmm::net::Tap::from_fd(tun).map_err(NetworkError::Tap)
}

/// A blocking rtnetlink socket in the calling thread's network namespace.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Netlink {
    /// Opens the socket.
    pub fn open() -> Result<Netlink, NetworkError> {
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

    /// Sends `message` with `flags` and collects the answer: the messages of a dump (until
    /// `NLMSG_DONE`), or nothing for an acknowledged change.
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
        let mut answer = Vec::new();
        loop {
            let size = self
                .socket
                .recv(&mut &mut self.buffer[..], 0)
                .map_err(failed)?;
            let mut offset = 0;
            while offset < size {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buffer[offset..size])
                        .map_err(|source| NetworkError::Decode {
                            what: what.to_owned(),
                            source,
                        })?;
                let length = reply.header.length as usize;
                let ours = reply.header.sequence_number == self.sequence;
                match reply.payload {
                    _ if !ours => {}
                    NetlinkPayload::Done(_) => return Ok(answer),
                    NetlinkPayload::Error(error) => match error.code {
                        Some(code) => {
                            return Err(failed(std::io::Error::from_raw_os_error(-code.get())));
                        }
                        None if !dump => return Ok(answer),
                        None => {}
                    },
                    NetlinkPayload::InnerMessage(inner) => answer.push(inner),
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }

    fn dump_links(&mut self) -> Result<Vec<LinkMessage>, NetworkError> {
        let answer = self.request(
            "list the container's interfaces",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .collect())
    }

    fn dump_addresses(&mut self) -> Result<Vec<AddressMessage>, NetworkError> {
        let answer = self.request(
            "list the container's addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(address) => Some(address),
                _ => None,
            })
            .collect())
    }

    fn dump_routes(&mut self) -> Result<Vec<RouteMessage>, NetworkError> {
        let mut query = RouteMessage::default();
        query.header.address_family = AddressFamily::Inet;
        let answer = self.request(
            "list the container's routes",
            RouteNetlinkMessage::GetRoute(query),
            NLM_F_DUMP,
        )?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(route) => Some(route),
                _ => None,
            })
            .collect())
    }

    /// The index of interface `name`.
    fn index_of(&mut self, name: &str) -> Result<u32, NetworkError> {
        let mut query = LinkMessage::default();
        query
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        let answer = self.request(
            &format!("find the interface {name}"),
            RouteNetlinkMessage::GetLink(query),
            0,
        )?;
        answer
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                _ => None,
            })
            .ok_or_else(|| NetworkError::Netlink {
                what: format!("find the interface {name}"),
                source: std::io::ErrorKind::NotFound.into(),
            })
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

    /// Redirects every frame arriving on interface `from` (`name`) out of interface `to`: an
    /// ingress qdisc on `from` and a `u32` filter matching everything, with a `mirred` egress
    /// redirect (`tc filter add dev FROM parent ffff: protocol all u32 match u32 0 0 action
    /// mirred egress redirect dev TO`).
    fn redirect(&mut self, from: u32, to: u32, name: &str) -> Result<(), NetworkError> {
        let index = i32::try_from(from).map_err(|_| NetworkError::Netlink {
            what: format!("redirect {name}"),
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
        let mut qdisc = TcMessage::with_index(index);
        qdisc.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        qdisc.header.parent = TcHandle::INGRESS;
        qdisc
            .attributes
            .push(TcAttribute::Kind("ingress".to_owned()));
        self.request(
            &format!("add an ingress qdisc to {name}"),
            RouteNetlinkMessage::NewQueueDiscipline(qdisc),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        let mut filter = TcMessage::with_index(index);
        filter.header.parent = TcHandle {
            major: 0xffff,
            minor: 0,
        };
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

    fn default_route(index: u32, gateway: Ipv4Addr) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.table = RouteHeader::RT_TABLE_MAIN;
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
        let chosen = choose(&links, &addresses, &routes).unwrap();
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
        assert_eq!(choose(&links, &addresses, &[]), None);
    }

    #[test]
    fn test_choose_interface_without_ipv4_is_passed_over() {
        let links = [link(1, "lo", true), link(2, "eth0", false)];
        let addresses = [address(2, "fe80::1".parse().unwrap(), 64)];
        assert_eq!(choose(&links, &addresses, &[]), None);
    }

    #[test]
    fn test_choose_prefers_the_interface_with_the_default_route() {
        let links = [link(2, "eth0", false), link(3, "eth1", false)];
        let addresses = [
            address(2, IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)), 24),
            address(3, IpAddr::V4(Ipv4Addr::new(10, 2, 0, 2)), 24),
        ];
        let routes = [default_route(3, Ipv4Addr::new(10, 2, 0, 1))];
        let chosen = choose(&links, &addresses, &routes).unwrap();
        assert_eq!(chosen.name, "eth1");
        let without_route = choose(&links, &addresses, &[]).unwrap();
        assert_eq!(
            (without_route.name.as_str(), without_route.gateway),
            ("eth0", None)
        );
    }

    #[test]
    fn test_mirror_to_is_an_egress_redirect_that_steals() {
        let mirror = mirror_to(9);
        assert_eq!(mirror.eaction, TcMirrorActionType::EgressRedir);
        assert_eq!(mirror.generic.action, TcActionType::Stolen);
        assert_eq!(mirror.ifindex, 9);
    }
}
