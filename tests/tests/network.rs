//! Networking end to end: each test makes its own network namespace with a tap, boots a guest
//! on it (`vmm run --net`), and talks to it from inside that namespace only: ARP and ping,
//! HTTP with curl and with 100 concurrent keep-alive connections, TCP and UDP echo, floods of
//! pings and of garbage frames (the guest keeps answering, the VMM's memory stays flat), and a
//! guest that floods the tap (bounded by its rate, stopped by `--timeout`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use tests::netns::{
    FrameSender, GUEST_IP, Guest, HOST_IP, Pinger, TAP, guest_mac, in_netns, ipv4_header, mac_of,
    net_spec, tap_rx_bytes,
};
use tests::serve::Server;
use tests::{image, kvm_test, status, stderr, vmm_run};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn echo_guest() -> Guest {
    Guest::boot(
        &image("echo"),
        &net_spec(""),
        &["--timeout", "60s"],
        &[],
        "listening",
    )
}

fn httpd_guest(args: &[&str]) -> Guest {
    Guest::boot(
        &image("httpd"),
        &net_spec(""),
        &["--timeout", "60s"],
        args,
        "listening",
    )
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect_timeout(&SocketAddr::from((GUEST_IP, port)), IO_TIMEOUT)
        .expect("connect to the guest");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Sends `text` to the TCP echo service and reads it back.
fn echo_round_trip(text: &[u8]) -> Vec<u8> {
    let mut stream = connect(7);
    stream.write_all(text).unwrap();
    let mut back = vec![0u8; text.len()];
    stream.read_exact(&mut back).unwrap();
    back
}

/// One HTTP/1.1 response on a keep-alive connection: (status line, body).
fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
        assert!(head.len() < 8192, "response head too long");
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (head.lines().next().unwrap().to_owned(), body)
}

fn get(stream: &mut TcpStream, path: &str) -> (String, Vec<u8>) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: guest\r\n\r\n").unwrap();
    read_response(stream)
}

#[kvm_test]
fn test_net_guest_answers_arp_and_ping() {
    in_netns(|| {
        let guest = echo_guest();
        let pinger = Pinger::new();
        for seq in 1..=3 {
            assert!(
                pinger.ping(seq, IO_TIMEOUT),
                "echo request {seq} got no reply"
            );
        }
        let mac = guest_mac().expect("the guest answered ARP");
        assert_eq!(
            mac[0] & 0x03,
            0x02,
            "a random, locally administered MAC: {mac:02x?}"
        );
        drop(guest);
    });
}

#[kvm_test]
fn test_net_mac_given_is_the_one_the_guest_uses() {
    in_netns(|| {
        let spec = net_spec(",mac=02:12:34:56:78:9a");
        let _guest = Guest::boot(
            &image("echo"),
            &spec,
            &["--timeout", "60s"],
            &[],
            "listening",
        );
        assert!(Pinger::new().ping(1, IO_TIMEOUT));
        assert_eq!(guest_mac(), Some([0x02, 0x12, 0x34, 0x56, 0x78, 0x9a]));
    });
}

#[kvm_test]
fn test_net_echo_returns_tcp_bytes_and_udp_datagrams() {
    in_netns(|| {
        let _guest = echo_guest();
        let text: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(echo_round_trip(&text), text, "100 kB through TCP echo");
        let socket = UdpSocket::bind((HOST_IP, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut answered = false;
        for _ in 0..10 {
            socket.send_to(b"datagram", (GUEST_IP, 7)).unwrap();
            let mut buf = [0u8; 64];
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                assert_eq!((&buf[..n], from.ip()), (&b"datagram"[..], GUEST_IP.into()));
                answered = true;
                break;
            }
        }
        assert!(answered, "no UDP echo");
    });
}

#[kvm_test]
fn test_net_httpd_serves_page_and_json_to_curl() {
    in_netns(|| {
        let _guest = httpd_guest(&[]);
        let curl = |path: &str| {
            let out = std::process::Command::new("curl")
                .args(["-s", "-m", "10", "-i"])
                .arg(format!("http://{GUEST_IP}{path}"))
                .output()
                .expect("network tests use curl");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let page = curl("/");
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.contains("Hello from a flick microVM"), "{page}");
        let json = curl("/api/items/7");
        assert!(json.contains("application/json"), "{json}");
        assert!(
            json.contains(r#"{"path":"/api/items/7","count":2}"#),
            "{json}"
        );
        assert!(curl("/missing").starts_with("HTTP/1.1 404"));
    });
}

#[kvm_test]
fn test_net_httpd_100_concurrent_keep_alive_connections_all_answered() {
    in_netns(|| {
        let _guest = httpd_guest(&[]);
        const CONNECTIONS: usize = 100;
        const REQUESTS: usize = 5;
        // Every connection opens first, then each sends its requests one after another.
        let barrier = std::sync::Barrier::new(CONNECTIONS);
        let counts: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..CONNECTIONS)
                .map(|i| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let mut stream = connect(80);
                        barrier.wait();
                        (0..REQUESTS)
                            .map(|r| {
                                let path = format!("/api/c{i}/r{r}");
                                let (status, body) = get(&mut stream, &path);
                                assert_eq!(status, "HTTP/1.1 200 OK");
                                let body = String::from_utf8(body).unwrap();
                                assert!(body.contains(&format!("\"path\":\"{path}\"")), "{body}");
                                let count = body.split("\"count\":").nth(1).unwrap();
                                count.trim_end_matches(['}', '\n']).parse::<u64>().unwrap()
                            })
                            .collect()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut all: Vec<u64> = counts.into_iter().flatten().collect();
        all.sort_unstable();
        let expected: Vec<u64> = (1..=(CONNECTIONS * REQUESTS) as u64).collect();
        assert_eq!(all, expected, "every request counted exactly once");
    });
}

#[kvm_test]
fn test_net_httpd_with_request_limit_exits_zero() {
    in_netns(|| {
        let guest = httpd_guest(&["--requests", "3"]);
        let mut stream = connect(80);
        for _ in 0..3 {
            assert_eq!(get(&mut stream, "/").0, "HTTP/1.1 200 OK");
        }
        let (code, err) = guest.wait(IO_TIMEOUT);
        assert_eq!(code, Some(0), "{err}");
    });
}

#[kvm_test]
fn test_net_ping_flood_leaves_guest_answering_and_vmm_memory_flat() {
    in_netns(|| {
        let mut guest = echo_guest();
        let pinger = Pinger::new();
        assert!(pinger.ping(0, IO_TIMEOUT));
        // Warm up: the guest's buffers and the VMM's scratch are touched once.
        for seq in 1..=2000u16 {
            pinger.send(&pinger.request(seq));
        }
        pinger.replies(Duration::from_millis(500));
        let before = guest.rss_kib();
        let started = Instant::now();
        let done = std::sync::atomic::AtomicBool::new(false);
        let replies = std::thread::scope(|scope| {
            scope.spawn(|| {
                for seq in 0..100_000u32 {
                    pinger.send(&pinger.request(seq as u16));
                    if started.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let mut replies = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                replies += pinger.replies(Duration::from_millis(100)).len();
            }
            replies + pinger.replies(Duration::from_millis(500)).len()
        });
        eprintln!("ping flood: {replies} replies in {:?}", started.elapsed());
        assert!(guest.is_running(), "the VMM died under the flood");
        let after = guest.rss_kib();
        assert!(replies > 1000, "only {replies} replies to the flood");
        assert!(
            after <= before + 2048,
            "VMM memory grew from {before} KiB to {after} KiB under the flood"
        );
        assert!(pinger.ping(1, IO_TIMEOUT), "no reply after the flood");
        assert_eq!(echo_round_trip(b"still here"), b"still here");
    });
}

/// Every kind of broken frame: bad lengths, bad checksums, fragments, truncated headers,
/// random bytes.
fn garbage_frames(guest: [u8; 6], host: [u8; 6], seed: u64) -> Vec<Vec<u8>> {
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let ethernet = |ethertype: u16| {
        let mut frame = guest.to_vec();
        frame.extend_from_slice(&host);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame
    };
    let mut frames = Vec::new();
    // Runts: shorter than an Ethernet header, or a header and nothing.
    for len in [1usize, 6, 13, 14] {
        frames.push(ethernet(0x0800)[..len].to_vec());
    }
    // Jumbo frames, longer than the guest's MTU allows (the tap's MTU is raised for them).
    for len in [1515usize, 2000, 9000] {
        let mut frame = ethernet(0x0800);
        frame.resize(len, 0xab);
        frames.push(frame);
    }
    // IPv4 with a bad header checksum, TCP and UDP with bad checksums.
    for protocol in [6u8, 17, 1] {
        let mut frame = ethernet(0x0800);
        frame.extend(ipv4_header(protocol, 20, 0, true));
        frame.extend_from_slice(&[0u8; 20]);
        frames.push(frame);
        let mut frame = ethernet(0x0800);
        frame.extend(ipv4_header(protocol, 20, 0, false));
        frame.extend_from_slice(&[0x00, 0x50, 0x00, 0x50, 1, 2, 3, 4, 0, 0, 0, 0, 0x50, 0x02]);
        frame.extend_from_slice(&[0xff, 0xff, 0xde, 0xad, 0, 0]);
        frames.push(frame);
    }
    // Fragments: first, middle, last, overlapping, with offsets at the end of the range.
    for flags in [
        0x2000u16,
        0x2001,
        0x0002,
        0x2000 | 0x1fff,
        0x1fff,
        0x4000 | 0x0010,
    ] {
        let mut frame = ethernet(0x0800);
        frame.extend(ipv4_header(17, 32, flags, false));
        frame.extend((0..32).map(|_| next() as u8));
        frames.push(frame);
    }
    // Headers that lie: IHL below 5, above the length, total length beyond the frame.
    for (byte0, total) in [(0x44u8, 40u16), (0x4f, 40), (0x45, 1400), (0x45, 3)] {
        let mut frame = ethernet(0x0800);
        let mut header = ipv4_header(6, 20, 0, false);
        header[0] = byte0;
        header[2..4].copy_from_slice(&total.to_be_bytes());
        frame.extend(header);
        frame.extend_from_slice(&[0u8; 20]);
        frames.push(frame);
    }
    // Broken ARP, unknown ethertypes, and random bytes of random lengths.
    for ethertype in [0x0806u16, 0x86dd, 0x88cc, 0x1234] {
        let mut frame = ethernet(ethertype);
        frame.extend((0..(next() % 64)).map(|_| next() as u8));
        frames.push(frame);
    }
    for _ in 0..64 {
        let len = 14 + (next() % 1500) as usize;
        let mut frame = ethernet(if next() % 2 == 0 { 0x0800 } else { 0x0806 });
        frame.extend((14..len).map(|_| next() as u8));
        frames.push(frame);
    }
    frames
}

#[kvm_test]
fn test_net_garbage_frames_leave_guest_answering_and_vmm_memory_flat() {
    in_netns(|| {
        let mut guest = echo_guest();
        let pinger = Pinger::new();
        assert!(pinger.ping(0, IO_TIMEOUT));
        let guest_mac = guest_mac().expect("ARP");
        let host_mac = mac_of(TAP);
        // Frames up to 9000 bytes may leave the host towards the guest.
        let out = std::process::Command::new("ip")
            .args(["link", "set", TAP, "mtu", "9000"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let sender = FrameSender::new();
        let frames = garbage_frames(guest_mac, host_mac, 0x9e37_79b9_7f4a_7c15);
        let before = guest.rss_kib();
        let mut sent = 0;
        let started = Instant::now();
        for round in 0..200 {
            for frame in &frames {
                if sender.send(frame) {
                    sent += 1;
                }
            }
            if round % 20 == 0 {
                // Let the guest catch up now and then, so that most frames reach it.
                std::thread::sleep(Duration::from_millis(5));
            }
            if started.elapsed() > Duration::from_secs(20) {
                break;
            }
        }
        assert!(sent > 10_000, "only {sent} garbage frames could be sent");
        assert!(guest.is_running(), "the VMM died on garbage");
        assert!(pinger.ping(1, IO_TIMEOUT), "no reply after the garbage");
        assert_eq!(echo_round_trip(b"after garbage"), b"after garbage");
        let after = guest.rss_kib();
        assert!(
            after <= before + 2048,
            "VMM memory grew from {before} KiB to {after} KiB on garbage"
        );
    });
}

/// Bytes the guest sent through the tap while `netflood` ran for `timeout` at `rate`.
fn flood_bytes(rate: &str, timeout: &str) -> (u64, Option<i32>, Duration) {
    let before = tap_rx_bytes();
    let started = Instant::now();
    let guest = Guest::boot(
        &image("netflood"),
        &net_spec(&format!(",tx-rate={rate}")),
        &["--timeout", timeout],
        &[],
        "flooding",
    );
    let (code, _) = guest.wait(Duration::from_secs(30));
    (tap_rx_bytes() - before, code, started.elapsed())
}

#[kvm_test]
fn test_net_guest_flooding_the_tap_is_rate_limited_and_timeout_stops_it() {
    in_netns(|| {
        let (limited, code, took) = flood_bytes("256K", "2s");
        assert_eq!(code, Some(124), "--timeout stops the flooding guest");
        assert!(took < Duration::from_secs(10), "stopping took {took:?}");
        // 2 s at 256 KiB/s plus the bucket's burst (a tenth of a second), and ARP.
        let allowed = 2 * 256 * 1024 + 256 * 1024 / 10 + 16 * 1024;
        assert!(
            limited <= allowed,
            "{limited} bytes passed a limit of {allowed}"
        );
        assert!(
            limited > 64 * 1024,
            "the guest barely sent: {limited} bytes"
        );
        let (unlimited, code, _) = flood_bytes("1G", "2s");
        assert_eq!(code, Some(124));
        assert!(
            unlimited > 4 * limited,
            "without the limit the guest sends far more ({unlimited} vs {limited} bytes)"
        );
    });
}

#[kvm_test]
fn test_net_missing_tap_is_a_one_line_error() {
    in_netns(|| {
        let spec = format!("tap=nosuchtap,ip={GUEST_IP}/24");
        let out = vmm_run(&image("echo"), &["--net", &spec], &[]);
        assert_eq!(status(&out), 125);
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("no interface named 'nosuchtap'"), "{err}");
    });
}

#[test]
fn test_net_bad_spec_is_refused_before_boot() {
    let out = vmm_run(&image("echo"), &["--net", "tap=t0,ip=10.0.0.2"], &[]);
    assert_eq!(status(&out), 125);
    assert!(stderr(&out).contains("ADDRESS/PREFIX"), "{}", stderr(&out));
}

#[kvm_test]
fn test_net_image_without_net_device_says_so() {
    let out = vmm_run(&image("echo"), &["--timeout", "10s"], &[]);
    assert_eq!(status(&out), 1);
    assert!(
        stderr(&out).contains("no network device"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn test_net_seccomp_list_names_the_tap_calls() {
    let out = tests::vmm(&["seccomp-list"]);
    let text = tests::stdout(&out);
    for call in ["read", "write", "ppoll"] {
        let tap = text
            .lines()
            .any(|l| l.starts_with(&format!("{call} ")) && l.contains("tap"));
        assert!(tap, "no {call} line for the tap: {text}");
    }
}

#[kvm_test]
fn test_net_httpd_restored_from_a_snapshot_serves() {
    let dir = tests::scratch_dir("net-snapshot");
    let snapshot = dir.join("httpd.snap");
    tests::snapshot_image("httpd", &snapshot);
    in_netns(|| {
        let _guest = Guest::boot(
            &snapshot,
            &net_spec(""),
            &["--timeout", "60s"],
            &[],
            "listening",
        );
        let mut stream = connect(80);
        let (status, body) = get(&mut stream, "/api/restored");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(String::from_utf8_lossy(&body).contains("\"count\":1"));
    });
}

/// A `vmm serve` inside the test's namespace, killed when dropped.
/// `vmm serve` with `flags` on a socket in `test`'s scratch directory, listening.
fn net_server(test: &str, flags: &[&str]) -> Server {
    let socket = tests::scratch_dir(test).join("flick.sock");
    let mut cmd = std::process::Command::new(tests::vmm_bin());
    cmd.args(["serve", "--socket", socket.to_str().unwrap()])
        .args(flags);
    Server::spawn(cmd, &socket)
}

#[kvm_test]
fn test_net_serve_request_gets_the_allowed_tap_and_releases_it_after() {
    let snapshot = tests::scratch_dir("net-serve-snapshot").join("httpd.snap");
    tests::snapshot_image("httpd", &snapshot);
    in_netns(|| {
        let server = net_server(
            "net-serve",
            &[
                "--allow-tap",
                "tap*",
                "--workers",
                "1",
                "--pool",
                "1",
                "--snapshot",
                snapshot.to_str().unwrap(),
            ],
        );
        // Requests in turn on the same tap (each one's tap is detached after its reply): an
        // image booted cold, then the snapshot from the pool.
        for (round, target) in [(1, image("httpd")), (2, snapshot.clone())] {
            let guest = Guest::boot(
                &target,
                &net_spec(""),
                &["--via", server.socket_str(), "--timeout", "30s"],
                &["--requests", "1"],
                "listening",
            );
            let mut stream = connect(80);
            let (status, body) = get(&mut stream, &format!("/api/round{round}"));
            assert_eq!(status, "HTTP/1.1 200 OK");
            assert!(
                String::from_utf8_lossy(&body).contains(&format!("/api/round{round}")),
                "{}",
                String::from_utf8_lossy(&body)
            );
            let (code, text) = guest.wait(Duration::from_secs(20));
            assert_eq!(code, Some(0), "round {round}: {text}");
        }
    });
}

#[kvm_test]
fn test_net_serve_request_for_a_tap_outside_allow_tap_or_with_a_mac_is_refused() {
    in_netns(|| {
        let server = net_server("net-serve-refused", &["--allow-tap", "fl*"]);
        let refused = |net: &str, why: &str| {
            let out = tests::vmm(&[
                "run",
                "--via",
                server.socket_str(),
                image("httpd").to_str().unwrap(),
                "--net",
                net,
            ]);
            assert_eq!(status(&out), 125, "{net}");
            assert!(stderr(&out).contains(why), "{net}: {}", stderr(&out));
        };
        refused(
            &net_spec(""),
            "tap 'tap0' is not one this server may attach",
        );
        // Within the patterns, but with a MAC of the client's choosing (one that could be
        // another guest's): refused before any tap is touched.
        refused(
            "tap=fl0,ip=10.0.0.2/24,mac=02:12:34:56:78:9a",
            "this server chooses its guests' MAC addresses",
        );
        // Nothing holds the tap: a local run attaches it at once.
        let guest = httpd_guest(&["--requests", "1"]);
        let mut stream = connect(80);
        assert_eq!(get(&mut stream, "/").0, "HTTP/1.1 200 OK");
        assert_eq!(guest.wait(Duration::from_secs(20)).0, Some(0));
    });
}

/// `GET path` from the guest at `ip`, retrying the connection (the guest may still be
/// booting) for up to 20 s.
fn get_from(ip: std::net::Ipv4Addr, path: &str) -> (String, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect_timeout(&SocketAddr::from((ip, 80)), Duration::from_secs(1)) {
            Ok(mut stream) => {
                stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                return get(&mut stream, path);
            }
            Err(err) if Instant::now() > deadline => panic!("{ip} never answered: {err}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[kvm_test]
fn test_net_fleet_manifest_gives_each_entry_its_own_network() {
    let dir = tests::scratch_dir("net-fleet-manifest");
    let httpd = image("httpd");
    let manifest = dir.join("fleet.toml");
    let entry = |name: &str, net: &str| {
        format!(
            "[[vm]]\nname = \"{name}\"\nimage = \"{}\"\nargs = [\"--requests\", \"1\"]\n\
             timeout = \"30s\"\nnet = \"{net}\"\n",
            httpd.display()
        )
    };
    let text = entry("a", &format!("tap=tap{{i}},ip={GUEST_IP}/24,gw={HOST_IP}"))
        + &entry("b", "tap=grpb{i},ip=10.99.1.2/24");
    std::fs::write(&manifest, text).unwrap();
    in_netns(|| {
        for args in [
            &["tuntap", "add", "dev", "grpb0", "mode", "tap"][..],
            &["addr", "add", "10.99.1.1/24", "dev", "grpb0"],
            &["link", "set", "grpb0", "up"],
        ] {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "ip {args:?}");
        }
        // Killed if a request below fails: the fleet's httpd guests would otherwise serve on.
        let fleet = tests::KillOnDrop::new(
            std::process::Command::new(tests::vmm_bin())
                .args(["fleet", "--manifest", manifest.to_str().unwrap(), "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let (status_a, body_a) = get_from(GUEST_IP, "/api/a");
        let (status_b, body_b) = get_from(std::net::Ipv4Addr::new(10, 99, 1, 2), "/api/b");
        let out = fleet.wait_within(Duration::from_secs(60));
        assert_eq!(status_a, "HTTP/1.1 200 OK");
        assert_eq!(status_b, "HTTP/1.1 200 OK");
        assert!(String::from_utf8_lossy(&body_a).contains("/api/a"));
        assert!(String::from_utf8_lossy(&body_b).contains("/api/b"));
        assert_eq!(status(&out), 0, "{}", stderr(&out));
        let report = tests::stdout(&out);
        assert_eq!(
            report.matches("\"status\": 0").count() + report.matches("\"status\":0").count(),
            2,
            "{report}"
        );
    });
}

/// `/dev/net/tun`, opened as the OCI runtime opens it before making its tap.
fn open_tun() -> std::os::fd::OwnedFd {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun")
        .into()
}

/// Whether the calling thread's namespace has a link named `name`.
fn link_exists(name: &str) -> bool {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name; no other effect.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

#[test]
fn test_tap_create_on_a_new_name_makes_a_tap_that_goes_with_its_descriptor() {
    in_netns(|| {
        let tap = vmm::net::Tap::create_on(open_tun(), "fltest0").unwrap();
        assert_eq!(tap.name(), "fltest0");
        assert!(link_exists("fltest0"));
        drop(tap);
        assert!(!link_exists("fltest0"), "the tap outlived its descriptor");
    });
}

#[test]
fn test_tap_create_on_the_name_of_a_link_that_is_not_a_tap_says_so() {
    in_netns(|| {
        let made = std::process::Command::new("ip")
            .args(["tuntap", "add", "dev", "fltest1", "mode", "tun"])
            .status()
            .expect("run ip");
        assert!(made.success(), "ip tuntap add: {made:?}");
        let err = vmm::net::Tap::create_on(open_tun(), "fltest1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot make the tap fltest1 (a link of that name exists and is not a tap)"
        );
    });
}
