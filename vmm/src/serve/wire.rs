//! The `vmm serve` wire protocol, described once for the server, the `vmm run --via` client
//! and the bench.
//!
//! A request is a little-endian `u32` length and that many bytes of JSON ([`Request`], at
//! most [`MAX_REQUEST`] bytes); with `stdin`, the client's stdin bytes follow it on the same
//! connection until the client shuts down its writing side. The server answers with frames: a [`FrameHeader`] (kind, then
//! payload length as a little-endian `u32`) and the payload; the kinds are in [`frame`]; the
//! last frame is `EXIT` (payload: the status, `i32` little-endian) or `ERROR` (payload: one
//! line of text, status 125).

use std::io::{Read, Write};
use std::path::PathBuf;
use vm_memory::ByteValued;

/// Largest request accepted: room for the most arguments and environment a guest can take
/// (64 KiB of boot info), even if JSON escapes every byte (6 bytes each), and a path.
pub const MAX_REQUEST: u32 = 512 << 10;
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
    /// Host directories for the guest, `HOST_DIR:GUEST_PATH[:ro]` each, with absolute host
    /// paths under a directory the server shares (`vmm serve --volume-root`).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// The client sends its stdin after the request, then shuts down its writing side (the
    /// guest reads that as the end of input); without it, the guest's stdin is empty.
    #[serde(default)]
    pub stdin: bool,
    /// A network device, as `vmm run --net` takes it (absent from older clients' requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
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

/// Why a request cannot be put on the wire.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A path or string JSON cannot carry (a path that is not UTF-8).
    #[error("the request cannot be encoded")]
    Json(#[source] serde_json::Error),
    /// Larger than the server accepts.
    #[error("the request is too large ({len} bytes; at most {MAX_REQUEST})")]
    TooLarge {
        /// Its size.
        len: usize,
    },
}

/// The request's bytes on the wire: length, then JSON.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, EncodeError> {
    let body = serde_json::to_vec(request).map_err(EncodeError::Json)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|len| *len <= MAX_REQUEST)
        .ok_or(EncodeError::TooLarge { len: body.len() })?;
    let mut message = len.to_le_bytes().to_vec();
    message.extend_from_slice(&body);
    Ok(message)
}

/// Sends one frame in one write (a payload over [`MAX_FRAME`] is refused, never cut).
pub fn send_frame(out: &mut impl Write, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= MAX_FRAME)
        .ok_or(std::io::ErrorKind::InvalidInput)?;
    let header = FrameHeader {
        kind,
        len: len.to_le_bytes(),
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
    let mut payload = vec![0u8; usize::try_from(len).map_err(|_| FrameError::TooLarge(len))?];
    input.read_exact(&mut payload)?;
    Ok((header.kind, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn test_frame_round_trips() {
        let mut bytes = Vec::new();
        send_frame(&mut bytes, frame::STDOUT, b"hello").unwrap();
        assert_eq!(bytes[..5], [1, 5, 0, 0, 0]);
        let (kind, payload) = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!((kind, payload.as_slice()), (frame::STDOUT, &b"hello"[..]));
    }

    #[test]
    fn test_request_without_input_fields_has_no_volumes_and_no_stdin() {
        let old = br#"{"target":"/x","args":[],"env":[],"timeout_ms":null,"max_output":1,"mem_size":4194304}"#;
        let request: Request = serde_json::from_slice(old).unwrap();
        assert!(request.volumes.is_empty());
        assert!(!request.stdin);
    }

    #[test]
    fn test_request_round_trips_and_bad_requests_are_errors() {
        let mut request = Request {
            target: PathBuf::from("/x/hello"),
            args: vec!["a".into()],
            env: Vec::new(),
            timeout_ms: Some(5),
            max_output: 10,
            mem_size: 16 << 20,
            volumes: vec!["/srv/in:/in:ro".into()],
            stdin: true,
            net: None,
        };
        let bytes = encode_request(&request).unwrap();
        let parsed: Request = serde_json::from_slice(&bytes[4..]).unwrap();
        assert_eq!(parsed, request);
        request.target = PathBuf::from(std::ffi::OsStr::from_bytes(b"/x/\xff"));
        assert!(matches!(
            encode_request(&request),
            Err(EncodeError::Json(_))
        ));
        request.target = PathBuf::from("/x");
        request.args = vec!["a".repeat(MAX_REQUEST as usize)];
        assert!(matches!(
            encode_request(&request),
            Err(EncodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn test_send_frame_refuses_an_oversized_payload() {
        let payload = vec![0u8; MAX_FRAME as usize + 1];
        let mut out = Vec::new();
        assert!(send_frame(&mut out, frame::STDOUT, &payload).is_err());
        assert!(out.is_empty());
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
