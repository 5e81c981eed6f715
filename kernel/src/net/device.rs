//! The guest's side of the VMM's network device, as a smoltcp [`Device`]: frames the stack
//! sends wait in a batch, and one `NET_EXCHANGE` exit sends the batch, brings back the frames
//! that arrived, and, when none had, waits for one (a round trip costs one exit).
//!
//! Memory stays bounded: at most `max_batch` frames wait to be sent (a full batch is sent at
//! once) and at most `max_batch` received frames wait to be processed (a batch is only asked
//! for when the last one has been).

use crate::hypercall;
use abi::hypercall::{NET_FRAME_MAX, NetExchange, NetFrame};
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

const FRAME_MAX: usize = NET_FRAME_MAX as usize;

/// Frame counts and exits, for an app that reports what its traffic cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// `NET_EXCHANGE` calls (VM exits).
    pub exchanges: u64,
    /// Frames handed to the VMM.
    pub frames_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Frames the VMM dropped (over the guest's rate).
    pub frames_dropped: u64,
}

/// Frames waiting to be sent, and the buffers they are built in.
pub(crate) struct TxQueue {
    pending: Vec<(Vec<u8>, usize)>,
    free: Vec<Vec<u8>>,
    descriptors: Vec<NetFrame>,
    batch: usize,
    stats: DeviceStats,
}

/// The network device.
pub(crate) struct FrameDevice {
    ready: VecDeque<(Vec<u8>, usize)>,
    free: Vec<Vec<u8>>,
    /// Receive buffers whose addresses the VMM was given (in descriptor order).
    lent: Vec<Vec<u8>>,
    rx_descriptors: Vec<NetFrame>,
    tx: TxQueue,
}

impl FrameDevice {
    /// A device moving up to `batch` frames per exit each way.
    pub(crate) fn new(batch: usize) -> Self {
        let batch = batch.clamp(1, abi::hypercall::NET_BATCH_MAX as usize);
        Self {
            ready: VecDeque::with_capacity(batch),
            free: Vec::with_capacity(batch),
            lent: Vec::with_capacity(batch),
            rx_descriptors: Vec::with_capacity(batch),
            tx: TxQueue {
                pending: Vec::with_capacity(batch),
                free: Vec::with_capacity(batch),
                descriptors: Vec::with_capacity(batch),
                batch,
                stats: DeviceStats::default(),
            },
        }
    }

    /// Frames wait to be sent.
    pub(crate) fn has_pending(&self) -> bool {
        !self.tx.pending.is_empty()
    }

    /// The received frames waiting to be processed.
    pub(crate) fn received(&self) -> impl Iterator<Item = &[u8]> {
        self.ready.iter().map(|(buf, len)| &buf[..*len])
    }

    /// Received frames wait to be processed.
    pub(crate) fn has_received(&self) -> bool {
        !self.ready.is_empty()
    }

    pub(crate) fn stats(&self) -> DeviceStats {
        self.tx.stats
    }

    /// One exit: sends the pending frames, receives up to a batch (if none is waiting to be
    /// processed), and with nothing received waits up to `wait_ns` for a frame.
    pub(crate) fn exchange(&mut self, wait_ns: u64) {
        let receive = self.ready.is_empty();
        self.rx_descriptors.clear();
        if receive {
            while self.lent.len() < self.tx.batch {
                self.lent
                    .push(self.free.pop().unwrap_or_else(|| vec![0u8; FRAME_MAX]));
            }
            for buf in &mut self.lent {
                self.rx_descriptors.push(NetFrame {
                    buf: buf.as_mut_ptr() as u64,
                    len: 0,
                    cap: FRAME_MAX as u32,
                });
            }
        }
        let received = self
            .tx
            .send(&mut self.rx_descriptors, if receive { wait_ns } else { 0 });
        for (buf, desc) in self.lent.drain(..received).zip(&self.rx_descriptors) {
            self.ready
                .push_back((buf, (desc.len as usize).min(FRAME_MAX)));
        }
        self.tx.stats.frames_received += received as u64;
    }
}

impl TxQueue {
    /// One `NET_EXCHANGE`: sends every pending frame, fills `rx` (whose `len`s the VMM writes
    /// in guest memory: the caller reads them back from there); returns frames received.
    fn send(&mut self, rx: &mut [NetFrame], wait_ns: u64) -> usize {
        self.descriptors.clear();
        for (buf, len) in &self.pending {
            self.descriptors.push(NetFrame {
                buf: buf.as_ptr() as u64,
                len: *len as u32,
                cap: 0,
            });
        }
        let mut request = NetExchange {
            tx: self.descriptors.as_ptr() as u64,
            rx: rx.as_mut_ptr() as u64,
            tx_count: self.descriptors.len() as u32,
            rx_count: rx.len() as u32,
            wait_ns,
            received: 0,
            dropped: 0,
        };
        hypercall::net_exchange(&mut request);
        self.stats.exchanges += 1;
        self.stats.frames_sent += self.pending.len() as u64 - u64::from(request.dropped);
        self.stats.frames_dropped += u64::from(request.dropped);
        for (buf, _) in self.pending.drain(..) {
            self.free.push(buf);
        }
        (request.received as usize).min(rx.len())
    }

    /// Sends a full batch at once (without receiving: received frames wait for the stack).
    fn push(&mut self, buf: Vec<u8>, len: usize) {
        self.pending.push((buf, len));
        if self.pending.len() >= self.batch {
            self.send(&mut [], 0);
        }
    }
}

/// A received frame.
pub(crate) struct RxToken<'a> {
    buf: Vec<u8>,
    len: usize,
    free: &'a mut Vec<Vec<u8>>,
}

/// Room for a frame to send.
pub(crate) struct TxToken<'a> {
    tx: &'a mut TxQueue,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let result = f(&self.buf[..self.len]);
        self.free.push(self.buf);
        result
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        if len > FRAME_MAX {
            // The stack never builds one (the MTU says so); if it did, the VMM would refuse
            // the whole batch: build it aside and drop it.
            let mut scratch = vec![0u8; len];
            return f(&mut scratch);
        }
        let mut buf = self.tx.free.pop().unwrap_or_else(|| vec![0u8; FRAME_MAX]);
        let result = f(&mut buf[..len]);
        self.tx.push(buf, len);
        result
    }
}

impl Device for FrameDevice {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let (buf, len) = self.ready.pop_front()?;
        Some((
            RxToken {
                buf,
                len,
                free: &mut self.free,
            },
            TxToken { tx: &mut self.tx },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        Some(TxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = FRAME_MAX;
        caps.max_burst_size = Some(self.tx.batch);
        caps
    }
}
