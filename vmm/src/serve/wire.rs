//! The `vmm serve` wire protocol, described once for the server, the `vmm run --via` client
//! and the bench.
//!
//! A request is a little-endian `u32` length and that many bytes of JSON ([`Request`], at
//! most [`MAX_REQUEST`] bytes). The server answers with frames: a [`FrameHeader`] (kind, then
//! payload length as a little-endian `u32`) and the payload; the kinds are in [`frame`]; the
//! last frame is `EXIT` (payload: the status, `i32` little-endian) or `ERROR` (payload: one
//! line of text, status 125).

use std::io::{Read, Write};
use std::path::PathBuf;
use vm_memory::ByteValued;

/// Largest request accepted.
pub const MAX_REQUEST: u32 = 1 << 20;
/// Largest frame payload a client accepts.
pub const MAX_FRAME: u32 = 64 << 20;

/// Frame kinds.
pub mod frame {
    /// Guest stdout bytes.
    pub const STDOUT: u8 = 1;
    /// Guest stderr bytes (and the VMM's report about the guest).
    pub const STDERR: u8 = 2;
    /// The exit status, `i32` little-endian; the last frame.
    pub const EXIT: u8 = 3;
    /// The request failed before the guest ran: a one-line error; the last frame (status 125).
    pub const ERROR: u8 = 4;
}

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// Absolute path of an image or snapshot.
    pub target: PathBuf,
    /// Arguments after the image name.
    pub args: Vec<String>,
    /// `KEY=VALUE` strings.
    pub env: Vec<String>,
    /// Timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Console bytes allowed.
    pub max_output: u64,
    /// Guest RAM for images (snapshots bring their own).
    pub mem_size: u64,
}

/// The header of every frame.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameHeader {
    /// One of [`frame`].
    pub kind: u8,
    /// Payload bytes, little-endian.
    pub len: [u8; 4],
}

// SAFETY: packed bytes only: no padding, every bit pattern valid.
unsafe impl ByteValued for FrameHeader {}

/// Bytes of a [`FrameHeader`].
pub const FRAME_HEADER_SIZE: usize = size_of::<FrameHeader>();
const _: () = assert!(FRAME_HEADER_SIZE == 5);

/// The request's bytes on the wire: length, then JSON.
pub fn encode_request(request: &Request) -> Vec<u8> {
    let body = serde_json::to_vec(request).expect("a request always serializes");
    let mut message = (body.len() as u32).to_le_bytes().to_vec();
    message.extend_from_slice(&body);
    message
}

/// Sends one frame in one write.
pub fn send_frame(out: &mut impl Write, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let header = FrameHeader {
        kind,
        len: (payload.len() as u32).to_le_bytes(),
    };
    let mut bytes = Vec::with_capacity(FRAME_HEADER_SIZE + payload.len());
    bytes.extend_from_slice(header.as_slice());
    bytes.extend_from_slice(payload);
    out.write_all(&bytes)
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed mid-frame.
    #[error("the connection ended")]
    Io(#[from] std::io::Error),
    /// A frame larger than [`MAX_FRAME`].
    #[error("a frame of {0} bytes is too large")]
    TooLarge(u32),
}

/// Reads one frame: its kind and payload.
pub fn read_frame(input: &mut impl Read) -> Result<(u8, Vec<u8>), FrameError> {
    let mut header = FrameHeader::default();
    input.read_exact(header.as_mut_slice())?;
    let len = u32::from_le_bytes(header.len);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut payload = vec![0u8; len as usize];
    input.read_exact(&mut payload)?;
    Ok((header.kind, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_frame_round_trips() {
        let mut bytes = Vec::new();
        send_frame(&mut bytes, frame::STDOUT, b"hello").unwrap();
        assert_eq!(bytes[..5], [1, 5, 0, 0, 0]);
        let (kind, payload) = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!((kind, payload.as_slice()), (frame::STDOUT, &b"hello"[..]));
    }

    #[test]
    fn test_oversized_frame_is_refused() {
        let bytes = [frame::STDOUT, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut &bytes[..]),
            Err(FrameError::TooLarge(_))
        ));
    }
}
