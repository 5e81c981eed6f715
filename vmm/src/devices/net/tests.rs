//! The network device against a datagram socketpair standing in for the tap: every request
//! it accepts and every one it refuses, without KVM.

use super::*;
use crate::devices::Stream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

struct NoConsole;

impl ConsoleSink for NoConsole {
    fn emit(&mut self, _: Stream, _: &[u8]) -> Result<(), DeviceStop> {
        Ok(())
    }
}

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];
const TX_AT: u64 = 0x1000;
const RX_AT: u64 = 0x2000;
const REQUEST_AT: u64 = 0x3000;
const FRAMES_AT: u64 = 0x10000;

/// A device over one end of a socketpair; the other end plays the host side of the tap.
fn device_with_rate(tx_rate: u64) -> (NetDevice, OwnedFd, GuestRam) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new fds into our array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: both fds are new and owned by nothing else.
    let (ours, host) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let config = NetConfig {
        tap: Arc::new(Tap::fake(ours)),
        mac: MAC,
        ip: Ipv4Addr::new(10, 0, 0, 2),
        prefix_len: 24,
        gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
        tx_rate,
    };
    (
        NetDevice::new(config),
        host,
        GuestRam::new(1 << 20).unwrap(),
    )
}

fn device() -> (NetDevice, OwnedFd, GuestRam) {
    device_with_rate(1 << 30)
}

fn frame_from(src: [u8; 6], len: usize, fill: u8) -> Vec<u8> {
    let mut frame = vec![fill; len];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&src);
    frame
}

fn call(dev: &mut NetDevice, ram: &GuestRam, port: u16, addr: u64) -> Result<(), DeviceStop> {
    call_with_deadline(dev, ram, port, addr, None)
}

fn call_with_deadline(
    dev: &mut NetDevice,
    ram: &GuestRam,
    port: u16,
    addr: u64,
    deadline: Option<Instant>,
) -> Result<(), DeviceStop> {
    let mut ctx = DeviceContext {
        ram,
        console: &mut NoConsole,
        deadline,
    };
    dev.write(port - PORTS.start, &(addr as u32).to_le_bytes(), &mut ctx)
}

/// Puts `frames` at FRAMES_AT.. with their descriptors at TX_AT, and `rx` receive buffers of
/// `cap` bytes after them; writes the request.
fn request(ram: &GuestRam, frames: &[Vec<u8>], rx: u32, cap: u32, wait_ns: u64) {
    let mut at = FRAMES_AT;
    for (i, frame) in frames.iter().enumerate() {
        ram.write(at, frame).unwrap();
        let desc = NetFrame {
            buf: at,
            len: frame.len() as u32,
            cap: 0,
        };
        ram.write_obj(TX_AT + 16 * i as u64, desc).unwrap();
        at += 2048;
    }
    for i in 0..u64::from(rx) {
        let desc = NetFrame {
            buf: at + i * 2048,
            len: 0,
            cap,
        };
        ram.write_obj(RX_AT + 16 * i, desc).unwrap();
    }
    let ex = NetExchange {
        tx: TX_AT,
        rx: RX_AT,
        tx_count: frames.len() as u32,
        rx_count: rx,
        wait_ns,
        received: 0,
        dropped: 0,
    };
    ram.write_obj(REQUEST_AT, ex).unwrap();
}

fn host_recv(host: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let n = super::read_frame(host.as_raw_fd(), &mut buf)?;
    buf.truncate(n);
    Some(buf)
}

fn host_send(host: &OwnedFd, frame: &[u8]) {
    assert!(super::write_frame(host.as_raw_fd(), frame));
}

fn result(ram: &GuestRam) -> NetExchange {
    ram.read_obj(REQUEST_AT).unwrap()
}

fn is_bad_request(result: Result<(), DeviceStop>) -> bool {
    matches!(result, Err(DeviceStop::BadRequest { .. }))
}

#[test]
fn test_net_info_reports_address_gateway_and_mtu() {
    let (mut dev, _host, ram) = device();
    call(&mut dev, &ram, abi::port::NET_INFO, 0x1000).unwrap();
    let info: NetInfo = ram.read_obj(0x1000).unwrap();
    assert_eq!(info.mac, MAC);
    assert_eq!((info.ipv4, info.prefix_len), ([10, 0, 0, 2], 24));
    assert_eq!(info.gateway, [10, 0, 0, 1]);
    assert_eq!(info.flags & net_flags::GATEWAY, net_flags::GATEWAY);
    assert_eq!((info.mtu, info.max_batch), (1500, NET_BATCH_MAX));
}

#[test]
fn test_net_info_outside_ram_is_refused() {
    let (mut dev, _host, ram) = device();
    assert!(is_bad_request(call(
        &mut dev,
        &ram,
        abi::port::NET_INFO,
        (1 << 20) - 8
    )));
}

#[test]
fn test_net_narrow_write_is_refused() {
    let (mut dev, _host, ram) = device();
    let mut ctx = DeviceContext {
        ram: &ram,
        console: &mut NoConsole,
        deadline: None,
    };
    assert!(is_bad_request(dev.write(4, &[0x10, 0], &mut ctx)));
}

#[test]
fn test_net_exchange_sends_each_frame_in_order() {
    let (mut dev, host, ram) = device();
    let frames = [frame_from(MAC, 60, 1), frame_from(MAC, 1514, 2)];
    request(&ram, &frames, 0, 0, 0);
    call(&mut dev, &ram, abi::port::NET_EXCHANGE, REQUEST_AT).unwrap();
    assert_eq!(host_recv(&host).as_ref(), Some(&frames[0]));
    assert_eq!(host_recv(&host).as_ref(), Some(&frames[1]));
    assert_eq!(host_recv(&host), None);
    assert_eq!(result(&ram).dropped, 0);
    assert_eq!(dev.counters().tx_frames, 2);
}

#[test]
fn test_net_exchange_receives_waiting_frames_into_buffers() {
    let (mut dev, host, ram) = device();
    let incoming = [frame_from([4; 6], 42, 7), frame_from([4; 6], 100, 8)];
    for frame in &incoming {
        host_send(&host, frame);
    }
    request(&ram, &[], 4, 1514, 0);
    call(&mut dev, &ram, abi::port::NET_EXCHANGE, REQUEST_AT).unwrap();
    assert_eq!(result(&ram).received, 2);
    for (i, frame) in incoming.iter().enumerate() {
        let desc: NetFrame = ram.read_obj(RX_AT + 16 * i as u64).unwrap();
        assert_eq!(desc.len as usize, frame.len());
        let mut bytes = vec![0u8; frame.len()];
        ram.read(desc.buf, &mut bytes).unwrap();
        assert_eq!(&bytes, frame);
    }
}

#[test]
fn test_net_exchange_takes_no_more_frames_than_buffers() {
    let (mut dev, host, ram) = device();
    for i in 0..10 {
        host_send(&host, &frame_from([4; 6], 60, i));
    }
    request(&ram, &[], 3, 1514, 0);
    call(&mut dev, &ram, abi::port::NET_EXCHANGE, REQUEST_AT).unwrap();
    assert_eq!(result(&ram).received, 3);
    request(&ram, &[], 64, 1514, 0);
    call(&mut dev, &ram, abi::port::NET_EXCHANGE, REQUEST_AT).unwrap();
    assert_eq!(
        result(&ram).received,
        7,
        "the rest stayed in the tap's queue"
    );
}

#[test]
fn test_net_frame_longer_than_the_buffer_is_dropped() {
    let (mut dev, host, ram) = device();
    host_send(&host, &frame_from([4; 6], 9000, 1));
    host_send(&host, &frame_from([4; 6], 60, 2));
    request(&ram, &[], 2, 1514, 0);
    call(&mut dev, &ram, abi::port::NET_EXCHANGE, REQUEST_AT).unwrap();
    assert_eq!(result(&ram).received, 1);
    let desc: NetFrame = ram.read_obj(RX_AT).unwrap();
    assert_eq!(desc.len, 60);
    assert_eq!(dev.counters().rx_dropped, 1);
}

#[test]
fn test_net_frame_from_a_foreign_mac_is_dropped() {
    let (mut dev, host, ram) = device();
    request(&ram, &[frame_from([2, 0, 0, 0, 0, 10], 60, 1)], 0, 0, 0);
    call(&mut dev, &ram, abi::port::NET_EXCHANGE, REQUEST_AT).unwrap();
    assert_eq!(result(&ram).dropped, 1);
    assert_eq!(host_recv(&host), None);
}

#[test]
fn test_net_bad_requests_stop_the_guest_and_send_nothing() {
    type Setup = fn(&GuestRam);
    let cases: [(&str, Setup); 7] = [
        ("too many to send", |ram| {
            request(ram, &[frame_from(MAC, 60, 0)], 0, 0, 0);
            let mut ex: NetExchange = ram.read_obj(REQUEST_AT).unwrap();
            ex.tx_count = NET_BATCH_MAX + 1;
            ram.write_obj(REQUEST_AT, ex).unwrap();
        }),
        ("too many to receive", |ram| {
            request(ram, &[], 0, 0, 0);
            let mut ex: NetExchange = ram.read_obj(REQUEST_AT).unwrap();
            ex.rx_count = u32::MAX;
            ram.write_obj(REQUEST_AT, ex).unwrap();
        }),
        ("frame too long", |ram| {
            request(
                ram,
                &[frame_from(MAC, 60, 0), frame_from(MAC, 1515, 0)],
                0,
                0,
                0,
            )
        }),
        ("frame too short", |ram| {
            request(ram, &[frame_from(MAC, 60, 0), vec![0u8; 13]], 0, 0, 0)
        }),
        ("frame outside RAM", |ram| {
            request(ram, &[frame_from(MAC, 60, 0)], 0, 0, 0);
            let desc = NetFrame {
                buf: (1 << 20) - 30,
                len: 60,
                cap: 0,
            };
            ram.write_obj(TX_AT, desc).unwrap();
        }),
        ("descriptors outside RAM", |ram| {
            request(ram, &[frame_from(MAC, 60, 0)], 0, 0, 0);
            let mut ex: NetExchange = ram.read_obj(REQUEST_AT).unwrap();
            ex.tx = u64::MAX - 8;
            ram.write_obj(REQUEST_AT, ex).unwrap();
        }),
        ("receive buffer outside RAM", |ram| {
            request(ram, &[frame_from(MAC, 60, 0)], 1, u32::MAX, 0);
        }),
    ];
    for (name, setup) in cases {
        let (mut dev, host, ram) = device();
        setup(&ram);
        let outcome = call(&mut dev, &ram, abi::port::NET_EXCHANGE, REQUEST_AT);
        assert!(is_bad_request(outcome), "{name}");
        assert_eq!(host_recv(&host), None, "{name}: a frame left");
    }
    let (mut dev, _host, ram) = device();
    assert!(
        is_bad_request(call(&mut dev, &ram, abi::port::NET_EXCHANGE, (1 << 20) - 4)),
        "request struct outside RAM"
    );
}

#[test]
fn test_net_sender_over_its_rate_is_dropped_not_stopped() {
    // 100 KiB/s: the bucket starts with its burst (10 KiB), then earns ~100 bytes per ms.
    let (mut dev, host, ram) = device_with_rate(100 << 10);
    let frames: Vec<Vec<u8>> = (0..64).map(|i| frame_from(MAC, 1514, i)).collect();
    request(&ram, &frames, 0, 0, 0);
    call(&mut dev, &ram, abi::port::NET_EXCHANGE, REQUEST_AT).unwrap();
    let mut sent = 0;
    while host_recv(&host).is_some() {
        sent += 1;
    }
    assert!((1..=8).contains(&sent), "{sent} frames passed");
    assert_eq!(result(&ram).dropped, 64 - sent);
}

#[test]
fn test_net_exchange_waits_until_a_frame_arrives() {
    let (mut dev, host, ram) = device();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        host_send(&host, &frame_from([4; 6], 60, 1));
        host
    });
    request(&ram, &[], 4, 1514, u64::MAX);
    let started = Instant::now();
    call(&mut dev, &ram, abi::port::NET_EXCHANGE, REQUEST_AT).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(25));
    assert_eq!(result(&ram).received, 1);
    drop(sender.join());
}

#[test]
fn test_net_exchange_wait_ends_after_its_timeout() {
    let (mut dev, _host, ram) = device();
    request(&ram, &[], 4, 1514, 20_000_000);
    let started = Instant::now();
    call(&mut dev, &ram, abi::port::NET_EXCHANGE, REQUEST_AT).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(20));
    assert_eq!(result(&ram).received, 0);
}

#[test]
fn test_net_exchange_wait_past_the_deadline_times_out() {
    let (mut dev, _host, ram) = device();
    request(&ram, &[], 4, 1514, u64::MAX);
    let deadline = Instant::now() + Duration::from_millis(20);
    let started = Instant::now();
    let outcome = call_with_deadline(
        &mut dev,
        &ram,
        abi::port::NET_EXCHANGE,
        REQUEST_AT,
        Some(deadline),
    );
    assert_eq!(outcome, Err(DeviceStop::TimedOut));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn test_net_state_is_empty_and_restores() {
    let (mut dev, _host, _ram) = device();
    assert!(dev.save().is_empty());
    assert!(dev.restore(&[]).is_ok());
    assert!(dev.restore(&[1]).is_err());
}

#[test]
fn test_net_device_is_a_poll_source_on_its_tap() {
    let (dev, _host, _ram) = device();
    let source = dev.poll_source().unwrap();
    assert_eq!(source.mask, abi::hypercall::poll_source::NET);
    assert_eq!(source.fd, Some(dev.config.tap.raw_fd()));
}
