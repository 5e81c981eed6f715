//! Network tests' private world: a thread that enters a network namespace of its own (with
//! `lo` up and a tap `tap0` holding the host-side address), guests booted on that tap, and
//! clients that talk to them from inside the namespace only (raw ICMP, raw Ethernet frames,
//! TCP, `curl`). Nothing here can reach an address outside the namespace.

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The tap inside every test namespace.
pub const TAP: &str = "tap0";
/// The host side's address on the tap.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// The guest's address.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

/// The `--net` value for a guest on the namespace's tap.
pub fn net_spec(extra: &str) -> String {
    format!("tap={TAP},ip={GUEST_IP}/24,gw={HOST_IP}{extra}")
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("network tests need iproute2's `ip` command: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `test` on a thread inside a new network namespace with `lo` up and `tap0` up at
/// 10.99.0.1/24; the namespace disappears with the thread (and the processes it started).
///
/// Panics with the reason when a namespace cannot be made (the tests need root).
pub fn in_netns<T: Send>(test: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare only changes this thread's namespaces.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    panic!(
                        "network tests need root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to make a \
                         private network namespace: unshare(CLONE_NEWNET): {}",
                        std::io::Error::last_os_error()
                    );
                }
                ip(&["link", "set", "lo", "up"]);
                ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
                ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
                ip(&["link", "set", TAP, "up"]);
                test()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A `vmm run` of a network image, killed when dropped.
pub struct Guest {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Guest {
    /// Boots `image` with `--net SPEC` and `flags`, and waits (at most 20 s) until it prints a
    /// line containing `ready` on stdout.
    pub fn boot(image: &Path, spec: &str, flags: &[&str], args: &[&str], ready: &str) -> Guest {
        let mut child = Command::new(crate::vmm_bin())
            .arg("run")
            .arg(image)
            .args(["--net", spec])
            .args(flags)
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start vmm");
        let (lines_tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, stderr) = mpsc::channel();
        let mut err_pipe = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err_pipe.read_to_string(&mut text);
            let _ = err_tx.send(text);
        });
        let mut guest = Guest { child, stderr };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(ready) => break,
                Ok(_) => {}
                Err(_) => {
                    let status = guest.child.try_wait().ok().flatten();
                    let _ = guest.child.kill();
                    let _ = guest.child.wait();
                    let text = guest.stderr.recv_timeout(Duration::from_secs(5));
                    panic!("guest never printed '{ready}' (status {status:?}); stderr: {text:?}");
                }
            }
        }
        // Keep draining stdout so that the guest never blocks on a full pipe.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        guest
    }

    /// The VMM's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The VMM's resident memory in KiB (guest RAM it has touched included).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the VMM is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Whether the VMM still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (at most `limit`) for the VMM to exit; its status and stderr.
    pub fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let text = self
                    .stderr
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_default();
                return (status.code(), text);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (
            None,
            self.stderr
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default(),
        )
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes the tap has received: what the guest sent (`/proc/thread-self/net/dev`: this
/// thread's namespace, where `/proc/net` and `/sys/class/net` show the process's).
pub fn tap_rx_bytes() -> u64 {
    let table = std::fs::read_to_string("/proc/thread-self/net/dev").expect("net/dev");
    table
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(&format!("{TAP}:")))
        .and_then(|fields| fields.split_whitespace().next())
        .and_then(|bytes| bytes.parse().ok())
        .expect("the tap's counters")
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A raw ICMP socket for echo requests to the guest.
pub struct Pinger {
    fd: OwnedFd,
    ident: u16,
}

impl Pinger {
    /// A raw ICMP socket (root only).
    pub fn new() -> Pinger {
        // SAFETY: socket returns a new fd or -1.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(
            raw >= 0,
            "raw ICMP socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Pinger {
            fd,
            ident: (std::process::id() & 0xffff) as u16,
        }
    }

    /// The echo request with sequence number `seq`.
    pub fn request(&self, seq: u16) -> Vec<u8> {
        let mut packet = vec![8u8, 0, 0, 0];
        packet.extend_from_slice(&self.ident.to_be_bytes());
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend((0..56u8).map(|i| i ^ 0x5a));
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
        packet
    }

    /// Sends `packet` to the guest without waiting; false if the host dropped it.
    pub fn send(&self, packet: &[u8]) -> bool {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(GUEST_IP).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: our buffer and a live sockaddr_in of the size given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                libc::MSG_DONTWAIT,
                (&addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        n == packet.len() as isize
    }

    /// Receives echo replies from the guest until `limit` passes; the sequence numbers.
    pub fn replies(&self, limit: Duration) -> Vec<u16> {
        let deadline = Instant::now() + limit;
        let mut seqs = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return seqs;
            }
            let mut pollfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            let ready = unsafe { libc::poll(&mut pollfd, 1, left.as_millis().max(1) as i32) };
            if ready <= 0 {
                continue;
            }
            // SAFETY: reads into our own buffer.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let Ok(n) = usize::try_from(n) else { continue };
            let packet = &buf[..n];
            let header = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
            let from = packet
                .get(12..16)
                .map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]));
            let Some(icmp) = packet.get(header..) else {
                continue;
            };
            if from == Some(GUEST_IP)
                && icmp.len() >= 8
                && icmp[0] == 0
                && u16::from_be_bytes([icmp[4], icmp[5]]) == self.ident
            {
                seqs.push(u16::from_be_bytes([icmp[6], icmp[7]]));
            }
        }
    }

    /// One echo request; whether its reply came within `limit`.
    pub fn ping(&self, seq: u16, limit: Duration) -> bool {
        let request = self.request(seq);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.send(&request) && self.replies(Duration::from_millis(200)).contains(&seq) {
                return true;
            }
        }
        false
    }
}

impl Default for Pinger {
    fn default() -> Self {
        Self::new()
    }
}

/// A raw Ethernet socket on the tap: frames sent here go to the guest as they are.
pub struct FrameSender {
    fd: OwnedFd,
    ifindex: i32,
}

impl FrameSender {
    /// An `AF_PACKET` socket bound to the tap (root only).
    pub fn new() -> FrameSender {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket returns a new fd or -1.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        assert!(
            raw >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = std::ffi::CString::new(TAP).unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        assert!(ifindex > 0, "no {TAP}");
        FrameSender { fd, ifindex }
    }

    /// Sends one frame (whatever its content); false if the host refused it.
    pub fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: a zeroed sockaddr_ll is valid; we fill the fields that matter.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        // SAFETY: our buffer and a live sockaddr_ll of the size given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        n == frame.len() as isize
    }
}

impl Default for FrameSender {
    fn default() -> Self {
        Self::new()
    }
}

/// The MAC address of interface `name` in this thread's namespace.
pub fn mac_of(name: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-br", "link", "show", "dev", name])
        .output()
        .expect("ip");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_mac(
        text.split_whitespace()
            .nth(2)
            .expect("ip -br link: NAME STATE MAC"),
    )
}

/// The guest's MAC address, as this namespace's ARP table learned it.
pub fn guest_mac() -> Option<[u8; 6]> {
    let table = std::fs::read_to_string("/proc/thread-self/net/arp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.first() == Some(&GUEST_IP.to_string().as_str())
            && fields.get(3) != Some(&"00:00:00:00:00:00"))
        .then(|| parse_mac(fields[3]))
    })
}

fn parse_mac(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("hex");
    }
    mac
}

/// An IPv4 header (20 bytes) with a correct checksum unless `bad_checksum`.
pub fn ipv4_header(
    protocol: u8,
    payload_len: usize,
    flags_fragment: u16,
    bad_checksum: bool,
) -> Vec<u8> {
    let total = (20 + payload_len) as u16;
    let mut header = vec![0x45, 0];
    header.extend_from_slice(&total.to_be_bytes());
    header.extend_from_slice(&0x1234u16.to_be_bytes());
    header.extend_from_slice(&flags_fragment.to_be_bytes());
    header.extend_from_slice(&[64, protocol, 0, 0]);
    header.extend_from_slice(&HOST_IP.octets());
    header.extend_from_slice(&GUEST_IP.octets());
    let mut sum = checksum(&header);
    if bad_checksum {
        sum ^= 0x5555;
    }
    header[10..12].copy_from_slice(&sum.to_be_bytes());
    header
}
